/* The allocation API: a thin layer over the core (shm/heap.h), which does
 * all the work. The malloc family forwards in one tail call (the handle is
 * the core's struct heap, client.h), adding nothing to the core's fast
 * path: the fork rule for them is the core's (a fork's child finds no
 * thread cache, and the slow path refuses the handle with ESTALE). The
 * int-returning calls check the fork rule themselves and map the core's
 * negative errno to SHMHEAP_E* codes. */
#include <errno.h>
#include <string.h>

#include "shmheap.h"

#include "client/client.h"
#include "shm/internal.h"

_Static_assert(SHMHEAP_ARENA_SESSION == HEAP_ARENA_SESSION, "arena flags match the core's");
_Static_assert(SHMHEAP_STATS_CLASSES >= SHM_NCLASSES, "stats hold every size class");
_Static_assert(SHMHEAP_STATS_SEGMENTS >= SHM_MAX_SEGMENTS - 1, "stats hold every segment");

/* ---- the malloc family ---- */

SHMHEAP_EXPORT void *shmheap_malloc(shmheap_t *h, size_t size)
{
    return heap_malloc(handle_heap(h), size);
}

SHMHEAP_EXPORT void shmheap_free(shmheap_t *h, void *p)
{
    heap_free(handle_heap(h), p);
}

SHMHEAP_EXPORT void *shmheap_calloc(shmheap_t *h, size_t n, size_t size)
{
    return heap_calloc(handle_heap(h), n, size);
}

SHMHEAP_EXPORT void *shmheap_realloc(shmheap_t *h, void *p, size_t size)
{
    /* The core would resize in place without looking at its caches, so the
     * fork rule is checked here (without a system call). */
    if (h && client_forked_fast(h)) {
        errno = ESTALE;
        return NULL;
    }
    if (h && unlikely(handle_heap(h)->track))
        return client_track_realloc(client_of(h), p, size);
    return heap_realloc(handle_heap(h), p, size);
}

SHMHEAP_EXPORT void *shmheap_aligned_alloc(shmheap_t *h, size_t align, size_t size)
{
    return heap_aligned_alloc(handle_heap(h), align, size);
}

SHMHEAP_EXPORT size_t shmheap_usable_size(shmheap_t *h, const void *p)
{
    /* A tracked object's is the size asked: what the tool lets one use. */
    if (h && p && unlikely(handle_heap(h)->track)) {
        size_t asked = client_track_size(client_of(h), p);

        if (asked)
            return asked;
    }
    return heap_usable_size(handle_heap(h), p); /* 0 for a NULL handle */
}

SHMHEAP_EXPORT void shmheap_thread_flush(shmheap_t *h)
{
    heap_thread_flush(handle_heap(h)); /* a no-op for NULL and in a fork's child */
}

/* ---- offsets ---- */

SHMHEAP_EXPORT shmheap_off_t shmheap_to_off(shmheap_t *h, const void *p)
{
    if (!h)
        return SHMHEAP_OFF_NULL;
    if (unlikely(handle_heap(h)->track) && p)
        client_track_share(client_of(h), p); /* another process may free it */
    return heap_to_off(handle_heap(h), p);
}

SHMHEAP_EXPORT void *shmheap_from_off(shmheap_t *h, shmheap_off_t off)
{
    return h ? heap_from_off(handle_heap(h), off) : NULL;
}

/* ---- roots ---- */

SHMHEAP_EXPORT int shmheap_root_set(shmheap_t *h, const char *name, shmheap_off_t off)
{
    if (!h || !name)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    return client_errno_code(heap_root_set(handle_heap(h), name, off));
}

SHMHEAP_EXPORT int shmheap_root_get(shmheap_t *h, const char *name, shmheap_off_t *out)
{
    uint64_t off;
    int r;

    if (!h || !name || !out)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    r = heap_root_get(handle_heap(h), name, &off);
    if (r < 0)
        return client_errno_code(r);
    *out = off;
    return 0;
}

/* ---- arenas ---- */

/* The core answers -EINVAL for an offset that is not a live arena or pool;
 * with a well-formed call that means "no such object". */
static int no_such(int r)
{
    return r == -EINVAL ? -SHMHEAP_ENOENT : client_errno_code(r);
}

SHMHEAP_EXPORT int
shmheap_arena_create(shmheap_t *h, size_t capacity, unsigned flags, shmheap_off_t *out)
{
    uint64_t off;
    int r;

    if (!h || !out || capacity == 0 || (flags & ~SHMHEAP_ARENA_SESSION))
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    r = heap_arena_create(handle_heap(h), capacity, flags, &off);
    if (r < 0)
        return client_errno_code(r);
    *out = off;
    return 0;
}

SHMHEAP_EXPORT void *
shmheap_arena_alloc(shmheap_t *h, shmheap_off_t arena, size_t size, size_t align)
{
    if (!h) {
        errno = EINVAL;
        return NULL;
    }
    if (client_forked_fast(h)) {
        errno = ESTALE;
        return NULL;
    }
    return heap_arena_alloc(handle_heap(h), arena, size, align);
}

SHMHEAP_EXPORT int shmheap_arena_reset(shmheap_t *h, shmheap_off_t arena)
{
    if (!h || arena == SHMHEAP_OFF_NULL)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    return no_such(heap_arena_reset(handle_heap(h), arena));
}

SHMHEAP_EXPORT int shmheap_arena_destroy(shmheap_t *h, shmheap_off_t arena)
{
    if (!h || arena == SHMHEAP_OFF_NULL)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    return no_such(heap_arena_destroy(handle_heap(h), arena));
}

SHMHEAP_EXPORT int
shmheap_arena_stats(shmheap_t *h, shmheap_off_t arena, struct shmheap_arena_stats *out)
{
    struct arena_stats st;
    int r;

    if (!h || !out || arena == SHMHEAP_OFF_NULL)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    r = heap_arena_stats(handle_heap(h), arena, &st);
    if (r < 0)
        return no_such(r);
    out->capacity = st.capacity;
    out->allocated = st.allocated;
    out->count = st.count;
    out->remaining = st.remaining;
    out->utilization = st.utilization;
    return 0;
}

/* ---- pools ---- */

SHMHEAP_EXPORT int shmheap_pool_create(shmheap_t *h, size_t object_size, shmheap_off_t *out)
{
    uint64_t off;
    int r;

    if (!h || !out || object_size == 0)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    r = heap_pool_create(handle_heap(h), object_size, &off);
    if (r < 0)
        return client_errno_code(r);
    *out = off;
    return 0;
}

SHMHEAP_EXPORT void *shmheap_pool_alloc(shmheap_t *h, shmheap_off_t pool)
{
    if (!h) {
        errno = EINVAL;
        return NULL;
    }
    if (client_forked_fast(h)) {
        errno = ESTALE;
        return NULL;
    }
    return heap_pool_alloc(handle_heap(h), pool);
}

SHMHEAP_EXPORT void shmheap_pool_free(shmheap_t *h, shmheap_off_t pool, void *p)
{
    if (!h || !p || client_forked_fast(h))
        return;
    if (heap_pool_free(handle_heap(h), pool, p) < 0)
        heap_count_bad_free(handle_heap(h));
}

SHMHEAP_EXPORT int shmheap_pool_destroy(shmheap_t *h, shmheap_off_t pool)
{
    if (!h || pool == SHMHEAP_OFF_NULL)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    return no_such(heap_pool_destroy(handle_heap(h), pool));
}
