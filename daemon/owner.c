/* The heap the daemon owns: the control segment, the heap segments' fds,
 * growth, the daemon's own attachment and publishing the config.
 *
 * The daemon keeps its own record of every segment (fd, size, page size,
 * from fstat of its fd) and answers from it, never from the control
 * segment's table, which any attached process can write. Segments are
 * created under seg_lock: by the loop (start, the grow op) and, in
 * principle, by the daemon's own attachment through hooks.grow from any
 * thread. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "shm/atomic.h"

static int hook_open_segment(void *ctx, uint32_t index)
{
    struct daemon *d = ctx;
    int fd = -ENOENT;

    pthread_mutex_lock(&d->seg_lock);
    if (index < d->nsegs && d->seg_fds[index] >= 0) {
        fd = fcntl(d->seg_fds[index], F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
            fd = -errno;
    }
    pthread_mutex_unlock(&d->seg_lock);
    return fd;
}

static int hook_grow(void *ctx, uint64_t min_bytes)
{
    uint32_t index;

    return owner_grow(ctx, min_bytes, &index);
}

int owner_grow(struct daemon *d, uint64_t min_bytes, uint32_t *ret_index)
{
    struct ctl_header *ctl = heap_ctl(d->heap);
    char b1[32], b2[32];
    uint32_t index, policy;
    struct stat st;
    int fd, r;

    pthread_mutex_lock(&d->seg_lock);
    /* The policy as published in the control segment (owner_publish_config
     * keeps it equal to cfg.shm), read here so that any thread may grow. */
    policy = load_relaxed(&ctl->config.huge_pages);
    if (policy >= _SHM_PAGES_MAX)
        policy = SHM_PAGES_AUTO;
    r = heap_segment_create(d->ctl_fd, min_bytes, (int) policy, &fd, &index);
    if (r < 0) {
        uint32_t n = d->nsegs;

        pthread_mutex_unlock(&d->seg_lock);
        if (r == -ENOSPC)
            log_warning("cannot grow the heap: it has max_segments (%" PRIu32 ") segments", n - 1);
        else if (r == -ENOMEM && (policy == SHM_PAGES_1G || policy == SHM_PAGES_2M))
            log_error("cannot create heap segment %" PRIu32 ": not enough free %s huge pages "
                      "(huge_pages \"%s\"; see HugePages_Free in /proc/meminfo, or use "
                      "\"auto\" to fall back to smaller pages)",
                      n, config_huge_pages_name(policy), config_huge_pages_name(policy));
        else
            log_error("cannot create heap segment %" PRIu32 " (huge_pages \"%s\"): %s", n,
                      config_huge_pages_name(policy), strerror(-r));
        return r;
    }
    if (index >= SHM_MAX_SEGMENTS || index < d->nsegs || fstat(fd, &st) < 0) {
        /* The control segment's count was changed behind our back. */
        uint32_t n = d->nsegs;

        pthread_mutex_unlock(&d->seg_lock);
        (void) close(fd);
        log_error("control segment damaged: new segment index %" PRIu32 " with %" PRIu32
                  " segments known; not growing",
                  index, n);
        return -EBADMSG;
    }
    for (uint32_t i = d->nsegs; i < index; i++)
        d->seg_fds[i] = -1;
    d->seg_fds[index] = fd;
    d->seg_size[index] = (uint64_t) st.st_size;
    /* hugetlbfs reports its page size as the block size; tmpfs 4096. */
    d->seg_page[index] = (uint32_t) st.st_blksize;
    d->nsegs = index + 1;
    pthread_mutex_unlock(&d->seg_lock);
    log_info("segment %" PRIu32 " created: %s bytes on %s pages (huge_pages \"%s\")", index,
             bytes_name((uint64_t) st.st_size, b1, sizeof(b1)),
             page_size_name((uint64_t) st.st_blksize, b2, sizeof(b2)),
             config_huge_pages_name(policy));
    *ret_index = index;
    return 0;
}

