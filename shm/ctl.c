/* The control segment: creation, its robust lock, cache slots and the
 * creation of heap segments (the owner's side).
 *
 * Cache slots are claimed lock-free: a CAS of state FREE -> OWNED gives the
 * claimer the slot (acq_rel: it acquires the bins as the last releaser left
 * them, drained). Only the owner writes an OWNED slot's bins, except under
 * the steal protocol (tcache.c) or after the owner's death. */
#include <errno.h>
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

int shm_mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    int r;

    r = pthread_mutexattr_init(&attr);
    if (r)
        return -r;
    r = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (!r)
        r = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    /* Priority inheritance makes the kernel track the owner: a plain
     * robust futex can strand a sleeping waiter when the thread it woke is
     * killed before taking the lock while another takes it on the fast
     * path (found by death_random_kill_trimmer). Uncontended, a PI lock is
     * still one CAS and no system call. */
    if (!r)
        r = pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT);
    if (!r)
        r = pthread_mutex_init(m, &attr);
    (void) pthread_mutexattr_destroy(&attr);
    return -r;
}

int ctl_format(int fd, const struct shm_config *cfg)
{
    uint64_t size = ctl_bytes();
    struct ctl_header *c;
    int r;

    if (cfg->max_segments < 1 || cfg->max_segments >= SHM_MAX_SEGMENTS)
        return -EINVAL;
    /* Segments are whole blocks, and hold their metadata plus some. */
    if (cfg->segment_size % SHM_BLOCK_SIZE || cfg->segment_size < 4 * MiB ||
        cfg->segment_size > SHM_SEG_SPAN)
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
    r = shm_mutex_init(&c->lock);
    if (r == 0)
        /* release: the magic is written last; see seg_format(). */
        store_release(&c->magic, SHM_CTL_MAGIC);
    (void) munmap(c, size);
    return r;
}

int heap_ctl_create(const struct shm_config *cfg, int *ret_fd)
{
    int fd, r;

    if (!cfg || !ret_fd)
        return -EINVAL;
    fd = os_memfd("shmheap-ctl", 0);
    if (fd < 0)
        return fd;
    r = ctl_format(fd, cfg);
    if (r < 0)
        goto fail;
    r = os_seal_shrink(fd);
    if (r < 0)
        goto fail;
    *ret_fd = fd;
    return 0;
fail:
    (void) close(fd);
    return r;
}

int ctl_check_header(const struct ctl_header *c, uint64_t size)
{
    if (size < sizeof(*c))
        return -EBADF;
    if (load_acquire(&c->magic) != SHM_CTL_MAGIC)
        return -EBADF;
    if (c->version != SHM_LAYOUT_VERSION || c->header_size != sizeof(*c))
        return -EPROTO;
    if (c->ctl_size != size || c->config.max_segments >= SHM_MAX_SEGMENTS)
        return -EBADMSG;
    return 0;
}

/* A dead holder may have left a root half written: any entry whose name
 * is not terminated is cleared. */
static void ctl_recover(struct ctl_header *c)
{
    for (unsigned i = 0; i < SHM_MAX_ROOTS; i++)
        if (memchr(c->roots[i].name, 0, sizeof(c->roots[i].name)) == NULL)
            memset(&c->roots[i], 0, sizeof(c->roots[i]));
}

int ctl_lock(struct ctl_header *c)
{
    int r = pthread_mutex_lock(&c->lock);

    if (r == EOWNERDEAD) {
        ctl_recover(c);
        r = pthread_mutex_consistent(&c->lock);
    }
    return -r;
}

void ctl_unlock(struct ctl_header *c)
{
    (void) pthread_mutex_unlock(&c->lock);
}

int ctl_slot_claim(struct heap *h, uint32_t *ret_index)
{
    struct ctl_header *c = h->ctl;

    for (uint32_t i = 0; i < SHM_MAX_SLOTS; i++) {
        struct cache_slot *s = &c->slots[i];
        uint32_t expected = SLOT_FREE;

        if (load_relaxed(&s->state) != SLOT_FREE)
            continue;
        if (!cas_strong_acq_rel(&s->state, &expected, SLOT_OWNED))
            continue;
        store_relaxed(&s->pid, (uint32_t) h->pid);
        store_relaxed(&s->client_id, h->client_id);
        store_relaxed(&s->busy, 0);
        store_relaxed(&s->steal, 0);
        store_relaxed(&s->trim_gen_seen, load_relaxed(&c->trim_gen));
        store_relaxed(&s->claim_bytes, slot_bytes_in_use(s));
        store_relaxed(&s->claim_allocs, slot_allocs(s));
        store_relaxed(&s->claim_frees, slot_frees(s));
        ctl_raise_slots_high(c, i + 1);
        *ret_index = i;
        return 0;
    }
    return -EMFILE;
}

