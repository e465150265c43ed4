/* shmheapd under systemd's protocols, played by the test (no systemd
 * needed): socket activation with systemd-socket-activate, the sd_notify
 * sequence on a NOTIFY_SOCKET of the test's own (READY only once the socket
 * accepts, STATUS refreshed, WATCHDOG at half of WATCHDOG_USEC,
 * RELOADING/READY around SIGHUP, STOPPING), and the units themselves:
 * systemd-analyze verify, systemd-analyze security --offline=true (exposure
 * at most 2.5, with and without the metrics drop-in), the committed unit in
 * step with its template, the config example loading as the defaults.
 * A test whose tool is missing skips with a message. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "config/config.h"
#include "shmheap.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/prog.h"
#include "tests/service/suites.h"

#define SMALL "{\"segment_size\": 67108864, \"huge_pages\": \"off\"}"

/* The source tree: the working directory if it holds systemd/, else the
 * parent of $SHMHEAP_BUILD_DIR. */
static const char *src_dir(void)
{
    static char dir[512];
    const char *b = getenv("SHMHEAP_BUILD_DIR");
    char tmp[512];

    if (access("systemd/shmheapd.service.in", R_OK) == 0 || !b)
        return ".";
    (void) snprintf(tmp, sizeof(tmp), "%s", b);
    (void) snprintf(dir, sizeof(dir), "%s", dirname(tmp));
    return dir;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;

    ck_assert_msg(f, "cannot open %s: %s", path, strerror(errno));
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    rewind(f);
    buf = calloc(1, (size_t) n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t) n, f), (size_t) n);
    (void) fclose(f);
    return buf;
}

static void spew(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    ck_assert_msg(f, "cannot write %s: %s", path, strerror(errno));
    ck_assert_int_ge(fputs(text, f), 0);
    ck_assert_int_eq(fclose(f), 0);
}

/* text with every `from` replaced by `to` (malloc'd). */
static char *replace_all(const char *text, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), n = 0;
    char *out, *o;

    for (const char *p = text; (p = strstr(p, from)); p += fl)
        n++;
    out = o = malloc(strlen(text) + n * (tl + 1) + 1);
    for (const char *p = text, *q;; p = q + fl) {
        q = strstr(p, from);
        if (!q) {
            strcpy(o, p);
            break;
        }
        memcpy(o, p, (size_t) (q - p));
        o += q - p;
        memcpy(o, to, tl);
        o += tl;
    }
    return out;
}

/* The service unit rendered from its template for bindir. */
static char *render_unit(const char *bindir)
{
    char path[600], *t, *a, *b;

    (void) snprintf(path, sizeof(path), "%s/systemd/shmheapd.service.in", src_dir());
    t = slurp(path);
    a = replace_all(t, "@BINDIR@", bindir);
    b = replace_all(a, "@DOCDIR@", "/usr/local/share/doc/shmheap");
    free(t);
    free(a);
    return b;
}

START_TEST(systemd_unit_in_step)
{
    char path[600], *want = render_unit("/usr/local/bin"), *have;

    (void) snprintf(path, sizeof(path), "%s/systemd/shmheapd.service", src_dir());
    have = slurp(path);
    ck_assert_msg(strcmp(want, have) == 0,
                  "systemd/shmheapd.service differs from systemd/shmheapd.service.in for "
                  "PREFIX=/usr/local: edit the template, then `make units`");
    ck_assert_ptr_nonnull(strstr(have, "ExecStart=/usr/local/bin/shmheapd"));
    free(want);
    free(have);
}
END_TEST

/* A temporary directory with the units, ExecStart on the build's daemon,
 * and the metrics drop-in if asked. */
