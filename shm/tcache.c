/* Thread caches: per thread and attachment, a list of free objects per size
 * class, kept in a cache slot in shared memory so that someone else can
 * give them back if the thread or its process goes away.
 *
 * The fast path (alloc.c) touches only the owner's slot with plain loads
 * and stores: no atomic read-modify-write, no fence.
 *
 * Busy/steal protocol (draining an idle thread's cache without a costly
 * atomic on the owner's path). Two words in the slot:
 *   owner:    busy = 1; compiler barrier; if (steal) back off; ...work...;
 *             busy = 0 (release)
 *   trimmer:  CAS steal 0 -> 1; membarrier(); wait for busy == 0 (acquire);
 *             ...drain the bins...; steal = 0 (release)
 * membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) runs a full barrier on every
 * CPU running a thread of a registered process (every attachment
 * registers). So either the owner's busy = 1 is visible to the trimmer
 * after the membarrier (the trimmer waits), or the owner's later load of
 * steal comes after that barrier and sees 1 (the owner backs off and waits
 * for steal == 0 with acquire, which shows it the drained bins). The
 * owner's own store->load pair needs no fence: the membarrier supplies it
 * only when a trimmer actually comes. Without membarrier a live cache is
 * never taken; its owner flushes when it next runs.
 *
 * Counters (allocs, frees, recycler figures) are in the bins, written by
 * the owner only, summed by readers (stats.c). */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

__thread struct tcache *tl_last __attribute__((tls_model("initial-exec")));
static __thread struct tcache tl_caches[TCACHE_TLS_MAX];
static pthread_once_t process_once = PTHREAD_ONCE_INIT;

/* A forked child must not use its parent's caches: forget them, so every
 * call misses the fast path and the slow path refuses the stale handle. */
static void atfork_child(void)
{
    memset(tl_caches, 0, sizeof(tl_caches));
    tl_last = NULL;
}

static void once_per_process(void)
{
    sizeclass_init();
    (void) pthread_atfork(NULL, NULL, atfork_child);
}

void tcache_reload_config(struct heap *h)
{
    struct shm_config *c = &h->ctl->config;
    uint64_t gen = load_acquire(&h->ctl->config_gen); /* pairs with the writer's release */
    uint32_t bundle = load_relaxed(&c->bundle_objects);
    uint32_t bytes = load_relaxed(&c->thread_cache_bytes);

    if (bundle < 2)
        bundle = 2;
    if (bundle > 4096)
        bundle = 4096;
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        uint32_t size = sizeclass_size(cls);
        uint32_t n = bytes / 8 / size;

        /* A bundle is at most bundle_objects and at most an eighth of the
         * cache's bytes; a bin holds two bundles before it gives one away. */
        if (n > bundle)
            n = bundle;
        if (n < 2)
            n = 2;
        store_relaxed(&h->bundle_n[cls], n);
        store_relaxed(&h->bin_cap[cls], 2 * n);
    }
    store_relaxed(&h->recycler_cap, load_relaxed(&c->recycler_cap_bundles));
    store_relaxed(&h->retain_empty_blocks, load_relaxed(&c->retain_empty_blocks));
    store_relaxed(&h->cfg_gen, gen);
}

static void thread_exit_cb(void *arg);

int tcache_attach(struct heap *h)
{
    int r;

    (void) pthread_once(&process_once, once_per_process);
    r = pthread_key_create(&h->key, thread_exit_cb);
    if (r)
        return -r;
    tcache_reload_config(h);
    return 0;
}

struct tcache *tcache_get(struct heap *h)
{
    struct tcache *tc = tl_last, *free_tc = NULL;
    uint32_t index;
    int r;

    if (tc && tc->h == h && tc->serial == h->serial)
        return tc;
    if (h->pid != getpid()) {
        errno = ESTALE; /* a handle inherited through fork() */
        return NULL;
    }
    for (unsigned i = 0; i < TCACHE_TLS_MAX; i++) {
        tc = &tl_caches[i];
        if (tc->h == h && tc->serial == h->serial) {
            if (!h->track) /* a tracked heap stays off the fast paths */
                tl_last = tc;
            return tc;
        }
        if (!tc->h && !free_tc)
            free_tc = tc;
    }
    if (!free_tc) {
        errno = EMFILE;
        return NULL;
    }
    r = slot_claim(h, &index);
    if (r < 0) {
        errno = -r;
        return NULL;
    }
    tc = free_tc;
    memset(tc, 0, sizeof(*tc));
    tc->h = h;
    tc->serial = h->serial;
    tc->slot = &h->ctl->slots[index];
    tc->slot_index = index;
    tc->free_tick = TCACHE_TICK;
    tc->owner_tag = h->owner_tag;
    tc->trim_gen_seen = load_relaxed(&tc->slot->trim_gen_seen);
    pthread_mutex_lock(&h->local_lock);
    tc->next = h->caches;
    h->caches = tc;
    pthread_mutex_unlock(&h->local_lock);
    (void) pthread_setspecific(h->key, tc);
    if (!h->track)
        tl_last = tc;
    return tc;
}

