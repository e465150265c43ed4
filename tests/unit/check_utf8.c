/* Unit tests for config/utf8.c: the strict UTF-8 check, cuts on character
 * boundaries, and the sanitizer every message goes through. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "config/utf8.h"
#include "tests/unit/suites.h"

START_TEST(utf8_valid_strict)
{
    static const struct {
        const char *s;
        size_t bad_at; /* (size_t) -1: valid */
    } cases[] = {
            {"", (size_t) -1},
            {"plain ascii", (size_t) -1},
            {"a\xc3\xa9z", (size_t) -1},       /* U+00E9 */
            {"\xe2\x82\xac", (size_t) -1},     /* U+20AC */
            {"\xf0\x9f\x98\x80", (size_t) -1}, /* U+1F600 */
            {"\xf4\x8f\xbf\xbf", (size_t) -1}, /* U+10FFFF */
            {"\xed\x9f\xbf", (size_t) -1},     /* U+D7FF */
            {"ab\x80", 2},                     /* a lone continuation */
            {"ab\xc3", 2},                     /* cut short at the end */
            {"a\xe2\x82z", 1},                 /* cut short inside */
            {"\xc0\xaf", 0},                   /* overlong '/' */
            {"\xe0\x80\xaf", 0},               /* overlong, 3 bytes */
            {"\xf0\x80\x80\xaf", 0},           /* overlong, 4 bytes */
            {"x\xed\xa0\x80", 1},              /* U+D800, a surrogate */
            {"\xf4\x90\x80\x80", 0},           /* above U+10FFFF */
            {"\xff", 0},
            {"\xf8\x88\x80\x80\x80", 0}, /* a 5-byte form */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = strlen(cases[i].s);
        size_t want = cases[i].bad_at == (size_t) -1 ? len : cases[i].bad_at;

        ck_assert_msg(utf8_valid_prefix(cases[i].s, len) == want, "case %zu: %zu, expected %zu", i,
                      utf8_valid_prefix(cases[i].s, len), want);
        ck_assert(utf8_valid(cases[i].s, len) == (want == len));
    }
    /* NUL is a character: the length decides, not the terminator. */
    ck_assert(utf8_valid("a\0b", 3));
}
END_TEST

/* Every cut of strings of 1-, 2-, 3- and 4-byte characters ends on a
 * boundary, is the longest such prefix, and keeps what fits whole. */
START_TEST(utf8_prefix_cuts_on_boundaries)
{
    static const char *const chars[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    char s[256];

    for (unsigned c = 0; c < 4; c++) {
        size_t w = strlen(chars[c]), n = 0;

        while (n + w < sizeof(s)) {
            memcpy(s + n, chars[c], w);
            n += w;
        }
        s[n] = 0;
        for (size_t max = 0; max <= n + 2; max++) {
            size_t p = utf8_prefix(s, max);
            size_t expect = max >= n ? n : max / w * w;

            ck_assert_msg(p == expect, "width %zu, max %zu: %zu, expected %zu", w, max, p, expect);
            ck_assert(utf8_valid(s, p));
        }
    }
}
END_TEST

START_TEST(utf8_sanitize_messages)
{
    char buf[16];
    int n;

    /* Untouched when whole and valid. */
    strcpy(buf, "ok \xc3\xa9");
    utf8_sanitize(buf, sizeof(buf), strlen(buf));
    ck_assert_str_eq(buf, "ok \xc3\xa9");
    /* Invalid bytes become '?', one each. */
    strcpy(buf, "a\xff\xc3z\x80");
    utf8_sanitize(buf, sizeof(buf), strlen(buf));
    ck_assert_str_eq(buf, "a??z?");
    /* A cut message ends on a boundary, with "...", whatever the offset. */
    for (unsigned lead = 0; lead < 4; lead++) {
        char fmt[64];

        (void) snprintf(fmt, sizeof(fmt), "%.*s%s", (int) lead, "xxx",
                        "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac");
        n = snprintf(buf, sizeof(buf), "%s", fmt);
        utf8_sanitize(buf, sizeof(buf), (size_t) n);
        ck_assert_msg(utf8_valid(buf, strlen(buf)), "lead %u: %s", lead, buf);
        ck_assert_msg(strlen(buf) >= 3 && strcmp(buf + strlen(buf) - 3, "...") == 0, "%s", buf);
        ck_assert_uint_le(strlen(buf), sizeof(buf) - 1);
        ck_assert_uint_ge(strlen(buf), sizeof(buf) - 1 - 3); /* at most a character lost */
    }
}
END_TEST

Suite *utf8_suite(void)
{
    Suite *s = suite_create("utf8");
    TCase *tc = tcase_create("utf8");

    tcase_add_test(tc, utf8_valid_strict);
    tcase_add_test(tc, utf8_prefix_cuts_on_boundaries);
    tcase_add_test(tc, utf8_sanitize_messages);
    suite_add_tcase(s, tc);
    return s;
}
