/* shmheap: a shared-memory heap managed by the shmheapd daemon.
 *
 * Several processes on one machine attach to one heap and allocate from it
 * locally; any attached process may free any object, and an object has the
 * same shmheap_off_t in every process. This is the only header a client
 * includes; link with -lshmheap (pkg-config shmheap).
 *
 * Errors: functions returning int return 0 on success or a negative
 * SHMHEAP_E* code; shmheap_strerror() names it. The malloc family returns
 * NULL and sets errno (ENOMEM, EINVAL, ESTALE for a handle inherited
 * through fork()). All functions are thread-safe; a handle may be used by
 * every thread of the process that attached it. */
#ifndef SHMHEAP_H
#define SHMHEAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMHEAP_EXPORT __attribute__((visibility("default")))

/* The version of this header and library (the Makefile's VERSION). */
#define SHMHEAP_VERSION_MAJOR 0
#define SHMHEAP_VERSION_MINOR 1
#define SHMHEAP_VERSION_PATCH 0
#define SHMHEAP_VERSION       "0.1.0"

typedef struct shmheap shmheap_t; /* one process's attachment to one daemon */
typedef uint64_t shmheap_off_t;   /* names the same object in every attached process; 0 is null */
#define SHMHEAP_OFF_NULL ((shmheap_off_t) 0)

/* Error codes (negative in return values). */
enum {
    SHMHEAP_OK = 0,
    SHMHEAP_EINVAL = 1,        /* a bad argument */
    SHMHEAP_ENOMEM = 2,        /* the heap (or the system) is out of memory */
    SHMHEAP_ECONNECT = 3,      /* the daemon cannot be reached at the socket path */
    SHMHEAP_EPROTO = 4,        /* the daemon spoke a protocol or layout this library does not */
    SHMHEAP_EDENIED = 5,       /* the daemon refused this user (allowed_uids/allowed_gids) */
    SHMHEAP_EFORKED = 6,       /* a handle used in a child of the process that attached it */
    SHMHEAP_ENOENT = 7,        /* no such root, arena or pool */
    SHMHEAP_EEXIST = 8,        /* already exists */
    SHMHEAP_ENOSPC = 9,        /* a fixed table (roots, thread caches) is full */
    SHMHEAP_ENAMETOOLONG = 10, /* a root name of 56 bytes or more */
    SHMHEAP_EDAEMON = 11,      /* the daemon answered with an error (its message is logged by it) */
    SHMHEAP_EIO = 12,          /* the connection to the daemon failed mid-request */
    _SHMHEAP_EMAX
};

/* ---- attaching ---- */

/* Connects to the daemon at socket_path (NULL: $SHMHEAP_SOCKET, else
 * /run/shmheap/shmheap.sock as root and $XDG_RUNTIME_DIR/shmheap.sock or
 * /tmp/shmheap-$UID.sock otherwise), maps the heap and returns a handle in
 * *out. Returns 0, -SHMHEAP_ECONNECT (no daemon there; the path is in
 * shmheap_last_error()), -SHMHEAP_EDENIED, -SHMHEAP_EPROTO,
 * -SHMHEAP_ENOMEM, -SHMHEAP_ENOSPC (the daemon serves max_clients
 * already), -SHMHEAP_EINVAL (out NULL, or a path too long for a socket),
 * -SHMHEAP_EIO or -SHMHEAP_EDAEMON; shmheap_last_error() says more. The
 * connection stays open until shmheap_detach (the daemon tracks the
 * attachment by it). After fork(), the child attaches for itself. */
SHMHEAP_EXPORT int shmheap_attach(const char *socket_path, shmheap_t **out);
/* Gives this process's thread caches back to the heap, unmaps it and closes
 * the connection; the daemon then frees the objects this attachment never
 * shared (see "Ownership"). No thread may use h during or after the call. */
SHMHEAP_EXPORT void shmheap_detach(shmheap_t *h);

/* ---- the malloc family ---- */

/* As malloc(3): NULL and errno ENOMEM when the heap is full. size 0
 * returns a unique pointer. Objects are 16-byte aligned. */
SHMHEAP_EXPORT void *shmheap_malloc(shmheap_t *h, size_t size);
/* As calloc(3), with overflow checked (ENOMEM). */
SHMHEAP_EXPORT void *shmheap_calloc(shmheap_t *h, size_t n, size_t size);
/* As realloc(3): stays in place when the size class allows; size 0 frees p
 * and returns NULL. */
