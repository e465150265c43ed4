/* The control protocol: one request line in, one reply line out (see
 * docs/PROTOCOL.md). This file checks the line (UTF-8, no NUL, nesting at
 * most 16), parses it with an explicit length, finds the op and builds the
 * replies; the ops themselves are in op_*.c.
 *
 * Every field of a request is of unknown type until checked: handlers read
 * fields only through req_u64() and req_string(), which answer bad_request
 * or bad_value themselves. A failure changes nothing. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/utf8.h"
#include "daemon/daemon.h"

#define REQUEST_MAX_DEPTH 16u

struct op {
    const char *name;
    void (*handle)(struct conn *c, const cJSON *req);
    bool needs_hello;
};

static const struct op ops[] = {
        {"hello", op_hello, false},
        {"segment", op_segment, true},
        {"header_page", op_header_page, true},
        {"grow", op_grow, true},
        {"stats", op_stats, false},
        {"trim", op_trim, false},
        {"config.get", op_config_get, false},
        {"config.set", op_config_set, false},
        {"clients", op_clients, false},
        {"segments", op_segments, false},
        {"verify", op_verify, false},
};

/* ---- replies ---- */

bool json_add_u64(cJSON *obj, const char *name, uint64_t v)
{
    char buf[24];

    (void) snprintf(buf, sizeof(buf), "%" PRIu64, v);
    return cJSON_AddRawToObject(obj, name, buf) != NULL;
}

#define REPLY_NO_MEMORY \
    "{\"ok\":false,\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}"
#define REPLY_NOT_UTF8                                                                      \
    "{\"ok\":false,\"error\":{\"code\":\"internal\",\"message\":\"the reply was not valid " \
    "UTF-8 (a bug in shmheapd; logged)\"}}"

static void reply_line(struct conn *c, cJSON *obj, const int *fds, int nfds)
{
    char *line = cJSON_PrintUnformatted(obj);
    size_t len;
    int r;

    if (!line) {
        log_error("out of memory while printing a reply");
        (void) conn_send(c, REPLY_NO_MEMORY, strlen(REPLY_NO_MEMORY), NULL, 0);
        return;
    }
    len = strlen(line);
    /* The last guard of "every reply is UTF-8": each string that goes into
     * a reply is made UTF-8 where it is built (messages by reply_error,
     * config values by the table); should one slip through, the client
     * gets a clean failure instead of bytes it cannot decode. (The fuzz
     * targets fail on this message: it is always a bug.) */
    if (!utf8_valid(line, len)) {
        log_error("connection %" PRIu64 ": a reply is not valid UTF-8 at byte %zu, not sent: "
                  "%.200s",
                  c->serial, utf8_valid_prefix(line, len), line);
        (void) conn_send(c, REPLY_NOT_UTF8, strlen(REPLY_NOT_UTF8), NULL, 0);
        cJSON_free(line);
        return;
    }
    r = conn_send(c, line, len, fds, nfds);
    if (r < 0 && r != -EPIPE)
        log_warning("connection %" PRIu64 ": cannot queue a reply: %s", c->serial, strerror(-r));
    cJSON_free(line);
}

cJSON *reply_new(void)
{
    cJSON *root = cJSON_CreateObject();

    if (root && !cJSON_AddTrueToObject(root, "ok")) {
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

void reply_ok(struct conn *c, cJSON *obj, const int *fds, int nfds)
{
    if (!obj) {
        reply_error(c, "internal", "out of memory");
        return;
    }
    reply_line(c, obj, fds, nfds);
    cJSON_Delete(obj);
}

static cJSON *error_object(const char *code, const char *message)
{
    cJSON *root = cJSON_CreateObject(), *err;

    if (!root)
        return NULL;
    if (!cJSON_AddFalseToObject(root, "ok") || !(err = cJSON_AddObjectToObject(root, "error")) ||
        !cJSON_AddStringToObject(err, "code", code) ||
        !cJSON_AddStringToObject(err, "message", message)) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

char *reply_error_line(const char *code, const char *message)
{
    cJSON *root = error_object(code, message);
    char *line, *out = NULL;
    size_t n;

    if (!root)
        return NULL;
    line = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!line)
        return NULL;
    n = strlen(line);
    out = malloc(n + 2);
    if (out) {
        memcpy(out, line, n);
        out[n] = '\n';
        out[n + 1] = 0;
    }
    cJSON_free(line);
    return out;
}

void reply_error(struct conn *c, const char *code, const char *fmt, ...)
{
    char message[512];
    cJSON *root;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    /* Every reply is UTF-8: a message cut at its size is cut on a
     * character boundary (and marked "..."), and nothing raw gets in. */
    utf8_sanitize(message, sizeof(message), n > 0 ? (size_t) n : 0);
    log_debug("connection %" PRIu64 " (pid %d): %s: %s", c->serial, (int) c->peer.pid, code,
              message);
    root = error_object(code, message);
    if (!root) {
        log_error("out of memory while building a reply");
        return;
    }
    reply_line(c, root, NULL, 0);
    cJSON_Delete(root);
}

/* ---- request fields ---- */

bool req_u64(struct conn *c,
             const cJSON *req,
             const char *name,
             bool required,
             uint64_t max,
             uint64_t *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, name);
    double d;

    if (!v) {
        if (required)
            reply_error(c, "bad_request", "missing field \"%s\"", name);
        return !required;
    }
    if (!cJSON_IsNumber(v)) {
        reply_error(c, "bad_request", "field \"%s\" must be a number", name);
        return false;
    }
    d = v->valuedouble;
    /* The range first: casting a double beyond 2^64 is undefined. */
    if (d != d || d < 0 || d >= 18446744073709551616.0 || d != (double) (uint64_t) d) {
        reply_error(c, "bad_request", "field \"%s\" must be a whole number, 0 or more", name);
        return false;
    }
    if ((uint64_t) d > max) {
        reply_error(c, "bad_value", "field \"%s\" must be between 0 and %" PRIu64 ", got %.17g",
                    name, max, d);
        return false;
    }
    *ret = (uint64_t) d;
    return true;
}

bool req_string(struct conn *c, const cJSON *req, const char *name, bool required, const char **ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, name);

    if (!v) {
        if (required)
            reply_error(c, "bad_request", "missing field \"%s\"", name);
        return !required;
    }
    if (!cJSON_IsString(v) || !v->valuestring) {
        reply_error(c, "bad_request", "field \"%s\" must be a string", name);
        return false;
    }
    *ret = v->valuestring;
    return true;
}