/* Waits while a trimmer holds slot s. A trimmer that died holding it
 * (its pid is gone) is replaced: the slot's user takes it back and settles
 * whatever the trimmer left half done. */
static void slot_wait_steal(struct heap *h, struct cache_slot *s)
{
    uint32_t thief, spins = 0;

    /* acquire: pairs with the trimmer's release of steal, so its drain is
     * visible when it lets go. */
    while ((thief = load_acquire(&s->steal)) != 0) {
        sched_yield();
        /* Taken back under our own pid, not 0: until the settle is done no
         * other trimmer may steal the slot (it would settle the same
         * handoff, or see it half done, beside us). acq_rel: pairs with the
         * dead trimmer's CAS, so what it wrote is visible. */
        if (++spins % 1024 == 0 && !os_pid_alive((pid_t) thief) &&
            cas_strong_acq_rel(&s->steal, &thief, (uint32_t) getpid())) {
            (void) tcache_settle_handoff(h, s);
            /* release: the settled bins and handoff go with it (pairs with
             * the acquire of steal in a trimmer's CAS or slot_enter). */
            store_release(&s->steal, 0);
            return;
        }
    }
}

/* The busy section of slot s, for its user: a thread's cache or a drain's
 * slot (a live slot like any other, which a trimmer may steal). */
static void slot_enter(struct heap *h, struct cache_slot *s)
{
    for (;;) {
        store_relaxed(&s->busy, 1);
        compiler_barrier();
        /* acquire: pairs with the trimmer's release of steal, so what it
         * drained is visible before we touch the bins. */
        if (!load_acquire(&s->steal))
            return;
        store_release(&s->busy, 0);
        slot_wait_steal(h, s);
    }
}

void tcache_enter(struct tcache *tc)
{
    slot_enter(tc->h, tc->slot);
}

int tcache_steal_begin(struct heap *h, struct cache_slot *s, bool owner_dead)
{
    uint32_t expected = 0;
    bool took_over = false;
    int r;

    /* The trimmer's pid: an owner that finds it dead takes the slot back.
     * acq_rel: acquires what a former holder released with steal = 0. */
    if (!cas_strong_acq_rel(&s->steal, &expected, (uint32_t) getpid())) {
        /* Another trimmer has it; if that one died (and the owner has not
         * taken the slot back), we take its place: the caller drains,
         * which settles whatever it left half done first. A live owner
         * takes it back only when it next runs (slot_wait_steal): an idle
         * one would leave the slot to the dead thief, and every verify
         * after it inexact (a verifier killed while it held every slot). */
        /* acq_rel: pairs with the dead holder's CAS, as above. */
        if (expected == (uint32_t) getpid() || os_pid_alive((pid_t) expected) ||
            !cas_strong_acq_rel(&s->steal, &expected, (uint32_t) getpid()))
            return -EBUSY;
        took_over = true;
    }
    if (owner_dead) {
        /* A lock its owner died holding is recovered first, while its bins
         * and handoff word are as it left them: the replay of a take finds
         * a chain it had delivered still at its bin's head (drained first,
         * the chain would look undelivered and go back twice), and a run's
         * recovery reads the slot's counters before the slot can be
         * claimed again (run.c). Then whatever its owner (or a dead
         * trimmer) was moving goes where it belongs before anyone counts
         * the slot. A lock we cannot take (a guarded wait timed out: a
         * live or stopped holder) would leave that undone: the slot is
         * given back untouched, for a later try (release: pairs with the
         * acquire of steal by the next trimmer or reclaimer). */
        r = seg_recover_all(h);
        if (r == -ETIMEDOUT) {
            store_release(&s->steal, 0);
            return r;
        }
        /* What it cannot return now stays in the handoff word: the
         * caller's drain meets the same lock and stops. */
        (void) tcache_settle_handoff(h, s);
        return 0;
    }
    r = os_membarrier();
    if (r < 0) {
        /* release: pairs with tcache_enter's acquire of steal. */
        store_release(&s->steal, 0);
        return r;
    }
    for (unsigned i = 0; i < 64; i++) {
        /* acquire: pairs with the owner's release of busy. */
        if (!load_acquire(&s->busy)) {
            if (took_over)
                (void) tcache_settle_handoff(h, s); /* a leftover stays for the owner */
            return 0;
        }
        sched_yield();
    }
    /* The owner stayed busy: give the slot back untouched (release: pairs
     * with tcache_enter's acquire of steal). */
    store_release(&s->steal, 0);
    return -EBUSY;
}