void ctl_slot_release(struct heap *h, uint32_t index)
{
    /* release: the drained bins are published with the state. */
    store_release(&h->ctl->slots[index].state, SLOT_FREE);
}

void ctl_raise_slots_high(struct ctl_header *c, uint32_t n)
{
    uint32_t high = load_relaxed(&c->slots_high);

    /* release: a reader that loads the new bound (acquire) sees the claim
     * of every slot below it. */
    while (n > high && !__atomic_compare_exchange_n(&c->slots_high, &high, n, true,
                                                    __ATOMIC_RELEASE, __ATOMIC_RELAXED))
        ;
}

uint32_t ctl_slots_high(const struct ctl_header *c)
{
    uint32_t n = load_acquire(&c->slots_high);

    return n < SHM_MAX_SLOTS ? n : SHM_MAX_SLOTS;
}

uint64_t ctl_raise_peak(struct ctl_header *c, uint64_t bytes)
{
    uint64_t peak = load_relaxed(&c->peak_bytes);

    /* relaxed: the peak publishes nothing; a lost race retries with the
     * value that won. */
    while (bytes > peak && !__atomic_compare_exchange_n(&c->peak_bytes, &peak, bytes, true,
                                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    return bytes > peak ? bytes : peak;
}

/* ---- heap segments (owner side) ---- */

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
    if (page > 4096) {
        uint64_t meta;

        /* Huge pages must really be there: take the ones the metadata
         * needs now, so a pool without free pages is an error here, not
         * SIGBUS later. */
        r = seg_metadata_bytes(size, (uint32_t) page, &meta);
        if (r == 0)
            r = os_commit(fd, 0, (meta + page - 1) & ~(page - 1));
        if (r < 0)
            goto fail;
    } else {
        r = os_seal_shrink(fd);
        if (r < 0)
            goto fail;
    }
    *ret_fd = fd;
    return 0;
fail:
    (void) close(fd);
    return r;
}

int heap_segment_create(int ctl_fd, uint64_t min_bytes, int policy, int *ret_fd,
                        uint32_t *ret_index)
{
    static const uint64_t pages_auto[] = {GiB, 2 * MiB, 4096};
    uint64_t ctl_size, size, page = 0;
    struct ctl_header *c;
    const uint64_t *try;
    unsigned ntry;
    uint32_t index;
    int fd = -1, r;
    void *base;

    if (!ret_fd || !ret_index || policy < 0 || policy >= _SHM_PAGES_MAX)
        return -EINVAL;
    r = os_fstat_size(ctl_fd, &ctl_size, NULL);
    if (r < 0)
        return r;
    c = mmap(NULL, ctl_size, PROT_READ | PROT_WRITE, MAP_SHARED, ctl_fd, 0);
    if (c == MAP_FAILED)
        return -errno;
    r = ctl_check_header(c, ctl_size);
    if (r < 0)
        goto out;
    index = load_acquire(&c->nsegments);
    if (index > c->config.max_segments) {
        r = -ENOSPC;
        goto out;
    }
    size = c->config.segment_size;
    /* Room for the metadata (well under 1%) on top of what was asked. */
    if (min_bytes + min_bytes / 64 + 4 * MiB > size)
        size = min_bytes + min_bytes / 64 + 4 * MiB;
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
    r = -ENOMEM;
    for (unsigned i = 0; i < ntry; i++) {
        /* Whole pages, and whole blocks. */
        uint64_t unit = try[i] > SHM_BLOCK_SIZE ? try[i] : SHM_BLOCK_SIZE;
        uint64_t sz = (size + unit - 1) & ~(unit - 1);

        if (sz > SHM_SEG_SPAN)
            continue;
        r = segment_try(sz, try[i], &fd);
        if (r == 0) {
            page = try[i];
            size = sz;
            break;
        }
    }
    if (r < 0)
        goto out;
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (base == MAP_FAILED) {
        r = -errno;
        goto out_close;
    }
    r = seg_format(base, fd, index, size, (uint32_t) page);
    (void) munmap(base, size);
    if (r < 0)
        goto out_close;
    store_relaxed(&c->segs[index].size, size);
    store_relaxed(&c->segs[index].page_size, (uint32_t) page);
    store_relaxed(&c->segs[index].state, SEG_LIVE);
    /* release: an attacher that reads the new count (acquire) sees the
     * entry filled in and the segment formatted. */
    store_release(&c->nsegments, index + 1);
    *ret_fd = fd;
    *ret_index = index;
    (void) munmap(c, ctl_size);
    return 0;
out_close:
    (void) close(fd);
out:
    (void) munmap(c, ctl_size);
    return r;
}
