/* Unit tests for shm/arena.c: bump allocation with alignments, the figures,
 * running out of space, O(1) reset, destroy, bogus handles, SESSION arenas
 * and an arena shared with a forked child. */
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

static uint64_t arena_new(struct heap *h, size_t capacity, unsigned flags)
{
    uint64_t a = 0;
    int r = heap_arena_create(h, capacity, flags, &a);

    ck_assert_msg(r == 0, "arena_create(%zu): %s", capacity, strerror(-r));
    ck_assert_uint_ne(a, 0);
    ck_assert_uint_eq(a % SHM_BLOCK_SIZE, 0);
    return a;
}

static void arena_get_stats(struct heap *h, uint64_t a, struct arena_stats *st)
{
    int r = heap_arena_stats(h, a, st);

    ck_assert_msg(r == 0, "arena_stats: %s", strerror(-r));
    ck_assert_uint_eq(st->remaining, st->capacity - st->allocated);
    ck_assert_msg(st->utilization * (double) st->capacity - (double) st->allocated < 1e-3 &&
                          (double) st->allocated - st->utilization * (double) st->capacity < 1e-3,
                  "utilization %f for %" PRIu64 " of %" PRIu64, st->utilization, st->allocated,
                  st->capacity);
}

START_TEST(arena_alignments)
{
    enum { N = 200 };
    static const size_t aligns[] = {0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
    const size_t capacity = 1 * MiB;
    struct heap *h = th.h;
    struct arena_stats st;
    uint64_t a = arena_new(h, capacity, 0), sum = 0;
    char *lo, *hi, *prev_end;
    struct {
        char *p;
        size_t size;
    } got[N];

    arena_get_stats(h, a, &st);
    ck_assert_uint_eq(st.capacity, capacity);
    ck_assert_uint_eq(st.allocated, 0);
    ck_assert_uint_eq(st.count, 0);
    ck_assert_uint_eq(st.remaining, capacity);
    lo = heap_from_off(h, a);
    ck_assert_ptr_nonnull(lo);
    hi = lo + SHM_BLOCK_SIZE * ((capacity + SHM_BLOCK_SIZE) / SHM_BLOCK_SIZE + 1);
    prev_end = lo;
    for (int i = 0; i < N; i++) {
        size_t align = aligns[i % (sizeof(aligns) / sizeof(aligns[0]))];
        size_t size = 1 + (size_t) (i * 37) % 700;
        char *p = heap_arena_alloc(h, a, size, align);

        if (!p)
            ck_abort_msg("arena_alloc(%zu, %zu) #%d: %s", size, align, i, strerror(errno));
        if ((uintptr_t) p % (align ? align : 16))
            ck_abort_msg("arena_alloc(%zu, %zu) = %p is misaligned", size, align, (void *) p);
        if (p < prev_end || p + size > hi)
            ck_abort_msg("arena_alloc #%d = %p overlaps the previous one or leaves the arena", i,
                         (void *) p);
        th_fill_pattern(p, size, (uint64_t) i);
        got[i].p = p;
        got[i].size = size;
        prev_end = p + size;
        sum += size;
    }
    arena_get_stats(h, a, &st);
    ck_assert_uint_eq(st.count, N);
    ck_assert_uint_ge(st.allocated, sum); /* with padding */
    ck_assert_uint_le(st.allocated, sum + (uint64_t) N * 4096);
    ck_assert_uint_eq((uint64_t) (prev_end - lo) - 64, st.allocated); /* 64: the header */
    for (int i = 0; i < N; i++)
        if (th_check_pattern(got[i].p, got[i].size, (uint64_t) i) != got[i].size)
            ck_abort_msg("arena object %d changed", i);
    /* Arena memory is not heap_free()'s: refused and counted, nothing changes. */
    heap_free(h, got[5].p);
    ck_assert_uint_eq(th_check_pattern(got[5].p, got[5].size, 5), got[5].size);
    ck_assert_int_eq(heap_arena_destroy(h, a), 0);
    th_verify(h);
}
END_TEST

START_TEST(arena_out_of_space)
{
    struct heap *h = th.h;
    struct arena_stats st, st2;
    uint64_t a = arena_new(h, 64 * KiB, 0);
    char *p, *q;

    p = heap_arena_alloc(h, a, 60000, 16);
    ck_assert_ptr_nonnull(p);
    arena_get_stats(h, a, &st);
    ck_assert_uint_eq(st.allocated, 60000);
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(h, a, 10000, 16));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(h, a, SIZE_MAX, 16));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(h, a, SIZE_MAX - 100, 4096));
    ck_assert_int_eq(errno, ENOMEM);
    /* A failure changes nothing. */
    arena_get_stats(h, a, &st2);
    ck_assert_uint_eq(st2.allocated, st.allocated);
    ck_assert_uint_eq(st2.count, st.count);
    /* Still usable: what is left can be had, to the last byte. */
    q = heap_arena_alloc(h, a, 1000, 8);
    ck_assert_ptr_nonnull(q);
    ck_assert(q >= p + 60000);
    memset(q, 1, 1000);
    arena_get_stats(h, a, &st);
    q = heap_arena_alloc(h, a, st.remaining, 1);
    ck_assert_ptr_nonnull(q);
    memset(q, 2, st.remaining);
    arena_get_stats(h, a, &st);
    ck_assert_uint_eq(st.remaining, 0);
    ck_assert_uint_eq(st.count, 3);
    ck_assert_double_eq_tol(st.utilization, 1.0, 1e-12);
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(h, a, 1, 1));
    ck_assert_int_eq(errno, ENOMEM);
    /* A zero-byte allocation at the very end is harmless either way. */
    (void) heap_arena_alloc(h, a, 0, 1);
    ck_assert_int_eq(heap_arena_destroy(h, a), 0);
    th_verify(h);
}
END_TEST