static void units_dir(char *dir, bool metrics)
{
    char path[700], bindir[512], *unit, *text;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    {
        char buf[512], tmp[512];

        (void) snprintf(tmp, sizeof(tmp), "%s",
                        prog_build_path("SHMHEAPD", "shmheapd", buf, sizeof(buf)));
        if (tmp[0] != '/') {
            char cwd[256];

            ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
            (void) snprintf(bindir, sizeof(bindir), "%s/%s", cwd, dirname(tmp));
        } else {
            (void) snprintf(bindir, sizeof(bindir), "%s", dirname(tmp));
        }
    }
    unit = render_unit(bindir);
    (void) snprintf(path, sizeof(path), "%s/shmheapd.service", dir);
    spew(path, unit);
    free(unit);
    (void) snprintf(path, sizeof(path), "%s/systemd/shmheapd.socket", src_dir());
    text = slurp(path);
    (void) snprintf(path, sizeof(path), "%s/shmheapd.socket", dir);
    spew(path, text);
    free(text);
    if (metrics) {
        (void) snprintf(path, sizeof(path), "%s/shmheapd.service.d", dir);
        ck_assert_int_eq(mkdir(path, 0755), 0);
        (void) snprintf(path, sizeof(path), "%s/systemd/metrics.conf", src_dir());
        text = slurp(path);
        (void) snprintf(path, sizeof(path), "%s/shmheapd.service.d/metrics.conf", dir);
        spew(path, text);
        free(text);
    }
}

