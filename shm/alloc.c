/* The malloc family. The fast paths pop from and push to the calling
 * thread's cache (tcache.c); everything else is a slow path here.
 *
 * Owner tags (see obj_tag() in internal.h): every object in a cache
 * carries its owner's tag, except the last refill's objects not handed out
 * yet (the bin's `untagged` count), which malloc tags before their pop.
 * free makes the object's tag ours, writing it only when it is not (a
 * shared object, or another owner's): nearly always we allocated it and
 * never shared it, and then the tag line is only read, so a line holding
 * other processes' objects' tags stays shared with them. So malloc's pop
 * of an object that came back through free touches no tag.
 *
 * Fast path of malloc: the tcache lookup (one TLS load, two compares), the
 * class (a table up to 1024 bytes, a clz above), then in the owner's slot:
 * busy = 1, a look at steal, pop the bin's head (its first word links to
 * the next), bump the ops counter, busy = 0. Free reads the block's
 * metadata word for the class, checks that p is an object's start, makes
 * its tag ours and pushes. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#ifdef SHMHEAP_PERCPU
#    include "shm/percpu.h"
#endif

/* Under TSan: an object changes hands through the allocator, possibly
 * through another process TSan cannot see (freed here, reallocated there,
 * sent back, freed again). Each free and malloc acquires and releases the
 * object itself, so the last owner's accesses happen before the next's. */
#if defined(__SANITIZE_THREAD__)
#    define tsan_object_handoff(p) \
        do {                       \
            __tsan_acquire(p);     \
            __tsan_release(p);     \
        } while (0)
#else
#    define tsan_object_handoff(p) ((void) (p))
#endif

static void *large_alloc(struct heap *h, size_t size, size_t align);

/* Makes *tag ours, writing only if it is not (a tag line holds other
 * objects' tags, maybe other processes': a store would take the line from
 * them). */
static inline __attribute__((always_inline)) void tag_ours(uint16_t *tag, uint16_t owner)
{
    if (unlikely(load_relaxed(tag) != owner))
        store_relaxed(tag, owner);
}

static inline struct tcache *tcache_fast(struct heap *h)
{
    struct tcache *tc = tl_last;

    /* tc->h alone identifies the attachment: detach clears tc->h in every
     * thread's entry for it before h is freed. */
    if (likely(tc && tc->h == h))
        return tc;
    return NULL;
}

/* Pops one object of cls from the calling thread's cache, refilling it. */
static __attribute__((noinline)) void *
malloc_class_slow(struct heap *h, struct tcache *tc, unsigned cls)
{
    struct cache_bin *bin = &tc->slot->bins[cls];
    uint64_t w, *p;
    int r;

    tcache_enter(tc);
    w = load_relaxed(&bin->head);
    if (!bin_off(w)) {
        r = tcache_refill(h, tc, cls);
        w = load_relaxed(&bin->head);
        if (r < 0 || !bin_off(w)) {
            tcache_leave(tc);
            errno = r < 0 ? -r : ENOMEM;
            return NULL;
        }
    }
    p = obj_words(h, bin_off(w));
    /* The tag before the pop (see obj_tag() in internal.h): ours already
     * unless the object is one of the last refill's (then a store, as in
     * malloc_pop_untagged). */
    if (bin_count(w) <= load_relaxed(&bin->untagged))
        store_relaxed(obj_tag(h, bin_off(w), cls), tc->owner_tag);
    else
        tag_ours(obj_tag(h, bin_off(w), cls), tc->owner_tag);
    compiler_barrier();
    shm_fault(FAULT_MALLOC_TAGGED);
    store_relaxed(&bin->head, bin_word(p[0], bin_count(w) - 1));
    shm_fault(FAULT_MALLOC_POPPED);
    if (bin_count(w) <= load_relaxed(&bin->untagged))
        store_relaxed(&bin->untagged, bin_count(w) - 1);
    store_relaxed(&tc->slot->ops, load_relaxed(&tc->slot->ops) + 1);
    tcache_leave(tc);
    if (load_relaxed(&h->ctl->trim_gen) != tc->trim_gen_seen ||
        load_relaxed(&tc->slot->ops) >= TCACHE_TICK)
        tcache_tick(h, tc);
    tsan_object_handoff(p);
    return p;
}

/* A tracked attachment's every malloc comes here (its threads' caches are
 * never tl_last, so tcache_fast() fails): the object, then the hook. */
