/* The heap verifier: walks everything and checks every invariant.
 *
 *  1. Per segment, under its lock: every metadata word is a known state;
 *     slab and run tails point back to a head that covers them; the free
 *     tree and the class trees agree with the metadata (meta.h invariants)
 *     and are internally consistent (bittree_check); nfree == popcount of
 *     the slab bitmap; free_blocks and committed_units match their maps;
 *     no journal is left open; BUSY blocks belong to live processes (those
 *     of dead ones are reclaimed first, as a trim would).
 *  2. Objects in thread caches (slots taken with the steal protocol, so
 *     their owners wait) and in recyclers (every bundle popped, checked,
 *     held in a slot claimed for the walk and pushed back: a kill of the
 *     verifier loses none, tcache.c's tcache_hold_*): each is the start of
 *     an object of its class in a slab, is not free in its slab's bitmap,
 *     and appears only once.
 *  3. Counts: per heap, objects out of slabs == objects in use (allocs -
 *     frees) + cached + in recyclers, corrected for frees the slabs refused
 *     as double. Checked whenever every slot could be taken (a dead
 *     thread's transfer is settled first: tcache.c), no chain was found
 *     corrupt, and (per-CPU caches only, a prototype whose refill and flush
 *     windows stay open) no thread died inside a cache operation
 *     (report.counts_checked says which).
 *  0. First, the writable part of the control segment, which any attached
 *     process can write (layout.h): the slot and owner bounds, every slot's
 *     and owner entry's state, the roots, the recycler heads. Damage is
 *     reported, one problem per kind, never trusted: every list walk below
 *     is bounded by the count that claims it, so a cycle costs a problem,
 *     not a hang or memory beyond the heap's size. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shm/internal.h"
#include "shm/os.h"
#include "shm/percpu.h"

struct verify_ctx {
    struct heap *h;
    struct verify_report *rep;
    uint64_t *offs; /* objects seen in caches and recyclers */
    uint32_t *cls_of;
    size_t n, cap;
    size_t max_seen; /* no more can be in caches and recyclers (seen_bound) */
    bool overflow;
    bool oom;
};

__attribute__((format(printf, 2, 0))) static void
vproblem(struct verify_report *rep, const char *fmt, va_list ap)
{
    rep->consistent = false;
    if (rep->nproblems < sizeof(rep->problems) / sizeof(rep->problems[0]))
        (void) vsnprintf(rep->problems[rep->nproblems], sizeof(rep->problems[0]), fmt, ap);
    rep->nproblems++;
}

__attribute__((format(printf, 2, 3))) static void
problem(struct verify_ctx *v, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vproblem(v->rep, fmt, ap);
    va_end(ap);
}

void heap_verify_problem(struct verify_report *rep, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vproblem(rep, fmt, ap);
    va_end(ap);
}

static void seen_add(struct verify_ctx *v, uint64_t off, unsigned cls)
{
    if (v->n >= v->max_seen) {
        if (!v->overflow)
            problem(v,
                    "caches and recyclers list more objects than the slabs have handed out "
                    "(%lu): a cycle or garbage; the rest is not collected",
                    (unsigned long) v->max_seen);
        v->overflow = true;
        return;
    }
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4096;
        uint64_t *o = realloc(v->offs, cap * sizeof(*o));
        uint32_t *c;

        if (!o) {
            v->oom = true;
            return;
        }
        v->offs = o;
        c = realloc(v->cls_of, cap * sizeof(*c));
        if (!c) {
            v->oom = true;
            return;
        }
        v->cls_of = c;
        v->cap = cap;
    }
    v->offs[v->n] = off;
    v->cls_of[v->n] = cls;
    v->n++;
}

static uint64_t *bitmap_of(struct seg_map *m, uint32_t b, const struct slab_geometry *g)
{
    return (uint64_t *) (m->base + ((uint64_t) b << SHM_BLOCK_SHIFT) + g->bitmap_off);
}

/* An owner tag must name an owner entry that is claimed (a sweep frees
 * the entry only after its tag is gone from the heap). */
