/* The unit suites that tests/run_unit.c runs, one per module
 * (tests/unit/check_<name>.c). */
#ifndef TESTS_UNIT_SUITES_H
#define TESTS_UNIT_SUITES_H

#include <check.h>

Suite *bittree_suite(void);
Suite *sizeclass_suite(void);
Suite *alloc_suite(void);
Suite *arena_suite(void);
Suite *pool_suite(void);
Suite *roots_suite(void);
Suite *misuse_suite(void);
Suite *layout_suite(void);
Suite *hugepages_suite(void);
Suite *trim_suite(void);
Suite *release_suite(void); /* check_release.c: the bounded release of the automatic trim */
Suite *owned_suite(void);
Suite *wire_suite(void);
Suite *words_suite(void);
Suite *utf8_suite(void);   /* check_utf8.c: config/utf8.c */
Suite *percpu_suite(void); /* check_percpu.c: shm/percpu.c, the per-CPU caches */
Suite *lock_suite(void);   /* check_lock.c: shm/lock.c, the lock of shared memory */

#endif
