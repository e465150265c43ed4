/* Unit tests for shm/pool.c: fixed-size pools over several chunks, reuse
 * of freed objects, frees of pointers that are not the pool's, running out
 * of heap, destroy, and a pool shared with a forked child. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/heap.h"
#include "tests/common/testheap.h"
#include "tests/unit/heap_fixture.h"
#include "tests/unit/suites.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

static uint64_t pool_new(struct heap *h, size_t size)
{
    uint64_t pool = 0;
    int r = heap_pool_create(h, size, &pool);

    ck_assert_msg(r == 0, "pool_create(%zu): %s", size, strerror(-r));
    ck_assert_uint_ne(pool, 0);
    return pool;
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *) a, y = (uintptr_t) * (void *const *) b;

    return x < y ? -1 : x > y;
}

static const size_t pool_sizes[] = {1, 16, 24, 100, 4096, 40000};

/* More than two chunks' worth of objects (a chunk is 1 MiB): all distinct, 16-aligned, not
 * overlapping, usable to their last byte; freed and had again. */
START_TEST(pool_many_objects)
{
    const size_t size = pool_sizes[_i], rounded = (size + 15) & ~(size_t) 15;
    const size_t n = (size_t) (test_scaled(5 * MiB / 2, 2) / rounded) + 1;
    struct heap *h = th.h;
    struct heap_stats st0, st1;
    void **objs = calloc(n, sizeof(*objs)), **again = calloc(n, sizeof(*again));
    uint64_t pool;

    ck_assert_ptr_nonnull(objs);
    ck_assert_ptr_nonnull(again);
    ck_assert_int_eq(heap_stats(h, &st0), 0);
    pool = pool_new(h, size);
    for (size_t i = 0; i < n; i++) {
        objs[i] = heap_pool_alloc(h, pool);
        if (!objs[i])
            ck_abort_msg("pool(%zu): alloc #%zu: %s", size, i, strerror(errno));
        if ((uintptr_t) objs[i] % 16 || !heap_contains(h, objs[i]))
            ck_abort_msg("pool(%zu): object %p misaligned or outside the heap", size, objs[i]);
        th_fill_pattern(objs[i], rounded, i);
    }
    for (size_t i = 0; i < n; i++)
        if (th_check_pattern(objs[i], rounded, i) != rounded)
            ck_abort_msg("pool(%zu): object %zu (%p) was overwritten", size, i, objs[i]);
    qsort(objs, n, sizeof(*objs), cmp_ptr);
    for (size_t i = 1; i < n; i++)
        if ((uintptr_t) objs[i] - (uintptr_t) objs[i - 1] < rounded)
            ck_abort_msg("pool(%zu): objects %p and %p overlap", size, objs[i - 1], objs[i]);

    for (size_t i = 0; i < n; i++) {
        int r = heap_pool_free(h, pool, objs[i]);

        if (r != 0)
            ck_abort_msg("pool(%zu): free(%p): %s", size, objs[i], strerror(-r));
    }
    /* Every object comes back before any fresh one. */
    for (size_t i = 0; i < n; i++) {
        again[i] = heap_pool_alloc(h, pool);
        if (!again[i])
            ck_abort_msg("pool(%zu): realloc #%zu: %s", size, i, strerror(errno));
    }
    qsort(again, n, sizeof(*again), cmp_ptr);
    for (size_t i = 0; i < n; i++)
        if (again[i] != objs[i])
            ck_abort_msg("pool(%zu): after freeing all, object %zu is %p, was %p", size, i,
                         again[i], objs[i]);
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    ck_assert_int_eq(heap_stats(h, &st1), 0);
    ck_assert_uint_eq(st1.segs[0].free_blocks, st0.segs[0].free_blocks);
    free(objs);
    free(again);
    th_verify(h);
}
END_TEST

/* Frees of pointers that are not this pool's: an error each, and the pool hands out exactly
 * what it did before. */