void tcache_steal_end(struct cache_slot *s)
{
    /* release: pairs with the owner's acquire of steal (tcache_enter,
     * free's fast path): it sees the drained bins. */
    store_release(&s->steal, 0);
}

/* Walks at most `max` objects of a list, validating each offset; returns
 * the number of valid objects before the end or the first bad link.
 * clear_cls < SHM_NCLASSES: the list is a bundle of that class about to
 * leave a cache for the recycler; its objects' owner tags are cleared on
 * the way (an object freed into a cache keeps its freer's tag until it
 * leaves: see obj_tag() in internal.h). */
static uint64_t chain_len(struct heap *h,
                          uint64_t chain,
                          uint64_t max,
                          uint64_t *ret_last,
                          uint32_t *ret_maxseg,
                          unsigned clear_cls)
{
    uint64_t n = 0, last = 0;
    uint32_t maxseg = 0;

    while (chain && n < max) {
        if (!heap_obj_at(h, chain))
            break;
        if (clear_cls < SHM_NCLASSES)
            store_relaxed(obj_tag(h, chain, clear_cls), (uint16_t) 0);
        if ((uint32_t) (chain >> SHM_SEG_SHIFT) > maxseg)
            maxseg = (uint32_t) (chain >> SHM_SEG_SHIFT);
        last = chain;
        n++;
        chain = obj_words(h, chain)[0];
    }
    if (ret_last)
        *ret_last = last;
    if (ret_maxseg)
        *ret_maxseg = maxseg;
    return n;
}

int tcache_return_handoff(struct heap *h, uint64_t *handoff)
{
    bool shared = (char *) handoff >= h->base && (char *) handoff < h->base + h->ctl->ctl_size;

    for (;;) {
        uint64_t x = load_relaxed(handoff);
        struct seg_map *m;
        int r;

        if (!x)
            return 0;
        m = heap_seg_for(h, x);
        r = m ? seg_lock(m, h) : -EFAULT;
        /* A guarded lock held past its wait (the daemon's, issue 9): the
         * holder lives, the chain is sound; it stays in the word for a
         * later call rather than being given up. */
        if (r == -ETIMEDOUT)
            return r;
        if (r < 0) {
            heap_count_bad_free(h);
            (void) fetch_add_relaxed(&h->ctl->lost_objects, 1);
            store_relaxed(handoff, 0);
            return 0;
        }
        /* Read again under the lock: a recovery may have moved it. */
        x = load_relaxed(handoff);
        if (x && (x >> SHM_SEG_SHIFT) == m->index)
            slab_return_handoff_locked(h, m, handoff, shared);
        seg_unlock(m);
    }
}

/* A handoff word must be empty before a new chain is stored in it: one a
 * drain left (a guarded lock timed out: tcache_drain_slot) is finished
 * first. 0, or the error that kept it. */
static int handoff_clear(struct heap *h, struct cache_slot *s)
{
    return load_relaxed(&s->handoff) ? tcache_return_handoff(h, &s->handoff) : 0;
}

static void transit_clear(struct cache_slot *s)
{
    store_relaxed(&s->transit.s.tag, 0);
    store_relaxed(&s->transit.s.off, 0);
    store_relaxed(&s->transit_info, 0);
}

/* Pops every bundle through slot s (its transit record, then its handoff
 * word) and returns it to the blocks. 0, or -ETIMEDOUT: a guarded lock held
 * too long; the handoff word keeps the rest. own: s is a drain slot (its
 * own fault points). */
static int drain_through(struct heap *h, struct cache_slot *s, bool own)
{
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        uint64_t first;
        uint32_t count;
        int r = handoff_clear(h, s);

        if (r < 0)
            return r; /* the next drain goes on */
        while ((first = recycler_pop(h, s, own ? FAULT_TRIM_DRAIN_NOTED : FAULT_POP_NOTED, NULL,
                                     cls, &count)) != 0) {
            /* The pop's transit record has the bundle until the handoff
             * word takes it (one store: the commit). */
            shm_fault(own ? FAULT_TRIM_DRAIN_POPPED : FAULT_DRAIN_POPPED);
            store_relaxed(&s->handoff, first);
            transit_clear(s);
            if (own)
                shm_fault(FAULT_TRIM_DRAIN_HANDED);
            /* Each object's free bit is the commit of its return, with the
             * segment's journal naming the handoff word (slab.c). */
            r = tcache_return_handoff(h, &s->handoff);
            if (r < 0)
                return r; /* the word keeps the rest: see handoff_clear() */
            if (own)
                shm_fault(FAULT_TRIM_DRAIN_RETURNED);
        }
    }
    return 0;
}

