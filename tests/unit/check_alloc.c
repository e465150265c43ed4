/* Unit tests for the malloc family (shm/alloc.c, tcache.c, run.c): patterns
 * that must survive, calloc, realloc, large objects, offsets, the heap's
 * limit, figures and heap_thread_flush, and a random model run.
 *
 * Long loops compare by hand and call ck_abort_msg() only on a mismatch
 * (a passing ck_assert costs a message to the runner in fork mode). */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shm/heap.h"
#include "shm/sizeclass.h"
#include "tests/common/testheap.h"
#include "tests/unit/heap_fixture.h"
#include "tests/unit/suites.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

static void get_stats(struct heap *h, struct heap_stats *st)
{
    int r = heap_stats(h, st);

    ck_assert_msg(r == 0, "heap_stats: %s", strerror(-r));
}

struct obj {
    void *p;
    size_t size;
    uint64_t seed;
};

static void obj_check(const struct obj *o, const char *when)
{
    size_t at = th_check_pattern(o->p, o->size, o->seed);

    if (at != o->size)
        ck_abort_msg("%s: object %p (%zu bytes) differs at byte %zu", when, o->p, o->size, at);
}

/* Sizes over every class and some large ones, all live at once: no object overlaps another
 * (each keeps its own pattern), then freed in a scrambled order. */
START_TEST(alloc_patterns)
{
    size_t n = 0, cap = 8 * SHM_NCLASSES + 64;
    struct obj *objs = calloc(cap, sizeof(*objs));
    uint64_t rng = 42;
    struct heap *h = th.h;

    ck_assert_ptr_nonnull(objs);
    for (unsigned c = 0; c < SHM_NCLASSES; c++) {
        size_t lo = c ? sizeclass_size(c - 1) + 1 : 1, hi = sizeclass_size(c);

        for (int k = 0; k < 8; k++)
            objs[n++].size = lo + test_rand(&rng) % (hi - lo + 1);
    }
    for (int k = 0; k < 64; k++)
        objs[n++].size = SHM_SMALL_MAX + 1 + test_rand(&rng) % (3 * MiB);
    for (size_t i = 0; i < n; i++) {
        objs[i].p = heap_malloc(h, objs[i].size);
        if (!objs[i].p)
            ck_abort_msg("malloc(%zu): %s", objs[i].size, strerror(errno));
        objs[i].seed = i + 1;
        th_fill_pattern(objs[i].p, objs[i].size, objs[i].seed);
    }
    for (size_t i = 0; i < n; i++)
        obj_check(&objs[i], "all live");
    th_verify(h);
    for (size_t i = n; i > 1; i--) {
        size_t j = test_rand(&rng) % i;
        struct obj tmp = objs[i - 1];

        objs[i - 1] = objs[j];
        objs[j] = tmp;
    }
    for (size_t i = 0; i < n; i++) {
        obj_check(&objs[i], "before free");
        heap_free(h, objs[i].p);
        if (i % 97 == 0)
            for (size_t k = i + 1; k < n; k++)
                obj_check(&objs[k], "after other frees");
    }
    free(objs);
    th_verify(h);
}
END_TEST

START_TEST(alloc_malloc_zero)
{
    struct heap *h = th.h;
    void *a = heap_malloc(h, 0), *b = heap_malloc(h, 0);

    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_ne(a, b);
    ck_assert_uint_ge(heap_usable_size(h, a), 1);
    heap_free(h, a);
    heap_free(h, b);
    heap_free(h, NULL); /* a no-op */
    errno = 0;
    ck_assert_ptr_null(heap_malloc(h, SIZE_MAX));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(heap_malloc(h, SIZE_MAX / 2));
    ck_assert_int_eq(errno, ENOMEM);
    th_verify(h);
}
END_TEST

/* Without a heap, the entry points that take one refuse cleanly (free_slow() and
 * heap_usable_size() already test for a NULL heap): EINVAL or nothing, never a crash. */
START_TEST(alloc_null_heap)
{
    struct heap *h = th.h;
    void *p = heap_malloc(h, 100);

    ck_assert_ptr_nonnull(p);
    errno = 0;
    ck_assert_ptr_null(heap_malloc(NULL, 16));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_calloc(NULL, 2, 16));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_aligned_alloc(NULL, 64, 16));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_uint_eq(heap_usable_size(NULL, p), 0);
    heap_thread_flush(NULL);
    mark_point();
    heap_free(NULL, NULL);
    mark_point();
    heap_free(NULL, p); /* no heap: ignored */
    mark_point();
    errno = 0;
    ck_assert_ptr_null(heap_realloc(NULL, p, 200));
    mark_point();
    ck_assert_uint_eq(heap_usable_size(h, p), sizeclass_size(sizeclass_of(100)));
    heap_free(h, p);
    th_verify(h);
}
END_TEST

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

