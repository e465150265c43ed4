/* The table of tunables (config/): defaults, bounds, types, files. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "shm/heap.h"
#include "tests/service/suites.h"

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

/* What INTERFACE.md and the brief promise for each numeric key. */
static const struct {
    const char *name;
    uint64_t min, max;
    uint64_t min_nonzero; /* 0, or the lowest value above 0 (0 means "off") */
} bounds[] = {
        {"segment_size", 64 * MiB, 16 * GiB, 0},
        {"thread_cache_bytes", 16 * 1024, 64 * MiB, 0},
        {"bundle_objects", 2, 4096, 0},
        {"recycler_cap_bundles", 1, 65536, 0},
        {"retain_empty_blocks", 0, 1u << 20, 0},
        {"trim_interval_ms", 0, 86400000, 100},
        {"max_clients", 1, 4096, 0},
        {"max_connections_per_uid", 0, 4096, 0},
        {"max_segments", 1, 31, 0},
        {"request_timeout_ms", 100, 600000, 0},
        {"idle_timeout_ms", 0, 86400000, 100},
        {"reconnect_wait_ms", 0, 600000, 0},
        {"decay_ms", 0, 3600000, 10},
        {"decay_retain_percent", 0, 1000, 0},
        {"decay_release_rate", 64 * 1024, 1024 * GiB, 0},
        {"decay_pressure_percent", 0, 100, 0},
};

static int set_num(struct config *c, const char *key, double v, char *err)
{
    cJSON *j = cJSON_CreateNumber(v);
    int r = config_set_json(c, key, j, err, CONFIG_ERR_MAX);

    cJSON_Delete(j);
    return r;
}

static int set_text(struct config *c, const char *key, const char *json, char *err)
{
    cJSON *j = cJSON_Parse(json);
    int r;

    ck_assert_msg(j, "bad test JSON %s", json);
    r = config_set_json(c, key, j, err, CONFIG_ERR_MAX);
    cJSON_Delete(j);
    return r;
}

static double get_num(const struct config *c, const char *key)
{
    cJSON *j = config_get_json(c, config_key_find(key));
    double v;

    ck_assert(cJSON_IsNumber(j));
    v = j->valuedouble;
    cJSON_Delete(j);
    return v;
}

START_TEST(config_defaults_match_heap)
{
    struct shm_config h;
    struct config c;

    heap_config_default(&h);
    config_default(&c);
    ck_assert_uint_eq(c.shm.segment_size, h.segment_size);
    ck_assert_uint_eq(c.shm.huge_pages, h.huge_pages);
    ck_assert_uint_eq(c.shm.thread_cache_bytes, h.thread_cache_bytes);
    ck_assert_uint_eq(c.shm.bundle_objects, h.bundle_objects);
    ck_assert_uint_eq(c.shm.recycler_cap_bundles, h.recycler_cap_bundles);
    ck_assert_uint_eq(c.shm.retain_empty_blocks, h.retain_empty_blocks);
    ck_assert_uint_eq(c.shm.trim_interval_ms, h.trim_interval_ms);
    ck_assert_uint_eq(c.shm.max_clients, h.max_clients);
    ck_assert_uint_eq(c.shm.max_segments, h.max_segments);
    ck_assert_int_eq(memcmp(&c.shm, &h, sizeof(h)), 0);
    ck_assert_uint_eq(c.n_allowed_uids, 0);
    ck_assert_uint_eq(c.n_allowed_gids, 0);
    ck_assert_int_eq(config_check(&c, NULL, 0), 0);
}
END_TEST