/* A drain by a caller with no cache (the daemon's trim and release): a slot
 * is claimed for it, so that a kill anywhere in it leaves each bundle in
 * shared memory, in the slot's transit record or handoff word, for the
 * reclaimer of the dead pid (tcache_settle_transit, then the handoff walk,
 * as for a client's full-heap drain). The slot is released once empty. */
static int drain_own_slot(struct heap *h)
{
    struct cache_slot *s;
    uint32_t index;
    int r;

    pthread_mutex_lock(&h->drain_lock);
    if (!h->drain_slot) {
        /* No slot free (or a fork's copy of the handle, whose pid is not
         * ours to claim with): the recyclers stay as they are. A bundle
         * popped without a slot would be in process memory only, and lost
         * to a kill (issue 9); the recyclers keep their objects for the
         * next refill, and the next drain empties them. */
        r = h->pid != getpid() ? -ESTALE : slot_claim(h, &index);
        if (r < 0) {
            pthread_mutex_unlock(&h->drain_lock);
            return r == -EMFILE ? -EAGAIN : r;
        }
        h->drain_slot = index + 1;
    }
    s = &h->ctl->slots[h->drain_slot - 1];
    slot_enter(h, s);
    r = drain_through(h, s, true);
    /* release: a trimmer that sees busy 0 sees the drain (pairs with
     * tcache_steal_begin's acquire of busy). */
    store_release(&s->busy, 0);
    if (r == 0) {
        /* Its bins were never used; transit and handoff are clear. */
        slot_release(h, h->drain_slot - 1);
        h->drain_slot = 0;
    }
    pthread_mutex_unlock(&h->drain_lock);
    /* A held lock's leftover stays in the slot's handoff word, kept for the
     * next drain (not an error of this one). */
    return 0;
}

int tcache_drain_recyclers(struct heap *h, struct cache_slot *s)
{
    if (!s)
        return drain_own_slot(h);
    return drain_through(h, s, false);
}

/* Writes s's transit record for a push of `first` (count objects) before the
 * bundle leaves the bin or the handoff word: from here to the push's CAS
 * the record is what finds it (recycler.c). */
static void transit_before_push(
        struct heap *h, struct cache_slot *s, unsigned cls, uint64_t first, uint64_t count)
{
    tagged_head_t head = head_read(&h->ctl->rec[cls].head);

    store_relaxed(&s->transit_info, count);
    store_relaxed(&s->transit.s.off, first);
    store_relaxed(&s->transit.s.tag, transit_word(rec_seq(head.s.tag), cls, true, TRANSIT_PENDING));
}

/* Puts the bundle of `count` objects at first (ours: a dead slot's, whose
 * transfer did not complete) at the head of bin, counted in its net. */
static uint64_t
transit_deliver(struct heap *h, struct cache_bin *bin, uint64_t first, uint64_t count)
{
    uint64_t w = load_relaxed(&bin->head), x = first, last = 0, n = 0;

    /* Its last object may still link on (a cut stopped short): the count
     * is the truth. */
    while (x && n < count && heap_obj_at(h, x)) {
        last = x;
        n++;
        x = obj_words(h, x)[0];
    }
    if (!last)
        return 0;
    if (n < count)
        (void) fetch_add_relaxed(&h->ctl->lost_objects, count - n); /* a corrupt chain */
    obj_words(h, last)[0] = bin_off(w);
    (void) bin_commit(bin, w, bin_word(first, bin_count(w) + (uint32_t) n), (int64_t) n);
    return n;
}

