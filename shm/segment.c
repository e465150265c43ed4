/* A heap segment: its layout and format, its lock (lock.c), its block states
 * and the journal that lets the next holder finish a dead holder's work.
 * What happens inside the blocks lives beside this file: slabs (slab.c),
 * the punch of free pages inside slabs (punch.c), commit and decommit
 * (commit.c), runs (run.c), BUSY blocks of the dead (reclaim.c).
 *
 * Layout of a segment (offsets from its start, all in the header):
 *   [seg_header][meta: u64 per block][free tree][class trees x NCLASSES]
 *   [commit map: 1 bit per unit] ... padding to first_block ... [blocks]
 *
 * Invariants (each holds whenever the lock is free; heap_verify checks them):
 *   free tree bit b == (meta_state(b) == BLK_FREE)
 *   free_blocks     == popcount(free tree)
 *   large_bytes     == sum of the lengths of the RUN_LARGE runs, in bytes
 *   journal.op      == JOP_NONE, journal.n == 0
 *   every block below first_block is BLK_RESERVED and committed
 *
 * Who writes what: every metadata word, tree, slab bitmap and the commit
 * map change only under hdr->lock. Lock-free readers (the free fast path
 * reading a meta word, stats) take relaxed snapshots.
 *
 * Dead holders: the lock (lock.c) tells the next holder. Before a holder changes state
 * it writes what it is doing into hdr->journal; the next holder, told
 * EOWNERDEAD, replays the journal (seg_recover) and rebuilds the derived
 * state (nfree, trees) from the ground truth (meta states and slab
 * bitmaps) with seg_repair. The journal's rules:
 *   JOP_TAKE    each object is linked into journal.chain BEFORE its free bit
 *               is cleared, so replay (set the bits of the chain again) is
 *               idempotent. If journal.slot_word names a cache bin whose
 *               head equals the chain, the chain was delivered: nothing to
 *               undo. (slab.c)
 *   JOP_RETURN  objects come from a handoff word (a cache slot's, named by
 *               journal.slot_word, or the caller's own). An object's free bit
 *               is set BEFORE journal.chain and the handoff move past it;
 *               replay returns what is left of this segment's objects and
 *               leaves the handoff at the first object of another segment,
 *               for whoever continues (the reclaimer of a dead slot). (slab.c)
 *   carve/free  journal.block/n name blocks whose state was changing; they
 *               become FREE again (a carve had handed nothing out yet).
 *   punch       the punch record (punch.c) is undone by punch_recover().
 * Blocks being decommitted are BLK_BUSY outside the lock (commit.c); a
 * decommitter that dies leaves them so, and reclaim.c frees them.
 *
 * No system call is made while the lock is held: commit (fallocate on
 * hugetlb) happens between an unlock and a relock (commit.c).
 *
 * Lock order: a segment lock is never held while taking another segment's
 * lock or the control segment's lock.
 *
 * The one circle among shm/'s files is here, on purpose: slab.c, punch.c
 * and commit.c take this lock, and taking it after a holder died replays
 * the dead holder's journal, whose steps belong to slab.c (a take or a
 * return) and punch.c (a reservation or a restore). */
#include <errno.h>
#include <string.h>

#include "shm/internal.h"
#include "shm/os.h"

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static unsigned log2_u64(uint64_t v)
{
    return 63u - (unsigned) __builtin_clzll(v);
}

struct bittree_chain *seg_free_tree(struct seg_map *m)
{
    return (struct bittree_chain *) (m->base + m->hdr->free_tree_off);
}

struct bittree_chain *seg_class_tree(struct seg_map *m, unsigned cls)
{
    return (struct bittree_chain *) (m->base + m->hdr->class_tree_off +
                                     cls * m->hdr->class_tree_stride);
}

uint64_t *seg_commit_map(struct seg_map *m)
{
    return (uint64_t *) (m->base + m->hdr->commit_map_off);
}

/* Fills in the header's geometry: where the metadata goes, how much of the
 * segment it takes. */