static bool owner_claimed(struct verify_ctx *v, uint16_t tag)
{
    return tag <= SHM_MAX_OWNERS && load_relaxed(&v->h->ctl->owners[tag - 1].state) != OWNER_FREE;
}

/* Part 1 for one segment; adds each class's objects out of slabs to out[]. */
static void verify_segment(struct verify_ctx *v, struct seg_map *m, uint64_t *out)
{
    struct seg_header *hdr = m->hdr;
    uint64_t free_blocks = 0, units = 0, nunits = m->size >> m->unit_shift, large = 0;
    char buf[128];

    if (bittree_check(seg_free_tree(m), buf, sizeof(buf)) < 0)
        problem(v, "segment %u: free tree: %s", m->index, buf);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        if (bittree_check(seg_class_tree(m, c), buf, sizeof(buf)) < 0)
            problem(v, "segment %u: class %u tree: %s", m->index, c, buf);
    if (hdr->journal.op != JOP_NONE || hdr->journal.n)
        problem(v, "segment %u: journal left open (op %u)", m->index, hdr->journal.op);
    for (uint32_t b = 0; b < m->nblocks; b++) {
        uint64_t w = m->meta[b];
        enum blk_state st = meta_state(w);
        bool free_bit = bittree_test(seg_free_tree(m), b);
        struct slab_geometry g;

        v->rep->checked_blocks++;
        if (b < hdr->first_block) {
            if (st != BLK_RESERVED)
                problem(v, "segment %u block %u: header block in state %u", m->index, b, st);
            continue;
        }
        if (free_bit != (st == BLK_FREE))
            problem(v, "segment %u block %u: free tree bit %d, state %u", m->index, b, free_bit,
                    st);
        if (st == BLK_FREE)
            free_blocks++;
        for (unsigned c = 0; c < SHM_NCLASSES; c++) {
            bool want = st == BLK_SLAB && meta_class(w) == c && meta_nfree(w) > 0;

            if (bittree_test(seg_class_tree(m, c), b) != want)
                problem(v, "segment %u block %u: class %u tree bit wrong", m->index, b, c);
        }
        switch (st) {
        case BLK_FREE:
        case BLK_RUN:
            if (st == BLK_RUN && (meta_len(w) == 0 || (uint64_t) b + meta_len(w) > m->nblocks ||
                                  meta_kind(w) >= _RUN_KIND_MAX))
                problem(v, "segment %u block %u: bad run length or kind", m->index, b);
            if (st == BLK_RUN && meta_kind(w) == RUN_LARGE)
                large += (uint64_t) meta_len(w) << SHM_BLOCK_SHIFT;
            /* Arenas and pool chunks carry their creator's tag while it
             * creates them: see run.c. */
            if (st == BLK_RUN && meta_owner(w) && !owner_claimed(v, meta_owner(w)))
                problem(v, "segment %u block %u: run of kind %u of owner %u, which is gone",
                        m->index, b, meta_kind(w), meta_owner(w));
            break;
        case BLK_SLAB: {
            unsigned cls = meta_class(w), nfree = 0;
            const uint16_t *tags;
            uint64_t *bits;

            if (cls >= SHM_NCLASSES) {
                problem(v, "segment %u block %u: bad class %u", m->index, b, cls);
                break;
            }
            sizeclass_geometry(cls, &g);
            if ((uint64_t) b + g.blocks > m->nblocks || meta_len(w) != g.blocks) {
                problem(v, "segment %u block %u: slab length wrong", m->index, b);
                break;
            }
            bits = bitmap_of(m, b, &g);
            for (uint32_t i = 0; i < g.bitmap_words; i++)
                nfree += (unsigned) __builtin_popcountll(bits[i]);
            if (g.capacity % 64 && bits[g.bitmap_words - 1] >> (g.capacity % 64))
                problem(v, "segment %u block %u: bitmap bits past capacity", m->index, b);
            if (nfree != meta_nfree(w))
                problem(v, "segment %u block %u: nfree %u but bitmap has %u", m->index, b,
                        meta_nfree(w), nfree);
            if (nfree == g.capacity)
                problem(v, "segment %u block %u: empty slab not released", m->index, b);
            out[cls] += g.capacity - nfree;
            /* A free object has no owner; an owned one's owner is known. */
            tags = slab_tags(m->base + ((uint64_t) b << SHM_BLOCK_SHIFT), &g);
            for (uint32_t i = 0; i < g.capacity; i++) {
                uint16_t t = load_relaxed(&tags[i]);

                if (t && (bits[i / 64] >> (i % 64) & 1))
                    problem(v, "segment %u block %u: free object %u has owner %u", m->index, b, i,
                            t);
                else if (t && !owner_claimed(v, t))
                    problem(v, "segment %u block %u: object %u of owner %u, which is gone",
                            m->index, b, i, t);
            }
            break;
        }
        case BLK_SLAB_TAIL:
        case BLK_RUN_TAIL: {
            uint32_t d = meta_len(w);
            uint64_t hw = d && d <= b ? m->meta[b - d] : 0;
            enum blk_state want = st == BLK_SLAB_TAIL ? BLK_SLAB : BLK_RUN;

            if (meta_state(hw) != want || meta_len(hw) <= d)
                problem(v, "segment %u block %u: tail without a head", m->index, b);
            break;
        }
        case BLK_BUSY:
            if (!os_pid_alive((pid_t) meta_busy_pid(w)))
                problem(v, "segment %u block %u: busy for a dead process", m->index, b);
            break;
        default:
            problem(v, "segment %u block %u: unknown state %u", m->index, b, st);
            break;
        }
    }
    {
        unsigned cls = 0;
        uint32_t reserved = punch_reserved(m, &cls);

        /* A live trimmer's punch holds these out of their slab for a while. */
        if (reserved && cls < SHM_NCLASSES)
            out[cls] -= reserved;
    }
    if (free_blocks != hdr->free_blocks)
        problem(v, "segment %u: free_blocks %lu but %lu blocks are free", m->index,
                (unsigned long) hdr->free_blocks, (unsigned long) free_blocks);
    if (large != hdr->large_bytes)
        problem(v, "segment %u: large_bytes %lu but large objects take %lu", m->index,
                (unsigned long) hdr->large_bytes, (unsigned long) large);
    for (uint64_t u = 0; u < nunits; u++)
        units += (seg_commit_map(m)[u / 64] >> (u % 64)) & 1;
    if (units != hdr->committed_units)
        problem(v, "segment %u: committed_units %lu but map has %lu", m->index,
                (unsigned long) hdr->committed_units, (unsigned long) units);
}

