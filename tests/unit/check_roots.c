/* Unit tests for shm/roots.c: named offsets in the control segment. Set,
 * get, replace and remove; name limits; a full table; and roots seen by a
 * forked child that attaches on its own. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "shm/heap.h"
#include "tests/common/testheap.h"
#include "tests/unit/heap_fixture.h"
#include "tests/unit/suites.h"

static uint64_t new_object(struct heap *h, size_t size)
{
    void *p = heap_malloc(h, size);

    ck_assert_ptr_nonnull(p);
    return heap_to_off(h, p);
}

START_TEST(roots_set_get_replace_remove)
{
    struct heap *h = th.h;
    uint64_t a = new_object(h, 64), b = new_object(h, 128), got = 0;

    ck_assert_int_eq(heap_root_get(h, "config", &got), -ENOENT);
    ck_assert_int_eq(heap_root_set(h, "config", a), 0);
    ck_assert_int_eq(heap_root_get(h, "config", &got), 0);
    ck_assert_uint_eq(got, a);
    /* Names are exact: no prefix or case matches. */
    ck_assert_int_eq(heap_root_get(h, "conf", &got), -ENOENT);
    ck_assert_int_eq(heap_root_get(h, "config2", &got), -ENOENT);
    ck_assert_int_eq(heap_root_get(h, "Config", &got), -ENOENT);
    /* Replace. */
    ck_assert_int_eq(heap_root_set(h, "config", b), 0);
    got = 0;
    ck_assert_int_eq(heap_root_get(h, "config", &got), 0);
    ck_assert_uint_eq(got, b);
    ck_assert_int_eq(heap_root_set(h, "other", a), 0);
    ck_assert_int_eq(heap_root_get(h, "other", &got), 0);
    ck_assert_uint_eq(got, a);
    /* Remove with offset 0; removing again is -ENOENT. */
    ck_assert_int_eq(heap_root_set(h, "config", 0), 0);
    ck_assert_int_eq(heap_root_get(h, "config", &got), -ENOENT);
    ck_assert_int_eq(heap_root_set(h, "config", 0), -ENOENT);
    ck_assert_int_eq(heap_root_set(h, "never-set", 0), -ENOENT);
    ck_assert_int_eq(heap_root_get(h, "other", &got), 0);
    ck_assert_uint_eq(got, a);
    /* A removed name can be set again. */
    ck_assert_int_eq(heap_root_set(h, "config", a), 0);
    ck_assert_int_eq(heap_root_get(h, "config", &got), 0);
    ck_assert_uint_eq(got, a);
    /* An offset that names no heap byte is refused. */
    ck_assert_int_lt(heap_root_set(h, "bad", UINT64_C(7) << SHM_SEG_SHIFT), 0);
    ck_assert_int_eq(heap_root_get(h, "bad", &got), -ENOENT);
    heap_free(h, heap_from_off(h, a));
    heap_free(h, heap_from_off(h, b));
    th_verify(h);
}
END_TEST

START_TEST(roots_names)
{
    struct heap *h = th.h;
    uint64_t a = new_object(h, 32), got = 0;
    char name[SHM_ROOT_NAME + 8];

    ck_assert_int_eq(heap_root_set(h, "", a), -EINVAL);
    ck_assert_int_eq(heap_root_get(h, "", &got), -EINVAL);
    ck_assert_int_eq(heap_root_set(h, NULL, a), -EINVAL);
    ck_assert_int_eq(heap_root_get(h, NULL, &got), -EINVAL);
    ck_assert_int_eq(heap_root_get(h, "x", NULL), -EINVAL);
    ck_assert_int_eq(heap_root_set(NULL, "x", a), -EINVAL);
    ck_assert_int_eq(heap_root_get(NULL, "x", &got), -EINVAL);

    /* The longest name that fits: SHM_ROOT_NAME - 1 characters. */
    memset(name, 'n', sizeof(name));
    name[SHM_ROOT_NAME - 1] = '\0';
    ck_assert_int_eq(heap_root_set(h, name, a), 0);
    ck_assert_int_eq(heap_root_get(h, name, &got), 0);
    ck_assert_uint_eq(got, a);
    /* One more is too long, for set and get, and changes nothing. */
    name[SHM_ROOT_NAME - 1] = 'n';
    name[SHM_ROOT_NAME] = '\0';
    ck_assert_int_eq(heap_root_set(h, name, a), -ENAMETOOLONG);
    ck_assert_int_eq(heap_root_get(h, name, &got), -ENAMETOOLONG);
    name[sizeof(name) - 1] = '\0';
    ck_assert_int_eq(heap_root_set(h, name, a), -ENAMETOOLONG);
    name[SHM_ROOT_NAME - 1] = '\0';
    ck_assert_int_eq(heap_root_get(h, name, &got), 0);
    ck_assert_int_eq(heap_root_set(h, name, 0), 0);
    /* Any bytes but NUL are a name. */
    ck_assert_int_eq(heap_root_set(h, "with space/and:ünïcode", a), 0);
    ck_assert_int_eq(heap_root_get(h, "with space/and:ünïcode", &got), 0);
    ck_assert_int_eq(heap_root_set(h, "with space/and:ünïcode", 0), 0);
    heap_free(h, heap_from_off(h, a));
    th_verify(h);
}
END_TEST