static int seg_layout(struct seg_header *hdr, uint64_t size, uint32_t page_size)
{
    uint64_t nblocks = size >> SHM_BLOCK_SHIFT, off, chain, nunits;
    unsigned unit_shift = page_size > SHM_BLOCK_SIZE ? log2_u64(page_size) : SHM_BLOCK_SHIFT;

    if (size % SHM_BLOCK_SIZE || size > SHM_SEG_SPAN || nblocks > BITTREE_MAX_BITS)
        return -EINVAL;
    memset(hdr, 0, sizeof(*hdr));
    hdr->size = size;
    hdr->page_size = page_size;
    hdr->unit_shift = unit_shift;
    hdr->nblocks = (uint32_t) nblocks;
    off = SHM_META_OFF;
    hdr->meta_off = off;
    off = align_up(off + nblocks * 8, 64);
    chain = align_up(bittree_chain_size((uint32_t) nblocks), 64);
    hdr->free_tree_off = off;
    off += chain;
    hdr->class_tree_off = off;
    hdr->class_tree_stride = chain;
    off += chain * SHM_NCLASSES;
    hdr->commit_map_off = off;
    nunits = size >> unit_shift;
    off = align_up(off + (nunits + 63) / 64 * 8, 64);
    hdr->meta_end = off;
    hdr->first_block = (uint32_t) (align_up(off, SHM_BLOCK_SIZE) >> SHM_BLOCK_SHIFT);
    if (hdr->first_block >= nblocks)
        return -EINVAL;
    return 0;
}

int seg_metadata_bytes(uint64_t size, uint32_t page_size, uint64_t *ret_bytes)
{
    struct seg_header hdr;
    int r = seg_layout(&hdr, size, page_size);

    if (r < 0)
        return r;
    *ret_bytes = hdr.meta_end;
    return 0;
}

int seg_format(void *base, int fd, uint32_t index, uint64_t size, uint32_t page_size)
{
    struct seg_header *hdr = base;
    uint64_t nblocks = size >> SHM_BLOCK_SHIFT;
    unsigned unit_shift;
    struct seg_map m;
    int r;

    r = seg_layout(hdr, size, page_size);
    if (r < 0)
        return r;
    unit_shift = hdr->unit_shift;
    hdr->index = index;

    shlock_init(&hdr->lock);

    seg_map_init(&m, base, fd, index);
    bittree_chain_init(seg_free_tree(&m), (uint32_t) nblocks, false);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        bittree_chain_init(seg_class_tree(&m, c), (uint32_t) nblocks, false);
    for (uint64_t b = 0; b < nblocks; b++) {
        if (b < hdr->first_block) {
            m.meta[b] = meta_make(BLK_RESERVED, 0, 0, 0, RUN_LARGE);
        } else {
            m.meta[b] = meta_make(BLK_FREE, 0, 0, 0, RUN_LARGE);
            bittree_set(seg_free_tree(&m), (uint32_t) b);
        }
    }
    hdr->free_blocks = nblocks - hdr->first_block;
    /* The units holding the header and metadata are committed for good. */
    for (uint64_t u = 0; u < (align_up(hdr->meta_end, UINT64_C(1) << unit_shift) >> unit_shift);
         u++) {
        seg_commit_map(&m)[u / 64] |= UINT64_C(1) << (u % 64);
        hdr->committed_units++;
    }
    hdr->version = SHM_LAYOUT_VERSION;
    /* release: the magic is the last word written; an attacher that sees it
     * (after the fd reached it through a socket or fork) sees the rest
     * (pairs with the acquire in seg_check_header). */
    store_release(&hdr->magic, SHM_SEG_MAGIC);
    return 0;
}

