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
};

/* ---- owner side (ctl.c, segment.c) ---- */

/* Built-in defaults of every tunable. */
void heap_config_default(struct shm_config *ret);

/* Creates and initialises a control segment; returns its fd (O_CLOEXEC)
 * in *ret_fd. */
int heap_ctl_create(const struct shm_config *cfg, int *ret_fd);

/* Creates heap segment number ctl->nsegments with at least min_bytes of
 * data space (0: config.segment_size), backed by pages by `policy`
 * (SHM_PAGES_AUTO: 1G, then 2M, then 4K), initialises it and publishes it.
 * Returns its fd and index. -ENOMEM with SHM_PAGES_1G/2M when no huge page
 * of that size is free; -ENOSPC when max_segments are in use. Callers
 * serialise calls (one owner). */
int heap_segment_create(
        int ctl_fd, uint64_t min_bytes, int policy, int *ret_fd, uint32_t *ret_index);

/* ---- attachment (heap.c) ---- */

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

/* ---- trim and reclamation (trim.c) ---- */
struct trim_result {
    uint64_t trim_gen;
    uint64_t bytes_released;
    uint32_t caches_flushed; /* slots drained: by their owner or taken over */
    uint32_t caches_total;   /* slots in use when the trim started */
};
/* Bumps the trim generation, drains every cache it can (idle threads'
 * caches are taken over; see tcache.c), waits up to wait_ms for busy
 * owners to flush themselves, returns recycler excess to blocks and
 * decommits empty blocks beyond retain_empty_blocks. */
int heap_trim(struct heap *h, unsigned wait_ms, struct trim_result *ret);
/* Gives back the caches of every slot owned by client_id (a client that
 * detached or died). Returns the number of slots reclaimed. */
int heap_reclaim_client(struct heap *h, uint64_t client_id);
/* Same for every slot whose owning process no longer exists, then frees
 * the private objects of every owner that is gone (heap_reclaim_owned_gone). */
int heap_reclaim_dead(struct heap *h);

/* ---- owners (owned.c) ----
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
/* Same for every attachment that detached or whose process is gone. */
int heap_reclaim_owned_gone(struct heap *h, struct heap_owned_reclaim *ret);

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
uint32_t heap_quota_refuse_uid(struct heap *h,
                               bool (*over)(void *ctx, uint64_t client_id),
                               void *ctx);

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
/* Walks the whole heap and checks every invariant. Takes each segment's
 * lock in turn; for an exact answer, call while no thread allocates. */
int heap_verify(struct heap *h, struct verify_report *ret);

/* ---- size classes (sizeclass.c) ---- */
unsigned sizeclass_of(size_t size); /* size 1..SHM_SMALL_MAX */
uint32_t sizeclass_size(unsigned cls);

#endif
