/* The daemon's config: config.set/get of every key, what reaches the
 * control segment, refusals, SIGHUP reload, broken files, periodic trim. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config/config.h"
#include "shm/atomic.h"
#include "shm/layout.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

/* An in-bounds value for every key, unlike its default. */
static const struct {
    const char *key, *value;
} new_values[] = {
        {"segment_size", "134217728"},   {"huge_pages", "\"2M\""},
        {"thread_cache_bytes", "65536"}, {"bundle_objects", "32"},
        {"recycler_cap_bundles", "8"},   {"retain_empty_blocks", "0"},
        {"trim_interval_ms", "60000"},   {"max_clients", "100"},
        {"max_segments", "20"},          {"allowed_uids", "[1000,1002]"},
        {"allowed_gids", "[1001]"},      {"log_level", "\"debug\""},
        {"request_timeout_ms", "5000"},  {"idle_timeout_ms", "0"},
        {"max_client_bytes", "268435456"}, {"max_uid_bytes", "1073741824"},
        {"metrics_listen", "\"\""}, /* the default: check_metrics.c moves the endpoint */
        {"reconnect_wait_ms", "2000"},
        {"state_dir", "\"/dev/shm/shmheap-test-unused\""},
        {"decay_ms", "0"},
        {"decay_retain_percent", "50"},
        {"decay_release_rate", "1048576"},
        {"decay_pressure_percent", "0"},
        {"max_connections_per_uid", "32"},
};

struct ctl_map {
    struct ctl_header *c;
    size_t size;
    int sock;
};

/* Attaches by hello and maps the control segment read-only. */
static void map_ctl(const char *sock, struct ctl_map *m)
{
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0;
    struct stat st;
    cJSON *r;

    m->sock = daemon_connect(sock);
    ck_assert_int_ge(m->sock, 0);
    r = fixture_hello(m->sock, fds, &nfds);
    ck_assert(r && reply_is_ok(r));
    cJSON_Delete(r);
    ck_assert_int_ge(nfds, 1);
    ck_assert_int_eq(fstat(fds[0], &st), 0);
    m->size = (size_t) st.st_size;
    m->c = mmap(NULL, m->size, PROT_READ, MAP_SHARED, fds[0], 0);
    ck_assert_ptr_ne(m->c, MAP_FAILED);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
}

static void unmap_ctl(struct ctl_map *m)
{
    (void) munmap(m->c, m->size);
    (void) close(m->sock);
}

/* The control segment's copy of a heap key, or -1 for a daemon-only key. */
static double ctl_value(const struct ctl_header *c, const char *key)
{
    const struct shm_config *s = &c->config;

    if (!strcmp(key, "segment_size"))
        return (double) load_relaxed(&s->segment_size);
    if (!strcmp(key, "huge_pages"))
        return load_relaxed(&s->huge_pages);
    if (!strcmp(key, "thread_cache_bytes"))
        return load_relaxed(&s->thread_cache_bytes);
    if (!strcmp(key, "bundle_objects"))
        return load_relaxed(&s->bundle_objects);
    if (!strcmp(key, "recycler_cap_bundles"))
        return load_relaxed(&s->recycler_cap_bundles);
    if (!strcmp(key, "retain_empty_blocks"))
        return load_relaxed(&s->retain_empty_blocks);
    if (!strcmp(key, "trim_interval_ms"))
        return load_relaxed(&s->trim_interval_ms);
    if (!strcmp(key, "max_clients"))
        return load_relaxed(&s->max_clients);
    if (!strcmp(key, "max_segments"))
        return load_relaxed(&s->max_segments);
    if (!strcmp(key, "max_client_bytes"))
        return (double) load_relaxed(&s->max_client_bytes);
    if (!strcmp(key, "max_uid_bytes"))
        return (double) load_relaxed(&s->max_uid_bytes);
    if (!strcmp(key, "reconnect_wait_ms"))
        return load_relaxed(&s->reconnect_wait_ms);
    return -1;
}

