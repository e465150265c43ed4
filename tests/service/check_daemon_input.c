/* Bad input, limits and peers: each bad thing is followed by a good
 * request, on the same connection where it stays open and on a new one. */
#include <check.h>
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

#define NOBODY 65534

/* Sends raw bytes (a '\n' is not added) and reads one reply. */
static cJSON *raw_call(int fd, const char *data, size_t len)
{
    char *reply = NULL;
    cJSON *j;

    if (daemon_send(fd, data, len) < 0)
        return NULL;
    if (daemon_recv(fd, &reply, NULL, NULL, daemon_test_ms(10000)) < 0)
        return NULL;
    j = cJSON_Parse(reply);
    free(reply);
    return j;
}

static void good_request_works(const char *sock, int fd)
{
    if (fd >= 0)
        expect_reply(daemon_call(fd, "{\"op\":\"stats\"}", NULL, NULL), NULL);
    expect_reply(daemon_call_once(sock, "{\"op\":\"stats\"}"), NULL);
}

START_TEST(input_malformed)
{
    static const struct {
        const char *line, *code;
    } cases[] = {
            {"{\"op\":", "bad_json"},
            {"not json at all", "bad_json"},
            {"", "bad_json"},
            {"   ", "bad_json"},
            {"[]", "bad_json"},
            {"\"stats\"", "bad_json"},
            {"42", "bad_json"},
            {"null", "bad_json"},
            {"{\"op\":\"stats\"} trailing", "bad_json"},
            {"{\"op\":\"stats\"}{\"op\":\"stats\"}", "bad_json"},
            {"{\"op\":\"st\xff\xfe\"}", "bad_json"},   /* not UTF-8 */
            {"{\"op\":\"\xc0\xaf\"}", "bad_json"},     /* overlong */
            {"{\"op\":\"\xed\xa0\x80\"}", "bad_json"}, /* a surrogate */
            {"{}", "bad_request"},
            {"{\"op\":5}", "bad_request"},
            {"{\"op\":null}", "bad_request"},
            {"{\"op\":[\"stats\"]}", "bad_request"},
            {"{\"op\":\"nope\"}", "unknown_op"},
            {"{\"op\":\"STATS\"}", "unknown_op"},
            {"{\"op\":\"\\u0000stats\"}", "unknown_op"},
            {"{\"op\":\"hello\",\"version\":1,\"pid\":-1}", "bad_request"},
            {"{\"op\":\"hello\",\"version\":1,\"pid\":1.5}", "bad_request"},
            {"{\"op\":\"hello\",\"version\":null,\"pid\":1}", "bad_request"},
            {"{\"op\":\"trim\",\"wait_ms\":-1}", "bad_request"},
            {"{\"op\":\"trim\",\"wait_ms\":2.5}", "bad_request"},
            {"{\"op\":\"trim\",\"wait_ms\":1e300}", "bad_request"},
            {"{\"op\":\"config.set\",\"key\":\"bundle_objects\"}", "bad_request"},
            {"{\"op\":\"config.set\",\"key\":7,\"value\":7}", "bad_request"},
            {"{\"op\":\"config.set\",\"value\":7}", "bad_request"},
            {"{\"op\":\"config.set\",\"key\":\"bundle_objects\",\"value\":\"x\"}", "bad_value"},
            {"{\"op\":\"config.set\",\"key\":\"nope\",\"value\":1}", "unknown_key"},
            {"{\"op\":\"segment\",\"index\":1}", "not_attached"},
            /* Not errors: unknown fields are ignored, CRLF is fine, op is
             * taken from the first "op". */
            {"{\"op\":\"stats\",\"extra\":{\"a\":[1,2,3]}}", NULL},
            {"{\"op\":\"stats\"}\r", NULL},
            {" \t{\"op\":\"stats\"}  ", NULL},
    };
    struct daemon_fixture f;
    int fd;

    fixture_start(&f, NULL);
    fd = daemon_connect(f.socket_path);
    ck_assert_int_ge(fd, 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char line[256];
        size_t len = strlen(cases[i].line);

        memcpy(line, cases[i].line, len);
        line[len++] = '\n';
        expect_reply(raw_call(fd, line, len), cases[i].code);
        good_request_works(f.socket_path, fd);
    }
    (void) close(fd);
    fixture_stop(&f);
}
END_TEST