static __attribute__((noinline)) void *
malloc_tracked(struct heap *h, struct tcache *tc, size_t size)
{
    void *p = size > SHM_SMALL_MAX ? large_alloc(h, size, SHM_BLOCK_SIZE)
                                   : malloc_class_slow(h, tc, sizeclass_of_inline(size));

    if (p)
        h->track->alloc(h->track->ctx, p, size);
    return p;
}

static __attribute__((noinline)) void *malloc_slow(struct heap *h, size_t size)
{
    struct tcache *tc;

    if (!h) {
        errno = EINVAL;
        return NULL;
    }
    tc = tcache_get(h);
    if (!tc)
        return NULL;
    if (size == 0)
        size = 1;
    if (unlikely(h->track))
        return malloc_tracked(h, tc, size);
    if (size > SHM_SMALL_MAX)
        return large_alloc(h, size, SHM_BLOCK_SIZE);
    return malloc_class_slow(h, tc, sizeclass_of_inline(size));
}

/* The owner's side of the busy/steal protocol (tcache.c), for the fast
 * paths: true if the slot is ours until slot_leave_fast(); false if a
 * trimmer holds it (leave, and let the slow path wait). acquire: pairs
 * with a trimmer's release of steal (tcache_steal_end), as in
 * tcache_enter(). */
static inline __attribute__((always_inline)) bool slot_enter_fast(struct cache_slot *s)
{
    store_relaxed(&s->busy, 1);
    compiler_barrier();
    return likely(!load_acquire(&s->steal));
}

/* tcache_leave() with the slot already in a register. release: publishes
 * the bin to a trimmer that sees busy == 0 (pairs with tcache_steal_begin's
 * acquire of busy). */
static inline __attribute__((always_inline)) void slot_leave_fast(struct cache_slot *s)
{
    compiler_barrier();
    store_release(&s->busy, 0);
}

/* The class of a small size (1..SHM_SMALL_MAX): sizeclass_of_inline(),
 * with h's table up to 1024 bytes (one load from a register, where the clz
 * takes ten instructions and the shift a branch of its own). */
static inline __attribute__((always_inline)) unsigned class_of_fast(struct heap *h, size_t size)
{
    if (likely(size <= 1024))
        return h->class_by_16[(size + 15) >> 4];
    return sizeclass_of_inline(size);
}

/* Past TCACHE_TICK allocations: the tick, as a tail call that returns p,
 * so that nothing of the fast path lives across a call. */
static __attribute__((noinline)) void *malloc_tick(struct heap *h, struct tcache *tc, void *p)
{
    tcache_tick(h, tc);
    return p;
}

/* The rest of a fast-path pop (the slot entered, the bin not empty) whose
 * object is one of the last refill's, untagged: the tag before the pop
 * (see obj_tag() in internal.h), the pop, the count of untagged objects
 * down to what stays below it. */
static __attribute__((noinline)) void *
malloc_pop_untagged(struct heap *h, struct tcache *tc, unsigned cls)
{
    struct cache_slot *s = tc->slot;
    struct cache_bin *bin = &s->bins[cls];
    uint64_t w = load_relaxed(&bin->head), *p = obj_words(h, bin_off(w));
    uint32_t ops = load_relaxed(&s->ops) + 1;

    /* A store, not tag_ours(): the tag is 0 (the recycler's or the slab's)
     * unless the count is stale, and a load first would fetch the line
     * shared, then again to write it (the line is often another
     * process's: in W4 the consumer's, which freed the bundle). */
    store_relaxed(obj_tag(h, bin_off(w), cls), tc->owner_tag);
    compiler_barrier();
    store_relaxed(&bin->head, bin_word(p[0], bin_count(w) - 1));
    store_relaxed(&bin->untagged, bin_count(w) - 1);
    store_relaxed(&s->ops, ops);
    slot_leave_fast(s);
    tsan_object_handoff(p);
    if (unlikely(ops >= TCACHE_TICK))
        tcache_tick(h, tc);
    return p;
}