START_TEST(arena_reset)
{
    const size_t capacity = 256 * KiB;
    struct heap *h = th.h;
    struct arena_stats st;
    uint64_t a = arena_new(h, capacity, 0);
    char *first = NULL, *p;

    for (int round = 0; round < 3; round++) {
        int n = 0;

        while ((p = heap_arena_alloc(h, a, 1000, 64)) != NULL) {
            if (n == 0 && round == 0)
                first = p;
            if (n == 0)
                ck_assert_ptr_eq(p, first); /* each round starts at the start again */
            memset(p, round, 1000);
            n++;
        }
        ck_assert_int_eq(errno, ENOMEM);
        ck_assert_int_ge(n, (int) (capacity / 1024) - 1);
        arena_get_stats(h, a, &st);
        ck_assert_uint_eq(st.count, (uint64_t) n);
        ck_assert_int_eq(heap_arena_reset(h, a), 0);
        arena_get_stats(h, a, &st);
        ck_assert_uint_eq(st.allocated, 0);
        ck_assert_uint_eq(st.count, 0);
        ck_assert_uint_eq(st.remaining, capacity);
        ck_assert_double_eq_tol(st.utilization, 0.0, 1e-12);
    }
    /* The whole capacity in one piece. */
    p = heap_arena_alloc(h, a, capacity, 16);
    ck_assert_ptr_eq(p, first);
    memset(p, 0xee, capacity);
    ck_assert_int_eq(heap_arena_reset(h, a), 0);
    ck_assert_int_eq(heap_arena_destroy(h, a), 0);
    th_verify(h);
}
END_TEST

