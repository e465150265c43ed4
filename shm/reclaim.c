/* Reclamation: what a gone thread, process or client leaves behind goes
 * back to the heap. One order, always (heap_reclaim_dead() follows it, the
 * daemon's calls on a hang-up too):
 *
 *   1. slots   a gone owner's cache slots are drained to the slabs and
 *              freed (the steal protocol of tcache.c keeps live trimmers
 *              and verify out); a bundle it was moving to or from a
 *              recycler is settled first (its transit record). A thread
 *              killed inside a cache operation is counted in deaths_mid_op.
 *   2. sweep   then the objects a gone owner allocated and never shared
 *              (their owner tag is still its own: owned.c) go back to their
 *              slabs, large ones to the free blocks; so do the arenas
 *              and pool chunks whose creation it did not finish (their run
 *              carries its tag: run.c; a SESSION arena with a live header
 *              is left to heap_arena_destroy_session), and the pools it
 *              was destroying are finished (pool.c). After the slots,
 *              because an object in a dead cache carries its freer's tag
 *              too: sweeping first would free it twice.
 *   3. BUSY    last, blocks a decommitter (commit.c) left BLK_BUSY, and the
 *              objects a puncher (punch.c) had reserved, when that process
 *              is gone. They hold no object, so nothing above waits on them.
 *
 * Who may sweep an owner entry: only the process whose pid is in the
 * entry's `sweeper` word, so no object is freed twice; a sweeper that dies
 * leaves its pid there, and the next sweep takes over (what the dead one
 * freed has no tag any more). A sweep reads tags under the segment lock, so
 * a slab cannot change class under it, and returns each object it finds
 * there and then. Whether a pid lives is asked without any segment lock
 * (a system call). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"
#include "shm/percpu.h"

/* Large objects collected under the lock, freed after it. */
#define SWEEP_BATCH 256u

/* ---- 1. cache slots ---- */

/* Takes back a slot whose owner is gone: drain, then free the slot. */
int reclaim_slot(struct heap *h, struct cache_slot *s)
{
    int r = tcache_steal_begin(h, s, true);

    if (r == -ETIMEDOUT)
        return r;
    if (r < 0)
        return 0;
    if (!slot_is_owned(s)) {
        tcache_steal_end(s);
        return 0;
    }
    /* A thread killed inside a cache operation: counted, nothing more. What
     * it was moving is in shared memory (a bin, the handoff word, the
     * transit record: tcache_drain_slot settles them), so the exact object
     * count of heap_verify still applies. */
    if (load_relaxed(&s->busy))
        (void) fetch_add_relaxed(&h->ctl->deaths_mid_op, 1);
    r = tcache_drain_slot(h, s);
    if (r < 0) {
        /* A segment lock held too long (a live or stopped process): what
         * is left stays in the bins and the handoff word, the slot OWNED by
         * its dead pid, for the next try (the daemon retries; a trim or an
         * adoption finds it too). */
        tcache_steal_end(s);
        return r;
    }
    store_relaxed(&s->busy, 0);
    store_relaxed(&s->pid, 0);
    store_relaxed(&s->client_id, 0);
    (void) fetch_add_relaxed(&h->ctl->caches_reclaimed, 1);
    /* release: the next claimer sees the drained bins (pairs with
     * slot_claim()'s CAS). */
    store_release(&s->state, SLOT_FREE);
    tcache_steal_end(s);
    return 1;
}

/* Reclaims the slots of client_id (of process pid only, unless pid is 0);
 * *ret_left counts those someone else held (a trimmer, verify). Returns how
 * many it reclaimed, or the first error of one it could not drain (the
 * others are still tried). */
static int reclaim_slots(struct heap *h, uint64_t client_id, uint32_t pid, int *ret_left)
{
    int n = 0, left = 0, err = 0;

    for (uint32_t i = 0, high = slot_high(h->ctl); i < high; i++) {
        struct cache_slot *s = &h->ctl->slots[i];
        int r;

        if (!slot_is_owned(s) || load_relaxed(&s->client_id) != client_id ||
            (pid && load_relaxed(&s->pid) != pid))
            continue;
        r = reclaim_slot(h, s);
        if (r > 0)
            n++;
        else if (r == 0)
            left++;
        else if (err == 0)
            err = r;
    }
    if (ret_left)
        *ret_left = left;
    return err < 0 ? err : n;
}

int heap_reclaim_client(struct heap *h, uint64_t client_id)
{
    if (!h)
        return -EINVAL;
    return reclaim_slots(h, client_id, 0, NULL);
}

/* Reclaims the cache slots of client_id held by process pid, which is
 * gone. Returns how many it could not take (held meanwhile by a trimmer
 * or verify), or a negative errno (a segment lock: reclaim_slot). */
