/* Figures: summed from the owners' counters in the cache slots and the
 * recyclers' counts, without stopping anyone. Each figure is a snapshot of
 * relaxed loads; counts of objects in flight may be off by a bundle while
 * threads run. */
#include <errno.h>
#include <string.h>

#include "shm/internal.h"
#include "shm/os.h"
#include "shm/percpu.h"

/* Adds every slot's counters and bins to the figures. */
static void stats_add_slots(struct ctl_header *c, struct heap_stats *ret)
{
    for (uint32_t i = 0, high = slot_high(c); i < high; i++) {
        const struct cache_slot *s = &c->slots[i];
        bool owned = load_relaxed(&s->state) == SLOT_OWNED;

        if (owned)
            ret->slots_in_use++;
        ret->allocs += slot_allocs(s);
        ret->frees += slot_frees(s);
        for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
            const struct cache_bin *b = &s->bins[cls];
            uint64_t w = load_relaxed(&b->head);
            struct heap_class_stats *cs = &ret->classes[cls];

            /* net - count: wraps back to the truth when summed. */
            cs->in_use += load_relaxed(&b->net) - bin_count(w);
            if (owned)
                cs->cached += bin_count(w);
            cs->rec_pushes += load_relaxed(&b->rec_pushes);
            cs->rec_pops += load_relaxed(&b->rec_pops);
            cs->rec_retries += load_relaxed(&b->rec_retries);
        }
    }
}

/* Adds the per-CPU caches (percpu.c): their objects in use and cached.
 * Their allocations were counted in the slots' ticks, and the slots count
 * as freed whatever they allocated that is not in their bins: take off
 * what is in use through the CPU caches. */
static uint64_t stats_add_percpu(struct heap *h, struct heap_stats *ret)
{
    uint64_t in_use[SHM_NCLASSES] = {0}, cached[SHM_NCLASSES] = {0};
    uint64_t area = percpu_counts(h, in_use, cached);

    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        ret->classes[cls].in_use += in_use[cls];
        ret->classes[cls].cached += cached[cls];
        ret->frees -= in_use[cls];
    }
    return area;
}

/* Adds every mapped segment's figures. */
static void stats_add_segments(struct heap *h, struct heap_stats *ret)
{
    for (uint32_t i = 1; i < heap_nmapped(h); i++) {
        struct seg_map *m = &h->segs[i];
        struct heap_seg_stats *ss = &ret->segs[ret->nsegments];

        if (!heap_mapped(h, i))
            continue;
        ss->index = i;
        ss->page_size = m->page_size;
        ss->size = m->size;
        ss->committed_bytes = commit_bytes(m);
        /* On normal pages the kernel's count is the truth: trim also
         * punches pages inside slabs, and untouched pages of a used block
         * were never there. */
        if (!m->needs_commit)
            (void) os_fstat_size(m->fd, NULL, &ss->committed_bytes);
        ss->free_blocks = load_relaxed(&m->hdr->free_blocks);
        ss->metadata_bytes = m->hdr->meta_end;
        /* Large objects by the segments' own count, which recovery keeps
         * exact (the slots' counters can miss a run whose thread died). */
        ret->bytes_in_use += load_relaxed(&m->hdr->large_bytes);
        ret->bytes_reserved += m->size;
        ret->bytes_committed += ss->committed_bytes;
        ret->nsegments++;
    }
}

int heap_stats(struct heap *h, struct heap_stats *ret)
{
    struct ctl_header *c;
    uint64_t in_use; /* wraps: the counters are any process's to write */
    uint64_t pcpu_area;

    if (!h || !ret)
        return -EINVAL;
    c = h->ctl;
    (void) heap_sync_segments(h);
    memset(ret, 0, sizeof(*ret));
    in_use = 0;
    ret->frees = load_relaxed(&c->owned_reclaimed_large);
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        ret->classes[cls].object_size = sizeclass_size(cls);
        ret->classes[cls].in_recycler = load_relaxed(&c->rec[cls].objects);
        /* Frees a slab refused were counted by the cache that took them;
         * objects a sweep freed were counted by no cache (reclaim.c). Sums
         * wrap back to the truth. */
        ret->classes[cls].in_use =
                load_relaxed(&c->rec[cls].refused) - load_relaxed(&c->rec[cls].reclaimed);
        ret->frees += load_relaxed(&c->rec[cls].reclaimed);
    }
    stats_add_slots(c, ret);
    pcpu_area = stats_add_percpu(h, ret);
    /* A free a slab refused was counted by the cache that took it: it is
     * not a free. */
    ret->frees -= load_relaxed(&c->refused_frees);
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        ret->frees -= load_relaxed(&c->rec[cls].refused);
        in_use += ret->classes[cls].in_use * ret->classes[cls].object_size;
    }
    ret->bytes_in_use = (int64_t) in_use > 0 ? in_use : 0;
    /* The control segment's pages as the kernel counts them: most of its
     * 1024 cache slots are never touched. */
    if (os_fstat_size(h->ctl_fd, NULL, &ret->bytes_committed) < 0)
        ret->bytes_committed = c->ctl_size;
    stats_add_segments(h, ret);
    /* The per-CPU caches' area is a large object, the allocator's own. */
    ret->bytes_in_use -= ret->bytes_in_use < pcpu_area ? ret->bytes_in_use : pcpu_area;
    /* The peak is sampled by threads every TCACHE_TICK operations and on
     * flushes; the snapshot taken here counts too. */
    ret->peak_bytes_in_use = ctl_raise_peak(c, ret->bytes_in_use);
    ret->trim_gen = load_relaxed(&c->trim_gen);
    ret->trims = load_relaxed(&c->trims);
    ret->trim_bytes_released = load_relaxed(&c->trim_bytes_released);
    ret->bad_frees = load_relaxed(&c->bad_frees);
    ret->double_frees = load_relaxed(&c->double_frees);
    ret->lost_objects = load_relaxed(&c->lost_objects);
    ret->reclaimed_objects = load_relaxed(&c->owned_reclaimed_objects);
    ret->reclaimed_bytes = load_relaxed(&c->owned_reclaimed_bytes);
    return 0;
}

int heap_client_usage(struct heap *h,
                      uint64_t client_id,
                      uint32_t pid,
                      struct heap_client_usage *ret)
{
    struct ctl_header *c;

    if (!h || !ret)
        return -EINVAL;
    c = h->ctl;
    memset(ret, 0, sizeof(*ret));
    for (uint32_t i = 0, high = slot_high(h->ctl); i < high; i++) {
        const struct cache_slot *s = &c->slots[i];

        /* Relaxed snapshots: a slot changing hands meanwhile is counted or
         * missed, never misread as a pointer. */
        if (!slot_is_owned(s) || load_relaxed(&s->client_id) != client_id ||
            (pid && load_relaxed(&s->pid) != pid))
            continue;
        ret->threads++;
        ret->allocs += slot_allocs(s) - load_relaxed(&s->claim_allocs);
        ret->frees += slot_frees(s) - load_relaxed(&s->claim_frees);
        /* In uint64_t: any of these may be garbage (signed overflow is UB). */
        ret->bytes_in_use =
                (int64_t) ((uint64_t) ret->bytes_in_use + (uint64_t) slot_bytes_in_use(s) -
                           (uint64_t) load_relaxed(&s->claim_bytes));
    }
    return 0;
}