int seg_check_header(const struct seg_header *hdr, uint32_t index, uint64_t size)
{
    /* acquire: pairs with seg_format's release of the magic. */
    if (load_acquire(&hdr->magic) != SHM_SEG_MAGIC)
        return -EBADF;
    if (hdr->version != SHM_LAYOUT_VERSION)
        return -EPROTO;
    if (hdr->meta_off != SHM_META_OFF)
        return -EBADMSG;
    if (hdr->index != index || hdr->size != size || hdr->size > SHM_SEG_SPAN ||
        hdr->nblocks != size >> SHM_BLOCK_SHIFT || hdr->meta_end > size ||
        hdr->first_block >= hdr->nblocks)
        return -EBADMSG;
    return 0;
}

void seg_map_init(struct seg_map *m, void *base, int fd, uint32_t index)
{
    struct seg_header *hdr = base;

    memset(m, 0, sizeof(*m));
    m->hdr = hdr;
    m->base = base;
    m->size = hdr->size;
    m->nblocks = hdr->nblocks;
    m->index = index;
    m->page_size = hdr->page_size;
    m->unit_shift = hdr->unit_shift;
    m->fd = fd;
    m->needs_commit = hdr->page_size > 4096;
    m->meta = (uint64_t *) (m->base + hdr->meta_off);
}

/* ---- block states, under the lock ---- */

/* Finds n consecutive FREE blocks, the first a multiple of align. */
int64_t seg_find_run(struct seg_map *m, uint32_t n, uint32_t align)
{
    struct bittree_chain *t = seg_free_tree(m);
    int64_t b = bittree_find_first(t);

    while (b >= 0) {
        uint32_t start = (uint32_t) align_up((uint64_t) b, align), i;

        if ((uint64_t) start + n > m->nblocks)
            return -1;
        for (i = 0; i < n; i++)
            if (!bittree_test(t, start + i))
                break;
        if (i == n)
            return start;
        b = bittree_find_next(t, start + i + 1 < m->nblocks ? start + i + 1 : start + i);
        if (b >= 0 && (uint32_t) b <= start + i)
            return -1;
    }
    return -1;
}

/* Marks [b, b+n) as a slab of cls or a run of kind; the journal names the
 * blocks until the caller clears journal.n. */
void seg_blocks_claim(struct seg_map *m, uint32_t b, uint64_t head)
{
    struct seg_header *hdr = m->hdr;
    uint32_t n = meta_len(head);
    enum blk_state tail = meta_state(head) == BLK_SLAB ? BLK_SLAB_TAIL : BLK_RUN_TAIL;

    store_relaxed(&hdr->journal.block, b);
    store_relaxed(&hdr->journal.n, n);
    bittree_clear_range(seg_free_tree(m), b, n);
    store_relaxed(&hdr->free_blocks, hdr->free_blocks - n);
    for (uint32_t i = 1; i < n; i++)
        seg_meta_put(m, b + i, meta_make(tail, meta_class(head), 0, i, meta_kind(head)));
    seg_meta_put(m, b, head);
}

void seg_blocks_release(struct seg_map *m, uint32_t b, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        seg_meta_put(m, b + i, meta_make(BLK_FREE, 0, 0, 0, RUN_LARGE));
    bittree_set_range(seg_free_tree(m), b, n);
    store_relaxed(&m->hdr->free_blocks, m->hdr->free_blocks + n);
}

/* ---- recovery ---- */