/* ---- the line ---- */

/* A printable, bounded copy of an untrusted string for messages. */
static const char *printable(const char *s, char *buf, size_t len)
{
    /* The request is valid UTF-8 (checked first): cut it on a character
     * boundary, with room for "..." and the NUL. */
    size_t n = utf8_prefix(s, len - 4), o;

    for (o = 0; o < n; o++)
        buf[o] = ((unsigned char) s[o] < 0x20 || s[o] == 0x7f) ? '?' : s[o];
    if (s[n]) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
    return buf;
}

/* The request on line, parsed: a JSON value and nothing after it but
 * blanks. Else replies the error and returns NULL. */
static cJSON *parse_request(struct conn *c, char *line, size_t len)
{
    const char *end = NULL;
    cJSON *req;
    size_t pos;

    if (len && line[len - 1] == '\r')
        line[--len] = 0;
    if (strnlen(line, len) != len) {
        reply_error(c, "bad_json", "the request holds a NUL byte at column %zu",
                    strnlen(line, len) + 1);
        return NULL;
    }
    if (!utf8_valid(line, len)) {
        reply_error(c, "bad_json", "the request is not valid UTF-8 (byte %zu)",
                    utf8_valid_prefix(line, len) + 1);
        return NULL;
    }
    if (!config_json_depth_ok(line, len, REQUEST_MAX_DEPTH)) {
        reply_error(c, "bad_json", "the request nests deeper than %u levels", REQUEST_MAX_DEPTH);
        return NULL;
    }
    /* line is NUL-terminated at len (conn.c replaced the '\n'). */
    req = cJSON_ParseWithLengthOpts(line, len, &end, false);
    if (req) {
        pos = (size_t) (end - line);
        while (pos < len && strchr(" \t\r", line[pos]))
            pos++;
        if (pos < len) {
            cJSON_Delete(req);
            req = NULL;
            end = line + pos;
        }
    }
    if (!req) {
        pos = end && end >= line ? (size_t) (end - line) : 0;
        if (len == 0 || strspn(line, " \t") == len)
            reply_error(c, "bad_json", "empty request line");
        else
            reply_error(c, "bad_json", "malformed JSON at column %zu", pos + 1);
    }
    return req;
}

/* Hands the request to its op's handler, or replies why not. */
static void dispatch(struct conn *c, cJSON *req)
{
    const char *opname;
    const cJSON *opv;
    char buf[64];

    if (!cJSON_IsObject(req)) {
        reply_error(c, "bad_json", "the request must be a JSON object");
        return;
    }
    opv = cJSON_GetObjectItemCaseSensitive(req, "op");
    if (!opv) {
        reply_error(c, "bad_request", "missing field \"op\"");
        return;
    }
    if (!cJSON_IsString(opv) || !opv->valuestring) {
        reply_error(c, "bad_request", "field \"op\" must be a string");
        return;
    }
    opname = opv->valuestring;
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        if (strcmp(ops[i].name, opname) != 0)
            continue;
        if (ops[i].needs_hello && !c->client)
            reply_error(c, "not_attached", "op \"%s\" needs hello first on this connection",
                        ops[i].name);
        else
            ops[i].handle(c, req);
        return;
    }
    reply_error(c, "unknown_op", "unknown op \"%s\"", printable(opname, buf, sizeof(buf)));
}

void proto_handle_line(struct conn *c, char *line, size_t len)
{
    cJSON *req;

    if (c->denied) {
        reply_error(c, "permission_denied",
                    "uid %u may not use this daemon (see allowed_uids and allowed_gids)",
                    (unsigned) c->peer.uid);
        c->close_after_flush = true;
        return;
    }
    req = parse_request(c, line, len);
    if (!req)
        return;
    dispatch(c, req);
    cJSON_Delete(req);
}
