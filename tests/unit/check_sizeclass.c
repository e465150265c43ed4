/* Unit tests for shm/sizeclass.c and the alignment the heap gives: the
 * size -> class map and its waste bound, slab geometry, usable sizes and
 * heap_aligned_alloc.
 *
 * Long loops compare by hand and call ck_abort_msg() only on a mismatch
 * (a passing ck_assert costs a message to the runner in fork mode). */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "shm/heap.h"
#include "shm/sizeclass.h"
#include "tests/common/testheap.h"
#include "tests/unit/heap_fixture.h"
#include "tests/unit/suites.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

/* ---- the class table alone ---- */

START_TEST(sizeclass_table)
{
    uint32_t prev = 0;

    for (unsigned c = 0; c < SHM_NCLASSES; c++) {
        uint32_t s = sizeclass_size(c);

        if (s <= prev)
            ck_abort_msg("class %u: size %" PRIu32 " not above class %u's %" PRIu32, c, s, c - 1,
                         prev);
        if (s % 16)
            ck_abort_msg("class %u: size %" PRIu32 " is not a multiple of 16", c, s);
        if (sizeclass_of(s) != c)
            ck_abort_msg("class %u: sizeclass_of(its own size %" PRIu32 ") = %u", c, s,
                         sizeclass_of(s));
        prev = s;
    }
    ck_assert_uint_eq(sizeclass_size(0), SHM_MIN_OBJECT);
    ck_assert_uint_eq(sizeclass_size(SHM_NCLASSES - 1), SHM_SMALL_MAX);
}
END_TEST

/* Every size maps to the smallest class that holds it, within the documented waste. */
START_TEST(sizeclass_every_size)
{
    for (size_t n = 1; n <= SHM_SMALL_MAX; n++) {
        unsigned c = sizeclass_of(n);
        uint32_t s;

        if (c >= SHM_NCLASSES)
            ck_abort_msg("size %zu: class %u out of range", n, c);
        s = sizeclass_size(c);
        if (s < n)
            ck_abort_msg("size %zu: class %u of size %" PRIu32 " does not hold it", n, c, s);
        if (c > 0 && sizeclass_size(c - 1) >= n)
            ck_abort_msg("size %zu: class %u, but class %u (%" PRIu32 ") holds it too", n, c, c - 1,
                         sizeclass_size(c - 1));
        if (n <= 128 && s - n >= 16)
            ck_abort_msg("size %zu: waste %zu >= 16 bytes", n, (size_t) s - n);
        if (n > 128 && s - n > n / 8)
            ck_abort_msg("size %zu: waste %zu > 12.5%% (%zu)", n, (size_t) s - n, n / 8);
    }
    /* The inline lookup of the fast path agrees, and 0 is treated as 1. */
    ck_assert_uint_eq(sizeclass_of_inline(0), 0);
    ck_assert_uint_eq(sizeclass_of_inline(SHM_SMALL_MAX), SHM_NCLASSES - 1);
}
END_TEST

/* Objects and the bitmap fit the slab, the bitmap covers capacity, and a slab holds at least
 * 8 objects (sizeclass.c: "enough blocks that a slab holds at least 8 objects"). */
START_TEST(sizeclass_geometry_fits)
{
    for (unsigned c = 0; c < SHM_NCLASSES; c++) {
        struct slab_geometry g;
        uint64_t bytes;

        sizeclass_geometry(c, &g);
        bytes = (uint64_t) g.blocks * SHM_BLOCK_SIZE;
        if (g.size != sizeclass_size(c))
            ck_abort_msg("class %u: geometry size %" PRIu32 " != %" PRIu32, c, g.size,
                         sizeclass_size(c));
        if (g.blocks < 1 || g.blocks > SHM_SLAB_MAX_BLOCKS)
            ck_abort_msg("class %u: %" PRIu32 " blocks per slab", c, g.blocks);
        if (g.bitmap_words != (g.capacity + 63) / 64)
            ck_abort_msg("class %u: %" PRIu32 " bitmap words for %" PRIu32 " objects", c,
                         g.bitmap_words, g.capacity);
        if ((uint64_t) g.capacity * g.size > g.tags_off)
            ck_abort_msg("class %u: objects end at %" PRIu64 ", tags start at %" PRIu32, c,
                         (uint64_t) g.capacity * g.size, g.tags_off);
        if (g.tags_off % 8 || (uint64_t) g.tags_off + 2 * g.capacity > g.bitmap_off)
            ck_abort_msg("class %u: tags [%" PRIu32 ", +%" PRIu32
                         " u16) overlap the bitmap at %" PRIu32,
                         c, g.tags_off, g.capacity, g.bitmap_off);
        if (g.bitmap_off % 8 || (uint64_t) g.bitmap_off + g.bitmap_words * 8 > bytes)
            ck_abort_msg("class %u: bitmap [%" PRIu32 ", +%" PRIu32 " words) outside the slab", c,
                         g.bitmap_off, g.bitmap_words);
        /* As many objects as fit with their tags and bitmap: one more would not. */
        if ((uint64_t) (g.capacity + 1) * g.size + ((g.capacity + 1) * 2 + 7) / 8 * 8 +
                    (g.capacity + 1 + 63) / 64 * 8 <=
            bytes)
            ck_abort_msg("class %u: room for object %" PRIu32 " is left unused", c, g.capacity + 1);
    }
}
END_TEST

