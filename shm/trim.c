/* Trim: give memory the heap holds but does not use back to the system.
 *
 * heap_trim: bump the trim generation (every running thread flushes its
 * cache to the blocks at its next slow path or tick), take over the cache
 * of every idle thread (the busy/steal protocol in tcache.c) and reclaim
 * that of every dead process (reclaim.c), wait up to wait_ms for busy
 * owners to flush themselves, then empty the recyclers into the blocks,
 * reap what dead decommitters left BUSY (reclaim.c), decommit the free
 * blocks beyond retain_empty_blocks (commit.c) and punch the free pages
 * inside slabs (punch.c). */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "shm/internal.h"
#include "shm/os.h"
#include "shm/percpu.h"

/* Takes an idle live slot and drains it for generation gen; false if its
 * owner is busy (it will flush itself) or another trimmer has it. */
static bool slot_steal_drain(struct heap *h, struct cache_slot *s, uint64_t gen)
{
    if (tcache_steal_begin(h, s, false) < 0)
        return false;
    (void) tcache_drain_slot(h, s);
    /* release: the owner, and a trimmer waiting on it, see the drain
     * (pairs with the acquire of trim_gen_seen below). */
    store_release(&s->trim_gen_seen, gen);
    tcache_steal_end(s);
    return true;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L};

    (void) nanosleep(&ts, NULL);
}

int heap_trim(struct heap *h, unsigned wait_ms, struct trim_result *ret)
{
    uint32_t pending[SHM_MAX_SLOTS], npending = 0, flushed = 0, total = 0;
    uint64_t gen, released = 0, retain, deadline;
    struct ctl_header *c;
    int drained;

    if (!h)
        return -EINVAL;
    c = h->ctl;
    (void) heap_sync_segments(h);
    /* acq_rel: threads that load the new generation flush (pairs with the
     * acquire in tcache_tick); the bump itself publishes nothing else. */
    gen = fetch_add_acq_rel(&c->trim_gen, 1) + 1;
    /* Our own cache needs no steal. */
    tcache_trim_self(h, gen);
    for (uint32_t i = 0, high = slot_high(h->ctl); i < high; i++) {
        struct cache_slot *s = &c->slots[i];

        if (!slot_is_owned(s))
            continue;
        total++;
        if (!os_pid_alive((pid_t) load_relaxed(&s->pid))) {
            if (reclaim_slot(h, s) > 0)
                flushed++;
            continue;
        }
        if (slot_steal_drain(h, s, gen))
            flushed++;
        else
            pending[npending++] = i;
    }
    /* Owners that were busy flush themselves when they notice the new
     * generation; give them until the deadline, trying to steal again. */
    deadline = os_now_ns() + (uint64_t) wait_ms * 1000000u;
    while (npending) {
        uint32_t left = 0;

        for (uint32_t k = 0; k < npending; k++) {
            struct cache_slot *s = &c->slots[pending[k]];

            /* acquire: pairs with the release of trim_gen_seen after a
             * flush (tcache.c) or a drain (slot_steal_drain). */
            if (!slot_is_owned(s) || load_acquire(&s->trim_gen_seen) >= gen ||
                slot_steal_drain(h, s, gen)) {
                flushed++;
                continue;
            }
            pending[left++] = pending[k];
        }
        npending = left;
        if (!npending || os_now_ns() >= deadline)
            break;
        sleep_ms(1);
    }
    /* The per-CPU caches empty into the recyclers, which go to the slabs. */
    (void) percpu_drain_all(h, NULL);
    drained = tcache_drain_recyclers(h, NULL);
    reclaim_busy_all(h);
    retain = load_relaxed(&c->config.retain_empty_blocks);
    for (uint32_t i = 1; i < heap_nmapped(h); i++)
        if (heap_mapped(h, i))
            released += commit_decommit_free(h, &h->segs[i], &retain);
    /* Then the free pages inside slabs that still hold live objects. */
    for (uint32_t i = 1; i < heap_nmapped(h); i++)
        if (heap_mapped(h, i))
            released += punch_slabs(h, &h->segs[i]);
    (void) fetch_add_relaxed(&c->trim_bytes_released, released);
    (void) fetch_add_relaxed(&c->trims, 1);
    if (ret) {
        memset(ret, 0, sizeof(*ret));
        ret->trim_gen = gen;
        ret->bytes_released = released;
        ret->caches_flushed = flushed;
        ret->caches_total = total;
    }
    return drained;
}
