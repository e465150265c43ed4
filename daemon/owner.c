/* The heap the daemon owns: the control segment, the heap segments' fds,
 * growth, the daemon's own attachment and publishing the config.
 *
 * Where segments live: memfds handed to systemd's fd store (fdstore.c),
 * or files in a state directory (statedir.c). At start the daemon adopts
 * the heap it finds in either (adopt.c) and creates a new one otherwise.
 *
 * The header page (the header, the config, the segment table; layout.h,
 * shm/header.c) is the daemon's alone: it maps it read-write and sealed it
 * before any fd of it left, so clients map it read-only. Everything else in
 * the control segment any client can write. The daemon also keeps its own
 * record of every segment (fd, size, page size, from fstat of its fd) and
 * answers from it; `verify` compares the two (owner_verify). Segments are
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

/* Called by heap_segment_create_kept before it publishes a new segment:
 * into systemd's fd store (a no-op without one, and for a state dir,
 * where the file is the keeping). seg_lock held. */
static void keep_segment(void *ctx, uint32_t index, int fd)
{
    fdstore_put(ctx, index, fd);
}

static int hook_open_header(void *ctx)
{
    struct daemon *d = ctx;
    int fd = fcntl(d->hdr.fd, F_DUPFD_CLOEXEC, 3);

    return fd < 0 ? -errno : fd;
}

static int hook_grow(void *ctx, uint64_t min_bytes)
{
    uint32_t index;

    return owner_grow(ctx, min_bytes, &index);
}

int owner_grow(struct daemon *d, uint64_t min_bytes, uint32_t *ret_index)
{
    struct ctl_header *ctl = d->hdr.page;
    char b1[32], b2[32];
    uint32_t index, policy;
    struct stat st;
    int fd, r;

    pthread_mutex_lock(&d->seg_lock);
    /* The policy as published in the header page (owner_publish_config
     * keeps it equal to cfg.shm; only the daemon writes it), read here so
     * that any thread may grow. */
    policy = load_relaxed(&ctl->config.huge_pages);
    if (policy >= _SHM_PAGES_MAX)
        policy = SHM_PAGES_AUTO;
    /* The limits are the daemon's own config, never the control segment's
     * copy (any client can write it). */
    r = heap_segment_create_kept(&d->hdr, &d->cfg.shm, d->state_dir_fd, min_bytes, (int) policy,
                                 keep_segment, d, &fd, &index);
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
        /* The header page's count disagrees with ours: a bug of ours. */
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

/* The heap an earlier daemon left, if any: fds[] by index (-1: none);
 * returns where it was found, or NULL. */
static const char *owner_find_stored(struct daemon *d, int fds[SHM_MAX_SEGMENTS], int *ret_hdr_fd)
{
    char hname[32];
    bool any = false;
    int r;

    *ret_hdr_fd = -1;
    if (d->state_dir_fd < 0) {
        *ret_hdr_fd = d->stored_hdr_fd;
        d->stored_hdr_fd = -1;
        if (*ret_hdr_fd >= 0 && d->stored_fds[0] < 0) {
            /* A header page without its control segment belongs to no
             * heap: dropped, so that the new heap's is the only one. */
            (void) close(*ret_hdr_fd);
            *ret_hdr_fd = -1;
            fdstore_remove_header(d, d->stored_hdr_gen);
        }
        for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++) {
            fds[i] = d->stored_fds[i];
            d->stored_fds[i] = -1;
            any |= fds[i] >= 0;
        }
        if (fds[0] >= 0)
            return "systemd's fd store";
        if (any) {
            log_warning("systemd passed heap segments without a control segment; they cannot "
                        "be adopted and are dropped");
            for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++)
                if (fds[i] >= 0) {
                    (void) close(fds[i]);
                    fds[i] = -1;
                    fdstore_remove(d, i);
                }
        }
        return NULL;
    }
    for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++)
        any |= d->stored_fds[i] >= 0;
    if (any)
        log_warning("systemd passed stored segments, but the state directory %s keeps the heap; "
                    "ignoring them",
                    d->state_dir);
    fdstore_close_unused(d);
    r = statedir_load(d, fds);
    if (r < 0) {
        for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++)
            fds[i] = -1;
        return NULL;
    }
    if (fds[0] >= 0) {
        heap_header_file_name(hname, sizeof(hname));
        *ret_hdr_fd = openat(d->state_dir_fd, hname, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        return d->state_dir;
    }
    for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++)
        if (fds[i] >= 0) {
            (void) close(fds[i]);
            fds[i] = -1;
        }
    if (r > 0)
        statedir_remove_from(d, 1);
    return NULL;
}

static int owner_attach(struct daemon *d)
{
    struct heap_hooks hooks = {.ctx = d,
                               .open_segment = hook_open_segment,
                               .grow = hook_grow,
                               .open_header = hook_open_header};
    int r = heap_attach(d->ctl_fd, &hooks, 0, &d->heap);

    if (r < 0) {
        log_error("cannot attach to the heap: %s", strerror(-r));
        return r;
    }
    /* A segment's lock word is any client's to write: the daemon never
     * waits on it forever nor lets glibc abort on it (shm/os.c). */
    heap_guard_locks(d->heap, DAEMON_LOCK_WAIT_MS);
    memset(&d->locks_logged, 0, sizeof(d->locks_logged));
    memset(&d->locks_verified, 0, sizeof(d->locks_verified));
    return 0;
}