static void tcache_settle_transit(struct heap *h, struct cache_slot *s)
{
    tagged_head_t t = head_read(&s->transit), head;
    uint32_t self = (uint32_t) (s - h->ctl->slots) + 1;
    struct cache_bin *bin;
    uint64_t count;
    unsigned cls;
    bool won;

    if (transit_state(t.s.tag) == TRANSIT_NONE)
        return;
    cls = transit_cls(t.s.tag);
    if (cls >= SHM_NCLASSES || !heap_obj_at(h, t.s.off)) {
        transit_clear(s);
        return;
    }
    /* The head first, then the record again: a mover that marked the
     * record WON did so before the head moved past the actor's tag. */
    head = head_read(&h->ctl->rec[cls].head);
    t = head_read(&s->transit);
    won = transit_state(t.s.tag) == TRANSIT_WON ||
          (rec_seq(head.s.tag) == transit_seq(t.s.tag) + 1 && rec_actor(head.s.tag) == self);
    bin = &s->bins[cls];
    if (transit_push(t.s.tag)) {
        /* Landed: the recycler has it. Not cut yet: the bin or the handoff
         * word still has it. Else it is ours, back into the bin. */
        count = load_relaxed(&s->transit_info);
        if (!won && bin_off(load_relaxed(&bin->head)) != t.s.off &&
            load_relaxed(&s->handoff) != t.s.off)
            transit_deliver(h, bin, t.s.off, count);
    } else if (won && bin_off(load_relaxed(&bin->head)) != t.s.off &&
               load_relaxed(&s->handoff) != t.s.off) {
        /* Popped, not delivered (to the bin, or to the handoff word by a
         * drain): its link word still has its count. */
        count = bundle_count(obj_words(h, t.s.off)[1]);
        transit_deliver(h, bin, t.s.off, count);
    }
    transit_clear(s);
}

int tcache_settle_handoff(struct heap *h, struct cache_slot *s)
{
    uint64_t x;

    /* A transfer to or from a recycler first: its bundle may be meant for
     * the handoff word's chain or a bin. */
    tcache_settle_transit(h, s);
    x = load_relaxed(&s->handoff);
    if (!x)
        return 0;
    /* Stopped before the chain was cut from its bin: the bin still has it. */
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        if (bin_off(load_relaxed(&s->bins[cls].head)) == x) {
            store_relaxed(&s->handoff, 0);
            return 0;
        }
    return tcache_return_handoff(h, &s->handoff);
}

/* A refill filled the (empty) bin: its objects carry no tag yet. malloc
 * tags each before its pop (alloc.c): a walk here would take a cache miss
 * per object back to back (the recycler's come from other threads and
 * processes) where the pops spread them out. */
static void bin_refilled(struct cache_bin *bin)
{
    store_relaxed(&bin->untagged, bin_count(load_relaxed(&bin->head)));
}

int tcache_refill(struct heap *h, struct tcache *tc, unsigned cls)
{
    struct cache_bin *bin = &tc->slot->bins[cls];
    uint32_t count, n = load_relaxed(&h->bundle_n[cls]);
    int last_err = -ENOMEM;
    uint64_t first;

    /* Quotas are checked before anything leaves the shared heap (quota.c). */
    last_err = quota_admit(h, (uint64_t) n * sizeclass_size(cls));
    if (last_err < 0)
        return last_err;
    last_err = -ENOMEM;
    first = recycler_pop(h, tc->slot, FAULT_POP_NOTED, bin, cls, &count);
    if (first) {
        shm_fault(FAULT_REFILL_POPPED);
        /* The commit: the bundle and its count in one CAS (the bin is
         * empty: only empty bins are refilled). */
        (void) bin_commit(bin, load_relaxed(&bin->head), bin_word(first, count), count);
        bin_refilled(bin);
        shm_fault(FAULT_REFILL_DELIVERED);
        transit_clear(tc->slot);
        return 0;
    }
    for (int attempt = 0; attempt < 4; attempt++) {
        uint32_t nmapped = heap_nmapped(h), start = load_relaxed(&h->seg_hint);

        for (uint32_t k = 0; k + 1 < nmapped; k++) {
            uint32_t i = 1 + (start - 1 + k) % (nmapped - 1);
            struct seg_map *m = &h->segs[i];
            int r;

            if (!heap_mapped(h, i))
                continue;
            r = slab_take(h, m, cls, n, bin, NULL);
            if (r > 0) {
                store_relaxed(&h->seg_hint, i); /* a hint: any value works */
                bin_refilled(bin);
                return 0;
            }
            if (r < 0)
                last_err = r;
        }
        /* Every segment is full: a new one may already be there; else the
         * cached objects may be what keeps slabs from emptying; else ask
         * the owner for a segment. */
        if (ctl_nsegments(h->ctl) > nmapped) {
            (void) heap_sync_segments(h);
            continue;
        }
        if (attempt == 0) {
            tcache_release_cached(h, tc, true);
            continue;
        }
        if (!h->hooks.grow)
            return last_err;
        last_err = h->hooks.grow(h->hooks.ctx, 0);
        if (last_err < 0)
            return last_err == -ENOSPC ? -ENOMEM : last_err;
        (void) heap_sync_segments(h);
    }
    return last_err;
}