static void rm_rf(const char *dir)
{
    char cmd[300];

    (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(systemd_units_verify)
{
    const char *sa = prog_find("systemd-analyze");
    char dir[] = "/tmp/shmheap-units-XXXXXX", svc[128], sock[128];
    char *out, *err;
    int st;

    if (!sa) {
        fprintf(stderr, "SKIP systemd_units_verify: systemd-analyze not found\n");
        return;
    }
    for (int metrics = 0; metrics < 2; metrics++) {
        (void) snprintf(dir, sizeof(dir), "/tmp/shmheap-units-XXXXXX");
        units_dir(dir, metrics);
        (void) snprintf(svc, sizeof(svc), "%s/shmheapd.service", dir);
        (void) snprintf(sock, sizeof(sock), "%s/shmheapd.socket", dir);
        {
            const char *argv[] = {sa, "verify", "--man=no", sock, svc, NULL};

            st = prog_run(argv, NULL, daemon_test_ms(60000), &out, &err);
        }
        /* Clean: nothing said about our units. */
        ck_assert_msg(st == 0 && !strstr(err, "shmheapd") && !strstr(out, "shmheapd"),
                      "systemd-analyze verify%s: exit %d:\n%s%s",
                      metrics ? " (with metrics.conf)" : "", st, out, err);
        free(out);
        free(err);
        rm_rf(dir);
    }
}
END_TEST

/* The overall exposure of systemd-analyze security --offline=true. */
static double exposure(const char *sa, const char *svc, char **ret_report)
{
    const char *argv[] = {sa, "security", "--offline=true", "--no-pager", svc, NULL};
    const char *key = "Overall exposure level for shmheapd.service:";
    char *out, *err, *p;
    double v = -1;
    int st;

    st = prog_run(argv, NULL, daemon_test_ms(60000), &out, &err);
    ck_assert_msg(st == 0, "systemd-analyze security: exit %d: %s", st, err);
    p = strstr(out, key);
    if (!p)
        p = strstr(err, key);
    ck_assert_msg(p, "no overall exposure in:\n%s%s", out, err);
    v = strtod(p + strlen(key), NULL);
    *ret_report = out;
    free(err);
    return v;
}

START_TEST(systemd_security_exposure)
{
    const char *sa = prog_find("systemd-analyze");
    char dir[32], svc[128], *report;
    double e;

    if (!sa) {
        fprintf(stderr, "SKIP systemd_security_exposure: systemd-analyze not found\n");
        return;
    }
    for (int metrics = 0; metrics < 2; metrics++) {
        (void) snprintf(dir, sizeof(dir), "/tmp/shmheap-units-XXXXXX");
        units_dir(dir, metrics);
        (void) snprintf(svc, sizeof(svc), "%s/shmheapd.service", dir);
        e = exposure(sa, svc, &report);
        fprintf(stderr, "systemd-analyze security --offline=true: exposure %.1f%s\n", e,
                metrics ? " with metrics.conf" : "");
        ck_assert_msg(e >= 0 && e <= 2.5, "exposure %.1f%s is above 2.5:\n%s", e,
                      metrics ? " (with metrics.conf)" : "", report);
        free(report);
        rm_rf(dir);
    }
}
END_TEST

START_TEST(systemd_config_example)
{
    char path[600], err[CONFIG_ERR_MAX];
    struct config ex, def;

    (void) snprintf(path, sizeof(path), "%s/etc/shmheapd.json.example", src_dir());
    ck_assert_msg(config_load_file(path, true, &ex, err, sizeof(err)) == 0, "%s", err);
    config_default(&def);
    for (size_t i = 0; i < config_key_count(); i++) {
        const struct config_key *k = config_key_at(i);
        char a[128], b[128];

        ck_assert_msg(config_key_equal(k, &ex, &def),
                      "the example sets %s to %s, not its default %s", config_key_name(k),
                      config_format_text(&ex, k, a, sizeof(a)),
                      config_format_text(&def, k, b, sizeof(b)));
    }
}
END_TEST

/* ---- the daemon's side ---- */

struct notify {
    int fd;
    char path[108];
};

static void notify_open(struct notify *n, const char *dir)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    (void) snprintf(n->path, sizeof(n->path), "%s/notify", dir);
    memcpy(sa.sun_path, n->path, strlen(n->path) + 1);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(n->fd, 0);
    ck_assert_int_eq(bind(n->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
}

/* The next message (NUL-terminated in buf), or false after timeout_ms. */
static bool notify_next(struct notify *n, char *buf, size_t len, int timeout_ms)
{
    struct pollfd p = {.fd = n->fd, .events = POLLIN};
    ssize_t got;

    if (poll(&p, 1, timeout_ms) <= 0)
        return false;
    got = recv(n->fd, buf, len - 1, 0);
    if (got < 0)
        return false;
    buf[got] = 0;
    return true;
}

/* The next message that is not a bare WATCHDOG=1 or STATUS= refresh;
 * counts the watchdog pings on the way. */
static bool
notify_next_event(struct notify *n, char *buf, size_t len, int timeout_ms, int *watchdogs)
{
    while (notify_next(n, buf, len, timeout_ms)) {
        if (strcmp(buf, "WATCHDOG=1") == 0) {
            (*watchdogs)++;
            continue;
        }
        if (strncmp(buf, "STATUS=", 7) == 0 && !strchr(buf, '\n'))
            continue;
        return true;
    }
    return false;
}

static pid_t spawn_daemon(const char *dir, const char *const env[], const char *const pre[])
{
    char cfg[128], sock[128], log[128], buf[512];
    const char *argv[16];
    size_t i = 0;

    (void) snprintf(cfg, sizeof(cfg), "%s/shmheapd.json", dir);
    (void) snprintf(sock, sizeof(sock), "%s/shmheap.sock", dir);
    (void) snprintf(log, sizeof(log), "%s/daemon.log", dir);
    spew(cfg, SMALL);
    for (; pre && pre[i]; i++)
        argv[i] = pre[i];
    argv[i++] = prog_build_path("SHMHEAPD", "shmheapd", buf, sizeof(buf));
    argv[i++] = "--socket";
    argv[i++] = sock;
    argv[i++] = "--config";
    argv[i++] = cfg;
    argv[i] = NULL;
    return prog_spawn(argv, env, log);
}

static char *dir_log(const char *dir)
{
    char path[128];

    (void) snprintf(path, sizeof(path), "%s/daemon.log", dir);
    return slurp(path);
}

START_TEST(systemd_notify_sequence)
{
    char dir[] = "/tmp/shmheap-notify-XXXXXX", env_notify[160], msg[4096], sock[128], want[64];
    const char *env[] = {env_notify, "WATCHDOG_USEC=400000", NULL};
    struct notify n;
    int watchdogs = 0, st;
    shmheap_t *h;
    void *p;
    pid_t pid;
    cJSON *r;
    char *log;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    notify_open(&n, dir);
    (void) snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=%s", n.path);
    (void) snprintf(sock, sizeof(sock), "%s/shmheap.sock", dir);
    pid = spawn_daemon(dir, env, NULL);
    ck_assert_int_gt(pid, 0);

    /* READY=1 is the first word, and comes once the socket accepts. Only
     * the segments handed to the fd store (FDSTORE=1, restart without
     * loss) may come before it. */
    do
        ck_assert_msg(notify_next(&n, msg, sizeof(msg), daemon_test_ms(30000)), "no READY=1");
    while (strncmp(msg, "FDSTORE=1\n", 10) == 0);
    ck_assert_msg(strncmp(msg, "READY=1\n", 8) == 0, "first message: %s", msg);
    ck_assert_ptr_nonnull(strstr(msg, "\nSTATUS=Serving 0 clients"));
    (void) snprintf(want, sizeof(want), "\nMAINPID=%d", (int) pid);
    ck_assert_ptr_nonnull(strstr(msg, want));
    r = daemon_call_once(sock, "{\"op\":\"stats\"}");
    ck_assert(r && reply_is_ok(r));
    cJSON_Delete(r);

    /* WATCHDOG=1 at half the period, from the loop. */
    log = dir_log(dir);
    ck_assert_msg(strstr(log, "watchdog: pinging systemd every 200 ms"), "log:\n%s", log);
    free(log);
    while (watchdogs < 3) {
        ck_assert(notify_next(&n, msg, sizeof(msg), daemon_test_ms(10000)));
        if (strcmp(msg, "WATCHDOG=1") == 0)
            watchdogs++;
    }

    /* STATUS= is refreshed: it comes to show the client and its bytes. */
    ck_assert_int_eq(shmheap_attach(sock, &h), 0);
    ck_assert_ptr_nonnull(p = shmheap_malloc(h, 1 << 20));
    for (;;) {
        ck_assert_msg(notify_next(&n, msg, sizeof(msg), daemon_test_ms(20000)),
                      "no STATUS= refresh with the client");
        if (strncmp(msg, "STATUS=Serving 1 client, ", 25) == 0 && !strstr(msg, " 0 bytes in use"))
            break;
    }

    /* SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1. */
    ck_assert_int_eq(kill(pid, SIGHUP), 0);
    ck_assert(notify_next_event(&n, msg, sizeof(msg), daemon_test_ms(10000), &watchdogs));
    ck_assert_msg(strncmp(msg, "RELOADING=1\n", 12) == 0, "after SIGHUP: %s", msg);
    {
        const char *m = strstr(msg, "MONOTONIC_USEC=");

        ck_assert_msg(m && m[15] >= '1' && m[15] <= '9', "no MONOTONIC_USEC: %s", msg);
    }
    ck_assert(notify_next_event(&n, msg, sizeof(msg), daemon_test_ms(10000), &watchdogs));
    ck_assert_msg(strncmp(msg, "READY=1\n", 8) == 0, "after RELOADING: %s", msg);

    shmheap_free(h, p);
    shmheap_detach(h);

    /* SIGTERM: STOPPING=1, exit 0. */
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    ck_assert(notify_next_event(&n, msg, sizeof(msg), daemon_test_ms(10000), &watchdogs));
    ck_assert_msg(strncmp(msg, "STOPPING=1", 10) == 0, "after SIGTERM: %s", msg);
    ck_assert(prog_wait(pid, daemon_test_ms(30000), &st));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    (void) close(n.fd);
    rm_rf(dir);
}
END_TEST

START_TEST(systemd_socket_activation)
{
    const char *act = prog_find("systemd-socket-activate");
    char dir[] = "/tmp/shmheap-act-XXXXXX", sock[128];
    const char *pre[] = {act, "-l", sock, NULL};
    struct stat st_sock;
    int st;
    pid_t pid;
    cJSON *r;
    char *log;

    if (!act) {
        fprintf(stderr, "SKIP systemd_socket_activation: systemd-socket-activate not found\n");
        return;
    }
    ck_assert_ptr_nonnull(mkdtemp(dir));
    (void) snprintf(sock, sizeof(sock), "%s/shmheap.sock", dir);
    pid = spawn_daemon(dir, NULL, pre);
    ck_assert_int_gt(pid, 0);
    /* The activator listens first; the first connection starts the daemon
     * (exec'd in its place: the same pid) with the socket as fd 3. */
    for (int i = 0; i < daemon_test_ms(10000) / 20 && stat(sock, &st_sock) < 0; i++)
        (void) usleep(20000);
    ck_assert_int_eq(stat(sock, &st_sock), 0);
    r = daemon_call_once(sock, "{\"op\":\"stats\"}");
    ck_assert_msg(r && reply_is_ok(r), "no stats through the activated socket");
    cJSON_Delete(r);
    log = dir_log(dir);
    ck_assert_msg(strstr(log, "(from systemd)"), "log:\n%s", log);
    free(log);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    ck_assert(prog_wait(pid, daemon_test_ms(30000), &st));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    /* The socket is systemd's: the daemon leaves it in place. */
    ck_assert_int_eq(stat(sock, &st_sock), 0);
    rm_rf(dir);
}
END_TEST

/* A child that becomes uid nobody with primary group gid and says hello:
 * exits 0 if the daemon's answer was `want_ok`. */
static void hello_as(const char *sock, gid_t gid, bool want_ok)
{
    pid_t pid = fork();
    int st;

    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        cJSON *r;

        if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(65534) != 0)
            _exit(90);
        r = daemon_call_once(sock, "{\"op\":\"hello\",\"version\":1,\"pid\":1}");
        if (!r)
            _exit(91);
        if (reply_is_ok(r) != want_ok)
            _exit(92);
        if (!want_ok && strcmp(reply_error_code(r), "permission_denied") != 0)
            _exit(93);
        _exit(0);
    }
    ck_assert(prog_wait(pid, daemon_test_ms(30000), &st));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "gid %u: child exit %d (want %s)",
                  (unsigned) gid, WIFEXITED(st) ? WEXITSTATUS(st) : -1,
                  want_ok ? "admitted" : "permission_denied");
}