static int reclaim_process(struct heap *h, uint64_t client_id, uint32_t pid)
{
    int left, r = reclaim_slots(h, client_id, pid, &left);

    return r < 0 ? r : left;
}

/* ---- 2. the sweep of a gone owner's objects ---- */

/* Frees every object of segment m tagged `tag`: small ones straight to
 * their slabs under the lock (no cache is involved, so the sweeper needs
 * no slot, and the free is counted in the class's `reclaimed`), large ones
 * after it (only their dead owner could free them meanwhile). */
static int
sweep_segment(struct heap *h, struct seg_map *m, uint16_t tag, struct heap_owned_reclaim *ret)
{
    uint64_t large[SWEEP_BATCH], seg_off = (uint64_t) m->index << SHM_SEG_SHIFT;
    uint32_t b = m->hdr->first_block;
    struct ctl_header *c = h->ctl;

    while (b < m->nblocks) {
        uint32_t nlarge = 0;
        int r = seg_lock(m, h);

        if (r < 0)
            return r;
        for (; b < m->nblocks && nlarge < SWEEP_BATCH; b++) {
            uint64_t w = load_relaxed(&m->meta[b]), slab_off, n = 0;
            struct slab_geometry g;
            const uint16_t *tags;
            unsigned cls;

            /* Any kind: an arena or pool chunk whose creation its owner
             * did not finish carries its tag too (run.c). */
            if (meta_state(w) == BLK_RUN && meta_owner(w) == tag) {
                large[nlarge++] = seg_off | (uint64_t) b << SHM_BLOCK_SHIFT;
                continue;
            }
            if (meta_state(w) != BLK_SLAB || (cls = meta_class(w)) >= SHM_NCLASSES)
                continue;
            sizeclass_geometry(cls, &g);
            slab_off = seg_off | (uint64_t) b << SHM_BLOCK_SHIFT;
            tags = slab_tags(h->base + slab_off, &g);
            /* relaxed: live owners write other objects' tags meanwhile.
             * A return clears the tag; the last one may release the slab,
             * whose tags then read 0 until the lock is dropped. */
            /* Counted one by one: a sweeper that dies here leaves the
             * figures right but for the object in its hands. */
            for (uint32_t i = 0; i < g.capacity; i++)
                if (load_relaxed(&tags[i]) == tag &&
                    slab_return_object_locked(h, m, slab_off + (uint64_t) i * g.size)) {
                    (void) fetch_add_relaxed(&c->rec[cls].reclaimed, 1);
                    n++;
                }
            ret->objects += n;
            ret->bytes += n * g.size;
        }
        seg_unlock(m);
        for (uint32_t i = 0; i < nlarge; i++) {
            struct seg_map *lm = m;
            uint32_t lb = (uint32_t) ((large[i] & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
            uint64_t w = load_relaxed(&lm->meta[lb]);
            uint64_t bytes = (uint64_t) meta_len(w) << SHM_BLOCK_SHIFT;

            /* Only the dead owner could change these runs meanwhile. An
             * arena or pool chunk counts as a large free (the run was
             * counted as a large allocation), not as a reclaimed object. */
            if (meta_kind(w) == RUN_ARENA) {
                if (arena_reap(h, large[i]) == 0)
                    (void) fetch_add_relaxed(&c->owned_reclaimed_large, 1);
                continue;
            }
            if (meta_kind(w) == RUN_POOL) {
                if (pool_reap(h, large[i]) > 0) /* 0: its pool keeps it */
                    (void) fetch_add_relaxed(&c->owned_reclaimed_large, 1);
                continue;
            }
            if (run_free_in(h, lm, lb, RUN_LARGE, NULL, NULL, 0) < 0)
                continue;
            (void) fetch_add_relaxed(&c->owned_reclaimed_large, 1);
            ret->objects++;
            ret->bytes += bytes;
        }
    }
    return 0;
}

static int sweep_owner(struct heap *h, uint32_t index, struct heap_owned_reclaim *ret)
{
    struct ctl_header *c = h->ctl;
    struct owner_entry *e = &c->owners[index];
    uint32_t pid = load_relaxed(&e->pid);
    int r = 0, q;

    /* A process that died attached may have died between a tag and a pop:
     * its caches go first (slot_reclaim clears the tags at their heads),
     * or the sweep would free an object still in a dead cache. Only its
     * own slots: another process may share its client id. */
    if (!os_pid_alive((pid_t) pid)) {
        /* Every one of them: objects in a cache another thread is still
         * draining carry the dead one's tag too. */
        for (unsigned tries = 0; (q = reclaim_process(h, load_relaxed(&e->client_id), pid)) != 0;
             tries++) {
            if (q < 0 || tries == 1000) {
                /* The next sweep tries again. release: pairs with owner_take's
                 * acquire of sweeper. */
                store_release(&e->sweeper, 0);
                return q < 0 ? q : -EAGAIN;
            }
            (void) usleep(1000);
        }
    }
    /* Objects in the per-CPU caches may carry its tag too (a pop aborted
     * after its tag store, a free that kept the tag): the caches are
     * emptied first, clearing the tags on the way. A CPU we cannot run on
     * may hold some: no sweep until one can (percpu.c). */
    {
        uint64_t left;

        (void) percpu_drain_all(h, &left);
        if (left) {
            store_release(&e->sweeper, 0); /* as below */
            return -EAGAIN;
        }
    }
    (void) heap_sync_segments(h);
    for (uint32_t i = 1; i < heap_nmapped(h) && r == 0; i++)
        if (heap_mapped(h, i))
            r = sweep_segment(h, &h->segs[i], (uint16_t) (index + 1), ret);
    /* Pools this owner was destroying when it went. */
    if (r == 0) {
        int n = pool_finish_destroys(h, (uint16_t) (index + 1));

        if (n > 0)
            (void) fetch_add_relaxed(&c->owned_reclaimed_large, (uint64_t) n);
        r = n < 0 ? n : 0;
    }
    if (r < 0) {
        /* Still SWEEPING with no sweeper: the next sweep takes it
         * (release: pairs with owner_take's acquire of sweeper). */
        store_release(&e->sweeper, 0);
        return r;
    }
    store_relaxed(&e->pid, 0);
    store_relaxed(&e->client_id, 0);
    store_relaxed(&e->sweeper, 0);
    /* release: the next claimer sees no object tagged with this index
     * (pairs with owned_attach's CAS of state). */
    store_release(&e->state, OWNER_FREE);
    ret->owners++;
    return 0;
}

/* Takes entry e for a sweep if `want` says so, or if its sweeper died. */
static bool
owner_take(struct owner_entry *e, bool (*want)(const struct owner_entry *, void *), void *arg)
{
    /* acquire: state pairs with owned_detach's CAS (the owner's tags come
     * with it) and sweeper with a former sweeper's release of it. */
    uint32_t st = load_acquire(&e->state), sw = load_acquire(&e->sweeper);

    /* want sees SWEEPING entries too: a sweep may refuse to take over one
     * (want_client: not one of a live process but the client's own). */
    if (st == OWNER_FREE || !load_relaxed(&e->pid) || !want(e, arg))
        return false;
    /* The sweeper word is the entry's lock: free, or held by a process
     * that died (its own pid alive: another of our threads sweeps it). */
    if (sw && os_pid_alive((pid_t) sw))
        return false;
    /* acq_rel: the owner's tag writes happen before its detach or death;
     * the CAS makes this process the only sweeper (it pairs with a former
     * sweeper's release of the word, and the CAS of state below with
     * owned_detach's). */
    if (!cas_strong_acq_rel(&e->sweeper, &sw, (uint32_t) getpid()))
        return false;
    st = load_acquire(&e->state);
    if (st == OWNER_SWEEPING)
        return true;
    if (st != OWNER_FREE && want(e, arg) && cas_strong_acq_rel(&e->state, &st, OWNER_SWEEPING))
        return true;
    /* It changed hands meanwhile. release: pairs with the next
     * owner_take's acquire of sweeper. */
    store_release(&e->sweeper, 0);
    return false;
}

static int sweep_where(struct heap *h,
                       bool (*want)(const struct owner_entry *, void *),
                       void *arg,
                       struct heap_owned_reclaim *ret)
{
    struct ctl_header *c = h->ctl;
    /* acquire: pairs with owned_attach's raise (release) of the bound. */
    uint32_t high = load_acquire(&c->owners_high);
    uint64_t objects, bytes;
    int r = 0;

    memset(ret, 0, sizeof(*ret));
    if (high > SHM_MAX_OWNERS)
        high = SHM_MAX_OWNERS;
    for (uint32_t i = 0; i < high; i++) {
        if (i == h->owner_index && h->owner_tag)
            continue; /* never our own */
        if (owner_take(&c->owners[i], want, arg)) {
            int q = sweep_owner(h, i, ret);

            if (q < 0 && r == 0)
                r = q;
        }
    }
    objects = ret->objects;
    bytes = ret->bytes;
    (void) fetch_add_relaxed(&c->owned_reclaimed_objects, objects);
    (void) fetch_add_relaxed(&c->owned_reclaimed_bytes, bytes);
    return r;
}

struct client_match {
    uint64_t client_id;
    uint32_t pid; /* the owner's record of the client's process; 0: none */
    bool process_gone;
};

/* Every word of an entry is any client's to write: the caller's record of
 * the client (its pid) decides, so a written entry cannot steer a sweep
 * onto a live client's objects. (Read once each: a local, then checks.) */
static bool want_client(const struct owner_entry *e, void *arg)
{
    const struct client_match *cm = arg;
    uint32_t pid = load_relaxed(&e->pid), st = load_relaxed(&e->state);

    if (st == OWNER_SWEEPING) /* a sweep cut short: the client's own, or a dead process's */
        return !cm->pid || pid == cm->pid || !os_pid_alive((pid_t) pid);
    return load_relaxed(&e->client_id) == cm->client_id && (!cm->pid || pid == cm->pid) &&
           (cm->process_gone || st == OWNER_DETACHED);
}

int heap_reclaim_owned_by(struct heap *h,
                          uint64_t client_id,
                          uint32_t pid,
                          bool process_gone,
                          struct heap_owned_reclaim *ret)
{
    struct client_match cm = {.client_id = client_id, .pid = pid, .process_gone = process_gone};

    if (!h || !ret)
        return -EINVAL;
    return sweep_where(h, want_client, &cm, ret);
}

int heap_reclaim_owned(struct heap *h,
                       uint64_t client_id,
                       bool process_gone,
                       struct heap_owned_reclaim *ret)
{
    struct client_match cm = {.client_id = client_id, .process_gone = process_gone};

    if (!h || !ret)
        return -EINVAL;
    return sweep_where(h, want_client, &cm, ret);
}

static bool want_gone(const struct owner_entry *e, void *arg)
{
    uint32_t st = load_relaxed(&e->state);

    (void) arg;
    return st == OWNER_SWEEPING || st == OWNER_DETACHED ||
           !os_pid_alive((pid_t) load_relaxed(&e->pid));
}

int heap_reclaim_owned_gone(struct heap *h, struct heap_owned_reclaim *ret)
{
    if (!h || !ret)
        return -EINVAL;
    return sweep_where(h, want_gone, NULL, ret);
}

/* ---- 3. BUSY blocks and punches of the dead ---- */

void reclaim_busy(struct heap *h, struct seg_map *m)
{
    uint32_t pids[16], npids = 0, dead[16], ndead = 0;

    /* Which pids hold BUSY blocks is read under the lock, whether they
     * live is asked without it (a system call), and only then are the
     * blocks of the dead ones freed, under the lock again. A lost race
     * costs nothing: a BUSY block of a live pid is left alone. */
    if (seg_lock(m, h) < 0)
        return;
    for (uint32_t b = m->hdr->first_block; b < m->nblocks && npids < 16; b++) {
        uint64_t w = seg_meta_get(m, b);
        uint32_t pid = meta_busy_pid(w), k;

        if (meta_state(w) != BLK_BUSY)
            continue;
        for (k = 0; k < npids && pids[k] != pid; k++)
            ;
        if (k == npids)
            pids[npids++] = pid;
    }
    if (m->hdr->punch_pid && npids < 16)
        pids[npids++] = m->hdr->punch_pid;
    seg_unlock(m);
    for (uint32_t k = 0; k < npids; k++)
        if (!os_pid_alive((pid_t) pids[k]))
            dead[ndead++] = pids[k];
    if (ndead == 0 || seg_lock(m, h) < 0)
        return;
    for (uint32_t k = 0; k < ndead; k++)
        if (m->hdr->punch_pid == dead[k])
            punch_restore(m); /* a puncher died outside the lock */
    for (uint32_t b = m->hdr->first_block; b < m->nblocks; b++) {
        uint64_t w = seg_meta_get(m, b);
        uint32_t pid = meta_busy_pid(w), k;

        if (meta_state(w) != BLK_BUSY)
            continue;
        for (k = 0; k < ndead && dead[k] != pid; k++)
            ;
        if (k == ndead)
            continue;
        /* The decommitter died between its punch and its relock: the unit
         * may or may not be punched; count it uncommitted. */
        commit_mark_unit(m, ((uint64_t) b << SHM_BLOCK_SHIFT) >> m->unit_shift, false);
        seg_blocks_release(m, b, 1);
    }
    seg_unlock(m);
}

void reclaim_busy_all(struct heap *h)
{
    for (uint32_t i = 1; i < heap_nmapped(h); i++)
        if (heap_mapped(h, i))
            reclaim_busy(h, &h->segs[i]);
}

int heap_reclaim_dead(struct heap *h)
{
    struct heap_owned_reclaim owned;
    int n = 0;

    if (!h)
        return -EINVAL;
    for (uint32_t i = 0, high = slot_high(h->ctl); i < high; i++) {
        struct cache_slot *s = &h->ctl->slots[i];

        /* One a lock keeps back stays for a later trim or reclaim. */
        if (slot_is_owned(s) && !os_pid_alive((pid_t) load_relaxed(&s->pid)) &&
            reclaim_slot(h, s) > 0)
            n++;
    }
    /* After the slots: see sweep_owner(). */
    (void) heap_reclaim_owned_gone(h, &owned);
    reclaim_busy_all(h);
    return n;
}