/* A new, empty heap: the control segment and the first heap segment. */
static int owner_create(struct daemon *d)
{
    uint32_t index;
    struct stat st;
    int r;

    heap_header_close(&d->hdr); /* one an adoption cut short made */
    if (d->state_dir_fd >= 0)
        r = heap_ctl_create_at(d->state_dir_fd, &d->cfg.shm, &d->ctl_fd);
    else
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
    /* The header page, from the control segment's first page as
     * heap_ctl_create wrote it; sealed before anyone sees it. */
    r = heap_header_create(d->ctl_fd, d->state_dir_fd, &d->hdr);
    if (r < 0) {
        log_error("cannot create the header page: %s", strerror(-r));
        return r;
    }
    /* The control memfd's own first page keeps a copy, for processes
     * that map the control segment alone (shm/header.c). */
    r = heap_header_mirror_to(&d->hdr, d->ctl_fd);
    if (r < 0) {
        log_error("cannot map the control segment's first page: %s", strerror(-r));
        return r;
    }
    d->seg_fds[0] = d->ctl_fd;
    d->seg_size[0] = (uint64_t) st.st_size;
    d->seg_page[0] = 4096;
    d->nsegs = 1;
    /* The header page first: a control segment in the store always has
     * its header page there. */
    fdstore_put_header(d, 0, d->hdr.fd);
    fdstore_put(d, 0, d->ctl_fd);
    /* Attach first (there is no heap segment yet), so that growth reads the
     * published config through the attachment's view of the control. */
    r = owner_attach(d);
    if (r < 0)
        return r;
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

int owner_init(struct daemon *d)
{
    int fds[SHM_MAX_SEGMENTS], hdr_fd;
    const char *source;
    int r;

    d->hdr.fd = -1;
    d->hdr.page = NULL;
    d->hdr.mirror = NULL;
    pthread_mutex_init(&d->seg_lock, NULL);
    for (unsigned i = 0; i < SHM_MAX_SEGMENTS; i++)
        d->seg_fds[i] = -1;
    if (d->cfg.state_dir[0]) {
        r = statedir_open(d);
        if (r < 0)
            return r;
    }
    source = owner_find_stored(d, fds, &hdr_fd);
    if (!source)
        return owner_create(d);
    r = adopt_heap(d, fds, hdr_fd, source);
    for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++)
        if (fds[i] >= 0)
            (void) close(fds[i]);
    if (hdr_fd >= 0)
        (void) close(hdr_fd);
    if (r == -ENODATA) {
        /* A creation cut short before its header page: no heap segment
         * was ever published, so there is nothing to lose. */
        if (d->state_dir_fd >= 0)
            statedir_remove_from(d, 1);
        else
            fdstore_remove(d, 0);
        return owner_create(d);
    }
    if (r == 0) {
        r = owner_attach(d);
        if (r == 0)
            r = adopt_recover(d, source);
        if (r == 0)
            owner_publish_config(d); /* this daemon's config, not the earlier one's */
        return r;
    }
    if (r == -EPROTO || !d->discard_bad_heap) {
        if (r != -EPROTO)
            log_error("start with --discard-bad-heap to set it aside and start a new, empty "
                      "heap");
        return r;
    }
    log_notice("--discard-bad-heap: setting the stored heap aside and starting a new, empty one");
    if (d->state_dir_fd >= 0)
        statedir_discard(d);
    else
        for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++)
            fdstore_remove(d, i);
    if (d->state_dir_fd < 0)
        fdstore_remove_header(d, d->stored_hdr_gen);
    return owner_create(d);
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
    heap_header_close(&d->hdr);
    fdstore_close_unused(d);
    statedir_close(d);
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
    heap_header_publish_config(&d->hdr, &d->cfg.shm);
}

