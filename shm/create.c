/* Creating a heap (the owner's side): the control segment, and each heap
 * segment as the heap grows. Only the process that owns the heap (the
 * daemon, or a local heap: local.c) calls these; attachers map what they
 * made (heap.c).
 *
 * How a segment grows the heap: an allocation that finds no room calls the
 * heap's grow hook (tcache.c, run.c); the owner calls heap_segment_create()
 * with its own limits (never the control segment's copy, which any
 * attacher can write); it makes a memfd, formats it (segment.c), fills in
 * its entry in the control segment and publishes the new count; attachers
 * map it on their next look at nsegments (heap_sync_segments, heap.c).
 * An owner that keeps its heap beyond its own life (a daemon with a state
 * directory or systemd's fd store: daemon/owner.c) makes the segment a file
 * in that directory, and has it kept before it is published
 * (heap_segment_create_kept); adopting such a heap is adopt.c's. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

#define GiB (UINT64_C(1) << 30)
#define MiB (UINT64_C(1) << 20)

void heap_config_default(struct shm_config *ret)
{
    memset(ret, 0, sizeof(*ret));
    ret->segment_size = GiB;
    ret->huge_pages = SHM_PAGES_AUTO;
    ret->thread_cache_bytes = 1u << 20;
    ret->bundle_objects = 64;
    ret->recycler_cap_bundles = 64;
    ret->retain_empty_blocks = 16;
    ret->trim_interval_ms = 0;
    ret->max_clients = 64;
    ret->max_segments = 16;
    ret->reconnect_wait_ms = 5000;
}

static uint64_t ctl_bytes(void)
{
    return (sizeof(struct ctl_header) + 4095) & ~UINT64_C(4095);
}

/* The owner's limits on segments: whole blocks, at least the layout's
 * floor, at most what an offset spans; 1..SHM_MAX_SEGMENTS - 1 of them. */
static bool limits_valid(const struct shm_config *cfg)
{
    return cfg->max_segments >= 1 && cfg->max_segments < SHM_MAX_SEGMENTS &&
           cfg->segment_size % SHM_BLOCK_SIZE == 0 && cfg->segment_size >= SHM_SEG_MIN_SIZE &&
           cfg->segment_size <= SHM_SEG_SPAN;
}

/* Formats fd (a memfd, or a file in a state directory: adopt.c) as a
 * control segment with the owner's config. */
int ctl_format(int fd, const struct shm_config *cfg)
{
    uint64_t size = ctl_bytes();
    struct ctl_header *c;
    int r;

    if (!cfg || !limits_valid(cfg))
        return -EINVAL;
    r = os_truncate(fd, size);
    if (r < 0)
        return r;
    c = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (c == MAP_FAILED)
        return -errno;
    c->version = SHM_LAYOUT_VERSION;
    c->header_size = (uint32_t) sizeof(*c);
    c->ctl_size = size;
    c->created_ns = os_now_ns();
    c->config = *cfg;
    c->nsegments = 1; /* index 0 is the control segment itself */
    c->segs[0].size = size;
    c->segs[0].page_size = 4096;
    c->segs[0].state = SEG_LIVE;
    shlock_init(&c->lock);
    /* release: the magic is written last; an attacher that sees it
     * (ctl_check_header's acquire pairs with this) sees the rest. */
    store_release(&c->magic, SHM_CTL_MAGIC);
    (void) munmap(c, size);
    return 0;
}

int heap_ctl_create(const struct shm_config *cfg, int *ret_fd)
{
    int fd, r;

    if (!cfg || !ret_fd || !limits_valid(cfg))
        return -EINVAL;
    fd = os_memfd("shmheap-ctl", 0);
    if (fd < 0)
        return fd;
    r = ctl_format(fd, cfg);
    if (r < 0)
        goto fail;
    r = os_seal_size(fd);
    if (r < 0)
        goto fail;
    *ret_fd = fd;
    return 0;
fail:
    (void) close(fd);
    return r;
}

/* ---- heap segments ---- */

/* Huge pages must really be there: takes the ones a segment's metadata
 * needs now, so a pool without free pages is an error here, not SIGBUS
 * later. Normal pages come on first touch: nothing to do. */