START_TEST(config_every_key_listed)
{
    static const char *const required[] = {
            "segment_size",         "huge_pages",          "thread_cache_bytes", "bundle_objects",
            "recycler_cap_bundles", "retain_empty_blocks", "trim_interval_ms",   "max_clients",
            "max_segments",         "allowed_uids",        "allowed_gids",       "log_level",
    };

    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
        ck_assert_msg(config_key_find(required[i]), "key %s missing", required[i]);
    for (size_t i = 0; i < config_key_count(); i++) {
        const struct config_key *k = config_key_at(i);

        ck_assert_ptr_eq(config_key_find(config_key_name(k)), k);
        ck_assert(config_key_help(k) && strlen(config_key_help(k)) > 10);
    }
    ck_assert_ptr_null(config_key_at(config_key_count()));
    ck_assert_ptr_null(config_key_find("no_such_key"));
}
END_TEST

/* Each numeric key: its bounds are accepted and read back; one past
 * either is refused with a message naming both bounds, and nothing
 * changes. */
START_TEST(config_bounds)
{
    for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); i++) {
        const char *key = bounds[i].name;
        char err[CONFIG_ERR_MAX], want[128];
        struct config c, before;
        uint64_t lo = bounds[i].min_nonzero ? bounds[i].min_nonzero : bounds[i].min;

        config_default(&c);
        ck_assert_msg(set_num(&c, key, (double) bounds[i].min, err) == 0, "%s: %s", key, err);
        ck_assert_uint_eq((uint64_t) get_num(&c, key), bounds[i].min);
        ck_assert_msg(set_num(&c, key, (double) bounds[i].max, err) == 0, "%s: %s", key, err);
        ck_assert_uint_eq((uint64_t) get_num(&c, key), bounds[i].max);
        ck_assert_msg(set_num(&c, key, (double) lo, err) == 0, "%s: %s", key, err);

        before = c;
        ck_assert_int_eq(set_num(&c, key, (double) bounds[i].max + 65536, err), -ERANGE);
        ck_assert_int_eq(memcmp(&c, &before, sizeof(c)), 0);
        (void) snprintf(want, sizeof(want), "%" PRIu64, bounds[i].max);
        ck_assert_msg(strstr(err, key) && strstr(err, want) && strstr(err, "between"),
                      "message \"%s\" names neither key nor bounds", err);
        (void) snprintf(want, sizeof(want), "%" PRIu64, lo);
        ck_assert_msg(strstr(err, want), "message \"%s\" lacks the lower bound %s", err, want);
        if (lo > 1) {
            uint64_t below = bounds[i].min_nonzero ? 1 : lo - 1;

            ck_assert_int_eq(set_num(&c, key, (double) below, err), -ERANGE);
            ck_assert_int_eq(memcmp(&c, &before, sizeof(c)), 0);
        }
        ck_assert_int_eq(set_num(&c, key, -1, err), -ERANGE);
        ck_assert_int_eq(memcmp(&c, &before, sizeof(c)), 0);
        ck_assert_int_eq(set_num(&c, key, 1e30, err), -ERANGE);
        ck_assert_int_eq(memcmp(&c, &before, sizeof(c)), 0);
    }
}
END_TEST

START_TEST(config_bounds_message)
{
    char err[CONFIG_ERR_MAX];
    struct config c;

    config_default(&c);
    ck_assert_int_eq(set_num(&c, "bundle_objects", 9000, err), -ERANGE);
    ck_assert_str_eq(err, "bundle_objects must be between 2 and 4096, got 9000");
    ck_assert_int_eq(set_num(&c, "trim_interval_ms", 50, err), -ERANGE);
    ck_assert_str_eq(err, "trim_interval_ms must be 0 (off) or between 100 and 86400000, got 50");
    ck_assert_int_eq(set_num(&c, "segment_size", 1024, err), -ERANGE);
    ck_assert_msg(strstr(err, "67108864 (64M)") && strstr(err, "17179869184 (16G)"), "%s", err);
}
END_TEST

