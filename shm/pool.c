/* Pools: a dedicated slab for one object size, in shared memory.
 *
 * A pool is a chain of chunks, each a run of blocks (kind RUN_POOL). The
 * first chunk starts with struct pool_header; every chunk starts with
 * struct pool_chunk naming its pool. Free objects form a Treiber stack
 * (tagged head, cas128; links in word 0 of each object, read racily and
 * made safe by the tag as in recycler.c). Fresh objects come from a bump
 * pair {next, end} in the newest chunk, also swapped by cas128 so `next`
 * never passes `end`. A new chunk is added under the pool's lock (lock.c).
 *
 * No kill leaks a chunk (the run's metadata word is the record, run.c):
 *   create   the first chunk is claimed with the creator's owner tag, which
 *            is cleared once the header is live: a creator killed before
 *            leaves a tagged chunk its owner's sweep frees (pool_reap).
 *   grow     the new chunk is claimed tagged, its header written, then
 *            linked (one store of `chunks`: the commit), then untagged. The
 *            sweep of a dead grower's tag frees a chunk that is not in its
 *            pool's chain and untags one that is; the next grower finds a
 *            linked chunk whose bump pair was never installed and installs
 *            it (pool_grow, on EOWNERDEAD).
 *   destroy  the magic changes to POOL_DYING | the destroyer's tag (the
 *            commit, one CAS), then the chunks are freed, the first (the
 *            header) last, its magic cleared under the segment lock with
 *            its blocks. A destroyer killed midway is finished by its
 *            owner's sweep (pool_finish_destroys): every untagged chunk
 *            naming a pool that is dying by that tag, then the header. */
#include <errno.h>
#include <string.h>

#include "shm/internal.h"
#include "shm/os.h"

#define POOL_MAGIC       UINT64_C(0x4c4f4f5048534850) /* "PHSHPOOL" */
#define POOL_CHUNK_BYTES (UINT64_C(1) << 20)
/* The magic of a pool being destroyed by the owner whose tag is in the low
 * 16 bits. */
#define POOL_DYING UINT64_C(0x474e495944000000) /* "DYING" */

static uint64_t pool_dying(uint16_t tag)
{
    return POOL_DYING | tag;
}

struct pool_chunk {
    uint64_t pool; /* offset of the pool (its first chunk) */
    uint64_t next; /* the next older chunk */
    uint64_t pad[6];
};

struct pool_header {
    struct pool_chunk chunk; /* the first chunk's own header */
    uint64_t magic;
    uint32_t object_size;
    uint32_t pad0;
    uint64_t chunks; /* newest chunk */
    uint64_t allocs, frees;
    uint64_t pad1[3];
    tagged_head_t free;      /* {first free object, tag} */
    tagged_head_t bump;      /* {next fresh offset, end of the chunk} */
    struct shlock grow_lock; /* adding a chunk (lock.c); an unlock that finds it written leaves it
                                to the next locker */
};

static struct pool_header *pool_at(struct heap *h, uint64_t off)
{
    struct seg_map *m = heap_seg_for(h, off);
    struct pool_header *p;
    uint64_t w;

