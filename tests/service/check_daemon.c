/* shmheapd against a real daemon: every op, the options, the socket. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config/config.h"
#include "shm/layout.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/http_client.h"
#include "tests/service/suites.h"

/* A small heap on normal pages: cheap and the same on every machine. */

static double num(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    ck_assert_msg(cJSON_IsNumber(v), "field %s is not a number", name);
    return v->valuedouble;
}

START_TEST(daemon_hello_fds)
{
    struct daemon_fixture f;
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, fd;
    const cJSON *segs, *s;
    cJSON *r;
    int i = 0;

    fixture_start(&f, NULL);
    fd = daemon_connect(f.socket_path);
    ck_assert_int_ge(fd, 0);
    r = fixture_hello(fd, fds, &nfds);
    ck_assert(reply_is_ok(r));
    ck_assert_int_eq((int) num(r, "version"), 1);
    ck_assert(num(r, "client_id") > 0);
    segs = cJSON_GetObjectItemCaseSensitive(r, "segments");
    ck_assert_int_eq(cJSON_GetArraySize(segs), 2);
    ck_assert_int_eq(nfds, 2);
    cJSON_ArrayForEach(s, segs)
    {
        struct stat st;

        ck_assert_int_eq((int) num(s, "index"), i);
        ck_assert_int_eq(fstat(fds[i], &st), 0);
        ck_assert_uint_eq((uint64_t) st.st_size, (uint64_t) num(s, "size"));
        ck_assert_uint_eq((uint64_t) num(s, "page_size"), 4096);
        i++;
    }
    ck_assert_uint_eq((uint64_t) num(cJSON_GetArrayItem(segs, 1), "size"), 64u << 20);
    /* fd 0 is the control segment: its magic and the config we gave. */
    {
        struct stat st;
        struct ctl_header *c;

        ck_assert_int_eq(fstat(fds[0], &st), 0);
        c = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_SHARED, fds[0], 0);
        ck_assert_ptr_ne(c, MAP_FAILED);
        ck_assert_uint_eq(c->magic, SHM_CTL_MAGIC);
        ck_assert_uint_eq(c->config.segment_size, 64u << 20);
        ck_assert_uint_eq(c->config.huge_pages, SHM_PAGES_OFF);
        (void) munmap(c, (size_t) st.st_size);
    }
    for (i = 0; i < nfds; i++)
        (void) close(fds[i]);
    cJSON_Delete(r);
    /* Once per connection. */
    expect_reply(fixture_hello(fd, NULL, NULL), "bad_request");
    (void) close(fd);
    /* Other versions and missing fields. */
    expect_reply(daemon_call_once(f.socket_path, "{\"op\":\"hello\",\"version\":2,\"pid\":1}"),
                 "bad_value");
    expect_reply(daemon_call_once(f.socket_path, "{\"op\":\"hello\",\"version\":1}"),
                 "bad_request");
    expect_reply(daemon_call_once(f.socket_path, "{\"op\":\"hello\",\"version\":\"1\",\"pid\":1}"),
                 "bad_request");
    fixture_stop(&f);
}
END_TEST

