/* The heap core's API, used by libshmheap (client/), shmheapd (daemon/),
 * the tests and the benchmark. Plain C over mapped memfds: no sockets, no
 * logging. Functions return 0 or a negative errno unless said otherwise;
 * ret_ parameters are written only on success.
 *
 * Two roles:
 *   owner      creates the control segment (heap_ctl_create) and heap
 *              segments (heap_segment_create); in production that is
 *              shmheapd, in tests the test process.
 *   attachment any process (the owner too) that maps the heap
 *              (heap_attach) and allocates through per-thread caches.
 * An attachment learns of segments from the control segment and obtains
 * their fds through hooks->open_segment (the daemon's `segment` op, or in
 * tests a table of inherited fds). */
#ifndef SHM_HEAP_H
#define SHM_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shm/layout.h"

struct heap;
struct heap_header; /* the owner's header page (header.c), declared below */

struct heap_hooks {
    void *ctx;
    /* Returns an fd (the callee keeps no claim on it) for segment `index`,
     * or a negative errno. Required. */
    int (*open_segment)(void *ctx, uint32_t index);
    /* Asks the owner for a new heap segment of at least min_bytes usable
     * space; returns 0 once the segment is published in the control
     * segment, or a negative errno (-ENOSPC: the heap is at its limit).
     * May be NULL: the heap then never grows. */
    int (*grow)(void *ctx, uint64_t min_bytes);
    /* Returns an fd (the callee keeps no claim on it) of the owner's header
     * page (heap_header_create), which heap_attach maps read-only over the
     * control segment's first page, or a negative errno. NULL: the header
     * page is the control segment's own first page (a heap without a
     * daemon). */
    int (*open_header)(void *ctx);
};

/* ---- owner side (create.c) ---- */

/* Built-in defaults of every tunable. */
void heap_config_default(struct shm_config *ret);

/* Creates and initialises a control segment; returns its fd (O_CLOEXEC)
 * in *ret_fd. -EINVAL if cfg's segment_size is not whole blocks in
 * SHM_SEG_MIN_SIZE..SHM_SEG_SPAN or max_segments not in
 * 1..SHM_MAX_SEGMENTS - 1. */
int heap_ctl_create(const struct shm_config *cfg, int *ret_fd);

/* Creates heap segment number ctl->nsegments with at least min_bytes of
 * data space (0: cfg->segment_size), backed by pages by `policy`
 * (SHM_PAGES_AUTO: 1G, then 2M, then 4K), initialises it and publishes it.
 * cfg is the owner's own config: its segment_size and max_segments are the
 * limits (never the control segment's copy, which any attacher can write).
 * Returns its fd and index. -EINVAL for limits heap_ctl_create would
 * refuse; -ENOMEM with SHM_PAGES_1G/2M when no huge page of that size is
 * free; -ENOSPC when max_segments are in use. Callers serialise calls (one
 * owner). */
int heap_segment_create(int ctl_fd,
                        const struct shm_config *cfg,
                        uint64_t min_bytes,
                        int policy,
                        int *ret_fd,
                        uint32_t *ret_index);

/* ---- a heap that outlives its owner (create.c, adopt.c) ---- */

/* The file name of segment index in a state directory: "control-segment",
 * "heap-segment-N". Also the FDNAME under which the daemon stores it. */
void heap_segment_file_name(uint32_t index, char *buf, size_t len);
/* heap_ctl_create with a file in directory dir_fd (tmpfs or hugetlbfs)
 * instead of a memfd. Files cannot be sealed: whoever can write them can
 * shrink them. */
int heap_ctl_create_at(int dir_fd, const struct shm_config *cfg, int *ret_fd);
/* heap_segment_create for an owner with a header page of its own (hp,
 * heap_header_create) that keeps its segments beyond its own life: a file in dir_fd (dir_fd >= 0;
 * the filesystem gives the page size, not `policy`) or a memfd (dir_fd -1), and keep(ctx, index,
 * fd) (may be NULL) called once the segment is formatted and before it is published, so that it is
 * kept (e.g. in systemd's fd store) by the time anyone can use it. */
int heap_segment_create_kept(struct heap_header *hp,
                             const struct shm_config *cfg,
                             int dir_fd,
                             uint64_t min_bytes,
                             int policy,
                             void (*keep)(void *ctx, uint32_t index, int fd),
                             void *ctx,
                             int *ret_fd,
                             uint32_t *ret_index);

