/* shmheapctl against a real shmheapd: every command, its output (key words
 * in the tables, --json parsed with cJSON, the Prometheus exposition), and
 * the exit statuses: 0 success, 1 the daemon said no, 2 usage, 3 cannot
 * connect. The program is $SHMHEAPCTL, else $SHMHEAP_BUILD_DIR/shmheapctl,
 * else build/shmheapctl. */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shmheap.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/program.h"
#include "tests/service/suites.h"

static struct daemon_fixture fx;

/* Runs shmheapctl with the arguments (NULL-terminated). */
static struct program_run *ctl(const char *arg, ...)
{
    static struct program_run r;
    const char *argv[32];
    int argc = 0;
    va_list ap;

    argv[argc++] = "shmheapctl";
    va_start(ap, arg);
    for (const char *a = arg; a && argc < 31; a = va_arg(ap, const char *))
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    program_run(program_path("shmheapctl", "SHMHEAPCTL"), argv, &r);
    return &r;
}

#define S fx.socket_path

static void expect(const struct program_run *r, int status, const char *what)
{
    ck_assert_msg(r->status == status, "%s: exit %d, expected %d\nstdout: %s\nstderr: %s", what,
                  r->status, status, r->out, r->err);
}

static void has(const char *text, const char *needle)
{
    ck_assert_msg(strstr(text, needle) != NULL, "'%s' not in:\n%s", needle, text);
}

/* The --json output: exactly one line, a JSON object with "ok". */
static cJSON *json_line(const struct program_run *r)
{
    const char *nl = strchr(r->out, '\n');
    cJSON *j;

    ck_assert_msg(nl && nl[1] == 0, "--json printed more or less than one line:\n%s", r->out);
    j = cJSON_ParseWithLength(r->out, (size_t) (nl - r->out));
    ck_assert_msg(cJSON_IsObject(j), "--json printed no JSON object:\n%s", r->out);
    return j;
}

static void start(void)
{
    fixture_start(&fx, NULL);
}

static void finish(void)
{
    struct program_run *r = ctl("--socket", S, "verify", NULL);

    expect(r, 0, "verify");
    fixture_stop(&fx);
}

START_TEST(ctl_stats)
{
    struct program_run *r;
    shmheap_t *h;
    void *p;
    cJSON *j, *st;

    start();
    h = fixture_attach(&fx);
    p = shmheap_malloc(h, 1000);
    ck_assert_ptr_nonnull(p);

    r = ctl("--socket", S, "stats", NULL);
    expect(r, 0, "stats");
    has(r->out, "bytes in use");
    has(r->out, "bytes committed");
    has(r->out, "size classes");
    has(r->out, "segments");
    has(r->out, "1024"); /* the 1000-byte object's class */

    r = ctl("stats", "--json", "--socket", S, NULL); /* options after the command too */
    expect(r, 0, "stats --json");
    j = json_line(r);
    ck_assert(reply_is_ok(j));
    st = cJSON_GetObjectItemCaseSensitive(j, "stats");
    ck_assert(cJSON_IsObject(st));
    ck_assert(cJSON_GetObjectItemCaseSensitive(st, "bytes_in_use")->valuedouble >= 1000);
    ck_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(st, "classes")));
    ck_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(st, "segments")));
    cJSON_Delete(j);

    r = ctl("--socket", S, "stats", "--prometheus", NULL);
    expect(r, 0, "stats --prometheus");
    has(r->out, "# TYPE shmheap_");
    has(r->out, "# HELP shmheap_");
    has(r->out, "_bytes ");
    has(r->out, "_total ");
    has(r->out, "shmheap_in_use_bytes ");
    has(r->out, "shmheap_allocations_total ");
    has(r->out, "{size=\"1024\"}");
    has(r->out, "shmheap_segment_size_bytes{index=\"1\",page_size=\"4K\"}");
    /* Every sample line names a metric declared by a TYPE line before it. */
    for (char *line = strtok(r->out, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#')
            continue;
        ck_assert_msg(strncmp(line, "shmheap_", 8) == 0, "bad sample line: %s", line);
    }
    shmheap_free(h, p);
    shmheap_detach(h);
    finish();
}
END_TEST