START_TEST(daemon_segment_op)
{
    struct daemon_fixture f;
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, fd;
    struct stat st;
    cJSON *r;

    fixture_start(&f, NULL);
    fd = daemon_connect(f.socket_path);
    expect_reply(daemon_call(fd, "{\"op\":\"segment\",\"index\":1}", NULL, NULL), "not_attached");
    expect_reply(daemon_call(fd, "{\"op\":\"grow\",\"seen\":2}", NULL, NULL), "not_attached");
    r = fixture_hello(fd, fds, &nfds);
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
    r = daemon_call(fd, "{\"op\":\"segment\",\"index\":1}", fds, &nfds);
    ck_assert(reply_is_ok(r));
    ck_assert_int_eq(nfds, 1);
    ck_assert_int_eq(fstat(fds[0], &st), 0);
    ck_assert_uint_eq((uint64_t) st.st_size,
                      (uint64_t) num(cJSON_GetObjectItemCaseSensitive(r, "segment"), "size"));
    ck_assert_int_eq((int) num(cJSON_GetObjectItemCaseSensitive(r, "segment"), "index"), 1);
    (void) close(fds[0]);
    cJSON_Delete(r);
    expect_reply(daemon_call(fd, "{\"op\":\"segment\",\"index\":5}", NULL, NULL),
                 "no_such_segment");
    expect_reply(daemon_call(fd, "{\"op\":\"segment\",\"index\":4000000000}", NULL, NULL),
                 "no_such_segment");
    expect_reply(daemon_call(fd, "{\"op\":\"segment\",\"index\":-1}", NULL, NULL), "bad_request");
    expect_reply(daemon_call(fd, "{\"op\":\"segment\",\"index\":\"1\"}", NULL, NULL),
                 "bad_request");
    expect_reply(daemon_call(fd, "{\"op\":\"segment\"}", NULL, NULL), "bad_request");
    (void) close(fd);
    fixture_stop(&f);
}
END_TEST

static int segment_count(const char *sock)
{
    cJSON *r = daemon_call_once(sock, "{\"op\":\"segments\"}");
    int n;

    ck_assert(reply_is_ok(r));
    n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "segments"));
    cJSON_Delete(r);
    return n;
}

START_TEST(daemon_grow)
{
    struct daemon_fixture f;
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, fd;
    const cJSON *seg;
    struct stat st;
    cJSON *r;

    fixture_start(&f, "\"max_segments\": 3");
    fd = daemon_connect(f.socket_path);
    r = fixture_hello(fd, fds, &nfds);
    cJSON_Delete(r);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
    /* The client has seen 2 (control + 1): a new segment, big enough. */
    r = daemon_call(fd, "{\"op\":\"grow\",\"seen\":2,\"min_bytes\":134217728}", fds, &nfds);
    ck_assert(reply_is_ok(r));
    seg = cJSON_GetObjectItemCaseSensitive(r, "segment");
    ck_assert_int_eq((int) num(seg, "index"), 2);
    ck_assert_int_eq(nfds, 1);
    ck_assert_int_eq(fstat(fds[0], &st), 0);
    ck_assert_uint_ge((uint64_t) st.st_size, 128u << 20);
    ck_assert_uint_eq((uint64_t) st.st_size, (uint64_t) num(seg, "size"));
    (void) close(fds[0]);
    cJSON_Delete(r);
    ck_assert_int_eq(segment_count(f.socket_path), 2);
    /* Another client that still thinks there are 2: the newest, no new one. */
    r = daemon_call(fd, "{\"op\":\"grow\",\"seen\":2}", fds, &nfds);
    ck_assert(reply_is_ok(r));
    ck_assert_int_eq((int) num(cJSON_GetObjectItemCaseSensitive(r, "segment"), "index"), 2);
    ck_assert_int_eq(nfds, 1);
    (void) close(fds[0]);
    cJSON_Delete(r);
    ck_assert_int_eq(segment_count(f.socket_path), 2);
    r = daemon_call(fd, "{\"op\":\"grow\",\"seen\":3}", fds, &nfds);
    ck_assert(reply_is_ok(r));
    ck_assert_int_eq((int) num(cJSON_GetObjectItemCaseSensitive(r, "segment"), "index"), 3);
    (void) close(fds[0]);
    cJSON_Delete(r);
    /* max_segments (3) reached. */
    expect_reply(daemon_call(fd, "{\"op\":\"grow\",\"seen\":4}", NULL, NULL), "heap_full");
    ck_assert(daemon_log_wait(&f, "max_segments", 1000));
    /* Bad fields. */
    expect_reply(daemon_call(fd, "{\"op\":\"grow\",\"seen\":4,\"min_bytes\":1e15}", NULL, NULL),
                 "bad_value");
    expect_reply(daemon_call(fd, "{\"op\":\"grow\"}", NULL, NULL), "bad_request");
    expect_reply(daemon_call(fd, "{\"op\":\"grow\",\"seen\":true}", NULL, NULL), "bad_request");
    (void) close(fd);
    fixture_stop(&f);
}
END_TEST