void tcache_overflow(struct heap *h, struct tcache *tc, unsigned cls)
{
    struct cache_bin *bin = &tc->slot->bins[cls];
    uint32_t n = load_relaxed(&h->bundle_n[cls]), maxseg;
    uint64_t w = load_relaxed(&bin->head), first = bin_off(w), last, got;

    got = chain_len(h, first, n, &last, &maxseg, cls);
    if (got == 0)
        return;
    transit_before_push(h, tc->slot, cls, first, got);
    /* Cut the first `got` objects off the bin as one bundle: the bin's
     * head and net in one commit. */
    (void) bin_commit(bin, w, bin_word(obj_words(h, last)[0], bin_count(w) - (uint32_t) got),
                      -(int64_t) got);
    obj_words(h, last)[0] = 0;
    shm_fault(FAULT_FLUSH_CUT);
    if (!recycler_push(h, tc->slot, FAULT_PUSH_NOTED, bin, cls, first, (uint32_t) got, maxseg,
                       false)) {
        /* The recycler is at its cap: to the blocks, through the slot's
         * handoff word so a death midway loses nothing (the handoff has
         * it before the record goes). The owner's locks are not guarded:
         * a leftover of a trimmer's drain is finished here for sure. */
        (void) handoff_clear(h, tc->slot);
        store_relaxed(&tc->slot->handoff, first);
        transit_clear(tc->slot);
        (void) tcache_return_handoff(h, &tc->slot->handoff);
        return;
    }
    shm_fault(FAULT_FLUSH_PUSHED);
    transit_clear(tc->slot);
}

/* Empties one bin: to the recycler in bundles while it has room (a flush
 * that keeps objects close at hand), or straight to the blocks.
 *
 * The chain is always reachable from shared memory: the slot's handoff word
 * takes it before the bin lets go, and moves past each bundle before the
 * bundle is pushed (so a death between the two loses that bundle rather
 * than leaving it in two places). tcache_settle_handoff() finishes the job
 * for a thread that stopped midway. */
static int
bin_give_back(struct heap *h, struct cache_slot *s, unsigned cls, bool to_blocks, bool count_stats)
{
    struct cache_bin *bin = &s->bins[cls];
    uint64_t w, chain;
    uint32_t n = load_relaxed(&h->bundle_n[cls]);
    int r = handoff_clear(h, s);

    if (r < 0)
        return r; /* the bin stays as it is */
    w = load_relaxed(&bin->head);
    chain = bin_off(w);
    store_relaxed(&s->handoff, chain);
    /* The bin's objects leave it: in use (net - count) stays as it was.
     * The bin's head and net in one commit. */
    (void) bin_commit(bin, w, 0, -(int64_t) bin_count(w));
    while (!to_blocks && chain) {
        uint64_t last, rest, got;
        uint32_t maxseg;

        got = chain_len(h, chain, n, &last, &maxseg, cls);
        if (got == 0)
            break;
        rest = obj_words(h, last)[0];
        /* The record first, then the handoff moves past the bundle, then
         * the bundle is cut: at every step one of them has it. */
        transit_before_push(h, s, cls, chain, got);
        store_relaxed(&s->handoff, rest);
        obj_words(h, last)[0] = 0;
        shm_fault(FAULT_GIVE_BACK_CUT);
        if (!recycler_push(h, s, FAULT_PUSH_NOTED, count_stats ? bin : NULL, cls, chain,
                           (uint32_t) got, maxseg, false)) {
            obj_words(h, last)[0] = rest;
            store_relaxed(&s->handoff, chain);
            transit_clear(s);
            break;
        }
        chain = rest;
    }
    transit_clear(s);
    return tcache_return_handoff(h, &s->handoff);
}

int tcache_drain_slot(struct heap *h, struct cache_slot *s)
{
    int r = tcache_settle_handoff(h, s);

    for (unsigned cls = 0; cls < SHM_NCLASSES && r == 0; cls++)
        if (load_relaxed(&s->bins[cls].head))
            r = bin_give_back(h, s, cls, true, false);
    return r;
}

/* ---- verify's hold of the recyclers' bundles ----
 *
 * verify pops every bundle to walk the recyclers while nobody takes them,
 * and pushes them back after. Held in process memory, a kill in between
 * lost them (issue 9). They are held in the bins of a slot claimed for the
 * walk instead, each moved exactly as a refill moves a bundle (the pop's
 * transit record, then the bin in one commit) and put back as a flush
 * pushes one (the push's record, the cut, the push): a kill anywhere leaves
 * each bundle in the recycler, the transit record or a bin, and whoever
 * reclaims the dead pid's slot returns the bins to the blocks (reclaim.c;
 * for the daemon, the next daemon's adoption). The slot stays busy for the
 * whole walk, so no trimmer drains it under verify. */