static cJSON *get_key(const char *sock, const char *key)
{
    char line[128];
    cJSON *r, *v;

    (void) snprintf(line, sizeof(line), "{\"op\":\"config.get\",\"key\":\"%s\"}", key);
    r = daemon_call_once(sock, line);
    ck_assert(r && reply_is_ok(r));
    v = cJSON_DetachItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "config"), key);
    cJSON_Delete(r);
    ck_assert_ptr_nonnull(v);
    return v;
}

static cJSON *set_key(int fd, const char *key, const char *value)
{
    return daemon_callf(fd, "{\"op\":\"config.set\",\"key\":\"%s\",\"value\":%s}", key, value);
}

START_TEST(dconfig_set_every_key)
{
    struct daemon_fixture f;
    struct ctl_map m;
    int fd;

    fixture_start(&f, NULL);
    map_ctl(f.socket_path, &m);
    fd = daemon_connect(f.socket_path);
    ck_assert_uint_eq(sizeof(new_values) / sizeof(new_values[0]), config_key_count());
    for (size_t i = 0; i < sizeof(new_values) / sizeof(new_values[0]); i++) {
        const char *key = new_values[i].key;
        cJSON *want = cJSON_Parse(new_values[i].value), *r, *got;
        uint64_t gen = load_acquire(&m.c->config_gen);
        double in_ctl;

        ck_assert_ptr_nonnull(config_key_find(key));
        r = set_key(fd, key, new_values[i].value);
        ck_assert_msg(r && reply_is_ok(r), "config.set %s: %s", key, reply_error_message(r));
        /* The reply holds the stored value, and only it. */
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "config")), 1);
        ck_assert(cJSON_Compare(cJSON_GetObjectItemCaseSensitive(
                                        cJSON_GetObjectItemCaseSensitive(r, "config"), key),
                                want, true));
        cJSON_Delete(r);
        got = get_key(f.socket_path, key);
        ck_assert_msg(cJSON_Compare(got, want, true), "config.get %s disagrees", key);
        cJSON_Delete(got);
        in_ctl = ctl_value(m.c, key);
        if (in_ctl >= 0) {
            double expect = cJSON_IsString(want) ? SHM_PAGES_2M : want->valuedouble;

            ck_assert_msg(in_ctl == expect, "%s: control segment has %.0f, want %.0f", key, in_ctl,
                          expect);
            ck_assert_uint_gt(load_acquire(&m.c->config_gen), gen);
        }
        cJSON_Delete(want);
    }
    ck_assert(daemon_log_wait(&f, "config: bundle_objects changed from 64 to 32", 1000));
    (void) close(fd);
    unmap_ctl(&m);
    fixture_stop(&f);
}
END_TEST

START_TEST(dconfig_set_refused)
{
    static const struct {
        const char *key, *value, *code, *want;
    } cases[] = {
            {"bundle_objects", "9000", "bad_value", "between 2 and 4096, got 9000"},
            {"bundle_objects", "1", "bad_value", "between 2 and 4096, got 1"},
            {"bundle_objects", "\"many\"", "bad_value", "a whole number"},
            {"max_segments", "32", "bad_value", "between 1 and 31"},
            {"max_segments", "0", "bad_value", "between 1 and 31"},
            {"segment_size", "1048576", "bad_value", "67108864 (64M) and 17179869184 (16G)"},
            {"segment_size", "true", "bad_value", "a number of bytes"},
            {"trim_interval_ms", "5", "bad_value", "0 (off) or between 100 and 86400000"},
            {"huge_pages", "\"3M\"", "bad_value", "one of"},
            {"huge_pages", "\"1G\"", "bad_value", "multiple of 1073741824"}, /* segment 64M */
            {"allowed_uids", "\"1000\"", "bad_value", "an array of uids"},
            {"max_clients", "-3", "bad_value", "between 1 and 4096"},
            {"metrics_listen", "\"nowhere\"", "bad_value", "must be ADDR:PORT"},
            {"metrics_listen", "\"127.0.0.1:70000\"", "bad_value", "must be ADDR:PORT"},
            {"metrics_listen", "9464", "bad_value", "a string"},
            {"nope", "1", "unknown_key", "nope"},
    };
    struct daemon_fixture f;
    struct ctl_map m;
    uint64_t gen;
    cJSON *before, *after;
    int fd;

    fixture_start(&f, NULL);
    map_ctl(f.socket_path, &m);
    fd = daemon_connect(f.socket_path);
    before = daemon_call_once(f.socket_path, "{\"op\":\"config.get\"}");
    gen = load_acquire(&m.c->config_gen);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *r = set_key(fd, cases[i].key, cases[i].value);

        ck_assert_msg(r && !reply_is_ok(r) && !strcmp(reply_error_code(r), cases[i].code),
                      "%s = %s: expected %s", cases[i].key, cases[i].value, cases[i].code);
        ck_assert_msg(strstr(reply_error_message(r), cases[i].want), "%s = %s: \"%s\" lacks \"%s\"",
                      cases[i].key, cases[i].value, reply_error_message(r), cases[i].want);
        cJSON_Delete(r);
    }
    after = daemon_call_once(f.socket_path, "{\"op\":\"config.get\"}");
    ck_assert(cJSON_Compare(before, after, true));
    ck_assert_uint_eq(load_acquire(&m.c->config_gen), gen);
    ck_assert_uint_eq(m.c->config.bundle_objects, 64);
    cJSON_Delete(before);
    cJSON_Delete(after);
    (void) close(fd);
    unmap_ctl(&m);
    fixture_stop(&f);
}
END_TEST

