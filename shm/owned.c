/* Owners: freeing what a process allocated and never shared.
 *
 * Each attachment claims an entry in the control segment's owner table and
 * writes its tag (index + 1) into every small object its malloc hands out
 * (a u16 per object at the end of the slab) and into the metadata word of
 * every large one. heap_to_off() clears it: an offset is the only way an
 * object reaches another process, so an object whose tag is still set,
 * outside its owner's caches, has never left its owner. A freed object
 * keeps the tag in its freer's cache and loses it on the way out (to the
 * recycler or its slab; see internal.h). When the owner is gone (its
 * process exited, or it detached: its mapping is gone), reclaim.c drains
 * its caches to the slabs, then sweeps the segments for its tag and returns
 * those objects to their slabs, so bytes in use fall back to what the
 * survivors hold.
 *
 * This file: finding an object's tag, sharing an object, and an
 * attachment's owner entry (claimed at attach, DETACHED at detach). The
 * entry's life: FREE -> LIVE (owned_attach) -> DETACHED (owned_detach) or
 * its process dies -> SWEEPING (a sweeper took it) -> FREE (reclaim.c). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

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
    if (off - slab_off >= sizeclass_info[cls].span)
        return NULL; /* the slab's tags or bitmap */
    return slab_obj_tag(h, slab_off, off - slab_off, cls);
}

/* Clears the owner of the object containing off (a small object's or a
 * large one's): it is shared now. */
static void owned_share(struct heap *h, uint64_t off)
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
        (void) run_share_in(h, m, b);
}

void owned_attach(struct heap *h)
{
    struct ctl_header *c = h->ctl;

    h->owner_tag = 0;
    for (uint32_t i = 0; i < SHM_MAX_OWNERS; i++) {
        struct owner_entry *e = &c->owners[i];
        uint32_t expected = OWNER_FREE;

        /* acq_rel: acquire pairs with the last sweeper's release of FREE
         * (no object carries this tag any more); the CAS makes it ours. */
        if (load_relaxed(&e->state) != OWNER_FREE ||
            !cas_strong_acq_rel(&e->state, &expected, OWNER_LIVE))
            continue;
        /* A reclaimer matches client_id and pid, which are 0 until here
         * (a freed entry is zeroed before its state): it skips us. */
        store_relaxed(&e->client_id, h->client_id);
        store_relaxed(&e->pid, (uint32_t) h->pid);
        /* release: a reader that loads the new bound sees this claim
         * (pairs with the acquire of owners_high in reclaim.c, quota.c). */
        (void) raise_max32_release(&c->owners_high, i + 1);
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
    /* acq_rel: the sweeper that sees DETACHED sees every tag we wrote
     * (pairs with the acquire of state in reclaim.c's owner_take). */
    (void) cas_strong_acq_rel(&h->ctl->owners[h->owner_index].state, &expected, OWNER_DETACHED);
}

uint32_t heap_client_owners(struct heap *h, uint64_t client_id)
{
    struct ctl_header *c;
    uint32_t n = 0, high;

    if (!h || client_id == 0)
        return 0;
    c = h->ctl;
    /* acquire: pairs with owned_attach's release of owners_high, so every
     * entry claimed below the bound is seen with its client_id. Entries are
     * untrusted: a wrong count only keeps or drops a record of the daemon's. */
    high = load_acquire(&c->owners_high);
    for (uint32_t i = 0; i < high && i < SHM_MAX_OWNERS; i++)
        if (load_relaxed(&c->owners[i].state) != OWNER_FREE &&
            load_relaxed(&c->owners[i].client_id) == client_id)
            n++;
    return n;
}

uint64_t heap_to_off(struct heap *h, const void *p)
{
    if (!p || !heap_contains(h, p))
        return 0;
    /* An offset is how an object leaves its process: from now on it may be
     * anyone's, and its owner's death must not free it. */
    owned_share(h, ptr_off(h, p));
    return ptr_off(h, p);
}