/* Nesting: 16 levels parse, 17 do not (and never reach cJSON's 1000). */
START_TEST(input_nesting)
{
    struct daemon_fixture f;
    char line[100100];
    size_t o = 0;
    int fd;

    fixture_start(&f, NULL);
    fd = daemon_connect(f.socket_path);
    o = (size_t) sprintf(line, "{\"op\":\"stats\",\"x\":");
    for (int i = 0; i < 15; i++)
        line[o++] = '[';
    for (int i = 0; i < 15; i++)
        line[o++] = ']';
    line[o++] = '}';
    line[o++] = '\n';
    expect_reply(raw_call(fd, line, o), NULL);
    o = (size_t) sprintf(line, "{\"op\":\"stats\",\"x\":");
    for (int i = 0; i < 16; i++)
        line[o++] = '[';
    for (int i = 0; i < 16; i++)
        line[o++] = ']';
    line[o++] = '}';
    line[o++] = '\n';
    expect_reply(raw_call(fd, line, o), "bad_json");
    /* Deep enough to hurt a recursive parser, within one line. */
    o = 0;
    for (int i = 0; i < 50000; i++)
        line[o++] = '[';
    line[o++] = '\n';
    expect_reply(raw_call(fd, line, o), "bad_json");
    good_request_works(f.socket_path, fd);
    (void) close(fd);
    fixture_stop(&f);
}
END_TEST

START_TEST(input_long_lines)
{
    struct daemon_fixture f;
    size_t big = 1u << 20;
    char *line = malloc(big + 1);
    char *reply = NULL;
    cJSON *r;
    int fd;

    fixture_start(&f, NULL);
    /* Exactly 65,536 bytes with the '\n': allowed. */
    fd = daemon_connect(f.socket_path);
    memset(line, ' ', 65536);
    memcpy(line, "{\"op\":\"stats\"}", 14);
    line[65535] = '\n';
    expect_reply(raw_call(fd, line, 65536), NULL);
    /* One more byte: refused, then closed. */
    memset(line, ' ', 65537);
    memcpy(line, "{\"op\":\"stats\"}", 14);
    line[65536] = '\n';
    r = raw_call(fd, line, 65537);
    expect_reply(r, "line_too_long");
    ck_assert(daemon_wait_eof(fd, daemon_test_ms(2000)));
    (void) close(fd);
    good_request_works(f.socket_path, -1);

    /* A 1 MiB line: the daemon answers after 64 KiB and closes while we
     * are still sending; the rest of our send fails, the reply is there. */
    fd = daemon_connect(f.socket_path);
    memset(line, 'a', big);
    line[big] = '\n';
    (void) daemon_send(fd, line, big + 1); /* EPIPE/ECONNRESET expected */
    ck_assert_int_eq(daemon_recv(fd, &reply, NULL, NULL, daemon_test_ms(5000)), 0);
    r = cJSON_Parse(reply);
    free(reply);
    expect_reply(r, "line_too_long");
    ck_assert(daemon_wait_eof(fd, daemon_test_ms(2000)));
    (void) close(fd);
    good_request_works(f.socket_path, -1);
    ck_assert(daemon_log_wait(&f, "longer than 65536 bytes", 1000));
    free(line);
    fixture_stop(&f);
}
END_TEST

START_TEST(input_binary_garbage)
{
    struct daemon_fixture f;
    uint64_t seed = 0x9e3779b97f4a7c15u;
    char buf[4096];
    int fd;

    fixture_start(&f, NULL);
    fd = daemon_connect(f.socket_path);
    for (int round = 0; round < 20; round++) {
        size_t len = 1 + (size_t) (seed % (sizeof(buf) - 1));

        for (size_t i = 0; i < len; i++) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            buf[i] = (char) (seed >> 24);
            if (buf[i] == '\n')
                buf[i] = 0; /* NUL bytes included */
        }
        if (round % 2)
            buf[0] = '{'; /* looks like JSON for a moment */
        buf[len - 1] = '\n';
        expect_reply(raw_call(fd, buf, len), "bad_json");
    }
    good_request_works(f.socket_path, fd);
    (void) close(fd);
    fixture_stop(&f);
}
END_TEST