/* Every key refuses values of the wrong type, naming the type it wants. */
START_TEST(config_types)
{
    static const struct {
        const char *key, *json, *want;
    } cases[] = {
            {"bundle_objects", "\"64\"", "a whole number"},
            {"bundle_objects", "2.5", "a whole number"},
            {"bundle_objects", "true", "a whole number"},
            {"bundle_objects", "null", "a whole number"},
            {"bundle_objects", "[1]", "a whole number"},
            {"segment_size", "\"lots\"", "a number of bytes"},
            {"segment_size", "{}", "a number of bytes"},
            {"trim_interval_ms", "\"1s\"", "milliseconds"},
            {"huge_pages", "2", "one of \"auto\", \"1G\", \"2M\", \"off\""},
            {"huge_pages", "\"4M\"", "one of"},
            {"log_level", "\"loud\"", "one of"},
            {"allowed_uids", "1000", "an array of uids"},
            {"allowed_uids", "[\"root\"]", "an array of uids"},
            {"allowed_gids", "{\"a\":1}", "an array of gids"},
            {"allowed_gids", "[1.5]", "an array of gids"},
            {"state_dir", "\"relative/dir\"", "an absolute path"},
            {"state_dir", "7", "an absolute path"},
            {"state_dir", "\"/bad\\nname\"", "an absolute path"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[CONFIG_ERR_MAX];
        struct config c, before;

        config_default(&c);
        before = c;
        ck_assert_msg(set_text(&c, cases[i].key, cases[i].json, err) == -EINVAL, "%s = %s",
                      cases[i].key, cases[i].json);
        ck_assert_msg(strstr(err, cases[i].key) && strstr(err, cases[i].want),
                      "%s = %s: message \"%s\" lacks \"%s\"", cases[i].key, cases[i].json, err,
                      cases[i].want);
        ck_assert_int_eq(memcmp(&c, &before, sizeof(c)), 0);
    }
}
END_TEST

/* The path type: "" or an absolute path that fits; get, text and equality. */
START_TEST(config_path_values)
{
    char err[CONFIG_ERR_MAX], text[CONFIG_PATH_MAX + 8], longp[CONFIG_PATH_MAX + 16];
    const struct config_key *k = config_key_find("state_dir");
    struct config c, d;
    cJSON *j;

    ck_assert_ptr_nonnull(k);
    config_default(&c);
    ck_assert_str_eq(c.state_dir, "");
    ck_assert_int_eq(set_text(&c, "state_dir", "\"/dev/shm/heap\"", err), 0);
    ck_assert_str_eq(c.state_dir, "/dev/shm/heap");
    j = config_get_json(&c, k);
    ck_assert_str_eq(cJSON_GetStringValue(j), "/dev/shm/heap");
    cJSON_Delete(j);
    ck_assert_str_eq(config_format_text(&c, k, text, sizeof(text)), "\"/dev/shm/heap\"");
    config_default(&d);
    ck_assert(!config_key_equal(k, &c, &d));
    ck_assert_int_eq(set_text(&c, "state_dir", "\"\"", err), 0);
    ck_assert(config_key_equal(k, &c, &d));
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = 0;
    j = cJSON_CreateString(longp);
    ck_assert_int_eq(config_set_json(&c, "state_dir", j, err, sizeof(err)), -ERANGE);
    ck_assert_ptr_nonnull(strstr(err, "at most 255 bytes"));
    cJSON_Delete(j);
    ck_assert_str_eq(c.state_dir, "");
}
END_TEST

START_TEST(config_values)
{
    char err[CONFIG_ERR_MAX], buf[128];
    struct config c;
    cJSON *j;

    config_default(&c);
    /* Sizes as strings. */
    ck_assert_int_eq(set_text(&c, "segment_size", "\"256M\"", err), 0);
    ck_assert_uint_eq(c.shm.segment_size, 256 * MiB);
    ck_assert_int_eq(set_text(&c, "segment_size", "\"2GiB\"", err), 0);
    ck_assert_uint_eq(c.shm.segment_size, 2 * GiB);
    ck_assert_int_eq(set_text(&c, "thread_cache_bytes", "\"64K\"", err), 0);
    ck_assert_uint_eq(c.shm.thread_cache_bytes, 65536);
    /* Enums, any case in, canonical out. */
    ck_assert_int_eq(set_text(&c, "huge_pages", "\"2m\"", err), 0);
    ck_assert_uint_eq(c.shm.huge_pages, SHM_PAGES_2M);
    j = config_get_json(&c, config_key_find("huge_pages"));
    ck_assert_str_eq(j->valuestring, "2M");
    cJSON_Delete(j);
    ck_assert_int_eq(set_text(&c, "log_level", "\"debug\"", err), 0);
    ck_assert_uint_eq(c.log_level, 7);
    /* Id lists: duplicates dropped, order kept, empty allowed. */
    ck_assert_int_eq(set_text(&c, "allowed_uids", "[1000, 65534, 1000]", err), 0);
    ck_assert_uint_eq(c.n_allowed_uids, 2);
    ck_assert_uint_eq(c.allowed_uids[0], 1000);
    ck_assert_uint_eq(c.allowed_uids[1], 65534);
    ck_assert_str_eq(config_format_text(&c, config_key_find("allowed_uids"), buf, sizeof(buf)),
                     "[1000, 65534]");
    ck_assert_int_eq(set_text(&c, "allowed_uids", "[-1]", err), -ERANGE);
    ck_assert_int_eq(set_text(&c, "allowed_uids", "[4294967295]", err), -ERANGE);
    ck_assert_int_eq(set_text(&c, "allowed_gids", "[]", err), 0);
    ck_assert_uint_eq(c.n_allowed_gids, 0);
    /* 65 distinct ids are too many. */
    {
        char big[1024] = "[";

        for (int i = 0; i < 65; i++)
            (void) snprintf(big + strlen(big), sizeof(big) - strlen(big), "%s%d", i ? "," : "", i);
        strcat(big, "]");
        ck_assert_int_eq(set_text(&c, "allowed_gids", big, err), -ERANGE);
        ck_assert_ptr_nonnull(strstr(err, "64"));
    }
    /* Unknown keys. */
    ck_assert_int_eq(set_num(&c, "no_such_key", 1, err), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err, "no_such_key"));
}
END_TEST

