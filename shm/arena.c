/* Arenas: bump allocation in shared memory, freed all at once.
 *
 * An arena is a run of blocks (kind RUN_ARENA) that starts with struct
 * arena_header; its offset is the run's offset. Allocation is a CAS loop
 * on `used` (any process, any thread); reset stores 0 (O(1)); destroy
 * frees the run. Figures come from the header. SESSION arenas record their
 * creator's client id so the daemon can destroy them when it goes.
 *
 * No kill leaks an arena (the run's metadata word is the record, run.c):
 *   create   the run is claimed with the creator's owner tag in its head
 *            word, under the segment lock and its journal; the header is
 *            written after, and the tag cleared once it is live, just
 *            before the offset is returned. So a creator killed at any
 *            point leaves a run its owner's sweep finds (reclaim.c): freed
 *            if it has no header, or a plain one; untagged if it has a
 *            live SESSION header, which heap_arena_destroy_session then
 *            destroys with the rest of its client's SESSION arenas.
 *   destroy  the magic is cleared and the blocks freed in one section
 *            under the segment lock, after the journal names the blocks: a
 *            destroyer killed there is finished by the next holder. */
#include <errno.h>
#include <string.h>

#include "shm/internal.h"

#define ARENA_MAGIC UINT64_C(0x414e455241485348) /* "HSHARENA" */

struct arena_header {
    uint64_t magic;
    uint64_t capacity; /* usable bytes after the header */
    uint64_t used;     /* bytes handed out (with alignment padding) */
    uint64_t count;
    uint64_t owner; /* client id of the creator */
    uint32_t flags;
    uint32_t pad;
    uint64_t pad2[2];
};
_Static_assert(sizeof(struct arena_header) == 64, "arena header is one line");

/* Returns the header of a live arena at off, or NULL. */
static struct arena_header *arena_at(struct heap *h, uint64_t off, struct seg_map **ret_m)
{
    struct seg_map *m = heap_seg_for(h, off);
    struct arena_header *a;
    uint64_t w;
    uint32_t b;

    if (!m || (off & (SHM_BLOCK_SIZE - 1)))
        return NULL;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    w = load_relaxed(&m->meta[b]);
    if (meta_state(w) != BLK_RUN || meta_kind(w) != RUN_ARENA)
        return NULL;
    a = off_ptr(h, off);
    /* acquire: pairs with arena_create's release of the magic. */
    if (load_acquire(&a->magic) != ARENA_MAGIC ||
        load_relaxed(&a->capacity) + sizeof(*a) > (uint64_t) meta_len(w) << SHM_BLOCK_SHIFT)
        return NULL;
    if (ret_m)
        *ret_m = m;
    return a;
}

int heap_arena_create(struct heap *h, size_t capacity, unsigned flags, uint64_t *ret_arena)
{
    struct arena_header *a;
    uint64_t off;
    int r;

    if (!h || !ret_arena || capacity == 0 || (flags & ~HEAP_ARENA_SESSION))
        return -EINVAL;
    if (capacity > SHM_SEG_SPAN / 2)
        return -ENOMEM;
    r = run_create(h, capacity + sizeof(*a), 1, RUN_ARENA, h->owner_tag, &off);
    if (r < 0)
        return r;
    shm_fault(FAULT_ARENA_CLAIMED);
    a = off_ptr(h, off);
    memset(a, 0, sizeof(*a));
    a->capacity = capacity;
    a->owner = h->client_id;
    a->flags = flags;
    /* release: a process that finds the arena by offset and sees the
     * magic sees the header (pairs with the acquire in arena_at). */
    store_release(&a->magic, ARENA_MAGIC);
    shm_fault(FAULT_ARENA_HEADER);
    if (h->owner_tag) {
        /* Reachable from here on: a plain arena outlives its creator, a
         * SESSION one goes by its client id (heap_arena_destroy_session). */
        r = run_retag(h, off, RUN_ARENA, 0);
        if (r < 0) {
            (void) heap_arena_destroy(h, off);
            return r;
        }
    }
    *ret_arena = off;
    return 0;
}