void owner_verify(struct daemon *d, struct verify_report *rep)
{
    const struct ctl_header *hp = d->hdr.page, *seen = heap_ctl(d->heap);
    const struct shm_config *want = &d->cfg.shm, *got = &hp->config;
    struct stat st;

    if (load_relaxed(&hp->magic) != SHM_CTL_MAGIC || hp->version != SHM_LAYOUT_VERSION ||
        hp->header_size != sizeof(struct ctl_header))
        heap_verify_problem(rep, "control segment: header magic, version or size wrong");
    if (fstat(d->ctl_fd, &st) < 0 || hp->ctl_size != (uint64_t) st.st_size)
        heap_verify_problem(rep, "control segment: the header says %" PRIu64 " bytes, not fstat's",
                            hp->ctl_size);
    if (got->segment_size != want->segment_size || got->huge_pages != want->huge_pages ||
        got->thread_cache_bytes != want->thread_cache_bytes ||
        got->bundle_objects != want->bundle_objects ||
        got->recycler_cap_bundles != want->recycler_cap_bundles ||
        got->retain_empty_blocks != want->retain_empty_blocks ||
        got->trim_interval_ms != want->trim_interval_ms || got->max_clients != want->max_clients ||
        got->max_segments != want->max_segments ||
        got->max_client_bytes != want->max_client_bytes ||
        got->max_uid_bytes != want->max_uid_bytes ||
        got->reconnect_wait_ms != want->reconnect_wait_ms)
        heap_verify_problem(rep, "control segment: the config copy differs from the daemon's");
    pthread_mutex_lock(&d->seg_lock); /* no segment is published meanwhile */
    /* What the daemon's attachment reads (the mapping every client has)
     * must be the page the daemon writes: the sealed one. */
    if (memcmp(seen->header_page, hp->header_page, SHM_HEADER_PAGE) != 0)
        heap_verify_problem(rep, "control segment: the mapped header page is not the daemon's");
    /* The copy in the control memfd's own first page is any client's to
     * write: reported, and restored from the header page. */
    if (!heap_header_mirror_ok(&d->hdr)) {
        heap_verify_problem(rep, "control segment: its first page (the copy of the header page) "
                                 "was written by a client; restored");
        heap_header_mirror_repair(&d->hdr);
    }
    if (load_acquire(&hp->nsegments) != d->nsegs)
        heap_verify_problem(rep,
                            "control segment: the table lists %" PRIu32 " segments, the "
                            "daemon has %" PRIu32,
                            load_acquire(&hp->nsegments), d->nsegs);
    for (uint32_t i = 1; i < d->nsegs && i < SHM_MAX_SEGMENTS; i++) {
        const struct seg_entry *e = &hp->segs[i];
        bool live = d->seg_fds[i] >= 0;

        if (live ? load_relaxed(&e->state) != SEG_LIVE ||
                            load_relaxed(&e->size) != d->seg_size[i] ||
                            load_relaxed(&e->page_size) != d->seg_page[i]
                 : load_relaxed(&e->state) == SEG_LIVE)
            heap_verify_problem(rep,
                                "control segment: table entry %" PRIu32 " (state %" PRIu32
                                ", %" PRIu64 " bytes) disagrees with the daemon's record",
                                i, load_relaxed(&e->state), load_relaxed(&e->size));
    }
    pthread_mutex_unlock(&d->seg_lock);
}

void owner_lock_report(struct daemon *d, struct verify_report *rep)
{
    struct heap_lock_report now, *was = &d->locks_logged;

    if (!d->heap)
        return;
    heap_lock_report(d->heap, &now);
    if (now.dead_words != was->dead_words)
        log_warning("segment %" PRIu32 ": its lock word named thread %" PRIu32
                    ", which does not exist (written by a client): taken as a dead holder's and "
                    "recovered (%" PRIu64 " times in all)",
                    now.last_seg, now.last_tid, now.dead_words);
    if (now.own_words != was->own_words)
        log_warning("segment %" PRIu32
                    ": its lock word named the daemon's own thread, which did not "
                    "hold it (written by a client, or a dead holder's reused id): taken as a dead "
                    "holder's and recovered (%" PRIu64 " times in all)",
                    now.last_seg, now.own_words);
    if (now.recovered != was->recovered)
        log_info("segment %" PRIu32 ": its lock's holder was gone (it died holding it); the lock "
                 "was taken over and what it was doing repaired (%" PRIu64 " times in all)",
                 now.last_seg, now.recovered);
    if (now.foreign_unlocks != was->foreign_unlocks)
        log_warning("a segment lock word was written while the daemon held it: left to its next "
                    "locker (%" PRIu64 " times in all)",
                    now.foreign_unlocks);
    if (now.timeouts != was->timeouts)
        log_warning("segment %" PRIu32 ": its lock stayed taken over %u ms; the operation that "
                    "needed it failed (%" PRIu64 " times in all)",
                    now.last_seg, DAEMON_LOCK_WAIT_MS, now.timeouts);
    if (rep) {
        /* verify reports what happened since the last verify. */
        if (now.dead_words != d->locks_verified.dead_words)
            heap_verify_problem(rep,
                                "segment %" PRIu32 ": lock word named thread %" PRIu32
                                ", which does not exist; recovered as a dead holder's",
                                now.last_seg, now.last_tid);
        if (now.own_words != d->locks_verified.own_words)
            heap_verify_problem(rep,
                                "segment %" PRIu32 ": lock word named the daemon's own thread; "
                                "recovered as a dead holder's",
                                now.last_seg);
        if (now.foreign_unlocks != d->locks_verified.foreign_unlocks)
            heap_verify_problem(rep, "a segment lock word was written while the daemon held it");
        if (now.timeouts != d->locks_verified.timeouts)
            heap_verify_problem(rep, "segment %" PRIu32 ": lock held over %u ms", now.last_seg,
                                DAEMON_LOCK_WAIT_MS);
        d->locks_verified = now;
    }
    *was = now;
}
