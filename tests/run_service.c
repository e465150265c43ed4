/* The service test runner: every suite that drives the real programs.
 * CK_RUN_SUITE / CK_RUN_CASE pick suites and cases, CK_FORK=no runs them in
 * this process (for gdb), CK_TAP_LOG_FILE_NAME writes TAP (make does). */
#include <check.h>
#include <stdlib.h>

#include "tests/service/suites.h"

int main(void)
{
    /* ---- add suites here: one line each, in the order they should run ---- */
    /* clang-format off */
    Suite *(*const suites[])(void) = {
            config_suite,
            daemon_suite,
            daemon_input_suite,
            daemon_utf8_suite,
            daemon_config_suite,
            daemon_clients_suite,
            client_suite,
            ctl_suite,
            decay_suite,
            static_suite,
            quota_suite,
            debuggers_suite,
            metrics_suite,
            systemd_suite,
            restart_suite,
            resources_suite,
            scribbler_suite,
            kill_arenas_suite,
            reclaim_retry_suite,
            daemon_drain_suite,
    };
    /* clang-format on */
    /* ---- end of the suite list ---- */
    SRunner *sr = srunner_create(NULL);
    int failed;

    for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
        srunner_add_suite(sr, suites[i]());
    srunner_run_all(sr, CK_ENV); /* CK_VERBOSITY, default CK_NORMAL */
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
