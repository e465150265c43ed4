/* The service suites: they drive a real build/shmheapd (daemon_fixture.h).
 * Each suite is defined in its check_*.c and listed in tests/run_service.c.
 *
 * Add suites here (one declaration per line) and in run_service.c's table. */
#ifndef TESTS_SERVICE_SUITES_H
#define TESTS_SERVICE_SUITES_H

#include <check.h>

Suite *config_suite(void);         /* check_config.c: the table of tunables */
Suite *daemon_suite(void);         /* check_daemon.c: every op, options, the socket */
Suite *daemon_input_suite(void);   /* check_daemon_input.c: bad input, limits, peers */
Suite *daemon_utf8_suite(void);    /* check_daemon_utf8.c: replies stay UTF-8 */
Suite *daemon_config_suite(void);  /* check_daemon_config.c: config ops, reload, trim timer */
Suite *daemon_clients_suite(void); /* check_daemon_clients.c: attach, death, reclamation */
Suite *client_suite(void);         /* check_client.c: libshmheap against the daemon */
Suite *ctl_suite(void);            /* check_ctl.c: shmheapctl against the daemon */
Suite *decay_suite(void);          /* check_decay.c: the automatic trim policy */
Suite *static_suite(void);         /* check_static.c: a static user of libshmheap.a */
Suite *quota_suite(void);          /* check_quota.c: max_client_bytes, max_uid_bytes */
Suite *debuggers_suite(void);      /* check_debuggers.c: valgrind, a tight RLIMIT_AS */
Suite *metrics_suite(void);        /* check_metrics.c: GET /metrics, Prometheus, promtool */
Suite *systemd_suite(void);        /* check_systemd.c: notify, activation, the units */
Suite *kill_arenas_suite(void);    /* check_kill_arenas.c: arena creators killed */
Suite *restart_suite(void);        /* check_restart.c: restart without loss, adoption */
Suite *resources_suite(void);      /* check_resources.c: fds, memory, connections bounded */
Suite *scribbler_suite(void);      /* check_scribbler.c: untrusted shared memory, sealed header */
Suite *reclaim_retry_suite(void);  /* check_reclaim_retry.c: a failed reclaim is retried */
Suite *daemon_drain_suite(void);   /* check_daemon_drain.c: the daemon killed mid-drain */

#endif