void seg_repair(struct seg_map *m)
{
    struct seg_header *hdr = m->hdr;
    uint64_t large = 0, units = 0;

    /* A holder killed inside commit_mark_unit() set or cleared the map's
     * bit but not the count: the map is the truth. */
    for (uint64_t u = 0; u < m->size >> m->unit_shift; u++)
        units += commit_unit_is_set(m, u);
    store_relaxed(&hdr->committed_units, units);

    bittree_chain_init(seg_free_tree(m), m->nblocks, false);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        bittree_chain_init(seg_class_tree(m, c), m->nblocks, false);
    for (uint32_t b = hdr->first_block; b < m->nblocks; b++) {
        uint64_t w = seg_meta_get(m, b);
        struct slab_geometry g;
        unsigned nfree = 0;

        switch (meta_state(w)) {
        case BLK_FREE:
            bittree_set(seg_free_tree(m), b);
            break;
        case BLK_SLAB:
            if (meta_class(w) >= SHM_NCLASSES)
                break;
            sizeclass_geometry(meta_class(w), &g);
            for (uint32_t i = 0; i < g.bitmap_words; i++)
                nfree += (unsigned) __builtin_popcountll(slab_bitmap(m, b, &g)[i]);
            if (nfree > g.capacity)
                nfree = g.capacity;
            seg_meta_put(m, b, meta_with_nfree(w, nfree));
            if (nfree == g.capacity)
                seg_blocks_release(m, b, g.blocks);
            else if (nfree > 0)
                bittree_set(seg_class_tree(m, meta_class(w)), b);
            break;
        case BLK_RUN:
            if (meta_kind(w) == RUN_LARGE)
                large += (uint64_t) meta_len(w) << SHM_BLOCK_SHIFT;
            break;
        default:
            break;
        }
    }
    store_relaxed(&hdr->large_bytes, large);
    /* BUSY blocks stay out of the tree: reclaim_busy() frees those of dead
     * decommitters, asking about the pid without the lock. The free tree
     * is the truth now: count it. */
    store_relaxed(&hdr->free_blocks, bittree_count(seg_free_tree(m)));
}

static void seg_recover(struct seg_map *m, struct heap *h)
{
    struct seg_header *hdr = m->hdr;
    struct seg_journal *j = &hdr->journal;
    /* The journal is in memory any client can write: each field is read
     * once, into a local, checked, and only the local used (a re-read after
     * the check could be another value). A slot word must lie in the
     * control segment's writable part: the header page below it is mapped
     * read-only, and a store there would kill the recovering process. */
    uint32_t block = load_relaxed(&j->block), n = load_relaxed(&j->n);
    uint32_t op = load_relaxed(&j->op);
    uint64_t chain = load_relaxed(&j->chain), slot_word = load_relaxed(&j->slot_word);
    uint64_t ctl_size = h->ctl->ctl_size; /* the header page's: only the owner writes it */
    bool slot_ok = slot_word >= SHM_HEADER_PAGE && slot_word < ctl_size;

    /* A run's claim or free cut short: its counts (run.c). */
    run_recover(h, m);
    /* A carve or run free cut short: its blocks become free again. */
    if (n && block < m->nblocks && block >= hdr->first_block &&
        (uint64_t) block + n <= m->nblocks) {
        for (uint32_t i = 0; i < n; i++)
            seg_meta_put(m, block + i, meta_make(BLK_FREE, 0, 0, 0, RUN_LARGE));
    }
    /* A punch it was reserving or restoring under the lock. */
    punch_recover(m);
    /* The dead holder's free counts may lag its bitmaps (a take counts
     * after a slab's loop): recount them before the replay adds to them,
     * or a slab could look empty while objects in it are in use. */
    seg_repair(m);
    if (op == JOP_TAKE && chain) {
        struct cache_bin *bin = NULL;

        if (slot_ok && !(slot_word & 63) && slot_word + sizeof(*bin) <= ctl_size)
            bin = (struct cache_bin *) off_ptr(h, slot_word);
        /* Not delivered to the bin: put the objects back in their slabs
         * (all in this segment: a take never leaves it). */
        if (!bin || bin_off(load_relaxed(&bin->head)) != chain)
            slab_return_chain_locked(h, m, &chain, true);
    } else if (op == JOP_RETURN) {
        uint64_t local = chain, *handoff = &local;

        /* The journal is ahead of the handoff word by at most one object
         * (slab_return_chain_locked): it is the truth; the handoff follows,
         * also when the journal has passed the last object (chain 0) and
         * the handoff still names it, returned already: left there, the
         * slot's reclaim would return it twice (FAULT_RETURN_LAST_NOTED). */
        if (slot_ok && !(slot_word & 7) && slot_word + 8 <= ctl_size) {
            handoff = (uint64_t *) off_ptr(h, slot_word);
            store_relaxed(handoff, chain);
        }
        if (chain)
            slab_return_chain_locked(h, m, handoff, true);
    }
    memset(j, 0, sizeof(*j));
    seg_repair(m);
}