static int reserve_metadata(int fd, uint64_t size, uint64_t page)
{
    uint64_t meta;
    int r;

    if (page <= 4096)
        return 0;
    r = seg_metadata_bytes(size, (uint32_t) page, &meta);
    return r < 0 ? r : os_commit(fd, 0, (meta + page - 1) & ~(page - 1));
}

static int segment_try(uint64_t size, uint64_t page, int *ret_fd)
{
    int fd, r;

    fd = os_memfd("shmheap-seg", page);
    if (fd < 0)
        /* A kernel without this huge page size says EINVAL: for the caller
         * that is the same as a pool without free pages. */
        return page > 4096 && fd == -EINVAL ? -ENOMEM : fd;
    r = os_truncate(fd, size);
    if (r < 0)
        goto fail;
    /* A hugetlb memfd gets its metadata's pages reserved now; then every
     * memfd is sealed against shrinking and growing: its size is the
     * owner's record (fstat), whatever an attacher tries. */
    r = page > 4096 ? reserve_metadata(fd, size, page) : 0;
    if (r == 0)
        r = os_seal_size(fd);
    if (r < 0)
        goto fail;
    *ret_fd = fd;
    return 0;
fail:
    (void) close(fd);
    return r;
}

uint64_t create_segment_bytes(const struct shm_config *cfg, uint64_t min_bytes)
{
    uint64_t size = cfg->segment_size;

    /* Room for the metadata (well under 1%) on top of what was asked. */
    if (min_bytes + min_bytes / 64 + 4 * MiB > size)
        size = min_bytes + min_bytes / 64 + 4 * MiB;
    return size;
}

int create_segment_memfd(
        uint64_t size, int policy, int *ret_fd, uint64_t *ret_size, uint64_t *ret_page)
{
    static const uint64_t pages_auto[] = {GiB, 2 * MiB, 4096};
    const uint64_t *try;
    unsigned ntry;
    int r = -ENOMEM;

    switch (policy) {
    case SHM_PAGES_1G:
        try = &pages_auto[0], ntry = 1;
        break;
    case SHM_PAGES_2M:
        try = &pages_auto[1], ntry = 1;
        break;
    case SHM_PAGES_OFF:
        try = &pages_auto[2], ntry = 1;
        break;
    default:
        try = pages_auto, ntry = 3;
        break;
    }
    for (unsigned i = 0; i < ntry; i++) {
        /* Whole pages, and whole blocks. */
        uint64_t unit = try[i] > SHM_BLOCK_SIZE ? try[i] : SHM_BLOCK_SIZE;
        uint64_t sz = (size + unit - 1) & ~(unit - 1);

        if (sz > SHM_SEG_SPAN)
            continue;
        r = segment_try(sz, try[i], ret_fd);
        if (r == 0) {
            *ret_page = try[i];
            *ret_size = sz;
            return 0;
        }
    }
    return r;
}

/* A file `name` (under a .new name until formatted) in dir_fd. */
static int file_try(int dir_fd, const char *tmp, uint64_t size, uint64_t page, int *ret_fd)
{
    int fd = os_file_create(dir_fd, tmp), r;

    if (fd < 0)
        return fd;
    r = os_truncate(fd, size);
    if (r == 0)
        r = reserve_metadata(fd, size, page); /* hugetlbfs: as for a memfd */
    if (r < 0) {
        (void) unlinkat(dir_fd, tmp, 0);
        (void) close(fd);
        return r;
    }
    *ret_fd = fd;
    return 0;
}

/* The new segment's file (under tmp in dir_fd) or memfd, sized by the
 * rule of heap_segment_create() and on the largest pages the policy (or
 * the directory's filesystem) allows. */
