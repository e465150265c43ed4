/* The storm's diagnostic (check_storm.c): what a killed process left in
 * shared memory, read before the reclaim, so that a reclaim that returns an
 * object twice can be traced back to where the object was at the kill.
 *
 * storm_audit() walks, without moving anything (the dead process is gone
 * and the parent is between operations, so nothing changes under the
 * walk), every object reachable from the dead process's cache slots (bins,
 * handoff word, transit record) and from the recyclers, and writes a text
 * snapshot: each slot's words, each segment's journal, each recycler's
 * head, and every anomaly: an object reachable twice, or reachable while
 * its slab counts it free (or its slab is gone). The parent prints the
 * snapshot when the reclaim's figures then come out wrong. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shm/internal.h"
#include "tests/mp/storm_audit.h"

enum aref_kind { AREF_BIN = 1, AREF_HANDOFF, AREF_TRANSIT, AREF_RECYCLER };

static const char *const aref_names[] = {"?", "bin", "handoff", "transit", "recycler"};

struct aref {
    uint64_t off;
    uint32_t kind, slot, cls, pos;
};

#define AREF_MAX    (1u << 17)
#define CHAIN_GUARD 100000u

struct audit {
    struct heap *h;
    struct aref *refs;
    uint32_t nrefs;
    char *buf;
    size_t len, cap;
    uint32_t anomalies;
};

__attribute__((format(printf, 2, 3))) static void say(struct audit *a, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (a->len + 1 >= a->cap)
        return;
    va_start(ap, fmt);
    n = vsnprintf(a->buf + a->len, a->cap - a->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        a->len = a->len + (size_t) n < a->cap ? a->len + (size_t) n : a->cap - 1;
}

static void
add_ref(struct audit *a, uint64_t off, uint32_t kind, uint32_t slot, uint32_t cls, uint32_t pos)
{
    if (a->nrefs < AREF_MAX)
        a->refs[a->nrefs++] = (struct aref){off, kind, slot, cls, pos};
}

/* Walks at most max objects of a chain (0 ends it), recording each. */
static uint32_t
walk(struct audit *a, uint64_t x, uint64_t max, uint32_t kind, uint32_t slot, uint32_t cls)
{
    uint32_t n = 0;

    while (x && n < max && n < CHAIN_GUARD && heap_obj_at(a->h, x)) {
        add_ref(a, x, kind, slot, cls, n);
        n++;
        x = obj_words(a->h, x)[0];
    }
    return n;
}

/* The state of the object at off in its slab: 1 free, 0 out of the slab,
 * -1 no slab there (released, or never one); *ret_tag its owner tag. */
static int slab_state(struct heap *h, uint64_t off, uint16_t *ret_tag)
{
    struct seg_map *m = heap_seg_for(h, off);
    struct slab_geometry g;
    uint64_t w, rel, idx, *bits;
    uint32_t b;

    *ret_tag = 0;
    if (!m)
        return -1;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    if (b < m->hdr->first_block || b >= m->nblocks)
        return -1;
    w = load_relaxed(&m->meta[b]);
    if (meta_state(w) == BLK_SLAB_TAIL) {
        if (meta_len(w) > b)
            return -1;
        b -= meta_len(w);
        w = load_relaxed(&m->meta[b]);
    }
    if (meta_state(w) != BLK_SLAB || meta_class(w) >= SHM_NCLASSES)
        return -1;
    sizeclass_geometry(meta_class(w), &g);
    rel = (off & SHM_OFF_MASK) - ((uint64_t) b << SHM_BLOCK_SHIFT);
    idx = rel / g.size;
    if (rel % g.size || idx >= g.capacity)
        return -1;
    *ret_tag = slab_tags(m->base + ((uint64_t) b << SHM_BLOCK_SHIFT), &g)[idx];
    bits = slab_bitmap(m, b, &g);
    return (bits[idx / 64] >> (idx % 64)) & 1;
}

static int cmp_ref(const void *x, const void *y)
{
    const struct aref *p = x, *q = y;

    return p->off < q->off ? -1 : p->off > q->off;
}

static void say_ref(struct audit *a, const struct aref *r)
{
    say(a, " %s(slot %u cls %u pos %u)", aref_names[r->kind], r->slot, r->cls, r->pos);
}

/* Whether s's handoff word is one of its bins' heads: a give-back that
 * stopped before the cut, which the bin still holds (tcache.c). */
