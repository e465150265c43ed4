/* A heap segment's blocks: slabs, runs, commit and decommit, all under the
 * segment's robust lock.
 *
 * Layout of a segment (offsets from its start, all in the header):
 *   [seg_header][meta: u64 per block][free tree][class trees x NCLASSES]
 *   [commit map: 1 bit per unit] ... padding to first_block ... [blocks]
 *
 * Who writes what: every metadata word, tree, slab bitmap and the commit
 * map change only under hdr->lock. Lock-free readers (the free fast path
 * reading a meta word, stats) take relaxed snapshots.
 *
 * Dead holders: the lock is a robust mutex. Before a holder changes state
 * it writes what it is doing into hdr->journal; the next holder, told
 * EOWNERDEAD, replays the journal (seg_recover) and rebuilds the derived
 * state (nfree, trees) from the ground truth (meta states and slab
 * bitmaps) with seg_repair. The journal's rules:
 *   JOP_TAKE    each object is linked into journal.chain BEFORE its free bit
 *               is cleared, so replay (set the bits of the chain again) is
 *               idempotent. If journal.slot_word names a cache bin whose
 *               head equals the chain, the chain was delivered: nothing to
 *               undo.
 *   JOP_RETURN  objects come from a handoff word (a cache slot's, named by
 *               journal.slot_word, or the caller's own). An object's free bit
 *               is set BEFORE journal.chain and the handoff move past it;
 *               replay returns what is left of this segment's objects and
 *               leaves the handoff at the first object of another segment,
 *               for whoever continues (the reclaimer of a dead slot).
 *   carve/free  journal.block/n name blocks whose state was changing; they
 *               become FREE again (a carve had handed nothing out yet).
 * Blocks being decommitted are BLK_BUSY outside the lock (the punch is a
 * system call, never made under it) and carry the decommitter's pid;
 * seg_reap_busy() (trim, reclaim, verify) frees those whose process is
 * gone, checking the pids between two holds of the lock.
 *
 * No system call is made while the lock is held: commit (fallocate on
 * hugetlb) happens between an unlock and a relock, and is only trusted if
 * no decommit ran meanwhile (hdr->decommits unchanged).
 *
 * Lock order: a segment lock is never held while taking another segment's
 * lock or the control segment's lock. */
#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

int shm_fault_at;

void shm_fault(enum shm_fault_point p)
{
    if (unlikely(shm_fault_at == (int) p))
        (void) raise(SIGKILL);
}

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

uint64_t seg_committed_bytes(struct seg_map *m)
{
    return load_relaxed(&m->hdr->committed_units) << m->unit_shift;
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

    r = shm_mutex_init(&hdr->lock);
    if (r < 0)
        return r;

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
     * (after the fd reached it through a socket or fork) sees the rest. */
    store_release(&hdr->magic, SHM_SEG_MAGIC);
    return 0;
}