/* Part 2 for one object: must be an allocated-from-slab object of cls. */
static void verify_object(struct verify_ctx *v, struct seg_map *m, uint64_t off, unsigned cls)
{
    uint64_t rel = off & SHM_OFF_MASK, w, *bits, idx;
    struct slab_geometry g;
    uint32_t b;

    v->rep->checked_objects++;
    b = (uint32_t) (rel >> SHM_BLOCK_SHIFT);
    w = m->meta[b];
    if (meta_state(w) == BLK_SLAB_TAIL && meta_len(w) <= b)
        b -= meta_len(w), w = m->meta[b];
    if (meta_state(w) != BLK_SLAB || meta_class(w) != cls) {
        problem(v, "object %#lx (class %u) is not in a slab of its class", (unsigned long) off,
                cls);
        return;
    }
    sizeclass_geometry(cls, &g);
    rel -= (uint64_t) b << SHM_BLOCK_SHIFT;
    idx = rel / g.size;
    if (rel % g.size || idx >= g.capacity) {
        problem(v, "object %#lx is not an object start", (unsigned long) off);
        return;
    }
    bits = bitmap_of(m, b, &g);
    if (bits[idx / 64] & (UINT64_C(1) << (idx % 64)))
        problem(v, "object %#lx is cached but also free in its slab", (unsigned long) off);
}