/* ---- the owner's header page (header.c; layout.h says what it holds) ---- */
struct heap_header {
    struct ctl_header *page;   /* the owner's writable mapping: the header page's fields only */
    int fd;                    /* what attachments map (hooks->open_header): sealed or read-only */
    struct ctl_header *mirror; /* the control segment's own first page (a copy), or NULL */
};
/* Makes the header page from src_fd's first page (a control segment just
 * made, or an adopted header page): a memfd sealed read-only for everyone
 * but this mapping (dir_fd -1), or the file `header-page` in dir_fd with a
 * read-only fd. -EBADF/-EPROTO/-EBADMSG if the copy is not a header. */
int heap_header_create(int src_fd, int dir_fd, struct heap_header *ret);
/* Maps the header page file an earlier owner left in dir_fd. */
int heap_header_open_at(int dir_fd, struct heap_header *ret);
void heap_header_close(struct heap_header *hp);
/* Keeps a copy of the header page in ctl_fd's own first page (the mirror,
 * for processes that map the control segment alone; header.c), written by
 * the publishing calls below, and copies the page there now. */
int heap_header_mirror_to(struct heap_header *hp, int ctl_fd);
/* False if the mirror differs from the header page (a client wrote it). */
bool heap_header_mirror_ok(const struct heap_header *hp);
void heap_header_mirror_repair(struct heap_header *hp);
/* The owner's changes to the header page (and its mirror). */
void heap_header_publish_segment(struct heap_header *hp,
                                 uint32_t index,
                                 uint64_t size,
                                 uint32_t page);
void heap_header_publish_config(struct heap_header *hp, const struct shm_config *cfg);
void heap_header_set_client_id_next(struct heap_header *hp, uint64_t id);
/* "header-page": its file name in a state directory. */
void heap_header_file_name(char *buf, size_t len);

/* Checks that hdr_fd holds a header page this build can adopt (magic,
 * layout version, header size) and ctl_fd a control segment of the size it
 * names; *ret_nsegments gets its count of segments. -EBADF not a control
 * segment, -EPROTO another layout version, -EBADMSG sizes disagree. `why`
 * (may be NULL) gets a sentence. */
int heap_adopt_check_ctl(
        int ctl_fd, int hdr_fd, uint32_t *ret_nsegments, char *why, size_t why_len);
/* The layout version and segment count in the control segment's own first
 * page (written at creation, then a copy of the header page), for a
 * heap whose header page is missing: -EBADF if it has no magic there. */
int heap_adopt_version(int ctl_fd, uint32_t *ret_version, uint32_t *ret_nsegments);
struct heap_adopt_segment {
    uint32_t state; /* enum seg_state: SEG_RETIRED needs no fd */
    uint32_t page_size;
    uint64_t size;
};
/* Checks that fd (-1: missing) holds heap segment index of the header page
 * hdr_fd: the table's entry, fstat's size and page size, the
 * segment header's magic, version, index and geometry. Same codes, and
 * -ENOENT for a missing fd of a live segment. */
int heap_adopt_check_segment(int hdr_fd,
                             uint32_t index,
                             int fd,
                             struct heap_adopt_segment *ret,
                             char *why,
                             size_t why_len);
#define HEAP_ADOPT_MAX_CLIENTS 1024u
struct heap_adopt_report {
    uint32_t segments;        /* heap segments whose lock was taken (and repaired if needed) */
    uint32_t slots_reclaimed; /* thread caches of gone processes */
    uint32_t clients_gone;    /* clients whose process is gone */
    uint32_t arenas_destroyed;
    uint64_t owned_objects, owned_bytes; /* private objects of gone owners freed */
    uint64_t max_client_id;              /* the highest client id in use or handed out */
    uint32_t nclients;                   /* entries in clients[] (attachments found) */
    struct {
        uint64_t client_id;
        uint32_t pid;
        bool alive;
    } clients[HEAP_ADOPT_MAX_CLIENTS];
};
/* Run by a new owner on the heap it adopted, through its own attachment h:
 * repairs locks whose holders died, then reclaims what every gone process
 * left (heap_reclaim_dead, SESSION arenas), and lists the attachments it
 * found. */
int heap_adopt_recover(struct heap *h, struct heap_adopt_report *ret);

/* ---- attachment (attach.c, heap.c) ---- */