void *heap_malloc(struct heap *h, size_t size)
{
    struct tcache *tc = tcache_fast(h);

    if (likely(tc && size - 1 < SHM_SMALL_MAX)) {
        unsigned cls = class_of_fast(h, size);
        struct cache_slot *s = tc->slot;
        struct cache_bin *bin = &s->bins[cls];
        uint64_t w;

#ifdef SHMHEAP_PERCPU
        /* The per-CPU caches first (percpu.h); NULL: the thread cache. */
        if (likely(cls < PCPU_NCLASSES)) {
            void *p = percpu_malloc_fast(h, tc, cls);

            if (likely(p != NULL)) {
                tsan_object_handoff(p);
                return p;
            }
        }
#endif
        if (slot_enter_fast(s) && likely(bin_off(w = load_relaxed(&bin->head)) != 0)) {
            uint64_t *p = obj_words(h, bin_off(w));
            uint32_t ops = load_relaxed(&s->ops) + 1;

            /* One of the last refill's objects (the bottom `untagged` of
             * the list): tagged before the pop, by a tail call (a tag
             * here would cost every malloc its registers). */
            if (unlikely(bin_count(w) <= load_relaxed(&bin->untagged)))
                return malloc_pop_untagged(h, tc, cls);
            /* One store pops (offset and count share the word; the
             * allocation is counted by the tick's own counter). The
             * object carries our tag already. */
            store_relaxed(&bin->head, bin_word(p[0], bin_count(w) - 1));
            store_relaxed(&s->ops, ops);
            slot_leave_fast(s);
            tsan_object_handoff(p);
            if (unlikely(ops >= TCACHE_TICK))
                return malloc_tick(h, tc, p);
            return p;
        }
        slot_leave_fast(s);
        return malloc_class_slow(h, tc, cls);
    }
    return malloc_slow(h, size);
}

/* Looks up the block of a pointer into a mapped segment. Returns the
 * block's metadata word (0 if p is not in a heap segment's data). */
static inline __attribute__((always_inline)) uint64_t
block_of(struct heap *h, const void *p, struct seg_map **ret_m, uint32_t *ret_b)
{
    uint64_t off = ptr_off(h, p), *meta;
    struct seg_map *m;
    uint32_t b;

    if (off >= SHM_VA_SPAN)
        return 0;
    m = &h->segs[off >> SHM_SEG_SHIFT];
    /* acquire: pairs with heap_map_segment's release of meta (heap.c). */
    meta = load_acquire(&m->meta);
    if (!meta)
        return 0;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    if (b >= m->nblocks)
        return 0; /* header blocks are BLK_RESERVED: never a slab or run */
    *ret_m = m;
    *ret_b = b;
    return load_relaxed(&meta[b]);
}

static __attribute__((noinline)) void free_slow(struct heap *h, void *p)
{
    struct tcache *tc;
    struct seg_map *m = NULL;
    struct cache_bin *bin;
    struct slab_geometry g;
    uint32_t b = 0, head;
    uint64_t w, off;
    unsigned cls;

    if (!p || !h)
        return;
    tc = tcache_get(h);
    if (!tc)
        return; /* errno says why: a forked copy of the handle, or no slot */
    if (unlikely(h->track) && h->track->free(h->track->ctx, p))
        return; /* kept a while (its quarantine), freed later */
    w = block_of(h, p, &m, &b);
    switch (meta_state(w)) {
    case BLK_SLAB:
    case BLK_SLAB_TAIL:
        break;
    case BLK_RUN:
        if (meta_kind(w) == RUN_LARGE && ((uintptr_t) p & (SHM_BLOCK_SIZE - 1)) == 0) {
            /* A run's offset; a second free finds no run: a bad free. */
            if (run_destroy(h, ptr_off(h, p), RUN_LARGE) < 0)
                heap_count_bad_free(h);
            return;
        }
        heap_count_bad_free(h);
        return;
    default:
        heap_count_bad_free(h);
        return;
    }
    /* Slow-path checks the fast path skips: p must be an object's start. */
    cls = meta_class(w);
    head = meta_state(w) == BLK_SLAB_TAIL ? b - meta_len(w) : b;
    sizeclass_geometry(cls, &g);
    off = ptr_off(h, p);
    if (((off & SHM_OFF_MASK) - ((uint64_t) head << SHM_BLOCK_SHIFT)) % g.size ||
        ((off & SHM_OFF_MASK) - ((uint64_t) head << SHM_BLOCK_SHIFT)) / g.size >= g.capacity) {
        heap_count_bad_free(h);
        return;
    }
    bin = &tc->slot->bins[cls];
    tsan_object_handoff(p);
    tcache_enter(tc);
    if (bin_off(load_relaxed(&bin->head)) == off) {
        tcache_leave(tc);
        (void) fetch_add_relaxed(&h->ctl->double_frees, 1);
        return;
    }
    if (bin_count(load_relaxed(&bin->head)) >= load_relaxed(&h->bin_cap[cls])) {
        uint32_t n = load_relaxed(&h->bundle_n[cls]);

        tcache_overflow(h, tc, cls);
        /* The fast path of free does not tick; a bundle's worth of frees
         * came through it since this bin last overflowed. Counting them
         * here keeps a thread that only frees sampling its figures. */
        tc->free_tick = tc->free_tick > n ? tc->free_tick - n : 0;
    }
    w = load_relaxed(&bin->head);
    /* Tagged ours, then pushed: a death between the two leaves it out of
     * our cache and tagged ours, which the sweep frees (as its caller
     * asked). */
    tag_ours(obj_tag(h, off, cls), tc->owner_tag);
    compiler_barrier();
    shm_fault(FAULT_FREE_TAGGED);
    obj_words(h, off)[0] = bin_off(w);
    store_relaxed(&bin->head, bin_word(off, bin_count(w) + 1));
    tcache_leave(tc);
    if (load_relaxed(&h->ctl->trim_gen) != tc->trim_gen_seen || tc->free_tick == 0) {
        tc->free_tick = TCACHE_TICK;
        tcache_tick(h, tc);
    }
}

