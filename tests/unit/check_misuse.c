/* Unit tests for what a heap must survive from its callers: frees of
 * pointers that are not objects, double frees caught at once and caught
 * later when the object reaches its slab, large objects freed twice, and a
 * handle used in a forked child. Each must be refused, counted in
 * heap_stats(), and leave the heap consistent. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/heap.h"
#include "shm/sizeclass.h"
#include "tests/common/testheap.h"
#include "tests/unit/heap_fixture.h"
#include "tests/unit/suites.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

/* Flushes go straight to the slabs: no recycler to hold objects back. */
static void heap_setup_no_recycler(void)
{
    struct shm_config cfg;

    th_config(&cfg, 64 * MiB);
    cfg.recycler_cap_bundles = 0;
    th_create(&th, &cfg, SHM_PAGES_OFF);
}

static void get_stats(struct heap *h, struct heap_stats *st)
{
    int r = heap_stats(h, st);

    ck_assert_msg(r == 0, "heap_stats: %s", strerror(-r));
}

/* Allocates n objects of size and checks that none is any of avoid[0..navoid) and that they
 * are distinct; frees them again. */
static void assert_fresh_objects(struct heap *h, size_t size, int n, void *const *avoid, int navoid)
{
    void *got[64];

    ck_assert_int_le(n, 64);
    for (int i = 0; i < n; i++) {
        got[i] = heap_malloc(h, size);
        ck_assert_ptr_nonnull(got[i]);
        for (int k = 0; k < i; k++)
            if (got[k] == got[i])
                ck_abort_msg("allocations %d and %d are both %p", k, i, got[i]);
        for (int k = 0; k < navoid; k++)
            if (got[i] == avoid[k])
                ck_abort_msg("allocation %d is %p, which is still live", i, got[i]);
    }
    for (int i = 0; i < n; i++)
        heap_free(h, got[i]);
}

START_TEST(misuse_free_outside)
{
    struct heap *h = th.h;
    struct heap_stats st0, st;
    void *live = heap_malloc(h, 64), *libc = malloc(64);
    char on_stack[64];
    void *bad[6];
    uint64_t seg1 = UINT64_C(1) << SHM_SEG_SHIFT;

    ck_assert_ptr_nonnull(live);
    ck_assert_ptr_nonnull(libc);
    th_fill_pattern(live, 64, 1);
    bad[0] = on_stack;
    bad[1] = libc;
    bad[2] = (char *) heap_ctl(h) + 4096;     /* the control segment */
    bad[3] = (char *) heap_ctl(h) + 64 * KiB; /* ...further in */
    bad[4] = heap_from_off(h, seg1 + 64);     /* a heap segment's header */
    bad[5] = heap_from_off(h, seg1 + 4096);   /* its block metadata */
    ck_assert_ptr_nonnull(bad[4]);
    ck_assert_ptr_nonnull(bad[5]);
    get_stats(h, &st0);
    for (int i = 0; i < 6; i++) {
        heap_free(h, bad[i]);
        get_stats(h, &st);
        ck_assert_msg(st.bad_frees == st0.bad_frees + (uint64_t) i + 1,
                      "free of bad pointer %d (%p): bad_frees %" PRIu64 ", want %" PRIu64, i,
                      bad[i], st.bad_frees, st0.bad_frees + i + 1);
    }
    ck_assert_uint_eq(st.double_frees, st0.double_frees);
    ck_assert_uint_eq(st.frees, st0.frees);
    ck_assert_uint_eq(st.bytes_in_use, st0.bytes_in_use);
    ck_assert_uint_eq(th_check_pattern(live, 64, 1), 64);
    /* heap_realloc of a foreign pointer is refused too. */
    errno = 0;
    ck_assert_ptr_null(heap_realloc(h, libc, 100));
    ck_assert_int_eq(errno, EINVAL);
    free(libc);
    th_verify(h);
    assert_fresh_objects(h, 64, 8, &live, 1);
    heap_free(h, live);
    th_verify(h);
}
END_TEST

