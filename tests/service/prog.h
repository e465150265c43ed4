/* Running other programs from the service tests: promtool, prometheus,
 * shmheapctl, systemd-analyze, systemd-socket-activate. */
#ifndef TESTS_SERVICE_PROG_H
#define TESTS_SERVICE_PROG_H

#include <stdbool.h>
#include <sys/types.h>

/* The full path of `name` found in $PATH (and /usr/sbin, /sbin), or NULL.
 * Returns a static buffer. */
const char *prog_find(const char *name);

/* The path of a program of the build: $ENV_VAR if set, else
 * $SHMHEAP_BUILD_DIR/name (written into buf), else build/name. */
const char *prog_build_path(const char *env_var, const char *name, char *buf, size_t len);

/* Runs argv[0] (a path) with stdin_text on its stdin (NULL: /dev/null),
 * waits up to timeout_ms, and returns its exit status (128 + signal when
 * killed, -1 when it could not run or timed out: it is killed then).
 * *ret_out and *ret_err (each may be NULL) get what it printed (malloc'd). */
int prog_run(const char *const argv[],
             const char *stdin_text,
             int timeout_ms,
             char **ret_out,
             char **ret_err);

/* Starts argv[0] in the background with extra environment entries
 * ("NAME=value", NULL-terminated list, may be NULL), stdout and stderr to
 * log_path (appended), stdin /dev/null, and PR_SET_PDEATHSIG SIGTERM.
 * Returns its pid or a negative errno. */
pid_t prog_spawn(const char *const argv[], const char *const env[], const char *log_path);

/* Waits up to timeout_ms for pid to exit; true with *ret_status (a wait
 * status) if it did. */
bool prog_wait(pid_t pid, int timeout_ms, int *ret_status);

/* SIGTERM, then SIGKILL if it has not exited within timeout_ms. Returns
 * the wait status. */
int prog_stop(pid_t pid, int timeout_ms);

#endif