START_TEST(arena_destroy_and_bogus)
{
    struct heap *h = th.h;
    struct heap_stats hs0, hs1;
    struct arena_stats st;
    uint64_t a, big, pool, bogus[12];
    void *small = heap_malloc(h, 100), *large = heap_malloc(h, 300 * KiB);
    size_t nb = 0;

    ck_assert_ptr_nonnull(small);
    ck_assert_ptr_nonnull(large);
    ck_assert_int_eq(heap_stats(h, &hs0), 0);
    a = arena_new(h, 1000, 0);
    big = arena_new(h, 1 * MiB, 0);
    ck_assert_int_eq(heap_pool_create(h, 64, &pool), 0);
    ck_assert_ptr_nonnull(heap_arena_alloc(h, a, 100, 16));

    /* Bad arguments to create. */
    ck_assert_int_eq(heap_arena_create(h, 0, 0, &a), -EINVAL);
    ck_assert_int_eq(heap_arena_create(h, 100, 2, &a), -EINVAL);
    ck_assert_int_eq(heap_arena_create(h, 100, 0, NULL), -EINVAL);
    ck_assert_int_eq(heap_arena_create(NULL, 100, 0, &a), -EINVAL);
    ck_assert_int_eq(heap_arena_create(h, SIZE_MAX, 0, &a), -ENOMEM);
    /* Bad alignments. */
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(h, a, 10, 3));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(h, a, 10, 48));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(h, a, 10, 2 * SHM_BLOCK_SIZE));
    ck_assert_int_eq(errno, EINVAL);

    /* Offsets that are no arena. */
    bogus[nb++] = 0;
    bogus[nb++] = 1;
    bogus[nb++] = a + 64;               /* inside the arena, not its start */
    bogus[nb++] = big + SHM_BLOCK_SIZE; /* a later block of an arena's run */
    bogus[nb++] = heap_to_off(h, small);
    bogus[nb++] = heap_to_off(h, large); /* a run, of another kind */
    bogus[nb++] = pool;
    bogus[nb++] = UINT64_C(1) << SHM_SEG_SHIFT; /* the segment header */
    bogus[nb++] = UINT64_C(2) << SHM_SEG_SHIFT; /* no such segment */
    bogus[nb++] = UINT64_C(31) << SHM_SEG_SHIFT;
    bogus[nb++] = UINT64_MAX & ~(SHM_BLOCK_SIZE - 1);
    for (size_t i = 0; i < nb; i++) {
        errno = 0;
        if (heap_arena_alloc(h, bogus[i], 16, 16) != NULL || errno != EINVAL)
            ck_abort_msg("arena_alloc on bogus offset %#" PRIx64 ": not EINVAL", bogus[i]);
        if (heap_arena_reset(h, bogus[i]) != -EINVAL ||
            heap_arena_stats(h, bogus[i], &st) != -EINVAL ||
            heap_arena_destroy(h, bogus[i]) != -EINVAL)
            ck_abort_msg("arena operation on bogus offset %#" PRIx64 " not -EINVAL", bogus[i]);
    }
    ck_assert_int_eq(heap_arena_stats(h, a, NULL), -EINVAL);
    ck_assert_int_eq(heap_arena_stats(NULL, a, &st), -EINVAL);
    ck_assert_int_eq(heap_arena_reset(NULL, a), -EINVAL);
    ck_assert_int_eq(heap_arena_destroy(NULL, a), -EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(NULL, a, 16, 16));
    ck_assert_int_eq(errno, EINVAL);
    /* None of that hurt the real ones. */
    arena_get_stats(h, a, &st);
    ck_assert_uint_eq(st.count, 1);
    ck_assert_ptr_nonnull(heap_arena_alloc(h, big, 1000, 16));

    /* Destroyed: every operation fails cleanly, a second destroy too. */
    ck_assert_int_eq(heap_arena_destroy(h, a), 0);
    ck_assert_int_eq(heap_arena_destroy(h, big), 0);
    ck_assert_int_eq(heap_arena_destroy(h, a), -EINVAL);
    ck_assert_int_eq(heap_arena_stats(h, a, &st), -EINVAL);
    ck_assert_int_eq(heap_arena_reset(h, big), -EINVAL);
    errno = 0;
    ck_assert_ptr_null(heap_arena_alloc(h, big, 16, 16));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(heap_pool_destroy(h, pool), 0);
    /* Their blocks are free again. */
    ck_assert_int_eq(heap_stats(h, &hs1), 0);
    ck_assert_uint_eq(hs1.segs[0].free_blocks, hs0.segs[0].free_blocks);
    ck_assert_uint_eq(hs1.bytes_in_use, hs0.bytes_in_use);
    heap_free(h, small);
    heap_free(h, large);
    th_verify(h);
}
END_TEST