START_TEST(ctl_trim_clients_segments_verify)
{
    struct program_run *r;
    char pid[32];
    shmheap_t *h;
    cJSON *j;

    start();
    h = fixture_attach(&fx);
    shmheap_free(h, shmheap_malloc(h, 64));
    snprintf(pid, sizeof(pid), "%d", (int) getpid());

    r = ctl("--socket", S, "trim", NULL);
    expect(r, 0, "trim");
    has(r->out, "trim generation 1");
    r = ctl("--socket", S, "trim", "--wait", "10", NULL);
    expect(r, 0, "trim --wait 10");
    has(r->out, "trim generation 2");
    r = ctl("--socket", S, "trim", "--wait=0", "--json", NULL);
    expect(r, 0, "trim --json");
    j = json_line(r);
    ck_assert(reply_is_ok(j));
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(j, "trim_gen")->valueint, 3);
    cJSON_Delete(j);

    r = ctl("--socket", S, "clients", NULL);
    expect(r, 0, "clients");
    has(r->out, "PID");
    has(r->out, pid);
    r = ctl("--socket", S, "clients", "--json", NULL);
    expect(r, 0, "clients --json");
    j = json_line(r);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "clients")), 1);
    cJSON_Delete(j);

    r = ctl("--socket", S, "segments", NULL);
    expect(r, 0, "segments");
    has(r->out, "INDEX");
    has(r->out, "64.0 MiB");
    has(r->out, "4K");

    r = ctl("--socket", S, "verify", NULL);
    expect(r, 0, "verify");
    has(r->out, "consistent");
    r = ctl("--socket", S, "verify", "--json", NULL);
    expect(r, 0, "verify --json");
    j = json_line(r);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "consistent")));
    cJSON_Delete(j);
    shmheap_detach(h);
    finish();
}
END_TEST

START_TEST(ctl_config)
{
    struct program_run *r;
    cJSON *j, *cfg;

    start();
    r = ctl("--socket", S, "config", "get", NULL);
    expect(r, 0, "config get");
    has(r->out, "thread_cache_bytes");
    has(r->out, "bundle_objects");
    has(r->out, "huge_pages");
    r = ctl("--socket", S, "config", "get", "segment_size", "--json", NULL);
    expect(r, 0, "config get segment_size --json");
    j = json_line(r);
    cfg = cJSON_GetObjectItemCaseSensitive(j, "config");
    ck_assert_double_eq(cJSON_GetObjectItemCaseSensitive(cfg, "segment_size")->valuedouble,
                        64.0 * 1024 * 1024);
    cJSON_Delete(j);

    /* A number, a bare string (not JSON) and a JSON array. */
    r = ctl("--socket", S, "config", "set", "bundle_objects", "32", NULL);
    expect(r, 0, "config set bundle_objects 32");
    has(r->out, "bundle_objects");
    has(r->out, "32");
    r = ctl("--socket", S, "config", "get", "bundle_objects", NULL);
    expect(r, 0, "config get bundle_objects");
    has(r->out, "32");
    r = ctl("--socket", S, "config", "set", "huge_pages", "2M", NULL);
    expect(r, 0, "config set huge_pages 2M");
    has(r->out, "2M");
    r = ctl("--socket", S, "config", "set", "huge_pages", "\"off\"", NULL);
    expect(r, 0, "config set huge_pages \"off\"");
    r = ctl("--socket", S, "config", "set", "allowed_uids", "[1000, 1001]", NULL);
    expect(r, 0, "config set allowed_uids [1000, 1001]");
    has(r->out, "1001");
    r = ctl("--socket", S, "config", "set", "thread_cache_bytes", "256K", "--json", NULL);
    expect(r, 0, "config set thread_cache_bytes 256K");
    j = json_line(r);
    cfg = cJSON_GetObjectItemCaseSensitive(j, "config");
    ck_assert_double_eq(cJSON_GetObjectItemCaseSensitive(cfg, "thread_cache_bytes")->valuedouble,
                        256.0 * 1024);
    cJSON_Delete(j);

    /* Refusals: exit 1, the daemon's message (naming the bounds) on stderr. */
    r = ctl("--socket", S, "config", "set", "bundle_objects", "100000", NULL);
    expect(r, 1, "config set bundle_objects 100000");
    has(r->err, "2");
    has(r->err, "4096");
    ck_assert_str_eq(r->out, "");
    r = ctl("--socket", S, "config", "set", "no_such_key", "1", NULL);
    expect(r, 1, "config set no_such_key 1");
    has(r->err, "no_such_key");
    r = ctl("--socket", S, "config", "get", "no_such_key", "--json", NULL);
    expect(r, 1, "config get no_such_key --json");
    j = json_line(r); /* the refusal is printed as is too */
    ck_assert(!reply_is_ok(j));
    cJSON_Delete(j);
    r = ctl("--socket", S, "config", "set", "bundle_objects", "-5", NULL);
    expect(r, 1, "config set bundle_objects -5");
    r = ctl("--socket", S, "config", "get", "bundle_objects", NULL);
    has(r->out, "32"); /* unchanged */
    finish();
}
END_TEST