static bool handoff_in_bin(struct cache_slot *s)
{
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        if (bin_off(load_relaxed(&s->bins[cls].head)) == load_relaxed(&s->handoff))
            return true;
    return false;
}

/* Whether a segment's journal has a return in progress from slot's
 * handoff word at off (the journal is then at off or one object past it). */
static bool returning(struct heap *h, uint32_t slot, uint64_t off)
{
    uint64_t word = ptr_off(h, &h->ctl->slots[slot - 1].handoff);

    for (uint32_t i = 1; i < heap_nmapped(h); i++) {
        struct seg_journal *j = &h->segs[i].hdr->journal;

        if (heap_mapped(h, i) && j->op == JOP_RETURN && j->slot_word == word &&
            (j->chain == off || j->chain == obj_words(h, off)[0]))
            return true;
    }
    return false;
}

size_t storm_audit(struct heap *h, uint32_t pid, char *buf, size_t cap, uint32_t *ret_anomalies)
{
    struct ctl_header *c = h->ctl;
    struct audit a = {.h = h, .buf = buf, .cap = cap};
    uint16_t dead_tag = 0;

    a.refs = malloc(AREF_MAX * sizeof(*a.refs));
    if (!a.refs || cap == 0)
        return 0;
    buf[0] = 0;
    for (uint32_t i = 0; i < SHM_MAX_OWNERS && i < load_relaxed(&c->owners_high); i++)
        if (load_relaxed(&c->owners[i].pid) == pid &&
            load_relaxed(&c->owners[i].state) != OWNER_FREE)
            dead_tag = (uint16_t) (i + 1);
    say(&a, "audit of pid %u (owner tag %u) before its reclaim:\n", pid, dead_tag);
    for (uint32_t i = 0; i < slot_high(c); i++) {
        struct cache_slot *s = &c->slots[i];
        uint64_t t = load_relaxed(&s->transit.s.tag), toff = load_relaxed(&s->transit.s.off);

        if (!slot_is_owned(s) || load_relaxed(&s->pid) != pid)
            continue;
        say(&a,
            " slot %u: busy %u steal %u handoff %#" PRIx64 " transit {off %#" PRIx64 " seq %" PRIu64
            " cls %u %s state %u} info %" PRIu64 "\n",
            i + 1, s->busy, s->steal, s->handoff, toff, transit_seq(t), transit_cls(t),
            transit_push(t) ? "push" : "pop", (unsigned) transit_state(t), s->transit_info);
        for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
            struct cache_bin *bin = &s->bins[cls];
            uint64_t w = load_relaxed(&bin->head);
            uint32_t n;

            if (!w)
                continue;
            n = walk(&a, bin_off(w), bin_count(w), AREF_BIN, i + 1, cls);
            say(&a, "  bin %u: head %#" PRIx64 " count %u walked %u untagged %u net %" PRIu64 "\n",
                cls, bin_off(w), bin_count(w), n, bin->untagged, bin->net);
        }
        if (s->handoff && handoff_in_bin(s))
            say(&a, "  handoff chain: a bin's head (not cut from it yet)\n");
        else if (s->handoff)
            say(&a, "  handoff chain: %u objects\n",
                walk(&a, s->handoff, UINT64_MAX, AREF_HANDOFF, i + 1, SHM_NCLASSES));
        /* A push that won is the recycler's: its bundle may be anyone's
         * since (the settle leaves it alone). */
        if (transit_state(t) != TRANSIT_NONE &&
            !(transit_push(t) && transit_state(t) == TRANSIT_WON) && toff && heap_obj_at(h, toff)) {
            uint64_t count =
                    transit_push(t) ? s->transit_info : bundle_count(obj_words(h, toff)[1]);

            say(&a, "  transit bundle: %u of %" PRIu64 " objects\n",
                walk(&a, toff, count, AREF_TRANSIT, i + 1, transit_cls(t)), count);
        }
    }
    for (uint32_t i = 1; i < heap_nmapped(h); i++) {
        struct seg_map *m = &h->segs[i];
        struct seg_journal *j;

        if (!heap_mapped(h, i))
            continue;
        j = &m->hdr->journal;
        if (j->op || j->n)
            say(&a,
                " seg %u journal: op %u cls %u chain %#" PRIx64 " block %u n %u slot_word %#" PRIx64
                "\n",
                i, j->op, j->cls, j->chain, j->block, j->n, j->slot_word);
    }
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        tagged_head_t head = head_read(&c->rec[cls].head);
        uint64_t x = head.s.off;
        uint32_t nb = 0, no = 0;

        while (x && nb < CHAIN_GUARD && heap_obj_at(h, x)) {
            uint64_t link = obj_words(h, x)[1];

            no += walk(&a, x, bundle_count(link), AREF_RECYCLER, nb, cls);
            nb++;
            x = bundle_next(link);
        }
        if (head.s.off)
            say(&a,
                " recycler %u: head %#" PRIx64 " seq %" PRIu64 " actor %u, %u bundles %u objects\n",
                cls, head.s.off, rec_seq(head.s.tag), rec_actor(head.s.tag), nb, no);
    }
    /* Anomalies: reachable twice (a transit bundle may legitimately be in
     * its bin, the handoff word or the recycler too: the settle decides),
     * or reachable while its slab counts it free or has no slab. */
    qsort(a.refs, a.nrefs, sizeof(*a.refs), cmp_ref);
    for (uint32_t k = 0; k < a.nrefs; k++) {
        struct aref *r = &a.refs[k];
        uint16_t tag;
        int st = slab_state(h, r->off, &tag);

        /* A bundle's tags are cleared as it leaves its cache: one a
         * sweep finds tagged would be freed under the recycler. */
        if (r->kind == AREF_RECYCLER && st == 0 && tag) {
            say(&a, " ANOMALY object %#" PRIx64 " in a recycler with tag %u:", r->off, tag);
            say_ref(&a, r);
            say(&a, "\n");
            a.anomalies++;
        }
        if (k + 1 < a.nrefs && a.refs[k + 1].off == r->off) {
            say(&a, " %s object %#" PRIx64 " reachable twice:",
                r->kind == AREF_TRANSIT || a.refs[k + 1].kind == AREF_TRANSIT ? "(transit)"
                                                                              : "ANOMALY",
                r->off);
            say_ref(&a, r);
            say_ref(&a, &a.refs[k + 1]);
            say(&a, " slab state %d tag %u\n", st, tag);
            if (r->kind != AREF_TRANSIT && a.refs[k + 1].kind != AREF_TRANSIT)
                a.anomalies++;
        }
        /* A return in progress under a lock its holder died with: the
         * object the journal names may be free already (its bit is set
         * before the journal moves past it), and the replay knows it. */
        if (st != 0 && !(r->kind == AREF_HANDOFF && r->pos == 0 && returning(h, r->slot, r->off))) {
            say(&a, " ANOMALY object %#" PRIx64 " reachable while %s, tag %u:", r->off,
                st > 0 ? "free in its slab" : "its slab is gone", tag);
            say_ref(&a, r);
            say(&a, "\n");
            a.anomalies++;
        }
    }
    /* Every slab: a free object has no owner (slab.c's invariant), or a
     * sweep of that owner would return it again. */
    for (uint32_t i = 1; i < heap_nmapped(h); i++) {
        struct seg_map *m = &h->segs[i];

        if (!heap_mapped(h, i))
            continue;
        for (uint32_t b = m->hdr->first_block; b < m->nblocks; b++) {
            uint64_t w = load_relaxed(&m->meta[b]), *bits;
            struct slab_geometry g;
            const uint16_t *tags;

            if (meta_state(w) != BLK_SLAB || meta_class(w) >= SHM_NCLASSES)
                continue;
            sizeclass_geometry(meta_class(w), &g);
            bits = slab_bitmap(m, b, &g);
            tags = slab_tags(m->base + ((uint64_t) b << SHM_BLOCK_SHIFT), &g);
            for (uint32_t k = 0; k < g.capacity; k++)
                if (((bits[k / 64] >> (k % 64)) & 1) && tags[k]) {
                    say(&a, " ANOMALY object %#" PRIx64 " free in its slab with tag %u\n",
                        ((uint64_t) i << SHM_SEG_SHIFT) + ((uint64_t) b << SHM_BLOCK_SHIFT) +
                                (uint64_t) k * g.size,
                        tags[k]);
                    a.anomalies++;
                }
        }
    }
    free(a.refs);
    *ret_anomalies = a.anomalies;
    return a.len;
}
