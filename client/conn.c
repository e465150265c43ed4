/* The connection to shmheapd: one request/reply exchange (docs/PROTOCOL.md)
 * over the socket, lines and fds by wire/ (the path rule, connect, the
 * reader), replies parsed and their failures mapped to SHMHEAP_E* codes.
 *
 * Threads share the connection; conn.lock makes each request and its reply
 * one exchange. A reply never takes longer than its timeout: a hung daemon
 * is -SHMHEAP_EIO, not a hung client. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmheap.h"

#include "client/client.h"
#include "wire/wire.h"

int conn_default_path(const char *arg, char *buf, size_t len)
{
    if (wire_socket_path(arg, buf, len) < 0) {
        client_set_error("socket path too long (at most %zu bytes)",
                         (len < WIRE_PATH_MAX ? len : WIRE_PATH_MAX) - 1);
        return -SHMHEAP_EINVAL;
    }
    return 0;
}

int conn_open(struct conn *c, const char *path)
{
    int fd = wire_connect(path);

    if (fd == -ENAMETOOLONG) {
        client_set_error("socket path too long: %s", path);
        return -SHMHEAP_EINVAL;
    }
    /* Out of descriptors or memory is this process's trouble, not the
     * daemon's: reported as such, not as "cannot connect". */
    if (fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM || fd == -ENOBUFS) {
        client_set_error("cannot create a socket: %s", strerror(-fd));
        return client_errno_code(fd);
    }
    if (fd < 0) {
        client_set_error("cannot connect to shmheapd at %s: %s (is shmheapd running?)", path,
                         strerror(-fd));
        return -SHMHEAP_ECONNECT;
    }
    c->fd = fd;
    snprintf(c->path, sizeof(c->path), "%s", path);
    pthread_mutex_init(&c->lock, NULL);
    return 0;
}

void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        (void) close(c->fd);
    c->fd = -1;
    pthread_mutex_destroy(&c->lock);
}

int conn_request_locked(struct conn *c, const cJSON *req, unsigned timeout_ms, struct reply *ret)
{
    struct wire_read rd = {.timeout_ms = timeout_ms, .fds = ret->fds, .fds_max = CONN_FDS_MAX};
    char *out = NULL, *buf = NULL;
    cJSON *ok, *err;
    int r;

    memset(ret, 0, sizeof(*ret));
    ret->code = ret->message = "";
    if (c->fd < 0) {
        client_set_error("not connected to shmheapd");
        return -SHMHEAP_EIO;
    }
    out = cJSON_PrintUnformatted(req);
    buf = malloc(WIRE_LINE_MAX);
    if (!out || !buf) {
        r = -SHMHEAP_ENOMEM;
        goto out;
    }
    r = wire_send_line(c->fd, out, strlen(out));
    if (r == -EMSGSIZE) {
        client_set_error("request over %u bytes", WIRE_LINE_MAX);
        r = -SHMHEAP_EINVAL;
        goto out;
    }
    if (r < 0) {
        client_set_error("lost the connection to shmheapd at %s: %s", c->path, strerror(-r));
        r = -SHMHEAP_EIO;
        goto out;
    }
    r = wire_read_line(c->fd, buf, &rd);
    ret->nfds = rd.nfds;
    if (r < 0) {
        client_set_error("shmheapd at %s %s", c->path, rd.why);
        r = r == -EPROTO || r == -EMSGSIZE ? -SHMHEAP_EPROTO : -SHMHEAP_EIO;
        goto out;
    }
    ret->json = cJSON_ParseWithLength(buf, rd.len);
    if (!cJSON_IsObject(ret->json)) {
        client_set_error("shmheapd at %s sent a reply that is not a JSON object", c->path);
        r = -SHMHEAP_EPROTO;
        goto out;
    }
    ok = cJSON_GetObjectItemCaseSensitive(ret->json, "ok");
    if (!cJSON_IsBool(ok)) {
        client_set_error("shmheapd at %s sent a reply without \"ok\"", c->path);
        r = -SHMHEAP_EPROTO;
        goto out;
    }
    ret->ok = cJSON_IsTrue(ok);
    if (!ret->ok) {
        err = cJSON_GetObjectItemCaseSensitive(ret->json, "error");
        if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "code")))
            ret->code = cJSON_GetObjectItemCaseSensitive(err, "code")->valuestring;
        if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "message")))
            ret->message = cJSON_GetObjectItemCaseSensitive(err, "message")->valuestring;
    }
    r = 0;
out:
    if (r < 0)
        reply_free(ret);
    free(buf);
    cJSON_free(out);
    return r;
}

int conn_request(struct conn *c, const cJSON *req, unsigned timeout_ms, struct reply *ret)
{
    int r;

    pthread_mutex_lock(&c->lock);
    r = conn_request_locked(c, req, timeout_ms, ret);
    pthread_mutex_unlock(&c->lock);
    return r;
}

void reply_free(struct reply *r)
{
    for (unsigned i = 0; i < r->nfds; i++)
        if (r->fds[i] >= 0)
            (void) close(r->fds[i]);
    r->nfds = 0;
    cJSON_Delete(r->json);
    r->json = NULL;
    r->code = r->message = "";
}

int reply_error(const struct reply *r, const char *what)
{
    static const struct {
        const char *code;
        int err;
    } map[] = {
            {"permission_denied", SHMHEAP_EDENIED}, {"bad_request", SHMHEAP_EINVAL},
            {"bad_value", SHMHEAP_EINVAL},          {"unknown_key", SHMHEAP_EINVAL},
            {"heap_full", SHMHEAP_ENOMEM},          {"too_many_clients", SHMHEAP_ENOSPC},
            {"no_such_segment", SHMHEAP_ENOENT},    {"no_memory", SHMHEAP_ENOMEM},
    };

    client_set_error("%s: shmheapd said %s: %s", what, *r->code ? r->code : "no",
                     *r->message ? r->message : "(no message)");
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(r->code, map[i].code) == 0)
            return -map[i].err;
    return -SHMHEAP_EDAEMON;
}

bool json_get_u64(const cJSON *obj, const char *name, uint64_t *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

    /* Doubles hold integers exactly up to 2^53: enough for every count and
     * size the protocol sends. */
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0 ||
        v->valuedouble != (double) (uint64_t) v->valuedouble)
        return false;
    *ret = (uint64_t) v->valuedouble;
    return true;
}
