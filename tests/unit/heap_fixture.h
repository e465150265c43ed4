/* The checked fixture most unit suites share: each test (its own process:
 * Check's fork mode) gets a fresh local heap with the built-in defaults and
 * 4K pages in `th`, created before and destroyed after it.
 *
 * Usage:
 *     tcase_add_checked_fixture(tc, heap_setup, heap_teardown);
 *     ... heap_malloc(th.h, 64) ... */
#ifndef TESTS_UNIT_HEAP_FIXTURE_H
#define TESTS_UNIT_HEAP_FIXTURE_H

#include "tests/common/testheap.h"

extern struct test_heap th;

/* th_create(&th, NULL, SHM_PAGES_OFF); fails the test on error. */
void heap_setup(void);
/* th_destroy(&th). */
void heap_teardown(void);

#endif