static double get_num(const char *sock, const char *key)
{
    cJSON *v = get_key(sock, key);
    double d = v->valuedouble;

    cJSON_Delete(v);
    return d;
}

START_TEST(dconfig_sighup)
{
    struct daemon_fixture f;
    struct ctl_map m;
    int fd;
    cJSON *r;

    ck_assert_int_eq(daemon_start(&f, "{" FIXTURE_SMALL ",\n \"bundle_objects\": 32}"), 0);
    map_ctl(f.socket_path, &m);
    ck_assert_int_eq((int) get_num(f.socket_path, "bundle_objects"), 32);
    /* A runtime change, then a reload: the file wins (defaults + file). */
    fd = daemon_connect(f.socket_path);
    r = set_key(fd, "max_clients", "10");
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    (void) close(fd);
    ck_assert_int_eq(daemon_write_config(&f, "{" FIXTURE_SMALL ",\n \"bundle_objects\": 100,\n"
                                             " \"recycler_cap_bundles\": 7}\n"),
                     0);
    ck_assert_int_eq(kill(f.pid, SIGHUP), 0);
    ck_assert(daemon_log_wait(&f, "config reloaded from", daemon_test_ms(3000)));
    ck_assert_int_eq((int) get_num(f.socket_path, "bundle_objects"), 100);
    ck_assert_int_eq((int) get_num(f.socket_path, "recycler_cap_bundles"), 7);
    ck_assert_int_eq((int) get_num(f.socket_path, "max_clients"), 64);
    ck_assert_uint_eq(load_relaxed(&m.c->config.bundle_objects), 100);
    ck_assert_uint_eq(load_relaxed(&m.c->config.recycler_cap_bundles), 7);
    ck_assert(daemon_log_wait(&f, "bundle_objects changed from 32 to 100 (reload of", 0));
    /* A broken file keeps the running config and says why. */
    ck_assert_int_eq(daemon_write_config(&f, "{" FIXTURE_SMALL ",\n \"bundle_objects\": 100000}\n"),
                     0);
    ck_assert_int_eq(kill(f.pid, SIGHUP), 0);
    ck_assert(daemon_log_wait(&f, "config reload failed, keeping the running config", 3000));
    ck_assert(daemon_log_wait(&f, "shmheapd.json:2: bundle_objects must be between 2 and 4096", 0));
    ck_assert_int_eq((int) get_num(f.socket_path, "bundle_objects"), 100);
    ck_assert_int_eq(daemon_write_config(&f, "{ \"bundle_objects\": \n"), 0);
    ck_assert_int_eq(kill(f.pid, SIGHUP), 0);
    ck_assert(daemon_log_wait(&f, "end of file", 3000));
    ck_assert_int_eq((int) get_num(f.socket_path, "bundle_objects"), 100);
    unmap_ctl(&m);
    fixture_stop(&f);
}
END_TEST