SHMHEAP_EXPORT void *shmheap_realloc(shmheap_t *h, void *p, size_t size);
/* align: a power of two (EINVAL otherwise), e.g. 64 for a cache line. */
SHMHEAP_EXPORT void *shmheap_aligned_alloc(shmheap_t *h, size_t align, size_t size);
/* Any attached process may free any object. NULL is ignored; a pointer
 * outside the heap or an object already free is ignored and counted
 * (stats: bad_frees, double_frees). */
SHMHEAP_EXPORT void shmheap_free(shmheap_t *h, void *p);
/* Bytes usable at p (>= the size asked), 0 for a pointer not allocated. */
SHMHEAP_EXPORT size_t shmheap_usable_size(shmheap_t *h, const void *p);

/* ---- offsets: pointers that mean the same in every process ---- *
 *
 * Ownership: an object from the malloc family is private to the attachment
 * that allocated it until shmheap_to_off() is called on it (or on a pointer
 * into it). An offset is how an object reaches another process, so from
 * then on it is shared: it lives until someone frees it, whoever made it.
 * When an attachment is gone (its process exited or was killed, or it
 * detached), the daemon frees the objects it kept private: nobody else can
 * reach them (stats: reclaimed_objects, reclaimed_bytes). So share an
 * object before its maker may go, e.g. before storing its offset in
 * another object or a root; a pointer inherited through fork() is not a
 * share. Arena and pool objects are not tracked: they live with their
 * arena or pool. */

/* SHMHEAP_OFF_NULL for NULL or a pointer outside the heap. Shares the
 * object that contains p (see above). */
SHMHEAP_EXPORT shmheap_off_t shmheap_to_off(shmheap_t *h, const void *p);
/* NULL for SHMHEAP_OFF_NULL or an offset outside the heap. */
SHMHEAP_EXPORT void *shmheap_from_off(shmheap_t *h, shmheap_off_t off);

/* ---- named roots, so that processes can find each other's data ---- */

/* Sets (or replaces) the root `name` (1..55 bytes); off SHMHEAP_OFF_NULL
 * removes it. -SHMHEAP_ENAMETOOLONG, -SHMHEAP_EINVAL (also for an offset
 * outside the heap), -SHMHEAP_ENOSPC, -SHMHEAP_ENOENT (removing a root
 * that does not exist), -SHMHEAP_EFORKED. */
SHMHEAP_EXPORT int shmheap_root_set(shmheap_t *h, const char *name, shmheap_off_t off);
/* -SHMHEAP_ENOENT when no such root, -SHMHEAP_EINVAL, -SHMHEAP_EFORKED. */
SHMHEAP_EXPORT int shmheap_root_get(shmheap_t *h, const char *name, shmheap_off_t *out);

/* ---- arenas: bump allocation in shared memory, freed all at once ---- */

/* Destroyed by the daemon when the creating process detaches or dies. */
#define SHMHEAP_ARENA_SESSION 1u

/* Creates an arena of `capacity` usable bytes (flags: 0 or
 * SHMHEAP_ARENA_SESSION) and returns its offset in *out; any attached
 * process may allocate from it. Returns 0, -SHMHEAP_EINVAL (capacity 0 or
 * unknown flags), -SHMHEAP_ENOMEM (the heap is full) or -SHMHEAP_EFORKED. */
SHMHEAP_EXPORT int
shmheap_arena_create(shmheap_t *h, size_t capacity, unsigned flags, shmheap_off_t *out);
/* NULL with errno ENOMEM when the arena is out of space (it stays usable),
 * EINVAL for a bad arena or alignment (a power of two up to 64 KiB; 0
 * means 16), ESTALE in a fork's child. */
SHMHEAP_EXPORT void *
shmheap_arena_alloc(shmheap_t *h, shmheap_off_t arena, size_t size, size_t align);
/* Makes the whole capacity available again, in O(1). Like destroy and
 * stats: 0, -SHMHEAP_ENOENT (not a live arena: destroyed, or a SESSION
 * arena whose creator went), -SHMHEAP_EINVAL or -SHMHEAP_EFORKED. */
SHMHEAP_EXPORT int shmheap_arena_reset(shmheap_t *h, shmheap_off_t arena);
/* Frees the arena and everything allocated from it. */
SHMHEAP_EXPORT int shmheap_arena_destroy(shmheap_t *h, shmheap_off_t arena);

struct shmheap_arena_stats {
    uint64_t capacity;  /* usable bytes */
    uint64_t allocated; /* bytes handed out since the last reset, alignment included */
    uint64_t count;     /* allocations since the last reset */
    uint64_t remaining;
    double utilization; /* allocated / capacity */
};
SHMHEAP_EXPORT int
shmheap_arena_stats(shmheap_t *h, shmheap_off_t arena, struct shmheap_arena_stats *out);