static int segment_open(const struct shm_config *cfg,
                        int dir_fd,
                        uint64_t min_bytes,
                        int policy,
                        const char *tmp,
                        int *ret_fd,
                        uint64_t *ret_size,
                        uint64_t *ret_page)
{
    uint64_t want = create_segment_bytes(cfg, min_bytes), pg, unit, sz;
    int r;

    if (dir_fd < 0)
        return create_segment_memfd(want, policy, ret_fd, ret_size, ret_page);
    /* A directory's filesystem decides the page size, not the policy. */
    pg = os_dir_page_size(dir_fd);
    unit = pg > SHM_BLOCK_SIZE ? pg : SHM_BLOCK_SIZE;
    sz = (want + unit - 1) & ~(unit - 1);
    if (sz > SHM_SEG_SPAN)
        return -ENOMEM;
    r = file_try(dir_fd, tmp, sz, pg, ret_fd);
    if (r < 0)
        return r;
    *ret_size = sz;
    *ret_page = pg;
    return 0;
}

/* Formats the segment, and in a directory gives its file its real name. */
static int segment_format(int fd,
                          uint32_t index,
                          uint64_t size,
                          uint64_t page,
                          int dir_fd,
                          const char *tmp,
                          const char *name)
{
    void *base;
    int r;

    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (base == MAP_FAILED)
        return -errno;
    r = seg_format(base, fd, index, size, (uint32_t) page);
    (void) munmap(base, size);
    if (r == 0 && dir_fd >= 0)
        r = os_file_rename(dir_fd, tmp, name);
    return r;
}

int heap_segment_create_kept(struct heap_header *hp,
                             const struct shm_config *cfg,
                             int dir_fd,
                             uint64_t min_bytes,
                             int policy,
                             void (*keep)(void *ctx, uint32_t index, int fd),
                             void *ctx,
                             int *ret_fd,
                             uint32_t *ret_index)
{
    uint64_t size = 0, page = 0;
    char name[32], tmp[40];
    uint32_t index;
    int fd = -1, r;

    if (!hp || !hp->page || !cfg || !limits_valid(cfg) || !ret_fd || !ret_index || policy < 0 ||
        policy >= _SHM_PAGES_MAX)
        return -EINVAL;
    r = ctl_check_page(hp->page);
    if (r < 0)
        return r;
    /* The limits are the caller's, never the header's copy of the config.
     * nsegments is the owner's own count (only it writes the header page);
     * max_segments < SHM_MAX_SEGMENTS keeps the entry written below inside
     * the table whatever it says. */
    index = ctl_nsegments(hp->page);
    if (index > cfg->max_segments)
        return -ENOSPC;
    heap_segment_file_name(index, name, sizeof(name));
    (void) snprintf(tmp, sizeof(tmp), "%s.new", name);
    r = segment_open(cfg, dir_fd, min_bytes, policy, tmp, &fd, &size, &page);
    if (r < 0)
        return r;
    r = segment_format(fd, index, size, page, dir_fd, tmp, name);
    if (r < 0)
        goto out_close;
    /* Kept (a file in place, or the fd handed to the fd store) before it
     * is published: an owner that dies between the two leaves a segment
     * nobody knows of, never a published one that cannot be found. */
    if (keep)
        keep(ctx, index, fd);
    heap_header_publish_segment(hp, index, size, (uint32_t) page);
    *ret_fd = fd;
    *ret_index = index;
    return 0;
out_close:
    if (dir_fd >= 0)
        (void) unlinkat(dir_fd, tmp, 0);
    (void) close(fd);
    return r;
}

int heap_segment_create(int ctl_fd,
                        const struct shm_config *cfg,
                        uint64_t min_bytes,
                        int policy,
                        int *ret_fd,
                        uint32_t *ret_index)
{
    struct heap_header hp = {.fd = -1};
    uint64_t ctl_size;
    struct ctl_header *c;
    int r;

    /* No daemon: the header page is the control memfd's own first page. */
    r = os_fstat_size(ctl_fd, &ctl_size, NULL);
    if (r < 0)
        return r;
    c = mmap(NULL, ctl_size, PROT_READ | PROT_WRITE, MAP_SHARED, ctl_fd, 0);
    if (c == MAP_FAILED)
        return -errno;
    r = ctl_check_header(c, ctl_size);
    hp.page = c;
    if (r == 0)
        r = heap_segment_create_kept(&hp, cfg, -1, min_bytes, policy, NULL, NULL, ret_fd,
                                     ret_index);
    (void) munmap(c, ctl_size);
    return r;
}