/* Collects a list (word 0 links) of class cls, at most `limit` objects.
 * Returns objects found. */
static uint64_t
collect_list(struct verify_ctx *v, uint64_t chain, unsigned cls, const char *where, uint64_t limit)
{
    uint64_t n = 0;

    while (chain && !v->overflow) {
        if (!heap_obj_at(v->h, chain)) {
            problem(v, "%s: bad link %#lx", where, (unsigned long) chain);
            break;
        }
        if (n >= limit) {
            problem(v, "%s: list does not end within %lu objects", where, (unsigned long) limit);
            break;
        }
        seen_add(v, chain, cls);
        n++;
        chain = obj_words(v->h, chain)[0];
    }
    return n;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}

/* Bundles one recycler can hold: it is capped at recycler_cap_bundles
 * (at most 65,536 by the config table) plus those pushed with force. */
#define VERIFY_MAX_BUNDLES (1u << 17)

/* Part 0: the control segment's writable part (see the top). */
static void verify_ctl(struct verify_ctx *v)
{
    struct ctl_header *c = v->h->ctl;
    uint32_t bad_slots = 0, first_slot = 0, bad_owners = 0, first_owner = 0, bad_roots = 0;
    uint32_t first_root = 0, bad_recs = 0, first_rec = 0, n;

    if ((n = load_acquire(&c->slots_high)) > SHM_MAX_SLOTS)
        problem(v, "control segment: slots_high %u is past the %u slots", n, SHM_MAX_SLOTS);
    if ((n = load_acquire(&c->owners_high)) > SHM_MAX_OWNERS)
        problem(v, "control segment: owners_high %u is past the %u owner entries", n,
                SHM_MAX_OWNERS);
    for (uint32_t i = 0; i < SHM_MAX_SLOTS; i++)
        if (!slot_state_valid(load_relaxed(&c->slots[i].state)) && !bad_slots++)
            first_slot = i;
    if (bad_slots)
        problem(v, "cache slots: %u have a state that is no slot state (scribbled), the first %u",
                bad_slots, first_slot);
    for (uint32_t i = 0; i < SHM_MAX_OWNERS; i++)
        if (load_relaxed(&c->owners[i].state) > OWNER_SWEEPING && !bad_owners++)
            first_owner = i;
    if (bad_owners)
        problem(v, "owner table: %u entries have no owner state (scribbled), the first %u",
                bad_owners, first_owner);
    for (uint32_t i = 0; i < SHM_MAX_ROOTS; i++) {
        const struct root_entry *e = &c->roots[i];
        uint64_t off = load_relaxed(&e->off);
        bool named = memchr(e->name, 0, sizeof(e->name)) != NULL;

        if ((!named || (e->name[0] && off && !heap_at(v->h, off, 1, 1)) || (!e->name[0] && off)) &&
            !bad_roots++)
            first_root = i;
    }
    if (bad_roots)
        problem(v,
                "roots: %u entries have an unterminated name or an offset outside the heap, "
                "the first %u",
                bad_roots, first_root);
    for (uint32_t cls = 0; cls < SHM_NCLASSES; cls++) {
        uint64_t off = load_relaxed(&c->rec[cls].head.s.off);

        if (off && !heap_obj_at(v->h, off) && !bad_recs++)
            first_rec = cls;
    }
    if (bad_recs)
        problem(v, "recyclers: %u heads are not objects of the heap, the first class %u", bad_recs,
                first_rec);
}

/* Objects the slabs have handed out, by their metadata (unlocked: a bound
 * only): no more can sit in caches and recyclers, so the walks collect at
 * most that many, whatever lists a scribbler made (a cycle counts again and
 * again). This bounds verify's memory by the heap's live objects. */