START_TEST(ctl_usage)
{
    static const char *const bad[][5] = {
            {NULL},
            {"frobnicate", NULL},
            {"stats", "extra", NULL},
            {"stats", "--json", "--prometheus", NULL},
            {"trim", "--prometheus", NULL},
            {"trim", "--wait", NULL},
            {"trim", "--wait", "soon", NULL},
            {"trim", "--wait", "60001", NULL},
            {"verify", "--wait", "5", NULL},
            {"config", NULL},
            {"config", "put", "a", "b", NULL},
            {"config", "set", "bundle_objects", NULL},
            {"config", "get", "a", "b", NULL},
            {"--socket", NULL},
            {"--bogus", "stats", NULL},
    };
    struct program_run *r;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = ctl(bad[i][0], bad[i][1], bad[i][2], bad[i][3], NULL);
        ck_assert_msg(r->status == 2, "case %zu (%s %s ...): exit %d, expected 2; stderr: %s", i,
                      bad[i][0] ? bad[i][0] : "", bad[i][1] ? bad[i][1] : "", r->status, r->err);
        has(r->err, "Usage: shmheapctl");
        ck_assert_str_eq(r->out, "");
    }
    r = ctl("--help", NULL);
    expect(r, 0, "--help");
    has(r->out, "Usage: shmheapctl");
    has(r->out, "--prometheus");
    r = ctl("stats", "-h", NULL);
    expect(r, 0, "stats -h");
    r = ctl("--version", NULL);
    expect(r, 0, "--version");
    has(r->out, "shmheapctl " SHMHEAP_VERSION);
}
END_TEST

START_TEST(ctl_no_daemon)
{
    char path[128];
    struct program_run *r;

    snprintf(path, sizeof(path), "/tmp/shmheapctl-test-nobody-%d.sock", (int) getpid());
    r = ctl("--socket", path, "stats", NULL);
    expect(r, 3, "stats without a daemon");
    has(r->err, path);
    has(r->err, "cannot connect");
    ck_assert_str_eq(r->out, "");
    r = ctl("--socket", path, "config", "set", "bundle_objects", "8", NULL);
    expect(r, 3, "config set without a daemon");
    /* $SHMHEAP_SOCKET is the default. */
    setenv("SHMHEAP_SOCKET", path, 1);
    r = ctl("verify", NULL);
    expect(r, 3, "verify without a daemon");
    has(r->err, path);
    unsetenv("SHMHEAP_SOCKET");
}
END_TEST

Suite *ctl_suite(void)
{
    Suite *s = suite_create("ctl");
    TCase *tc = tcase_create("commands");

    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, ctl_stats);
    tcase_add_test(tc, ctl_trim_clients_segments_verify);
    tcase_add_test(tc, ctl_config);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, ctl_usage);
    tcase_add_test(tc, ctl_no_daemon);
    suite_add_tcase(s, tc);
    return s;
}
