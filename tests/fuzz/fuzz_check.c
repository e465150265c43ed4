/* The reply rules of every fuzz target (see fuzz_check.h). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz_check.h"

void fuzz_fail(const char *why, const char *text, size_t len)
{
    fprintf(stderr, "fuzz: %s\nfuzz: text (%zu bytes): \"", why, len);
    for (size_t i = 0; i < len && i < 4096; i++) {
        unsigned char ch = (unsigned char) text[i];

        if (ch >= 0x20 && ch < 0x7f && ch != '\\')
            fputc(ch, stderr);
        else
            fprintf(stderr, "\\x%02x", ch);
    }
    fprintf(stderr, "\"%s\n", len > 4096 ? "..." : "");
    abort();
}

/* A decoder written apart from config/utf8.c, so that the two check each
 * other: the shortest form of each code point, no surrogates, at most
 * U+10FFFF. */
void fuzz_check_utf8(const char *what, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *) s;
    size_t i = 0;

    while (i < len) {
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
            goto bad;
        if (len - i <= need)
            goto bad;
        for (unsigned k = 1; k <= need; k++) {
            if ((u[i + k] & 0xc0) != 0x80)
                goto bad;
            cp = cp << 6 | (u[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            goto bad;
        i += need + 1;
    }
    return;
bad : {
    char why[128];

    (void) snprintf(why, sizeof(why), "%s is not valid UTF-8 at byte %zu", what, i);
    fuzz_fail(why, s, len);
}
}

static bool snake_case(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!(islower((unsigned char) *s) || *s == '_' || isdigit((unsigned char) *s)))
            return false;
    return true;
}

cJSON *fuzz_check_reply(const char *line, size_t len)
{
    const char *end = NULL;
    const cJSON *ok, *err, *code, *msg;
    cJSON *j;

    fuzz_check_utf8("a reply", line, len);
    if (memchr(line, '\n', len) || memchr(line, 0, len))
        fuzz_fail("a reply holds a newline or a NUL byte", line, len);
    j = cJSON_ParseWithLengthOpts(line, len, &end, false);
    if (!j)
        fuzz_fail("a reply is not JSON", line, len);
    if (end != line + len) {
        cJSON_Delete(j);
        fuzz_fail("a reply has bytes after its JSON value", line, len);
    }
    if (!cJSON_IsObject(j))
        goto bad;
    ok = cJSON_GetObjectItemCaseSensitive(j, "ok");
    if (!cJSON_IsBool(ok))
        goto bad;
    if (cJSON_IsTrue(ok))
        return j;
    err = cJSON_GetObjectItemCaseSensitive(j, "error");
    code = cJSON_GetObjectItemCaseSensitive(err, "code");
    msg = cJSON_GetObjectItemCaseSensitive(err, "message");
    if (!cJSON_IsObject(err) || !cJSON_IsString(code) || !cJSON_IsString(msg) ||
        !snake_case(code->valuestring) || !msg->valuestring[0])
        goto bad;
    /* cJSON decoded the escapes: the text a user reads is UTF-8 too. */
    fuzz_check_utf8("an error message", msg->valuestring, strlen(msg->valuestring));
    /* proto.c's last guard replaced a reply that was not UTF-8 (exactly
     * this code and message: other messages may quote the words). */
    if (strcmp(code->valuestring, "internal") == 0 &&
        strcmp(msg->valuestring, "the reply was not valid UTF-8 (a bug in shmheapd; logged)") ==
                0) {
        cJSON_Delete(j);
        fuzz_fail("the daemon built a reply that is not UTF-8 (its guard replaced it)", line, len);
    }
    return j;
bad:
    cJSON_Delete(j);
    fuzz_fail("a reply lacks a boolean \"ok\", or a failure lacks error.code (snake_case) "
              "and a non-empty error.message",
              line, len);
}