START_TEST(daemon_info_ops)
{
    static const char *const stats_fields[] = {
            "bytes_reserved", "bytes_committed", "bytes_in_use", "peak_bytes_in_use",   "allocs",
            "frees",          "trim_gen",        "trims",        "trim_bytes_released", "bad_frees",
            "double_frees",   "clients",         "thread_caches"};
    struct daemon_fixture f;
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, fd;
    const cJSON *st, *a, *c;
    cJSON *r;

    fixture_start(&f, NULL);
    fd = daemon_connect(f.socket_path);
    r = fixture_hello(fd, fds, &nfds);
    cJSON_Delete(r);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);

    r = daemon_call_once(f.socket_path, "{\"op\":\"stats\"}");
    ck_assert(reply_is_ok(r));
    st = cJSON_GetObjectItemCaseSensitive(r, "stats");
    for (size_t i = 0; i < sizeof(stats_fields) / sizeof(stats_fields[0]); i++)
        (void) num(st, stats_fields[i]);
    ck_assert_uint_eq((uint64_t) num(st, "bytes_reserved"), 64u << 20);
    ck_assert_int_eq((int) num(st, "clients"), 1);
    ck_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(st, "classes")));
    (void) num(cJSON_GetObjectItemCaseSensitive(st, "recycler"), "cas_retries");
    a = cJSON_GetObjectItemCaseSensitive(st, "segments");
    ck_assert_int_eq(cJSON_GetArraySize(a), 1);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(a, 0),
                                                                           "page_size")),
                     "4K");
    cJSON_Delete(r);

    r = daemon_call_once(f.socket_path, "{\"op\":\"segments\"}");
    ck_assert(reply_is_ok(r));
    a = cJSON_GetObjectItemCaseSensitive(r, "segments");
    ck_assert_int_eq(cJSON_GetArraySize(a), 1);
    c = cJSON_GetArrayItem(a, 0);
    ck_assert_int_eq((int) num(c, "index"), 1);
    ck_assert_uint_eq((uint64_t) num(c, "size"), 64u << 20);
    ck_assert(num(c, "committed_bytes") > 0);
    ck_assert(num(c, "free_blocks") > 900);
    cJSON_Delete(r);

    r = daemon_call_once(f.socket_path, "{\"op\":\"clients\"}");
    ck_assert(reply_is_ok(r));
    a = cJSON_GetObjectItemCaseSensitive(r, "clients");
    ck_assert_int_eq(cJSON_GetArraySize(a), 1);
    c = cJSON_GetArrayItem(a, 0);
    ck_assert(num(c, "client_id") > 0);
    ck_assert_int_eq((int) num(c, "pid"), (int) getpid());
    ck_assert_int_eq((int) num(c, "uid"), (int) getuid());
    ck_assert_int_eq((int) num(c, "threads"), 0);
    ck_assert_int_eq((int) num(c, "bytes_allocated"), 0);
    ck_assert(num(c, "connected_s") >= 0);
    cJSON_Delete(r);
    (void) close(fd);
    fixture_stop(&f);
}
END_TEST