/* Memory of arenas and pools and the inside of large objects is not heap_free()'s. */
START_TEST(misuse_free_not_an_object)
{
    struct heap *h = th.h;
    struct heap_stats st0, st;
    uint64_t arena, pool;
    char *large = heap_malloc(h, 300 * KiB), *a_obj, *p_obj;
    void *bad[5];

    ck_assert_ptr_nonnull(large);
    ck_assert_int_eq(heap_arena_create(h, 4096, 0, &arena), 0);
    ck_assert_int_eq(heap_pool_create(h, 64, &pool), 0);
    a_obj = heap_arena_alloc(h, arena, 64, 16);
    p_obj = heap_pool_alloc(h, pool);
    ck_assert_ptr_nonnull(a_obj);
    ck_assert_ptr_nonnull(p_obj);
    bad[0] = a_obj;
    bad[1] = heap_from_off(h, arena);
    bad[2] = p_obj;
    bad[3] = large + 4096;           /* inside the run's first block */
    bad[4] = large + SHM_BLOCK_SIZE; /* a later block of the run */
    get_stats(h, &st0);
    for (int i = 0; i < 5; i++)
        heap_free(h, bad[i]);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bad_frees, st0.bad_frees + 5);
    ck_assert_uint_eq(st.frees, st0.frees);
    ck_assert_uint_eq(heap_usable_size(h, large), 320 * KiB);
    ck_assert_ptr_nonnull(heap_arena_alloc(h, arena, 64, 16));
    ck_assert_int_eq(heap_pool_free(h, pool, p_obj), 0);
    ck_assert_int_eq(heap_arena_destroy(h, arena), 0);
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    heap_free(h, large);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    th_verify(h);
}
END_TEST

/* free(p); free(p): the second is seen at once (p heads the cache's list). */
START_TEST(misuse_double_free_immediate)
{
    static const size_t sizes[] = {16, 100, 1000, 20000};
    struct heap *h = th.h;
    struct heap_stats st0, st;

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        void *keep = heap_malloc(h, sizes[i]), *p = heap_malloc(h, sizes[i]);

        ck_assert_ptr_nonnull(keep);
        ck_assert_ptr_nonnull(p);
        get_stats(h, &st0);
        heap_free(h, p);
        heap_free(h, p);
        get_stats(h, &st);
        ck_assert_msg(st.double_frees == st0.double_frees + 1,
                      "size %zu: double_frees %" PRIu64 " -> %" PRIu64, sizes[i], st0.double_frees,
                      st.double_frees);
        ck_assert_uint_eq(st.frees, st0.frees + 1);
        th_verify(h);
        /* p comes back once, not twice. */
        assert_fresh_objects(h, sizes[i], 2, &keep, 1);
        heap_free(h, keep);
        th_verify(h);
    }
}
END_TEST

/* free(p), then p reaches its slab (a flush with no recycler sends the cache to the slabs),
 * then free(p) again: the cache takes it, and the flush that brings it to the slab finds it
 * free already. Counted, refused, and the heap is consistent. */
START_TEST(misuse_double_free_slow_path)
{
    enum { FILL = 200 };
    struct heap *h = th.h;
    struct heap_stats st0, st;
    void *keep, *p, *fill[FILL];

    keep = heap_malloc(h, 48); /* holds the slab, so that p's slab stays a slab */
    p = heap_malloc(h, 48);
    ck_assert_ptr_nonnull(keep);
    ck_assert_ptr_nonnull(p);
    heap_free(h, p);
    for (int i = 0; i < FILL; i++) {
        fill[i] = heap_malloc(h, 48);
        ck_assert_ptr_nonnull(fill[i]);
    }
    for (int i = 0; i < FILL; i++)
        heap_free(h, fill[i]);
    heap_thread_flush(h);
    th_verify(h);
    get_stats(h, &st0);
    ck_assert_uint_eq(st0.classes[sizeclass_of(48)].cached, 0);

    heap_free(h, p); /* p is free in its slab: a double free */
    heap_thread_flush(h);
    get_stats(h, &st);
    ck_assert_msg(st.double_frees == st0.double_frees + 1,
                  "double_frees %" PRIu64 " -> %" PRIu64 " after the slow-path double free",
                  st0.double_frees, st.double_frees);
    th_verify(h);
    /* p is handed out once only. */
    for (int i = 0; i < FILL; i++) {
        fill[i] = heap_malloc(h, 48);
        ck_assert_ptr_nonnull(fill[i]);
        ck_assert_ptr_ne(fill[i], keep);
    }
    for (int i = 0; i < FILL; i++)
        for (int k = i + 1; k < FILL; k++)
            if (fill[i] == fill[k])
                ck_abort_msg("object %p handed out twice", fill[i]);
    for (int i = 0; i < FILL; i++)
        heap_free(h, fill[i]);
    heap_free(h, keep);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    th_verify(h);
}
END_TEST

