/* Config files: JSON text over the defaults, through the table (config.c).
 *
 * The text is parsed with an explicit length from a NUL-terminated buffer,
 * after a scan that caps nesting (cJSON's own cap is 1000 levels). Errors
 * name the file and the line: for malformed JSON, the line and column of
 * cJSON's error position; for a bad key or value, the line of the key.
 *
 * JSON has no comments, so a key that starts with '#' is one: its value is
 * ignored, whatever it is (shmheapd.json.example is written that way). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "config/internal.h"
#include "config/utf8.h"

static void errf(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (!err || len == 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(err, len, fmt, ap);
    va_end(ap);
    /* Messages quote the file's text and may be cut: keep them UTF-8. */
    utf8_sanitize(err, len, n > 0 ? (size_t) n : 0);
}

void config_text_position(
        const char *text, size_t len, size_t pos, unsigned *ret_line, unsigned *ret_col)
{
    unsigned line = 1, col = 1;

    for (size_t i = 0; i < pos && i < len; i++) {
        if (text[i] == '\n') {
            line++;
            col = 1;
        } else if (((unsigned char) text[i] & 0xc0) != 0x80) {
            col++; /* count characters, not UTF-8 continuation bytes */
        }
    }
    *ret_line = line;
    *ret_col = col;
}

/* Walks the text as a JSON lexer would, just far enough to see brackets
 * outside strings. Returns the position of the first bracket deeper than
 * max_depth, or len if there is none. */
static size_t depth_scan(const char *text, size_t len, unsigned max_depth)
{
    unsigned depth = 0;
    bool in_string = false;

    for (size_t i = 0; i < len; i++) {
        char ch = text[i];

        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = false;
            continue;
        }
        switch (ch) {
        case '"':
            in_string = true;
            break;
        case '[':
        case '{':
            if (++depth > max_depth)
                return i;
            break;
        case ']':
        case '}':
            if (depth)
                depth--;
            break;
        default:
            break;
        }
    }
    return len;
}

bool config_json_depth_ok(const char *text, size_t len, unsigned max_depth)
{
    return depth_scan(text, len, max_depth) == len;
}

/* The line of the n-th (0-based) occurrence of "name" used as a key, or 0
 * if not found (best effort: good enough to point a human at it). */
static unsigned key_line(const char *text, size_t len, const char *name, unsigned n)
{
    size_t nl = strlen(name);

    for (size_t i = 0; i + nl + 2 <= len; i++) {
        size_t j;

        if (text[i] != '"' || memcmp(text + i + 1, name, nl) != 0 || text[i + 1 + nl] != '"')
            continue;
        for (j = i + nl + 2; j < len && strchr(" \t\r\n", text[j]); j++)
            ;
        if (j < len && text[j] == ':' && n-- == 0) {
            unsigned line, col;

            config_text_position(text, len, i, &line, &col);
            return line;
        }
    }
    return 0;
}

static const char *json_kind(const cJSON *v)
{
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsNull(v))
        return "null";
    return "something else";
}

/* Parses text as one JSON document: 0 and *ret_root, or -EBADMSG with a
 * message that says where (a NUL byte, nesting too deep, malformed JSON,
 * trailing bytes, an early end). */
static int parse_json(
        const char *text, size_t len, const char *name, cJSON **ret_root, char *err, size_t errlen)
{
    const char *end = NULL;
    unsigned line, col;
    cJSON *root;
    size_t pos, rest;

    pos = strnlen(text, len);
    if (pos < len) {
        config_text_position(text, len, pos, &line, &col);
        errf(err, errlen, "%s:%u:%u: malformed JSON: a NUL byte", name, line, col);
        return -EBADMSG;
    }
    /* JSON text is UTF-8 (RFC 8259); refusing anything else here means no
     * message below can quote bytes that are not. */
    pos = utf8_valid_prefix(text, len);
    if (pos < len) {
        config_text_position(text, len, pos, &line, &col);
        errf(err, errlen, "%s:%u:%u: malformed JSON: not valid UTF-8", name, line, col);
        return -EBADMSG;
    }
    pos = depth_scan(text, len, CONFIG_MAX_DEPTH);
    if (pos < len) {
        config_text_position(text, len, pos, &line, &col);
        errf(err, errlen, "%s:%u:%u: malformed JSON: nested deeper than %u levels", name, line, col,
             CONFIG_MAX_DEPTH);
        return -EBADMSG;
    }
    root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (root) {
        /* Only whitespace may follow the object. */
        pos = (size_t) (end - text);
        while (pos < len && strchr(" \t\r\n", text[pos]))
            pos++;
        if (pos == len) {
            *ret_root = root;
            return 0;
        }
        cJSON_Delete(root);
        end = text + pos;
    }
    pos = end && end >= text ? (size_t) (end - text) : 0;
    if (pos > len)
        pos = len;
    /* cJSON points at the last byte when the text ends too early. */
    rest = pos;
    while (rest < len && strchr(" \t\r\n", text[rest]))
        rest++;
    if (rest >= len)
        pos = len;
    config_text_position(text, len, pos, &line, &col);
    if (pos >= len)
        errf(err, errlen, "%s:%u:%u: malformed JSON: unexpected end of file", name, line, col);
    else
        errf(err, errlen, "%s:%u:%u: malformed JSON near \"%.*s\"", name, line, col,
                 (int) utf8_prefix(text + pos, 16), text + pos);
    return -EBADMSG;
}

