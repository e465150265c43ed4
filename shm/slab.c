/* Slabs: taking objects out of a segment's slabs and returning them, under
 * the segment's lock (segment.c).
 *
 * A slab is g.blocks blocks of one size class (sizeclass.c gives its
 * geometry): g.capacity objects of g.size bytes from the slab's start, then
 * a u16 owner tag per object at g.tags_off (owned.c), then the free bitmap
 * at g.bitmap_off. Invariants, whenever the lock is free:
 *   meta_nfree(head)        == popcount(bitmap)          (0 <= nfree < capacity)
 *   class tree[cls] bit     == (nfree > 0)
 *   nfree == capacity       never: the slab's blocks are FREE again
 *   free bit set            => the object's tag is 0
 * A take links each object into journal.chain before it clears the free bit;
 * a return sets the bit before the journal and the handoff move past the
 * object (segment.c's preamble gives both rules). */
#include <string.h>

#include "shm/internal.h"

/* Lock-free: the object is live or in the caller's cache, so its slab
 * cannot change under us. */
uint16_t *slab_tag_multi(struct heap *h, uint64_t off, unsigned cls)
{
    uint64_t *meta = (uint64_t *) (h->base + (off & ~SHM_OFF_MASK) + SHM_META_OFF);
    uint64_t b = (off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT, w = load_relaxed(&meta[b]);
    uint64_t slab_off;

    /* relaxed: the object is live or in our cache, so its slab cannot
     * change (see meta.h). */
    if (meta_state(w) == BLK_SLAB_TAIL)
        b -= meta_len(w);
    slab_off = (off & ~SHM_OFF_MASK) | b << SHM_BLOCK_SHIFT;
    return slab_obj_tag(h, slab_off, off - slab_off, cls);
}

static void slab_format(struct seg_map *m, uint32_t b, unsigned cls, const struct slab_geometry *g)
{
    uint64_t *bits = slab_bitmap(m, b, g);

    /* The block may hold a former slab's bytes: no object has an owner. */
    memset(slab_tags(m->base + ((uint64_t) b << SHM_BLOCK_SHIFT), g), 0,
           g->bitmap_off - g->tags_off);
    for (uint32_t i = 0; i < g->bitmap_words; i++)
        bits[i] = ~UINT64_C(0);
    if (g->capacity % 64)
        bits[g->bitmap_words - 1] = (UINT64_C(1) << (g->capacity % 64)) - 1;
    seg_blocks_claim(m, b, meta_make_slab(cls, g->capacity, g->blocks));
    shm_fault(FAULT_CARVE_MID);
    bittree_set(seg_class_tree(m, cls), b);
    store_relaxed(&m->hdr->journal.n, 0);
}

/* ---- taking objects ---- */

/* Where the next objects of cls come from: the head block of a slab with a
 * free object, or a slab carved from free blocks. Returns 0 (*ret_sb set),
 * 1 when the take stops here (no room; or the blocks need a commit and
 * objects were taken already, or the commit lost its race 8 times), or a
 * negative errno from the commit, the lock then no longer held. */
static int slab_next(struct heap *h,
                     struct seg_map *m,
                     unsigned cls,
                     const struct slab_geometry *g,
                     uint32_t taken,
                     uint32_t *retries,
                     uint32_t *ret_sb)
{
    for (;;) {
        int64_t sb = bittree_find_first(seg_class_tree(m, cls));
        uint64_t slot_word;
        int r;

        if (sb >= 0) {
            *ret_sb = (uint32_t) sb;
            return 0;
        }
        sb = seg_find_run(m, g->blocks, 1);
        if (sb < 0)
            return 1;
        if (commit_ready(m, (uint32_t) sb, g->blocks)) {
            slab_format(m, (uint32_t) sb, cls, g);
            *ret_sb = (uint32_t) sb;
            return 0;
        }
        if (taken > 0 || ++*retries > 8)
            return 1;
        /* No journal across the unlocked commit: nothing is half done. */
        slot_word = load_relaxed(&m->hdr->journal.slot_word);
        store_relaxed(&m->hdr->journal.op, JOP_NONE);
        r = commit_unlocked(h, m, (uint32_t) sb, g->blocks);
        if (r < 0)
            return r;
        /* The relock may have recovered a dead holder and cleared the
         * journal: ours is written again (nothing taken yet, so no chain)
         * before it counts, else a death after the delivery would leave a
         * TAKE without its bin and the chain would go back twice. */
        store_relaxed(&m->hdr->journal.cls, cls);
        store_relaxed(&m->hdr->journal.chain, 0);
        store_relaxed(&m->hdr->journal.slot_word, slot_word);
        store_relaxed(&m->hdr->journal.op, JOP_TAKE);
    }
}

/* Takes up to n - *taken objects from slab sb onto *chain. */
static void slab_take_from(struct heap *h,
                           struct seg_map *m,
                           uint32_t sb,
                           const struct slab_geometry *g,
                           uint32_t n,
                           uint32_t *taken,
                           uint64_t *chain)
{
    uint64_t w = seg_meta_get(m, sb), *bits = slab_bitmap(m, sb, g);
    uint64_t slab_off = ((uint64_t) m->index << SHM_SEG_SHIFT) | (uint64_t) sb << SHM_BLOCK_SHIFT;
    unsigned nfree = meta_nfree(w);

    for (uint32_t i = 0; i < g->bitmap_words && *taken < n && nfree > 0; i++) {
        while (bits[i] && *taken < n) {
            unsigned bit = (unsigned) __builtin_ctzll(bits[i]);
            uint64_t off = slab_off + (uint64_t) (i * 64 + bit) * g->size;

            obj_words(h, off)[0] = *chain;
            *chain = off;
            /* Linked into the journal first, freed bit cleared second:
             * a replay after death sets the bit again, harmlessly. */
            store_relaxed(&m->hdr->journal.chain, *chain);
            bits[i] &= ~(UINT64_C(1) << bit);
            ++*taken;
            nfree--;
            if (*taken == n / 2)
                shm_fault(FAULT_TAKE_MID);
        }
    }
    seg_meta_put(m, sb, meta_with_nfree(w, nfree));
    if (nfree == 0)
        bittree_clear(seg_class_tree(m, meta_class(w)), sb);
}

int slab_take(struct heap *h,
              struct seg_map *m,
              unsigned cls,
              uint32_t n,
              struct cache_bin *bin,
              uint64_t *ret_chain)
{
    struct seg_header *hdr = m->hdr;
    struct slab_geometry g;
    uint64_t chain = 0;
    uint32_t taken = 0, retries = 0, sb;
    int r;

    sizeclass_geometry(cls, &g);
    r = seg_lock(m, h);
    if (r < 0)
        return r;
    store_relaxed(&hdr->journal.cls, cls);
    store_relaxed(&hdr->journal.chain, 0);
    store_relaxed(&hdr->journal.slot_word, bin ? ptr_off(h, bin) : 0);
    store_relaxed(&hdr->journal.op, JOP_TAKE);
    while (taken < n) {
        r = slab_next(h, m, cls, &g, taken, &retries, &sb);
        if (r < 0)
            return r; /* nothing taken, the lock dropped */
        if (r > 0)
            break;
        slab_take_from(h, m, sb, &g, n, &taken, &chain);
    }
    if (bin) {
        /* The bin was empty (only empty bins are refilled from blocks).
         * One CAS delivers the chain and counts it in the bin's net:
         * recovery sees the head's offset equal journal.chain and knows it
         * was delivered, and counted. */
        (void) bin_commit(bin, load_relaxed(&bin->head), bin_word(chain, taken), taken);
        shm_fault(FAULT_TAKE_DELIVERED);
    } else {
        *ret_chain = chain;
    }
    store_relaxed(&hdr->journal.op, JOP_NONE);
    seg_unlock(m);
    return (int) taken;
}

/* ---- returning objects ---- */

/* Returns one object to its slab. Returns false (and counts it unless
 * recovering) if off is not an object of this segment or is already free. */
static bool slab_return_one(struct heap *h, struct seg_map *m, uint64_t off, bool recovering)
{
    uint64_t rel = off & SHM_OFF_MASK, w, *bits, idx;
    uint32_t b, head;
    struct slab_geometry g;
    unsigned nfree, cls;

    if ((off >> SHM_SEG_SHIFT) != m->index || rel >= m->size)
        goto bad;
    b = (uint32_t) (rel >> SHM_BLOCK_SHIFT);
    w = seg_meta_get(m, b);
    if (meta_state(w) == BLK_SLAB_TAIL) {
        if (meta_len(w) > b)
            goto bad;
        b -= meta_len(w);
        w = seg_meta_get(m, b);
    }
    if (meta_state(w) != BLK_SLAB)
        goto bad;
    head = b;
    cls = meta_class(w);
    if (cls >= SHM_NCLASSES)
        goto bad;
    sizeclass_geometry(cls, &g);
    rel -= (uint64_t) head << SHM_BLOCK_SHIFT;
    idx = rel / g.size;
    if (rel % g.size || idx >= g.capacity) {
        if (!recovering) {
            ctl_count_bad_free(h->ctl);
            (void) fetch_add_relaxed(&h->ctl->rec[cls].refused, 1);
        }
        return false;
    }
    bits = slab_bitmap(m, head, &g);
    if (bits[idx / 64] & (UINT64_C(1) << (idx % 64))) {
        /* Free already: a double free, which tagged it on its way through
         * a cache; a free object has no owner (the lock keeps takers out). */
        store_relaxed(slab_tags(m->base + ((uint64_t) head << SHM_BLOCK_SHIFT), &g) + idx,
                      (uint16_t) 0);
        if (!recovering) {
            (void) fetch_add_relaxed(&h->ctl->double_frees, 1);
            (void) fetch_add_relaxed(&h->ctl->rec[cls].refused, 1);
        }
        return false;
    }
    /* A free object has no owner; frees clear the tag already, this covers
     * a reclaimer's replay of a dead thread's half-done free. */
    store_relaxed(slab_tags(m->base + ((uint64_t) head << SHM_BLOCK_SHIFT), &g) + idx,
                  (uint16_t) 0);
    bits[idx / 64] |= UINT64_C(1) << (idx % 64);
    nfree = meta_nfree(w) + 1;
    if (nfree == g.capacity) {
        /* The slab is empty: its blocks go back to the free tree (and are
         * decommitted by a trim beyond retain_empty_blocks). */
        bittree_clear(seg_class_tree(m, cls), head);
        seg_blocks_release(m, head, g.blocks);
    } else {
        seg_meta_put(m, head, meta_with_nfree(w, nfree));
        if (nfree == 1)
            bittree_set(seg_class_tree(m, cls), head);
    }
    return true;
bad:
    if (!recovering) {
        ctl_count_bad_free(h->ctl);
        (void) fetch_add_relaxed(&h->ctl->refused_frees, 1);
    }
    return false;
}

/* Returns the objects from *handoff onward while they lie in m. The free
 * bit is set first, then the journal and *handoff move past the object
 * (see the preamble), so a replay never returns an object that someone
 * may have taken since. Stops at the first object of another segment. */
void slab_return_chain_locked(struct heap *h, struct seg_map *m, uint64_t *handoff, bool recovering)
{
    struct seg_header *hdr = m->hdr;
    uint64_t x = load_relaxed(handoff), guard = m->size / SHM_MIN_OBJECT, n = 0;

    while (x && (x >> SHM_SEG_SHIFT) == m->index) {
        uint64_t next;

        if (!seg_obj_at(m, x) || n++ > guard) {
            /* A broken link: what follows cannot be found any more. */
            if (!recovering)
                ctl_count_bad_free(h->ctl);
            (void) fetch_add_relaxed(&h->ctl->lost_objects, 1);
            x = 0;
            store_relaxed(&hdr->journal.chain, 0);
            store_relaxed(handoff, 0);
            break;
        }
        next = obj_words(h, x)[0];
        (void) slab_return_one(h, m, x, recovering);
        if (n == 2)
            shm_fault(FAULT_RETURN_MID);
        store_relaxed(&hdr->journal.chain, next);
        if (!next)
            shm_fault(FAULT_RETURN_LAST_NOTED);
        store_relaxed(handoff, next);
        x = next;
    }
}

bool slab_return_object_locked(struct heap *h, struct seg_map *m, uint64_t off)
{
    return slab_return_one(h, m, off, false);
}

void slab_return_handoff_locked(struct heap *h, struct seg_map *m, uint64_t *handoff, bool shared)
{
    store_relaxed(&m->hdr->journal.chain, load_relaxed(handoff));
    store_relaxed(&m->hdr->journal.slot_word, shared ? ptr_off(h, handoff) : 0);
    store_relaxed(&m->hdr->journal.op, JOP_RETURN);
    slab_return_chain_locked(h, m, handoff, false);
    store_relaxed(&m->hdr->journal.op, JOP_NONE);
}
