/* The punch of free pages inside slabs, and its recovery.
 *
 * On normal-page segments a trim also gives back 4K pages inside slabs
 * whose objects are all free: a slab with a few live objects no longer
 * keeps 64 KiB resident. The objects on those pages are reserved (their
 * free bits cleared) before the lock is dropped for the punch, named in
 * the segment's punch record first, so a reaper can put them back if the
 * puncher dies; punched pages come back zeroed on the next touch. The
 * page that holds the slab's tags and bitmap is never punched.
 *
 * The punch record (in the segment header; one punch per segment at once):
 *   punch_pid != 0          a punch is in flight: punch_block's slab has
 *                           the objects of punch_reserved[] taken out
 *   punch_reserved[] bit i  => object i's free bit is clear
 *   punch_phase             PUNCH_RESERVING / PUNCH_RESTORING while the
 *                           record and the bitmap move under the lock,
 *                           else PUNCH_OUTSIDE
 * A reservation clears a free bit before it records it; a restore sets a
 * bit before it forgets it. A holder that dies under the lock is undone by
 * punch_recover() (from seg_recover); a puncher that dies outside it, by
 * punch_restore() from reclaim.c once its pid is gone. */
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"
#define PUNCH_PAGE UINT64_C(4096)

static bool punch_mask_test(const uint64_t *mask, uint32_t p)
{
    return (mask[p / 64] >> (p % 64)) & 1;
}

/* What punch_objects() does with the free bits of a punch's objects. */
enum punch_op {
    PUNCH_RESERVE,       /* clear the free bits of the masked pages' objects, recording them */
    PUNCH_FREE_RECORDED, /* set the bits of the recorded objects, forgetting them */
    PUNCH_FREE_MASKED,   /* set the bits of every masked page's object (recovery of a
                          * reservation cut short: the lock was held throughout, so every
                          * such object with its bit clear is one the puncher reserved) */
};

/* Slab sb's head word describes a slab that fits the segment: a class of
 * the table, its length, inside [first_block, nblocks). A meta word is
 * any client's to write; a class past the table would index past it (and
 * fail sizeclass_geometry's assert), a slab past the end would put its
 * bitmap past the mapping. Read once (the caller's w). */
static bool punch_slab_ok(const struct seg_map *m, uint32_t sb, uint64_t w)
{
    struct slab_geometry g;

    if (sb < m->hdr->first_block || sb >= m->nblocks || meta_state(w) != BLK_SLAB ||
        meta_class(w) >= SHM_NCLASSES)
        return false;
    sizeclass_geometry(meta_class(w), &g);
    return meta_len(w) == g.blocks && (uint64_t) sb + g.blocks <= m->nblocks;
}

/* Moves the objects of a punch on slab sb; returns how many free bits
 * changed. A reservation clears a bit before recording it, a restore sets
 * a bit before forgetting it; a death between the two, under the lock, is
 * finished by punch_recover(). */
static uint32_t
punch_objects(struct seg_map *m, uint32_t sb, uint64_t w, const uint64_t *mask, enum punch_op op)
{
    uint64_t *bits, *rsv = m->hdr->punch_reserved;
    struct slab_geometry g;
    uint32_t changed = 0;

    sizeclass_geometry(meta_class(w), &g);
    bits = slab_bitmap(m, sb, &g);
    if (op == PUNCH_FREE_RECORDED) {
        for (uint32_t i = 0; i < g.capacity; i++) {
            uint64_t bit = UINT64_C(1) << (i % 64);

            if (!(load_relaxed(&rsv[i / 64]) & bit))
                continue;
            if (!(bits[i / 64] & bit)) {
                bits[i / 64] |= bit;
                changed++;
            }
            if (changed == 2)
                shm_fault(FAULT_PUNCH_RESTORE_MID);
            compiler_barrier();
            store_relaxed(&rsv[i / 64], rsv[i / 64] & ~bit);
        }
        return changed;
    }
    for (uint32_t p = 0; p < 128; p++) {
        uint64_t lo, hi;

        if (!punch_mask_test(mask, p))
            continue;
        lo = p * PUNCH_PAGE / g.size;
        hi = ((p + 1) * PUNCH_PAGE - 1) / g.size;
        for (uint64_t i = lo; i <= hi && i < g.capacity; i++) {
            uint64_t bit = UINT64_C(1) << (i % 64);

            if (op == PUNCH_FREE_MASKED) {
                if (!(bits[i / 64] & bit)) {
                    bits[i / 64] |= bit;
                    changed++;
                }
                continue;
            }
            if (!(bits[i / 64] & bit))
                continue;
            bits[i / 64] &= ~bit;
            if (changed == 2)
                shm_fault(FAULT_PUNCH_RESERVE_MID);
            compiler_barrier();
            store_relaxed(&rsv[i / 64], rsv[i / 64] | bit);
            changed++;
        }
    }
    return changed;
}