START_TEST(alloc_calloc)
{
    static const size_t sizes[] = {1,    16,    17,    100,   128,    129,    1000,
                                   4096, 30000, 32768, 32769, 100000, 1 * MiB};
    enum { REPS = 40 };
    struct heap *h = th.h;
    void *p[REPS];

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t size = sizes[i];

        /* Dirty objects of this size, give them back, then calloc: those very objects
         * come back first (the cache is LIFO) and must read as zero. */
        for (int k = 0; k < REPS; k++) {
            p[k] = heap_malloc(h, size);
            ck_assert_ptr_nonnull(p[k]);
            memset(p[k], 0xff, heap_usable_size(h, p[k]));
        }
        for (int k = 0; k < REPS; k++)
            heap_free(h, p[k]);
        for (int k = 0; k < REPS; k++) {
            p[k] = heap_calloc(h, 1, size);
            if (!p[k] || !all_zero(p[k], size))
                ck_abort_msg("calloc(1, %zu) #%d = %p is not zeroed", size, k, p[k]);
        }
        for (int k = 0; k < REPS; k++)
            heap_free(h, p[k]);
    }
    /* n * size in both orders. */
    p[0] = heap_calloc(h, 100, 24);
    ck_assert_ptr_nonnull(p[0]);
    ck_assert_uint_ge(heap_usable_size(h, p[0]), 2400);
    ck_assert(all_zero(p[0], 2400));
    heap_free(h, p[0]);
    p[0] = heap_calloc(h, 0, 10);
    ck_assert_ptr_nonnull(p[0]);
    heap_free(h, p[0]);
    /* Overflowing n * size. */
    errno = 0;
    ck_assert_ptr_null(heap_calloc(h, SIZE_MAX / 2, 4));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(heap_calloc(h, 4, SIZE_MAX / 2));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(heap_calloc(h, (SIZE_MAX >> 32) + 2, UINT64_C(1) << 32));
    ck_assert_int_eq(errno, ENOMEM);
    th_verify(h);
}
END_TEST

START_TEST(alloc_realloc_contents)
{
    static const size_t steps[] = {1,     24,    100,     128,   129,  1000, 5000, 32768,
                                   32769, 70000, 1 * MiB, 33000, 4000, 500,  40,   8};
    struct heap *h = th.h;
    size_t prev = 10;
    char *p = heap_realloc(h, NULL, prev); /* realloc(NULL, n) is malloc(n) */

    ck_assert_ptr_nonnull(p);
    ck_assert(heap_contains(h, p));
    ck_assert_uint_ge(heap_usable_size(h, p), prev);
    th_fill_pattern(p, prev, 7);
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        size_t size = steps[i], keep = size < prev ? size : prev;
        char *q = heap_realloc(h, p, size);

        ck_assert_msg(q != NULL, "realloc(%zu -> %zu): %s", prev, size, strerror(errno));
        ck_assert_uint_ge(heap_usable_size(h, q), size);
        ck_assert_msg(th_check_pattern(q, keep, 7) == keep, "realloc(%zu -> %zu) lost the contents",
                      prev, size);
        th_fill_pattern(q, size, 7);
        p = q;
        prev = size;
    }
    heap_free(h, p);
    th_verify(h);
}
END_TEST

START_TEST(alloc_realloc_in_place)
{
    struct heap *h = th.h;
    struct heap_stats st;
    char *p = heap_malloc(h, 100), *q;
    uint32_t cls_size = sizeclass_size(sizeclass_of(100));

    ck_assert_ptr_nonnull(p);
    th_fill_pattern(p, 100, 3);
    /* Within the class: the same object. */
    q = heap_realloc(h, p, cls_size);
    ck_assert_ptr_eq(q, p);
    q = heap_realloc(h, p, sizeclass_size(sizeclass_of(100) - 1) + 1);
    ck_assert_ptr_eq(q, p);
    ck_assert_uint_eq(th_check_pattern(p, 100, 3), 100);
    /* Past the class: moves, the old object is freed. */
    q = heap_realloc(h, p, cls_size + 1);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_ne(q, p);
    ck_assert_uint_eq(th_check_pattern(q, 100, 3), 100);
    /* Much smaller: moves to a smaller class. */
    p = heap_realloc(h, q, 16);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(heap_usable_size(h, p), 16);
    ck_assert_uint_eq(th_check_pattern(p, 16, 3), 16);

    /* A large run shrunk by less than half stays in place. */
    q = heap_malloc(h, 1 * MiB);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_eq(heap_realloc(h, q, 1 * MiB - 100 * KiB), q);
    ck_assert_ptr_eq(heap_realloc(h, q, 1 * MiB), q);

    /* A realloc that cannot be done leaves the object as it was. */
    errno = 0;
    ck_assert_ptr_null(heap_realloc(h, p, SIZE_MAX / 2));
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_uint_eq(th_check_pattern(p, 16, 3), 16);
    ck_assert_uint_eq(heap_usable_size(h, p), 16);

    /* realloc(p, 0) frees p and returns NULL. */
    ck_assert_ptr_null(heap_realloc(h, p, 0));
    ck_assert_ptr_null(heap_realloc(h, q, 0));
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    th_verify(h);
}
END_TEST