/* The daemon's lock: bounded, and what it repaired is counted for its
 * verify and log (library code does not log). */
static int seg_lock_guarded(struct seg_map *m, struct heap *h)
{
    struct shlock_note n;
    uint32_t wait_ms = h->lock_wait_ms, stuck = load_relaxed(&m->stuck_word);
    int r;

    /* Still the word a wait timed out on: the same holder has it (or the
     * same written word is there), so one try, not another full wait: a
     * job that takes the lock many times must not wait for each. */
    if (stuck && shlock_word(&m->hdr->lock) == stuck)
        wait_ms = 0;
    r = shlock_lock_until(&m->hdr->lock, wait_ms, &n);
    store_relaxed(&m->stuck_word, r == ETIMEDOUT ? n.word : 0);
    heap_lock_note(h, m->index, &n, r);
    return r;
}

void heap_lock_note(struct heap *h, uint32_t seg, const struct shlock_note *n, int r)
{
    struct heap_lock_report *rep = &h->lock_report;
    bool failed = r != 0 && r != EOWNERDEAD;

    if (n->dead_tid) {
        store_relaxed(&rep->last_tid, n->dead_tid);
        (void) fetch_add_relaxed(&rep->dead_words, 1);
    }
    if (n->own_word)
        (void) fetch_add_relaxed(&rep->own_words, 1);
    if (r == EOWNERDEAD && !n->dead_tid && !n->own_word) /* the others are reported above */
        (void) fetch_add_relaxed(&rep->recovered, 1);
    if (failed)
        (void) fetch_add_relaxed(&rep->timeouts, 1);
    if (n->dead_tid || n->own_word || failed || r == EOWNERDEAD)
        store_relaxed(&rep->last_seg, seg);
}

void heap_guard_locks(struct heap *h, uint32_t wait_ms)
{
    h->lock_wait_ms = wait_ms;
}

void heap_lock_report(struct heap *h, struct heap_lock_report *ret)
{
    const struct heap_lock_report *rep = &h->lock_report;

    ret->dead_words = load_relaxed(&rep->dead_words);
    ret->own_words = load_relaxed(&rep->own_words);
    ret->foreign_unlocks = 0;
    for (uint32_t i = 1; i < heap_nmapped(h); i++)
        ret->foreign_unlocks += load_relaxed(&h->segs[i].foreign_unlocks);
    ret->timeouts = load_relaxed(&rep->timeouts);
    ret->recovered = load_relaxed(&rep->recovered);
    ret->last_tid = load_relaxed(&rep->last_tid);
    ret->last_seg = load_relaxed(&rep->last_seg);
}

int seg_lock(struct seg_map *m, struct heap *h)
{
    int r = h->lock_wait_ms ? seg_lock_guarded(m, h) : shlock_lock(&m->hdr->lock);

    if (r == EOWNERDEAD) {
        seg_recover(m, h);
        r = 0;
    }
    return -r;
}

void seg_unlock(struct seg_map *m)
{
    /* A word that is not ours any more was written while we held the
     * lock: counted for the daemon's report; the next locker deals with
     * the word (lock.c). */
    if (shlock_unlock(&m->hdr->lock) < 0)
        (void) fetch_add_relaxed(&m->foreign_unlocks, 1);
}

int seg_recover_all(struct heap *h)
{
    int r = 0;

    /* The control lock too: a dead client's word is recovered now rather
     * than by a locker that comes when its TID may name another thread
     * (lock.c). */
    if (ctl_lock_for(h) == 0)
        ctl_unlock(h->ctl);
    (void) heap_sync_segments(h);
    for (uint32_t i = 1; i < heap_nmapped(h); i++) {
        int q;

        if (!heap_mapped(h, i))
            continue;
        q = seg_lock(&h->segs[i], h);
        if (q == 0)
            seg_unlock(&h->segs[i]);
        else if (r == 0)
            r = q;
    }
    return r;
}