/* The figures after a double free that the slab refused: once everything is freed, no
 * class may claim objects in use (the cache counted the refused free as a free; `frees`
 * keeps counting it, in_use must not). */
START_TEST(misuse_double_free_slow_path_figures)
{
    struct heap *h = th.h;
    struct heap_stats st;
    unsigned cls = sizeclass_of(48);
    void *keep = heap_malloc(h, 48), *p = heap_malloc(h, 48);

    ck_assert_ptr_nonnull(keep);
    ck_assert_ptr_nonnull(p);
    heap_free(h, p);
    heap_thread_flush(h); /* p is free in its slab */
    heap_free(h, p);      /* refused at the next flush */
    heap_thread_flush(h);
    heap_free(h, keep);
    heap_thread_flush(h);
    get_stats(h, &st);
    ck_assert_uint_ge(st.double_frees, 1);
    ck_assert_msg(st.classes[cls].in_use == 0,
                  "after freeing everything: class %u in_use %" PRIu64 " (%" PRId64
                  "), allocs %" PRIu64 ", frees %" PRIu64,
                  cls, st.classes[cls].in_use, (int64_t) st.classes[cls].in_use, st.allocs,
                  st.frees);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    th_verify(h);
}
END_TEST

/* The same with the default recycler: p goes back to its slab with a trim, is freed again,
 * and the double free is caught when a trim brings it to the slab a second time. */
START_TEST(misuse_double_free_after_trim)
{
    struct heap *h = th.h;
    struct heap_stats st0, st;
    struct trim_result res;
    void *keep = heap_malloc(h, 200), *p = heap_malloc(h, 200);

    ck_assert_ptr_nonnull(keep);
    ck_assert_ptr_nonnull(p);
    heap_free(h, p);
    ck_assert_int_eq(heap_trim(h, 100, &res), 0);
    th_verify(h);
    get_stats(h, &st0);
    heap_free(h, p);
    ck_assert_int_eq(heap_trim(h, 100, &res), 0);
    get_stats(h, &st);
    ck_assert_uint_eq(st.double_frees, st0.double_frees + 1);
    th_verify(h);
    assert_fresh_objects(h, 200, 2, &keep, 1);
    heap_free(h, keep);
    th_verify(h);
}
END_TEST

START_TEST(misuse_double_free_large)
{
    static const size_t sizes[] = {40 * KiB, 1 * MiB};
    struct heap *h = th.h;
    struct heap_stats st0, st;

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        void *p = heap_malloc(h, sizes[i]), *q;

        ck_assert_ptr_nonnull(p);
        get_stats(h, &st0);
        heap_free(h, p);
        heap_free(h, p);
        get_stats(h, &st);
        /* Counted once, as a double or a bad free; the run was freed once. */
        ck_assert_msg(st.double_frees + st.bad_frees == st0.double_frees + st0.bad_frees + 1,
                      "size %zu: double %" PRIu64 " -> %" PRIu64 ", bad %" PRIu64 " -> %" PRIu64,
                      sizes[i], st0.double_frees, st.double_frees, st0.bad_frees, st.bad_frees);
        ck_assert_uint_eq(st.frees, st0.frees + 1);
        ck_assert_uint_eq(st.bytes_in_use, 0);
        th_verify(h);
        /* The run comes back once; a second allocation gets another. */
        p = heap_malloc(h, sizes[i]);
        q = heap_malloc(h, sizes[i]);
        ck_assert_ptr_nonnull(p);
        ck_assert_ptr_nonnull(q);
        ck_assert_ptr_ne(p, q);
        heap_free(h, p);
        heap_free(h, q);
        th_verify(h);
    }
}
END_TEST