START_TEST(alloc_large)
{
    static const size_t sizes[] = {1 * MiB, 10 * MiB, 100 * MiB};
    struct heap *h = th.h;
    void *p[3];

    for (int i = 0; i < 3; i++) {
        size_t u;

        p[i] = heap_malloc(h, sizes[i]);
        ck_assert_msg(p[i] != NULL, "malloc(%zu): %s", sizes[i], strerror(errno));
        ck_assert_uint_eq((uintptr_t) p[i] % SHM_BLOCK_SIZE, 0);
        u = heap_usable_size(h, p[i]);
        ck_assert_msg(u >= sizes[i] && u < sizes[i] + SHM_BLOCK_SIZE, "malloc(%zu): usable %zu",
                      sizes[i], u);
        ck_assert_uint_eq(u, sizes[i]); /* these are whole blocks */
        /* One word per 4 KiB page, and both ends. */
        for (size_t off = 0; off < sizes[i]; off += 4096)
            ((uint64_t *) p[i])[off / 8] = off ^ (uint64_t) i;
        ((char *) p[i])[sizes[i] - 1] = 0x7f;
    }
    for (int i = 0; i < 3; i++) {
        for (size_t off = 0; off < sizes[i]; off += 4096)
            if (((uint64_t *) p[i])[off / 8] != (off ^ (uint64_t) i))
                ck_abort_msg("large %d: word at %zu changed", i, off);
        ck_assert_int_eq(((char *) p[i])[sizes[i] - 1], 0x7f);
        heap_free(h, p[i]);
    }
    th_verify(h);
}
END_TEST

START_TEST(alloc_offsets)
{
    struct heap *h = th.h;
    void *small = heap_malloc(h, 48), *large = heap_malloc(h, 200000);
    void *libc = malloc(64);
    int on_stack = 0;
    uint64_t off;

    ck_assert_ptr_nonnull(small);
    ck_assert_ptr_nonnull(large);
    ck_assert_ptr_nonnull(libc);
    off = heap_to_off(h, small);
    ck_assert_uint_ne(off, 0);
    ck_assert_ptr_eq(heap_from_off(h, off), small);
    ck_assert_uint_eq(off >> SHM_SEG_SHIFT, 1); /* the first heap segment */
    off = heap_to_off(h, (char *) small + 40);  /* inside an object */
    ck_assert_ptr_eq(heap_from_off(h, off), (char *) small + 40);
    off = heap_to_off(h, large);
    ck_assert_uint_ne(off, 0);
    ck_assert_ptr_eq(heap_from_off(h, off), large);

    ck_assert_ptr_null(heap_from_off(h, 0));
    ck_assert_uint_eq(heap_to_off(h, NULL), 0);
    ck_assert_uint_eq(heap_to_off(h, &on_stack), 0);
    ck_assert_uint_eq(heap_to_off(h, libc), 0);
    ck_assert_uint_eq(heap_to_off(h, heap_ctl(h)), 0);
    ck_assert_uint_eq(heap_to_off(h, (char *) heap_ctl(h) + 4096), 0);
    ck_assert(!heap_contains(h, libc));
    ck_assert(!heap_contains(h, &on_stack));
    /* Offsets naming no mapped byte. */
    ck_assert_ptr_null(heap_from_off(h, (UINT64_C(5) << SHM_SEG_SHIFT) | 4096));
    ck_assert_ptr_null(heap_from_off(h, (UINT64_C(31) << SHM_SEG_SHIFT) | 4096));
    ck_assert_ptr_null(heap_from_off(h, UINT64_C(1) << 40));
    ck_assert_ptr_null(heap_from_off(h, UINT64_MAX));
    ck_assert_ptr_null(heap_from_off(h, (UINT64_C(1) << SHM_SEG_SHIFT) | (SHM_SEG_SPAN - 16)));
    ck_assert_ptr_null(heap_from_off(h, 4096)); /* the control segment */
    free(libc);
    heap_free(h, small);
    heap_free(h, large);
    th_verify(h);
}
END_TEST

