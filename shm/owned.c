/* Owners: freeing what a process allocated and never shared.
 *
 * Each attachment claims an entry in the control segment's owner table and
 * writes its tag (index + 1) into every small object its malloc hands out
 * (a u16 per object at the end of the slab) and into the metadata word of
 * every large one. heap_to_off() clears it: an offset is the only way an
 * object reaches another process, so an object whose tag is still set,
 * outside its owner's caches, has never left its owner. A freed object
 * keeps the tag in its freer's cache and loses it on the way out (to the
 * recycler or its slab; see internal.h). When the owner is gone
 * (its process exited, or it detached: its mapping is gone), the reclaimer
 * drains its caches to the slabs, then sweeps the segments for its tag and returns those objects to their
 * slabs, so bytes in use fall back to what the survivors hold.
 *
 * A sweep reads tags under the segment lock, so a slab cannot change class
 * under it, and returns each object it finds there and then. Only the
 * process whose pid is in the entry's `sweeper` word sweeps it, so no
 * object is freed twice; a sweeper that dies leaves its pid there, and the
 * next sweep takes over (what the dead one freed has no tag any more). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

/* Large objects collected under the lock, freed after it. */
#define SWEEP_BATCH 256u

uint16_t *obj_tag_multi(struct heap *h, uint64_t off, unsigned cls)
{
    uint64_t *meta = (uint64_t *) (h->base + (off & ~SHM_OFF_MASK) + SHM_META_OFF);
    uint64_t b = (off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT, w = load_relaxed(&meta[b]);
    uint64_t slab_off;

    /* relaxed: the object is live or in our cache, so its slab cannot
     * change (see meta.h). */
    if (meta_state(w) == BLK_SLAB_TAIL)
        b -= meta_len(w);
    slab_off = (off & ~SHM_OFF_MASK) | b << SHM_BLOCK_SHIFT;
    return slab_obj_tag(h, slab_off, off - slab_off, cls);
}

/* The tag of the object containing off, checked against the metadata (off
 * may come from anywhere); NULL if off is not inside a slab's object. */
static uint16_t *obj_tag_checked(
        struct heap *h, uint64_t off, struct seg_map **ret_m, uint32_t *ret_b, uint64_t *ret_w)
{
    struct seg_map *m = heap_seg_for(h, off);
    uint64_t w, slab_off;
    uint32_t b;
    unsigned cls;

    if (!m)
        return NULL;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    if (b < m->hdr->first_block || b >= m->nblocks)
        return NULL;
    w = load_relaxed(&m->meta[b]);
    if (meta_state(w) == BLK_SLAB_TAIL || meta_state(w) == BLK_RUN_TAIL) {
        if (meta_len(w) > b)
            return NULL;
        b -= meta_len(w);
        w = load_relaxed(&m->meta[b]);
    }
    *ret_m = m;
    *ret_b = b;
    *ret_w = w;
    if (meta_state(w) != BLK_SLAB || (cls = meta_class(w)) >= SHM_NCLASSES)
        return NULL;
    slab_off = (off & ~SHM_OFF_MASK) | (uint64_t) b << SHM_BLOCK_SHIFT;
    if (off - slab_off >= sizeclass_checks[cls].span)
        return NULL; /* the slab's tags or bitmap */
    return slab_obj_tag(h, slab_off, off - slab_off, cls);
}

void owned_share(struct heap *h, uint64_t off)
{
    struct seg_map *m = NULL;
    uint64_t w = 0;
    uint32_t b = 0;
    uint16_t *tag = obj_tag_checked(h, off, &m, &b, &w);

    /* A load first: sharing an object twice writes nothing. */
    if (tag) {
        if (load_relaxed(tag))
            store_relaxed(tag, (uint16_t) 0);
        return;
    }
    if (m && meta_state(w) == BLK_RUN && meta_kind(w) == RUN_LARGE && meta_owner(w))
        (void) seg_share_run(h, m, b);
}

void owned_attach(struct heap *h)
{
    struct ctl_header *c = h->ctl;

    h->owner_tag = 0;
    for (uint32_t i = 0; i < SHM_MAX_OWNERS; i++) {
        struct owner_entry *e = &c->owners[i];
        uint32_t expected = OWNER_FREE;
        uint32_t high;

        /* acq_rel: acquire pairs with the last sweeper's release of FREE
         * (no object carries this tag any more); the CAS makes it ours. */
        if (load_relaxed(&e->state) != OWNER_FREE ||
            !cas_strong_acq_rel(&e->state, &expected, OWNER_LIVE))
            continue;
        /* A reclaimer matches client_id and pid, which are 0 until here
         * (a freed entry is zeroed before its state): it skips us. */
        store_relaxed(&e->client_id, h->client_id);
        store_relaxed(&e->pid, (uint32_t) h->pid);
        high = load_relaxed(&c->owners_high);
        /* release: a reader that loads the new bound sees this claim. */
        while (i + 1 > high && !__atomic_compare_exchange_n(&c->owners_high, &high, i + 1, true,
                                                            __ATOMIC_RELEASE, __ATOMIC_RELAXED))
            ;
        h->owner_index = i;
        h->owner_tag = (uint16_t) (i + 1);
        return;
    }
    /* The table is full: this attachment's objects are not tracked (a
     * death leaves them allocated, as before owners existed). */
    (void) fetch_add_relaxed(&c->untracked_attaches, 1);
}

void owned_detach(struct heap *h)
{
    uint32_t expected = OWNER_LIVE;

    if (!h->owner_tag)
        return;
    /* acq_rel: the sweeper that sees DETACHED sees every tag we wrote. */
    (void) cas_strong_acq_rel(&h->ctl->owners[h->owner_index].state, &expected, OWNER_DETACHED);
}

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

            if (meta_state(w) == BLK_RUN && meta_kind(w) == RUN_LARGE && meta_owner(w) == tag) {
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
                    seg_return_object_locked(h, m, slab_off + (uint64_t) i * g.size)) {
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
            uint64_t bytes = (uint64_t) meta_len(load_relaxed(&lm->meta[lb])) << SHM_BLOCK_SHIFT;

            if (seg_free_run(h, lm, lb, RUN_LARGE, NULL) < 0)
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
    int r = 0;

    /* A process that died attached may have died between a tag and a pop:
     * its caches go first (slot_reclaim clears the tags at their heads),
     * or the sweep would free an object still in a dead cache. Only its
     * own slots: another process may share its client id. */
    if (!os_pid_alive((pid_t) pid)) {
        /* Every one of them: objects in a cache another thread is still
         * draining carry the dead one's tag too. */
        for (unsigned tries = 0; tcache_reclaim_process(h, load_relaxed(&e->client_id), pid);
             tries++) {
            if (tries == 1000) {
                store_release(&e->sweeper, 0); /* the next sweep tries again */
                return -EAGAIN;
            }
            (void) usleep(1000);
        }
    }
    (void) heap_sync_segments(h);
    for (uint32_t i = 1; i < load_acquire(&h->nmapped) && r == 0; i++)
        if (load_acquire(&h->segs[i].meta))
            r = sweep_segment(h, &h->segs[i], (uint16_t) (index + 1), ret);
    if (r < 0) {
        /* Still SWEEPING with no sweeper: the next sweep takes it. */
        store_release(&e->sweeper, 0);
        return r;
    }
    store_relaxed(&e->pid, 0);
    store_relaxed(&e->client_id, 0);
    store_relaxed(&e->sweeper, 0);
    /* release: the next claimer sees no object tagged with this index. */
    store_release(&e->state, OWNER_FREE);
    ret->owners++;
    return 0;
}

/* Takes entry e for a sweep if `want` says so, or if its sweeper died. */
static bool owner_take(struct owner_entry *e, bool (*want)(const struct owner_entry *, void *),
                       void *arg)
{
    uint32_t st = load_acquire(&e->state), sw = load_acquire(&e->sweeper);

    if (st == OWNER_FREE || !load_relaxed(&e->pid) || (st != OWNER_SWEEPING && !want(e, arg)))
        return false;
    /* The sweeper word is the entry's lock: free, or held by a process
     * that died (its own pid alive: another of our threads sweeps it). */
    if (sw && os_pid_alive((pid_t) sw))
        return false;
    /* acq_rel: the owner's tag writes happen before its detach or death;
     * the CAS makes this process the only sweeper. */
    if (!cas_strong_acq_rel(&e->sweeper, &sw, (uint32_t) getpid()))
        return false;
    st = load_acquire(&e->state);
    if (st == OWNER_SWEEPING)
        return true;
    if (st != OWNER_FREE && want(e, arg) && cas_strong_acq_rel(&e->state, &st, OWNER_SWEEPING))
        return true;
    store_release(&e->sweeper, 0); /* it changed hands meanwhile */
    return false;
}

static int sweep_where(struct heap *h, bool (*want)(const struct owner_entry *, void *), void *arg,
                       struct heap_owned_reclaim *ret)
{
    struct ctl_header *c = h->ctl;
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
    bool process_gone;
};

static bool want_client(const struct owner_entry *e, void *arg)
{
    const struct client_match *cm = arg;

    return load_relaxed(&e->client_id) == cm->client_id &&
           (cm->process_gone || load_relaxed(&e->state) == OWNER_DETACHED);
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
    (void) arg;
    return load_relaxed(&e->state) == OWNER_DETACHED ||
           !os_pid_alive((pid_t) load_relaxed(&e->pid));
}

int heap_reclaim_owned_gone(struct heap *h, struct heap_owned_reclaim *ret)
{
    if (!h || !ret)
        return -EINVAL;
    return sweep_where(h, want_gone, NULL, ret);
}