START_TEST(sizeclass_geometry_min_objects)
{
    char bad[512] = "";
    size_t len = 0;

    for (unsigned c = 0; c < SHM_NCLASSES; c++) {
        struct slab_geometry g;

        sizeclass_geometry(c, &g);
        if (g.capacity < 8 && len < sizeof(bad) - 64)
            len += (size_t) snprintf(bad + len, sizeof(bad) - len,
                                     " class %u (%" PRIu32 " B: %" PRIu32 " objects in %" PRIu32
                                     " blocks)",
                                     c, g.size, g.capacity, g.blocks);
    }
    ck_assert_msg(len == 0, "slabs with fewer than 8 objects:%s", bad);
}
END_TEST

/* ---- through the heap ---- */

/* A sample of sizes in every class: its bounds and a point inside. */
static size_t sample_sizes(size_t *out, size_t max)
{
    size_t n = 0;

    for (unsigned c = 0; c < SHM_NCLASSES && n + 3 <= max; c++) {
        size_t lo = c ? sizeclass_size(c - 1) + 1 : 1, hi = sizeclass_size(c);

        out[n++] = lo;
        out[n++] = (lo + hi) / 2;
        out[n++] = hi;
    }
    return n;
}

START_TEST(sizeclass_usable_size)
{
    static const size_t large[] = {
            SHM_SMALL_MAX + 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 100000, 1 * MiB, 3 * MiB + 5,
    };
    size_t sizes[3 * SHM_NCLASSES];
    size_t n = sample_sizes(sizes, 3 * SHM_NCLASSES);
    struct heap *h = th.h;

    for (size_t i = 0; i < n; i++) {
        void *p = heap_malloc(h, sizes[i]);
        size_t u;

        if (!p)
            ck_abort_msg("malloc(%zu) failed: %s", sizes[i], strerror(errno));
        u = heap_usable_size(h, p);
        if (u < sizes[i] || u != sizeclass_size(sizeclass_of(sizes[i])))
            ck_abort_msg("malloc(%zu): usable size %zu, class size %" PRIu32, sizes[i], u,
                         sizeclass_size(sizeclass_of(sizes[i])));
        if ((uintptr_t) p % 16)
            ck_abort_msg("malloc(%zu) = %p is not 16-aligned", sizes[i], p);
        memset(p, 0x5a, u); /* the whole usable size is ours */
        heap_free(h, p);
    }
    for (size_t i = 0; i < sizeof(large) / sizeof(large[0]); i++) {
        void *p = heap_malloc(h, large[i]);
        size_t u;

        ck_assert_msg(p != NULL, "malloc(%zu): %s", large[i], strerror(errno));
        u = heap_usable_size(h, p);
        ck_assert_msg(u >= large[i] && u - large[i] < SHM_BLOCK_SIZE,
                      "malloc(%zu): usable size %zu", large[i], u);
        ck_assert_uint_eq((uintptr_t) p % SHM_BLOCK_SIZE, 0);
        memset(p, 0xa5, u);
        heap_free(h, p);
    }
    ck_assert_uint_eq(heap_usable_size(h, NULL), 0);
    th_verify(h);
}
END_TEST

/* Every size up to 2048, twice (the second malloc pops the first one's
 * object from the cache: the fast path, with its table up to 1024 bytes):
 * the usable size is the class's, the object belongs to that class. */
START_TEST(sizeclass_fast_path_every_size)
{
    struct heap *h = th.h;

    for (size_t n = 1; n <= 2048; n++) {
        for (int round = 0; round < 2; round++) {
            void *p = heap_malloc(h, n);
            size_t u;

            if (!p)
                ck_abort_msg("malloc(%zu) failed: %s", n, strerror(errno));
            u = heap_usable_size(h, p);
            if (u != sizeclass_size(sizeclass_of(n)))
                ck_abort_msg("malloc(%zu), round %d: usable size %zu, class %u of size %" PRIu32,
                             n, round, u, sizeclass_of(n), sizeclass_size(sizeclass_of(n)));
            memset(p, 0x3c, n);
            heap_free(h, p);
        }
    }
    th_verify(h);
}
END_TEST

/* Many live objects at once: every result 16-aligned and inside the heap. */
START_TEST(sizeclass_malloc_aligned_16)
{
    enum { N = 20000 };
    static void *ptrs[N];
    uint64_t rng = 0x1234567;
    struct heap *h = th.h;

    for (size_t i = 0; i < N; i++) {
        size_t size = 1 + test_rand(&rng) % (i % 16 == 0 ? SHM_SMALL_MAX : 512);

        ptrs[i] = heap_malloc(h, size);
        if (!ptrs[i])
            ck_abort_msg("malloc(%zu) failed: %s", size, strerror(errno));
        if ((uintptr_t) ptrs[i] % 16 || !heap_contains(h, ptrs[i]))
            ck_abort_msg("malloc(%zu) = %p: not 16-aligned or not in the heap", size, ptrs[i]);
    }
    for (size_t i = 0; i < N; i++)
        heap_free(h, ptrs[i]);
    th_verify(h);
}
END_TEST