START_TEST(daemon_trim_verify)
{
    struct daemon_fixture f;
    int fd;
    cJSON *r;

    fixture_start(&f, NULL);
    fd = daemon_connect(f.socket_path);
    r = daemon_call(fd, "{\"op\":\"trim\"}", NULL, NULL);
    ck_assert(reply_is_ok(r));
    ck_assert_int_eq((int) num(r, "trim_gen"), 1);
    (void) num(r, "bytes_released");
    (void) num(r, "caches_flushed");
    (void) num(r, "caches_total");
    cJSON_Delete(r);
    r = daemon_call(fd, "{\"op\":\"trim\",\"wait_ms\":0}", NULL, NULL);
    ck_assert(reply_is_ok(r));
    ck_assert_int_eq((int) num(r, "trim_gen"), 2);
    cJSON_Delete(r);
    expect_reply(daemon_call(fd, "{\"op\":\"trim\",\"wait_ms\":70000}", NULL, NULL), "bad_value");
    expect_reply(daemon_call(fd, "{\"op\":\"trim\",\"wait_ms\":\"5\"}", NULL, NULL), "bad_request");
    ck_assert(daemon_log_wait(&f, "trim (requested by pid", 1000));
    r = daemon_call(fd, "{\"op\":\"verify\"}", NULL, NULL);
    ck_assert(reply_is_ok(r));
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "consistent")));
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "problems")), 0);
    ck_assert(num(r, "checked_blocks") > 0);
    cJSON_Delete(r);
    (void) close(fd);
    fixture_stop(&f);
}
END_TEST

START_TEST(daemon_config_get_op)
{
    struct daemon_fixture f;
    const cJSON *c;
    cJSON *r;

    fixture_start(&f, "\"bundle_objects\": 32");
    r = daemon_call_once(f.socket_path, "{\"op\":\"config.get\"}");
    ck_assert(reply_is_ok(r));
    c = cJSON_GetObjectItemCaseSensitive(r, "config");
    ck_assert_int_eq(cJSON_GetArraySize(c), (int) config_key_count());
    ck_assert_int_eq((int) num(c, "bundle_objects"), 32);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "huge_pages")),
                     "off");
    cJSON_Delete(r);
    r = daemon_call_once(f.socket_path, "{\"op\":\"config.get\",\"key\":\"max_clients\"}");
    ck_assert(reply_is_ok(r));
    c = cJSON_GetObjectItemCaseSensitive(r, "config");
    ck_assert_int_eq(cJSON_GetArraySize(c), 1);
    ck_assert_int_eq((int) num(c, "max_clients"), 64);
    cJSON_Delete(r);
    expect_reply(daemon_call_once(f.socket_path, "{\"op\":\"config.get\",\"key\":\"nope\"}"),
                 "unknown_key");
    expect_reply(daemon_call_once(f.socket_path, "{\"op\":\"config.get\",\"key\":7}"),
                 "bad_request");
    fixture_stop(&f);
}
END_TEST

/* Runs the daemon binary with args, output to a pipe; returns its wait
 * status and (if out) what it printed. */
static int run_daemon(const char *const *args, char *out, size_t outlen)
{
    const char *argv[16];
    char exe[256];
    const char *e = getenv("SHMHEAPD"), *b = getenv("SHMHEAP_BUILD_DIR");
    int p[2], st = 0, n = 0;
    size_t got = 0;
    pid_t pid;

    if (e && *e)
        (void) snprintf(exe, sizeof(exe), "%s", e);
    else
        (void) snprintf(exe, sizeof(exe), "%s/shmheapd", b && *b ? b : "build");
    argv[n++] = exe;
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    ck_assert_int_eq(pipe(p), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        (void) dup2(p[1], 1);
        (void) dup2(p[1], 2);
        (void) close(p[0]);
        execv(exe, (char *const *) argv);
        _exit(127);
    }
    (void) close(p[1]);
    for (;;) {
        char buf[1024];
        ssize_t k = read(p[0], buf, sizeof(buf));

        if (k <= 0)
            break;
        if (out && got + 1 < outlen) {
            size_t take = (size_t) k < outlen - got - 1 ? (size_t) k : outlen - got - 1;

            memcpy(out + got, buf, take);
            got += take;
        }
    }
    if (out)
        out[got] = 0;
    (void) close(p[0]);
    (void) waitpid(pid, &st, 0);
    return st;
}