/* Moves a slab's free count by delta, keeping its class tree bit and
 * releasing the slab when it is empty. */
static void slab_adjust(struct seg_map *m, uint32_t sb, uint64_t w, int64_t delta)
{
    unsigned cls = meta_class(w), nfree = (unsigned) ((int64_t) meta_nfree(w) + delta);
    struct slab_geometry g;

    sizeclass_geometry(cls, &g);
    if (nfree >= g.capacity) {
        bittree_clear(seg_class_tree(m, cls), sb);
        seg_blocks_release(m, sb, g.blocks);
        return;
    }
    seg_meta_put(m, sb, meta_with_nfree(w, nfree));
    if (nfree > 0)
        bittree_set(seg_class_tree(m, cls), sb);
    else
        bittree_clear(seg_class_tree(m, cls), sb);
}

/* Puts back the objects a punch reserved: by the puncher when its punch
 * is done, or by a reaper when the puncher is gone. Lock held. */
void punch_restore(struct seg_map *m)
{
    struct seg_header *hdr = m->hdr;
    uint32_t sb = hdr->punch_block; /* read once: a client may write it */
    uint64_t w = sb < m->nblocks ? seg_meta_get(m, sb) : 0;

    store_relaxed(&hdr->punch_phase, PUNCH_RESTORING);
    if (punch_slab_ok(m, sb, w))
        slab_adjust(m, sb, w, punch_objects(m, sb, w, hdr->punch_mask, PUNCH_FREE_RECORDED));
    store_relaxed(&hdr->punch_pid, 0);
    store_relaxed(&hdr->punch_phase, PUNCH_OUTSIDE);
}

/* Recovery: a holder died inside a punch's reservation or restore. Nobody
 * took an object since (the lock was held), so the punch is undone
 * exactly: a reservation through the mask, a restore through the record.
 * Free counts are rebuilt by seg_repair() afterwards. */
void punch_recover(struct seg_map *m)
{
    struct seg_header *hdr = m->hdr;
    uint32_t phase = hdr->punch_phase, sb = hdr->punch_block;
    uint64_t w = sb < m->nblocks ? seg_meta_get(m, sb) : 0; /* 0: FREE, not a slab */

    if (phase == PUNCH_OUTSIDE)
        return;
    if (punch_slab_ok(m, sb, w) && hdr->punch_pid)
        (void) punch_objects(m, sb, w, hdr->punch_mask,
                             phase == PUNCH_RESERVING ? PUNCH_FREE_MASKED : PUNCH_FREE_RECORDED);
    memset(hdr->punch_reserved, 0, sizeof(hdr->punch_reserved));
    store_relaxed(&hdr->punch_pid, 0);
    store_relaxed(&hdr->punch_phase, PUNCH_OUTSIDE);
}

/* Pages of slab sb wholly covered by free objects, below its owner tags. */
static bool punch_candidates(struct seg_map *m, uint32_t sb, uint64_t w, uint64_t *mask)
{
    uint64_t *bits;
    struct slab_geometry g;
    bool any = false;

    mask[0] = mask[1] = 0;
    sizeclass_geometry(meta_class(w), &g);
    if (meta_nfree(w) * (uint64_t) g.size < PUNCH_PAGE)
        return false;
    bits = slab_bitmap(m, sb, &g);
    for (uint32_t p = 0; (p + 1) * PUNCH_PAGE <= g.tags_off && p < 128; p++) {
        uint64_t lo = p * PUNCH_PAGE / g.size, hi = ((p + 1) * PUNCH_PAGE - 1) / g.size, i;

        if (hi >= g.capacity)
            break;
        for (i = lo; i <= hi; i++)
            if (!(bits[i / 64] & (UINT64_C(1) << (i % 64))))
                break;
        if (i > hi) {
            mask[p / 64] |= UINT64_C(1) << (p % 64);
            any = true;
        }
    }
    return any;
}

