/* Unit tests for shm/owned.c: objects private to the attachment that
 * allocated them, and freed when it is gone.
 *
 * tags:    heap_malloc & co. write the attachment's tag into every object
 *          (small: the slab's u16 per object, in every block of a
 *          multi-block slab; large: the run's metadata word); heap_to_off,
 *          on the start or the middle of an object, and heap_free clear it;
 *          arena and pool allocations carry none. The tags are read here
 *          from the slab geometry and the metadata, not through owned.c.
 * death:   a forked child with its own attachment and client id allocates
 *          small objects of mixed sizes (calloc, aligned, realloc too) and
 *          large ones, shares a third of them, frees a few, then is
 *          SIGKILLed, exits without freeing, or detaches and exits. The
 *          parent's heap_reclaim_dead / heap_reclaim_owned /
 *          heap_reclaim_owned_gone frees exactly the private objects (the
 *          figures return to the parent's bytes plus the shared ones), the
 *          shared ones keep their patterns and are freed by the parent, and
 *          the heap verifies with its object count. Children also die
 *          holding the segment lock inside a cache operation (fault points)
 *          and, at random moments, inside malloc and free.
 * detach:  a second attachment in this process detaches: only its private
 *          objects are freed (more large ones than a sweep batch, objects
 *          in segments the sweeper never mapped; not its arenas or pools);
 *          live attachments (here or in a live child) and our own are
 *          never swept.
 * reuse:   a second sweep frees nothing; the owner entry is claimed again,
 *          and its new objects are tracked like the first ones.
 *          A dead child sharing a live process's client id takes only its
 *          own caches; a sweeper that dies mid-sweep is taken over. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/unit/heap_fixture.h"
#include "tests/unit/suites.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

/* tag_at(): p is in no slab object and no run. */
#define NO_TAG (-1)

static void get_stats(struct heap *h, struct heap_stats *st)
{
    int r = heap_stats(h, st);

    ck_assert_msg(r == 0, "heap_stats: %s", strerror(-r));
}

/* ---- reading tags without owned.c ---- */

/* p's offset, without heap_to_off() (which shares the object). */
static uint64_t raw_off(struct heap *h, const void *p)
{
    return (uint64_t) ((const char *) p - h->base);
}

/* The metadata word of the head block (slab or run) of the block holding
 * off, and that head's offset; 0 (BLK_FREE) for a free block or an offset
 * outside the mapped segments' data. */
static uint64_t head_word(struct heap *h, uint64_t off, uint64_t *ret_head)
{
    uint32_t i = (uint32_t) (off >> SHM_SEG_SHIFT), b;
    struct seg_map *m;
    uint64_t w;

    if (i == 0 || i >= h->nmapped || !h->segs[i].meta)
        return 0;
    m = &h->segs[i];
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    if (b < m->hdr->first_block || b >= m->nblocks)
        return 0;
    w = __atomic_load_n(&m->meta[b], __ATOMIC_RELAXED);
    if (meta_state(w) == BLK_SLAB_TAIL || meta_state(w) == BLK_RUN_TAIL) {
        b -= meta_len(w);
        w = __atomic_load_n(&m->meta[b], __ATOMIC_RELAXED);
    }
    *ret_head = (off & ~SHM_OFF_MASK) | (uint64_t) b << SHM_BLOCK_SHIFT;
    return w;
}

/* The owner tag of the object holding offset off: a slab object's u16, or
 * a run's metadata owner bits (0 for arenas and pools); NO_TAG otherwise. */
static int tag_at_off(struct heap *h, uint64_t off)
{
    uint64_t head = 0, w = head_word(h, off, &head);
    struct slab_geometry g;
    const uint16_t *tags;

    if (meta_state(w) == BLK_RUN)
        return meta_owner(w);
    if (meta_state(w) != BLK_SLAB || meta_class(w) >= SHM_NCLASSES)
        return NO_TAG;
    sizeclass_geometry(meta_class(w), &g);
    if (off - head >= (uint64_t) g.capacity * g.size)
        return NO_TAG;
    tags = (const uint16_t *) (h->base + head + g.tags_off);
    return __atomic_load_n(&tags[(off - head) / g.size], __ATOMIC_RELAXED);
}

static int tag_at(struct heap *h, const void *p)
{
    return tag_at_off(h, raw_off(h, p));
}

/* True if the object at off is free: its slab's bitmap says so, or its
 * blocks are free (the slab or run was released). */
static bool obj_is_free(struct heap *h, uint64_t off)
{
    uint64_t head = 0, w = head_word(h, off, &head), idx;
    struct slab_geometry g;
    const uint64_t *bits;

    if (meta_state(w) == BLK_FREE)
        return true;
    if (meta_state(w) != BLK_SLAB)
        return false;
    sizeclass_geometry(meta_class(w), &g);
    idx = (off - head) / g.size;
    bits = (const uint64_t *) (h->base + head + g.bitmap_off);
    return (bits[idx / 64] >> (idx % 64)) & 1;
}

/* Objects of every segment by tag: those tagged `tag`, those tagged with
 * any other nonzero tag, and free slab objects that carry a tag at all
 * (there must be none). */
struct census {
    uint64_t small, small_bytes;
    uint64_t large, large_bytes;
    uint64_t others; /* tagged by another owner */
    uint64_t free_tagged;
};

static void take_census(struct heap *h, uint16_t tag, struct census *ret)
{
    memset(ret, 0, sizeof(*ret));
    (void) heap_sync_segments(h);
    for (uint32_t i = 1; i < h->nmapped; i++) {
        struct seg_map *m = &h->segs[i];

        if (!m->meta)
            continue;
        for (uint32_t b = m->hdr->first_block; b < m->nblocks; b++) {
            uint64_t w = m->meta[b],
                     slab = (uint64_t) i << SHM_SEG_SHIFT | (uint64_t) b << SHM_BLOCK_SHIFT;
            struct slab_geometry g;
            const uint16_t *tags;
            const uint64_t *bits;

            if (meta_state(w) == BLK_RUN && meta_kind(w) == RUN_LARGE && meta_owner(w)) {
                if (meta_owner(w) == tag) {
                    ret->large++;
                    ret->large_bytes += (uint64_t) meta_len(w) << SHM_BLOCK_SHIFT;
                } else {
                    ret->others++;
                }
                continue;
            }
            if (meta_state(w) != BLK_SLAB || meta_class(w) >= SHM_NCLASSES)
                continue;
            sizeclass_geometry(meta_class(w), &g);
            tags = (const uint16_t *) (h->base + slab + g.tags_off);
            bits = (const uint64_t *) (h->base + slab + g.bitmap_off);
            for (uint32_t k = 0; k < g.capacity; k++) {
                uint16_t t = __atomic_load_n(&tags[k], __ATOMIC_RELAXED);

                if (!t)
                    continue;
                if ((bits[k / 64] >> (k % 64)) & 1)
                    ret->free_tagged++;
                else if (t == tag) {
                    ret->small++;
                    ret->small_bytes += g.size;
                } else {
                    ret->others++;
                }
            }
        }
    }
}

static struct owner_entry *owner_of(struct heap *h, const struct heap *who)
{
    return &heap_ctl(h)->owners[who->owner_index];
}

static void assert_reclaim(const struct heap_owned_reclaim *res,
                           uint32_t owners,
                           uint64_t objects,
                           uint64_t bytes,
                           const char *what)
{
    ck_assert_msg(res->owners == owners && res->objects == objects && res->bytes == bytes,
                  "%s: swept %" PRIu32 " owners, %" PRIu64 " objects, %" PRIu64
                  " bytes; expected %" PRIu32 ", %" PRIu64 ", %" PRIu64,
                  what, res->owners, res->objects, res->bytes, owners, objects, bytes);
}

/* heap_verify with its exact object count. */
static void verify_counted(struct heap *h, const char *what)
{
    bool counts = false;

    ck_assert_msg(mp_verify(h, &counts), "%s: heap_verify (see stderr)", what);
    ck_assert_msg(counts, "%s: heap_verify skipped the object count", what);
}

/* ---- tags ---- */

/* Every object of every class, multi-block ones (20000 bytes) included,
 * carries our tag from malloc on; heap_to_off on its middle or its last
 * byte clears its tag and no neighbour's; free clears it; the next malloc
 * of it sets it again. */