START_TEST(config_cross_check)
{
    char err[CONFIG_ERR_MAX];
    struct config c, before;

    config_default(&c);
    /* Not a multiple of 64K. */
    ck_assert_int_eq(set_num(&c, "segment_size", 64 * MiB + 4096, err), -ERANGE);
    ck_assert_ptr_nonnull(strstr(err, "multiple of 65536"));
    /* A multiple of 64K but not of the 2M pages "auto" may use. */
    ck_assert_int_eq(set_num(&c, "segment_size", 65 * MiB, err), -ERANGE);
    ck_assert_ptr_nonnull(strstr(err, "2097152"));
    ck_assert_int_eq(set_text(&c, "huge_pages", "\"off\"", err), 0);
    ck_assert_int_eq(set_num(&c, "segment_size", 65 * MiB, err), 0);
    /* 1G pages need whole gigabytes; the old value stays. */
    before = c;
    ck_assert_int_eq(set_text(&c, "huge_pages", "\"1G\"", err), -ERANGE);
    ck_assert_ptr_nonnull(strstr(err, "huge_pages \"1G\""));
    ck_assert_int_eq(memcmp(&c, &before, sizeof(c)), 0);
    ck_assert_int_eq(set_num(&c, "segment_size", 2 * GiB, err), 0);
    ck_assert_int_eq(set_text(&c, "huge_pages", "\"1G\"", err), 0);
}
END_TEST