START_TEST(roots_table_full)
{
    struct heap *h = th.h;
    uint64_t a = new_object(h, 32), b = new_object(h, 32), got;
    char name[32];

    for (unsigned i = 0; i < SHM_MAX_ROOTS; i++) {
        int r;

        (void) snprintf(name, sizeof(name), "root-%u", i);
        r = heap_root_set(h, name, i % 2 ? a : b);
        if (r != 0)
            ck_abort_msg("root %u of %u: %s", i, SHM_MAX_ROOTS, strerror(-r));
    }
    ck_assert_int_eq(heap_root_set(h, "one-too-many", a), -ENOSPC);
    ck_assert_int_eq(heap_root_get(h, "one-too-many", &got), -ENOENT);
    /* Replacing an existing name needs no new entry. */
    ck_assert_int_eq(heap_root_set(h, "root-7", b), 0);
    ck_assert_int_eq(heap_root_get(h, "root-7", &got), 0);
    ck_assert_uint_eq(got, b);
    /* Every name is still there with its offset. */
    for (unsigned i = 0; i < SHM_MAX_ROOTS; i++) {
        (void) snprintf(name, sizeof(name), "root-%u", i);
        if (heap_root_get(h, name, &got) != 0 || got != (i % 2 && i != 7 ? a : b))
            ck_abort_msg("root %u lost or changed", i);
    }
    /* Removing one makes room for one. */
    ck_assert_int_eq(heap_root_set(h, "root-100", 0), 0);
    ck_assert_int_eq(heap_root_set(h, "one-too-many", a), 0);
    ck_assert_int_eq(heap_root_set(h, "two-too-many", a), -ENOSPC);
    ck_assert_int_eq(heap_root_get(h, "one-too-many", &got), 0);
    ck_assert_uint_eq(got, a);
    ck_assert_int_eq(heap_root_get(h, "root-100", &got), -ENOENT);
    ck_assert_int_eq(heap_root_get(h, "root-101", &got), 0);
    heap_free(h, heap_from_off(h, a));
    heap_free(h, heap_from_off(h, b));
    th_verify(h);
}
END_TEST

/* Roots and the data they name across fork: the child attaches for itself, finds the
 * parent's root, reads the parent's pattern, and publishes a root of its own. */
START_TEST(roots_across_fork)
{
    const size_t size = 10000;
    struct heap *h = th.h;
    void *p = heap_malloc(h, size);
    uint64_t off, got = 0;
    pid_t pid;

    ck_assert_ptr_nonnull(p);
    th_fill_pattern(p, size, 77);
    off = heap_to_off(h, p);
    ck_assert_int_eq(heap_root_set(h, "parent-data", off), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct heap *hc = th_attach_child(&th, 2);
        uint64_t coff = 0;
        void *cp, *q;

        if (heap_root_get(hc, "parent-data", &coff) != 0 || coff != off) {
            fprintf(stderr, "child: root not found or different\n");
            _exit(1);
        }
        cp = heap_from_off(hc, coff);
        if (!cp || th_check_pattern(cp, size, 77) != size) {
            fprintf(stderr, "child: the parent's data differs\n");
            _exit(2);
        }
        q = heap_malloc(hc, 500);
        if (!q) {
            fprintf(stderr, "child: malloc: %s\n", strerror(errno));
            _exit(3);
        }
        th_fill_pattern(q, 500, 88);
        if (heap_root_set(hc, "child-data", heap_to_off(hc, q)) != 0)
            _exit(4);
        if (!th_verify_quiet(hc))
            _exit(5);
        heap_detach(hc);
        _exit(0);
    }
    ck_assert_int_eq(th_wait_child(pid), 0);
    ck_assert_int_eq(heap_root_get(h, "child-data", &got), 0);
    ck_assert_ptr_nonnull(heap_from_off(h, got));
    ck_assert_uint_eq(th_check_pattern(heap_from_off(h, got), 500, 88), 500);
    heap_free(h, heap_from_off(h, got)); /* the child's object, freed by the parent */
    ck_assert_int_eq(heap_root_set(h, "child-data", 0), 0);
    ck_assert_int_eq(heap_root_set(h, "parent-data", 0), 0);
    heap_free(h, p);
    th_verify(h);
}
END_TEST

Suite *roots_suite(void)
{
    Suite *s = suite_create("roots");
    TCase *tc = tcase_create("core");

    tcase_add_checked_fixture(tc, heap_setup, heap_teardown);
    tcase_add_test(tc, roots_set_get_replace_remove);
    tcase_add_test(tc, roots_names);
    tcase_add_test(tc, roots_table_full);
    tcase_add_test(tc, roots_across_fork);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    return s;
}