    if (!m || (off & (SHM_BLOCK_SIZE - 1)))
        return NULL;
    w = load_relaxed(&m->meta[(off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT]);
    if (meta_state(w) != BLK_RUN || meta_kind(w) != RUN_POOL)
        return NULL;
    p = off_ptr(h, off);
    /* acquire: pairs with heap_pool_create's release of the magic. */
    if (load_acquire(&p->magic) != POOL_MAGIC || p->chunk.pool != off)
        return NULL;
    return p;
}

static uint64_t chunk_bytes(uint32_t object_size)
{
    uint64_t bytes = (uint64_t) object_size * 64 + sizeof(struct pool_header);

    return bytes < POOL_CHUNK_BYTES ? POOL_CHUNK_BYTES : bytes;
}

int heap_pool_create(struct heap *h, size_t object_size, uint64_t *ret_pool)
{
    struct pool_header *p;
    uint64_t off, bytes;
    int r;

    if (!h || !ret_pool || object_size == 0 || object_size > SHM_SEG_SPAN / 1024)
        return -EINVAL;
    object_size = (object_size + 15) & ~(size_t) 15;
    bytes = chunk_bytes((uint32_t) object_size);
    r = run_create(h, bytes, 1, RUN_POOL, h->owner_tag, &off);
    if (r < 0)
        return r;
    shm_fault(FAULT_POOL_CLAIMED);
    p = off_ptr(h, off);
    memset(p, 0, sizeof(*p));
    p->chunk.pool = off;
    p->object_size = (uint32_t) object_size;
    p->chunks = off;
    p->bump.s.off = off + ((sizeof(*p) + 63) & ~UINT64_C(63));
    p->bump.s.tag = off + (((bytes + SHM_BLOCK_SIZE - 1) >> SHM_BLOCK_SHIFT) << SHM_BLOCK_SHIFT);
    shlock_init(&p->grow_lock);
    /* release: a process that sees the magic sees the header (pairs with
     * the acquire in pool_at). */
    store_release(&p->magic, POOL_MAGIC);
    shm_fault(FAULT_POOL_HEADER);
    /* It outlives its creator from here on. */
    r = h->owner_tag ? run_retag(h, off, RUN_POOL, 0) : 0;
    if (r < 0) {
        (void) heap_pool_destroy(h, off);
        return r;
    }
    *ret_pool = off;
    return 0;
}

/* The end of the chunk at off (a RUN_POOL head), or 0. */
static uint64_t chunk_end(struct heap *h, uint64_t off)
{
    struct seg_map *m = heap_seg_for(h, off);
    uint64_t w;

    if (!m || (off & (SHM_BLOCK_SIZE - 1)))
        return 0;
    w = load_relaxed(&m->meta[(off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT]);
    if (meta_state(w) != BLK_RUN || meta_kind(w) != RUN_POOL)
        return 0;
    return off + ((uint64_t) meta_len(w) << SHM_BLOCK_SHIFT);
}

/* A grower killed between linking its chunk and installing the chunk's
 * bump pair: install it now (with the grow lock held). */
static void pool_finish_grow(struct heap *h, struct pool_header *p)
{
    uint64_t newest = load_acquire(&p->chunks), end = chunk_end(h, newest);
    tagged_head_t cur = head_read(&p->bump), nw;

    if (!end || cur.s.tag == end)
        return;
    nw.s.off = newest + (newest == p->chunk.pool ? ((sizeof(*p) + 63) & ~UINT64_C(63))
                                                 : sizeof(struct pool_chunk));
    nw.s.tag = end;
    while (!cas128(&p->bump, &cur, nw))
        ;
}

__attribute__((no_sanitize("thread"))) static uint64_t link_read(struct heap *h, uint64_t off)
{
    return load_relaxed(&obj_words(h, off)[0]);
}

/* Adds a chunk unless another thread already did (bump moved). */
static int pool_grow(struct heap *h, struct pool_header *p, tagged_head_t seen)
{
    tagged_head_t cur, nw;
    uint64_t off, bytes = chunk_bytes(p->object_size);
    struct pool_chunk *c;
    int r;

    r = shlock_lock(&p->grow_lock);
    if (r == EOWNERDEAD) {
        pool_finish_grow(h, p);
        r = 0;
    }
    if (r)
        return -r;
    cur = head_read(&p->bump);
    if (cur.s.off != seen.s.off || cur.s.tag != seen.s.tag) {
        (void) shlock_unlock(&p->grow_lock);
        return 0;
    }
    r = run_create(h, bytes, 1, RUN_POOL, h->owner_tag, &off);
    if (r < 0) {
        (void) shlock_unlock(&p->grow_lock);
        return r;
    }
    shm_fault(FAULT_POOL_GROW_CLAIMED);
    c = off_ptr(h, off);
    c->pool = p->chunk.pool;
    c->next = p->chunks;
    /* The commit: one store links the chunk. release: a sweeper that reads
     * the chain and finds it sees its header (pairs with pool_links()). */
    store_release(&p->chunks, off);
    shm_fault(FAULT_POOL_GROW_LINKED);
    if (h->owner_tag)
        (void) run_retag(h, off, RUN_POOL, 0); /* a failure leaves it to the sweep */
    nw.s.off = off + sizeof(*c);
    nw.s.tag = off + (((bytes + SHM_BLOCK_SIZE - 1) >> SHM_BLOCK_SHIFT) << SHM_BLOCK_SHIFT);
    /* Bumpers only advance next within one {next, end} pair, so a CAS
     * from any pair to the new chunk's pair is safe; retry until it lands. */
    while (!cas128(&p->bump, &cur, nw))
        ;
    (void) shlock_unlock(&p->grow_lock);
    return 0;
}

void *heap_pool_alloc(struct heap *h, uint64_t pool)
{
    struct pool_header *p = h ? pool_at(h, pool) : NULL;
    tagged_head_t old, nw;

    if (!p) {
        errno = EINVAL;
        return NULL;
    }
    old = head_read(&p->free);
    while (old.s.off) {
        if (!heap_obj_at(h, old.s.off))
            break; /* corrupt head: fall back to fresh objects */
        nw.s.off = link_read(h, old.s.off);
        nw.s.tag = old.s.tag + 1;
        if (cas128(&p->free, &old, nw)) {
            (void) fetch_add_relaxed(&p->allocs, 1);
            return off_ptr(h, old.s.off);
        }
    }
    for (;;) {
        old = head_read(&p->bump);
        if (old.s.off + p->object_size <= old.s.tag) {
            nw.s.off = old.s.off + p->object_size;
            nw.s.tag = old.s.tag;
            if (cas128(&p->bump, &old, nw)) {
                (void) fetch_add_relaxed(&p->allocs, 1);
                return off_ptr(h, old.s.off);
            }
            continue;
        }
        int r = pool_grow(h, p, old);

        if (r < 0) {
            errno = -r;
            return NULL;
        }
    }
}

int heap_pool_free(struct heap *h, uint64_t pool, void *ptr)
{
    struct pool_header *p = h ? pool_at(h, pool) : NULL;
    uint64_t off, w, chunk, first, end;
    struct seg_map *m;
    struct pool_chunk *c;
    tagged_head_t old, nw, bump;
    uint32_t b;

    if (!p || !ptr)
        return -EINVAL;
    off = ptr_off(h, ptr);
    m = heap_seg_for(h, off);
    if (!m)
        return -EFAULT;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    w = load_relaxed(&m->meta[b]);
    if (meta_state(w) == BLK_RUN_TAIL)
        b -= meta_len(w), w = load_relaxed(&m->meta[b]);
    if (meta_state(w) != BLK_RUN || meta_kind(w) != RUN_POOL)
        return -EFAULT;
    chunk = ((uint64_t) m->index << SHM_SEG_SHIFT) | ((uint64_t) b << SHM_BLOCK_SHIFT);
    c = off_ptr(h, chunk);
    if (c->pool != pool)
        return -EFAULT; /* another pool's object */
    first = chunk + (chunk == pool ? ((sizeof(*p) + 63) & ~UINT64_C(63)) : sizeof(*c));
    end = chunk + ((uint64_t) meta_len(w) << SHM_BLOCK_SHIFT);
    if (off < first || (off - first) % p->object_size || off + p->object_size > end)
        return -EFAULT; /* not an object's start */
    bump = head_read(&p->bump);
    if (bump.s.tag == end && off >= bump.s.off)
        return -EFAULT; /* in the newest chunk, past what was ever handed out */
    old = head_read(&p->free);
    do {
        store_relaxed(&obj_words(h, off)[0], old.s.off);
        nw.s.off = off;
        nw.s.tag = old.s.tag;
    } while (!cas128(&p->free, &old, nw));
    (void) fetch_add_relaxed(&p->frees, 1);
    return 0;
}

int heap_pool_destroy(struct heap *h, uint64_t pool)
{
    struct pool_header *p = h ? pool_at(h, pool) : NULL;
    uint64_t magic = POOL_MAGIC, dying, chunk;
    struct seg_map *m;
    struct tcache *tc;
    unsigned freed = 0;

    if (!p)
        return -EINVAL;
    dying = pool_dying(h->owner_tag);
    /* One destroyer wins: the commit. acq_rel: pairs with the creator's
     * release of the magic, and with other destroyers. */
    if (!cas_strong_acq_rel(&p->magic, &magic, dying))
        return -EINVAL;
    chunk = load_acquire(&p->chunks);
    while (chunk) {
        struct pool_chunk *c = heap_from_off(h, chunk);
        uint64_t next = c ? c->next : 0;

        if (chunk != pool) {
            (void) run_destroy(h, chunk, RUN_POOL);
            if (++freed == 1)
                shm_fault(FAULT_POOL_DESTROY_MID);
        }
        chunk = next;
    }
    /* The header last, its magic with its blocks. */
    m = heap_seg_for(h, pool);
    tc = tcache_get(h);
    return run_free_in(h, m, (uint32_t) ((pool & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT), RUN_POOL,
                       tc ? tc->slot : NULL, &p->magic, dying);
}

/* Whether off is in the chain of the pool at pool (live or dying). acquire:
 * pairs with pool_grow's release of `chunks`. */
static bool pool_links(struct heap *h, uint64_t pool, uint64_t off)
{
    struct pool_header *p;
    uint64_t chunk, magic;

    if (!chunk_end(h, pool))
        return false;
    p = off_ptr(h, pool);
    magic = load_acquire(&p->magic);
    if (magic != POOL_MAGIC && (magic & ~UINT64_C(0xffff)) != POOL_DYING)
        return false;
    chunk = load_acquire(&p->chunks);
    /* Bounded: a chain longer than the heap has blocks is corrupt. */
    for (uint64_t n = 0; chunk && n < (UINT64_C(1) << 24); n++) {
        if (chunk == off)
            return true;
        if (!chunk_end(h, chunk))
            return false;
        chunk = load_relaxed(&((struct pool_chunk *) off_ptr(h, chunk))->next);
    }
    return false;
}

int pool_reap(struct heap *h, uint64_t off)
{
    struct seg_map *m = heap_seg_for(h, off);
    struct pool_header *p;
    uint64_t owner_pool;
    uint32_t b;

    if (!m || !chunk_end(h, off))
        return -EINVAL;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    owner_pool = load_relaxed(&((struct pool_chunk *) off_ptr(h, off))->pool);
    /* A grown chunk its grower linked before it died: the pool's now. */
    if (owner_pool != off && pool_links(h, owner_pool, off))
        return run_retag_in(h, m, b, RUN_POOL, 0) < 0 ? -EAGAIN : 0;
    /* A first chunk (its creator never returned it) or a chunk never
     * linked: nobody else has it. A live header loses its magic with it. */
    p = off_ptr(h, off);
    if (owner_pool == off && load_acquire(&p->magic) == POOL_MAGIC)
        return run_free_in(h, m, b, RUN_POOL, NULL, &p->magic, POOL_MAGIC) < 0 ? -EAGAIN : 1;
    return run_free_in(h, m, b, RUN_POOL, NULL, NULL, 0) < 0 ? -EAGAIN : 1;
}

/* Whether pool is a pool header that the owner tagged `tag` was destroying. */
static bool pool_dying_by(struct heap *h, uint64_t pool, uint16_t tag)
{
    return chunk_end(h, pool) &&
           load_acquire(&((struct pool_header *) off_ptr(h, pool))->magic) == pool_dying(tag);
}

int pool_finish_destroys(struct heap *h, uint16_t tag)
{
    int n = 0;

    /* Pass 0: the chunks of pools that tag was destroying; pass 1: their
     * headers, last, so a chunk never names a header already reused. */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 1; i < heap_nmapped(h); i++) {
            struct seg_map *m = &h->segs[i];
            uint64_t seg_off = (uint64_t) i << SHM_SEG_SHIFT;
            int r;

            if (!heap_mapped(h, i))
                continue;
            r = seg_lock(m, h);
            if (r < 0)
                return r;
            for (uint32_t b = m->hdr->first_block; b < m->nblocks; b++) {
                uint64_t w = seg_meta_get(m, b), off = seg_off | (uint64_t) b << SHM_BLOCK_SHIFT;
                uint64_t owner_pool;
                struct pool_header *p;

                /* A tagged chunk is its claimer's (pool_reap), not ours. */
                if (meta_state(w) != BLK_RUN || meta_kind(w) != RUN_POOL || meta_owner(w))
                    continue;
                owner_pool = load_relaxed(&((struct pool_chunk *) off_ptr(h, off))->pool);
                if (pass == 0 && owner_pool != off && pool_dying_by(h, owner_pool, tag)) {
                    run_free_locked(m, b, meta_len(w));
                    n++;
                    continue;
                }
                p = off_ptr(h, off);
                if (pass == 1 && owner_pool == off && load_relaxed(&p->magic) == pool_dying(tag)) {
                    /* The magic goes first, under the journal: see run_free_in(). */
                    store_relaxed(&m->hdr->journal.block, b);
                    store_relaxed(&m->hdr->journal.n, meta_len(w));
                    store_relaxed(&p->magic, 0);
                    run_free_locked(m, b, meta_len(w));
                    n++;
                }
            }
            seg_unlock(m);
        }
    }
    return n;
}