int tcache_hold_begin(struct heap *h, uint32_t *ret_index)
{
    uint32_t index;
    int r;

    if (h->pid != getpid())
        return -ESTALE; /* a fork's copy of the handle: the pid is not ours */
    r = slot_claim(h, &index);
    if (r < 0)
        return r;
    slot_enter(h, &h->ctl->slots[index]);
    *ret_index = index;
    return 0;
}

uint64_t tcache_hold_pop(struct heap *h, struct cache_slot *s, unsigned cls, uint32_t *ret_count)
{
    uint64_t first = recycler_pop(h, s, FAULT_VERIFY_NOTED, NULL, cls, ret_count);

    /* The pop's transit record has the bundle until the bin takes it
     * (tcache_hold_keep). */
    if (first)
        shm_fault(FAULT_VERIFY_POPPED);
    return first;
}

uint32_t tcache_hold_keep(struct heap *h, struct cache_slot *s, unsigned cls, uint64_t first)
{
    /* The commit: the bundle on the bin's head, its count and net in one
     * CAS (net - count, the objects in use, does not move). Its count is
     * in its link word, as for a settle. */
    uint64_t n = transit_deliver(h, &s->bins[cls], first, bundle_count(obj_words(h, first)[1]));

    shm_fault(FAULT_VERIFY_HELD);
    transit_clear(s);
    return (uint32_t) n;
}

void tcache_hold_put_back(struct heap *h, struct cache_slot *s, unsigned cls, uint32_t count)
{
    struct cache_bin *bin = &s->bins[cls];
    uint64_t w = load_relaxed(&bin->head), first = bin_off(w), last, got;
    uint32_t maxseg;

    got = chain_len(h, first, count, &last, &maxseg, SHM_NCLASSES);
    if (got == 0)
        return;
    /* As tcache_overflow: the record, then the cut (head and net in one
     * commit), then the push; the record finds it in between. */
    transit_before_push(h, s, cls, first, got);
    (void) bin_commit(bin, w, bin_word(obj_words(h, last)[0], bin_count(w) - (uint32_t) got),
                      -(int64_t) got);
    obj_words(h, last)[0] = 0;
    shm_fault(FAULT_VERIFY_CUT);
    /* force: it was there before verify; a forced push always lands. */
    (void) recycler_push(h, s, FAULT_VERIFY_PUSH_NOTED, NULL, cls, first, (uint32_t) got, maxseg,
                         true);
    shm_fault(FAULT_VERIFY_PUSHED);
    transit_clear(s);
}

int tcache_hold_end(struct heap *h, uint32_t index)
{
    struct cache_slot *s = &h->ctl->slots[index];
    /* What was not put back (verify stopped early: memory, a corrupt
     * recycler) goes to the blocks. */
    int r = tcache_drain_slot(h, s);

    /* release: a trimmer that sees busy 0 sees the bins as we left them
     * (pairs with tcache_steal_begin's acquire of busy). */
    store_release(&s->busy, 0);
    /* A held lock kept some back (-ETIMEDOUT): the slot stays claimed, its
     * bins and handoff word holding them, until this process is gone and
     * its reclaimer finishes the drain. */
    if (r == 0)
        slot_release(h, index);
    return r;
}

static void tcache_flush(struct heap *h, struct tcache *tc, bool to_blocks)
{
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        if (load_relaxed(&tc->slot->bins[cls].head))
            (void) bin_give_back(h, tc->slot, cls, to_blocks, true);
}

/* The calling thread's cache for h if it has one (never makes one). */
static struct tcache *tcache_mine(struct heap *h)
{
    struct tcache *tc = tl_last;

    if (tc && tc->h == h && tc->serial == h->serial)
        return tc;
    if (h->pid != getpid())
        return NULL;
    for (unsigned i = 0; i < TCACHE_TLS_MAX; i++)
        if (tl_caches[i].h == h && tl_caches[i].serial == h->serial)
            return &tl_caches[i];
    return NULL;
}

void tcache_trim_self(struct heap *h, uint64_t gen)
{
    struct tcache *tc = tcache_mine(h);

    if (!tc)
        return;
    tcache_enter(tc);
    tcache_flush(h, tc, true);
    /* release: pairs with heap_trim's acquire of trim_gen_seen. */
    store_release(&tc->slot->trim_gen_seen, gen);
    tcache_leave(tc);
    tc->trim_gen_seen = gen;
}