/* ---- fixed-size pools (slabs) for one object size ---- */

/* Creates a pool of objects of object_size bytes (rounded up to 16) and
 * returns its offset in *out. 0, -SHMHEAP_EINVAL, -SHMHEAP_ENOMEM or
 * -SHMHEAP_EFORKED. */
SHMHEAP_EXPORT int shmheap_pool_create(shmheap_t *h, size_t object_size, shmheap_off_t *out);
/* NULL with errno EINVAL (no such pool), ENOMEM (the heap is full) or
 * ESTALE (a fork's child). */
SHMHEAP_EXPORT void *shmheap_pool_alloc(shmheap_t *h, shmheap_off_t pool);
/* A pointer that is not an object of this pool is ignored (and counted
 * as a bad free). */
SHMHEAP_EXPORT void shmheap_pool_free(shmheap_t *h, shmheap_off_t pool, void *p);
/* Frees the pool and all its objects. 0, -SHMHEAP_ENOENT (not a live
 * pool), -SHMHEAP_EINVAL or -SHMHEAP_EFORKED. */
SHMHEAP_EXPORT int shmheap_pool_destroy(shmheap_t *h, shmheap_off_t pool);

/* ---- figures ---- */

#define SHMHEAP_STATS_CLASSES  72
#define SHMHEAP_STATS_SEGMENTS 32

struct shmheap_class_stats {
    uint32_t object_size;
    uint64_t in_use;      /* objects allocated and not freed */
    uint64_t cached;      /* objects in thread caches */
    uint64_t in_recycler; /* objects in the shared recycler */
    uint64_t recycler_pushes, recycler_pops, recycler_cas_retries;
};

struct shmheap_segment_stats {
    uint32_t index;
    uint32_t page_size; /* bytes: 1 GiB, 2 MiB or 4 KiB */
    uint64_t size;
    uint64_t committed_bytes;
    uint64_t free_blocks;
};

struct shmheap_stats {
    /* This process: the counters of the thread caches its live threads
     * hold. A cache's counters carry on from the thread (of any process)
     * that held its slot before, and leave with a thread that exits, so
     * these are exact for threads that claimed fresh slots. */
    uint64_t process_allocs, process_frees;
    int64_t process_bytes_in_use; /* allocated minus freed by this process's threads */
    /* the whole heap */
    uint64_t bytes_reserved, bytes_committed, bytes_in_use, peak_bytes_in_use;
    uint64_t allocs, frees;
    uint64_t trim_gen, trims, trim_bytes_released;
    uint64_t bad_frees, double_frees;
    /* private objects (never shared with shmheap_to_off) of processes that
     * exited or detached, freed by the daemon */
    uint64_t reclaimed_objects, reclaimed_bytes;
    uint32_t thread_caches; /* caches in use, all processes */
    uint32_t nclasses, nsegments;
    struct shmheap_class_stats classes[SHMHEAP_STATS_CLASSES];
    struct shmheap_segment_stats segments[SHMHEAP_STATS_SEGMENTS];
};

/* Fills *out from the counters in shared memory (no daemon round trip).
 * Returns 0, -SHMHEAP_EINVAL, -SHMHEAP_ENOMEM or -SHMHEAP_EFORKED. */
SHMHEAP_EXPORT int shmheap_stats(shmheap_t *h, struct shmheap_stats *out);
/* Gives this thread's cache back now (threads do it when they exit). */
SHMHEAP_EXPORT void shmheap_thread_flush(shmheap_t *h);
/* Asks the daemon to trim, as `shmheapctl trim --wait MS` does: every
 * thread cache (idle threads' too) goes back, and free memory is returned
 * to the system. wait_ms (0..60000) bounds the wait for busy threads.
 * Returns 0 once the trim is done, -SHMHEAP_EINVAL, -SHMHEAP_EFORKED,
 * -SHMHEAP_EIO (the connection failed or the daemon did not answer) or
 * -SHMHEAP_EDAEMON (refused; shmheap_last_error() has its message). */
SHMHEAP_EXPORT int shmheap_trim(shmheap_t *h, unsigned wait_ms);

/* A static string naming code (negative or positive). */
SHMHEAP_EXPORT const char *shmheap_strerror(int code);
/* The calling thread's last detailed error message from this library
 * (e.g. the socket path that could not be reached), or "". */
SHMHEAP_EXPORT const char *shmheap_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