/* A handle inherited through fork() is refused in the child (ESTALE), and whatever the child
 * tries leaves the parent's heap as it was. */
START_TEST(misuse_handle_in_forked_child)
{
    struct heap *h = th.h;
    struct heap_stats st0, st;
    void *p = heap_malloc(h, 64), *big = heap_malloc(h, 1 * MiB), *cached;
    pid_t pid;

    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(big);
    cached = heap_malloc(h, 64);
    ck_assert_ptr_nonnull(cached);
    heap_free(h, cached); /* the parent's cache holds an object of this class */
    th_fill_pattern(p, 64, 5);
    get_stats(h, &st0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fails = 0;
        void *q;

#define CHILD_EXPECT(cond)                                                                      \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "child: %s:%d: %s (errno %d)\n", __FILE__, __LINE__, #cond, errno); \
            fails++;                                                                            \
        }                                                                                       \
    } while (0)
        errno = 0;
        q = heap_malloc(h, 64);
        CHILD_EXPECT(q == NULL && errno == ESTALE);
        errno = 0;
        q = heap_malloc(h, 2 * MiB);
        CHILD_EXPECT(q == NULL && errno == ESTALE);
        errno = 0;
        q = heap_calloc(h, 4, 16);
        CHILD_EXPECT(q == NULL && errno == ESTALE);
        errno = 0;
        q = heap_aligned_alloc(h, 256, 100);
        CHILD_EXPECT(q == NULL && errno == ESTALE);
        errno = 0;
        q = heap_realloc(h, NULL, 64);
        CHILD_EXPECT(q == NULL && errno == ESTALE);
        /* Frees through the stale handle must not touch the parent's cache. */
        heap_free(h, p);
        heap_free(h, big);
        heap_thread_flush(h);
        _exit(fails ? 1 : 0);
#undef CHILD_EXPECT
    }
    ck_assert_int_eq(th_wait_child(pid), 0);
    get_stats(h, &st);
    ck_assert_uint_eq(st.allocs, st0.allocs);
    ck_assert_uint_eq(st.frees, st0.frees);
    ck_assert_uint_eq(st.bytes_in_use, st0.bytes_in_use);
    ck_assert_uint_eq(th_check_pattern(p, 64, 5), 64);
    th_verify(h);
    /* p and big are still the parent's: not handed out again. */
    {
        void *avoid[2] = {p, big};

        assert_fresh_objects(h, 64, 4, avoid, 2);
    }
    heap_free(h, p);
    heap_free(h, big);
    get_stats(h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    th_verify(h);
}
END_TEST

Suite *misuse_suite(void)
{
    Suite *s = suite_create("misuse");
    TCase *tc = tcase_create("core");
    TCase *tn = tcase_create("no_recycler");

    tcase_add_checked_fixture(tc, heap_setup, heap_teardown);
    tcase_add_test(tc, misuse_free_outside);
    tcase_add_test(tc, misuse_free_not_an_object);
    tcase_add_test(tc, misuse_double_free_immediate);
    tcase_add_test(tc, misuse_double_free_after_trim);
    tcase_add_test(tc, misuse_double_free_large);
    tcase_add_test(tc, misuse_handle_in_forked_child);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tcase_add_checked_fixture(tn, heap_setup_no_recycler, heap_teardown);
    tcase_add_test(tn, misuse_double_free_slow_path);
    tcase_add_test(tn, misuse_double_free_slow_path_figures);
    tcase_set_timeout(tn, 60);
    suite_add_tcase(s, tn);
    return s;
}