/* Maps the control segment behind ctl_fd (which it dups) and every
 * published heap segment. client_id tags this attachment's cache slots.
 * -EPROTO on a wrong magic or layout version, -EBADF on an fd that is not
 * a heap. */
int heap_attach(int ctl_fd,
                const struct heap_hooks *hooks,
                uint64_t client_id,
                struct heap **ret_heap);
/* Gives back every cache this attachment's threads hold, then unmaps. */
void heap_detach(struct heap *h);
/* Maps segments published since the last call. */
int heap_sync_segments(struct heap *h);
/* Maps the header page behind fd (a restarted owner's copy) over the one
 * mapped now, once it checked that it is a header of this heap (layout,
 * control segment size) whose table keeps every segment mapped here. */
int heap_remap_header(struct heap *h, int fd);

/* ---- tracking for memory debuggers (alloc.c) ----
 * Set on an attachment (before its first allocation), these are told of
 * every object its malloc family hands out and of every free this process
 * makes of one, so that valgrind or ASan can report misuse of shmheap
 * objects as of malloc's (client/track.c). A tracked attachment never
 * takes the fast paths: its threads' caches are found by the slow lookup
 * (tcache_get never makes them the thread's last cache), so the hooks live
 * on the slow paths and an untracked attachment pays nothing for them. */
struct heap_track {
    void *ctx;
    /* p was handed out for `size` bytes (its usable size may be more). */
    void (*alloc)(void *ctx, void *p, size_t size);
    /* p, a pointer this process frees: true if the hook keeps it (it
     * frees it later through heap_free, when its own free returns false
     * for it); false: the heap frees it now. */
    bool (*free)(void *ctx, void *p);
};
/* NULL: untracked (the default). */
void heap_set_track(struct heap *h, const struct heap_track *track);

/* For an attachment that trusts nothing in shared memory (the daemon's):
 * a segment lock is waited for at most wait_ms (then the operation fails
 * with -ETIMEDOUT), and a lock word a client wrote never hangs or aborts
 * the process (shlock_lock_until, shm/lock.c). Before the attachment is used. */
void heap_guard_locks(struct heap *h, uint32_t wait_ms);
/* What the guarded locks found, counted since the attachment (relaxed). */
struct heap_lock_report {
    uint64_t dead_words;      /* a lock word named a thread that did not exist */
    uint64_t own_words;       /* a lock word named the locking thread, which did not hold it */
    uint64_t timeouts;        /* a lock stayed taken past wait_ms (or the kernel refused it) */
    uint64_t foreign_unlocks; /* an unlock found the word written by someone else */
    uint64_t recovered;       /* locks taken over from a dead holder (not counted above) */
    uint32_t last_tid;        /* the thread the last dead word named */
    uint32_t last_seg;        /* the segment of the last dead or own word, or timeout */
};
void heap_lock_report(struct heap *h, struct heap_lock_report *ret);

/* ---- allocation (tcache.c, alloc.c) ---- */
void *heap_malloc(struct heap *h, size_t size);
void *heap_calloc(struct heap *h, size_t n, size_t size);
void *heap_realloc(struct heap *h, void *p, size_t size);
void *heap_aligned_alloc(struct heap *h, size_t align, size_t size);
void heap_free(struct heap *h, void *p);
size_t heap_usable_size(struct heap *h, const void *p);
/* Gives this thread's cache for h back to the recycler (and blocks). */
void heap_thread_flush(struct heap *h);

uint64_t heap_to_off(struct heap *h, const void *p);
void *heap_from_off(struct heap *h, uint64_t off); /* NULL if not inside a mapped segment */
/* True if p points into a mapped heap segment of h. */
bool heap_contains(struct heap *h, const void *p);
struct ctl_header *heap_ctl(struct heap *h);

/* ---- roots (roots.c) ---- */
int heap_root_set(struct heap *h, const char *name, uint64_t off); /* off 0 removes */
int heap_root_get(struct heap *h, const char *name, uint64_t *ret_off);

/* ---- arenas and pools (arena.c, pool.c) ---- */
#define HEAP_ARENA_SESSION 1u
struct arena_stats {
    uint64_t capacity;  /* usable bytes */
    uint64_t allocated; /* bytes handed out since the last reset, with padding */
    uint64_t count;     /* allocations since the last reset */
    uint64_t remaining;
    double utilization; /* allocated / capacity */
};
int heap_arena_create(struct heap *h, size_t capacity, unsigned flags, uint64_t *ret_arena);
void *heap_arena_alloc(struct heap *h, uint64_t arena, size_t size, size_t align);
int heap_arena_reset(struct heap *h, uint64_t arena);
int heap_arena_destroy(struct heap *h, uint64_t arena);
int heap_arena_stats(struct heap *h, uint64_t arena, struct arena_stats *ret);
/* Destroys every SESSION arena created by client_id; returns how many. */
int heap_arena_destroy_session(struct heap *h, uint64_t client_id);