void tcache_release_cached(struct heap *h, struct tcache *tc, bool entered)
{
    if (!tc) {
        (void) tcache_drain_recyclers(h, NULL); /* -EAGAIN: they stay for later */
        return;
    }
    if (!entered)
        tcache_enter(tc);
    tcache_flush(h, tc, true);
    /* Our slot's transit record and handoff word carry each bundle: inside
     * the busy section, so no trimmer settles them under us. */
    (void) tcache_drain_recyclers(h, tc->slot);
    if (!entered)
        tcache_leave(tc);
}

void tcache_tick(struct heap *h, struct tcache *tc)
{
    struct ctl_header *c = h->ctl;
    /* acquire: pairs with heap_trim's bump; nothing else is read through it. */
    uint64_t gen = load_acquire(&c->trim_gen);

    /* The allocations counted since the last tick join the total. */
    bump_relaxed(&tc->slot->allocs, load_relaxed(&tc->slot->ops));
    store_relaxed(&tc->slot->ops, 0);
    if (gen != tc->trim_gen_seen) {
        tcache_enter(tc);
        tcache_flush(h, tc, true);
        /* release: the trimmer waiting on trim_gen_seen sees the flush
         * (pairs with heap_trim's acquire of it). */
        store_release(&tc->slot->trim_gen_seen, gen);
        tcache_leave(tc);
        tc->trim_gen_seen = gen;
    }
    if (load_relaxed(&c->config_gen) != load_relaxed(&h->cfg_gen))
        tcache_reload_config(h);
    (void) heap_sync_segments(h);
    slot_sample_peak(h, tc->slot);
}

static void tcache_release(struct heap *h, struct tcache *tc, bool unlink)
{
    tcache_enter(tc);
    tcache_flush(h, tc, false);
    /* A chain a trimmer's drain left in the handoff word (a guarded lock
     * held too long) when no bin was left to flush. */
    (void) handoff_clear(h, tc->slot);
    slot_sample_peak(h, tc->slot);
    tcache_leave(tc);
    slot_release(h, tc->slot_index);
    if (unlink) {
        pthread_mutex_lock(&h->local_lock);
        for (struct tcache **pp = &h->caches; *pp; pp = &(*pp)->next)
            if (*pp == tc) {
                *pp = tc->next;
                break;
            }
        pthread_mutex_unlock(&h->local_lock);
    }
    if (tl_last == tc)
        tl_last = NULL;
    tc->h = NULL;
    tc->serial = 0;
}

static void thread_exit_cb(void *arg)
{
    struct tcache *tc = arg;

    if (tc && tc->h && tc->serial == tc->h->serial)
        tcache_release(tc->h, tc, true);
}

void heap_thread_flush(struct heap *h)
{
    struct tcache *tc = h ? tcache_mine(h) : NULL;

    if (!tc)
        return;
    tcache_enter(tc);
    tcache_flush(h, tc, false);
    slot_sample_peak(h, tc->slot);
    tcache_leave(tc);
}

void tcache_flush_all(struct heap *h)
{
    pthread_mutex_lock(&h->local_lock);
    for (struct tcache *tc = h->caches; tc; tc = tc->next) {
        if (tcache_steal_begin(h, tc->slot, false) == 0) {
            (void) tcache_drain_slot(h, tc->slot);
            tcache_steal_end(tc->slot);
        }
    }
    pthread_mutex_unlock(&h->local_lock);
}

/* Every thread of this process must have stopped using h (as for free()).
 * Their caches go back, their slots are released, their TLS entries are
 * cleared so a new attachment at the same address is not confused. */
void tcache_detach(struct heap *h)
{
    struct tcache *tc, *next;

    pthread_mutex_lock(&h->local_lock);
    tc = h->caches;
    h->caches = NULL;
    pthread_mutex_unlock(&h->local_lock);
    for (; tc; tc = next) {
        next = tc->next;
        tcache_release(h, tc, false);
    }
    /* A drain slot kept for the chain a held lock left in its handoff word:
     * finished now if it can be; else it stays, and once this process is
     * gone its reclaimer finishes it. */
    pthread_mutex_lock(&h->drain_lock);
    if (h->drain_slot && handoff_clear(h, &h->ctl->slots[h->drain_slot - 1]) == 0) {
        slot_release(h, h->drain_slot - 1);
        h->drain_slot = 0;
    }
    pthread_mutex_unlock(&h->drain_lock);
    (void) pthread_key_delete(h->key);
}