START_TEST(arena_destroy_session)
{
    struct heap *h = th.h, *h2;
    struct arena_stats st;
    uint64_t a1, a2, a3, b1, b2;
    int r;

    r = heap_local_attach(th.local, 2, &h2);
    ck_assert_msg(r == 0, "second attachment: %s", strerror(-r));
    a1 = arena_new(h, 4096, HEAP_ARENA_SESSION);
    a2 = arena_new(h, 4096, 0);
    a3 = arena_new(h, 200 * KiB, HEAP_ARENA_SESSION);
    b1 = arena_new(h2, 4096, HEAP_ARENA_SESSION);
    b2 = arena_new(h2, 4096, 0);
    ck_assert_ptr_nonnull(heap_arena_alloc(h, a1, 10, 16));
    ck_assert_ptr_nonnull(heap_arena_alloc(h2, b1, 10, 16));

    ck_assert_int_eq(heap_arena_destroy_session(h, 1), 2);
    ck_assert_int_eq(heap_arena_stats(h, a1, &st), -EINVAL);
    ck_assert_int_eq(heap_arena_stats(h, a3, &st), -EINVAL);
    ck_assert_int_eq(heap_arena_stats(h, a2, &st), 0);
    ck_assert_int_eq(heap_arena_stats(h, b1, &st), 0);
    ck_assert_uint_eq(st.count, 1);
    ck_assert_int_eq(heap_arena_stats(h, b2, &st), 0);
    ck_assert_int_eq(heap_arena_destroy_session(h, 1), 0);
    ck_assert_int_eq(heap_arena_destroy_session(h, 99), 0);
    /* Any attachment may do it for any client (the daemon does it for the gone). */
    ck_assert_int_eq(heap_arena_destroy_session(h, 2), 1);
    ck_assert_int_eq(heap_arena_stats(h2, b1, &st), -EINVAL);
    ck_assert_int_eq(heap_arena_stats(h2, b2, &st), 0);
    ck_assert_int_eq(heap_arena_destroy_session(NULL, 1), -EINVAL);
    ck_assert_int_eq(heap_arena_destroy(h, a2), 0);
    ck_assert_int_eq(heap_arena_destroy(h2, b2), 0);
    th_verify(h);
    heap_detach(h2);
    th_verify(h);
}
END_TEST

/* The arena lives in shared memory: a child finds it by offset and allocates from it. */
START_TEST(arena_shared_with_child)
{
    struct heap *h = th.h;
    struct arena_stats st;
    uint64_t a = arena_new(h, 64 * KiB, 0);
    char *p = heap_arena_alloc(h, a, 100, 16), *q;
    pid_t pid;

    ck_assert_ptr_nonnull(p);
    th_fill_pattern(p, 100, 1);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct heap *hc = th_attach_child(&th, 2);
        struct arena_stats cst;
        char *cq = heap_arena_alloc(hc, a, 200, 64), *pc = heap_from_off(hc, heap_to_off(h, p));

        if (!cq || (uintptr_t) cq % 64 || !pc || th_check_pattern(pc, 100, 1) != 100 ||
            heap_arena_stats(hc, a, &cst) < 0 || cst.count != 2)
            _exit(1);
        th_fill_pattern(cq, 200, 2);
        heap_detach(hc);
        _exit(0);
    }
    ck_assert_int_eq(th_wait_child(pid), 0);
    arena_get_stats(h, a, &st);
    ck_assert_uint_eq(st.count, 2);
    /* The child's object follows ours, 64-aligned. */
    q = (char *) (((uintptr_t) (p + 100) + 63) & ~(uintptr_t) 63);
    ck_assert_uint_eq(th_check_pattern(q, 200, 2), 200);
    ck_assert_uint_eq(th_check_pattern(p, 100, 1), 100);
    ck_assert_int_eq(heap_arena_destroy(h, a), 0);
    th_verify(h);
}
END_TEST

Suite *arena_suite(void)
{
    Suite *s = suite_create("arena");
    TCase *tc = tcase_create("core");

    tcase_add_checked_fixture(tc, heap_setup, heap_teardown);
    tcase_add_test(tc, arena_alignments);
    tcase_add_test(tc, arena_out_of_space);
    tcase_add_test(tc, arena_reset);
    tcase_add_test(tc, arena_destroy_and_bogus);
    tcase_add_test(tc, arena_destroy_session);
    tcase_add_test(tc, arena_shared_with_child);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}