START_TEST(pool_free_foreign)
{
    enum { K = 50 };
    struct heap *h = th.h;
    uint64_t pa = pool_new(h, 64), pb = pool_new(h, 64), arena;
    void *mine[K + 1], *b = heap_pool_alloc(h, pb), *m = heap_malloc(h, 64);
    void *large = heap_malloc(h, 1 * MiB), *libc = malloc(64), *arena_obj;
    char on_stack[64];
    void *bad[12];
    size_t nbad = 0;

    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(large);
    ck_assert_ptr_nonnull(libc);
    ck_assert_int_eq(heap_arena_create(h, 4096, 0, &arena), 0);
    arena_obj = heap_arena_alloc(h, arena, 64, 16);
    ck_assert_ptr_nonnull(arena_obj);
    for (int i = 0; i < K; i++) {
        mine[i] = heap_pool_alloc(h, pa);
        ck_assert_ptr_nonnull(mine[i]);
    }
    for (int i = 0; i < K; i++)
        ck_assert_int_eq(heap_pool_free(h, pa, mine[i]), 0);

    bad[nbad++] = b;                           /* another pool's object */
    bad[nbad++] = m;                           /* a heap_malloc'd one */
    bad[nbad++] = large;                       /* a large object */
    bad[nbad++] = arena_obj;                   /* an arena's */
    bad[nbad++] = libc;                        /* glibc's */
    bad[nbad++] = on_stack;                    /* the stack */
    bad[nbad++] = (char *) mine[3] + 8;        /* inside an object of the pool */
    bad[nbad++] = (char *) mine[3] + 16;       /* 16-aligned, still inside */
    bad[nbad++] = heap_from_off(h, pa);        /* the pool's header */
    bad[nbad++] = (char *) heap_ctl(h) + 4096; /* the control segment */
    bad[nbad++] = (void *) (uintptr_t) 0x1000; /* garbage */
    for (size_t i = 0; i < nbad; i++) {
        int r = heap_pool_free(h, pa, bad[i]);

        if (r >= 0)
            ck_abort_msg("pool_free(%p) (bad pointer %zu) returned %d", bad[i], i, r);
    }
    ck_assert_int_eq(heap_pool_free(h, pa, NULL), -EINVAL);
    ck_assert_int_eq(heap_pool_free(h, 0, mine[0]), -EINVAL);
    ck_assert_int_eq(heap_pool_free(h, heap_to_off(h, m), mine[0]), -EINVAL);
    ck_assert_int_eq(heap_pool_free(h, arena, mine[0]), -EINVAL);
    ck_assert_int_eq(heap_pool_free(NULL, pa, mine[0]), -EINVAL);

    /* Exactly the K freed objects come back, then a fresh one, none of them a bad pointer. */
    for (int i = 0; i < K + 1; i++) {
        mine[i] = heap_pool_alloc(h, pa);
        ck_assert_ptr_nonnull(mine[i]);
        for (size_t k = 0; k < nbad; k++)
            if (mine[i] == bad[k])
                ck_abort_msg("pool handed out the bad pointer %p", bad[k]);
    }
    qsort(mine, K + 1, sizeof(mine[0]), cmp_ptr);
    for (int i = 1; i < K + 1; i++)
        ck_assert_ptr_ne(mine[i], mine[i - 1]);
    /* The other pool and the heap are unharmed. */
    ck_assert_int_eq(heap_pool_free(h, pb, b), 0);
    ck_assert_ptr_eq(heap_pool_alloc(h, pb), b);
    heap_free(h, m);
    heap_free(h, large);
    free(libc);
    ck_assert_int_eq(heap_arena_destroy(h, arena), 0);
    ck_assert_int_eq(heap_pool_destroy(h, pa), 0);
    ck_assert_int_eq(heap_pool_destroy(h, pb), 0);
    th_verify(h);
}
END_TEST

/* A pool of 4096-byte objects: its 1 MiB chunk, after the header, does not end on an object
 * boundary. The slot that starts inside the chunk and ends past it was never handed out, and
 * a free of it must be refused: otherwise the next alloc hands out 4096 bytes that run into
 * the block after the chunk (another run's memory). */