START_TEST(owned_tags_small)
{
    struct heap *h = th.h;
    struct owner_entry *e = owner_of(h, h);
    unsigned multi = 0;
    struct heap_stats st;
    struct census cs;

    ck_assert_uint_ne(h->owner_tag, 0);
    ck_assert_uint_eq(h->owner_tag, h->owner_index + 1);
    ck_assert_uint_eq(e->state, OWNER_LIVE);
    ck_assert_uint_eq(e->pid, (uint32_t) getpid());
    ck_assert_uint_eq(e->client_id, 1);
    ck_assert_uint_eq(h->cls_geo[sizeclass_of(20000)].tag_mul, 0); /* its slabs span blocks */

    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        size_t lo = cls ? sizeclass_size(cls - 1) + 1 : 1, size = (lo + sizeclass_size(cls)) / 2;
        struct slab_geometry g;
        uint32_t n, in_tail = 0;
        void **p;

        sizeclass_geometry(cls, &g);
        ck_assert_uint_eq(sizeclass_of(size), cls);
        /* Two slabs' worth and one more: every object index, and for a
         * multi-block class objects in tail blocks. */
        n = 2 * g.capacity + 1;
        p = calloc(n, sizeof(*p));
        ck_assert_ptr_nonnull(p);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t head = 0;

            p[i] = heap_malloc(h, size);
            if (!p[i])
                ck_abort_msg("malloc(%zu): %s", size, strerror(errno));
            if (tag_at(h, p[i]) != h->owner_tag)
                ck_abort_msg("size %zu, object %u: tag %d, the attachment's is %u", size, i,
                             tag_at(h, p[i]), h->owner_tag);
            (void) head_word(h, raw_off(h, p[i]), &head);
            if (raw_off(h, p[i]) - head >= SHM_BLOCK_SIZE)
                in_tail++;
        }
        if (g.blocks > 1) {
            ck_assert_msg(in_tail > 0, "size %zu: no object in a tail block", size);
            multi++;
        }
        heap_thread_flush(h); /* freed objects in our cache still carry our tag */
        take_census(h, h->owner_tag, &cs);
        if (cs.small != n || cs.small_bytes != (uint64_t) n * g.size)
            ck_abort_msg("size %zu: %" PRIu64 " objects (%" PRIu64 " bytes) tagged, %u made", size,
                         cs.small, cs.small_bytes, n);

        /* Share every third object through a pointer into its middle (or
         * its last byte): that object only loses its tag. */
        for (uint32_t i = 0; i < n; i += 3) {
            size_t at = i % 2 ? g.size - 1 : g.size / 2;
            uint64_t off = heap_to_off(h, (char *) p[i] + at);

            if (off != raw_off(h, p[i]) + at || heap_from_off(h, off - at) != p[i])
                ck_abort_msg("size %zu, object %u: heap_to_off(p + %zu) = %#" PRIx64, size, i, at,
                             off);
        }
        for (uint32_t i = 0; i < n; i++) {
            int want = i % 3 == 0 ? 0 : h->owner_tag;

            if (tag_at(h, p[i]) != want)
                ck_abort_msg("size %zu, object %u after sharing: tag %d, expected %d", size, i,
                             tag_at(h, p[i]), want);
        }
        /* Sharing twice changes nothing. */
        ck_assert_uint_eq(heap_to_off(h, p[0]), raw_off(h, p[0]));
        ck_assert_int_eq(tag_at(h, p[0]), 0);
        ck_assert_int_eq(tag_at(h, p[1]), h->owner_tag);

        /* Free: a freed object carries our tag while it sits in our cache
         * (free tags the shared ones too: every object in a cache carries
         * its owner's tag) and loses it when it leaves the cache. */
        for (uint32_t i = 0; i < n; i++) {
            int was = tag_at(h, p[i]);

            heap_free(h, p[i]);
            if (tag_at(h, p[i]) != 0 && tag_at(h, p[i]) != h->owner_tag)
                ck_abort_msg("size %zu, object %u: tag %d after free, %d before", size, i,
                             tag_at(h, p[i]), was);
        }
        heap_thread_flush(h);
        take_census(h, h->owner_tag, &cs);
        ck_assert_uint_eq(cs.small + cs.large + cs.others + cs.free_tagged, 0);
        /* The cache hands the freed objects out again, tagged again. */
        for (uint32_t i = 0; i < 8; i++) {
            p[i] = heap_malloc(h, size);
            ck_assert_ptr_nonnull(p[i]);
            ck_assert_int_eq(tag_at(h, p[i]), h->owner_tag);
        }
        for (uint32_t i = 0; i < 8; i++)
            heap_free(h, p[i]);
        free(p);
    }
    ck_assert_uint_gt(multi, 0);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    th_verify(h);
}
END_TEST

/* A shared object freed into our cache takes our tag there (every cached
 * object carries its owner's), and malloc hands it out again tagged ours;
 * so does every object of a bin that held shared and private ones mixed,
 * through the bin's overflows, for every kind of class, the multi-block
 * ones (20000 bytes) included. */
START_TEST(owned_tags_shared_then_freed_here)
{
    static const size_t sizes[] = {48, 700, 20000};
    enum { N = 300 };
    struct heap *h = th.h;
    struct heap_stats st;
    void **p = calloc(N, sizeof(*p));

    ck_assert_ptr_nonnull(p);
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        void *q;

        /* One object, shared, freed, allocated again: the same one, ours. */
        q = heap_malloc(h, sizes[k]);
        ck_assert_ptr_nonnull(q);
        (void) heap_to_off(h, q);
        ck_assert_int_eq(tag_at(h, q), 0);
        heap_free(h, q);
#ifndef SHMHEAP_PERCPU
        /* In our thread cache: ours (a per-CPU cache keeps its own tags). */
        ck_assert_int_eq(tag_at(h, q), h->owner_tag);
#endif
        ck_assert_ptr_eq(heap_malloc(h, sizes[k]), q);
        ck_assert_int_eq(tag_at(h, q), h->owner_tag);
        heap_free(h, q);

        /* Many, half of them shared, freed in an order that mixes them and
         * overflows the bin: every one comes back tagged ours. */
        for (unsigned i = 0; i < N; i++) {
            p[i] = heap_malloc(h, sizes[k]);
            ck_assert_ptr_nonnull(p[i]);
            if (i % 2)
                (void) heap_to_off(h, p[i]);
        }
        for (unsigned i = 0; i < N; i++)
            heap_free(h, p[(i * 7) % N]);
        for (unsigned i = 0; i < N; i++) {
            p[i] = heap_malloc(h, sizes[k]);
            ck_assert_ptr_nonnull(p[i]);
            if (tag_at(h, p[i]) != h->owner_tag)
                ck_abort_msg("size %zu, object %u: tag %d, ours is %u", sizes[k], i,
                             tag_at(h, p[i]), h->owner_tag);
        }
        for (unsigned i = 0; i < N; i++)
            heap_free(h, p[i]);
    }
    free(p);
    heap_thread_flush(h);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    th_verify(h);
}
END_TEST

/* calloc, aligned_alloc (small and large) and realloc tag what they return;
 * a realloc that moves leaves the old object untagged. */
START_TEST(owned_tags_other_entry_points)
{
    struct heap *h = th.h;
    void *c = heap_calloc(h, 3, 100), *a64 = heap_aligned_alloc(h, 64, 100);
    void *a4k = heap_aligned_alloc(h, 4096, 5000), *abig = heap_aligned_alloc(h, MiB, 200 * KiB);
    void *r = heap_malloc(h, 50), *old;
    struct census cs;
    uint64_t head = 0;

    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(a64);
    ck_assert_ptr_nonnull(a4k);
    ck_assert_ptr_nonnull(abig);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq((uintptr_t) a64 % 64, 0);
    ck_assert_uint_eq((uintptr_t) a4k % 4096, 0);
    ck_assert_uint_eq(raw_off(h, abig) % MiB, 0);
    ck_assert_int_eq(tag_at(h, c), h->owner_tag);
    ck_assert_int_eq(tag_at(h, a64), h->owner_tag);
    ck_assert_int_eq(tag_at(h, a4k), h->owner_tag);
    ck_assert_int_eq(tag_at(h, abig), h->owner_tag);
    ck_assert_int_eq(tag_at(h, r), h->owner_tag);
    /* Within its class (64) it stays in place, tagged. */
    ck_assert_ptr_eq(heap_realloc(h, r, 60), r);
    ck_assert_int_eq(tag_at(h, r), h->owner_tag);
    /* Growing moves: the new object is ours, the old one has no owner. */
    old = r;
    r = heap_realloc(h, r, 3000);
    ck_assert_ptr_nonnull(r);
    ck_assert_ptr_ne(r, old);
    ck_assert_int_eq(tag_at(h, r), h->owner_tag);
    heap_thread_flush(h); /* the old one leaves our cache, and its tag with it */
    ck_assert_int_le(tag_at(h, old), 0);
    /* Small to large, large to larger: the run carries our tag. */
    old = r;
    r = heap_realloc(h, r, 100 * KiB);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(meta_kind(head_word(h, raw_off(h, r), &head)), RUN_LARGE);
    ck_assert_int_eq(tag_at(h, r), h->owner_tag);
    heap_thread_flush(h); /* the old one leaves our cache, and its tag with it */
    ck_assert_int_le(tag_at(h, old), 0);
    r = heap_realloc(h, r, 700 * KiB);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(tag_at(h, r), h->owner_tag);

    take_census(h, h->owner_tag, &cs);
    ck_assert_uint_eq(cs.small, 3);
    ck_assert_uint_eq(cs.large, 2);
    ck_assert_uint_eq(cs.others + cs.free_tagged, 0);
    heap_free(h, c);
    heap_free(h, a64);
    heap_free(h, a4k);
    heap_free(h, abig);
    heap_free(h, r);
    heap_thread_flush(h);
    take_census(h, h->owner_tag, &cs);
    ck_assert_uint_eq(cs.small + cs.large + cs.others + cs.free_tagged, 0);
    th_verify(h);
}
END_TEST

/* A large object's metadata word carries our tag; heap_to_off on a pointer
 * into one of its tail blocks clears it and nothing else of the word. */
START_TEST(owned_tags_large)
{
    struct heap *h = th.h;
    const uint64_t owner_bits = UINT64_C(0xffff) << 16;
    char *p = heap_malloc(h, MiB), *q;
    uint64_t head = 0, w, w2, off;
    struct heap_stats st;

    ck_assert_ptr_nonnull(p);
    th_fill_pattern(p, MiB, 5);
    w = head_word(h, raw_off(h, p), &head);
    ck_assert_uint_eq(head, raw_off(h, p));
    ck_assert_uint_eq(meta_state(w), BLK_RUN);
    ck_assert_uint_eq(meta_kind(w), RUN_LARGE);
    ck_assert_uint_eq(meta_len(w), MiB >> SHM_BLOCK_SHIFT);
    ck_assert_uint_eq(meta_owner(w), h->owner_tag);
    /* A pointer into the 11th block names the run's head too. */
    ck_assert_int_eq(tag_at(h, p + 700 * KiB), h->owner_tag);

    off = heap_to_off(h, p + 700 * KiB);
    ck_assert_uint_eq(off, raw_off(h, p) + 700 * KiB);
    w2 = head_word(h, raw_off(h, p), &head);
    ck_assert_uint_eq(meta_owner(w2), 0);
    ck_assert_uint_eq(w2 & ~owner_bits, w & ~owner_bits);
    ck_assert_uint_eq(heap_usable_size(h, p), MiB);
    ck_assert_uint_eq(th_check_pattern(p, MiB, 5), MiB);
    /* Again: nothing changes. */
    ck_assert_uint_eq(heap_to_off(h, p), raw_off(h, p));
    ck_assert_uint_eq(head_word(h, raw_off(h, p), &head), w2);

    /* A private one, freed: its blocks are free, no tag lingers. */
    q = heap_malloc(h, MiB);
    ck_assert_ptr_nonnull(q);
    ck_assert_int_eq(tag_at(h, q), h->owner_tag);
    off = raw_off(h, q);
    heap_free(h, q);
    ck_assert_uint_eq(meta_state(head_word(h, off, &head)), BLK_FREE);
    heap_free(h, p);
    ck_assert_uint_eq(meta_state(head_word(h, raw_off(h, p), &head)), BLK_FREE);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.bad_frees, 0);
    th_verify(h);
}
END_TEST

