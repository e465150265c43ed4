/* The recycler: per size class, a lock-free Treiber stack of bundles in the
 * control segment, shared by every process.
 *
 * A bundle is a chain of free objects of one class linked by word 0 (the
 * last holds 0). Its first object's word 1 links to the next bundle and
 * carries the bundle's object count and highest segment index (so a
 * process that has not mapped that segment yet maps it before use).
 *
 * head = {offset of the first bundle, tag}, swapped by cas128. A push or a
 * pop bumps the tag's sequence. A pop that read head {A, t} and A's link B
 * can only succeed if nothing moved the head since (the tag would differ)
 * and A is still first; so B is still A's successor (ABA cannot strike). After a
 * failed CAS the next attempt uses the head the CAS returned, never a
 * stale copy.
 *
 * Memory order: the __sync CAS is a full barrier. A push writes the
 * bundle's links, then CASes: release. A pop CASes, then reads the chain:
 * acquire. The read of A's link before the CAS may race with A's new owner
 * writing it (A was popped and handed out meanwhile); the value is then
 * garbage, but the CAS fails because the tag moved, and the offset is
 * bounds-checked before use anyway.
 *
 * No bundle is lost to a kill between a CAS and what follows it. The tag is
 * {sequence, actor} (layout.h's rec_tag): every push and pop bumps the
 * sequence and names the slot that made it. A thread moving a bundle for
 * its slot writes the slot's transit record {bundle, sequence it expects,
 * class, push or pop, PENDING} before each CAS attempt (a plain store to
 * its own line; the CAS orders it before the head's change). Whoever moves
 * the head next first reads the head's actor and, if that slot's transit
 * is PENDING for the sequence just before the head's, CASes it to WON
 * (recycler_help). So for a slot whose thread died, whether its CAS
 * happened is known from shared memory (tcache_settle_transit): WON, or
 * the head's tag still {its sequence + 1, itself}; anything else, and it
 * did not. Its bundle is then delivered where the commit would have put
 * it (the bin), or left where it is. */
#include <errno.h>

#include "shm/internal.h"

/* The racy read described above: deliberately unsynchronised with the
 * object's new owner, and rejected by the CAS when it matters. */
__attribute__((no_sanitize("thread"))) static uint64_t link_read(struct heap *h, uint64_t off)
{
    return load_relaxed(&obj_words(h, off)[1]);
}

/* The actor of head's tag moved it last: if its slot's transit says it
 * expected the sequence just before, its CAS won; mark it so before the
 * head moves on (afterwards nobody could tell). */
static void recycler_help(struct heap *h, unsigned cls, tagged_head_t head, uint32_t self)
{
    uint32_t actor = rec_actor(head.s.tag);
    struct cache_slot *s;
    tagged_head_t t, won;

    if (!actor || actor == self || actor > SHM_MAX_SLOTS)
        return;
    s = &h->ctl->slots[actor - 1];
    /* acquire (head_read): pairs with the actor's stores before its CAS. */
    t = head_read(&s->transit);
    if (transit_state(t.s.tag) != TRANSIT_PENDING || transit_cls(t.s.tag) != cls ||
        transit_seq(t.s.tag) + 1 != rec_seq(head.s.tag))
        return;
    won = t;
    won.s.tag = (t.s.tag & ~UINT64_C(3)) | TRANSIT_WON;
    /* Fails harmlessly if the actor moved on meanwhile. */
    (void) cas128(&s->transit, &t, won);
}

static uint32_t slot_actor(struct heap *h, struct cache_slot *s)
{
    return s ? (uint32_t) (s - h->ctl->slots) + 1 : 0;
}

/* The transit record of actor's next CAS attempt (see above). */
static void
transit_note(struct cache_slot *s, uint64_t first, uint64_t seq, unsigned cls, bool push)
{
    if (!s)
        return;
    store_relaxed(&s->transit.s.off, first);
    store_relaxed(&s->transit.s.tag, transit_word(seq, cls, push, TRANSIT_PENDING));
}

bool recycler_push(struct heap *h,
                   struct cache_slot *actor,
                   enum shm_fault_point noted,
                   struct cache_bin *stats_bin,
                   unsigned cls,
                   uint64_t first,
                   uint32_t count,
                   uint32_t maxseg,
                   bool force)
{
    struct recycler *r = &h->ctl->rec[cls];
    uint32_t self = slot_actor(h, actor);
    tagged_head_t old, nw;
    uint64_t retries = 0;

    if (!force && load_relaxed(&r->nbundles) >= load_relaxed(&h->recycler_cap))
        return false;
    old = head_read(&r->head);
    for (;;) {
        recycler_help(h, cls, old, self);
        transit_note(actor, first, rec_seq(old.s.tag), cls, true);
        store_relaxed(&obj_words(h, first)[1], bundle_link(old.s.off, count, maxseg));
        if (actor)
            shm_fault(noted);
        nw.s.off = first;
        nw.s.tag = rec_tag(rec_seq(old.s.tag) + 1, self);
        if (cas128(&r->head, &old, nw))
            break;
        retries++;
    }
    (void) fetch_add_relaxed(&r->nbundles, 1);
    (void) fetch_add_relaxed(&r->objects, count);
    if (stats_bin) {
        bump_relaxed(&stats_bin->rec_pushes, 1);
        bump_relaxed(&stats_bin->rec_retries, retries);
    }
    return true;
}

uint64_t recycler_pop(struct heap *h,
                      struct cache_slot *actor,
                      enum shm_fault_point noted,
                      struct cache_bin *stats_bin,
                      unsigned cls,
                      uint32_t *ret_count)
{
    struct recycler *r = &h->ctl->rec[cls];
    uint32_t self = slot_actor(h, actor);
    tagged_head_t old, nw;
    uint64_t retries = 0, link = 0;
    uint32_t count, maxseg;

    old = head_read(&r->head);
    for (;;) {
        if (old.s.off == 0)
            return 0;
        if (!heap_obj_at(h, old.s.off)) {
            /* A torn or stale head: read it again; a real bad head (the
             * CAS would succeed on it) is corruption and ends the pop. */
            tagged_head_t again = head_read(&r->head);

            if (again.s.off == old.s.off && again.s.tag == old.s.tag)
                return 0;
            old = again;
            continue;
        }
        recycler_help(h, cls, old, self);
        transit_note(actor, old.s.off, rec_seq(old.s.tag), cls, false);
        if (actor)
            shm_fault(noted);
        link = link_read(h, old.s.off);
        nw.s.off = bundle_next(link);
        nw.s.tag = rec_tag(rec_seq(old.s.tag) + 1, self);
        if (cas128(&r->head, &old, nw))
            break;
        retries++;
    }
    count = bundle_count(link);
    maxseg = bundle_maxseg(link);
    (void) fetch_sub_relaxed(&r->nbundles, 1);
    (void) fetch_sub_relaxed(&r->objects, count);
    if (maxseg >= heap_nmapped(h))
        (void) heap_map_segment(h, maxseg);
    if (stats_bin) {
        bump_relaxed(&stats_bin->rec_pops, 1);
        bump_relaxed(&stats_bin->rec_retries, retries);
    }
    *ret_count = count;
    return old.s.off;
}
