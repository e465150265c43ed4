/* The multi-process suites; tests/run_mp.c runs them all. */
#ifndef TESTS_MP_SUITES_H
#define TESTS_MP_SUITES_H

#include <check.h>

Suite *mp_alloc_suite(void);
Suite *recycler_suite(void);
Suite *death_suite(void);
Suite *trim_idle_suite(void);
Suite *percpu_death_suite(void); /* check_percpu_death.c: the per-CPU caches, shared and killed */
Suite *adopt_suite(void); /* check_adopt.c: recovery when a new owner adopts a heap */

#endif