static size_t seen_bound(struct heap *h)
{
    size_t n = SHM_SLAB_MAX_OBJECTS; /* slack for slabs changing meanwhile */

    for (uint32_t i = 1; i < heap_nmapped(h); i++) {
        struct seg_map *m = heap_mapped(h, i);

        for (uint32_t b = 0; m && b < m->nblocks; b++) {
            uint64_t w = load_relaxed(&m->meta[b]);
            struct slab_geometry g;

            if (meta_state(w) != BLK_SLAB || meta_class(w) >= SHM_NCLASSES)
                continue;
            sizeclass_geometry(meta_class(w), &g);
            if (meta_nfree(w) < g.capacity)
                n += g.capacity - meta_nfree(w);
        }
    }
    return n;
}

/* A bundle held for the walk: its class and the objects its bin took. */
struct popped {
    uint32_t cls;
    uint32_t count;
};

int heap_verify(struct heap *h, struct verify_report *ret)
{
    struct verify_ctx v = {.h = h, .rep = ret};
    uint64_t out[SHM_NCLASSES] = {0}, cached = 0, in_use = 0, recycled = 0, total_out = 0;
    uint64_t refused = load_relaxed(&h->ctl->refused_frees), pcpu_left = 0;
    uint64_t pcpu_in_use[SHM_NCLASSES] = {0}, pcpu_cached[SHM_NCLASSES] = {0};
    uint32_t taken[SHM_MAX_SLOTS], ntaken = 0, hold_index;
    struct popped *pops = NULL;
    size_t npops = 0, popcap = 0;
    bool exact = true;
    struct ctl_header *c;
    struct cache_slot *hold;
    int r;

    if (!h || !ret)
        return -EINVAL;
    c = h->ctl;
    memset(ret, 0, sizeof(*ret));
    ret->consistent = true;
    (void) heap_sync_segments(h);
    /* The per-CPU caches are emptied first (percpu.c: through our own
     * cache to the recyclers, both walked below); what a CPU we may not
     * run on keeps is counted below, not walked. */
    (void) percpu_drain_all(h, &pcpu_left);
    /* The slot that holds the recyclers' bundles during the walk: without
     * one, no walk (they would be in process memory only). */
    r = tcache_hold_begin(h, &hold_index);
    if (r < 0)
        return r;
    hold = &c->slots[hold_index];
    v.max_seen = seen_bound(h);
    verify_ctl(&v);
    /* Freeze the caches: take every slot (dead owners' too). */
    for (uint32_t i = 0, high = slot_high(h->ctl); i < high; i++) {
        struct cache_slot *s = &c->slots[i];
        bool dead;

        if (!slot_is_owned(s) || i == hold_index)
            continue;
        dead = !os_pid_alive((pid_t) load_relaxed(&s->pid));
        if (tcache_steal_begin(h, s, dead) < 0) {
            exact = false;
            continue;
        }
        taken[ntaken++] = i;
        for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
            uint64_t w = load_relaxed(&s->bins[cls].head), got;
            char where[48];

            (void) snprintf(where, sizeof(where), "slot %u class %u", i, cls);
            /* Slack for a thread killed between a list and its count. */
            got = collect_list(&v, bin_off(w), cls, where,
                               (uint64_t) bin_count(w) + SHM_SLAB_MAX_OBJECTS);
            /* A thread killed mid-operation may leave the two apart. */
            if (got != bin_count(w) && !dead)
                problem(&v, "%s: the bin counts %u objects, its list has %lu", where, bin_count(w),
                        (unsigned long) got);
            cached += got;
        }
    }
    /* Empty the recyclers for the walk, into the hold slot's bins; they
     * are pushed back below. */
    for (unsigned cls = 0; cls < SHM_NCLASSES && !v.oom; cls++) {
        uint64_t first, bundles = 0;
        uint32_t count, kept;

        while (!v.overflow && (first = tcache_hold_pop(h, hold, cls, &count)) != 0) {
            char where[48];
            uint64_t got;

            (void) snprintf(where, sizeof(where), "recycler class %u", cls);
            got = collect_list(&v, first, cls, where, count);
            if (got != count)
                problem(&v, "recycler class %u: bundle says %u objects, has %lu", cls, count,
                        (unsigned long) got);
            recycled += got;
            kept = tcache_hold_keep(h, hold, cls, first);
            /* Not to be put back (a cycle or garbage past the bound, or no
             * memory for its record): the put-back cuts only the recorded
             * counts from the bins' heads, the hold's end returns as many
             * objects as were not recorded to the blocks. */
            if (++bundles > VERIFY_MAX_BUNDLES) {
                problem(&v, "recycler class %u: more than %u bundles", cls, VERIFY_MAX_BUNDLES);
                break;
            }
            if (npops == popcap) {
                struct popped *p = realloc(pops, (popcap ? popcap * 2 : 64) * sizeof(*p));

                if (!p) {
                    v.oom = true;
                    break;
                }
                pops = p;
                popcap = popcap ? popcap * 2 : 64;
            }
            pops[npops].cls = cls;
            pops[npops].count = kept;
            npops++;
        }
    }
    /* Blocks, then objects, one segment at a time under its lock. */
    for (uint32_t i = 1; i < heap_nmapped(h); i++) {
        struct seg_map *m = &h->segs[i];

        if (!heap_mapped(h, i))
            continue;
        /* Blocks a dead decommitter left BUSY are reclaimed, not faults:
         * the same happens at every trim and reclaim. */
        reclaim_busy(h, m);
        if (seg_lock(m, h) < 0) {
            problem(&v, "segment %u: lock not recoverable", i);
            continue;
        }
        verify_segment(&v, m, out);
        for (size_t k = 0; k < v.n; k++)
            if ((v.offs[k] >> SHM_SEG_SHIFT) == i)
                verify_object(&v, m, v.offs[k], v.cls_of[k]);
        seg_unlock(m);
    }
    /* No object twice. */
    if (v.n > 1) {
        qsort(v.offs, v.n, sizeof(*v.offs), cmp_u64);
        for (size_t k = 1; k < v.n; k++)
            if (v.offs[k] == v.offs[k - 1])
                problem(&v, "object %#lx is in two places at once", (unsigned long) v.offs[k]);
    }
    /* Counts. */
    for (uint32_t i = 0, high = slot_high(h->ctl); i < high; i++)
        for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
            in_use += load_relaxed(&c->slots[i].bins[cls].net) -
                      bin_count(load_relaxed(&c->slots[i].bins[cls].head));
    percpu_counts(h, pcpu_in_use, pcpu_cached);
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        in_use += pcpu_in_use[cls];
        cached += pcpu_cached[cls];
        total_out += out[cls];
        refused += load_relaxed(&c->rec[cls].refused);
        in_use -= load_relaxed(&c->rec[cls].reclaimed); /* counted by no cache */
    }
    /* A death inside a thread cache's operation no longer takes objects
     * with it (the transit records, recycler.c): the count stays exact
     * after one. lost_objects counts only chains found corrupt. */
    ret->counts_checked = exact && !v.oom && !v.overflow && load_relaxed(&c->lost_objects) == 0;
#ifdef SHMHEAP_PERCPU
    /* A death between a bin and a CPU cache still loses up to a batch
     * (percpu.c). */
    ret->counts_checked = ret->counts_checked && load_relaxed(&c->deaths_mid_op) == 0;
#endif
    if (ret->counts_checked && total_out != in_use + cached + recycled + refused)
        problem(&v,
                "counts: %lu objects out of slabs, but %lu in use + %lu cached + %lu in "
                "recyclers + %lu frees refused by their slab",
                (unsigned long) total_out, (unsigned long) in_use, (unsigned long) cached,
                (unsigned long) recycled, (unsigned long) refused);
    /* Put everything back: each bin's head is its class's newest bundle. */
    for (size_t k = npops; k-- > 0;)
        tcache_hold_put_back(h, hold, pops[k].cls, pops[k].count);
    (void) tcache_hold_end(h, hold_index); /* -ETIMEDOUT: the slot keeps the rest */
    for (uint32_t k = 0; k < ntaken; k++)
        tcache_steal_end(&c->slots[taken[k]]);
    free(pops);
    free(v.offs);
    free(v.cls_of);
    if (v.oom)
        return -ENOMEM;
    return 0;
}
