/* Unit tests for the helpers that pack and unpack shared-memory words
 * (shm/meta.h, shm/layout.h), the one per-class table (shm/sizeclass.c),
 * the one offset check (seg_at, seg_obj_at, heap_at: shm/internal.h,
 * shm/heap.c) and the "raise a maximum" atomics (shm/atomic.h). Each word
 * must round-trip every field at its extremes without touching the
 * others; the offset checks must refuse every range that leaves a
 * segment, every misaligned offset, and the control segment. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "shm/internal.h"
#include "tests/unit/heap_fixture.h"
#include "tests/unit/suites.h"

START_TEST(words_meta_slab_and_run)
{
    uint64_t w = meta_make_slab(SHM_NCLASSES - 1, 0xffff, SHM_SLAB_MAX_BLOCKS);

    ck_assert_int_eq(meta_state(w), BLK_SLAB);
    ck_assert_uint_eq(meta_class(w), SHM_NCLASSES - 1);
    ck_assert_uint_eq(meta_nfree(w), 0xffff);
    ck_assert_uint_eq(meta_len(w), SHM_SLAB_MAX_BLOCKS);
    ck_assert_int_eq(meta_kind(w), RUN_LARGE);
    w = meta_with_nfree(w, 7);
    ck_assert_uint_eq(meta_nfree(w), 7);
    ck_assert_uint_eq(meta_class(w), SHM_NCLASSES - 1);

    w = meta_make_run(0xffffff, RUN_POOL, 0);
    ck_assert_int_eq(meta_state(w), BLK_RUN);
    ck_assert_uint_eq(meta_len(w), 0xffffff);
    ck_assert_int_eq(meta_kind(w), RUN_POOL);
    ck_assert_uint_eq(meta_owner(w), 0);

    /* A large object's owner: set, cleared, nothing else moves. */
    w = meta_make_run(3, RUN_LARGE, SHM_MAX_OWNERS);
    ck_assert_uint_eq(meta_owner(w), SHM_MAX_OWNERS);
    w = meta_with_owner(w, 0);
    ck_assert_uint_eq(meta_owner(w), 0);
    ck_assert_int_eq(meta_state(w), BLK_RUN);
    ck_assert_uint_eq(meta_len(w), 3);
    ck_assert_int_eq(meta_kind(w), RUN_LARGE);
    w = meta_with_owner(w, UINT16_MAX);
    ck_assert_uint_eq(meta_owner(w), UINT16_MAX);
    ck_assert_uint_eq(meta_len(w), 3);
}
END_TEST

START_TEST(words_meta_busy_pid)
{
    /* pid_max is at most 2^22 (4194304): every pid fits in 24 bits. */
    const uint32_t pids[] = {1, 2, 4194304, META_BUSY_PID_MASK};

    for (size_t i = 0; i < sizeof(pids) / sizeof(pids[0]); i++) {
        uint64_t w = meta_make_busy(16, pids[i]);

        ck_assert_int_eq(meta_state(w), BLK_BUSY);
        ck_assert_uint_eq(meta_busy_pid(w), pids[i]);
        ck_assert_uint_eq(meta_len(w), 16);
    }
    /* Bits above 24 never reach the state or the length. */
    ck_assert_uint_eq(meta_busy_pid(meta_make_busy(1, UINT32_MAX)), META_BUSY_PID_MASK);
    ck_assert_int_eq(meta_state(meta_make_busy(1, UINT32_MAX)), BLK_BUSY);
    ck_assert_uint_eq(meta_len(meta_make_busy(1, UINT32_MAX)), 1);
}
END_TEST

START_TEST(words_bin_and_bundle)
{
    /* The highest offset an attachment can name: segment 31, last byte. */
    uint64_t top = ((uint64_t) (SHM_MAX_SEGMENTS - 1) << SHM_SEG_SHIFT) | (SHM_OFF_MASK & ~15u);
    uint64_t w = bin_word(top, 0xffff), link;

    ck_assert_uint_eq(bin_off(w), top);
    ck_assert_uint_eq(bin_count(w), 0xffff);
    ck_assert_uint_eq(bin_off(bin_word(0, 5)), 0);
    ck_assert_uint_eq(bin_count(bin_word(top, 0)), 0);

    link = bundle_link(top, 4096, SHM_MAX_SEGMENTS - 1);
    ck_assert_uint_eq(bundle_next(link), top);
    ck_assert_uint_eq(bundle_count(link), 4096);
    ck_assert_uint_eq(bundle_maxseg(link), SHM_MAX_SEGMENTS - 1);
    link = bundle_link(0, 2, 1);
    ck_assert_uint_eq(bundle_next(link), 0);
    ck_assert_uint_eq(bundle_count(link), 2);
    ck_assert_uint_eq(bundle_maxseg(link), 1);
}
END_TEST

/* The table is computed once and agrees with itself: both index
 * multipliers give every object's index, and the fast path's check knows
 * every object's start and nothing else. */