/* A heap of one 16 MiB segment that may not grow. */
START_TEST(alloc_heap_limit)
{
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st;
    void **ptrs;
    size_t n = 0, cap = 16 * MiB / 1024 + 16;

    th_config(&cfg, 16 * MiB);
    cfg.max_segments = 1;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    errno = 0;
    ck_assert_ptr_null(heap_malloc(t.h, 64 * MiB));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(heap_malloc(t.h, 16 * MiB)); /* the segment holds its header too */
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(heap_aligned_alloc(t.h, 1 * MiB, 20 * MiB));
    ck_assert_int_eq(errno, ENOMEM);
    th_verify(t.h);

    /* Small objects until the heap is full: NULL and ENOMEM, nothing worse. */
    ptrs = calloc(cap, sizeof(*ptrs));
    ck_assert_ptr_nonnull(ptrs);
    for (;;) {
        void *p;

        errno = 0;
        p = heap_malloc(t.h, 1000);
        if (!p)
            break;
        if (n == cap)
            ck_abort_msg("%zu KiB objects from a 16 MiB heap", n);
        ((uint64_t *) p)[0] = n;
        ptrs[n++] = p;
    }
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_uint_gt(n, 8 * MiB / 1024); /* most of the segment was usable */
    errno = 0;
    ck_assert_ptr_null(heap_malloc(t.h, 1 * MiB));
    ck_assert_int_eq(errno, ENOMEM);
    get_stats(t.h, &st);
    ck_assert_uint_eq(st.nsegments, 1);
    th_verify(t.h);
    /* Freeing makes room again. */
    for (size_t i = 0; i < n; i++) {
        if (((uint64_t *) ptrs[i])[0] != i)
            ck_abort_msg("object %zu was overwritten", i);
        heap_free(t.h, ptrs[i]);
    }
    heap_thread_flush(t.h);
    ptrs[0] = heap_malloc(t.h, 1 * MiB);
    ck_assert_msg(ptrs[0] != NULL, "malloc(1 MiB) after freeing all: %s", strerror(errno));
    heap_free(t.h, ptrs[0]);
    free(ptrs);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* A heap that cannot grow, filled with 30000-byte objects, all freed and the cache flushed:
 * the whole heap is free again, so a run of most of it must be had. Objects parked in the
 * recycler (64 bundles of this class) must not make that ENOMEM. */
START_TEST(alloc_large_after_free_all)
{
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st;
    void **p;
    size_t n = 0, cap = 16 * MiB / 30000 + 16;
    void *big;

    th_config(&cfg, 16 * MiB);
    cfg.max_segments = 1;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    p = calloc(cap, sizeof(*p));
    ck_assert_ptr_nonnull(p);
    while (n < cap && (p[n] = heap_malloc(t.h, 30000)) != NULL)
        n++;
    ck_assert_uint_gt(n, 400);
    for (size_t i = 0; i < n; i++)
        heap_free(t.h, p[i]);
    heap_thread_flush(t.h);
    get_stats(t.h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    errno = 0;
    big = heap_malloc(t.h, 12 * MiB);
    ck_assert_msg(big != NULL,
                  "malloc(12 MiB) in a free 16 MiB heap: %s (%" PRIu64 " free blocks, %" PRIu64
                  " objects of this class in the recycler)",
                  strerror(errno), st.segs[0].free_blocks,
                  st.classes[sizeclass_of(30000)].in_recycler);
    memset(big, 1, 12 * MiB);
    heap_free(t.h, big);
    free(p);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* Growth up to max_segments, then ENOMEM. */
START_TEST(alloc_heap_grows_to_limit)
{
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st;
    void *p[64];
    int n = 0;

    th_config(&cfg, 16 * MiB);
    cfg.max_segments = 3;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    for (; n < 64; n++) {
        errno = 0;
        p[n] = heap_malloc(t.h, 5 * MiB);
        if (!p[n])
            break;
        memset(p[n], n, 5 * MiB);
    }
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_int_ge(n, 6);
    ck_assert_int_lt(n, 12);
    get_stats(t.h, &st);
    ck_assert_uint_eq(st.nsegments, 3);
    th_verify(t.h);
    for (int i = 0; i < n; i++)
        heap_free(t.h, p[i]);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* Small objects over many segments: objects in every segment, chains across them. */
START_TEST(alloc_many_segments)
{
    size_t total = test_scaled(96 * MiB, 4), n = 0, cap = total / 64 + 16, bytes = 0;
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st;
    struct obj *objs = calloc(cap, sizeof(*objs));
    uint64_t rng = 99;

    ck_assert_ptr_nonnull(objs);
    th_config(&cfg, 16 * MiB);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    while (bytes < total && n < cap) {
        struct obj *o = &objs[n];

        o->size = 64 + test_rand(&rng) % 1024;
        o->p = heap_malloc(t.h, o->size);
        if (!o->p)
            ck_abort_msg("malloc(%zu) #%zu: %s", o->size, n, strerror(errno));
        o->seed = n;
        /* Only the first 16 bytes: the pattern is for overlap, not for speed. */
        th_fill_pattern(o->p, 16, o->seed);
        bytes += o->size;
        n++;
    }
    get_stats(t.h, &st);
    ck_assert_uint_ge(st.nsegments, total / (16 * MiB) + 1);
    th_verify(t.h);
    for (size_t i = 0; i < n; i += 2) {
        if (th_check_pattern(objs[i].p, 16, objs[i].seed) != 16)
            ck_abort_msg("object %zu changed", i);
        heap_free(t.h, objs[i].p);
    }
    th_verify(t.h);
    for (size_t i = 1; i < n; i += 2) {
        if (th_check_pattern(objs[i].p, 16, objs[i].seed) != 16)
            ck_abort_msg("object %zu changed", i);
        heap_free(t.h, objs[i].p);
    }
    get_stats(t.h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    free(objs);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

START_TEST(alloc_stats)
{
    enum { N = 1000 };
    struct heap *h = th.h;
    struct heap_stats before, st;
    void *p[N], *big;
    uint64_t want_bytes = 0;

    get_stats(h, &before);
    ck_assert_uint_eq(before.nsegments, 1);
    ck_assert_uint_eq(before.segs[0].index, 1);
    ck_assert_uint_eq(before.segs[0].page_size, 4096);
    ck_assert_uint_eq(before.segs[0].size, 256 * MiB);
    ck_assert_uint_eq(before.bytes_reserved, 256 * MiB);
    ck_assert_uint_gt(before.segs[0].metadata_bytes, 0);
    ck_assert_uint_eq(before.bytes_in_use, 0);
    ck_assert_uint_eq(before.bad_frees, 0);
    ck_assert_uint_eq(before.double_frees, 0);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        ck_assert_uint_eq(before.classes[c].object_size, sizeclass_size(c));

    for (int i = 0; i < N; i++) {
        size_t size = 16 + (size_t) (i % 50) * 40;

        p[i] = heap_malloc(h, size);
        ck_assert_ptr_nonnull(p[i]);
        want_bytes += sizeclass_size(sizeclass_of(size));
    }
    big = heap_malloc(h, 3 * MiB);
    ck_assert_ptr_nonnull(big);
    get_stats(h, &st);
    ck_assert_uint_eq(st.allocs - before.allocs, N + 1);
    ck_assert_uint_eq(st.frees - before.frees, 0);
    ck_assert_uint_eq(st.bytes_in_use, want_bytes + 3 * MiB);
    ck_assert_uint_ge(st.peak_bytes_in_use, st.bytes_in_use);
    ck_assert_uint_gt(st.bytes_committed, before.bytes_committed);
    ck_assert_uint_ge(st.slots_in_use, 1);
    ck_assert_uint_eq(st.classes[sizeclass_of(16)].in_use, (N + 49) / 50);

    for (int i = 0; i < N; i++)
        heap_free(h, p[i]);
    heap_free(h, big);
    get_stats(h, &st);
    ck_assert_uint_eq(st.allocs - before.allocs, N + 1);
    ck_assert_uint_eq(st.frees - before.frees, N + 1);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        ck_assert_uint_eq(st.classes[c].in_use, 0);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    th_verify(h);
}
END_TEST

/* The peak never falls: what one heap_stats() call reported as the peak, a later call
 * reports at least, whatever was freed in between. */
START_TEST(alloc_stats_peak)
{
    enum { N = 1000 };
    struct heap *h = th.h;
    struct heap_stats st, st2;
    void *p[N], *big;

    for (int i = 0; i < N; i++) {
        p[i] = heap_malloc(h, 1000);
        ck_assert_ptr_nonnull(p[i]);
    }
    big = heap_malloc(h, 3 * MiB);
    ck_assert_ptr_nonnull(big);
    get_stats(h, &st);
    ck_assert_uint_ge(st.peak_bytes_in_use, st.bytes_in_use);
    ck_assert_uint_ge(st.peak_bytes_in_use, N * sizeclass_size(sizeclass_of(1000)) + 3 * MiB);
    for (int i = 0; i < N; i++)
        heap_free(h, p[i]);
    heap_free(h, big);
    get_stats(h, &st2);
    ck_assert_uint_eq(st2.bytes_in_use, 0);
    ck_assert_msg(st2.peak_bytes_in_use >= st.peak_bytes_in_use,
                  "peak_bytes_in_use fell from %" PRIu64 " to %" PRIu64 " (nothing was reset)",
                  st.peak_bytes_in_use, st2.peak_bytes_in_use);
    th_verify(h);
}
END_TEST

/* A thread that only frees (objects another thread allocates) must still report its
 * frees to the sampled peak: with 1,000 objects live at a time, the peak stays near that,
 * not near everything ever allocated. */
struct peak_pipe {
    struct heap *h;
    void *volatile slot[1000];
    volatile int round; /* rounds handed to the freeing thread */
    volatile int done;  /* rounds it has freed */
};

static void *peak_freer(void *arg)
{
    struct peak_pipe *pp = arg;

    for (int r = 0; r < 400; r++) {
        while (__atomic_load_n(&pp->round, __ATOMIC_ACQUIRE) <= r)
            sched_yield();
        for (int i = 0; i < 1000; i++)
            heap_free(pp->h, pp->slot[i]);
        __atomic_store_n(&pp->done, r + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

START_TEST(alloc_stats_peak_free_only_thread)
{
    static struct peak_pipe pp;
    struct heap_stats st;
    pthread_t t;

    pp.h = th.h;
    ck_assert_int_eq(pthread_create(&t, NULL, peak_freer, &pp), 0);
    for (int r = 0; r < 400; r++) {
        while (__atomic_load_n(&pp.done, __ATOMIC_ACQUIRE) < r)
            sched_yield();
        for (int i = 0; i < 1000; i++) {
            pp.slot[i] = heap_malloc(th.h, 64);
            ck_assert_ptr_nonnull(pp.slot[i]);
        }
        __atomic_store_n(&pp.round, r + 1, __ATOMIC_RELEASE);
    }
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    get_stats(th.h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    /* 1,000 live objects of 64 bytes, plus what the ticks let drift (a tick is 4,096
     * operations a thread): far below the 25.6 MB allocated in all. */
    ck_assert_msg(st.peak_bytes_in_use < 4 * MiB, "peak %" PRIu64 " bytes for 64,000 live bytes",
                  st.peak_bytes_in_use);
    th_verify(th.h);
}
END_TEST

START_TEST(alloc_thread_flush)
{
    enum { N = 300 };
    struct heap *h = th.h;
    struct heap_stats st;
    unsigned c64 = sizeclass_of(64), c4k = sizeclass_of(4096);
    uint64_t cached = 0;
    void *p[N];

    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            p[i] = heap_malloc(h, i % 2 ? 64 : 4096);
            ck_assert_ptr_nonnull(p[i]);
        }
        for (int i = 0; i < N; i++)
            heap_free(h, p[i]);
        get_stats(h, &st);
        ck_assert_uint_gt(st.classes[c64].cached, 0);
        ck_assert_uint_gt(st.classes[c4k].cached, 0);
        heap_thread_flush(h);
        get_stats(h, &st);
        cached = 0;
        for (unsigned c = 0; c < SHM_NCLASSES; c++)
            cached += st.classes[c].cached;
        ck_assert_msg(cached == 0, "%" PRIu64 " objects still cached after the flush", cached);
        ck_assert_uint_eq(st.bytes_in_use, 0);
        th_verify(h);
    }
    /* A flush of an empty cache, and of a thread that never used the heap's cache. */
    heap_thread_flush(h);
    heap_thread_flush(NULL);
    th_verify(h);
}
END_TEST

/* One thread, many attachments: a thread has TCACHE_TLS_MAX cache entries, so one more
 * attachment than that cannot allocate (EMFILE) until another is detached; attach and
 * detach cycles reuse the entries without mixing up their caches. */
START_TEST(alloc_many_attachments)
{
    enum { MAXH = 16, CYCLES = 40 };
    struct heap *hs[MAXH + 1], *h = th.h;
    struct heap_stats st;
    void *p, *q;
    int r;

    p = heap_malloc(h, 64); /* the fixture's attachment takes the first entry */
    ck_assert_ptr_nonnull(p);
    for (int i = 0; i < MAXH; i++) {
        r = heap_local_attach(th.local, 10 + (uint64_t) i, &hs[i]);
        ck_assert_msg(r == 0, "attach %d: %s", i, strerror(-r));
        q = heap_malloc(hs[i], 64);
        if (i < MAXH - 1) {
            ck_assert_msg(q != NULL, "attachment %d: %s", i, strerror(errno));
            heap_free(hs[i], q);
        } else {
            ck_assert_msg(q == NULL && errno == EMFILE,
                          "attachment %d of one thread: %p, errno %d (want NULL, EMFILE)", i + 2, q,
                          errno);
        }
    }
    heap_detach(hs[0]);
    q = heap_malloc(hs[MAXH - 1], 64);
    ck_assert_msg(q != NULL, "after a detach: %s", strerror(errno));
    /* Freed through another attachment of the same heap: each attachment maps the heap at
     * its own address, so the pointer goes over as an offset. */
    heap_free(h, heap_from_off(h, heap_to_off(hs[MAXH - 1], q)));
    for (int i = 1; i < MAXH; i++)
        heap_detach(hs[i]);
    th_verify(h);

    for (int c = 0; c < CYCLES; c++) {
        struct heap *a, *b;

        ck_assert_int_eq(heap_local_attach(th.local, 100, &a), 0);
        ck_assert_int_eq(heap_local_attach(th.local, 101, &b), 0);
        q = heap_malloc(a, 100);
        ck_assert_ptr_nonnull(q);
        heap_free(b, heap_from_off(b, heap_to_off(a, q)));
        q = heap_malloc(b, 5000);
        ck_assert_ptr_nonnull(q);
        heap_detach(a);
        heap_free(h, heap_from_off(h, heap_to_off(b, q)));
        heap_detach(b);
    }
    heap_free(h, p);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.slots_in_use, 1);
    ck_assert_uint_eq(st.bad_frees, 0);
    th_verify(h);
}
END_TEST

/* Threads that free each other's objects: each object enters the freeing thread's cache. */
#define XT_THREADS 4
#define XT_QUEUE   256

struct xt_shared {
    struct heap *h;
    pthread_mutex_t lock;
    void *queue[XT_THREADS][XT_QUEUE]; /* objects for thread i to free */
    size_t qlen[XT_THREADS];
    uint64_t rounds;
    int failed;
};

struct xt_arg {
    struct xt_shared *s;
    int id;
};

static void *xt_main(void *arg)
{
    struct xt_arg *a = arg;
    struct xt_shared *s = a->s;
    int next = (a->id + 1) % XT_THREADS;
    uint64_t rng = 1000 + (uint64_t) a->id;

    for (uint64_t r = 0; r < s->rounds; r++) {
        size_t size = 16 + test_rand(&rng) % 2000;
        uint64_t *p = heap_malloc(s->h, size), *mine[XT_QUEUE];
        size_t n;

        if (!p) {
            s->failed = 1;
            return NULL;
        }
        p[0] = size;
        p[1] = ~size;
        pthread_mutex_lock(&s->lock);
        if (s->qlen[next] < XT_QUEUE) {
            s->queue[next][s->qlen[next]++] = p;
            p = NULL;
        }
        n = s->qlen[a->id];
        memcpy(mine, s->queue[a->id], n * sizeof(mine[0]));
        s->qlen[a->id] = 0;
        pthread_mutex_unlock(&s->lock);
        if (p)
            heap_free(s->h, p);
        for (size_t i = 0; i < n; i++) {
            if (mine[i][1] != ~mine[i][0])
                s->failed = 2;
            heap_free(s->h, mine[i]);
        }
    }
    heap_thread_flush(s->h);
    return NULL;
}

START_TEST(alloc_threads_cross_free)
{
    static struct xt_shared s;
    struct xt_arg args[XT_THREADS];
    pthread_t thr[XT_THREADS];
    struct heap_stats st;

    memset(&s, 0, sizeof(s));
    s.h = th.h;
    s.rounds = test_scaled(100000, 5);
    pthread_mutex_init(&s.lock, NULL);
    for (int i = 0; i < XT_THREADS; i++) {
        args[i].s = &s;
        args[i].id = i;
        ck_assert_int_eq(pthread_create(&thr[i], NULL, xt_main, &args[i]), 0);
    }
    for (int i = 0; i < XT_THREADS; i++)
        ck_assert_int_eq(pthread_join(thr[i], NULL), 0);
    ck_assert_int_eq(s.failed, 0);
    for (int i = 0; i < XT_THREADS; i++)
        for (size_t k = 0; k < s.qlen[i]; k++)
            heap_free(th.h, s.queue[i][k]);
    get_stats(th.h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    th_verify(th.h);
}
END_TEST

/* Random malloc / calloc / realloc / free against a table of live objects, each with its
 * pattern. Runs with the defaults, with tiny caches and recyclers (objects keep moving
 * between caches, recyclers and slabs), and with the knobs at the bounds config/ allows. */
START_TEST(alloc_random_model)
{
    enum { LIVE = 4096 };
    uint64_t nops = test_scaled(300000, 5), rng = 0xabcdef + (uint64_t) _i;
    struct shm_config cfg;
    struct test_heap t;
    struct obj *live = calloc(LIVE, sizeof(*live));
    struct heap_stats st;

    ck_assert_ptr_nonnull(live);
    th_config(&cfg, 64 * MiB);
    if (_i == 1) { /* tiny caches and recyclers */
        cfg.thread_cache_bytes = 4096;
        cfg.bundle_objects = 2;
        cfg.recycler_cap_bundles = 2;
    } else if (_i == 2) { /* the smallest config/config.c allows */
        cfg.thread_cache_bytes = 16 * KiB;
        cfg.bundle_objects = 2;
        cfg.recycler_cap_bundles = 1;
    } else if (_i == 3) { /* the largest config/config.c allows */
        cfg.thread_cache_bytes = 64 * MiB;
        cfg.bundle_objects = 4096;
        cfg.recycler_cap_bundles = 65536;
    }
    th_create(&t, &cfg, SHM_PAGES_OFF);
    for (uint64_t op = 0; op < nops; op++) {
        struct obj *o = &live[test_rand(&rng) % LIVE];
        unsigned kind = (unsigned) (test_rand(&rng) % 100);
        size_t size;

        if (kind < 2)
            size = SHM_SMALL_MAX + test_rand(&rng) % (256 * KiB);
        else if (kind < 20)
            size = 1 + test_rand(&rng) % SHM_SMALL_MAX;
        else
            size = 1 + test_rand(&rng) % 256;
        if (o->p) {
            size_t at = th_check_pattern(o->p, o->size, o->seed);

            if (at != o->size)
                ck_abort_msg("op %" PRIu64 ": object %p (%zu bytes) differs at %zu", op, o->p,
                             o->size, at);
        }
        if (o->p && kind % 3 == 0) {
            void *q = heap_realloc(t.h, o->p, size);

            if (!q)
                ck_abort_msg("op %" PRIu64 ": realloc(%zu -> %zu): %s", op, o->size, size,
                             strerror(errno));
            if (th_check_pattern(q, size < o->size ? size : o->size, o->seed) !=
                (size < o->size ? size : o->size))
                ck_abort_msg("op %" PRIu64 ": realloc lost the contents", op);
            o->p = q;
        } else if (o->p) {
            heap_free(t.h, o->p);
            o->p = NULL;
            continue;
        } else if (kind % 7 == 0) {
            o->p = heap_calloc(t.h, 1, size);
            if (o->p && !all_zero(o->p, size))
                ck_abort_msg("op %" PRIu64 ": calloc(%zu) not zeroed", op, size);
        } else {
            o->p = heap_malloc(t.h, size);
        }
        if (!o->p)
            ck_abort_msg("op %" PRIu64 ": allocation of %zu: %s", op, size, strerror(errno));
        o->size = size;
        o->seed = op;
        th_fill_pattern(o->p, size, o->seed);
        if (op % (nops / 4) == 0)
            th_verify(t.h);
    }
    th_verify(t.h);
    for (size_t i = 0; i < LIVE; i++) {
        if (!live[i].p)
            continue;
        obj_check(&live[i], "at the end");
        heap_free(t.h, live[i].p);
    }
    get_stats(t.h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    free(live);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

Suite *alloc_suite(void)
{
    Suite *s = suite_create("alloc");
    TCase *tb = tcase_create("basic");
    TCase *tl = tcase_create("limits");
    TCase *tr = tcase_create("random");

    tcase_add_checked_fixture(tb, heap_setup, heap_teardown);
    tcase_add_test(tb, alloc_patterns);
    tcase_add_test(tb, alloc_malloc_zero);
    tcase_add_test(tb, alloc_null_heap);
    tcase_add_test(tb, alloc_calloc);
    tcase_add_test(tb, alloc_realloc_contents);
    tcase_add_test(tb, alloc_realloc_in_place);
    tcase_add_test(tb, alloc_large);
    tcase_add_test(tb, alloc_offsets);
    tcase_add_test(tb, alloc_stats);
    tcase_add_test(tb, alloc_stats_peak);
    tcase_add_test(tb, alloc_stats_peak_free_only_thread);
    tcase_add_test(tb, alloc_thread_flush);
    tcase_add_test(tb, alloc_many_attachments);
    tcase_add_test(tb, alloc_threads_cross_free);
    tcase_set_timeout(tb, 60);
    suite_add_tcase(s, tb);

    tcase_add_test(tl, alloc_heap_limit);
    tcase_add_test(tl, alloc_heap_grows_to_limit);
    tcase_add_test(tl, alloc_large_after_free_all);
    tcase_add_test(tl, alloc_many_segments);
    tcase_set_timeout(tl, 60);
    suite_add_tcase(s, tl);

    tcase_add_loop_test(tr, alloc_random_model, 0, 4);
    tcase_set_timeout(tr, 120);
    suite_add_tcase(s, tr);
    return s;
}