START_TEST(pool_free_past_chunk_end)
{
    struct heap *h = th.h;
    uint64_t pool = pool_new(h, 4096);
    char *base = heap_from_off(h, pool), *first = heap_pool_alloc(h, pool), *end, *tail, *p;
    int r;

    ck_assert_ptr_nonnull(first);
    end = base + 1 * MiB; /* the chunk's run: 16 blocks */
    ck_assert_uint_ne((uintptr_t) (end - first) % 4096, 0);
    tail = first + (uintptr_t) (end - first) / 4096 * 4096;
    ck_assert(tail < end && tail + 4096 > end);
    r = heap_pool_free(h, pool, tail);
    if (r == 0) {
        p = heap_pool_alloc(h, pool);
        ck_abort_msg("pool_free accepted %p, whose 4096 bytes end %td bytes past the chunk "
                     "(the chunk ends at %p); the next pool_alloc returned %p",
                     (void *) tail, tail + 4096 - end, (void *) end, (void *) p);
    }
    ck_assert_int_lt(r, 0);
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    th_verify(h);
}
END_TEST

/* A slot past the pool's bump pointer was never handed out: freeing it must be refused, or
 * the pool later hands out that object twice (once from the free list, once fresh). */
START_TEST(pool_free_never_allocated)
{
    enum { N = 300 };
    struct heap *h = th.h;
    uint64_t pool = pool_new(h, 64);
    char *first = heap_pool_alloc(h, pool), *unissued = first + 10 * 64;
    void *got[N];
    int r, dup = -1;

    ck_assert_ptr_nonnull(first);
    r = heap_pool_free(h, pool, unissued);
    for (int i = 0; i < N; i++) {
        got[i] = heap_pool_alloc(h, pool);
        ck_assert_ptr_nonnull(got[i]);
        for (int k = 0; k < i && dup < 0; k++)
            if (got[k] == got[i])
                dup = i;
    }
    ck_assert_msg(r < 0 && dup < 0,
                  "pool_free of the never-allocated slot %p returned %d; allocation %d handed "
                  "out an object a second time",
                  (void *) unissued, r, dup);
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    th_verify(h);
}
END_TEST

START_TEST(pool_bad_arguments)
{
    struct heap *h = th.h;
    uint64_t pool = 0, p2;
    void *obj, *m = heap_malloc(h, 32);

    ck_assert_int_eq(heap_pool_create(h, 0, &pool), -EINVAL);
    ck_assert_int_eq(heap_pool_create(h, 16, NULL), -EINVAL);
    ck_assert_int_eq(heap_pool_create(NULL, 16, &pool), -EINVAL);
    ck_assert_int_eq(heap_pool_create(h, SHM_SEG_SPAN, &pool), -EINVAL);
    ck_assert_int_eq(heap_pool_create(h, SIZE_MAX, &pool), -EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_pool_alloc(h, 0));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_pool_alloc(h, heap_to_off(h, m)));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(heap_pool_destroy(h, 0), -EINVAL);
    ck_assert_int_eq(heap_pool_destroy(h, heap_to_off(h, m)), -EINVAL);

    pool = pool_new(h, 40);
    p2 = pool_new(h, 40);
    obj = heap_pool_alloc(h, pool);
    ck_assert_ptr_nonnull(obj);
    errno = 0;
    ck_assert_ptr_null(heap_pool_alloc(h, pool + 64)); /* inside the pool, not its start */
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    /* Destroyed: every operation fails cleanly. */
    ck_assert_int_eq(heap_pool_destroy(h, pool), -EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_pool_alloc(h, pool));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(heap_pool_free(h, pool, obj), -EINVAL);
    /* The other pool does not mind. */
    obj = heap_pool_alloc(h, p2);
    ck_assert_ptr_nonnull(obj);
    ck_assert_int_eq(heap_pool_free(h, p2, obj), 0);
    ck_assert_int_eq(heap_pool_destroy(h, p2), 0);
    heap_free(h, m);
    th_verify(h);
}
END_TEST

