/* Pools: a dedicated slab for one object size, in shared memory.
 *
 * A pool is a chain of chunks, each a run of blocks (kind RUN_POOL). The
 * first chunk starts with struct pool_header; every chunk starts with
 * struct pool_chunk naming its pool. Free objects form a Treiber stack
 * (tagged head, cas128; links in word 0 of each object, read racily and
 * made safe by the tag as in recycler.c). Fresh objects come from a bump
 * pair {next, end} in the newest chunk, also swapped by cas128 so `next`
 * never passes `end`. A new chunk is added under the pool's robust lock. */
#include <errno.h>
#include <string.h>

#include "shm/internal.h"
#include "shm/os.h"

#define POOL_MAGIC       UINT64_C(0x4c4f4f5048534850) /* "PHSHPOOL" */
#define POOL_CHUNK_BYTES (UINT64_C(1) << 20)

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
    tagged_head_t free;        /* {first free object, tag} */
    tagged_head_t bump;        /* {next fresh offset, end of the chunk} */
    pthread_mutex_t grow_lock; /* robust: adding a chunk */
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
    r = run_create(h, bytes, 1, RUN_POOL, 0, &off);
    if (r < 0)
        return r;
    p = off_ptr(h, off);
    memset(p, 0, sizeof(*p));
    p->chunk.pool = off;
    p->object_size = (uint32_t) object_size;
    p->chunks = off;
    p->bump.s.off = off + ((sizeof(*p) + 63) & ~UINT64_C(63));
    p->bump.s.tag = off + (((bytes + SHM_BLOCK_SIZE - 1) >> SHM_BLOCK_SHIFT) << SHM_BLOCK_SHIFT);
    r = os_mutex_init_robust(&p->grow_lock);
    if (r < 0) {
        (void) run_destroy(h, off, RUN_POOL);
        return r;
    }
    /* release: a process that sees the magic sees the header (pairs with
     * the acquire in pool_at). */
    store_release(&p->magic, POOL_MAGIC);
    *ret_pool = off;
    return 0;
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

    r = pthread_mutex_lock(&p->grow_lock);
    if (r == EOWNERDEAD)
        r = pthread_mutex_consistent(&p->grow_lock);
    if (r)
        return -r;
    cur = head_read(&p->bump);
    if (cur.s.off != seen.s.off || cur.s.tag != seen.s.tag) {
        (void) pthread_mutex_unlock(&p->grow_lock);
        return 0;
    }
    r = run_create(h, bytes, 1, RUN_POOL, 0, &off);
    if (r < 0) {
        (void) pthread_mutex_unlock(&p->grow_lock);
        return r;
    }
    c = off_ptr(h, off);
    c->pool = p->chunk.pool;
    c->next = p->chunks;
    store_relaxed(&p->chunks, off);
    nw.s.off = off + sizeof(*c);
    nw.s.tag = off + (((bytes + SHM_BLOCK_SIZE - 1) >> SHM_BLOCK_SHIFT) << SHM_BLOCK_SHIFT);
    /* Bumpers only advance next within one {next, end} pair, so a CAS
     * from any pair to the new chunk's pair is safe; retry until it lands. */
    while (!cas128(&p->bump, &cur, nw))
        ;
    (void) pthread_mutex_unlock(&p->grow_lock);
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
    uint64_t magic = POOL_MAGIC, chunk;

    /* One destroyer wins. acq_rel: pairs with the creator's release of the
     * magic, and with other destroyers. */
    if (!p || !cas_strong_acq_rel(&p->magic, &magic, 0))
        return -EINVAL;
    chunk = p->chunks;
    while (chunk) {
        struct pool_chunk *c = heap_from_off(h, chunk);
        uint64_t next = c ? c->next : 0;

        (void) run_destroy(h, chunk, RUN_POOL);
        chunk = next;
    }
    return 0;
}