int owner_init(struct daemon *d)
{
    struct heap_hooks hooks = {.ctx = d, .open_segment = hook_open_segment, .grow = hook_grow};
    uint32_t index;
    struct stat st;
    int r;

    pthread_mutex_init(&d->seg_lock, NULL);
    for (unsigned i = 0; i < SHM_MAX_SEGMENTS; i++)
        d->seg_fds[i] = -1;
    r = heap_ctl_create(&d->cfg.shm, &d->ctl_fd);
    if (r < 0) {
        log_error("cannot create the control segment: %s", strerror(-r));
        return r;
    }
    if (fstat(d->ctl_fd, &st) < 0) {
        r = -errno;
        log_error("cannot stat the control segment: %m");
        return r;
    }
    d->seg_fds[0] = d->ctl_fd;
    d->seg_size[0] = (uint64_t) st.st_size;
    d->seg_page[0] = 4096;
    d->nsegs = 1;
    /* Attach first (there is no heap segment yet), so that growth reads the
     * published config through the attachment's view of the control. */
    r = heap_attach(d->ctl_fd, &hooks, 0, &d->heap);
    if (r < 0) {
        log_error("cannot attach to the heap: %s", strerror(-r));
        return r;
    }
    r = owner_grow(d, 0, &index);
    if (r < 0)
        return r;
    r = heap_sync_segments(d->heap);
    if (r < 0) {
        log_error("cannot map heap segment %" PRIu32 ": %s", index, strerror(-r));
        return r;
    }
    return 0;
}

void owner_fini(struct daemon *d)
{
    if (d->heap)
        heap_detach(d->heap);
    d->heap = NULL;
    for (uint32_t i = 0; i < d->nsegs; i++)
        if (d->seg_fds[i] >= 0)
            (void) close(d->seg_fds[i]);
    d->nsegs = 0;
    d->ctl_fd = -1;
    pthread_mutex_destroy(&d->seg_lock);
}

int owner_segment(struct daemon *d, uint32_t index, uint64_t *ret_size, uint32_t *ret_page)
{
    int fd = -1;

    pthread_mutex_lock(&d->seg_lock);
    if (index < d->nsegs && d->seg_fds[index] >= 0) {
        fd = d->seg_fds[index];
        *ret_size = d->seg_size[index];
        *ret_page = d->seg_page[index];
    }
    pthread_mutex_unlock(&d->seg_lock);
    return fd;
}

uint32_t owner_nsegments(struct daemon *d)
{
    uint32_t n;

    pthread_mutex_lock(&d->seg_lock);
    n = d->nsegs;
    pthread_mutex_unlock(&d->seg_lock);
    return n;
}

void owner_publish_config(struct daemon *d)
{
    struct ctl_header *ctl = heap_ctl(d->heap);
    const struct shm_config *c = &d->cfg.shm;

    /* Each field is stored relaxed: a reader may see a mix of old and new
     * fields while we write, which is harmless (every value alone is valid)
     * and settles at its next look at config_gen. */
    store_relaxed(&ctl->config.segment_size, c->segment_size);
    store_relaxed(&ctl->config.huge_pages, c->huge_pages);
    store_relaxed(&ctl->config.thread_cache_bytes, c->thread_cache_bytes);
    store_relaxed(&ctl->config.bundle_objects, c->bundle_objects);
    store_relaxed(&ctl->config.recycler_cap_bundles, c->recycler_cap_bundles);
    store_relaxed(&ctl->config.retain_empty_blocks, c->retain_empty_blocks);
    store_relaxed(&ctl->config.trim_interval_ms, c->trim_interval_ms);
    store_relaxed(&ctl->config.max_clients, c->max_clients);
    store_relaxed(&ctl->config.max_segments, c->max_segments);
    store_relaxed(&ctl->config.max_client_bytes, c->max_client_bytes);
    store_relaxed(&ctl->config.max_uid_bytes, c->max_uid_bytes);
    /* release: publishes the fields above. A client's tcache loads
     * config_gen with acquire (tcache_reload_config) before it re-reads
     * them, so once it sees the new generation it sees every new value.
     * The daemon is the only writer of config_gen, so load + store (not an
     * atomic add) is enough. */
    store_release(&ctl->config_gen, load_relaxed(&ctl->config_gen) + 1);
}