/* A pool in a heap that cannot grow: alloc fails with ENOMEM once the heap is full, and the
 * pool keeps working with what it has. */
START_TEST(pool_heap_full)
{
    struct shm_config cfg;
    struct test_heap t;
    uint64_t pool;
    void *p, *last = NULL;
    size_t n = 0;

    th_config(&cfg, 16 * MiB);
    cfg.max_segments = 1;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    pool = pool_new(t.h, 4096);
    for (;;) {
        errno = 0;
        p = heap_pool_alloc(t.h, pool);
        if (!p)
            break;
        memset(p, 0x11, 4096);
        last = p;
        if (++n > 16 * MiB / 4096)
            ck_abort_msg("%zu objects of 4 KiB from a 16 MiB heap", n);
    }
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_uint_gt(n, 8 * MiB / 4096);
    ck_assert_int_eq(heap_pool_free(t.h, pool, last), 0);
    ck_assert_ptr_eq(heap_pool_alloc(t.h, pool), last);
    th_verify(t.h);
    ck_assert_int_eq(heap_pool_destroy(t.h, pool), 0);
    p = heap_malloc(t.h, 8 * MiB);
    ck_assert_msg(p != NULL, "the destroyed pool's chunks were not given back");
    heap_free(t.h, p);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* The pool lives in shared memory: a child allocates from it and frees the parent's. */
START_TEST(pool_shared_with_child)
{
    enum { N = 1000 };
    struct heap *h = th.h;
    uint64_t pool = pool_new(h, 32), offs[N];
    void *mine[N];
    pid_t pid;

    for (int i = 0; i < N; i++) {
        mine[i] = heap_pool_alloc(h, pool);
        ck_assert_ptr_nonnull(mine[i]);
        th_fill_pattern(mine[i], 32, (uint64_t) i);
        offs[i] = heap_to_off(h, mine[i]);
    }
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct heap *hc = th_attach_child(&th, 2);

        for (int i = 0; i < N; i += 2) {
            void *p = heap_from_off(hc, offs[i]);

            if (!p || th_check_pattern(p, 32, (uint64_t) i) != 32 ||
                heap_pool_free(hc, pool, p) != 0)
                _exit(1);
        }
        for (int i = 0; i < N / 2; i++) {
            void *p = heap_pool_alloc(hc, pool);

            if (!p)
                _exit(2);
            th_fill_pattern(p, 32, UINT64_C(1) << 32 | (uint64_t) i);
        }
        heap_detach(hc);
        _exit(0);
    }
    ck_assert_int_eq(th_wait_child(pid), 0);
    /* The child reused exactly the slots it freed, and ours are intact. */
    for (int i = 1; i < N; i += 2)
        if (th_check_pattern(mine[i], 32, (uint64_t) i) != 32)
            ck_abort_msg("object %d changed", i);
    for (int i = 0; i < N; i += 2)
        if (th_check_pattern(mine[i], 32, (uint64_t) i) == 32)
            ck_abort_msg("slot %d freed by the child was not reused", i);
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    th_verify(h);
}
END_TEST

Suite *pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("core");
    TCase *tm = tcase_create("misuse");

    tcase_add_checked_fixture(tc, heap_setup, heap_teardown);
    tcase_add_loop_test(tc, pool_many_objects, 0,
                        (int) (sizeof(pool_sizes) / sizeof(pool_sizes[0])));
    tcase_add_test(tc, pool_bad_arguments);
    tcase_add_test(tc, pool_heap_full);
    tcase_add_test(tc, pool_shared_with_child);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tcase_add_checked_fixture(tm, heap_setup, heap_teardown);
    tcase_add_test(tm, pool_free_foreign);
    tcase_add_test(tm, pool_free_past_chunk_end);
    tcase_add_test(tm, pool_free_never_allocated);
    tcase_set_timeout(tm, 60);
    suite_add_tcase(s, tm);
    return s;
}
