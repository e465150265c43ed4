/* The header page (layout.h): the control segment's first page, which only
 * the heap's owner writes, kept where attachments can map it read-only.
 *
 * The owner (shmheapd) makes it a memfd of its own, copies the header into
 * it, maps it read-write for itself and then seals it (os_seal_read_only:
 * F_SEAL_FUTURE_WRITE, and against shrinking and growing) before any fd of
 * it leaves the process: from then on every mmap of it with PROT_WRITE and
 * MAP_SHARED, and every mprotect of such a mapping to PROT_WRITE, is
 * refused, whoever holds the fd. Attachments map it over the first page of
 * the control segment (heap_attach), so the code that reads the header,
 * the config and the segment table reads it there as before.
 *
 * The control memfd's own first page keeps a copy (the mirror), written
 * with every change in the same order, for a process that maps the control
 * segment alone (a raw client of the protocol, an older tool): that copy any
 * client can write, so the owner never reads it but to compare it with the
 * header page (heap_header_mirror_ok, for verify) and restore it.
 *
 * A sealed memfd cannot be written again, not even by a restarted owner:
 * a daemon that adopts a heap from systemd's fd store copies the stored
 * header page into a new one (header_gen + 1), and the clients that
 * reconnect map the new one (heap_remap_header). A state directory keeps
 * the header page as the file `header-page` (mode 0600): files cannot be
 * sealed, so the owner keeps it read-write and hands out a read-only fd of
 * it, which no one can map writable (a process of the daemon's own uid
 * could reopen the file, but such a process can write the daemon's memory
 * anyway). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

#define HEADER_FILE "header-page"

static int header_map(int fd, int prot, struct ctl_header **ret)
{
    void *p = mmap(NULL, SHM_HEADER_PAGE, prot, MAP_SHARED, fd, 0);

    if (p == MAP_FAILED)
        return -errno;
    *ret = p;
    return 0;
}

/* Copies src_fd's first page (a control segment, or an earlier header
 * page) into the new page. */
static int header_fill(struct ctl_header *page, int src_fd)
{
    uint64_t size;
    void *src;
    int r;

    r = os_fstat_size(src_fd, &size, NULL);
    if (r < 0)
        return r;
    if (size < SHM_HEADER_PAGE)
        return -EBADMSG;
    src = mmap(NULL, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED, src_fd, 0);
    if (src == MAP_FAILED)
        return -errno;
    memcpy(page, src, SHM_HEADER_PAGE);
    (void) munmap(src, SHM_HEADER_PAGE);
    return ctl_check_page(page);
}

static int header_create_memfd(int src_fd, struct heap_header *ret)
{
    struct ctl_header *page = NULL;
    int fd, r;

    fd = os_memfd("shmheap-header", 4096);
    if (fd < 0)
        return fd;
    r = os_truncate(fd, SHM_HEADER_PAGE);
    if (r < 0)
        goto fail;
    r = header_map(fd, PROT_READ | PROT_WRITE, &page);
    if (r < 0)
        goto fail;
    r = header_fill(page, src_fd);
    /* Sealed before the fd goes anywhere: our mapping above stays
     * writable, no later one can be. */
    if (r == 0)
        r = os_seal_read_only(fd);
    if (r < 0) {
        (void) munmap(page, SHM_HEADER_PAGE);
        goto fail;
    }
    ret->page = page;
    ret->fd = fd;
    ret->mirror = NULL;
    return 0;
fail:
    (void) close(fd);
    return r;
}

/* The owner's read-write mapping of the directory's header page file, and
 * a read-only fd of it for attachments. */
static int header_open_file(int dir_fd, int rw_fd, struct heap_header *ret)
{
    struct ctl_header *page = NULL;
    int fd, r;

    r = header_map(rw_fd, PROT_READ | PROT_WRITE, &page);
    if (r < 0)
        return r;
    fd = os_file_open_read_only(dir_fd, HEADER_FILE);
    if (fd < 0) {
        (void) munmap(page, SHM_HEADER_PAGE);
        return fd;
    }
    ret->page = page;
    ret->fd = fd;
    ret->mirror = NULL;
    return 0;
}

static int header_create_file(int dir_fd, int src_fd, struct heap_header *ret)
{
    struct ctl_header *page = NULL;
    int fd, r;

    fd = os_file_create(dir_fd, HEADER_FILE ".new");
    if (fd < 0)
        return fd;
    r = os_truncate(fd, SHM_HEADER_PAGE);
    if (r == 0)
        r = header_map(fd, PROT_READ | PROT_WRITE, &page);
    if (r == 0) {
        r = header_fill(page, src_fd);
        (void) munmap(page, SHM_HEADER_PAGE);
    }
    if (r == 0)
        r = os_file_rename(dir_fd, HEADER_FILE ".new", HEADER_FILE);
    if (r == 0)
        r = header_open_file(dir_fd, fd, ret);
    if (r < 0)
        (void) unlinkat(dir_fd, HEADER_FILE ".new", 0);
    (void) close(fd);
    return r;
}

int heap_header_create(int src_fd, int dir_fd, struct heap_header *ret)
{
    if (src_fd < 0 || !ret)
        return -EINVAL;
    return dir_fd >= 0 ? header_create_file(dir_fd, src_fd, ret) : header_create_memfd(src_fd, ret);
}

