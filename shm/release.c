/* Bounded release, for an automatic policy (the daemon's decay.c).
 *
 * heap_trim (trim.c) is the operator's full trim: it bumps the trim
 * generation so that every running thread flushes its cache, waits for
 * them, and decommits everything beyond retain_empty_blocks. A policy that
 * runs every few hundred milliseconds must not do that: flushing a busy
 * thread's cache costs that thread refills, and one large release could
 * hold segment locks for long. heap_release therefore:
 *   - bumps no generation: running threads keep their caches;
 *   - takes over only the caches of the slots its caller found idle,
 *     through the same busy/steal protocol as a trim (tcache.c), so an owner
 *     that wakes up meanwhile waits for the steal and finds its bins empty,
 *     never half drained;
 *   - empties the recyclers only if asked (their bundles keep slabs from
 *     emptying, but a busy workload refills from them);
 *   - decommits free blocks, then free pages inside slabs, up to a budget
 *     of bytes (segment.c's _max variants), taking and dropping each
 *     segment's lock per batch as a trim does.
 * Callers serialise their calls (the daemon runs one job at a time): the
 * segments' release cursors are plain process-local fields.
 * It frees no object and touches no object in use: drained caches and
 * recycler bundles go back to their slabs (tcache_return_handoff), and only
 * blocks and pages whose objects are all free are decommitted. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

/* Takes over an idle live slot and drains it; false if its owner is busy
 * (it is not idle after all), another trimmer has it, or it changed hands. */
static bool slot_drain_idle(struct heap *h, struct cache_slot *s, uint32_t pid)
{
    if (load_acquire(&s->state) != SLOT_OWNED || load_relaxed(&s->pid) != pid ||
        !os_pid_alive((pid_t) pid))
        return false; /* dead owners are heap_reclaim_dead's */
    if (tcache_steal_begin(h, s, false) < 0)
        return false;
    (void) tcache_drain_slot(h, s);
    tcache_steal_end(s);
    return true;
}

/* The kernel's count of a normal-page segment's allocated bytes, or
 * UINT64_MAX (hugetlb segments: the unit map is exact there). */
static uint64_t seg_resident(struct seg_map *m)
{
    uint64_t b;

    if (m->needs_commit || os_fstat_size(m->fd, NULL, &b) < 0)
        return UINT64_MAX;
    return b;
}

int heap_release(struct heap *h, const struct release_req *req, struct release_result *ret)
{
    uint64_t released = 0, retain, real = 0, got[SHM_MAX_SEGMENTS] = {0};
    uint64_t before[SHM_MAX_SEGMENTS];
    uint32_t flushed = 0, n;
    int drained = 0;

    if (!h || !req || (req->nidle && !req->idle_slots))
        return -EINVAL;
    (void) heap_sync_segments(h);
    for (uint32_t k = 0; k < req->nidle; k++) {
        uint32_t i = req->idle_slots[k];
        struct cache_slot *s;
        uint32_t pid;

        if (i >= slot_high(h->ctl))
            continue;
        s = &h->ctl->slots[i];
        pid = load_relaxed(&s->pid);
        /* The calling thread's own slot is drained like any other: it is
         * outside any cache operation while it runs this. */
        if (slot_drain_idle(h, s, pid))
            flushed++;
    }
    if (req->drain_recyclers)
        drained = tcache_drain_recyclers(h, NULL);
    /* Blocks a decommitter left BUSY when it died outside the lock. */
    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++)
        if (load_acquire(&h->segs[i].meta))
            reclaim_busy(h, &h->segs[i]);
    /* The budget counts what the decommits and punches asked for; what
     * went back is the kernel's count before and after (a punch of pages
     * inside slabs asks again for pages an earlier punch took, which were
     * not there), less what other threads faulted in meanwhile. */
    n = load_acquire(&h->nmapped);
    for (uint32_t i = 1; i < n; i++)
        before[i] = load_acquire(&h->segs[i].meta) ? seg_resident(&h->segs[i]) : UINT64_MAX;
    retain = req->retain_blocks;
    for (uint32_t i = 1; i < n && released < req->max_bytes; i++)
        if (load_acquire(&h->segs[i].meta)) {
            uint64_t b =
                    commit_decommit_free_max(h, &h->segs[i], &retain, req->max_bytes - released);

            got[i] += b;
            released += b;
        }
    for (uint32_t i = 1; i < n && released < req->max_bytes; i++)
        if (load_acquire(&h->segs[i].meta)) {
            uint64_t b = punch_slabs_max(h, &h->segs[i], req->max_bytes - released,
                                         &h->segs[i].release_cursor);

            got[i] += b;
            released += b;
        }
    for (uint32_t i = 1; i < n; i++) {
        uint64_t after = before[i] != UINT64_MAX ? seg_resident(&h->segs[i]) : UINT64_MAX;

        if (after == UINT64_MAX)
            real += got[i];
        else if (after < before[i])
            real += before[i] - after;
    }
    if (ret) {
        memset(ret, 0, sizeof(*ret));
        ret->bytes_released = real;
        ret->caches_flushed = flushed;
    }
    return drained;
}

bool heap_slot_activity(struct heap *h, uint32_t index, struct slot_activity *ret)
{
    const struct cache_slot *s;
    uint64_t sig, cached = 0;

    if (!h || !ret || index >= slot_high(h->ctl))
        return false;
    s = &h->ctl->slots[index];
    if (load_acquire(&s->state) != SLOT_OWNED)
        return false;
    /* Allocations move ops (or allocs at a tick, or the large counters);
     * a free into the cache moves its bin's head word. A sum of them all
     * moves with any of them (a wrap back to the same sum would need the
     * counters and heads to cancel out exactly between two looks). */
    sig = load_relaxed(&s->allocs) + load_relaxed(&s->ops) + load_relaxed(&s->large_allocs) +
          load_relaxed(&s->large_frees) * 3;
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        uint64_t w = load_relaxed(&s->bins[cls].head);

        sig = sig * 31 + w;
        cached += bin_count(w);
    }
    ret->signature = sig;
    ret->cached_objects = cached;
    ret->pid = load_relaxed(&s->pid);
    return true;
}

uint32_t heap_slots_high(struct heap *h)
{
    return h ? slot_high(h->ctl) : 0;
}
