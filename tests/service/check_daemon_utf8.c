/* Every reply is valid UTF-8 JSON (issue 9, item 3): messages that quote
 * what a client sent are cut on character boundaries, whatever the length
 * and the width of its characters, and bytes that are not UTF-8 are
 * refused with a clear error, never echoed. The reply bytes are checked as
 * they come off the socket, by a decoder of the test's own. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/service/daemon_fixture.h"
#include "tests/service/suites.h"

#define SMALL "\"segment_size\": 67108864, \"huge_pages\": \"off\""

/* Strict UTF-8: shortest forms, no surrogates, at most U+10FFFF. */
static bool strict_utf8(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *) s;

    for (size_t i = 0; i < len;) {
        unsigned need, cp, min;

        if (u[i] < 0x80) {
            i++;
            continue;
        }
        if (u[i] >= 0xc2 && u[i] <= 0xdf)
            need = 1, cp = u[i] & 0x1fu, min = 0x80;
        else if (u[i] >= 0xe0 && u[i] <= 0xef)
            need = 2, cp = u[i] & 0x0fu, min = 0x800;
        else if (u[i] >= 0xf0 && u[i] <= 0xf4)
            need = 3, cp = u[i] & 0x07u, min = 0x10000;
        else
            return false;
        if (len - i <= need)
            return false;
        for (unsigned k = 1; k <= need; k++) {
            if ((u[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (u[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += need + 1;
    }
    return true;
}

/* Sends one line on fd and returns its reply, checked: valid UTF-8 bytes,
 * a JSON object, the expected error code, a UTF-8 message. */
static cJSON *utf8_call(int fd, const char *line, const char *code)
{
    char *raw = NULL;
    const char *msg;
    cJSON *j;

    ck_assert_int_eq(daemon_send(fd, line, strlen(line)), 0);
    ck_assert_int_eq(daemon_recv(fd, &raw, NULL, NULL, daemon_test_ms(10000)), 0);
    ck_assert_msg(strict_utf8(raw, strlen(raw)), "reply to %.80s... is not UTF-8: %s", line, raw);
    j = cJSON_Parse(raw);
    ck_assert_msg(j, "reply is not JSON: %s", raw);
    free(raw);
    ck_assert_msg(!reply_is_ok(j) && reply_error_code(j) && strcmp(reply_error_code(j), code) == 0,
                  "expected %s, got %s", code, reply_error_code(j));
    msg = reply_error_message(j);
    ck_assert(msg && *msg && strict_utf8(msg, strlen(msg)));
    return j;
}

/* `n` copies of the character ch (1 to 4 bytes) after an "a". */
static char *repeat(const char *ch, unsigned n)
{
    size_t w = strlen(ch);
    char *s = malloc(1 + w * n + 1);

    ck_assert_ptr_nonnull(s);
    s[0] = 'a';
    for (unsigned i = 0; i < n; i++)
        memcpy(s + 1 + w * i, ch, w);
    s[1 + w * n] = 0;
    return s;
}

/* The example, and every length up to past each limit (64-byte key
 * and op names, the 40-byte quote of a bad value) for characters of 2, 3
 * and 4 bytes, so that every cut offset is met. */
START_TEST(utf8_messages_cut_on_characters)
{
    static const char *const chars[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    struct daemon_fixture f;
    char line[4096];
    cJSON *j;
    int fd;

    ck_assert_int_eq(daemon_start(&f, "{" SMALL "}"), 0);
    fd = daemon_connect(f.socket_path);
    ck_assert_int_ge(fd, 0);

    /* {"op":"config.get","key":"a"+"é"*40}: cut, and marked as cut. */
    {
        char *k = repeat("\xc3\xa9", 40);

        (void) snprintf(line, sizeof(line), "{\"op\":\"config.get\",\"key\":\"%s\"}\n", k);
        j = utf8_call(fd, line, "unknown_key");
        ck_assert_msg(strstr(reply_error_message(j), "...\""), "%s", reply_error_message(j));
        ck_assert(strncmp(reply_error_message(j), "unknown key \"a\xc3\xa9", 16) == 0);
        cJSON_Delete(j);
        free(k);
    }
    for (unsigned c = 0; c < 3; c++) {
        for (unsigned n = 1; n <= 70; n++) {
            char *s = repeat(chars[c], n);

            (void) snprintf(line, sizeof(line), "{\"op\":\"%s\"}\n", s);
            cJSON_Delete(utf8_call(fd, line, "unknown_op"));
            (void) snprintf(line, sizeof(line), "{\"op\":\"config.get\",\"key\":\"%s\"}\n", s);
            cJSON_Delete(utf8_call(fd, line, "unknown_key"));
            (void) snprintf(line, sizeof(line),
                            "{\"op\":\"config.set\",\"key\":\"%s\",\"value\":1}\n", s);
            cJSON_Delete(utf8_call(fd, line, "unknown_key"));
            (void) snprintf(line, sizeof(line),
                            "{\"op\":\"config.set\",\"key\":\"bundle_objects\",\"value\":\"%s\"}\n",
                            s);
            cJSON_Delete(utf8_call(fd, line, "bad_value"));
            free(s);
        }
    }
    /* The connection is still fine. */
    j = daemon_call(fd, "{\"op\":\"stats\"}", NULL, NULL);
    ck_assert(j && reply_is_ok(j));
    cJSON_Delete(j);
    (void) close(fd);
    daemon_stop(&f);
    ck_assert(f.clean_exit);
}
END_TEST

/* Bytes that are not UTF-8 are refused (bad_json, naming the byte) and
 * never copied into the reply; the connection stays up. */
START_TEST(utf8_invalid_requests_refused)
{
    static const char *const bad[] = {
            "{\"op\":\"a\x80\"}\n",             /* a lone continuation byte */
            "{\"op\":\"a\xc3\"}\n",             /* a sequence cut short */
            "{\"op\":\"a\xe2\x82\"}\n",         /* the same, 3 bytes */
            "{\"op\":\"a\xc0\xaf\"}\n",         /* overlong */
            "{\"op\":\"a\xed\xb0\x80\"}\n",     /* a surrogate */
            "{\"op\":\"a\xf4\x90\x80\x80\"}\n", /* above U+10FFFF */
            "{\"op\":\"a\xff\"}\n",             /* never in UTF-8 */
            "{\"op\":\"config.get\",\"key\":\"\xfe\xfe\"}\n",
            "{\"op\":\"stats\"}\xc3\n", /* after the object */
    };
    struct daemon_fixture f;
    int fd;

    ck_assert_int_eq(daemon_start(&f, "{" SMALL "}"), 0);
    fd = daemon_connect(f.socket_path);
    ck_assert_int_ge(fd, 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cJSON *j = utf8_call(fd, bad[i], "bad_json");

        ck_assert_msg(strstr(reply_error_message(j), "not valid UTF-8"), "%s",
                      reply_error_message(j));
        cJSON_Delete(j);
    }
    /* An escaped lone surrogate is refused by the JSON parser instead. */
    cJSON_Delete(utf8_call(fd, "{\"op\":\"\\ud800\"}\n", "bad_json"));
    {
        cJSON *j = daemon_call(fd, "{\"op\":\"stats\"}", NULL, NULL);

        ck_assert(j && reply_is_ok(j));
        cJSON_Delete(j);
    }
    (void) close(fd);
    daemon_stop(&f);
    ck_assert(f.clean_exit);
}
END_TEST

/* A config file that is not UTF-8 is refused with its line and column; one
 * whose unknown key is long is named in a message cut on a character. */
START_TEST(utf8_config_file)
{
    struct daemon_fixture f;
    char cfg[512], *log, *k;

    ck_assert_int_eq(daemon_start(&f, "{" SMALL ",\n \"\xff\": 1}"), -ECHILD);
    ck_assert(daemon_log_wait(&f, "shmheapd.json:2:3: malformed JSON: not valid UTF-8", 0));
    daemon_stop(&f);

    ck_assert_int_eq(daemon_start(&f, "{" SMALL "}"), 0);
    k = repeat("\xe2\x82\xac", 40);
    (void) snprintf(cfg, sizeof(cfg), "{" SMALL ",\n \"%s\": 1}", k);
    free(k);
    ck_assert_int_eq(daemon_write_config(&f, cfg), 0);
    ck_assert_int_eq(kill(f.pid, SIGHUP), 0);
    ck_assert(daemon_log_wait(&f, "keeping the running config", daemon_test_ms(5000)));
    log = daemon_log(&f);
    ck_assert_msg(strict_utf8(log, strlen(log)), "the log is not UTF-8");
    ck_assert_msg(strstr(log, "shmheapd.json:2: unknown key \"a\xe2\x82\xac"), "%s", log);
    ck_assert_msg(strstr(log, "\xe2\x82\xac...\""), "%s", log);
    free(log);
    daemon_stop(&f);
    ck_assert(f.clean_exit);
}
END_TEST

Suite *daemon_utf8_suite(void)
{
    Suite *s = suite_create("daemon_utf8");
    TCase *tc = tcase_create("utf8");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, utf8_messages_cut_on_characters);
    tcase_add_test(tc, utf8_invalid_requests_refused);
    tcase_add_test(tc, utf8_config_file);
    suite_add_tcase(s, tc);
    return s;
}