int heap_header_open_at(int dir_fd, struct heap_header *ret)
{
    struct ctl_header *page = NULL;
    uint64_t size;
    int fd, r;

    if (dir_fd < 0 || !ret)
        return -EINVAL;
    fd = os_file_open(dir_fd, HEADER_FILE);
    if (fd < 0)
        return fd;
    r = os_fstat_size(fd, &size, NULL);
    if (r == 0 && size != SHM_HEADER_PAGE)
        r = -EBADMSG;
    if (r == 0)
        r = header_map(fd, PROT_READ, &page);
    if (r == 0) {
        r = ctl_check_page(page);
        (void) munmap(page, SHM_HEADER_PAGE);
    }
    if (r == 0)
        r = header_open_file(dir_fd, fd, ret);
    (void) close(fd);
    return r;
}

int heap_header_mirror_to(struct heap_header *hp, int ctl_fd)
{
    struct ctl_header *m = NULL;
    uint64_t size;
    int r;

    if (!hp || !hp->page)
        return -EINVAL;
    r = os_fstat_size(ctl_fd, &size, NULL);
    if (r == 0 && size < sizeof(struct ctl_header))
        r = -EBADF;
    if (r == 0)
        r = header_map(ctl_fd, PROT_READ | PROT_WRITE, &m);
    if (r < 0)
        return r;
    if (hp->mirror)
        (void) munmap(hp->mirror, SHM_HEADER_PAGE);
    hp->mirror = m;
    heap_header_mirror_repair(hp);
    return 0;
}

bool heap_header_mirror_ok(const struct heap_header *hp)
{
    return !hp->mirror || memcmp(hp->mirror, hp->page, SHM_HEADER_PAGE) == 0;
}

void heap_header_mirror_repair(struct heap_header *hp)
{
    if (hp->mirror)
        memcpy(hp->mirror, hp->page, SHM_HEADER_PAGE);
}

/* Each change is made in the header page, then in the mirror, in the same
 * order: the fields, then (release) the generation or count that
 * publishes them. */
static void publish_segment(struct ctl_header *c, uint32_t index, uint64_t size, uint32_t page)
{
    store_relaxed(&c->segs[index].size, size);
    store_relaxed(&c->segs[index].page_size, page);
    store_relaxed(&c->segs[index].state, SEG_LIVE);
    /* release: an attacher that reads the new count sees the entry filled
     * in and the segment formatted (pairs with ctl_nsegments()). */
    store_release(&c->nsegments, index + 1);
}

void heap_header_publish_segment(struct heap_header *hp,
                                 uint32_t index,
                                 uint64_t size,
                                 uint32_t page)
{
    publish_segment(hp->page, index, size, page);
    if (hp->mirror)
        publish_segment(hp->mirror, index, size, page);
}

static void publish_config(struct ctl_header *c, const struct shm_config *cfg, uint64_t gen)
{
    /* Each field relaxed: a reader may see a mix of old and new fields
     * while they are written, which is harmless (every value alone is
     * valid) and settles at its next look at config_gen. */
    store_relaxed(&c->config.segment_size, cfg->segment_size);
    store_relaxed(&c->config.huge_pages, cfg->huge_pages);
    store_relaxed(&c->config.thread_cache_bytes, cfg->thread_cache_bytes);
    store_relaxed(&c->config.bundle_objects, cfg->bundle_objects);
    store_relaxed(&c->config.recycler_cap_bundles, cfg->recycler_cap_bundles);
    store_relaxed(&c->config.retain_empty_blocks, cfg->retain_empty_blocks);
    store_relaxed(&c->config.trim_interval_ms, cfg->trim_interval_ms);
    store_relaxed(&c->config.max_clients, cfg->max_clients);
    store_relaxed(&c->config.max_segments, cfg->max_segments);
    store_relaxed(&c->config.max_client_bytes, cfg->max_client_bytes);
    store_relaxed(&c->config.max_uid_bytes, cfg->max_uid_bytes);
    store_relaxed(&c->config.reconnect_wait_ms, cfg->reconnect_wait_ms);
    /* release: publishes the fields above. A client's tcache loads
     * config_gen with acquire (tcache_reload_config) before it re-reads
     * them, so once it sees the new generation it sees every new value. */
    store_release(&c->config_gen, gen);
}

void heap_header_publish_config(struct heap_header *hp, const struct shm_config *cfg)
{
    /* The owner is the only writer of the header page's config_gen, so
     * load + store (not an atomic add) is enough; the mirror takes the
     * same generation, whatever a client wrote into it. */
    uint64_t gen = load_relaxed(&hp->page->config_gen) + 1;

    publish_config(hp->page, cfg, gen);
    if (hp->mirror)
        publish_config(hp->mirror, cfg, gen);
}

void heap_header_set_client_id_next(struct heap_header *hp, uint64_t id)
{
    /* relaxed: read only by the next owner, after this one is gone. */
    store_relaxed(&hp->page->client_id_next, id);
    if (hp->mirror)
        store_relaxed(&hp->mirror->client_id_next, id);
}

void heap_header_close(struct heap_header *hp)
{
    if (!hp)
        return;
    if (hp->mirror)
        (void) munmap(hp->mirror, SHM_HEADER_PAGE);
    hp->mirror = NULL;
    if (hp->page)
        (void) munmap(hp->page, SHM_HEADER_PAGE);
    if (hp->fd >= 0)
        (void) close(hp->fd);
    hp->page = NULL;
    hp->fd = -1;
}

void heap_header_file_name(char *buf, size_t len)
{
    (void) snprintf(buf, len, "%s", HEADER_FILE);
}
