/* Commit and decommit: which units of a segment have backing pages.
 *
 * A unit is max(page size, block size) bytes; the segment's commit map has
 * a bit per unit and committed_units counts the bits. Invariants:
 *   commit map bit u        => unit u is backed (hugetlb: fallocated)
 *   a block in use          => its units' bits are set
 *   committed_units         == popcount(commit map)
 * On normal pages a unit is backed on first touch, so commit_ready() only
 * sets the bits; on hugetlb the pages must be fallocated first, which is a
 * system call and so is made with the lock dropped (commit_unlocked()).
 *
 * Decommit takes free units out of the free tree as BLK_BUSY blocks that
 * carry the decommitter's pid (meta_make_busy()), punches them with the
 * lock dropped, and frees them under the lock again. hdr->decommits counts
 * decommit passes: a commit made while one ran is not trusted (the pass
 * may have punched the same pages). A decommitter that dies with BUSY
 * blocks leaves them to reclaim.c. */
#include <errno.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

bool commit_unit_is_set(struct seg_map *m, uint64_t u)
{
    return (seg_commit_map(m)[u / 64] >> (u % 64)) & 1;
}

void commit_mark_unit(struct seg_map *m, uint64_t u, bool on)
{
    uint64_t *w = &seg_commit_map(m)[u / 64];
    uint64_t bit = UINT64_C(1) << (u % 64);

    if (on == !!(*w & bit))
        return;
    if (on)
        *w |= bit;
    else
        *w &= ~bit;
    shm_fault(FAULT_COMMIT_COUNT_MID);
    store_relaxed(&m->hdr->committed_units, m->hdr->committed_units + (on ? 1 : (uint64_t) -1));
}

static void units_of(struct seg_map *m, uint32_t b, uint32_t n, uint64_t *first, uint64_t *last)
{
    *first = ((uint64_t) b << SHM_BLOCK_SHIFT) >> m->unit_shift;
    *last = ((((uint64_t) b + n) << SHM_BLOCK_SHIFT) - 1) >> m->unit_shift;
}

bool commit_ready(struct seg_map *m, uint32_t b, uint32_t n)
{
    uint64_t first, last;

    units_of(m, b, n, &first, &last);
    for (uint64_t u = first; u <= last; u++) {
        if (commit_unit_is_set(m, u))
            continue;
        if (m->needs_commit)
            return false;
        commit_mark_unit(m, u, true);
    }
    return true;
}

int commit_unlocked(struct heap *h, struct seg_map *m, uint32_t b, uint32_t n)
{
    uint64_t first, last, decommits = m->hdr->decommits;
    int r, q;

    units_of(m, b, n, &first, &last);
    seg_unlock(m);
    r = os_commit(m->fd, first << m->unit_shift, (last - first + 1) << m->unit_shift);
    q = seg_lock(m, h);
    if (q < 0)
        return q; /* the lock is not ours: the caller must not unlock */
    if (r < 0) {
        seg_unlock(m);
        return r;
    }
    if (m->hdr->decommits == decommits)
        for (uint64_t u = first; u <= last; u++)
            commit_mark_unit(m, u, true);
    return 0;
}

#define DECOMMIT_BATCH 64

uint64_t commit_decommit_free(struct heap *h, struct seg_map *m, uint64_t *retain)
{
    return commit_decommit_free_max(h, m, retain, UINT64_MAX);
}

uint64_t
commit_decommit_free_max(struct heap *h, struct seg_map *m, uint64_t *retain, uint64_t max_bytes)
{
    uint64_t released = 0, unit_blocks = (UINT64_C(1) << m->unit_shift) >> SHM_BLOCK_SHIFT;
    uint64_t nunits = m->size >> m->unit_shift, kept = 0, start_unit = 0, planned = 0;
    uint32_t pid = (uint32_t) getpid();
    bool budget_spent = false;

    if (unit_blocks == 0)
        unit_blocks = 1;
    for (;;) {
        uint64_t batch[DECOMMIT_BATCH], nb = 0, u;

        if (seg_lock(m, h) < 0)
            return released;
        /* Keep the lowest free committed blocks (the free tree hands out
         * the lowest first, so they are reused before anything else). */
        for (u = start_unit; u < nunits && nb < DECOMMIT_BATCH && !budget_spent; u++) {
            uint32_t b0 = (uint32_t) (u * unit_blocks), i;

            if (!commit_unit_is_set(m, u) || b0 < m->hdr->first_block)
                continue;
            for (i = 0; i < unit_blocks; i++)
                if (meta_state(seg_meta_get(m, b0 + i)) != BLK_FREE)
                    break;
            if (i < unit_blocks)
                continue;
            if (kept + unit_blocks <= *retain) {
                kept += unit_blocks;
                continue;
            }
            /* Whole units only: a unit that would pass the budget stays. */
            if (planned + (UINT64_C(1) << m->unit_shift) > max_bytes) {
                budget_spent = true;
                break;
            }
            planned += UINT64_C(1) << m->unit_shift;
            for (i = 0; i < unit_blocks; i++)
                seg_meta_put(m, b0 + i, meta_make_busy((uint32_t) unit_blocks, pid));
            bittree_clear_range(seg_free_tree(m), b0, (uint32_t) unit_blocks);
            store_relaxed(&m->hdr->free_blocks, m->hdr->free_blocks - unit_blocks);
            commit_mark_unit(m, u, false);
            batch[nb++] = u;
        }
        start_unit = u;
        if (nb)
            store_relaxed(&m->hdr->decommits, m->hdr->decommits + 1);
        seg_unlock(m);
        if (nb == 0)
            break;
        for (uint64_t i = 0; i < nb;) {
            uint64_t j = i + 1;

            while (j < nb && batch[j] == batch[j - 1] + 1)
                j++;
            /* Outside the lock: the units' blocks are BUSY, nobody else
             * touches them. A failed punch only leaves memory committed. */
            if (os_decommit(m->fd, batch[i] << m->unit_shift, (j - i) << m->unit_shift) == 0)
                released += (j - i) << m->unit_shift;
            i = j;
        }
        shm_fault(FAULT_DECOMMIT_MID);
        if (seg_lock(m, h) < 0)
            return released;
        for (uint64_t i = 0; i < nb; i++)
            seg_blocks_release(m, (uint32_t) (batch[i] * unit_blocks), (uint32_t) unit_blocks);
        seg_unlock(m);
    }
    *retain -= kept < *retain ? kept : *retain;
    return released;
}

uint64_t commit_bytes(struct seg_map *m)
{
    return load_relaxed(&m->hdr->committed_units) << m->unit_shift;
}
