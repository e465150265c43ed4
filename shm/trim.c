/* Trim and reclamation.
 *
 * heap_trim: bump the trim generation (every running thread flushes its
 * cache to the blocks at its next slow path or tick), take over the cache
 * of every idle thread (the busy/steal protocol in tcache.c) and of every
 * dead process, wait up to wait_ms for busy owners to flush themselves,
 * then empty the recyclers into the blocks and decommit the free blocks
 * beyond retain_empty_blocks (segment.c). */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "shm/internal.h"
#include "shm/os.h"

/* Takes an idle live slot and drains it for generation gen; false if its
 * owner is busy (it will flush itself) or another trimmer has it. */
static bool slot_steal_drain(struct heap *h, struct cache_slot *s, uint64_t gen)
{
    if (tcache_steal_begin(h, s, false) < 0)
        return false;
    (void) tcache_drain_slot(h, s);
    /* release: the owner, and a trimmer waiting on it, see the drain. */
    store_release(&s->trim_gen_seen, gen);
    tcache_steal_end(s);
    return true;
}

/* Takes back a slot whose owner is gone: drain, then free the slot. */
static bool slot_reclaim(struct heap *h, struct cache_slot *s)
{
    if (tcache_steal_begin(h, s, true) < 0)
        return false;
    if (load_acquire(&s->state) != SLOT_OWNED) {
        tcache_steal_end(s);
        return false;
    }
    /* A thread killed inside a cache operation may have held a few objects
     * in its registers (an object popped but not yet counted, a bundle
     * between the recycler and a bin): they cannot be found, and the exact
     * object count of heap_verify no longer applies. */
    if (load_relaxed(&s->busy))
        (void) fetch_add_relaxed(&h->ctl->deaths_mid_op, 1);
    (void) tcache_drain_slot(h, s);
    store_relaxed(&s->busy, 0);
    store_relaxed(&s->pid, 0);
    store_relaxed(&s->client_id, 0);
    (void) fetch_add_relaxed(&h->ctl->caches_reclaimed, 1);
    /* release: the next claimer sees the drained bins. */
    store_release(&s->state, SLOT_FREE);
    tcache_steal_end(s);
    return true;
}

/* Reclaims the slots of client_id (of process pid only, unless pid is 0);
 * *ret_left counts those someone else held (a trimmer, verify). */
static int reclaim_slots(struct heap *h, uint64_t client_id, uint32_t pid, int *ret_left)
{
    int n = 0, left = 0;

    for (uint32_t i = 0, high = ctl_slots_high(h->ctl); i < high; i++) {
        struct cache_slot *s = &h->ctl->slots[i];

        if (load_acquire(&s->state) != SLOT_OWNED || load_relaxed(&s->client_id) != client_id ||
            (pid && load_relaxed(&s->pid) != pid))
            continue;
        if (slot_reclaim(h, s))
            n++;
        else
            left++;
    }
    if (ret_left)
        *ret_left = left;
    return n;
}

int heap_reclaim_client(struct heap *h, uint64_t client_id)
{
    if (!h)
        return -EINVAL;
    return reclaim_slots(h, client_id, 0, NULL);
}

int tcache_reclaim_process(struct heap *h, uint64_t client_id, uint32_t pid)
{
    int left;

    (void) reclaim_slots(h, client_id, pid, &left);
    return left;
}

/* Blocks a decommitter left BUSY when it died outside the lock. */
static void reap_busy(struct heap *h)
{
    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++)
        if (load_acquire(&h->segs[i].meta))
            seg_reap_busy(h, &h->segs[i]);
}

int heap_reclaim_dead(struct heap *h)
{
    struct heap_owned_reclaim owned;
    int n = 0;

    if (!h)
        return -EINVAL;
    reap_busy(h);
    for (uint32_t i = 0, high = ctl_slots_high(h->ctl); i < high; i++) {
        struct cache_slot *s = &h->ctl->slots[i];

        if (load_acquire(&s->state) == SLOT_OWNED && !os_pid_alive((pid_t) load_relaxed(&s->pid)) &&
            slot_reclaim(h, s))
            n++;
    }
    /* After the slots: see sweep_owner(). */
    (void) heap_reclaim_owned_gone(h, &owned);
    return n;
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

    if (!h)
        return -EINVAL;
    c = h->ctl;
    (void) heap_sync_segments(h);
    /* acq_rel: threads that load the new generation (acquire) flush; the
     * bump itself publishes nothing else. */
    gen = fetch_add_acq_rel(&c->trim_gen, 1) + 1;
    /* Our own cache needs no steal. */
    tcache_trim_self(h, gen);
    for (uint32_t i = 0, high = ctl_slots_high(h->ctl); i < high; i++) {
        struct cache_slot *s = &c->slots[i];

        if (load_acquire(&s->state) != SLOT_OWNED)
            continue;
        total++;
        if (!os_pid_alive((pid_t) load_relaxed(&s->pid))) {
            if (slot_reclaim(h, s))
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

            if (load_acquire(&s->state) != SLOT_OWNED || load_acquire(&s->trim_gen_seen) >= gen ||
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
    recycler_drain_all(h);
    reap_busy(h);
    retain = load_relaxed(&c->config.retain_empty_blocks);
    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++)
        if (load_acquire(&h->segs[i].meta))
            released += seg_decommit_free(h, &h->segs[i], &retain);
    /* Then the free pages inside slabs that still hold live objects. */
    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++)
        if (load_acquire(&h->segs[i].meta))
            released += seg_punch_slabs(h, &h->segs[i]);
    (void) fetch_add_relaxed(&c->trim_bytes_released, released);
    (void) fetch_add_relaxed(&c->trims, 1);
    if (ret) {
        memset(ret, 0, sizeof(*ret));
        ret->trim_gen = gen;
        ret->bytes_released = released;
        ret->caches_flushed = flushed;
        ret->caches_total = total;
    }
    return 0;
}