START_TEST(sizeclass_aligned_alloc)
{
    static const size_t sizes[] = {1,    7,    16,   33,    100,   1000,  4095,
                                   4096, 4097, 9000, 20000, 32768, 40000, 200000};
    size_t aligns[16], nalign = 0;
    struct heap *h = th.h;

    for (size_t a = 1; a <= 4096; a *= 2)
        aligns[nalign++] = a;
    aligns[nalign++] = 64 * KiB;
    aligns[nalign++] = 1 * MiB;
    for (size_t i = 0; i < nalign; i++) {
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            void *p[3];

            /* Several at once, so that not only a slab's first object is checked. */
            for (int j = 0; j < 3; j++) {
                size_t u;

                p[j] = heap_aligned_alloc(h, aligns[i], sizes[k]);
                if (!p[j])
                    ck_abort_msg("aligned_alloc(%zu, %zu) failed: %s", aligns[i], sizes[k],
                                 strerror(errno));
                if ((uintptr_t) p[j] % aligns[i])
                    ck_abort_msg("aligned_alloc(%zu, %zu) = %p is misaligned", aligns[i], sizes[k],
                                 p[j]);
                u = heap_usable_size(h, p[j]);
                if (u < sizes[k])
                    ck_abort_msg("aligned_alloc(%zu, %zu): usable size %zu", aligns[i], sizes[k],
                                 u);
                memset(p[j], 0x33, sizes[k]);
            }
            for (int j = 0; j < 3; j++)
                heap_free(h, p[j]);
        }
    }
    th_verify(h);
}
END_TEST

/* Alignments far beyond the block size: up to 1 GiB they are honoured (the heap grows a
 * segment that can hold the aligned run); past that the allocation fails cleanly. */
START_TEST(sizeclass_aligned_alloc_huge)
{
    static const size_t aligns[] = {2 * MiB, 64 * MiB, 1024 * MiB};
    struct heap *h = th.h;

    for (size_t i = 0; i < sizeof(aligns) / sizeof(aligns[0]); i++) {
        char *p = heap_aligned_alloc(h, aligns[i], 100);

        ck_assert_msg(p != NULL, "aligned_alloc(%zu, 100): %s", aligns[i], strerror(errno));
        ck_assert_msg((uintptr_t) p % aligns[i] == 0, "aligned_alloc(%zu) = %p", aligns[i],
                      (void *) p);
        ck_assert_uint_ge(heap_usable_size(h, p), 100);
        memset(p, 0x42, 100);
        heap_free(h, p);
    }
    errno = 0;
    ck_assert_ptr_null(heap_aligned_alloc(h, (size_t) 4 << 30, 100));
    ck_assert_msg(errno == ENOMEM || errno == EINVAL, "errno %d", errno);
    th_verify(h);
}
END_TEST

START_TEST(sizeclass_aligned_alloc_invalid)
{
    static const size_t bad[] = {0, 3, 48, 96, 4097, SIZE_MAX};
    struct heap *h = th.h;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        errno = 0;
        ck_assert_msg(heap_aligned_alloc(h, bad[i], 64) == NULL, "align %zu accepted", bad[i]);
        ck_assert_msg(errno == EINVAL, "align %zu: errno %d, want EINVAL", bad[i], errno);
    }
    /* A huge size with a valid alignment is ENOMEM, not a wrapped-around success. */
    errno = 0;
    ck_assert_ptr_null(heap_aligned_alloc(h, 64, SIZE_MAX - 10));
    ck_assert_int_eq(errno, ENOMEM);
    th_verify(h);
}
END_TEST

Suite *sizeclass_suite(void)
{
    Suite *s = suite_create("sizeclass");
    TCase *tt = tcase_create("table");
    TCase *th_case = tcase_create("heap");

    tcase_add_test(tt, sizeclass_table);
    tcase_add_test(tt, sizeclass_every_size);
    tcase_add_test(tt, sizeclass_geometry_fits);
    tcase_add_test(tt, sizeclass_geometry_min_objects);
    tcase_set_timeout(tt, 30);
    suite_add_tcase(s, tt);

    tcase_add_checked_fixture(th_case, heap_setup, heap_teardown);
    tcase_add_test(th_case, sizeclass_usable_size);
    tcase_add_test(th_case, sizeclass_fast_path_every_size);
    tcase_add_test(th_case, sizeclass_malloc_aligned_16);
    tcase_add_test(th_case, sizeclass_aligned_alloc);
    tcase_add_test(th_case, sizeclass_aligned_alloc_huge);
    tcase_add_test(th_case, sizeclass_aligned_alloc_invalid);
    tcase_set_timeout(th_case, 60);
    suite_add_tcase(s, th_case);
    return s;
}
