/* shmheapctl's side of the socket: the path rule, connect, and one
 * request/reply exchange, all through wire/. Replies carry no descriptors
 * for the ops shmheapctl sends: one that arrives anyway is refused (and
 * closed) by the reader. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "wire/wire.h"

int conn_resolve_path(const char *arg, char *buf, size_t len)
{
    if (wire_socket_path(arg, buf, len) < 0) {
        fprintf(stderr, "shmheapctl: socket path too long (at most %zu bytes)\n",
                (len < WIRE_PATH_MAX ? len : WIRE_PATH_MAX) - 1);
        return -1;
    }
    return 0;
}

int conn_connect(struct ctl_conn *c, const char *path)
{
    int fd = wire_connect(path);

    if (fd < 0) {
        fprintf(stderr, "shmheapctl: cannot connect to shmheapd at %s: %s (is shmheapd running?)\n",
                path, strerror(-fd));
        return -1;
    }
    snprintf(c->path, sizeof(c->path), "%s", path);
    c->fd = fd;
    return 0;
}

void conn_disconnect(struct ctl_conn *c)
{
    if (c->fd >= 0)
        (void) close(c->fd);
    c->fd = -1;
}

static int send_request(struct ctl_conn *c, const cJSON *req)
{
    char *out = cJSON_PrintUnformatted(req);
    int r;

    if (!out) {
        fputs("shmheapctl: out of memory\n", stderr);
        return -1;
    }
    r = wire_send_line(c->fd, out, strlen(out));
    cJSON_free(out);
    if (r == -EMSGSIZE) {
        fprintf(stderr, "shmheapctl: the request is over %u bytes\n", WIRE_LINE_MAX);
        return -1;
    }
    if (r < 0) {
        fprintf(stderr, "shmheapctl: lost the connection to shmheapd at %s: %s\n", c->path,
                strerror(-r));
        return -1;
    }
    return 0;
}

int conn_exchange(struct ctl_conn *c,
                  const cJSON *req,
                  unsigned timeout_ms,
                  char **ret_line,
                  cJSON **ret_reply)
{
    struct wire_read rd = {.timeout_ms = timeout_ms};
    cJSON *reply;
    char *buf;

    if (send_request(c, req) < 0)
        return -1;
    buf = malloc(WIRE_LINE_MAX);
    if (!buf) {
        fputs("shmheapctl: out of memory\n", stderr);
        return -1;
    }
    if (wire_read_line(c->fd, buf, &rd) < 0) {
        fprintf(stderr, "shmheapctl: shmheapd at %s %s\n", c->path, rd.why);
        free(buf);
        return -1;
    }
    reply = cJSON_ParseWithLength(buf, rd.len);
    if (!cJSON_IsObject(reply) || !cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
        fprintf(stderr,
                "shmheapctl: shmheapd at %s sent a reply that is not a JSON object with "
                "\"ok\"\n",
                c->path);
        cJSON_Delete(reply);
        free(buf);
        return -2;
    }
    *ret_line = buf;
    *ret_reply = reply;
    return 0;
}
