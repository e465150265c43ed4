/* Runs every unit suite (tests/unit/) in fork mode: each test in its own
 * process. Check itself honours CK_RUN_SUITE and CK_RUN_CASE (select),
 * CK_FORK=no (for gdb and valgrind), CK_TIMEOUT_MULTIPLIER (sanitizer
 * builds), CK_VERBOSITY and CK_TAP_LOG_FILE_NAME. Exits with EXIT_FAILURE
 * if any test failed. */
#include <check.h>
#include <stdlib.h>

#include "tests/unit/suites.h"

int main(void)
{
    Suite *(*const suites[])(void) = {
            bittree_suite, sizeclass_suite, alloc_suite,  arena_suite,     pool_suite,
            roots_suite,   misuse_suite,    layout_suite, hugepages_suite, trim_suite,
            owned_suite,   wire_suite,      words_suite,
            release_suite,
            utf8_suite,
            percpu_suite,
            lock_suite,
    };
    SRunner *sr = srunner_create(NULL);
    int failed;

    for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
        srunner_add_suite(sr, suites[i]());
    srunner_run_all(sr, CK_ENV); /* CK_VERBOSITY, default CK_NORMAL */
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