int seg_check_header(const struct seg_header *hdr, uint32_t index, uint64_t size)
{
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

/* ---- helpers under the lock ---- */

static uint64_t meta_get(struct seg_map *m, uint32_t b)
{
    return load_relaxed(&m->meta[b]);
}

/* relaxed: writers hold the lock; the lock-free reader (free's fast path)
 * only reads blocks that hold its live object, whose class cannot change. */
static void meta_put(struct seg_map *m, uint32_t b, uint64_t w)
{
    store_relaxed(&m->meta[b], w);
}

static bool unit_committed(struct seg_map *m, uint64_t u)
{
    return (seg_commit_map(m)[u / 64] >> (u % 64)) & 1;
}

static void unit_set_committed(struct seg_map *m, uint64_t u, bool on)
{
    uint64_t *w = &seg_commit_map(m)[u / 64];
    uint64_t bit = UINT64_C(1) << (u % 64);

    if (on == !!(*w & bit))
        return;
    if (on)
        *w |= bit;
    else
        *w &= ~bit;
    shm_fault(FAULT_COMMIT_COUNT_MID);
    store_relaxed(&m->hdr->committed_units, m->hdr->committed_units + (on ? 1 : (uint64_t) -1));
}

static void units_of(struct seg_map *m, uint32_t b, uint32_t n, uint64_t *first, uint64_t *last)
{
    *first = ((uint64_t) b << SHM_BLOCK_SHIFT) >> m->unit_shift;
    *last = ((((uint64_t) b + n) << SHM_BLOCK_SHIFT) - 1) >> m->unit_shift;
}

/* Returns true if blocks [b, b+n) are backed. On segments whose pages come
 * on first touch (normal memfd) that is always so: the units are simply
 * marked committed. */
static bool blocks_committed(struct seg_map *m, uint32_t b, uint32_t n)
{
    uint64_t first, last;

    units_of(m, b, n, &first, &last);
    for (uint64_t u = first; u <= last; u++) {
        if (unit_committed(m, u))
            continue;
        if (m->needs_commit)
            return false;
        unit_set_committed(m, u, true);
    }
    return true;
}

/* Called with the lock held and blocks [b, b+n) uncommitted: drops the
 * lock, reserves the backing pages, retakes the lock. The pages count as
 * committed only if no decommit ran in between (it could have punched
 * them again). Returns 0 (the caller searches again) or -ENOMEM. */
static int commit_unlocked(struct heap *h, struct seg_map *m, uint32_t b, uint32_t n)
{
    uint64_t first, last, decommits = m->hdr->decommits;
    int r;

    units_of(m, b, n, &first, &last);
    seg_unlock(m);
    r = os_commit(m->fd, first << m->unit_shift, (last - first + 1) << m->unit_shift);
    (void) seg_lock(m, h);
    if (r < 0)
        return r;
    if (m->hdr->decommits == decommits)
        for (uint64_t u = first; u <= last; u++)
            unit_set_committed(m, u, true);
    return 0;
}

/* Finds n consecutive FREE blocks, the first a multiple of align. */
static int64_t find_run(struct seg_map *m, uint32_t n, uint32_t align)
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
static void blocks_claim(struct seg_map *m,
                         uint32_t b,
                         uint32_t n,
                         bool slab,
                         unsigned cls,
                         unsigned nfree,
                         enum run_kind kind)
{
    struct seg_header *hdr = m->hdr;

    store_relaxed(&hdr->journal.block, b);
    store_relaxed(&hdr->journal.n, n);
    bittree_clear_range(seg_free_tree(m), b, n);
    store_relaxed(&hdr->free_blocks, hdr->free_blocks - n);
    for (uint32_t i = 1; i < n; i++)
        meta_put(m, b + i, meta_make(slab ? BLK_SLAB_TAIL : BLK_RUN_TAIL, cls, 0, i, kind));
    meta_put(m, b, meta_make(slab ? BLK_SLAB : BLK_RUN, cls, nfree, n, kind));
}

static void blocks_release(struct seg_map *m, uint32_t b, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        meta_put(m, b + i, meta_make(BLK_FREE, 0, 0, 0, RUN_LARGE));
    bittree_set_range(seg_free_tree(m), b, n);
    store_relaxed(&m->hdr->free_blocks, m->hdr->free_blocks + n);
}

static uint64_t *slab_bitmap(struct seg_map *m, uint32_t b, const struct slab_geometry *g)
{
    return (uint64_t *) (m->base + ((uint64_t) b << SHM_BLOCK_SHIFT) + g->bitmap_off);
}

static void slab_format(struct seg_map *m, uint32_t b, unsigned cls, const struct slab_geometry *g)
{
    uint64_t *bits = slab_bitmap(m, b, g);

    /* The block may hold a former slab's bytes: no object has an owner. */
    memset(slab_tags(m->base + ((uint64_t) b << SHM_BLOCK_SHIFT), g), 0,
           g->bitmap_off - g->tags_off);
    for (uint32_t i = 0; i < g->bitmap_words; i++)
        bits[i] = ~UINT64_C(0);
    if (g->capacity % 64)
        bits[g->bitmap_words - 1] = (UINT64_C(1) << (g->capacity % 64)) - 1;
    blocks_claim(m, b, g->blocks, true, cls, g->capacity, RUN_LARGE);
    shm_fault(FAULT_CARVE_MID);
    bittree_set(seg_class_tree(m, cls), b);
    store_relaxed(&m->hdr->journal.n, 0);
}

/* ---- taking objects ---- */

int seg_take(struct heap *h,
             struct seg_map *m,
             unsigned cls,
             uint32_t n,
             struct cache_bin *bin,
             uint64_t *ret_chain)
{
    struct seg_header *hdr = m->hdr;
    struct slab_geometry g;
    uint64_t chain = 0, base_off = (uint64_t) m->index << SHM_SEG_SHIFT;
    uint32_t taken = 0, retries = 0;
    int r;

    sizeclass_geometry(cls, &g);
    r = seg_lock(m, h);
    if (r < 0)
        return r;
    store_relaxed(&hdr->journal.cls, cls);
    store_relaxed(&hdr->journal.chain, 0);
    store_relaxed(&hdr->journal.slot_word, bin ? ptr_off(h, bin) : 0);
    store_relaxed(&hdr->journal.op, JOP_TAKE);
    while (taken < n) {
        int64_t sb = bittree_find_first(seg_class_tree(m, cls));
        uint64_t *bits, w;
        unsigned nfree;

        if (sb < 0) {
            int64_t fb = find_run(m, g.blocks, 1);

            if (fb < 0)
                break;
            if (!blocks_committed(m, (uint32_t) fb, g.blocks)) {
                if (taken > 0 || ++retries > 8)
                    break;
                store_relaxed(&hdr->journal.op, JOP_NONE);
                r = commit_unlocked(h, m, (uint32_t) fb, g.blocks);
                store_relaxed(&hdr->journal.op, JOP_TAKE);
                if (r < 0) {
                    store_relaxed(&hdr->journal.op, JOP_NONE);
                    seg_unlock(m);
                    return r;
                }
                continue;
            }
            slab_format(m, (uint32_t) fb, cls, &g);
            sb = fb;
        }
        w = meta_get(m, (uint32_t) sb);
        nfree = meta_nfree(w);
        bits = slab_bitmap(m, (uint32_t) sb, &g);
        for (uint32_t i = 0; i < g.bitmap_words && taken < n && nfree > 0; i++) {
            while (bits[i] && taken < n) {
                unsigned bit = (unsigned) __builtin_ctzll(bits[i]);
                uint64_t off = base_off + ((uint64_t) sb << SHM_BLOCK_SHIFT) +
                               (uint64_t) (i * 64 + bit) * g.size;

                obj_words(h, off)[0] = chain;
                chain = off;
                /* Linked into the journal first, freed bit cleared second:
                 * a replay after death sets the bit again, harmlessly. */
                store_relaxed(&hdr->journal.chain, chain);
                bits[i] &= ~(UINT64_C(1) << bit);
                taken++;
                nfree--;
                if (taken == n / 2)
                    shm_fault(FAULT_TAKE_MID);
            }
        }
        meta_put(m, (uint32_t) sb, meta_with_nfree(w, nfree));
        if (nfree == 0)
            bittree_clear(seg_class_tree(m, cls), (uint32_t) sb);
    }
    if (bin) {
        /* The bin was empty (only empty bins are refilled from blocks).
         * One store delivers the chain and its count: recovery sees the
         * head's offset equal journal.chain and knows it was delivered. */
        store_relaxed(&bin->head, bin_word(chain, taken));
        bin_net_add(bin, taken);
    } else {
        *ret_chain = chain;
    }
    store_relaxed(&hdr->journal.op, JOP_NONE);
    seg_unlock(m);
    return (int) taken;
}

/* ---- returning objects ---- */

/* Returns one object to its slab. Returns false (and counts it) if off is
 * not an object of this segment or is already free. */
static bool slab_return_one(struct heap *h, struct seg_map *m, uint64_t off, bool recovering);

bool seg_return_object_locked(struct heap *h, struct seg_map *m, uint64_t off)
{
    return slab_return_one(h, m, off, false);
}

static bool slab_return_one(struct heap *h, struct seg_map *m, uint64_t off, bool recovering)
{
    uint64_t rel = off & SHM_OFF_MASK, w, *bits, idx;
    uint32_t b, head;
    struct slab_geometry g;
    unsigned nfree, cls;

    if ((off >> SHM_SEG_SHIFT) != m->index || rel >= m->size)
        goto bad;
    b = (uint32_t) (rel >> SHM_BLOCK_SHIFT);
    w = meta_get(m, b);
    if (meta_state(w) == BLK_SLAB_TAIL) {
        if (meta_len(w) > b)
            goto bad;
        b -= meta_len(w);
        w = meta_get(m, b);
    }
    if (meta_state(w) != BLK_SLAB)
        goto bad;
    head = b;
    cls = meta_class(w);
    if (cls >= SHM_NCLASSES)
        goto bad;
    sizeclass_geometry(cls, &g);
    rel -= (uint64_t) head << SHM_BLOCK_SHIFT;
    idx = rel / g.size;
    if (rel % g.size || idx >= g.capacity) {
        if (!recovering) {
            heap_count_bad_free(h);
            (void) fetch_add_relaxed(&h->ctl->rec[cls].refused, 1);
        }
        return false;
    }
    bits = slab_bitmap(m, head, &g);
    if (bits[idx / 64] & (UINT64_C(1) << (idx % 64))) {
        if (!recovering) {
            (void) fetch_add_relaxed(&h->ctl->double_frees, 1);
            (void) fetch_add_relaxed(&h->ctl->rec[cls].refused, 1);
        }
        return false;
    }
    /* A free object has no owner; frees clear the tag already, this covers
     * a reclaimer's replay of a dead thread's half-done free. */
    store_relaxed(slab_tags(m->base + ((uint64_t) head << SHM_BLOCK_SHIFT), &g) + idx,
                  (uint16_t) 0);
    bits[idx / 64] |= UINT64_C(1) << (idx % 64);
    nfree = meta_nfree(w) + 1;
    if (nfree == g.capacity) {
        /* The slab is empty: its blocks go back to the free tree (and are
         * decommitted by a trim beyond retain_empty_blocks). */
        bittree_clear(seg_class_tree(m, cls), head);
        blocks_release(m, head, g.blocks);
    } else {
        meta_put(m, head, meta_with_nfree(w, nfree));
        if (nfree == 1)
            bittree_set(seg_class_tree(m, cls), head);
    }
    return true;
bad:
    if (!recovering) {
        heap_count_bad_free(h);
        (void) fetch_add_relaxed(&h->ctl->refused_frees, 1);
    }
    return false;
}

static bool off_in_seg(struct seg_map *m, uint64_t off)
{
    return (off >> SHM_SEG_SHIFT) == m->index && (off & SHM_OFF_MASK) >= 4096 &&
           (off & SHM_OFF_MASK) + 16 <= m->size && (off & 15) == 0;
}

/* Returns the objects from *handoff onward while they lie in m. The free
 * bit is set first, then the journal and *handoff move past the object
 * (see the preamble), so a replay never returns an object that someone
 * may have taken since. Stops at the first object of another segment. */
static void return_run_locked(struct heap *h, struct seg_map *m, uint64_t *handoff, bool recovering)
{
    struct seg_header *hdr = m->hdr;
    uint64_t x = load_relaxed(handoff), guard = m->size / SHM_MIN_OBJECT, n = 0;

    while (x && (x >> SHM_SEG_SHIFT) == m->index) {
        uint64_t next;

        if (!off_in_seg(m, x) || n++ > guard) {
            /* A broken link: what follows cannot be found any more. */
            if (!recovering)
                heap_count_bad_free(h);
            (void) fetch_add_relaxed(&h->ctl->lost_objects, 1);
            x = 0;
            store_relaxed(&hdr->journal.chain, 0);
            store_relaxed(handoff, 0);
            break;
        }
        next = obj_words(h, x)[0];
        (void) slab_return_one(h, m, x, recovering);
        if (n == 2)
            shm_fault(FAULT_RETURN_MID);
        store_relaxed(&hdr->journal.chain, next);
        store_relaxed(handoff, next);
        x = next;
    }
}

void seg_return_handoff(struct heap *h, uint64_t *handoff)
{
    bool shared = (char *) handoff >= h->base && (char *) handoff < h->base + h->ctl->ctl_size;

    for (;;) {
        uint64_t x = load_relaxed(handoff);
        struct seg_map *m;

        if (!x)
            return;
        m = heap_seg_for(h, x);
        if (!m || seg_lock(m, h) < 0) {
            heap_count_bad_free(h);
            (void) fetch_add_relaxed(&h->ctl->lost_objects, 1);
            store_relaxed(handoff, 0);
            return;
        }
        /* Read again under the lock: a recovery may have moved it. */
        x = load_relaxed(handoff);
        if (x && (x >> SHM_SEG_SHIFT) == m->index) {
            store_relaxed(&m->hdr->journal.chain, x);
            store_relaxed(&m->hdr->journal.slot_word, shared ? ptr_off(h, handoff) : 0);
            store_relaxed(&m->hdr->journal.op, JOP_RETURN);
            return_run_locked(h, m, handoff, false);
            store_relaxed(&m->hdr->journal.op, JOP_NONE);
        }
        seg_unlock(m);
    }
}

static void punch_restore(struct seg_map *m);
static void punch_recover(struct seg_map *m);

void seg_reap_busy(struct heap *h, struct seg_map *m)
{
    uint32_t pids[16], npids = 0, dead[16], ndead = 0;

    /* Which pids hold BUSY blocks is read under the lock, whether they
     * live is asked without it (a system call), and only then are the
     * blocks of the dead ones freed, under the lock again. A lost race
     * costs nothing: a BUSY block of a live pid is left alone. */
    if (seg_lock(m, h) < 0)
        return;
    for (uint32_t b = m->hdr->first_block; b < m->nblocks && npids < 16; b++) {
        uint64_t w = meta_get(m, b);
        uint32_t pid = (uint32_t) (w >> 8) & 0xffffff, k;

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
        uint64_t w = meta_get(m, b);
        uint32_t pid = (uint32_t) (w >> 8) & 0xffffff, k;

        if (meta_state(w) != BLK_BUSY)
            continue;
        for (k = 0; k < ndead && dead[k] != pid; k++)
            ;
        if (k == ndead)
            continue;
        /* The decommitter died between its punch and its relock: the unit
         * may or may not be punched; count it uncommitted. */
        unit_set_committed(m, ((uint64_t) b << SHM_BLOCK_SHIFT) >> m->unit_shift, false);
        blocks_release(m, b, 1);
    }
    seg_unlock(m);
}

/* ---- free pages inside slabs ---- */

/* On normal-page segments a trim also gives back 4K pages inside slabs
 * whose objects are all free: a slab with a few live objects no longer
 * keeps 64 KiB resident. The objects on those pages are reserved (their
 * free bits cleared) before the lock is dropped for the punch, named in
 * the segment's punch record first, so a reaper can put them back if the
 * puncher dies; punched pages come back zeroed on the next touch. The
 * page that holds the slab's bitmap is never punched. */
#define PUNCH_PAGE UINT64_C(4096)

static bool punch_mask_test(const uint64_t *mask, uint32_t p)
{
    return (mask[p / 64] >> (p % 64)) & 1;
}

/* Sets (restore) or clears (reserve) the free bits of every object that
 * overlaps a masked page; returns how many bits changed. */
enum punch_op {
    PUNCH_RESERVE,       /* clear the free bits of the masked pages' objects, recording them */
    PUNCH_FREE_RECORDED, /* set the bits of the recorded objects, forgetting them */
    PUNCH_FREE_MASKED,   /* set the bits of every masked page's object (recovery of a
                          * reservation cut short: the lock was held throughout, so every
                          * such object with its bit clear is one the puncher reserved) */
};

/* Moves the objects of a punch on slab sb; returns how many free bits
 * changed. A reservation clears a bit before recording it, a restore sets
 * a bit before forgetting it; a death between the two, under the lock, is
 * finished by punch_recover(). */
static uint32_t punch_objects(struct seg_map *m, uint32_t sb, const uint64_t *mask,
                              enum punch_op op)
{
    uint64_t w = meta_get(m, sb), *bits, *rsv = m->hdr->punch_reserved;
    struct slab_geometry g;
    uint32_t changed = 0;

    sizeclass_geometry(meta_class(w), &g);
    bits = slab_bitmap(m, sb, &g);
    if (op == PUNCH_FREE_RECORDED) {
        for (uint32_t i = 0; i < g.capacity; i++) {
            uint64_t bit = UINT64_C(1) << (i % 64);

            if (!(load_relaxed(&rsv[i / 64]) & bit))
                continue;
            if (!(bits[i / 64] & bit)) {
                bits[i / 64] |= bit;
                changed++;
            }
            if (changed == 2)
                shm_fault(FAULT_PUNCH_RESTORE_MID);
            compiler_barrier();
            store_relaxed(&rsv[i / 64], rsv[i / 64] & ~bit);
        }
        return changed;
    }
    for (uint32_t p = 0; p < 128; p++) {
        uint64_t lo, hi;

        if (!punch_mask_test(mask, p))
            continue;
        lo = p * PUNCH_PAGE / g.size;
        hi = ((p + 1) * PUNCH_PAGE - 1) / g.size;
        for (uint64_t i = lo; i <= hi && i < g.capacity; i++) {
            uint64_t bit = UINT64_C(1) << (i % 64);

            if (op == PUNCH_FREE_MASKED) {
                if (!(bits[i / 64] & bit)) {
                    bits[i / 64] |= bit;
                    changed++;
                }
                continue;
            }
            if (!(bits[i / 64] & bit))
                continue;
            bits[i / 64] &= ~bit;
            if (changed == 2)
                shm_fault(FAULT_PUNCH_RESERVE_MID);
            compiler_barrier();
            store_relaxed(&rsv[i / 64], rsv[i / 64] | bit);
            changed++;
        }
    }
    return changed;
}

/* Moves a slab's free count by delta, keeping its class tree bit and
 * releasing the slab when it is empty. */
static void slab_adjust(struct seg_map *m, uint32_t sb, int64_t delta)
{
    uint64_t w = meta_get(m, sb);
    unsigned cls = meta_class(w), nfree = (unsigned) ((int64_t) meta_nfree(w) + delta);
    struct slab_geometry g;

    sizeclass_geometry(cls, &g);
    if (nfree >= g.capacity) {
        bittree_clear(seg_class_tree(m, cls), sb);
        blocks_release(m, sb, g.blocks);
        return;
    }
    meta_put(m, sb, meta_with_nfree(w, nfree));
    if (nfree > 0)
        bittree_set(seg_class_tree(m, cls), sb);
    else
        bittree_clear(seg_class_tree(m, cls), sb);
}

/* Puts back the objects a punch reserved: by the puncher when its punch
 * is done, or by a reaper when the puncher is gone. Lock held. */
static void punch_restore(struct seg_map *m)
{
    struct seg_header *hdr = m->hdr;
    uint32_t sb = hdr->punch_block;

    store_relaxed(&hdr->punch_phase, PUNCH_RESTORING);
    if (sb < m->nblocks && meta_state(meta_get(m, sb)) == BLK_SLAB)
        slab_adjust(m, sb, punch_objects(m, sb, hdr->punch_mask, PUNCH_FREE_RECORDED));
    store_relaxed(&hdr->punch_pid, 0);
    store_relaxed(&hdr->punch_phase, PUNCH_OUTSIDE);
}

/* Recovery: a holder died inside a punch's reservation or restore. Nobody
 * took an object since (the lock was held), so the punch is undone
 * exactly: a reservation through the mask, a restore through the record.
 * Free counts are rebuilt by seg_repair() afterwards. */
static void punch_recover(struct seg_map *m)
{
    struct seg_header *hdr = m->hdr;
    uint32_t phase = hdr->punch_phase, sb = hdr->punch_block;

    if (phase == PUNCH_OUTSIDE)
        return;
    if (sb < m->nblocks && meta_state(meta_get(m, sb)) == BLK_SLAB && hdr->punch_pid)
        (void) punch_objects(m, sb, hdr->punch_mask,
                             phase == PUNCH_RESERVING ? PUNCH_FREE_MASKED : PUNCH_FREE_RECORDED);
    memset(hdr->punch_reserved, 0, sizeof(hdr->punch_reserved));
    store_relaxed(&hdr->punch_pid, 0);
    store_relaxed(&hdr->punch_phase, PUNCH_OUTSIDE);
}

/* Pages of slab sb wholly covered by free objects, below its owner tags. */
static bool punch_candidates(struct seg_map *m, uint32_t sb, uint64_t *mask)
{
    uint64_t w = meta_get(m, sb), *bits;
    struct slab_geometry g;
    bool any = false;

    mask[0] = mask[1] = 0;
    sizeclass_geometry(meta_class(w), &g);
    if (meta_nfree(w) * (uint64_t) g.size < PUNCH_PAGE)
        return false;
    bits = slab_bitmap(m, sb, &g);
    for (uint32_t p = 0; (p + 1) * PUNCH_PAGE <= g.tags_off && p < 128; p++) {
        uint64_t lo = p * PUNCH_PAGE / g.size, hi = ((p + 1) * PUNCH_PAGE - 1) / g.size, i;

        if (hi >= g.capacity)
            break;
        for (i = lo; i <= hi; i++)
            if (!(bits[i / 64] & (UINT64_C(1) << (i % 64))))
                break;
        if (i > hi) {
            mask[p / 64] |= UINT64_C(1) << (p % 64);
            any = true;
        }
    }
    return any;
}

uint64_t seg_punch_slabs(struct heap *h, struct seg_map *m)
{
    return seg_punch_slabs_max(h, m, UINT64_MAX, NULL);
}

uint64_t
seg_punch_slabs_max(struct heap *h, struct seg_map *m, uint64_t max_bytes, uint32_t *cursor)
{
    struct seg_header *hdr = m->hdr;
    uint64_t released = 0, seg_base = 0;
    uint32_t b = hdr->first_block, pid = (uint32_t) getpid();

    if (m->needs_commit)
        return 0; /* huge pages: only whole pages, which decommit handles */
    if (cursor && *cursor > b && *cursor < m->nblocks)
        b = *cursor;
    /* The budget is checked before each slab: the last may overshoot it by
     * at most one slab's pages (SHM_SLAB_MAX_BLOCKS blocks). */
    while (b < m->nblocks && released < max_bytes) {
        uint64_t mask[2];
        uint32_t sb = m->nblocks;

        if (seg_lock(m, h) < 0)
            break;
        if (hdr->punch_pid) {
            seg_unlock(m);
            break; /* another punch is in flight */
        }
        for (; b < m->nblocks; b++) {
            uint64_t w = meta_get(m, b);

            if (meta_state(w) == BLK_SLAB && meta_class(w) < SHM_NCLASSES &&
                punch_candidates(m, b, mask)) {
                sb = b;
                break;
            }
        }
        if (sb == m->nblocks) {
            seg_unlock(m);
            break;
        }
        /* The record first, the reservation second: a reaper restores
         * the objects recorded as reserved, idempotently. */
        memset(hdr->punch_reserved, 0, sizeof(hdr->punch_reserved));
        store_relaxed(&hdr->punch_block, sb);
        store_relaxed(&hdr->punch_mask[0], mask[0]);
        store_relaxed(&hdr->punch_mask[1], mask[1]);
        store_relaxed(&hdr->punch_phase, PUNCH_RESERVING);
        store_relaxed(&hdr->punch_pid, pid);
        slab_adjust(m, sb, -(int64_t) punch_objects(m, sb, mask, PUNCH_RESERVE));
        store_relaxed(&hdr->punch_phase, PUNCH_OUTSIDE);
        seg_unlock(m);
        shm_fault(FAULT_PUNCH_MID);
        seg_base = (uint64_t) sb << SHM_BLOCK_SHIFT;
        for (uint32_t p = 0; p < 128;) {
            uint32_t q = p;

            if (!punch_mask_test(mask, p)) {
                p++;
                continue;
            }
            while (q < 128 && punch_mask_test(mask, q))
                q++;
            if (os_decommit(m->fd, seg_base + p * PUNCH_PAGE, (q - p) * PUNCH_PAGE) == 0)
                released += (q - p) * PUNCH_PAGE;
            p = q;
        }
        if (seg_lock(m, h) < 0)
            break;
        if (hdr->punch_pid == pid && hdr->punch_block == sb)
            punch_restore(m);
        seg_unlock(m);
        b = sb + 1;
    }
    if (cursor)
        *cursor = b < m->nblocks ? b : hdr->first_block;
    return released;
}

uint32_t seg_punch_reserved(struct seg_map *m, unsigned *ret_cls)
{
    struct seg_header *hdr = m->hdr;
    uint32_t n = 0, sb = hdr->punch_block;
    uint64_t w;

    if (!hdr->punch_pid || sb >= m->nblocks || meta_state(w = meta_get(m, sb)) != BLK_SLAB)
        return 0;
    for (unsigned k = 0; k < SHM_SLAB_MAX_OBJECTS / 64; k++)
        n += (uint32_t) __builtin_popcountll(load_relaxed(&hdr->punch_reserved[k]));
    *ret_cls = meta_class(w);
    return n;
}

/* ---- runs ---- */

int seg_alloc_run(struct heap *h, struct seg_map *m, uint32_t nblocks, uint32_t align_blocks,
                  enum run_kind kind, uint16_t owner, struct cache_slot *count,
                  uint32_t *ret_block)
{
    uint32_t retries = 0;
    int64_t b;
    int r;

    r = seg_lock(m, h);
    if (r < 0)
        return r;
    for (;;) {
        b = find_run(m, nblocks, align_blocks ? align_blocks : 1);
        if (b < 0) {
            seg_unlock(m);
            return -ENOSPC;
        }
        if (blocks_committed(m, (uint32_t) b, nblocks))
            break;
        r = ++retries > 8 ? -ENOMEM : commit_unlocked(h, m, (uint32_t) b, nblocks);
        if (r < 0) {
            seg_unlock(m);
            return r;
        }
    }
    blocks_claim(m, (uint32_t) b, nblocks, false, 0, kind == RUN_LARGE ? owner : 0, kind);
    if (kind == RUN_LARGE)
        store_relaxed(&m->hdr->large_bytes,
                      m->hdr->large_bytes + ((uint64_t) nblocks << SHM_BLOCK_SHIFT));
    store_relaxed(&m->hdr->journal.n, 0);
    if (count) {
        bump_relaxed(&count->large_allocs, 1);
        bump_relaxed(&count->large_bytes_alloc, (uint64_t) nblocks << SHM_BLOCK_SHIFT);
    }
    seg_unlock(m);
    *ret_block = (uint32_t) b;
    return 0;
}

int seg_share_run(struct heap *h, struct seg_map *m, uint32_t b)
{
    uint64_t w;
    int r;

    r = seg_lock(m, h);
    if (r < 0)
        return r;
    w = b < m->nblocks ? meta_get(m, b) : 0;
    if (meta_state(w) == BLK_RUN && meta_kind(w) == RUN_LARGE)
        meta_put(m, b, meta_with_nfree(w, 0));
    seg_unlock(m);
    return 0;
}

int seg_free_run(struct heap *h, struct seg_map *m, uint32_t block, enum run_kind kind,
                 struct cache_slot *count)
{
    uint64_t w;
    uint32_t n;
    int r;

    r = seg_lock(m, h);
    if (r < 0)
        return r;
    w = block < m->nblocks ? meta_get(m, block) : 0;
    if (block >= m->nblocks || meta_state(w) != BLK_RUN || meta_kind(w) != kind) {
        seg_unlock(m);
        return -EINVAL;
    }
    n = meta_len(w);
    store_relaxed(&m->hdr->journal.block, block);
    store_relaxed(&m->hdr->journal.n, n);
    if (kind == RUN_LARGE)
        store_relaxed(&m->hdr->large_bytes, m->hdr->large_bytes - ((uint64_t) n << SHM_BLOCK_SHIFT));
    blocks_release(m, block, n);
    store_relaxed(&m->hdr->journal.n, 0);
    if (count) {
        bump_relaxed(&count->large_frees, 1);
        bump_relaxed(&count->large_bytes_freed, (uint64_t) n << SHM_BLOCK_SHIFT);
    }
    seg_unlock(m);
    return 0;
}

/* ---- decommit ---- */

#define DECOMMIT_BATCH 64

uint64_t seg_decommit_free(struct heap *h, struct seg_map *m, uint64_t *retain)
{
    return seg_decommit_free_max(h, m, retain, UINT64_MAX);
}

uint64_t
seg_decommit_free_max(struct heap *h, struct seg_map *m, uint64_t *retain, uint64_t max_bytes)
{
    uint64_t released = 0, unit_blocks = (UINT64_C(1) << m->unit_shift) >> SHM_BLOCK_SHIFT;
    uint64_t nunits = m->size >> m->unit_shift, kept = 0, start_unit = 0, planned = 0;
    uint32_t pid = (uint32_t) getpid();
    bool budget_spent = false;

    if (unit_blocks == 0)
        unit_blocks = 1;
    for (;;) {
        uint64_t batch[DECOMMIT_BATCH], nb = 0, u;

        if (seg_lock(m, h) < 0)
            return released;
        /* Keep the lowest free committed blocks (the free tree hands out
         * the lowest first, so they are reused before anything else). */
        for (u = start_unit; u < nunits && nb < DECOMMIT_BATCH && !budget_spent; u++) {
            uint32_t b0 = (uint32_t) (u * unit_blocks), i;

            if (!unit_committed(m, u) || b0 < m->hdr->first_block)
                continue;
            for (i = 0; i < unit_blocks; i++)
                if (meta_state(meta_get(m, b0 + i)) != BLK_FREE)
                    break;
            if (i < unit_blocks)
                continue;
            if (kept + unit_blocks <= *retain) {
                kept += unit_blocks;
                continue;
            }
            /* Whole units only: a unit that would pass the budget stays. */
            if (planned + (UINT64_C(1) << m->unit_shift) > max_bytes) {
                budget_spent = true;
                break;
            }
            planned += UINT64_C(1) << m->unit_shift;
            for (i = 0; i < unit_blocks; i++)
                meta_put(m, b0 + i,
                         meta_make(BLK_BUSY, 0, 0, (uint32_t) unit_blocks, 0) |
                                 (uint64_t) (pid & 0xffffff) << 8);
            bittree_clear_range(seg_free_tree(m), b0, (uint32_t) unit_blocks);
            store_relaxed(&m->hdr->free_blocks, m->hdr->free_blocks - unit_blocks);
            unit_set_committed(m, u, false);
            batch[nb++] = u;
        }
        start_unit = u;
        if (nb)
            store_relaxed(&m->hdr->decommits, m->hdr->decommits + 1);
        seg_unlock(m);
        if (nb == 0)
            break;
        for (uint64_t i = 0; i < nb;) {
            uint64_t j = i + 1;

            while (j < nb && batch[j] == batch[j - 1] + 1)
                j++;
            /* Outside the lock: the units' blocks are BUSY, nobody else
             * touches them. A failed punch only leaves memory committed. */
            if (os_decommit(m->fd, batch[i] << m->unit_shift, (j - i) << m->unit_shift) == 0)
                released += (j - i) << m->unit_shift;
            i = j;
        }
        shm_fault(FAULT_DECOMMIT_MID);
        if (seg_lock(m, h) < 0)
            return released;
        for (uint64_t i = 0; i < nb; i++)
            blocks_release(m, (uint32_t) (batch[i] * unit_blocks), (uint32_t) unit_blocks);
        seg_unlock(m);
    }
    *retain -= kept < *retain ? kept : *retain;
    return released;
}

/* ---- recovery ---- */

void seg_repair(struct seg_map *m)
{
    struct seg_header *hdr = m->hdr;
    uint64_t large = 0, units = 0;

    /* A holder killed inside unit_set_committed() set or cleared the map's
     * bit but not the count: the map is the truth. */
    for (uint64_t u = 0; u < m->size >> m->unit_shift; u++)
        units += unit_committed(m, u);
    store_relaxed(&hdr->committed_units, units);

    bittree_chain_init(seg_free_tree(m), m->nblocks, false);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        bittree_chain_init(seg_class_tree(m, c), m->nblocks, false);
    for (uint32_t b = hdr->first_block; b < m->nblocks; b++) {
        uint64_t w = meta_get(m, b);
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
            meta_put(m, b, meta_with_nfree(w, nfree));
            if (nfree == g.capacity)
                blocks_release(m, b, g.blocks);
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
    /* BUSY blocks stay out of the tree: seg_reap_busy() frees those of dead
     * decommitters, asking about the pid without the lock. The free tree
     * is the truth now: count it. */
    store_relaxed(&hdr->free_blocks, bittree_count(seg_free_tree(m)));
}

static void seg_recover(struct seg_map *m, struct heap *h)
{
    struct seg_header *hdr = m->hdr;
    struct seg_journal *j = &hdr->journal;

    /* A carve or run free cut short: its blocks become free again. */
    if (j->n && j->block < m->nblocks && j->block >= hdr->first_block &&
        (uint64_t) j->block + j->n <= m->nblocks) {
        for (uint32_t i = 0; i < j->n; i++)
            meta_put(m, j->block + i, meta_make(BLK_FREE, 0, 0, 0, RUN_LARGE));
    }
    /* A punch it was reserving or restoring under the lock. */
    punch_recover(m);
    /* The dead holder's free counts may lag its bitmaps (a take counts
     * after a slab's loop): recount them before the replay adds to them,
     * or a slab could look empty while objects in it are in use. */
    seg_repair(m);
    if (j->op == JOP_TAKE && j->chain) {
        struct cache_bin *bin = NULL;
        uint64_t chain = j->chain;

        if (j->slot_word && j->slot_word < h->ctl->ctl_size && !(j->slot_word & 63))
            bin = (struct cache_bin *) off_ptr(h, j->slot_word);
        /* Not delivered to the bin: put the objects back in their slabs
         * (all in this segment: a take never leaves it). */
        if (!bin || bin_off(load_relaxed(&bin->head)) != j->chain)
            return_run_locked(h, m, &chain, true);
    } else if (j->op == JOP_RETURN && j->chain) {
        uint64_t local = j->chain, *handoff = &local;

        /* The journal is ahead of the handoff word by at most one object
         * (see return_run_locked): it is the truth; the handoff follows. */
        if (j->slot_word && j->slot_word < h->ctl->ctl_size && !(j->slot_word & 7)) {
            handoff = (uint64_t *) off_ptr(h, j->slot_word);
            store_relaxed(handoff, j->chain);
        }
        return_run_locked(h, m, handoff, true);
    }
    memset(j, 0, sizeof(*j));
    seg_repair(m);
}

int seg_lock(struct seg_map *m, struct heap *h)
{
    int r = pthread_mutex_lock(&m->hdr->lock);

    if (r == EOWNERDEAD) {
        seg_recover(m, h);
        r = pthread_mutex_consistent(&m->hdr->lock);
    }
    return -r;
}

void seg_unlock(struct seg_map *m)
{
    (void) pthread_mutex_unlock(&m->hdr->lock);
}