/* Arena and pool allocations carry no tag: their runs' owner bits are 0,
 * they are in no slab, and heap_to_off on them changes nothing. */
START_TEST(owned_tags_not_on_arenas_pools)
{
    struct heap *h = th.h;
    uint64_t arena, pool, head = 0, w;
    void *ap[16], *pp[16];
    struct census cs;

    ck_assert_int_eq(heap_arena_create(h, 256 * KiB, 0, &arena), 0);
    ck_assert_int_eq(heap_pool_create(h, 48, &pool), 0);
    for (unsigned i = 0; i < 16; i++) {
        ap[i] = heap_arena_alloc(h, arena, 100 + i * 50, 16);
        pp[i] = heap_pool_alloc(h, pool);
        ck_assert_ptr_nonnull(ap[i]);
        ck_assert_ptr_nonnull(pp[i]);
        w = head_word(h, raw_off(h, ap[i]), &head);
        ck_assert_uint_eq(meta_state(w), BLK_RUN);
        ck_assert_uint_eq(meta_kind(w), RUN_ARENA);
        ck_assert_uint_eq(meta_owner(w), 0);
        w = head_word(h, raw_off(h, pp[i]), &head);
        ck_assert_uint_eq(meta_state(w), BLK_RUN);
        ck_assert_uint_eq(meta_kind(w), RUN_POOL);
        ck_assert_uint_eq(meta_owner(w), 0);
    }
    /* Nothing in the heap carries our tag. */
    take_census(h, h->owner_tag, &cs);
    ck_assert_uint_eq(cs.small + cs.large + cs.others + cs.free_tagged, 0);
    /* Sharing them is a plain offset and writes nothing. */
    w = head_word(h, raw_off(h, ap[3]), &head);
    ck_assert_uint_eq(heap_to_off(h, ap[3]), raw_off(h, ap[3]));
    ck_assert_uint_eq(head_word(h, raw_off(h, ap[3]), &head), w);
    w = head_word(h, raw_off(h, pp[3]), &head);
    ck_assert_uint_eq(heap_to_off(h, pp[3]), raw_off(h, pp[3]));
    ck_assert_uint_eq(head_word(h, raw_off(h, pp[3]), &head), w);
    for (unsigned i = 0; i < 16; i++)
        ck_assert_int_eq(heap_pool_free(h, pool, pp[i]), 0);
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    ck_assert_int_eq(heap_arena_destroy(h, arena), 0);
    th_verify(h);
}
END_TEST

/* ---- a child that dies ---- */

enum death_how {
    DIE_KILL,        /* raise(SIGKILL), the second thread holding its cache */
    DIE_EXIT,        /* _exit(0): no free, no detach */
    DIE_DETACH_EXIT, /* heap_detach, then _exit(0) */
};

struct dobj {
    uint64_t off;    /* the object's start */
    uint64_t size;   /* requested */
    uint64_t usable; /* heap_usable_size */
    uint64_t seed;
    uint32_t shared; /* heap_to_off was called on it */
    uint32_t live;   /* not freed by the child */
};

#define CHILD_SMALL 72u
#define CHILD_LARGE 5u
#define THREAD_OBJS 30u
#define CHILD_OBJS  (CHILD_SMALL + CHILD_LARGE)
#define MAX_OBJS    (CHILD_OBJS + THREAD_OBJS)

static const size_t large_sizes[CHILD_LARGE] = {40000, 100 * KiB, 300 * KiB, MiB, 2 * MiB + 12345};

struct death_ctx {
    struct test_heap *t;
    uint64_t client_id;
    int how;
    unsigned threads; /* 1 or 2 */
    uint32_t ready;   /* atomic: the second thread has made its objects */
    uint16_t tag;     /* the child's owner tag */
    uint32_t owner_index;
    struct dobj objs[MAX_OBJS];
};

static size_t child_size(uint64_t *rng, unsigned i)
{
    if (i % 10 == 0)
        return 20000;
    if (i % 4 == 0)
        return 1 + test_rand(rng) % SHM_SMALL_MAX;
    return 1 + test_rand(rng) % 2048;
}

static void *child_alloc(struct heap *h, size_t size, unsigned i)
{
    void *q;

    switch (i % 6) {
    case 1:
        return heap_calloc(h, 1, size);
    case 2:
        return heap_aligned_alloc(h, 64, size);
    case 3:
        q = heap_malloc(h, size / 2 + 1);
        if (!q)
            return NULL;
        th_fill_pattern(q, size / 2 + 1, 999);
        return heap_realloc(h, q, size);
    default:
        return heap_malloc(h, size);
    }
}

/* Makes objects [first, first + n) of c->objs in the child: every third is
 * shared (through a pointer into its middle for odd ones), every fifth is
 * freed again. */
static void child_objects(struct death_ctx *c, struct heap *h, unsigned first, unsigned n)
{
    uint64_t rng = 0x5eed + first;

    for (unsigned k = 0; k < n; k++) {
        unsigned i = first + k;
        struct dobj *o = &c->objs[i];
        size_t size = i >= CHILD_SMALL && i < CHILD_OBJS ? large_sizes[i - CHILD_SMALL]
                                                         : child_size(&rng, i);
        char *p = child_alloc(h, size, i);

        MP_REQUIRE(p != NULL, "alloc %u (%zu bytes): %s", i, size, strerror(errno));
        MP_REQUIRE(tag_at(h, p) == h->owner_tag, "object %u: tag %d, ours is %u", i, tag_at(h, p),
                   h->owner_tag);
        o->off = raw_off(h, p);
        o->size = size;
        o->usable = heap_usable_size(h, p);
        o->seed = c->client_id << 16 | i;
        o->live = 1;
        th_fill_pattern(p, size, o->seed);
        if (i % 3 == 0) {
            size_t at = i % 2 ? size / 2 : 0;

            MP_REQUIRE(heap_to_off(h, p + at) == o->off + at, "object %u: heap_to_off", i);
            MP_REQUIRE(tag_at(h, p) == 0, "object %u: tag %d after heap_to_off", i, tag_at(h, p));
            o->shared = 1;
        }
        if (i % 5 == 4) {
            heap_free(h, p);
            o->live = 0;
        }
    }
}

static void *child_thread(void *arg)
{
    struct death_ctx *c = arg;
    struct heap *h = c->t->h; /* the child's attachment, set before the thread starts */

    child_objects(c, h, CHILD_OBJS, THREAD_OBJS);
    __atomic_store_n(&c->ready, 1, __ATOMIC_RELEASE);
    for (;;)
        pause(); /* holds its cache until the process dies */
    return NULL;
}

static int death_child(void *arg, unsigned idx)
{
    struct death_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, c->client_id);
    pthread_t tid;

    (void) idx;
    MP_REQUIRE(h->owner_tag != 0, "the child has no owner tag");
    c->tag = h->owner_tag;
    c->owner_index = h->owner_index;
    c->t->h = h; /* our copy of the parent's struct: the parent's handle is not ours */
    child_objects(c, h, 0, CHILD_OBJS);
    if (c->threads > 1) {
        MP_REQUIRE(pthread_create(&tid, NULL, child_thread, c) == 0, "pthread_create");
        while (!__atomic_load_n(&c->ready, __ATOMIC_ACQUIRE))
            mp_sleep_ms(1);
    }
    switch (c->how) {
    case DIE_KILL:
        (void) raise(SIGKILL);
        return 4;
    case DIE_DETACH_EXIT:
        heap_detach(h);
        return 0;
    default:
        return 0; /* mp_fork _exit()s: nothing freed, nothing detached */
    }
}

/* What the child left: private and shared objects and their bytes. */
struct left {
    uint64_t priv, priv_bytes, shared, shared_bytes;
};

static void count_left(const struct death_ctx *c, unsigned n, struct left *ret)
{
    memset(ret, 0, sizeof(*ret));
    for (unsigned i = 0; i < n; i++) {
        const struct dobj *o = &c->objs[i];

        if (!o->live)
            continue;
        if (o->shared) {
            ret->shared++;
            ret->shared_bytes += o->usable;
        } else {
            ret->priv++;
            ret->priv_bytes += o->usable;
        }
    }
}

enum reclaim_how {
    BY_DEAD,        /* heap_reclaim_dead */
    BY_OWNED,       /* heap_reclaim_owned(client_id, process_gone = true) */
    BY_OWNED_ALIVE, /* heap_reclaim_owned(client_id, process_gone = false): detached */
    BY_GONE,        /* heap_reclaim_owned_gone */
};