int heap_pool_create(struct heap *h, size_t object_size, uint64_t *ret_pool);
void *heap_pool_alloc(struct heap *h, uint64_t pool);
int heap_pool_free(struct heap *h, uint64_t pool, void *p);
int heap_pool_destroy(struct heap *h, uint64_t pool);

/* ---- trim (trim.c) and reclamation (reclaim.c) ---- */
struct trim_result {
    uint64_t trim_gen;
    uint64_t bytes_released;
    uint32_t caches_flushed; /* slots drained: by their owner or taken over */
    uint32_t caches_total;   /* slots in use when the trim started */
};
/* Bumps the trim generation, drains every cache it can (idle threads'
 * caches are taken over; see tcache.c), waits up to wait_ms for busy
 * owners to flush themselves, returns recycler excess to blocks and
 * decommits empty blocks beyond retain_empty_blocks. 0, or -EAGAIN when the
 * recyclers were left as they are (no cache slot free to carry their
 * bundles: tcache_drain_recyclers); the rest was done, *ret is filled. */
int heap_trim(struct heap *h, unsigned wait_ms, struct trim_result *ret);
/* A bounded release, for an automatic policy (the daemon's decay.c): no
 * trim generation, no wait, so running threads keep their caches. Takes
 * over and drains the caches of the slots listed in idle_slots (the
 * caller judged their threads idle; a slot whose owner is busy, or which
 * is free or of a dead process, is skipped: heap_reclaim_dead's job),
 * optionally empties the recyclers into the blocks, then decommits free
 * blocks beyond retain_blocks and free pages inside slabs, stopping once
 * max_bytes are released (the last slab's pages may pass it by at most
 * SHM_SLAB_MAX_BLOCKS blocks). bytes_released is what went back by the kernel's count on normal
 * pages (a page punched before is asked for again but not counted), by the units on huge pages.
 * Counts nothing into the control segment's trim counters: the caller keeps its own. */
struct release_req {
    uint64_t max_bytes;
    uint64_t retain_blocks;
    bool drain_recyclers;
    uint32_t nidle;
    const uint32_t *idle_slots; /* slot indexes */
};
struct release_result {
    uint64_t bytes_released;
    uint32_t caches_flushed;
};
/* 0, or -EAGAIN as heap_trim's (drain_recyclers, no slot free: the rest
 * was done, *ret is filled). */
int heap_release(struct heap *h, const struct release_req *req, struct release_result *ret);
/* For an idleness test: a value that moves whenever the thread owning slot
 * `index` allocates or frees through its cache (its counters and its bins'
 * heads), the owner's pid and the objects its cache holds. Relaxed loads: a
 * change may be seen a tick late. False if the slot is not in use. */
struct slot_activity {
    uint64_t signature;
    uint64_t cached_objects;
    uint32_t pid;
};
bool heap_slot_activity(struct heap *h, uint32_t index, struct slot_activity *ret);
/* 1 + the highest slot index ever used: loops over the slots stop there. */
uint32_t heap_slots_high(struct heap *h);
/* Gives back the caches of every slot owned by client_id (a client that
 * detached or died). Returns the number of slots reclaimed. */
int heap_reclaim_client(struct heap *h, uint64_t client_id);
/* Same for every slot whose owning process no longer exists, then frees
 * the private objects of every owner that is gone (heap_reclaim_owned_gone),
 * then the blocks dead decommitters and punchers left (reclaim.c). */
int heap_reclaim_dead(struct heap *h);

/* ---- owners (owned.c; the sweep: reclaim.c) ----
 * An object from heap_malloc & co. is private to its attachment until
 * heap_to_off() is called on it (or on a pointer into it): that is how an
 * object reaches another process. When the attachment is gone, its private
 * objects are unreachable, and these free them. */
