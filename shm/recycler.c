/* The recycler: per size class, a lock-free Treiber stack of bundles in the
 * control segment, shared by every process.
 *
 * A bundle is a chain of free objects of one class linked by word 0 (the
 * last holds 0). Its first object's word 1 links to the next bundle and
 * carries the bundle's object count and highest segment index (so a
 * process that has not mapped that segment yet maps it before use).
 *
 * head = {offset of the first bundle, tag}, swapped by cas128. A pop bumps
 * the tag; a push keeps it. A pop that read head {A, t} and A's link B can
 * only succeed if no pop happened since (the tag would differ) and A is
 * still first; so B is still A's successor (ABA cannot strike). After a
 * failed CAS the next attempt uses the head the CAS returned, never a
 * stale copy.
 *
 * Memory order: the __sync CAS is a full barrier. A push writes the
 * bundle's links, then CASes: release. A pop CASes, then reads the chain:
 * acquire. The read of A's link before the CAS may race with A's new owner
 * writing it (A was popped and handed out meanwhile); the value is then
 * garbage, but the CAS fails because the tag moved, and the offset is
 * bounds-checked before use anyway. */
#include <errno.h>

#include "shm/internal.h"

/* The racy read described above: deliberately unsynchronised with the
 * object's new owner, and rejected by the CAS when it matters. */
__attribute__((no_sanitize("thread"))) static uint64_t link_read(struct heap *h, uint64_t off)
{
    return load_relaxed(&obj_words(h, off)[1]);
}

bool recycler_push(struct heap *h,
                   struct cache_bin *stats_bin,
                   unsigned cls,
                   uint64_t first,
                   uint32_t count,
                   uint32_t maxseg,
                   bool force)
{
    struct recycler *r = &h->ctl->rec[cls];
    tagged_head_t old, nw;
    uint64_t retries = 0;

    if (!force && load_relaxed(&r->nbundles) >= load_relaxed(&h->recycler_cap))
        return false;
    old = head_read(&r->head);
    for (;;) {
        store_relaxed(&obj_words(h, first)[1], bundle_link(old.s.off, count, maxseg));
        nw.s.off = first;
        nw.s.tag = old.s.tag;
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

uint64_t
recycler_pop(struct heap *h, struct cache_bin *stats_bin, unsigned cls, uint32_t *ret_count)
{
    struct recycler *r = &h->ctl->rec[cls];
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
        link = link_read(h, old.s.off);
        nw.s.off = bundle_next(link);
        nw.s.tag = old.s.tag + 1;
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