START_TEST(words_sizeclass_table)
{
    sizeclass_init();
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        const struct sizeclass_info *c = &sizeclass_info[cls];
        struct slab_geometry g;

        sizeclass_geometry(cls, &g);
        ck_assert_int_eq(memcmp(&g, &c->geo, sizeof(g)), 0);
        ck_assert_uint_eq(g.size, sizeclass_size(cls));
        ck_assert_uint_eq(c->span, g.capacity * g.size);
        ck_assert_uint_eq(c->tag_mul != 0, g.blocks == 1);
        for (uint64_t i = 0; i < g.capacity; i++) {
            uint64_t rel = i * g.size;

            ck_assert_uint_eq(sizeclass_index(cls, rel), i);
            ck_assert_uint_eq(sizeclass_index(cls, rel + g.size - 1), i);
            ck_assert(sizeclass_is_object(cls, rel));
            if (g.size > 16)
                ck_assert(!sizeclass_is_object(cls, rel + 16));
            if (c->tag_mul) {
                ck_assert_uint_eq((rel * c->tag_mul) >> 32, i);
                ck_assert_uint_eq(((rel + g.size - 1) * c->tag_mul) >> 32, i);
            }
        }
        ck_assert(!sizeclass_is_object(cls, c->span));
    }
}
END_TEST

START_TEST(words_seg_at)
{
    struct seg_map m;
    char *base = (char *) (uintptr_t) (UINT64_C(1) << 40); /* never dereferenced */
    uint64_t seg = (uint64_t) 3 << SHM_SEG_SHIFT, size = 16u << 20;

    memset(&m, 0, sizeof(m));
    m.base = base;
    m.index = 3;
    m.size = size;
    ck_assert_ptr_eq(seg_at(&m, seg + 64, 16, 16), base + 64);
    ck_assert_ptr_eq(seg_at(&m, seg + size - 16, 16, 16), base + size - 16);
    ck_assert_ptr_eq(seg_at(&m, seg, 1, 1), base);
    ck_assert_ptr_null(seg_at(&m, seg + size - 8, 16, 8));      /* runs past the end */
    ck_assert_ptr_null(seg_at(&m, seg + size, 1, 1));           /* starts at the end */
    ck_assert_ptr_null(seg_at(&m, seg + 64, size + 1, 1));      /* longer than the segment */
    ck_assert_ptr_null(seg_at(&m, seg + 72, 16, 16));           /* misaligned */
    ck_assert_ptr_null(seg_at(&m, seg + SHM_SEG_SPAN, 16, 16)); /* the next segment */
    ck_assert_ptr_null(seg_at(&m, 64, 16, 16));                 /* the control segment */
    /* Objects never lie in a segment's header page. */
    ck_assert_ptr_null(seg_obj_at(&m, seg + 64));
    ck_assert_ptr_null(seg_obj_at(&m, seg + SHM_META_OFF - 16));
    ck_assert_ptr_eq(seg_obj_at(&m, seg + SHM_META_OFF), base + SHM_META_OFF);
    ck_assert_ptr_null(seg_obj_at(&m, seg + size - 8));
}
END_TEST

/* heap_at maps on demand and refuses what is not a mapped heap
 * segment's; a live object passes heap_obj_at. */
START_TEST(words_heap_at)
{
    void *p = heap_malloc(th.h, 64);
    uint64_t off;

    ck_assert_ptr_nonnull(p);
    off = ptr_off(th.h, p);
    ck_assert_ptr_eq(heap_obj_at(th.h, off), p);
    ck_assert_ptr_eq(heap_at(th.h, off, 64, 16), p);
    ck_assert_ptr_null(heap_obj_at(th.h, off + 8));             /* misaligned */
    ck_assert_ptr_null(heap_obj_at(th.h, 0));                   /* null */
    ck_assert_ptr_null(heap_obj_at(th.h, 4096));                /* the control segment */
    ck_assert_ptr_null(heap_obj_at(th.h, off & ~SHM_OFF_MASK)); /* a segment's header */
    ck_assert_ptr_null(heap_obj_at(th.h, (uint64_t) (SHM_MAX_SEGMENTS - 1) << SHM_SEG_SHIFT |
                                                 SHM_META_OFF)); /* no such segment */
    ck_assert_ptr_null(heap_obj_at(th.h, UINT64_MAX & ~UINT64_C(15)));
    /* heap_from_off keeps its wider rule: any byte of a mapped segment. */
    ck_assert_ptr_nonnull(heap_from_off(th.h, (off & ~SHM_OFF_MASK) + 64));
    heap_free(th.h, p);
}
END_TEST

START_TEST(words_raise_max)
{
    uint32_t m32 = 5;
    uint64_t m64 = 5;

    ck_assert_uint_eq(raise_max32_release(&m32, 3), 5);
    ck_assert_uint_eq(m32, 5);
    ck_assert_uint_eq(raise_max32_release(&m32, UINT32_MAX), UINT32_MAX);
    ck_assert_uint_eq(m32, UINT32_MAX);
    ck_assert_uint_eq(raise_max64_relaxed(&m64, 5), 5);
    ck_assert_uint_eq(raise_max64_relaxed(&m64, UINT64_MAX), UINT64_MAX);
    ck_assert_uint_eq(m64, UINT64_MAX);
    ck_assert_uint_eq(raise_max64_relaxed(&m64, 0), UINT64_MAX);
}
END_TEST

Suite *words_suite(void)
{
    Suite *s = suite_create("words");
    TCase *tc = tcase_create("pack");
    TCase *th_case = tcase_create("heap");

    tcase_add_test(tc, words_meta_slab_and_run);
    tcase_add_test(tc, words_meta_busy_pid);
    tcase_add_test(tc, words_bin_and_bundle);
    tcase_add_test(tc, words_sizeclass_table);
    tcase_add_test(tc, words_seg_at);
    tcase_add_test(tc, words_raise_max);
    suite_add_tcase(s, tc);
    tcase_add_checked_fixture(th_case, heap_setup, heap_teardown);
    tcase_add_test(th_case, words_heap_at);
    suite_add_tcase(s, th_case);
    return s;
}