uint64_t punch_slabs(struct heap *h, struct seg_map *m)
{
    return punch_slabs_max(h, m, UINT64_MAX, NULL);
}

uint64_t punch_slabs_max(struct heap *h, struct seg_map *m, uint64_t max_bytes, uint32_t *cursor)
{
    struct seg_header *hdr = m->hdr;
    uint64_t released = 0, seg_base = 0;
    uint32_t b = hdr->first_block, pid = (uint32_t) getpid();

    if (m->needs_commit)
        return 0; /* huge pages: only whole pages, which decommit handles */
    if (cursor && *cursor > b && *cursor < m->nblocks)
        b = *cursor;
    /* The budget is checked before each slab: the last may overshoot it by
     * at most one slab's pages (SHM_SLAB_MAX_BLOCKS blocks). */
    while (b < m->nblocks && released < max_bytes) {
        uint64_t mask[2];
        uint32_t sb = m->nblocks;
        uint64_t sw = 0; /* sb's head word, read once and checked (punch_slab_ok) */

        if (seg_lock(m, h) < 0)
            break;
        if (hdr->punch_pid) {
            seg_unlock(m);
            break; /* another punch is in flight */
        }
        for (; b < m->nblocks; b++) {
            uint64_t w = seg_meta_get(m, b);

            if (punch_slab_ok(m, b, w) && punch_candidates(m, b, w, mask)) {
                sb = b;
                sw = w;
                break;
            }
        }
        if (sb == m->nblocks) {
            seg_unlock(m);
            break;
        }
        /* The record first, the reservation second: a reaper restores
         * the objects recorded as reserved, idempotently. */
        memset(hdr->punch_reserved, 0, sizeof(hdr->punch_reserved));
        store_relaxed(&hdr->punch_block, sb);
        store_relaxed(&hdr->punch_mask[0], mask[0]);
        store_relaxed(&hdr->punch_mask[1], mask[1]);
        store_relaxed(&hdr->punch_phase, PUNCH_RESERVING);
        store_relaxed(&hdr->punch_pid, pid);
        slab_adjust(m, sb, sw, -(int64_t) punch_objects(m, sb, sw, mask, PUNCH_RESERVE));
        store_relaxed(&hdr->punch_phase, PUNCH_OUTSIDE);
        seg_unlock(m);
        shm_fault(FAULT_PUNCH_MID);
        seg_base = (uint64_t) sb << SHM_BLOCK_SHIFT;
        for (uint32_t p = 0; p < 128;) {
            uint32_t q = p;

            if (!punch_mask_test(mask, p)) {
                p++;
                continue;
            }
            while (q < 128 && punch_mask_test(mask, q))
                q++;
            if (os_decommit(m->fd, seg_base + p * PUNCH_PAGE, (q - p) * PUNCH_PAGE) == 0)
                released += (q - p) * PUNCH_PAGE;
            p = q;
        }
        if (seg_lock(m, h) < 0)
            break;
        if (hdr->punch_pid == pid && hdr->punch_block == sb)
            punch_restore(m);
        seg_unlock(m);
        b = sb + 1;
    }
    if (cursor)
        *cursor = b < m->nblocks ? b : hdr->first_block;
    return released;
}

uint32_t punch_reserved(struct seg_map *m, unsigned *ret_cls)
{
    struct seg_header *hdr = m->hdr;
    uint32_t n = 0, sb = hdr->punch_block;
    uint64_t w;

    if (!hdr->punch_pid || sb >= m->nblocks || !punch_slab_ok(m, sb, w = seg_meta_get(m, sb)))
        return 0;
    for (unsigned k = 0; k < SHM_SLAB_MAX_OBJECTS / 64; k++)
        n += (uint32_t) __builtin_popcountll(load_relaxed(&hdr->punch_reserved[k]));
    *ret_cls = meta_class(w);
    return n;
}