static void run_death(int how, unsigned threads, int reclaim)
{
    struct test_heap *t = &th;
    struct heap *h = t->h;
    struct death_ctx *c = mp_shared_alloc(sizeof(*c));
    unsigned nobjs = threads > 1 ? MAX_OBJS : CHILD_OBJS;
    struct heap_stats before, dead, after;
    struct heap_owned_reclaim res;
    struct census cs;
    struct left left;
    void *mine[12];
    uint64_t head = 0;
    pid_t pid;

    /* The parent holds objects of the child's classes (so sweeps meet
     * slabs shared with a survivor) and a large one. */
    for (unsigned i = 0; i < 12; i++) {
        mine[i] = heap_malloc(h, i == 11 ? 200 * KiB : i % 2 ? 20000 : 64 + i * 100);
        ck_assert_ptr_nonnull(mine[i]);
        th_fill_pattern(mine[i], 64, 7000 + i);
    }
    get_stats(h, &before);
    ck_assert_uint_gt(before.bytes_in_use, 0);

    c->t = t;
    c->client_id = 4242;
    c->how = how;
    c->threads = threads;
    pid = mp_fork(death_child, c, 0);
    if (how == DIE_KILL)
        mp_wait_signaled(pid, SIGKILL, "child");
    else
        mp_wait_ok(pid, "child");
    ck_assert_uint_ne(c->tag, 0);
    ck_assert_uint_ne(c->tag, h->owner_tag);
    count_left(c, nobjs, &left);
    ck_assert_uint_gt(left.priv, 0);
    ck_assert_uint_gt(left.shared, 0);

    /* Before the reclaim: the dead child's private objects are in use and
     * carry its tag; the heap is consistent, its count exact. */
    ck_assert_uint_eq(heap_ctl(h)->owners[c->owner_index].state,
                      how == DIE_DETACH_EXIT ? OWNER_DETACHED : OWNER_LIVE);
    take_census(h, c->tag, &cs);
    /* ... and so do the objects it freed into its caches, until those go. */
    ck_assert_uint_ge(cs.small + cs.large, left.priv);
    ck_assert_uint_ge(cs.small_bytes + cs.large_bytes, left.priv_bytes);
    ck_assert_uint_eq(cs.free_tagged, 0);
    get_stats(h, &dead);
    ck_assert_uint_eq(dead.bytes_in_use, before.bytes_in_use + left.priv_bytes + left.shared_bytes);
    ck_assert_uint_eq(dead.reclaimed_objects, 0);
    verify_counted(h, "before the reclaim");

    switch (reclaim) {
    case BY_DEAD:
        ck_assert_int_eq(heap_reclaim_dead(h), (int) threads);
        break;
    case BY_OWNED:
        ck_assert_int_eq(heap_reclaim_owned(h, c->client_id, true, &res), 0);
        assert_reclaim(&res, 1, left.priv, left.priv_bytes, "heap_reclaim_owned");
        break;
    case BY_OWNED_ALIVE:
        ck_assert_int_eq(heap_reclaim_owned(h, c->client_id, false, &res), 0);
        assert_reclaim(&res, 1, left.priv, left.priv_bytes, "heap_reclaim_owned");
        break;
    default:
        ck_assert_int_eq(heap_reclaim_owned_gone(h, &res), 0);
        assert_reclaim(&res, 1, left.priv, left.priv_bytes, "heap_reclaim_owned_gone");
        break;
    }

    /* After: exactly the private objects went; the dead child's slots too. */
    get_stats(h, &after);
    ck_assert_uint_eq(after.reclaimed_objects, left.priv);
    ck_assert_uint_eq(after.reclaimed_bytes, left.priv_bytes);
    ck_assert_uint_eq(after.bytes_in_use, before.bytes_in_use + left.shared_bytes);
    ck_assert_uint_eq(after.slots_in_use, before.slots_in_use);
    ck_assert_uint_eq(after.allocs - after.frees, before.allocs - before.frees + left.shared);
    ck_assert_uint_eq(after.bad_frees + after.double_frees + after.lost_objects, 0);
    ck_assert_uint_eq(heap_ctl(h)->owners[c->owner_index].state, OWNER_FREE);
    ck_assert_uint_eq(heap_ctl(h)->owners[c->owner_index].pid, 0);
    ck_assert_uint_eq(heap_ctl(h)->owners[c->owner_index].client_id, 0);
    heap_thread_flush(h); /* our cached objects carry our tag too */
    take_census(h, c->tag, &cs);
    ck_assert_uint_eq(cs.small + cs.large + cs.free_tagged, 0);
    ck_assert_uint_eq(cs.others, 12); /* ours */
    take_census(h, h->owner_tag, &cs);
    ck_assert_uint_eq(cs.small + cs.large, 12); /* ours, untouched */
    ck_assert_uint_eq(cs.others + cs.free_tagged, 0);
    for (unsigned i = 0; i < nobjs; i++) {
        const struct dobj *o = &c->objs[i];

        if (o->live && !o->shared && !obj_is_free(h, o->off))
            ck_abort_msg("private object %u (%" PRIu64 " bytes at %#" PRIx64 ") still in use", i,
                         o->size, o->off);
    }
    for (unsigned i = 0; i < 12; i++) {
        ck_assert_int_eq(tag_at(h, mine[i]), h->owner_tag);
        ck_assert_uint_eq(th_check_pattern(mine[i], 64, 7000 + i), 64);
    }
    verify_counted(h, "after the reclaim");

    /* Nothing more to sweep, by any entry point. */
    ck_assert_int_eq(heap_reclaim_owned(h, c->client_id, true, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "second heap_reclaim_owned");
    ck_assert_int_eq(heap_reclaim_owned_gone(h, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "second heap_reclaim_owned_gone");
    ck_assert_int_eq(heap_reclaim_dead(h), 0);
    get_stats(h, &dead);
    ck_assert_uint_eq(dead.reclaimed_objects, left.priv);
    ck_assert_uint_eq(dead.bytes_in_use, after.bytes_in_use);

    /* The shared objects are intact, and ours to free. */
    for (unsigned i = 0; i < nobjs; i++) {
        const struct dobj *o = &c->objs[i];
        char *p;

        if (!o->live || !o->shared)
            continue;
        p = heap_from_off(h, o->off);
        ck_assert_ptr_nonnull(p);
        if (th_check_pattern(p, o->size, o->seed) != o->size)
            ck_abort_msg("shared object %u (%" PRIu64 " bytes) differs at byte %zu", i, o->size,
                         th_check_pattern(p, o->size, o->seed));
        ck_assert_uint_eq(heap_usable_size(h, p), o->usable);
        ck_assert_int_eq(tag_at(h, p), 0);
        ck_assert_uint_eq(meta_state(head_word(h, o->off, &head)),
                          o->size > SHM_SMALL_MAX ? BLK_RUN : BLK_SLAB);
        heap_free(h, p);
    }
    get_stats(h, &after);
    ck_assert_uint_eq(after.bytes_in_use, before.bytes_in_use);
    for (unsigned i = 0; i < 12; i++)
        heap_free(h, mine[i]);
    get_stats(h, &after);
    ck_assert_uint_eq(after.bytes_in_use, 0);
    ck_assert_uint_eq(after.allocs, after.frees);
    ck_assert_uint_eq(after.bad_frees + after.double_frees + after.lost_objects, 0);
    verify_counted(h, "at the end");
    /* Every object, the dead child's included, back in the blocks. */
    ck_assert_int_eq(heap_trim(h, 0, NULL), 0);
    ck_assert_uint_eq(mp_blocks_not_free(h), 0);
    mp_shared_free(c, sizeof(*c));
}

START_TEST(owned_death_kill_reclaim_dead)
{
    run_death(DIE_KILL, 2, BY_DEAD);
}
END_TEST

START_TEST(owned_death_kill_reclaim_owned)
{
    run_death(DIE_KILL, 2, BY_OWNED);
}
END_TEST

START_TEST(owned_death_exit_reclaim_gone)
{
    run_death(DIE_EXIT, 1, BY_GONE);
}
END_TEST

START_TEST(owned_death_exit_reclaim_dead)
{
    run_death(DIE_EXIT, 2, BY_DEAD);
}
END_TEST

START_TEST(owned_death_detach_reclaim_owned)
{
    run_death(DIE_DETACH_EXIT, 1, BY_OWNED_ALIVE);
}
END_TEST

/* ---- a child that dies inside a cache operation ---- */

struct mid_ctx {
    struct death_ctx d;
    int point;   /* enum shm_fault_point */
    size_t size; /* of a class nobody uses: an empty bin, no slab */
};

static int mid_child(void *arg, unsigned idx)
{
    struct mid_ctx *c = arg;
    struct heap *h = th_attach_child(c->d.t, c->d.client_id);
    unsigned cls = sizeclass_of(c->size);
    struct heap_stats st;
    void *p[10];

    (void) idx;
    MP_REQUIRE(h->owner_tag != 0, "the child has no owner tag");
    c->d.tag = h->owner_tag;
    c->d.owner_index = h->owner_index;
    child_objects(&c->d, h, 0, CHILD_OBJS);
    MP_REQUIRE(heap_stats(h, &st) == 0, "heap_stats");
    MP_REQUIRE(st.classes[cls].in_use + st.classes[cls].cached + st.classes[cls].in_recycler == 0,
               "class %u (%zu bytes) is in use", cls, c->size);
    switch (c->point) {
    case FAULT_RETURN_MID:
        for (unsigned i = 0; i < 10; i++) {
            p[i] = heap_malloc(h, c->size);
            MP_REQUIRE(p[i] != NULL, "heap_malloc(%zu)", c->size);
        }
        for (unsigned i = 0; i < 10; i++)
            heap_free(h, p[i]);
        /* The recycler takes nothing (cap 0): the flush returns the bins'
         * objects to their slabs under the lock. */
        shm_fault_at = c->point;
        heap_thread_flush(h);
        break;
    default:
        shm_fault_at = c->point;
        (void) heap_malloc(h, c->size);
        break;
    }
    fprintf(stderr, "mid child: fault point %d was not reached\n", c->point);
    return 3;
}

/* The child dies holding its segment's lock, its slot busy. The reclaim
 * recovers the lock, drains the slot (clearing its bin heads' tags) and
 * frees the child's private objects, and only those. */
static void run_death_mid(int point)
{
    struct mid_ctx *c = mp_shared_alloc(sizeof(*c));
    struct heap_stats before, after;
    struct shm_config cfg;
    struct census cs;
    struct left left;
    struct heap *h;
    void *mine[4];
    char what[64];

    th_destroy(&th);
    th_config(&cfg, UINT64_C(256) << 20);
    cfg.recycler_cap_bundles = 0;
    cfg.retain_empty_blocks = 0;
    th_create(&th, &cfg, SHM_PAGES_OFF);
    h = th.h;
    for (unsigned i = 0; i < 4; i++) {
        mine[i] = heap_malloc(h, 700 + i);
        ck_assert_ptr_nonnull(mine[i]);
    }
    get_stats(h, &before);

    c->d.t = &th;
    c->d.client_id = 4343;
    c->point = point;
    c->size = 0;
    /* The child uses classes up to 32 KiB at random: find one it cannot
     * have touched (its requests are rounded to at most 16 bytes over). */
    for (unsigned cls = sizeclass_of(2049); cls < SHM_NCLASSES && !c->size; cls++) {
        uint64_t rng = 0x5eed;
        bool used = false;

        for (unsigned i = 0; i < CHILD_SMALL; i++) {
            size_t sz = child_size(&rng, i);

            used |= sizeclass_of(sz) == cls || sizeclass_of(sz / 2 + 1) == cls ||
                    sizeclass_of(sz + 64 < SHM_SMALL_MAX ? sz + 64 : sz) == cls;
        }
        if (!used && sizeclass_size(cls) != 20000)
            c->size = sizeclass_size(cls);
    }
    ck_assert_uint_ne(c->size, 0);
    (void) snprintf(what, sizeof(what), "fault point %d, size %zu", point, c->size);
    mp_wait_signaled(mp_fork(mid_child, c, 0), SIGKILL, what);
    count_left(&c->d, CHILD_OBJS, &left);
    take_census(h, c->d.tag, &cs);
    ck_assert_uint_ge(cs.small + cs.large, left.priv); /* its cached objects too */

    ck_assert_int_eq(heap_reclaim_dead(h), 1);
    /* It did die inside a cache operation. */
    ck_assert_uint_eq(heap_ctl(h)->deaths_mid_op, 1);
    get_stats(h, &after);
    ck_assert_msg(after.reclaimed_objects == left.priv && after.reclaimed_bytes == left.priv_bytes,
                  "%s: %" PRIu64 " objects (%" PRIu64 " bytes) reclaimed, %" PRIu64 " (%" PRIu64
                  ") were private",
                  what, after.reclaimed_objects, after.reclaimed_bytes, left.priv, left.priv_bytes);
    ck_assert_uint_eq(after.bytes_in_use, before.bytes_in_use + left.shared_bytes);
    ck_assert_uint_eq(after.bad_frees + after.double_frees + after.lost_objects, 0);
    ck_assert_uint_eq(after.slots_in_use, before.slots_in_use);
    ck_assert_uint_eq(heap_ctl(h)->owners[c->d.owner_index].state, OWNER_FREE);
    take_census(h, c->d.tag, &cs);
    ck_assert_uint_eq(cs.small + cs.large + cs.free_tagged, 0);
    for (unsigned i = 0; i < CHILD_OBJS; i++) {
        const struct dobj *o = &c->d.objs[i];

        if (o->live && !o->shared && !obj_is_free(h, o->off))
            ck_abort_msg("%s: private object %u still in use", what, i);
        if (o->live && o->shared) {
            char *p = heap_from_off(h, o->off);

            ck_assert_uint_eq(th_check_pattern(p, o->size, o->seed), o->size);
            heap_free(h, p);
        }
    }
    ck_assert_msg(mp_verify(h, NULL), "%s: heap_verify (see stderr)", what);
    for (unsigned i = 0; i < 4; i++)
        heap_free(h, mine[i]);
    get_stats(h, &after);
    ck_assert_uint_eq(after.bytes_in_use, 0);
    ck_assert_int_eq(heap_trim(h, 0, NULL), 0);
    ck_assert_msg(mp_blocks_not_free(h) == 0, "%s: %" PRIu64 " blocks not free", what,
                  mp_blocks_not_free(h));
    mp_shared_free(c, sizeof(*c));
}

START_TEST(owned_death_mid_take)
{
    run_death_mid(FAULT_TAKE_MID);
}
END_TEST

START_TEST(owned_death_mid_return)
{
    run_death_mid(FAULT_RETURN_MID);
}
END_TEST

START_TEST(owned_death_mid_carve)
{
    run_death_mid(FAULT_CARVE_MID);
}
END_TEST

/* ---- children killed at random inside malloc and free ---- */

/* malloc writes the tag before its pop and free clears it after its push:
 * a thread killed between the two leaves a tagged object at its bin's
 * head. No fault point sits there, so children that do nothing but malloc
 * and free (keeping a few objects) are killed at random moments; after
 * each death the reclaim must free each private object once, leave no
 * cached object free in its slab (heap_verify) and hand out no object
 * twice. */
struct storm_ctx {
    struct test_heap *t;
    uint32_t started; /* atomic: the child is in its loop */
};

static int storm_child(void *arg, unsigned idx)
{
    struct storm_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 2000 + idx);
    void *keep[64] = {0};
    uint64_t rng = 77 + idx;

    for (uint64_t i = 0;; i++) {
        unsigned k = (unsigned) (test_rand(&rng) % 64);
        void *p = heap_malloc(h, 64);

        MP_REQUIRE(p != NULL, "heap_malloc");
        heap_free(h, p);
        if (i % 16 == 0) {
            heap_free(h, keep[k]);
            keep[k] = heap_malloc(h, 64 + (i & 1) * 200);
        }
        if (i == 0)
            __atomic_store_n(&c->started, 1, __ATOMIC_RELEASE);
    }
    return 0;
}

START_TEST(owned_death_storm)
{
    struct heap *h = th.h;
    struct storm_ctx *c = mp_shared_alloc(sizeof(*c));
    unsigned rounds = (unsigned) test_scaled(24, 3);
    uint64_t rng = 4711, mid = 0;
    struct census cs;
    struct heap_stats st;
    void **p = calloc(4096, sizeof(*p));

    ck_assert_ptr_nonnull(p);
    c->t = &th;
    for (unsigned round = 0; round < rounds; round++) {
        unsigned spins = 0;
        pid_t pid;

        __atomic_store_n(&c->started, 0, __ATOMIC_RELAXED);
        pid = mp_fork(storm_child, c, round);
        while (!__atomic_load_n(&c->started, __ATOMIC_ACQUIRE) && spins++ < 10000)
            mp_sleep_us(100);
        mp_sleep_us((unsigned) (test_rand(&rng) % 3000));
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        mp_wait_signaled(pid, SIGKILL, "storm child");
        ck_assert_msg(c->started, "round %u: the child never started", round);
        ck_assert_int_eq(heap_reclaim_dead(h), 1);
        take_census(h, 0, &cs);
        /* Nobody but us is left, and we hold nothing. */
        ck_assert_msg(cs.others + cs.free_tagged == 0,
                      "round %u: %" PRIu64 " objects still tagged, %" PRIu64 " free but tagged",
                      round, cs.others, cs.free_tagged);
        ck_assert_msg(mp_verify(h, NULL), "round %u: heap_verify (see stderr)", round);
    }
    mid = heap_ctl(h)->deaths_mid_op;
    get_stats(h, &st);
    ck_assert_uint_eq(st.double_frees + st.bad_frees, 0);
    /* Every 64-byte object the children left in caches and recyclers
     * comes out once. */
    for (unsigned i = 0; i < 4096; i++) {
        p[i] = heap_malloc(h, 64);
        ck_assert_ptr_nonnull(p[i]);
        *(uint64_t *) p[i] = i;
    }
    for (unsigned i = 0; i < 4096; i++)
        if (*(uint64_t *) p[i] != i)
            ck_abort_msg("object %u (%p) was handed out twice", i, p[i]);
    for (unsigned i = 0; i < 4096; i++)
        heap_free(h, p[i]);
    free(p);
    ck_assert_msg(mp_verify(h, NULL), "at the end: heap_verify (see stderr)");
    /* Not an assertion (the kills are random): how often one hit a cache
     * operation. */
    if (getenv("CK_VERBOSITY") && strcmp(getenv("CK_VERBOSITY"), "verbose") == 0)
        fprintf(stderr, "owned_death_storm: %" PRIu64 " of %u deaths inside a cache operation\n",
                mid, rounds);
    mp_shared_free(c, sizeof(*c));
}
END_TEST

/* ---- detached and live attachments ---- */

struct local_obj {
    char *p;
    uint64_t off;
    size_t size;
    uint64_t usable;
    bool shared;
};

struct local_sum {
    uint64_t priv, priv_bytes; /* private objects */
    uint64_t used;             /* usable bytes of all */
};

/* n objects through h (the last two large), every third shared. False if
 * an allocation fails (no ck_assert: children use it too). */
static bool local_objects(struct heap *h, struct local_obj *o, unsigned n, struct local_sum *ret)
{
    uint64_t rng = 99 + n;

    memset(ret, 0, sizeof(*ret));
    for (unsigned i = 0; i < n; i++) {
        o[i].size = i + 2 >= n ? 150 * KiB + i : child_size(&rng, i);
        o[i].p = heap_malloc(h, o[i].size);
        if (!o[i].p)
            return false;
        th_fill_pattern(o[i].p, o[i].size, 500 + i);
        o[i].off = raw_off(h, o[i].p);
        o[i].usable = heap_usable_size(h, o[i].p);
        o[i].shared = i % 3 == 0;
        ret->used += o[i].usable;
        if (o[i].shared) {
            if (heap_to_off(h, o[i].p) != o[i].off)
                return false;
        } else {
            ret->priv++;
            ret->priv_bytes += o[i].usable;
        }
    }
    /* The objects left in the calling thread's cache carry h's tag too
     * (every cached object does): flushed, so that exactly the objects
     * made here carry it. */
    heap_thread_flush(h);
    return true;
}

/* Checks objects o[0..n) through h (any attachment): pattern intact, tag
 * as expected (0 for shared ones). Returns the first bad index or n. */
static unsigned local_check(struct heap *h, const struct local_obj *o, unsigned n, uint16_t tag)
{
    for (unsigned i = 0; i < n; i++) {
        const char *p = heap_from_off(h, o[i].off);

        if (!p || th_check_pattern(p, o[i].size, 500 + i) != o[i].size ||
            tag_at(h, p) != (o[i].shared ? 0 : tag))
            return i;
    }
    return n;
}

#define LOCAL_N 40u

/* A second attachment of this process detaches: heap_reclaim_owned(.., false)
 * frees its private objects only. A third one, live, of another client id,
 * is never swept, by any entry point, and neither is our own. */
START_TEST(owned_detached_attachment)
{
    struct heap *h = th.h, *h2, *h3;
    struct local_obj o2[LOCAL_N], o3[LOCAL_N], mine[LOCAL_N];
    struct local_sum s2, s3, s1;
    struct heap_owned_reclaim res;
    struct heap_stats st;
    struct census cs;
    uint16_t tag2, tag3;
    uint32_t index2, index3;

    ck_assert_int_eq(heap_local_attach(th.local, 2, &h2), 0);
    ck_assert_int_eq(heap_local_attach(th.local, 3, &h3), 0);
    tag2 = h2->owner_tag;
    tag3 = h3->owner_tag;
    index2 = h2->owner_index;
    index3 = h3->owner_index;
    ck_assert_uint_ne(tag2, 0);
    ck_assert_uint_ne(tag3, 0);
    ck_assert_uint_ne(tag2, h->owner_tag);
    ck_assert_uint_ne(tag3, h->owner_tag);
    ck_assert_uint_ne(tag2, tag3);
    ck_assert(local_objects(h, mine, LOCAL_N, &s1));
    ck_assert(local_objects(h2, o2, LOCAL_N, &s2));
    ck_assert(local_objects(h3, o3, LOCAL_N, &s3));
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, s1.used + s2.used + s3.used);

    /* All live: nothing is swept, whoever asks. Our own entry neither,
     * even when we claim our process is gone. */
    ck_assert_int_eq(heap_reclaim_owned(h, 2, false, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "live h2");
    ck_assert_int_eq(heap_reclaim_owned_gone(h, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "all live: gone");
    ck_assert_int_eq(heap_reclaim_dead(h), 0);
    ck_assert_int_eq(heap_reclaim_owned(h, 1, true, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "our own client id");
    ck_assert_int_eq(heap_reclaim_owned(h2, 2, true, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "h2 sweeping itself");
    take_census(h, h->owner_tag, &cs);
    ck_assert_uint_eq(cs.small + cs.large, s1.priv);
    ck_assert_uint_eq(cs.others, s2.priv + s3.priv);
    ck_assert_uint_eq(cs.free_tagged, 0);
    get_stats(h, &st);
    ck_assert_uint_eq(st.reclaimed_objects, 0);
    ck_assert_uint_eq(st.bytes_in_use, s1.used + s2.used + s3.used);

    heap_detach(h2);
    ck_assert_uint_eq(heap_ctl(h)->owners[index2].state, OWNER_DETACHED);
    take_census(h, tag2, &cs);
    ck_assert_uint_eq(cs.small + cs.large, s2.priv);
    ck_assert_uint_eq(cs.small_bytes + cs.large_bytes, s2.priv_bytes);
    /* Another client id: h2 is not it. */
    ck_assert_int_eq(heap_reclaim_owned(h, 3, false, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "client 3, live");
    ck_assert_int_eq(heap_reclaim_owned(h, 99, true, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "client 99, none");
    ck_assert_int_eq(heap_reclaim_owned(h, 2, false, &res), 0);
    assert_reclaim(&res, 1, s2.priv, s2.priv_bytes, "detached h2");

    get_stats(h, &st);
    ck_assert_uint_eq(st.reclaimed_objects, s2.priv);
    ck_assert_uint_eq(st.reclaimed_bytes, s2.priv_bytes);
    ck_assert_uint_eq(st.bytes_in_use, s1.used + (s2.used - s2.priv_bytes) + s3.used);
    ck_assert_uint_eq(heap_ctl(h)->owners[index2].state, OWNER_FREE);
    ck_assert_uint_eq(heap_ctl(h)->owners[index3].state, OWNER_LIVE);
    take_census(h, tag2, &cs);
    ck_assert_uint_eq(cs.small + cs.large + cs.free_tagged, 0);
    take_census(h, tag3, &cs);
    ck_assert_uint_eq(cs.small + cs.large, s3.priv);
    for (unsigned i = 0; i < LOCAL_N; i++)
        if (!o2[i].shared && !obj_is_free(h, o2[i].off))
            ck_abort_msg("h2's private object %u is still in use", i);
    verify_counted(h, "after the sweep");

    /* h2's shared objects, h3's and ours: intact, tags as they were. */
    ck_assert_uint_eq(local_check(h, mine, LOCAL_N, h->owner_tag), LOCAL_N);
    ck_assert_uint_eq(local_check(h3, o3, LOCAL_N, tag3), LOCAL_N);
    for (unsigned i = 0; i < LOCAL_N; i++) {
        if (!o2[i].shared)
            continue;
        ck_assert_uint_eq(th_check_pattern(heap_from_off(h, o2[i].off), o2[i].size, 500 + i),
                          o2[i].size);
        heap_free(h, heap_from_off(h, o2[i].off));
    }
    for (unsigned i = 0; i < LOCAL_N; i++) {
        heap_free(h3, o3[i].p);
        heap_free(h, mine[i].p);
    }
    heap_detach(h3);
    /* h3 freed everything before it went: its sweep finds nothing. */
    ck_assert_int_eq(heap_reclaim_owned_gone(h, &res), 0);
    assert_reclaim(&res, 1, 0, 0, "detached h3, nothing left");
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    ck_assert_uint_eq(st.reclaimed_objects, s2.priv);
    verify_counted(h, "at the end");
}
END_TEST

/* More private large objects than one sweep batch (owned.c collects 256
 * under the lock, frees them after it), between private small ones. */
START_TEST(owned_detached_many_large)
{
    enum { NLARGE = 600, NSMALL = 300 };
    struct heap *h = th.h, *h2;
    uint64_t bytes = 0, *loff = calloc(NLARGE, sizeof(*loff));
    struct heap_owned_reclaim res;
    struct heap_stats st;
    struct census cs;
    uint16_t tag2;

    ck_assert_ptr_nonnull(loff);
    ck_assert_int_eq(heap_local_attach(th.local, 2, &h2), 0);
    tag2 = h2->owner_tag;
    for (unsigned i = 0; i < NLARGE; i++) {
        void *p = heap_malloc(h2, 40000 + i % 3 * SHM_BLOCK_SIZE), *q;

        ck_assert_ptr_nonnull(p);
        loff[i] = raw_off(h2, p);
        bytes += heap_usable_size(h2, p);
        if (i < NSMALL) {
            q = heap_malloc(h2, 24 + i % 200);
            ck_assert_ptr_nonnull(q);
            bytes += heap_usable_size(h2, q);
        }
    }
    heap_thread_flush(h2); /* its cached objects carry its tag too */
    take_census(h, tag2, &cs);
    ck_assert_uint_eq(cs.large, NLARGE);
    ck_assert_uint_eq(cs.small, NSMALL);
    heap_detach(h2);
    ck_assert_int_eq(heap_reclaim_owned(h, 2, false, &res), 0);
    assert_reclaim(&res, 1, NLARGE + NSMALL, bytes, "600 large, 300 small");
    for (unsigned i = 0; i < NLARGE; i++)
        if (!obj_is_free(h, loff[i]))
            ck_abort_msg("large object %u still in use", i);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    verify_counted(h, "after the sweep");
    ck_assert_int_eq(heap_trim(h, 0, NULL), 0);
    ck_assert_uint_eq(mp_blocks_not_free(h), 0);
    free(loff);
}
END_TEST

/* Private objects in three segments, two of which the sweeping handle has
 * never mapped: the sweep finds them all. */
START_TEST(owned_detached_segments)
{
    struct heap *h, *h2;
    struct shm_config cfg;
    struct heap_owned_reclaim res;
    struct heap_stats st;
    uint64_t bytes = 0, off[3];
    uint32_t nmapped;

    th_destroy(&th);
    th_config(&cfg, 16 * MiB);
    th_create(&th, &cfg, SHM_PAGES_OFF);
    h = th.h;
    nmapped = h->nmapped;
    ck_assert_int_eq(heap_local_attach(th.local, 2, &h2), 0);
    for (unsigned i = 0; i < 3; i++) {
        /* 12 MiB each: one per segment. */
        char *p = heap_malloc(h2, 12 * MiB), *q = heap_malloc(h2, 100 + i);

        ck_assert_ptr_nonnull(p);
        ck_assert_ptr_nonnull(q);
        off[i] = raw_off(h2, p);
        bytes += heap_usable_size(h2, p) + heap_usable_size(h2, q);
    }
    ck_assert_uint_ne(off[0] >> SHM_SEG_SHIFT, off[2] >> SHM_SEG_SHIFT);
    ck_assert_uint_eq(h->nmapped, nmapped); /* h has not seen the new segments */
    heap_detach(h2);
    ck_assert_int_eq(heap_reclaim_owned(h, 2, false, &res), 0);
    assert_reclaim(&res, 1, 6, bytes, "objects in three segments");
    for (unsigned i = 0; i < 3; i++)
        ck_assert(obj_is_free(h, off[i]));
    get_stats(h, &st);
    ck_assert_uint_ge(st.nsegments, 3);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    verify_counted(h, "after the sweep");
}
END_TEST

/* An attachment's arena and pool are not its private objects: its sweep
 * leaves them (and what they hold) to whoever knows their offsets. */
START_TEST(owned_detached_arena_pool_survive)
{
    struct heap *h = th.h, *h2;
    uint64_t arena, pool, aoff[16], poff[16], small_usable;
    struct heap_owned_reclaim res;
    struct arena_stats as;
    char *small, *large;

    ck_assert_int_eq(heap_local_attach(th.local, 2, &h2), 0);
    ck_assert_int_eq(heap_arena_create(h2, 256 * KiB, 0, &arena), 0);
    ck_assert_int_eq(heap_pool_create(h2, 48, &pool), 0);
    for (unsigned i = 0; i < 16; i++) {
        void *a = heap_arena_alloc(h2, arena, 1000, 16), *p = heap_pool_alloc(h2, pool);

        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(p);
        th_fill_pattern(a, 1000, 100 + i);
        th_fill_pattern(p, 48, 200 + i);
        aoff[i] = raw_off(h2, a);
        poff[i] = raw_off(h2, p);
    }
    small = heap_malloc(h2, 3000);
    large = heap_malloc(h2, 300 * KiB);
    ck_assert_ptr_nonnull(small);
    ck_assert_ptr_nonnull(large);
    small_usable = heap_usable_size(h2, small);
    heap_detach(h2);

    ck_assert_int_eq(heap_reclaim_owned(h, 2, false, &res), 0);
    assert_reclaim(&res, 1, 2, small_usable + 320 * KiB, "detached h2");
    ck_assert_int_eq(heap_arena_stats(h, arena, &as), 0);
    ck_assert_uint_eq(as.count, 16);
    for (unsigned i = 0; i < 16; i++) {
        ck_assert_uint_eq(th_check_pattern(heap_from_off(h, aoff[i]), 1000, 100 + i), 1000);
        ck_assert_uint_eq(th_check_pattern(heap_from_off(h, poff[i]), 48, 200 + i), 48);
        ck_assert_int_eq(heap_pool_free(h, pool, heap_from_off(h, poff[i])), 0);
    }
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    ck_assert_int_eq(heap_arena_destroy(h, arena), 0);
    verify_counted(h, "after the sweep");
    ck_assert_int_eq(heap_trim(h, 0, NULL), 0);
    ck_assert_uint_eq(mp_blocks_not_free(h), 0);
}
END_TEST

/* A live child process: neither heap_reclaim_dead, heap_reclaim_owned_gone
 * nor heap_reclaim_owned(.., false) touches its private objects; once it
 * has freed them and detached, its sweep finds nothing. */
struct live_ctx {
    struct test_heap *t;
    int ready[2], go[2];
    uint16_t tag;
    uint32_t owner_index;
    struct local_sum sum;
    struct local_obj o[LOCAL_N];
};

static int live_child(void *arg, unsigned idx)
{
    struct live_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 7);
    struct heap_owned_reclaim res;
    char b = 0;
    unsigned bad;

    (void) idx;
    (void) close(c->ready[0]);
    (void) close(c->go[1]);
    c->tag = h->owner_tag;
    c->owner_index = h->owner_index;
    MP_REQUIRE(h->owner_tag != 0, "no owner tag");
    /* The parent's handle, inherited through fork: detaching our copy
     * must not mark the parent's entry detached, and a sweep from here
     * must leave the live parent's private objects alone. */
    heap_detach(c->t->h);
    MP_REQUIRE(heap_reclaim_owned_gone(h, &res) == 0 && res.owners == 0 && res.objects == 0,
               "the child swept %" PRIu64 " objects of a live parent", res.objects);
    MP_REQUIRE(heap_reclaim_owned(h, 1, false, &res) == 0 && res.owners == 0,
               "the child swept the live parent by its client id");
    MP_REQUIRE(local_objects(h, c->o, LOCAL_N, &c->sum), "local_objects: %s", strerror(errno));
    MP_REQUIRE(write(c->ready[1], "r", 1) == 1, "write: %s", strerror(errno));
    MP_REQUIRE(read(c->go[0], &b, 1) == 1, "read: %s", strerror(errno));
    bad = local_check(h, c->o, LOCAL_N, h->owner_tag);
    MP_REQUIRE(bad == LOCAL_N, "object %u changed while the parent swept", bad);
    for (unsigned i = 0; i < LOCAL_N; i++)
        heap_free(h, c->o[i].p);
    MP_REQUIRE(th_verify_quiet(h), "heap_verify");
    heap_detach(h);
    return 0;
}

START_TEST(owned_live_child_not_swept)
{
    struct heap *h = th.h;
    struct live_ctx *c = mp_shared_alloc(sizeof(*c));
    struct heap_owned_reclaim res;
    struct heap_stats st;
    struct census cs;
    struct local_obj mine[LOCAL_N];
    struct local_sum s1;
    char b = 0;
    pid_t pid;

    ck_assert(local_objects(h, mine, LOCAL_N, &s1));
    c->t = &th;
    ck_assert_int_eq(pipe(c->ready), 0);
    ck_assert_int_eq(pipe(c->go), 0);
    pid = mp_fork(live_child, c, 0);
    (void) close(c->ready[1]);
    (void) close(c->go[0]);
    ck_assert_msg(read(c->ready[0], &b, 1) == 1, "the child died before it was ready");

    ck_assert_uint_eq(heap_ctl(h)->owners[c->owner_index].state, OWNER_LIVE);
    ck_assert_int_eq(heap_reclaim_dead(h), 0);
    ck_assert_int_eq(heap_reclaim_owned_gone(h, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "live child: gone");
    ck_assert_int_eq(heap_reclaim_owned(h, 7, false, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "live child: client 7");
    take_census(h, c->tag, &cs);
    ck_assert_uint_eq(cs.small + cs.large, c->sum.priv);
    ck_assert_uint_eq(cs.small_bytes + cs.large_bytes, c->sum.priv_bytes);
    get_stats(h, &st);
    ck_assert_uint_eq(st.reclaimed_objects, 0);
    ck_assert_uint_eq(st.bytes_in_use, s1.used + c->sum.used);
    ck_assert_uint_eq(heap_ctl(h)->owners[c->owner_index].state, OWNER_LIVE);
    ck_assert_uint_eq(heap_ctl(h)->owners[h->owner_index].state, OWNER_LIVE);
    ck_assert_uint_eq(local_check(h, mine, LOCAL_N, h->owner_tag), LOCAL_N);

    ck_assert_int_eq(write(c->go[1], "g", 1), 1);
    mp_wait_ok(pid, "live child");
    ck_assert_uint_eq(heap_ctl(h)->owners[c->owner_index].state, OWNER_DETACHED);
    ck_assert_int_eq(heap_reclaim_owned(h, 7, false, &res), 0);
    assert_reclaim(&res, 1, 0, 0, "the child, detached");
    ck_assert_uint_eq(heap_ctl(h)->owners[h->owner_index].state, OWNER_LIVE);
    ck_assert_uint_eq(local_check(h, mine, LOCAL_N, h->owner_tag), LOCAL_N);
    take_census(h, h->owner_tag, &cs);
    ck_assert_uint_eq(cs.small + cs.large, s1.priv);
    for (unsigned i = 0; i < LOCAL_N; i++)
        heap_free(h, mine[i].p);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.reclaimed_objects, 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    verify_counted(h, "at the end");
    (void) close(c->ready[0]);
    (void) close(c->go[1]);
    mp_shared_free(c, sizeof(*c));
}
END_TEST

/* ---- a client id that two processes share ---- */

/* A child with the same client id as a live process (here: the parent's
 * 1) dies with private objects. heap_reclaim_dead frees them, and takes
 * no cache from the live process: our slot stays ours, our cache intact. */
struct same_id_ctx {
    struct test_heap *t;
    uint64_t client_id;
    uint64_t priv, priv_bytes;
};

static int same_id_child(void *arg, unsigned idx)
{
    struct same_id_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, c->client_id);

    (void) idx;
    for (unsigned i = 0; i < 20; i++) {
        void *p = heap_malloc(h, 100 + i * 10);

        MP_REQUIRE(p != NULL, "heap_malloc");
        c->priv++;
        c->priv_bytes += heap_usable_size(h, p);
    }
    (void) raise(SIGKILL);
    return 4;
}

START_TEST(owned_death_shared_client_id)
{
    struct heap *h = th.h;
    struct same_id_ctx *c = mp_shared_alloc(sizeof(*c));
    struct heap_stats before, after;
    void *p[16];

    /* Our cache holds objects of a few classes. */
    for (unsigned i = 0; i < 16; i++)
        p[i] = heap_malloc(h, 48 + i * 16);
    for (unsigned i = 0; i < 16; i++)
        heap_free(h, p[i]);
    get_stats(h, &before);
    ck_assert_uint_eq(before.slots_in_use, 1);
    ck_assert_uint_gt(mp_stats_cached(&before), 0);

    c->t = &th;
    c->client_id = 1; /* ours too */
    mp_wait_signaled(mp_fork(same_id_child, c, 0), SIGKILL, "child");
    ck_assert_int_eq(heap_reclaim_dead(h), 1);
    get_stats(h, &after);
    ck_assert_uint_eq(after.reclaimed_objects, c->priv);
    ck_assert_msg(after.slots_in_use == 1,
                  "heap_reclaim_dead left %" PRIu32 " slots in use: it took ours",
                  after.slots_in_use);
    ck_assert_msg(mp_stats_cached(&after) == mp_stats_cached(&before),
                  "our cache held %" PRIu64 " objects, now %" PRIu64, mp_stats_cached(&before),
                  mp_stats_cached(&after));
    verify_counted(h, "after the reclaim");
    mp_shared_free(c, sizeof(*c));
}
END_TEST

/* A sweeper that dies in the middle of a sweep (here: while it waits for
 * the segment lock, which we hold) must not take the owner's objects with
 * it: once it is gone, another sweep frees them. */
struct sweeper_ctx {
    struct test_heap *t;
};

static int sweeper_child(void *arg, unsigned idx)
{
    struct sweeper_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 8);
    struct heap_owned_reclaim res;

    (void) idx;
    (void) heap_reclaim_owned(h, 2, false, &res); /* blocks on the segment lock */
    return 5;
}

START_TEST(owned_sweeper_dies)
{
    struct heap *h = th.h, *h2;
    struct sweeper_ctx *c = mp_shared_alloc(sizeof(*c));
    struct local_obj o2[LOCAL_N];
    struct local_sum s2;
    struct heap_owned_reclaim res;
    struct owner_entry *e;
    unsigned spins = 0;
    pid_t pid;

    ck_assert_int_eq(heap_local_attach(th.local, 2, &h2), 0);
    e = &heap_ctl(h)->owners[h2->owner_index];
    ck_assert(local_objects(h2, o2, LOCAL_N, &s2));
    heap_detach(h2);
    ck_assert_uint_eq(e->state, OWNER_DETACHED);

    c->t = &th;
    ck_assert_int_eq(seg_lock(&h->segs[1], h), 0);
    pid = mp_fork(sweeper_child, c, 0);
    /* The child has taken the entry for its sweep when it leaves DETACHED. */
    while (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) == OWNER_DETACHED && spins++ < 5000)
        mp_sleep_ms(1);
    ck_assert_uint_ne(e->state, OWNER_DETACHED);
    mp_sleep_ms(20); /* it waits for the lock */
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    mp_wait_signaled(pid, SIGKILL, "sweeper");
    seg_unlock(&h->segs[1]);

    ck_assert_int_eq(heap_reclaim_owned(h, 2, false, &res), 0);
    ck_assert_msg(res.owners == 1 && res.objects == s2.priv,
                  "after the sweeper died: swept %" PRIu32 " owners, %" PRIu64
                  " objects (of %" PRIu64 " private); the entry is in state %" PRIu32,
                  res.owners, res.objects, s2.priv, e->state);
    ck_assert_uint_eq(e->state, OWNER_FREE);
    verify_counted(h, "after the second sweep");
    mp_shared_free(c, sizeof(*c));
}
END_TEST

/* ---- sweeping twice, claiming the entry again ---- */

START_TEST(owned_sweep_twice_and_reuse)
{
    struct heap *h = th.h, *h2, *h4;
    struct local_obj o2[LOCAL_N], o4[LOCAL_N];
    struct local_sum s2, s4;
    struct heap_owned_reclaim res;
    struct heap_stats st, st2;
    struct owner_entry *e;
    struct census cs;
    uint32_t index2, high;
    uint16_t tag2;

    ck_assert_int_eq(heap_local_attach(th.local, 2, &h2), 0);
    tag2 = h2->owner_tag;
    index2 = h2->owner_index;
    e = &heap_ctl(h)->owners[index2];
    high = heap_ctl(h)->owners_high;
    ck_assert_uint_gt(high, index2);
    ck_assert(local_objects(h2, o2, LOCAL_N, &s2));
    heap_detach(h2);
    ck_assert_int_eq(heap_reclaim_owned(h, 2, false, &res), 0);
    assert_reclaim(&res, 1, s2.priv, s2.priv_bytes, "first sweep");
    get_stats(h, &st);

    /* Again, by every entry point: nothing. */
    ck_assert_int_eq(heap_reclaim_owned(h, 2, false, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "second sweep");
    ck_assert_int_eq(heap_reclaim_owned(h, 2, true, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "second sweep, process gone");
    ck_assert_int_eq(heap_reclaim_owned_gone(h, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "second sweep, gone");
    ck_assert_int_eq(heap_reclaim_dead(h), 0);
    get_stats(h, &st2);
    ck_assert_uint_eq(st2.reclaimed_objects, s2.priv);
    ck_assert_uint_eq(st2.reclaimed_bytes, s2.priv_bytes);
    ck_assert_uint_eq(st2.bytes_in_use, st.bytes_in_use);
    ck_assert_uint_eq(st2.frees, st.frees);
    ck_assert_uint_eq(e->state, OWNER_FREE);
    ck_assert_uint_eq(e->pid, 0);
    ck_assert_uint_eq(e->client_id, 0);
    verify_counted(h, "after two sweeps");

    /* The next attachment claims the freed entry (the lowest free one):
     * same tag, no new entry, and exactly its own objects carry the tag. */
    ck_assert_int_eq(heap_local_attach(th.local, 4, &h4), 0);
    ck_assert_uint_eq(h4->owner_index, index2);
    ck_assert_uint_eq(h4->owner_tag, tag2);
    ck_assert_uint_eq(e->state, OWNER_LIVE);
    ck_assert_uint_eq(e->client_id, 4);
    ck_assert_uint_eq(e->pid, (uint32_t) getpid());
    ck_assert_uint_eq(heap_ctl(h)->owners_high, high);
    ck_assert(local_objects(h4, o4, LOCAL_N, &s4));
    ck_assert_uint_eq(local_check(h4, o4, LOCAL_N, tag2), LOCAL_N);
    take_census(h, tag2, &cs);
    ck_assert_uint_eq(cs.small + cs.large, s4.priv);
    ck_assert_uint_eq(cs.small_bytes + cs.large_bytes, s4.priv_bytes);
    /* The former owner's client id no longer names it. */
    ck_assert_int_eq(heap_reclaim_owned(h, 2, true, &res), 0);
    assert_reclaim(&res, 0, 0, 0, "old client id after reuse");
    ck_assert_uint_eq(local_check(h4, o4, LOCAL_N, tag2), LOCAL_N);
    heap_detach(h4);
    ck_assert_int_eq(heap_reclaim_owned(h, 4, false, &res), 0);
    assert_reclaim(&res, 1, s4.priv, s4.priv_bytes, "the entry's second owner");

    /* Many owners come and go through the same entry. */
    for (unsigned k = 0; k < 50; k++) {
        struct heap *hk;
        void *p[3];

        ck_assert_int_eq(heap_local_attach(th.local, 100 + k, &hk), 0);
        ck_assert_uint_eq(hk->owner_tag, tag2);
        p[0] = heap_malloc(hk, 24 + k);
        p[1] = heap_malloc(hk, 20000);
        p[2] = heap_malloc(hk, 70 * KiB);
        ck_assert(p[0] && p[1] && p[2]);
        heap_detach(hk);
        ck_assert_int_eq(heap_reclaim_owned_gone(h, &res), 0);
        if (res.owners != 1 || res.objects != 3)
            ck_abort_msg("round %u: swept %" PRIu32 " owners, %" PRIu64 " objects", k, res.owners,
                         res.objects);
    }
    ck_assert_uint_eq(heap_ctl(h)->owners_high, high);
    get_stats(h, &st);
    ck_assert_uint_eq(st.reclaimed_objects, s2.priv + s4.priv + 150);

    /* Left: the shared objects of h2 and h4. */
    for (unsigned i = 0; i < LOCAL_N; i++) {
        if (o2[i].shared)
            heap_free(h, heap_from_off(h, o2[i].off));
        if (o4[i].shared)
            heap_free(h, heap_from_off(h, o4[i].off));
    }
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    verify_counted(h, "at the end");
    ck_assert_int_eq(heap_trim(h, 0, NULL), 0);
    ck_assert_uint_eq(mp_blocks_not_free(h), 0);
}
END_TEST

Suite *owned_suite(void)
{
    Suite *s = suite_create("owned");
    TCase *tags = tcase_create("tags"), *death = tcase_create("death");
    TCase *detach = tcase_create("detach"), *reuse = tcase_create("reuse");

    tcase_add_checked_fixture(tags, heap_setup, heap_teardown);
    tcase_add_test(tags, owned_tags_small);
    tcase_add_test(tags, owned_tags_shared_then_freed_here);
    tcase_add_test(tags, owned_tags_other_entry_points);
    tcase_add_test(tags, owned_tags_large);
    tcase_add_test(tags, owned_tags_not_on_arenas_pools);
    tcase_set_timeout(tags, 30);
    suite_add_tcase(s, tags);

    tcase_add_checked_fixture(death, heap_setup, heap_teardown);
    tcase_add_test(death, owned_death_kill_reclaim_dead);
    tcase_add_test(death, owned_death_kill_reclaim_owned);
    tcase_add_test(death, owned_death_exit_reclaim_gone);
    tcase_add_test(death, owned_death_exit_reclaim_dead);
    tcase_add_test(death, owned_death_detach_reclaim_owned);
    tcase_add_test(death, owned_death_mid_take);
    tcase_add_test(death, owned_death_mid_return);
    tcase_add_test(death, owned_death_mid_carve);
    tcase_add_test(death, owned_death_storm);
    tcase_add_test(death, owned_death_shared_client_id);
    tcase_add_test(death, owned_sweeper_dies);
    tcase_set_timeout(death, 30);
    suite_add_tcase(s, death);

    tcase_add_checked_fixture(detach, heap_setup, heap_teardown);
    tcase_add_test(detach, owned_detached_attachment);
    tcase_add_test(detach, owned_detached_many_large);
    tcase_add_test(detach, owned_detached_segments);
    tcase_add_test(detach, owned_detached_arena_pool_survive);
    tcase_add_test(detach, owned_live_child_not_swept);
    tcase_set_timeout(detach, 30);
    suite_add_tcase(s, detach);

    tcase_add_checked_fixture(reuse, heap_setup, heap_teardown);
    tcase_add_test(reuse, owned_sweep_twice_and_reuse);
    tcase_set_timeout(reuse, 30);
    suite_add_tcase(s, reuse);

    return s;
}