START_TEST(config_text_values)
{
    char err[CONFIG_ERR_MAX];
    struct config c;
    cJSON *v;

    config_default(&c);
    ck_assert_int_eq(
            config_value_from_text(config_key_find("segment_size"), "512M", &v, err, sizeof(err)),
            0);
    ck_assert_int_eq(config_set_json(&c, "segment_size", v, err, sizeof(err)), 0);
    cJSON_Delete(v);
    ck_assert_uint_eq(c.shm.segment_size, 512 * MiB);
    ck_assert_int_eq(
            config_value_from_text(config_key_find("bundle_objects"), "12", &v, err, sizeof(err)),
            0);
    ck_assert(cJSON_IsNumber(v) && v->valuedouble == 12);
    cJSON_Delete(v);
    ck_assert_int_eq(
            config_value_from_text(config_key_find("bundle_objects"), "12K", &v, err, sizeof(err)),
            -EINVAL);
    ck_assert_int_eq(
            config_value_from_text(config_key_find("huge_pages"), "off", &v, err, sizeof(err)), 0);
    ck_assert_str_eq(v->valuestring, "off");
    cJSON_Delete(v);
    ck_assert_int_eq(config_value_from_text(config_key_find("allowed_uids"), "1000, 1001", &v, err,
                                            sizeof(err)),
                     0);
    ck_assert_int_eq(cJSON_GetArraySize(v), 2);
    cJSON_Delete(v);
    ck_assert_int_eq(
            config_value_from_text(config_key_find("allowed_uids"), "", &v, err, sizeof(err)), 0);
    ck_assert_int_eq(cJSON_GetArraySize(v), 0);
    cJSON_Delete(v);
    ck_assert_int_eq(
            config_value_from_text(config_key_find("allowed_uids"), "bob", &v, err, sizeof(err)),
            -EINVAL);
}
END_TEST

static int parse(const char *text, struct config *c, char *err)
{
    return config_parse_text(text, strlen(text), "test.json", c, err, CONFIG_ERR_MAX);
}

START_TEST(config_file_text)
{
    char err[CONFIG_ERR_MAX];
    struct config c, def;

    config_default(&def);
    ck_assert_int_eq(parse("{}", &c, err), 0);
    ck_assert_int_eq(memcmp(&c, &def, sizeof(c)), 0);
    ck_assert_int_eq(parse("{\n \"bundle_objects\": 128,\n \"huge_pages\": \"off\",\n"
                           " \"segment_size\": \"100M\",\n \"allowed_gids\": [5, 6]\n}\n",
                           &c, err),
                     0);
    ck_assert_uint_eq(c.shm.bundle_objects, 128);
    ck_assert_uint_eq(c.shm.segment_size, 100 * MiB); /* fine with "off", whatever the order */
    ck_assert_uint_eq(c.n_allowed_gids, 2);

    /* Malformed JSON: line and column. */
    ck_assert_int_eq(parse("{\n  \"bundle_objects\": 12,\n  oops\n}", &c, err), -EBADMSG);
    ck_assert_msg(strstr(err, "test.json:3:") != NULL, "%s", err);
    ck_assert_int_eq(parse("{\n  \"bundle_objects\": 12,\n", &c, err), -EBADMSG);
    ck_assert_msg(strstr(err, "test.json:") && strstr(err, "end of file"), "%s", err);
    ck_assert_int_eq(parse("{} {}", &c, err), -EBADMSG);
    ck_assert_int_eq(parse("", &c, err), -EBADMSG);
    /* A bad value: the key's line and the bounds. */
    ck_assert_int_eq(parse("{\n\"max_clients\": 8,\n\n\"bundle_objects\": 9000\n}", &c, err),
                     -ERANGE);
    ck_assert_str_eq(err, "test.json:4: bundle_objects must be between 2 and 4096, got 9000");
    /* Unknown and duplicate keys. */
    ck_assert_int_eq(parse("{\"max_clients\": 8,\n\"frobnicate\": 1}", &c, err), -ENOENT);
    ck_assert_str_eq(err, "test.json:2: unknown key \"frobnicate\"");
    ck_assert_int_eq(parse("{\"max_clients\": 8,\n\"max_clients\": 9}", &c, err), -EINVAL);
    ck_assert_str_eq(err, "test.json:2: duplicate key \"max_clients\"");
    /* The top level is an object. */
    ck_assert_int_eq(parse("[1, 2]", &c, err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "object"));
    /* Nesting is capped before cJSON sees it. */
    {
        char deep[200] = "{\"allowed_uids\":";

        for (int i = 0; i < 20; i++)
            strcat(deep, "[");
        ck_assert_int_eq(parse(deep, &c, err), -EBADMSG);
        ck_assert_ptr_nonnull(strstr(err, "nested deeper than 16"));
    }
    /* A NUL byte in the middle. */
    ck_assert_int_eq(config_parse_text("{\"a\0\": 1}", 9, "x", &c, err, sizeof(err)), -EBADMSG);
}
END_TEST