START_TEST(dconfig_broken_at_start)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
            {"{\n  \"bundle_objects\": 12,\n  oops\n}\n", "shmheapd.json:3:"},
            {"{\n  \"max_clients\": 4,\n  \"bundle_objects\": 9000\n}\n",
             "shmheapd.json:3: bundle_objects must be between 2 and 4096, got 9000"},
            {"{\n  \"frobnicate\": true\n}\n", "shmheapd.json:2: unknown key \"frobnicate\""},
            {"{\"huge_pages\": 1}", "huge_pages must be one of"},
            {"[]", "must be a JSON object"},
    };
    static const char *const missing[] = {"--config", "/nonexistent/shmheapd.json", NULL};
    struct daemon_fixture f;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_int_eq(daemon_start(&f, cases[i].text), -ECHILD);
        ck_assert(WIFEXITED(f.status) && WEXITSTATUS(f.status) != 0);
        ck_assert_msg(daemon_log_wait(&f, cases[i].want, 0), "log lacks \"%s\"", cases[i].want);
        daemon_stop(&f);
    }
    ck_assert_int_eq(daemon_start_args(&f, NULL, missing), -ECHILD);
    ck_assert(WIFEXITED(f.status) && WEXITSTATUS(f.status) != 0);
    ck_assert(daemon_log_wait(&f, "/nonexistent/shmheapd.json: No such file", 0));
    daemon_stop(&f);
}
END_TEST

static uint64_t trims(const char *sock)
{
    cJSON *r = daemon_call_once(sock, "{\"op\":\"stats\"}");
    uint64_t n;

    ck_assert(r && reply_is_ok(r));
    n = (uint64_t) cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "stats"),
                                                    "trims")
                ->valuedouble;
    cJSON_Delete(r);
    return n;
}

START_TEST(dconfig_periodic_trim)
{
    struct daemon_fixture f;
    uint64_t n0, n1, n2;
    cJSON *r;
    int fd;

    fixture_start(&f, "\"trim_interval_ms\": 100");
    (void) usleep(700000);
    n0 = trims(f.socket_path);
    ck_assert_msg(n0 >= 3, "only %llu periodic trims in 700 ms", (unsigned long long) n0);
    fd = daemon_connect(f.socket_path);
    r = set_key(fd, "trim_interval_ms", "0");
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    n1 = trims(f.socket_path);
    (void) usleep(400000);
    ck_assert_uint_le(trims(f.socket_path), n1 + 1); /* one may have been under way */
    r = set_key(fd, "trim_interval_ms", "100");
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    (void) usleep(500000);
    n2 = trims(f.socket_path);
    ck_assert_uint_ge(n2, n1 + 3);
    (void) close(fd);
    fixture_stop(&f);
}
END_TEST

START_TEST(dconfig_log_level)
{
    struct daemon_fixture f;
    char *log;
    cJSON *r;
    int fd, n = 0;

    fixture_start(&f, "\"log_level\": \"debug\"");
    fd = daemon_connect(f.socket_path);
    ck_assert(daemon_log_wait(&f, "debug: connection 1 from pid", 1000));
    r = set_key(fd, "log_level", "\"warning\"");
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    r = daemon_call(fd, "{\"op\":\"trim\"}", NULL, NULL);
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    (void) close(fd);
    /* The trim logs before it replies: by now its line would be there. */
    log = daemon_log(&f);
    for (const char *p = log; (p = strstr(p, "trim (requested")); p++)
        n++;
    ck_assert_int_eq(n, 0);
    free(log);
    fixture_stop(&f);
}
END_TEST

Suite *daemon_config_suite(void)
{
    Suite *s = suite_create("daemon_config");
    TCase *tc = tcase_create("config");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, dconfig_set_every_key);
    tcase_add_test(tc, dconfig_set_refused);
    tcase_add_test(tc, dconfig_sighup);
    tcase_add_test(tc, dconfig_broken_at_start);
    tcase_add_test(tc, dconfig_periodic_trim);
    tcase_add_test(tc, dconfig_log_level);
    suite_add_tcase(s, tc);
    return s;
}
