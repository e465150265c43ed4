/* Runs of whole blocks for large objects, arenas and pool chunks: find a
 * segment with room, grow the heap when none has, count the bytes in the
 * calling thread's slot; and, inside one segment under its lock, claim,
 * share and free the run's blocks.
 *
 * A run is a BLK_RUN head block and BLK_RUN_TAIL blocks (meta.h), of one
 * run_kind. Invariants, whenever the segment's lock is free:
 *   tail i's meta_len        == i (its distance back to the head)
 *   head's meta_owner        == the owner tag of a RUN_LARGE run, 0 if shared;
 *                               of an arena or pool chunk: its creator's tag
 *                               until the creation is committed, else 0.
 *                               So a run
 *                               whose creator dies before it is reachable
 *                               is found by that owner's sweep (reclaim.c)
 *   hdr->large_bytes         == the bytes of the segment's RUN_LARGE runs
 *   a slot's large counters  move under the same lock as the run, so a
 *                            death parts a run from its count by at most
 *                            the few stores between them */
#include <errno.h>

#include "shm/internal.h"

int run_create(struct heap *h,
               uint64_t bytes,
               uint32_t align_blocks,
               enum run_kind kind,
               uint16_t owner,
               uint64_t *ret_off)
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
        uint32_t nmapped = heap_nmapped(h), block;

        for (uint32_t i = 1; i < nmapped; i++) {
            struct seg_map *m = &h->segs[i];

            if (!heap_mapped(h, i) || m->nblocks < nblocks)
                continue;
            r = run_alloc_in(h, m, (uint32_t) nblocks, align_blocks, kind, owner, tc->slot, &block);
            if (r == 0) {
                *ret_off = ((uint64_t) i << SHM_SEG_SHIFT) | ((uint64_t) block << SHM_BLOCK_SHIFT);
                return 0;
            }
        }
        /* No segment has room: one may have been added meanwhile, else ask
         * the owner for one big enough (with slack for the alignment). */
        if (ctl_nsegments(h->ctl) > nmapped) {
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

/* Opens the journal of a run's claim or free: op, and the counter of the
 * counting slot (NULL: none) before the change. */
static void run_journal(struct heap *h,
                        struct seg_map *m,
                        enum journal_op op,
                        struct cache_slot *count,
                        uint64_t before)
{
    store_relaxed(&m->hdr->journal.slot_word, count ? ptr_off(h, count) : 0);
    store_relaxed(&m->hdr->journal.chain, before);
    store_relaxed(&m->hdr->journal.op, op);
}

void run_recover(struct heap *h, struct seg_map *m)
{
    struct seg_journal *j = &m->hdr->journal;
    const struct cache_slot *s;
    uint64_t now;

    /* Only a claim or free cut short (its blocks named) needs a word. */
    if ((j->op != JOP_RUN_CLAIM && j->op != JOP_RUN_FREE) || !j->n)
        return;
    /* The replay frees the run (segment.c). The dead holder's slot says
     * whether it had counted its step: a counted claim is undone by a
     * free, an uncounted free is counted; as sweeps count theirs. A free
     * with no counting slot is a sweeper's, whose count follows it. */
    if (!j->slot_word || j->slot_word >= h->ctl->ctl_size ||
        (j->slot_word - offsetof(struct ctl_header, slots)) % sizeof(struct cache_slot))
        return;
    s = off_ptr(h, j->slot_word);
    now = j->op == JOP_RUN_CLAIM ? load_relaxed(&s->large_allocs) : load_relaxed(&s->large_frees);
    if ((j->op == JOP_RUN_CLAIM) == (now != j->chain))
        (void) fetch_add_relaxed(&h->ctl->owned_reclaimed_large, 1);
}

int run_destroy(struct heap *h, uint64_t off, enum run_kind kind)
{
    struct seg_map *m = heap_seg_for(h, off);
    struct tcache *tc = tcache_get(h);
    uint32_t b;

    if (!m || (off & (SHM_BLOCK_SIZE - 1)))
        return -EINVAL;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    return run_free_in(h, m, b, kind, tc ? tc->slot : NULL, NULL, 0);
}

/* ---- one segment's runs, under its lock ---- */

int run_alloc_in(struct heap *h,
                 struct seg_map *m,
                 uint32_t nblocks,
                 uint32_t align_blocks,
                 enum run_kind kind,
                 uint16_t owner,
                 struct cache_slot *count,
                 uint32_t *ret_block)
{
    uint32_t retries = 0;
    int64_t b;
    int r;

    r = seg_lock(m, h);
    if (r < 0)
        return r;
    for (;;) {
        b = seg_find_run(m, nblocks, align_blocks ? align_blocks : 1);
        if (b < 0) {
            seg_unlock(m);
            return -ENOSPC;
        }
        if (commit_ready(m, (uint32_t) b, nblocks))
            break;
        if (++retries > 8) {
            seg_unlock(m);
            return -ENOMEM;
        }
        r = commit_unlocked(h, m, (uint32_t) b, nblocks);
        if (r < 0)
            return r; /* the lock is dropped */
    }
    run_journal(h, m, JOP_RUN_CLAIM, count, count ? load_relaxed(&count->large_allocs) : 0);
    /* The owner tag is in the head word from the claim on: a creator
     * killed before its run is reachable leaves it to its owner's sweep. */
    seg_blocks_claim(m, (uint32_t) b, meta_make_run(nblocks, kind, owner));
    shm_fault(FAULT_RUN_CLAIM_MID);
    if (kind == RUN_LARGE)
        store_relaxed(&m->hdr->large_bytes,
                      m->hdr->large_bytes + ((uint64_t) nblocks << SHM_BLOCK_SHIFT));
    /* Counted while the journal is open: a replay that frees the run
     * counts its free if the allocation was counted (run_recover). */
    if (count) {
        bump_relaxed(&count->large_allocs, 1);
        bump_relaxed(&count->large_bytes_alloc, (uint64_t) nblocks << SHM_BLOCK_SHIFT);
    }
    store_relaxed(&m->hdr->journal.n, 0);
    store_relaxed(&m->hdr->journal.op, JOP_NONE);
    seg_unlock(m);
    *ret_block = (uint32_t) b;
    return 0;
}

int run_retag_in(struct heap *h, struct seg_map *m, uint32_t b, enum run_kind kind, uint16_t owner)
{
    uint64_t w;
    int r;

    r = seg_lock(m, h);
    if (r < 0)
        return r;
    w = b < m->nblocks ? seg_meta_get(m, b) : 0;
    if (meta_state(w) == BLK_RUN && meta_kind(w) == kind)
        seg_meta_put(m, b, meta_with_owner(w, owner));
    seg_unlock(m);
    return 0;
}

int run_share_in(struct heap *h, struct seg_map *m, uint32_t b)
{
    return run_retag_in(h, m, b, RUN_LARGE, 0);
}

int run_retag(struct heap *h, uint64_t off, enum run_kind kind, uint16_t owner)
{
    struct seg_map *m = heap_seg_for(h, off);

    if (!m || (off & (SHM_BLOCK_SIZE - 1)))
        return -EINVAL;
    return run_retag_in(h, m, (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT), kind, owner);
}

void run_free_locked(struct seg_map *m, uint32_t block, uint32_t n)
{
    /* The journal names the blocks first: a holder killed from here on is
     * finished by the next holder's replay (the blocks become FREE). */
    store_relaxed(&m->hdr->journal.block, block);
    store_relaxed(&m->hdr->journal.n, n);
    shm_fault(FAULT_RUN_FREE_MID);
    seg_blocks_release(m, block, n);
    store_relaxed(&m->hdr->journal.n, 0);
}

int run_free_in(struct heap *h,
                struct seg_map *m,
                uint32_t block,
                enum run_kind kind,
                struct cache_slot *count,
                uint64_t *magic,
                uint64_t expect)
{
    uint64_t w;
    uint32_t n;
    int r;

    r = seg_lock(m, h);
    if (r < 0)
        return r;
    w = block < m->nblocks ? seg_meta_get(m, block) : 0;
    if (block >= m->nblocks || meta_state(w) != BLK_RUN || meta_kind(w) != kind) {
        seg_unlock(m);
        return -EINVAL;
    }
    n = meta_len(w);
    run_journal(h, m, JOP_RUN_FREE, count, count ? load_relaxed(&count->large_frees) : 0);
    store_relaxed(&m->hdr->journal.block, block);
    store_relaxed(&m->hdr->journal.n, n);
    shm_fault(FAULT_RUN_FREE_JOURNALED);
    /* The commit of a destroy: the magic goes with the blocks, both under
     * the lock and the journal, so a destroyer killed here leaves neither
     * a live header on free blocks nor a dead header on claimed ones.
     * acq_rel: pairs with the creator's release of the magic, and with
     * other destroyers. */
    if (magic && !cas_strong_acq_rel(magic, &expect, 0)) {
        store_relaxed(&m->hdr->journal.n, 0);
        store_relaxed(&m->hdr->journal.op, JOP_NONE);
        seg_unlock(m);
        return -EINVAL;
    }
    if (kind == RUN_LARGE)
        store_relaxed(&m->hdr->large_bytes,
                      m->hdr->large_bytes - ((uint64_t) n << SHM_BLOCK_SHIFT));
    /* Counted while the journal is open (see run_recover). */
    if (count) {
        bump_relaxed(&count->large_frees, 1);
        bump_relaxed(&count->large_bytes_freed, (uint64_t) n << SHM_BLOCK_SHIFT);
    }
    run_free_locked(m, block, n);
    store_relaxed(&m->hdr->journal.op, JOP_NONE);
    seg_unlock(m);
    return 0;
}