START_TEST(daemon_options)
{
    static const char *const version[] = {"--version", NULL};
    static const char *const help[] = {"--help", NULL};
    static const char *const bad[] = {"--frobnicate", NULL};
    static const char *const extra[] = {"stray", NULL};
    static const char *const bad_metrics[] = {"--metrics-listen", "nowhere", NULL};
    char a4[32], a6[32];
    const char *const metrics[] = {"--metrics-listen", a4, "--foreground", NULL};
    const char *const metrics6[] = {"--metrics-listen", a6, NULL};
    struct daemon_fixture f;
    char out[8192];
    int st;

    (void) snprintf(a4, sizeof(a4), "127.0.0.1:%d", http_free_port(0));
    (void) snprintf(a6, sizeof(a6), "[::1]:%d", http_free_port(1));
    st = run_daemon(version, out, sizeof(out));
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert_ptr_nonnull(strstr(out, "shmheapd 0."));
    st = run_daemon(help, out, sizeof(out));
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert_ptr_nonnull(strstr(out, "--socket"));
    ck_assert_ptr_nonnull(strstr(out, "bundle_objects"));
    st = run_daemon(bad, out, sizeof(out));
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    st = run_daemon(extra, out, sizeof(out));
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    st = run_daemon(bad_metrics, out, sizeof(out));
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    ck_assert_ptr_nonnull(strstr(out, "ADDR:PORT"));
    fixture_start_args(&f, NULL, metrics);
    ck_assert(daemon_log_wait(&f, "metrics: serving GET /metrics on 127.0.0.1:", 1000));
    fixture_stop(&f);
    fixture_start_args(&f, NULL, metrics6);
    ck_assert(daemon_log_wait(&f, "metrics: serving GET /metrics on [::1]:", 1000));
    fixture_stop(&f);
}
END_TEST