struct heap_owned_reclaim {
    uint32_t owners;  /* owner entries swept and freed */
    uint64_t objects; /* private objects freed */
    uint64_t bytes;   /* their usable sizes */
};
/* Frees the private objects of client_id's attachments: those that
 * detached, and with process_gone (its process has exited) all of them,
 * after reclaiming their caches. */
int heap_reclaim_owned(struct heap *h,
                       uint64_t client_id,
                       bool process_gone,
                       struct heap_owned_reclaim *ret);
/* The same, for an owner that knows the client's process (the daemon,
 * from its peer credentials): only entries of that pid are swept, and a
 * sweep cut short is taken over only if it is that pid's or its process
 * is gone. An entry's words are any client's to write; the pid is not. */
int heap_reclaim_owned_by(struct heap *h,
                          uint64_t client_id,
                          uint32_t pid,
                          bool process_gone,
                          struct heap_owned_reclaim *ret);
/* Same for every attachment that detached or whose process is gone. */
int heap_reclaim_owned_gone(struct heap *h, struct heap_owned_reclaim *ret);
/* Owner entries in use (live, detached or being swept) by client_id's
 * attachments: 0 once a clean detach has been swept (owned.c). */
uint32_t heap_client_owners(struct heap *h, uint64_t client_id);

/* ---- figures (stats.c) ---- */
struct heap_class_stats {
    uint32_t object_size;
    uint64_t in_use;      /* objects */
    uint64_t cached;      /* objects in thread caches */
    uint64_t in_recycler; /* objects in recycler bundles */
    uint64_t rec_pushes, rec_pops, rec_retries;
};
struct heap_seg_stats {
    uint32_t index;
    uint32_t page_size;
    uint64_t size;
    uint64_t committed_bytes;
    uint64_t free_blocks;
    uint64_t metadata_bytes;
};
struct heap_stats {
    uint64_t bytes_reserved;  /* sum of segment sizes */
    uint64_t bytes_committed; /* committed units + control segment */
    uint64_t bytes_in_use;    /* allocated objects, by class size, + large runs */
    uint64_t peak_bytes_in_use;
    uint64_t allocs, frees;
    uint64_t trim_gen, trims, trim_bytes_released;
    uint64_t bad_frees, double_frees, lost_objects;
    /* private objects freed after their owner went (owned.c) */
    uint64_t reclaimed_objects, reclaimed_bytes;
    uint32_t slots_in_use;
    uint32_t nsegments;
    struct heap_class_stats classes[SHM_NCLASSES];
    struct heap_seg_stats segs[SHM_MAX_SEGMENTS];
};
int heap_stats(struct heap *h, struct heap_stats *ret);

/* One attachment's figures (client_id; pid 0: any process): the caches its
 * live threads hold, and their allocations, frees and net bytes since each
 * thread took its cache. Threads that have exited no longer count. */
struct heap_client_usage {
    uint32_t threads;
    uint64_t allocs, frees;
    int64_t bytes_in_use; /* may be negative: frees of others' objects */
};
int heap_client_usage(struct heap *h,
                      uint64_t client_id,
                      uint32_t pid,
                      struct heap_client_usage *ret);

/* ---- quotas (quota.c) ---- */
/* Sets or clears OWNER_REFUSE_UID in every live owner entry: set where
 * over(ctx, client_id) says the client's uid is over max_uid_bytes. Meant
 * for the daemon, which knows each client's uid; clients check the bit on
 * their slow paths. Returns the number of entries now refused. */
uint32_t
heap_quota_refuse_uid(struct heap *h, bool (*over)(void *ctx, uint64_t client_id), void *ctx);

/* ---- verification (verify.c) ---- */
struct verify_report {
    bool consistent;
    bool counts_checked; /* false: some cache could not be frozen, or a thread died
                          * inside a cache operation, so the object count was skipped */
    uint64_t checked_blocks;
    uint64_t checked_objects;
    uint32_t nproblems;
    char problems[16][160]; /* the first 16 problems found */
};
/* Adds a problem to rep (for checks of the caller's own, e.g. the daemon's
 * records against the header page). */
void heap_verify_problem(struct verify_report *rep, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
/* Walks the whole heap and checks every invariant. Takes each segment's
 * lock in turn; for an exact answer, call while no thread allocates. */
int heap_verify(struct heap *h, struct verify_report *ret);

/* ---- size classes (sizeclass.c) ---- */
unsigned sizeclass_of(size_t size); /* size 1..SHM_SMALL_MAX */
uint32_t sizeclass_size(unsigned cls);

#endif