/* The block's metadata word of heap offset off (< SHM_VA_SPAN), or 0 if
 * its segment is not mapped here (nblocks 0) or the block is past its end;
 * *ret_blk: the block's index. The word's address comes from the offset
 * alone (the array is at SHM_META_OFF in every segment), off the chain of
 * dependent loads. The acquire of nblocks pairs with heap_map_segment's
 * release (heap.c), stored once the segment is mapped. */
static inline __attribute__((always_inline)) uint64_t
meta_word_fast(struct heap *h, uint64_t off, uint64_t *ret_blk)
{
    uint64_t blk = (off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT;

    if (unlikely(blk >= load_acquire(&h->segs[off >> SHM_SEG_SHIFT].nblocks)))
        return 0;
    *ret_blk = blk;
    return load_relaxed((uint64_t *) (h->base + (off & ~SHM_OFF_MASK) + SHM_META_OFF) + blk);
}

/* Whether p, rel bytes into its slab of class cls, is an object's start;
 * if so *ret_tag is its owner tag (see struct heap's cls_geo). */
static inline __attribute__((always_inline)) bool
object_tag_fast(struct heap *h, char *p, uint64_t rel, unsigned cls, uint16_t **ret_tag)
{
    const struct cls_geo *g = &h->cls_geo[cls];
    uint64_t idx = (rel * g->div_mul) >> 40;

    *ret_tag = (uint16_t *) (p - rel + g->tags_off) + idx;
    return likely(idx * g->size == rel) && likely(idx < g->capacity);
}

void heap_free(struct heap *h, void *p)
{
    struct tcache *tc = tcache_fast(h); /* NULL for a NULL h */
    uint64_t off = tc ? ptr_off(h, p) : UINT64_MAX, w, blk = 0;

    if (likely(off < SHM_VA_SPAN) &&
        (w = meta_word_fast(h, off, &blk),
         likely(meta_state(w) == BLK_SLAB) || likely(meta_state(w) == BLK_SLAB_TAIL))) {
        unsigned cls = meta_class(w);
        struct cache_slot *s = tc->slot;
        struct cache_bin *bin = &s->bins[cls];
        /* Bytes from the slab's start: a tail block knows its distance. */
        uint64_t rel =
                (off & (SHM_BLOCK_SIZE - 1)) +
                ((uint64_t) (meta_state(w) == BLK_SLAB_TAIL ? meta_len(w) : 0) << SHM_BLOCK_SHIFT);
        uint16_t *tag;
        uint64_t head;
        uint32_t cap;

        if (unlikely(!object_tag_fast(h, p, rel, cls, &tag)))
            goto slow; /* not an object's start: counted there */
        tsan_object_handoff(p);
#ifdef SHMHEAP_PERCPU
        /* The per-CPU caches first (percpu.h): they keep their own tags. */
        if (likely(cls < PCPU_NCLASSES) && likely(percpu_free_fast(h, tc, off, cls)))
            return;
#endif
        /* Ours before the push: a death between the two leaves it out of
         * our cache and tagged ours, which the sweep frees (as its caller
         * asked). Before the slot is entered, so that the tag's load is
         * off the chain from one operation's head word to the next one's;
         * should the slow path come to it, it finds the tag ours. */
        tag_ours(tag, h->owner_tag);
        cap = load_relaxed(&h->bin_cap[cls]);
        /* Settled here, so that h and cls need not stay live across the
         * slot's entry. */
        __asm__("" : "+r"(cap));
        if (slot_enter_fast(s)) {
            head = load_relaxed(&bin->head);
            if (likely(bin_off(head) != off) && likely(bin_count(head) < cap)) {
                /* One store pushes; the free is counted by the count
                 * itself (objects in use = bin net - count). */
                ((uint64_t *) p)[0] = bin_off(head);
                store_relaxed(&bin->head, bin_word(off, bin_count(head) + 1));
                slot_leave_fast(s);
                /* No tick here: malloc ticks, and a thread that only frees
                 * reaches the slow path (a full bin) often enough. */
                return;
            }
        }
        slot_leave_fast(s);
    }
slow:
    free_slow(h, p);
}

void *heap_calloc(struct heap *h, size_t n, size_t size)
{
    size_t total;
    void *p;

    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    p = heap_malloc(h, total);
    if (p)
        memset(p, 0, total);
    return p;
}

size_t heap_usable_size(struct heap *h, const void *p)
{
    struct seg_map *m;
    uint32_t b;
    uint64_t w;

    if (!h || !p)
        return 0;
    w = block_of(h, p, &m, &b);
    switch (meta_state(w)) {
    case BLK_SLAB:
    case BLK_SLAB_TAIL:
        return sizeclass_size(meta_class(w));
    case BLK_RUN:
        if (meta_kind(w) == RUN_LARGE)
            return (size_t) meta_len(w) << SHM_BLOCK_SHIFT;
        return 0;
    default:
        return 0;
    }
}

void *heap_realloc(struct heap *h, void *p, size_t size)
{
    size_t old;
    void *q;

    if (!h) {
        errno = EINVAL;
        return NULL;
    }
    if (!p)
        return heap_malloc(h, size);
    if (size == 0) {
        heap_free(h, p);
        return NULL;
    }
    old = heap_usable_size(h, p);
    if (old == 0) {
        heap_count_bad_free(h);
        errno = EINVAL;
        return NULL;
    }
    /* In place while the current class or run holds the new size and is
     * not more than twice too big for it. */
    if (size <= old &&
        (old <= SHM_SMALL_MAX ? sizeclass_size(sizeclass_of_inline(size)) == old : size > old / 2))
        return p;
    q = heap_malloc(h, size);
    if (!q)
        return NULL;
    memcpy(q, p, size < old ? size : old);
    heap_free(h, p);
    return q;
}

/* An aligned object for a tracked attachment is told to its hook. */
static void *aligned_done(struct heap *h, void *p, size_t size)
{
    if (unlikely(h->track) && p)
        h->track->alloc(h->track->ctx, p, size);
    return p;
}

void *heap_aligned_alloc(struct heap *h, size_t align, size_t size)
{
    struct tcache *tc;
    unsigned cls;

    if (!h || align == 0 || (align & (align - 1))) {
        errno = EINVAL;
        return NULL;
    }
    if (align <= 16)
        return heap_malloc(h, size);
    if (size == 0)
        size = 1;
    if (size > SIZE_MAX - align) {
        errno = ENOMEM;
        return NULL;
    }
    size = (size + align - 1) & ~(align - 1);
    if (size <= SHM_SMALL_MAX && align < SHM_BLOCK_SIZE) {
        /* Objects sit at multiples of their size from a block-aligned slab
         * start, so a class whose size is a multiple of align is aligned. */
        for (cls = sizeclass_of_inline(size); cls < SHM_NCLASSES; cls++)
            if (sizeclass_size(cls) % align == 0)
                break;
        if (cls < SHM_NCLASSES) {
            tc = tcache_get(h);
            if (!tc)
                return NULL;
            return aligned_done(h, malloc_class_slow(h, tc, cls), size);
        }
    }
    if (!tcache_get(h))
        return NULL;
    return aligned_done(h, large_alloc(h, size, align < SHM_BLOCK_SIZE ? SHM_BLOCK_SIZE : align),
                        size);
}

/* ---- large objects: runs of whole blocks ---- */

static void *large_alloc(struct heap *h, size_t size, size_t align)
{
    uint64_t off;
    int r;

    if (size > SHM_SEG_SPAN / 2 || align > (UINT64_C(1) << 30)) {
        errno = ENOMEM;
        return NULL;
    }
    r = run_create(h, size, (uint32_t) (align >> SHM_BLOCK_SHIFT), RUN_LARGE, h->owner_tag, &off);
    if (r < 0) {
        errno = -r;
        return NULL;
    }
    return off_ptr(h, off);
}

void heap_set_track(struct heap *h, const struct heap_track *track)
{
    /* Before the first allocation: no thread has a cache of h yet, so none
     * is anyone's tl_last (tcache_get checks track before setting it). */
    if (h)
        h->track = track;
}