static void make_stale_socket(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    memcpy(sa.sun_path, path, strlen(path) + 1);
    ck_assert_int_eq(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
    (void) close(fd); /* bound, never listened, closed: stale */
}

START_TEST(daemon_socket_file)
{
    char dir[] = "/tmp/shmheapd-sock-XXXXXX", path[160], sub[96];
    const char *args[3] = {"--socket", path, NULL};
    struct daemon_fixture f, g;
    struct stat st;
    cJSON *r;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    /* A socket in a directory that does not exist yet: made 0755; the
     * socket is 0660. */
    (void) snprintf(sub, sizeof(sub), "%s/a/b", dir);
    (void) snprintf(path, sizeof(path), "%s/s.sock", sub);
    fixture_start_args(&f, NULL, args);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    ck_assert_int_eq(st.st_mode & 07777, 0660);
    ck_assert_int_eq(stat(sub, &st), 0);
    ck_assert_int_eq(st.st_mode & 07777, 0755);
    r = daemon_call_once(path, "{\"op\":\"stats\"}");
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    /* A second daemon on the same path refuses to start and leaves the
     * first one alone. */
    ck_assert_int_eq(daemon_start_args(&g, "{" FIXTURE_SMALL "}", args), -ECHILD);
    ck_assert(WIFEXITED(g.status) && WEXITSTATUS(g.status) != 0);
    ck_assert(daemon_log_wait(&g, "another daemon answers", 0));
    daemon_stop(&g);
    r = daemon_call_once(path, "{\"op\":\"stats\"}");
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    /* A clean stop removes the socket. */
    fixture_stop(&f);
    ck_assert_int_eq(stat(path, &st), -1);
    /* A stale socket (nothing answers) is replaced. */
    make_stale_socket(path);
    fixture_start_args(&f, NULL, args);
    ck_assert(daemon_log_wait(&f, "removed the stale socket", 0));
    r = daemon_call_once(path, "{\"op\":\"stats\"}");
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    fixture_stop(&f);
    /* A file that is not a socket is never removed. */
    {
        FILE *fp = fopen(path, "w");

        fputs("precious\n", fp);
        fclose(fp);
    }
    ck_assert_int_eq(daemon_start_args(&f, "{" FIXTURE_SMALL "}", args), -ECHILD);
    ck_assert(daemon_log_wait(&f, "is not a socket", 0));
    daemon_stop(&f);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    (void) unlink(path);
    (void) rmdir(sub);
    (void) snprintf(sub, sizeof(sub), "%s/a", dir);
    (void) rmdir(sub);
    (void) rmdir(dir);
}
END_TEST

/* systemd's side of socket activation and the watchdog, played by hand:
 * a listening socket as fd 3 with LISTEN_FDS/LISTEN_PID, NOTIFY_SOCKET and
 * WATCHDOG_USEC. */
START_TEST(daemon_systemd)
{
    char dir[] = "/tmp/shmheapd-sd-XXXXXX", sock[128], notify[128], cfg[128], logp[128];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    bool ready = false, watchdog = false, stopping = false;
    int lfd, nfd, st;
    struct stat sst;
    pid_t pid;
    cJSON *r;
    FILE *fp;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    (void) snprintf(sock, sizeof(sock), "%s/activated.sock", dir);
    (void) snprintf(notify, sizeof(notify), "%s/notify", dir);
    (void) snprintf(cfg, sizeof(cfg), "%s/c.json", dir);
    (void) snprintf(logp, sizeof(logp), "%s/log", dir);
    fp = fopen(cfg, "w");
    fputs("{" FIXTURE_SMALL "}", fp);
    fclose(fp);
    lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    ck_assert_int_eq(bind(lfd, (struct sockaddr *) &sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(lfd, 16), 0);
    nfd = socket(AF_UNIX, SOCK_DGRAM, 0);
    memcpy(sa.sun_path, notify, strlen(notify) + 1);
    ck_assert_int_eq(bind(nfd, (struct sockaddr *) &sa, sizeof(sa)), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char exe[256], pidstr[16];
        const char *e = getenv("SHMHEAPD"), *b = getenv("SHMHEAP_BUILD_DIR");
        int log = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);

        (void) dup2(log, 2);
        if (e && *e)
            (void) snprintf(exe, sizeof(exe), "%s", e);
        else
            (void) snprintf(exe, sizeof(exe), "%s/shmheapd", b && *b ? b : "build");
        (void) dup2(lfd, 3);
        (void) snprintf(pidstr, sizeof(pidstr), "%d", (int) getpid());
        (void) setenv("LISTEN_FDS", "1", 1);
        (void) setenv("LISTEN_PID", pidstr, 1);
        (void) setenv("NOTIFY_SOCKET", notify, 1);
        (void) setenv("WATCHDOG_USEC", "200000", 1);
        (void) setenv("WATCHDOG_PID", pidstr, 1);
        /* --socket names a path that must NOT be used: fd 3 wins. */
        execl(exe, exe, "--config", cfg, "--socket", "/nonexistent/dir/x.sock", (char *) NULL);
        _exit(127);
    }
    (void) close(lfd);
    for (int i = 0; i < daemon_test_ms(2000) / 20 && !(ready && watchdog); i++) {
        struct pollfd p = {.fd = nfd, .events = POLLIN};
        char buf[512];

        if (poll(&p, 1, 20) > 0) {
            ssize_t n = recv(nfd, buf, sizeof(buf) - 1, 0);

            if (n > 0) {
                buf[n] = 0;
                ready |= strstr(buf, "READY=1") != NULL;
                watchdog |= strstr(buf, "WATCHDOG=1") != NULL;
            }
        }
    }
    ck_assert(ready);
    ck_assert(watchdog);
    r = daemon_call_once(sock, "{\"op\":\"stats\"}");
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    for (int i = 0; i < daemon_test_ms(2000) / 20 && !stopping; i++) {
        struct pollfd p = {.fd = nfd, .events = POLLIN};
        char buf[512];

        if (poll(&p, 1, 20) > 0) {
            ssize_t n = recv(nfd, buf, sizeof(buf) - 1, 0);

            if (n > 0) {
                buf[n] = 0;
                stopping |= strstr(buf, "STOPPING=1") != NULL;
            }
        }
    }
    ck_assert(stopping);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* The socket belongs to systemd: left in place. */
    ck_assert_int_eq(stat(sock, &sst), 0);
    {
        struct daemon_fixture g = {0};
        char *log;

        (void) snprintf(g.log_path, sizeof(g.log_path), "%s", logp);
        log = daemon_log(&g);
        ck_assert_msg(strstr(log, "(from systemd)") != NULL, "%s", log);
        free(log);
    }
    (void) close(nfd);
    (void) unlink(sock);
    (void) unlink(notify);
    (void) unlink(cfg);
    (void) unlink(logp);
    (void) rmdir(dir);
}
END_TEST

static long huge_2m_free(void)
{
    FILE *fp = fopen("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "re");
    long n = 0;

    if (fp) {
        if (fscanf(fp, "%ld", &n) != 1)
            n = 0;
        fclose(fp);
    }
    return n;
}

/* huge_pages "2M": 2 MiB pages when the pool has some (CI reserves them),
 * else a clear refusal to start. "auto" always starts and says what it got. */
START_TEST(daemon_huge_pages)
{
    struct daemon_fixture f;
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, fd, r;
    cJSON *reply;

    r = daemon_start(&f, "{\"segment_size\": 67108864, \"huge_pages\": \"2M\"}");
    if (huge_2m_free() < 2 && r == -ECHILD) {
        ck_assert(WIFEXITED(f.status) && WEXITSTATUS(f.status) != 0);
        ck_assert(daemon_log_wait(&f, "not enough free 2M huge pages", 0));
        daemon_stop(&f);
    } else {
        ck_assert_int_eq(r, 0);
        fd = daemon_connect(f.socket_path);
        reply = fixture_hello(fd, fds, &nfds);
        ck_assert(reply_is_ok(reply));
        ck_assert_uint_eq(
                (uint64_t) num(
                        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(reply, "segments"), 1),
                        "page_size"),
                2u << 20);
        cJSON_Delete(reply);
        for (int i = 0; i < nfds; i++)
            (void) close(fds[i]);
        (void) close(fd);
        ck_assert(daemon_log_wait(&f, "segment 1 created: 64M bytes on 2M pages", 0));
        fixture_stop(&f);
    }
    ck_assert_int_eq(daemon_start(&f, "{\"segment_size\": 67108864, \"huge_pages\": \"auto\"}"), 0);
    /* 1G pages, if any are free, round the segment up to 1G. */
    ck_assert(daemon_log_wait(&f, "segment 1 created: ", 0));
    ck_assert(daemon_log_wait(&f, "pages (huge_pages \"auto\")", 0));
    fixture_stop(&f);
}
END_TEST

Suite *daemon_suite(void)
{
    Suite *s = suite_create("daemon");
    TCase *tc = tcase_create("ops");

    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, daemon_hello_fds);
    tcase_add_test(tc, daemon_segment_op);
    tcase_add_test(tc, daemon_grow);
    tcase_add_test(tc, daemon_info_ops);
    tcase_add_test(tc, daemon_trim_verify);
    tcase_add_test(tc, daemon_config_get_op);
    suite_add_tcase(s, tc);
    tc = tcase_create("process");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, daemon_options);
    tcase_add_test(tc, daemon_socket_file);
    tcase_add_test(tc, daemon_systemd);
    tcase_add_test(tc, daemon_huge_pages);
    suite_add_tcase(s, tc);
    return s;
}
