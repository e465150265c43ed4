/* Cache slots: the shared half of a thread cache (tcache.c keeps the
 * process-local half). A slot's life:
 *
 *   FREE --slot_claim()--> OWNED --slot_release()--> FREE
 *                            |
 *                            +-- its owner gone: reclaim_slot() (reclaim.c)
 *                                drains it and stores FREE
 *
 * Claims are lock-free: a CAS of state FREE -> OWNED gives the claimer the
 * slot (acq_rel: it acquires the bins as the last releaser left them,
 * drained). Only the owner writes an OWNED slot's bins, except under the
 * steal protocol (tcache.c) or after the owner's death.
 *
 * Counters: a slot's counters live as long as the slot, across owners
 * (claim_* record where a claimer started). Invariants, per slot:
 *   objects of cls in use   == bins[cls].net - bin_count(bins[cls].head)
 *   bytes in use            == large_bytes_alloc - large_bytes_freed
 *                              + sum over cls of in use * size(cls)
 *   allocations             == large_allocs + allocs + ops
 * slots_high bounds every loop over the slots: no slot at or past it has
 * ever been claimed, and it only grows.
 *
 * Slots are in memory every attached process can write. A slot whose state
 * word is no slot state at all was scribbled: what its bins held is lost
 * (verify reports the slot), and a claimer takes it as free after zeroing
 * it, so that a table of garbage never stops a later attach. (A thread that
 * still used such a slot was broken by the scribble already.) */
#include <errno.h>
#include <string.h>

#include "shm/internal.h"

int slot_claim(struct heap *h, uint32_t *ret_index)
{
    struct ctl_header *c = h->ctl;

    for (uint32_t i = 0; i < SHM_MAX_SLOTS; i++) {
        struct cache_slot *s = &c->slots[i];
        uint32_t expected = load_relaxed(&s->state);

        if (expected != SLOT_FREE && slot_state_valid(expected))
            continue;
        /* acq_rel: acquires the bins as the last releaser of FREE left
         * them (slot_release, reclaim_slot); pairs with slot_is_owned(). */
        if (!cas_strong_acq_rel(&s->state, &expected, SLOT_OWNED))
            continue;
        if (expected != SLOT_FREE)
            /* Scribbled: nothing in it is anyone's any more. */
            memset((char *) s + offsetof(struct cache_slot, pid), 0,
                   sizeof(*s) - offsetof(struct cache_slot, pid));
        store_relaxed(&s->pid, (uint32_t) h->pid);
        store_relaxed(&s->client_id, h->client_id);
        store_relaxed(&s->busy, 0);
        store_relaxed(&s->steal, 0);
        store_relaxed(&s->trim_gen_seen, load_relaxed(&c->trim_gen));
        store_relaxed(&s->claim_bytes, slot_bytes_in_use(s));
        store_relaxed(&s->claim_allocs, slot_allocs(s));
        store_relaxed(&s->claim_frees, slot_frees(s));
        slot_raise_high(c, i + 1);
        *ret_index = i;
        return 0;
    }
    return -EMFILE;
}

void slot_release(struct heap *h, uint32_t index)
{
    /* release: the drained bins are published with the state (pairs with
     * the next claimer's CAS and with slot_is_owned()). */
    store_release(&h->ctl->slots[index].state, SLOT_FREE);
}

void slot_raise_high(struct ctl_header *c, uint32_t n)
{
    /* release: a reader that loads the new bound sees the claim of every
     * slot below it (pairs with slot_high()'s acquire). */
    (void) raise_max32_release(&c->slots_high, n);
}

uint32_t slot_high(const struct ctl_header *c)
{
    /* acquire: pairs with slot_raise_high()'s release. */
    uint32_t n = load_acquire(&c->slots_high);

    return n < SHM_MAX_SLOTS ? n : SHM_MAX_SLOTS;
}

/* Objects of cls allocated through this slot and not freed through it
 * (negative, as a two's complement, when it freed others' objects). The
 * counters are in memory any process can write, so every sum over them is
 * made in uint64_t, where any value wraps (signed overflow would be UB). */
static uint64_t bin_in_use(const struct cache_bin *b)
{
    return load_relaxed(&b->net) - bin_count(load_relaxed(&b->head));
}

uint64_t slot_allocs(const struct cache_slot *s)
{
    return load_relaxed(&s->large_allocs) + load_relaxed(&s->allocs) + load_relaxed(&s->ops);
}

uint64_t slot_frees(const struct cache_slot *s)
{
    uint64_t small_in_use = 0;

    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        small_in_use += bin_in_use(&s->bins[cls]);
    /* Frees are what was allocated and is no longer in use. */
    return load_relaxed(&s->large_frees) + load_relaxed(&s->allocs) + load_relaxed(&s->ops) -
           small_in_use;
}

int64_t slot_bytes_in_use(const struct cache_slot *s)
{
    uint64_t bytes = load_relaxed(&s->large_bytes_alloc) - load_relaxed(&s->large_bytes_freed);

    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        bytes += bin_in_use(&s->bins[cls]) * sizeclass_size(cls);
    return (int64_t) bytes;
}

/* Adds what this slot's in-use bytes moved since its last report to the
 * heap-wide sample and raises the heap's peak if it passed it. */
void slot_sample_peak(struct heap *h, struct cache_slot *s)
{
    int64_t cur = slot_bytes_in_use(s),
            delta = (int64_t) ((uint64_t) cur - (uint64_t) load_relaxed(&s->reported_bytes));
    uint64_t total;

    if ((uint64_t) cur > load_relaxed(&s->peak_bytes) && cur > 0)
        store_relaxed(&s->peak_bytes, (uint64_t) cur);
    if (delta == 0)
        return;
    store_relaxed(&s->reported_bytes, cur);
    total = fetch_add_relaxed(&h->ctl->bytes_sampled, (uint64_t) delta) + (uint64_t) delta;
    if ((int64_t) total > 0)
        (void) ctl_raise_peak(h->ctl, total);
}