void *heap_arena_alloc(struct heap *h, uint64_t arena, size_t size, size_t align)
{
    struct arena_header *a = h ? arena_at(h, arena, NULL) : NULL;
    uint64_t used, start, end, data;

    if (!a || (align & (align - 1)) || align > SHM_BLOCK_SIZE) {
        errno = EINVAL;
        return NULL;
    }
    if (align == 0)
        align = 16;
    data = arena + sizeof(*a);
    used = load_relaxed(&a->used);
    do {
        start = ((data + used + align - 1) & ~(uint64_t) (align - 1)) - data;
        if (start > a->capacity || size > a->capacity - start) {
            errno = ENOMEM; /* out of space: a clean failure */
            return NULL;
        }
        end = start + size;
        /* relaxed: the bytes handed out are the caller's to publish. */
    } while (!cas_weak_relaxed(&a->used, &used, end));
    (void) fetch_add_relaxed(&a->count, 1);
    return off_ptr(h, data + start);
}

int heap_arena_reset(struct heap *h, uint64_t arena)
{
    struct arena_header *a = h ? arena_at(h, arena, NULL) : NULL;

    if (!a)
        return -EINVAL;
    store_relaxed(&a->count, 0);
    store_relaxed(&a->used, 0);
    return 0;
}

int heap_arena_stats(struct heap *h, uint64_t arena, struct arena_stats *ret)
{
    struct arena_header *a = h ? arena_at(h, arena, NULL) : NULL;

    if (!a || !ret)
        return -EINVAL;
    ret->capacity = a->capacity;
    ret->allocated = load_relaxed(&a->used);
    ret->count = load_relaxed(&a->count);
    ret->remaining = ret->capacity - ret->allocated;
    ret->utilization = (double) ret->allocated / (double) ret->capacity;
    return 0;
}

int heap_arena_destroy(struct heap *h, uint64_t arena)
{
    struct seg_map *m;
    struct arena_header *a = h ? arena_at(h, arena, &m) : NULL;
    struct tcache *tc;

    if (!a)
        return -EINVAL;
    tc = tcache_get(h);
    /* Exactly one destroyer wins (the magic's CAS, under the lock, commits
     * the free); the others see -EINVAL. */
    return run_free_in(h, m, (uint32_t) ((arena & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT), RUN_ARENA,
                       tc ? tc->slot : NULL, &a->magic, ARENA_MAGIC);
}

int arena_reap(struct heap *h, uint64_t off)
{
    struct seg_map *m = heap_seg_for(h, off);
    struct arena_header *a;
    uint32_t b;

    if (!m || (off & (SHM_BLOCK_SIZE - 1)))
        return -EINVAL;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    a = off_ptr(h, off);
    /* Claimed by an owner now gone that had not returned it (the tag goes
     * before the offset is returned). A live SESSION header names its
     * client: it goes as the client's SESSION arenas go, by its client id
     * (the daemon's heap_arena_destroy_session, on the client's exit or
     * clean detach), so it only loses the tag here (1). Anything else
     * nobody can have: it goes (0), a live header losing its magic with
     * it, so no stale offset finds it once the blocks are reused. */
    if (load_acquire(&a->magic) == ARENA_MAGIC) {
        if (load_relaxed(&a->flags) & HEAP_ARENA_SESSION)
            return run_retag_in(h, m, b, RUN_ARENA, 0) < 0 ? -EAGAIN : 1;
        return run_free_in(h, m, b, RUN_ARENA, NULL, &a->magic, ARENA_MAGIC);
    }
    return run_free_in(h, m, b, RUN_ARENA, NULL, NULL, 0);
}

int heap_arena_destroy_session(struct heap *h, uint64_t client_id)
{
    int n = 0;

    if (!h)
        return -EINVAL;
    (void) heap_sync_segments(h);
    for (uint32_t i = 1; i < heap_nmapped(h); i++) {
        struct seg_map *m = &h->segs[i];

        if (!heap_mapped(h, i))
            continue;
        for (uint32_t b = m->hdr->first_block; b < m->nblocks; b++) {
            uint64_t w = load_relaxed(&m->meta[b]), off;
            struct arena_header *a;

            if (meta_state(w) != BLK_RUN || meta_kind(w) != RUN_ARENA)
                continue;
            off = ((uint64_t) i << SHM_SEG_SHIFT) | ((uint64_t) b << SHM_BLOCK_SHIFT);
            a = arena_at(h, off, NULL);
            if (a && (a->flags & HEAP_ARENA_SESSION) && a->owner == client_id &&
                heap_arena_destroy(h, off) == 0)
                n++;
        }
    }
    return n;
}
