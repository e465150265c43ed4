/* Runs of whole blocks for large objects, arenas and pool chunks: find a
 * segment with room, grow the heap when none has, count the bytes in the
 * calling thread's slot. */
#include <errno.h>

#include "shm/internal.h"

int run_create(struct heap *h, uint64_t bytes, uint32_t align_blocks, enum run_kind kind,
               uint16_t owner, uint64_t *ret_off)
{
    uint64_t nblocks = (bytes + SHM_BLOCK_SIZE - 1) >> SHM_BLOCK_SHIFT;
    struct tcache *tc = tcache_get(h);
    int r = -ENOMEM;

    if (!tc)
        return -errno;
    if (nblocks == 0 || nblocks > (SHM_SEG_SPAN >> SHM_BLOCK_SHIFT))
        return -ENOMEM;
    r = quota_admit(h, nblocks << SHM_BLOCK_SHIFT);
    if (r < 0)
        return r;
    for (int attempt = 0; attempt < 4; attempt++) {
        uint32_t nmapped = load_acquire(&h->nmapped), block;

        for (uint32_t i = 1; i < nmapped; i++) {
            struct seg_map *m = &h->segs[i];

            if (!load_acquire(&m->meta) || m->nblocks < nblocks)
                continue;
            r = seg_alloc_run(h, m, (uint32_t) nblocks, align_blocks, kind, owner, tc->slot,
                              &block);
            if (r == 0) {
                *ret_off = ((uint64_t) i << SHM_SEG_SHIFT) | ((uint64_t) block << SHM_BLOCK_SHIFT);
                return 0;
            }
        }
        /* No segment has room: one may have been added meanwhile, else ask
         * the owner for one big enough (with slack for the alignment). */
        if (load_acquire(&h->ctl->nsegments) > nmapped) {
            (void) heap_sync_segments(h);
            continue;
        }
        if (attempt == 0) {
            tcache_release_cached(h, tc, false);
            continue;
        }
        if (!h->hooks.grow)
            break;
        r = h->hooks.grow(h->hooks.ctx, (nblocks + align_blocks) << SHM_BLOCK_SHIFT);
        if (r < 0)
            break;
        (void) heap_sync_segments(h);
    }
    return r == -ENOSPC || r == 0 ? -ENOMEM : r;
}

int run_destroy(struct heap *h, uint64_t off, enum run_kind kind)
{
    struct seg_map *m = heap_seg_for(h, off);
    struct tcache *tc = tcache_get(h);
    uint32_t b;

    if (!m || (off & (SHM_BLOCK_SIZE - 1)))
        return -EINVAL;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    return seg_free_run(h, m, b, kind, tc ? tc->slot : NULL);
}