/* Under systemd the daemon runs as group shmheap, the socket's group: its
 * members are admitted. Here: the daemon's gid is 4242 (setpriv). */
START_TEST(systemd_socket_group_admitted)
{
    const char *setpriv = prog_find("setpriv");
    char dir[] = "/tmp/shmheap-group-XXXXXX", sock[128], log[128];
    const char *pre[] = {setpriv, "--regid", "4242", "--clear-groups", NULL};
    struct stat st;
    int status, tries = 0;
    bool started = false;
    pid_t pid;
    char *text;

    if (geteuid() != 0 || !setpriv) {
        fprintf(stderr, "SKIP systemd_socket_group_admitted: needs root and setpriv\n");
        return;
    }
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_int_eq(chmod(dir, 0755), 0);
    (void) snprintf(sock, sizeof(sock), "%s/shmheap.sock", dir);
    (void) snprintf(log, sizeof(log), "%s/daemon.log", dir);
    pid = spawn_daemon(dir, NULL, pre);
    ck_assert_int_gt(pid, 0);
    while (!started) {
        ck_assert_msg(tries++ < daemon_test_ms(10000) / 20, "the daemon did not start");
        (void) usleep(20000);
        /* The spawned child opens the log before it execs: not there yet
         * is "not started yet". */
        if (access(log, F_OK) != 0)
            continue;
        text = slurp(log);
        started = strstr(text, "shmheapd " SHMHEAP_VERSION " started") != NULL;
        free(text);
    }
    ck_assert_int_eq(stat(sock, &st), 0);
    ck_assert_uint_eq(st.st_gid, 4242); /* the socket is the daemon's group's */
    /* Past the file's mode, the daemon's own check decides. */
    ck_assert_int_eq(chmod(sock, 0666), 0);
    hello_as(sock, 4242, true);
    hello_as(sock, 4343, false);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    ck_assert(prog_wait(pid, daemon_test_ms(30000), &status));
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
    rm_rf(dir);
}
END_TEST

Suite *systemd_suite(void)
{
    Suite *s = suite_create("systemd");
    TCase *units = tcase_create("units"), *daemon = tcase_create("daemon");

    tcase_set_timeout(units, 120);
    tcase_add_test(units, systemd_unit_in_step);
    tcase_add_test(units, systemd_units_verify);
    tcase_add_test(units, systemd_security_exposure);
    tcase_add_test(units, systemd_config_example);
    tcase_set_timeout(daemon, 120);
    tcase_add_test(daemon, systemd_notify_sequence);
    tcase_add_test(daemon, systemd_socket_activation);
    tcase_add_test(daemon, systemd_socket_group_admitted);
    suite_add_tcase(s, units);
    suite_add_tcase(s, daemon);
    return s;
}