START_TEST(config_file_load)
{
    char dir[] = "/tmp/shmheap-config-XXXXXX", path[64], err[CONFIG_ERR_MAX];
    struct config c, def;
    FILE *fp;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    (void) snprintf(path, sizeof(path), "%s/c.json", dir);
    config_default(&def);
    /* Missing: fine for the default path, an error for one given. */
    memset(&c, 0xa5, sizeof(c));
    ck_assert_int_eq(config_load_file(path, false, &c, err, sizeof(err)), 0);
    ck_assert_int_eq(memcmp(&c, &def, sizeof(c)), 0);
    ck_assert_int_eq(config_load_file(path, true, &c, err, sizeof(err)), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err, path));
    fp = fopen(path, "w");
    fputs("{ \"max_segments\": 4,\n  \"log_level\": \"debug\" }\n", fp);
    fclose(fp);
    ck_assert_int_eq(config_load_file(path, true, &c, err, sizeof(err)), 0);
    ck_assert_uint_eq(c.shm.max_segments, 4);
    ck_assert_uint_eq(c.log_level, 7);
    fp = fopen(path, "w");
    fputs("{ \"max_segments\": 40 }\n", fp);
    fclose(fp);
    ck_assert_int_eq(config_load_file(path, true, &c, err, sizeof(err)), -ERANGE);
    ck_assert_ptr_nonnull(strstr(err, "c.json:1: max_segments must be between 1 and 31, got 40"));
    /* A directory is not a config file. */
    ck_assert_int_eq(config_load_file(dir, true, &c, err, sizeof(err)), -EINVAL);
    (void) unlink(path);
    (void) rmdir(dir);
}
END_TEST

START_TEST(config_depth_and_position)
{
    unsigned line, col;

    ck_assert(config_json_depth_ok("[[[]]]", 6, 3));
    ck_assert(!config_json_depth_ok("[[[[]]]]", 8, 3));
    ck_assert(config_json_depth_ok("[\"[[[[[[\"]", 10, 2));   /* brackets in strings */
    ck_assert(config_json_depth_ok("[\"\\\"[[[[\"]", 10, 2)); /* escaped quote */
    config_text_position("ab\ncd\nef", 8, 7, &line, &col);
    ck_assert_uint_eq(line, 3);
    ck_assert_uint_eq(col, 2);
}
END_TEST

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("table");

    tcase_add_test(tc, config_defaults_match_heap);
    tcase_add_test(tc, config_every_key_listed);
    tcase_add_test(tc, config_bounds);
    tcase_add_test(tc, config_bounds_message);
    tcase_add_test(tc, config_types);
    tcase_add_test(tc, config_values);
    tcase_add_test(tc, config_path_values);
    tcase_add_test(tc, config_cross_check);
    tcase_add_test(tc, config_text_values);
    suite_add_tcase(s, tc);
    tc = tcase_create("files");
    tcase_add_test(tc, config_file_text);
    tcase_add_test(tc, config_file_load);
    tcase_add_test(tc, config_depth_and_position);
    suite_add_tcase(s, tc);
    return s;
}
