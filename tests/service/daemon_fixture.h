/* A real shmheapd for the service tests.
 *
 * daemon_start() makes a mkdtemp directory, writes the config there (if
 * given), starts $SHMHEAPD (else $SHMHEAP_BUILD_DIR/shmheapd, else
 * build/shmheapd) on <dir>/shmheap.sock with its stderr in <dir>/daemon.log,
 * and returns once the daemon said READY=1 (sd_notify, through a
 * NOTIFY_SOCKET of the fixture's own). daemon_stop() sends SIGTERM, waits,
 * and removes the directory. A failed ck_assert ends the test process with
 * _exit(): its daemons then get SIGTERM (PR_SET_PDEATHSIG, so start them
 * from the thread that lives for the whole test) and their directories are
 * swept by a later daemon_start; a normal exit stops leftover daemons
 * through atexit.
 *
 * Usage:
 *     struct daemon_fixture f;
 *     ck_assert_int_eq(daemon_start(&f, "{\"max_clients\": 8}"), 0);
 *     ... daemon_request(f.socket_path, "{\"op\":\"stats\"}", &reply, NULL, NULL) ...
 *     daemon_stop(&f);
 *     ck_assert(f.clean_exit);
 *
 * Environment: SHMHEAP_TEST_KEEP=1 keeps the directories; the daemon's log
 * is copied to stderr when it exits uncleanly. */
#ifndef TESTS_SERVICE_DAEMON_FIXTURE_H
#define TESTS_SERVICE_DAEMON_FIXTURE_H

#include <stdbool.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#define DAEMON_FIXTURE_MAX_FDS 32 /* room ret_fds must have (SHM_MAX_SEGMENTS) */

struct daemon_fixture {
    char dir[64];          /* the mkdtemp directory */
    char socket_path[108]; /* <dir>/shmheap.sock */
    char config_path[128]; /* <dir>/shmheapd.json, "" without a config */
    char log_path[128];    /* <dir>/daemon.log: the daemon's stderr */
    pid_t pid;             /* the daemon, 0 once stopped */
    int status;            /* wait status once it exited */
    bool clean_exit;       /* it exited with status 0 */
};

/* Starts a daemon with config_json (NULL: no --config) and waits until it
 * is ready. Returns 0, or a negative errno: -ECHILD if the daemon exited
 * before it was ready (f->status, f->log_path tell why; the directory is
 * kept until daemon_stop), -ETIMEDOUT if it never said READY=1. */
int daemon_start(struct daemon_fixture *f, const char *config_json);
/* Same with extra command-line arguments (NULL-terminated, may be NULL). */
int daemon_start_args(struct daemon_fixture *f,
                      const char *config_json,
                      const char *const *extra_args);
/* SIGTERM, wait (SIGKILL after a while), record status, remove the directory. */
void daemon_stop(struct daemon_fixture *f);
/* Rewrites the config file (for SIGHUP reload tests). */
int daemon_write_config(struct daemon_fixture *f, const char *config_json);

/* One request on a fresh connection: sends `line` ('\n' added if missing),
 * reads one reply line into *ret_reply (malloc'ed, without the '\n') and
 * the fds that came with it into ret_fds (room for DAEMON_FIXTURE_MAX_FDS;
 * NULL: they are closed). Returns 0 or a negative errno. */
int daemon_request(
        const char *socket_path, const char *line, char **ret_reply, int *ret_fds, int *ret_nfds);

/* The same pieces, on a connection the caller keeps. */
int daemon_connect(const char *socket_path); /* an fd, or a negative errno */
int daemon_send(int fd, const char *data, size_t len);
/* Reads one reply line (timeout_ms < 0: wait forever). Returns 0, -ECONNRESET
 * on EOF before a full line, -ETIMEDOUT. */
int daemon_recv(int fd, char **ret_reply, int *ret_fds, int *ret_nfds, int timeout_ms);
/* True if the peer closed the connection within timeout_ms (EOF seen). */
bool daemon_wait_eof(int fd, int timeout_ms);
/* send + recv on fd, the reply parsed; NULL on any failure. */
cJSON *daemon_call(int fd, const char *line, int *ret_fds, int *ret_nfds);
/* daemon_call with a printf-style line. */
cJSON *daemon_callf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* daemon_request with the reply parsed; NULL on any failure. */
cJSON *daemon_call_once(const char *socket_path, const char *line);

/* Reply helpers: "ok" is true / the error code (NULL if none). */
bool reply_is_ok(const cJSON *reply);
const char *reply_error_code(const cJSON *reply);
const char *reply_error_message(const cJSON *reply);

/* The daemon's log so far (malloc'ed, never NULL). */
char *daemon_log(const struct daemon_fixture *f);
/* Waits up to timeout_ms for `needle` to appear in the log. */
bool daemon_log_wait(const struct daemon_fixture *f, const char *needle, int timeout_ms);

/* Milliseconds scaled by CK_TIMEOUT_MULTIPLIER (sanitizer runs are slower). */
int daemon_test_ms(int ms);

#endif