START_TEST(input_half_line)
{
    struct daemon_fixture f;
    struct timespec t0, t1;
    char *reply = NULL;
    double ms;
    cJSON *r;
    int fd;

    fixture_start(&f, "\"request_timeout_ms\": 300");
    /* Half a line, then hang up. */
    fd = daemon_connect(f.socket_path);
    ck_assert_int_eq(daemon_send(fd, "{\"op\":\"sta", 10), 0);
    (void) close(fd);
    good_request_works(f.socket_path, -1);
    /* Half a line after a good request on the same connection, then
     * silence: a timeout reply, then the daemon closes. */
    fd = daemon_connect(f.socket_path);
    expect_reply(daemon_call(fd, "{\"op\":\"stats\"}", NULL, NULL), NULL);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(daemon_send(fd, "{\"op\":\"sta", 10), 0);
    ck_assert_int_eq(daemon_recv(fd, &reply, NULL, NULL, daemon_test_ms(5000)), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r = cJSON_Parse(reply);
    free(reply);
    expect_reply(r, "timeout");
    ms = (double) (t1.tv_sec - t0.tv_sec) * 1e3 + (double) (t1.tv_nsec - t0.tv_nsec) / 1e6;
    ck_assert_msg(ms >= 250, "timed out after %.0f ms, before request_timeout_ms", ms);
    ck_assert(daemon_wait_eof(fd, daemon_test_ms(2000)));
    (void) close(fd);
    /* Trickling bytes does not extend the deadline. */
    fd = daemon_connect(f.socket_path);
    for (int i = 0; i < 10; i++) {
        (void) daemon_send(fd, " ", 1);
        (void) usleep(50000);
    }
    ck_assert_int_eq(daemon_recv(fd, &reply, NULL, NULL, daemon_test_ms(5000)), 0);
    r = cJSON_Parse(reply);
    free(reply);
    expect_reply(r, "timeout");
    (void) close(fd);
    good_request_works(f.socket_path, -1);
    ck_assert(daemon_log_wait(&f, "request not completed within 300 ms", 1000));
    fixture_stop(&f);
}
END_TEST

START_TEST(input_idle_timeout)
{
    struct daemon_fixture f;
    char *reply = NULL;
    int fd, fd2, fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0;
    cJSON *r;

    fixture_start(&f, "\"idle_timeout_ms\": 300");
    fd = daemon_connect(f.socket_path);
    fd2 = daemon_connect(f.socket_path);
    r = fixture_hello(fd2, fds, &nfds);
    expect_reply(r, NULL);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
    ck_assert_int_eq(daemon_recv(fd, &reply, NULL, NULL, daemon_test_ms(5000)), 0);
    r = cJSON_Parse(reply);
    free(reply);
    expect_reply(r, "timeout");
    ck_assert(daemon_wait_eof(fd, daemon_test_ms(2000)));
    (void) close(fd);
    /* An attached connection has no idle limit. */
    (void) usleep(600000);
    expect_reply(daemon_call(fd2, "{\"op\":\"stats\"}", NULL, NULL), NULL);
    (void) close(fd2);
    fixture_stop(&f);
}
END_TEST

/* A peer that sends and never reads: the daemon stops reading it (one
 * request at a time), and closes it once a reply has gone unread for
 * request_timeout_ms. Its memory use stays one reply. */
START_TEST(input_unread_replies)
{
    struct daemon_fixture f;
    char buf[65536];
    int fd, sent = 0;
    bool eof = false;

    fixture_start(&f, "\"request_timeout_ms\": 300");
    fd = daemon_connect(f.socket_path);
    for (int i = 0; i < 100000; i++) {
        static const char req[] = "{\"op\":\"stats\"}\n";

        if (send(fd, req, sizeof(req) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            break;
        sent++;
    }
    ck_assert_int_gt(sent, 10);
    ck_assert(daemon_log_wait(&f, "a reply went unread for 300 ms", daemon_test_ms(3000)));
    /* What was sent can still be read, then the end. */
    for (int i = 0; i < 10000 && !eof; i++) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);

        eof = n <= 0;
    }
    ck_assert(eof);
    (void) close(fd);
    good_request_works(f.socket_path, -1);
    fixture_stop(&f);
}
END_TEST

START_TEST(input_max_clients)
{
    enum { MAX = 8, EXTRA = 10 };
    struct daemon_fixture f;
    int fds[MAX + EXTRA], refused = 0, served = 0;

    fixture_start(&f, "\"max_clients\": 8");
    for (int i = 0; i < MAX + EXTRA; i++) {
        fds[i] = daemon_connect(f.socket_path);
        ck_assert_int_ge(fds[i], 0);
    }
    /* The refused ones are answered at once and closed. */
    for (int i = 0; i < MAX + EXTRA; i++) {
        char *reply = NULL;

        if (daemon_recv(fds[i], &reply, NULL, NULL, daemon_test_ms(300)) == 0) {
            cJSON *r = cJSON_Parse(reply);

            free(reply);
            expect_reply(r, "too_many_clients");
            ck_assert(daemon_wait_eof(fds[i], daemon_test_ms(2000)));
            (void) close(fds[i]);
            fds[i] = -1;
            refused++;
        }
    }
    ck_assert_int_eq(refused, EXTRA);
    for (int i = 0; i < MAX + EXTRA; i++) {
        if (fds[i] < 0)
            continue;
        expect_reply(daemon_call(fds[i], "{\"op\":\"stats\"}", NULL, NULL), NULL);
        served++;
    }
    ck_assert_int_eq(served, MAX);
    ck_assert(daemon_log_wait(&f, "too many clients", 1000));
    /* Once they go, new connections are served again. */
    for (int i = 0; i < MAX + EXTRA; i++)
        if (fds[i] >= 0)
            (void) close(fds[i]);
    for (int tries = 0;; tries++) {
        cJSON *r = daemon_call_once(f.socket_path, "{\"op\":\"stats\"}");
        bool ok = r && reply_is_ok(r);

        cJSON_Delete(r);
        if (ok)
            break;
        ck_assert_int_lt(tries, 100);
        (void) usleep(10000);
    }
    fixture_stop(&f);
}
END_TEST

/* In a child as nobody (uid and gid 65534, supplementary groups `groups`):
 * sends each request and checks its reply code; exits 0 if all matched. */
static void as_nobody(const char *sock,
                      const gid_t *groups,
                      int ngroups,
                      const char *const *requests,
                      const char *const *codes,
                      bool expect_close)
{
    pid_t pid = fork();
    int st;

    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd, bad = 0;

        if (setgroups((size_t) ngroups, groups) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
            _exit(90);
        fd = daemon_connect(sock);
        if (fd < 0)
            _exit(91);
        for (int i = 0; requests[i]; i++) {
            cJSON *r = daemon_call(fd, requests[i], NULL, NULL);
            const char *code = r ? (reply_is_ok(r) ? "ok" : reply_error_code(r)) : "none";

            if (!code || strcmp(code, codes[i]) != 0) {
                fprintf(stderr, "as nobody: %s -> %s, expected %s\n", requests[i], code, codes[i]);
                bad++;
            }
            cJSON_Delete(r);
        }
        if (expect_close && !daemon_wait_eof(fd, daemon_test_ms(2000)))
            bad++;
        _exit(bad ? 92 : 0);
    }
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child as nobody failed: status %d", st);
}

static void set_config(const char *sock, const char *key, const char *value)
{
    char line[256];
    cJSON *r;

    (void) snprintf(line, sizeof(line), "{\"op\":\"config.set\",\"key\":\"%s\",\"value\":%s}", key,
                    value);
    r = daemon_call_once(sock, line);
    ck_assert_msg(r && reply_is_ok(r), "config.set %s %s failed", key, value);
    cJSON_Delete(r);
}

START_TEST(input_permission)
{
    static const char *const stats[] = {"{\"op\":\"stats\"}", NULL};
    static const char *const denied[] = {"permission_denied"};
    static const char *const ok[] = {"ok"};
    static const char *const admin[] = {
            "{\"op\":\"config.set\",\"key\":\"max_clients\",\"value\":9}", "{\"op\":\"stats\"}",
            NULL};
    static const char *const admin_codes[] = {"permission_denied", "ok"};
    struct daemon_fixture f;
    gid_t extra = 12345;
    cJSON *r;

    fixture_start(&f, NULL);
    /* Let nobody reach the socket at all; the daemon is what says no. */
    ck_assert_int_eq(chmod(f.dir, 0755), 0);
    ck_assert_int_eq(chmod(f.socket_path, 0666), 0);
    as_nobody(f.socket_path, NULL, 0, stats, denied, true);
    ck_assert(daemon_log_wait(&f, "refusing connection", 1000));
    good_request_works(f.socket_path, -1);
    /* Allowed by uid. */
    set_config(f.socket_path, "allowed_uids", "[65534]");
    as_nobody(f.socket_path, NULL, 0, stats, ok, false);
    /* Not an administrator: config.set is refused, the connection stays. */
    as_nobody(f.socket_path, NULL, 0, admin, admin_codes, false);
    r = daemon_call_once(f.socket_path, "{\"op\":\"config.get\",\"key\":\"max_clients\"}");
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "config"),
                                                      "max_clients")
                             ->valueint,
                     64);
    cJSON_Delete(r);
    /* Allowed by primary gid, then by a supplementary group only. */
    set_config(f.socket_path, "allowed_uids", "[]");
    as_nobody(f.socket_path, NULL, 0, stats, denied, true);
    set_config(f.socket_path, "allowed_gids", "[65534]");
    as_nobody(f.socket_path, NULL, 0, stats, ok, false);
    set_config(f.socket_path, "allowed_gids", "[12345]");
    as_nobody(f.socket_path, NULL, 0, stats, denied, true);
    as_nobody(f.socket_path, &extra, 1, stats, ok, false);
    fixture_stop(&f);
}
END_TEST

Suite *daemon_input_suite(void)
{
    Suite *s = suite_create("daemon_input");
    TCase *tc = tcase_create("input");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, input_malformed);
    tcase_add_test(tc, input_nesting);
    tcase_add_test(tc, input_long_lines);
    tcase_add_test(tc, input_binary_garbage);
    tcase_add_test(tc, input_half_line);
    tcase_add_test(tc, input_idle_timeout);
    tcase_add_test(tc, input_unread_replies);
    suite_add_tcase(s, tc);
    tc = tcase_create("peers");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, input_max_clients);
    tcase_add_test(tc, input_permission);
    suite_add_tcase(s, tc);
    return s;
}
