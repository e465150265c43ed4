/* Runs every multi-process suite (tests/mp/). Fork mode stays on (each
 * test in its own process, its children forked from there); CK_FORK=no
 * turns it off for gdb. Exits with EXIT_FAILURE if any test failed.
 * Timeouts are per test case in the suites and scaled by
 * CK_TIMEOUT_MULTIPLIER under the sanitizers. */
#include <check.h>
#include <stdlib.h>

#include "tests/mp/suites.h"

int main(void)
{
    SRunner *sr = srunner_create(mp_alloc_suite());
    int failed;

    srunner_add_suite(sr, recycler_suite());
    srunner_add_suite(sr, death_suite());
    srunner_add_suite(sr, trim_idle_suite());
    srunner_add_suite(sr, adopt_suite());
    srunner_add_suite(sr, percpu_death_suite());
    if (!getenv("CK_FORK"))
        srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