/* Sets every key of the object root on c, in order; stops at the first
 * unknown (-ENOENT), duplicate (-EINVAL) or bad value, saying which line. */
static int apply_keys(const cJSON *root,
                      const char *text,
                      size_t len,
                      const char *name,
                      struct config *c,
                      char *err,
                      size_t errlen)
{
    unsigned seen[64] = {0};
    const cJSON *it;
    int r = 0;

    cJSON_ArrayForEach(it, root)
    {
        const struct config_key *k = config_key_find(it->string);
        char msg[CONFIG_ERR_MAX];
        size_t idx = 0;

        if (it->string && it->string[0] == '#')
            continue; /* a comment */
        if (!k) {
            const char *key = it->string ? it->string : "";

            errf(err, errlen, "%s:%u: unknown key \"%.*s%s\"", name, key_line(text, len, key, 0),
                 (int) utf8_prefix(key, 64), key, strlen(key) > 64 ? "..." : "");
            return -ENOENT;
        }
        while (config_key_at(idx) != k)
            idx++;
        if (seen[idx]++) {
            errf(err, errlen, "%s:%u: duplicate key \"%s\"", name,
                 key_line(text, len, it->string, seen[idx] - 1), it->string);
            return -EINVAL;
        }
        /* Rules between keys are judged once every key is read. */
        r = config_set_one(c, k, it, false, msg, sizeof(msg));
        if (r < 0) {
            errf(err, errlen, "%s:%u: %s", name, key_line(text, len, it->string, 0), msg);
            return r;
        }
    }
    return 0;
}

int config_parse_text(const char *text,
                      size_t len,
                      const char *name,
                      struct config *ret,
                      char *err,
                      size_t errlen)
{
    struct config c;
    cJSON *root;
    int r;

    if (!text || !ret)
        return -EINVAL;
    if (!name)
        name = "config";
    r = parse_json(text, len, name, &root, err, errlen);
    if (r < 0)
        return r;
    if (!cJSON_IsObject(root)) {
        errf(err, errlen, "%s:1: the top level must be a JSON object of keys, got %s", name,
             json_kind(root));
        cJSON_Delete(root);
        return -EINVAL;
    }
    config_default(&c);
    r = apply_keys(root, text, len, name, &c, err, errlen);
    if (r == 0) {
        char msg[CONFIG_ERR_MAX];

        r = config_check(&c, msg, sizeof(msg));
        if (r < 0)
            errf(err, errlen, "%s:%u: %s", name, key_line(text, len, "segment_size", 0), msg);
    }
    cJSON_Delete(root);
    if (r < 0)
        return r;
    *ret = c;
    return 0;
}

int config_load_file(
        const char *path, bool must_exist, struct config *ret, char *err, size_t errlen)
{
    struct stat st;
    size_t got = 0;
    char *buf;
    int fd, r;

    if (!path || !ret)
        return -EINVAL;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        r = -errno;
        if (r == -ENOENT && !must_exist) {
            config_default(ret);
            return 0;
        }
        errf(err, errlen, "%s: %s", path, strerror(-r));
        return r;
    }
    if (fstat(fd, &st) < 0) {
        r = -errno;
        errf(err, errlen, "%s: %s", path, strerror(-r));
        goto out_close;
    }
    if (!S_ISREG(st.st_mode)) {
        r = -EINVAL;
        errf(err, errlen, "%s: not a regular file", path);
        goto out_close;
    }
    if (st.st_size > (off_t) CONFIG_MAX_FILE) {
        r = -EFBIG;
        errf(err, errlen, "%s: larger than %u bytes", path, CONFIG_MAX_FILE);
        goto out_close;
    }
    buf = malloc((size_t) st.st_size + 1);
    if (!buf) {
        r = -ENOMEM;
        errf(err, errlen, "%s: out of memory", path);
        goto out_close;
    }
    while (got < (size_t) st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t) st.st_size - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            errf(err, errlen, "%s: %s", path, strerror(-r));
            goto out_free;
        }
        if (n == 0)
            break; /* shrank meanwhile: take what is there */
        got += (size_t) n;
    }
    buf[got] = 0;
    r = config_parse_text(buf, got, path, ret, err, errlen);
out_free:
    free(buf);
out_close:
    (void) close(fd);
    return r;
}
