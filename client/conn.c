/* The connection to shmheapd: the socket path rule, connect, and one
 * request/reply exchange (docs/PROTOCOL.md): a JSON object on one line each
 * way, file descriptors arriving by SCM_RIGHTS with the reply's bytes.
 *
 * Threads share the connection; conn.lock makes each request and its reply
 * one exchange. Replies are read with recvmsg until the \n, keeping every fd
 * that arrives with those bytes (MSG_CMSG_CLOEXEC, so none leaks into an
 * exec'd child). A reply never takes longer than its timeout: a hung daemon
 * is -SHMHEAP_EIO, not a hung client. Writes use MSG_NOSIGNAL: a daemon
 * that went away is an error return, never SIGPIPE. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shmheap.h"

#include "client/client.h"
#include "config/socket_path.h"

int conn_default_path(const char *arg, char *buf, size_t len)
{
    if (socket_path_resolve(arg, buf, len) < 0) {
        client_set_error("socket path too long (at most %zu bytes)", len - 1);
        return -SHMHEAP_EINVAL;
    }
    return 0;
}

int conn_open(struct conn *c, const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd, r;

    if (strlen(path) >= sizeof(addr.sun_path)) {
        client_set_error("socket path too long: %s", path);
        return -SHMHEAP_EINVAL;
    }
    memcpy(addr.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r = errno;
        client_set_error("cannot create a socket: %s", strerror(r));
        return client_errno_code(-r);
    }
    do {
        r = connect(fd, (struct sockaddr *) &addr, sizeof(addr));
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        r = errno;
        (void) close(fd);
        client_set_error("cannot connect to shmheapd at %s: %s (is shmheapd running?)", path,
                         strerror(r));
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

static uint64_t now_ms(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static int send_all(struct conn *c, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            client_set_error("lost the connection to shmheapd at %s: %s", c->path, strerror(errno));
            return -SHMHEAP_EIO;
        }
        buf += n;
        len -= (size_t) n;
    }
    return 0;
}

/* Keeps the fds of every SCM_RIGHTS message in msg; closes those beyond
 * the table (the reply is then refused). Returns false on overflow. */
static bool take_fds(struct msghdr *msg, struct reply *ret)
{
    bool fit = !(msg->msg_flags & MSG_CTRUNC);

    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        size_t n;

        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;

            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            if (ret->nfds < CONN_FDS_MAX) {
                ret->fds[ret->nfds++] = fd;
            } else {
                (void) close(fd);
                fit = false;
            }
        }
    }
    return fit;
}

/* Reads one line (without the \n) into buf, NUL-terminated. */
static int read_line(struct conn *c,
                     char *buf,
                     size_t cap,
                     unsigned timeout_ms,
                     struct reply *ret,
                     size_t *ret_len)
{
    uint64_t deadline = now_ms() + timeout_ms;
    size_t len = 0;
    bool fds_ok = true;

    for (;;) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * CONN_FDS_MAX)];
            struct cmsghdr align;
        } ctrl;
        struct iovec iov = {.iov_base = buf + len, .iov_len = cap - 1 - len};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = ctrl.buf,
                             .msg_controllen = sizeof(ctrl.buf)};
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        uint64_t now = now_ms();
        char *nl;
        ssize_t n;
        int r;

        if (now >= deadline) {
            client_set_error("shmheapd at %s did not answer within %u ms", c->path, timeout_ms);
            return -SHMHEAP_EIO;
        }
        r = poll(&pfd, 1, (int) (deadline - now));
        if (r < 0 && errno != EINTR) {
            client_set_error("poll on the connection to shmheapd: %s", strerror(errno));
            return -SHMHEAP_EIO;
        }
        if (r <= 0)
            continue;
        n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            client_set_error("lost the connection to shmheapd at %s: %s", c->path, strerror(errno));
            return -SHMHEAP_EIO;
        }
        fds_ok = take_fds(&msg, ret) && fds_ok;
        if (n == 0) {
            client_set_error("shmheapd at %s closed the connection", c->path);
            return -SHMHEAP_EIO;
        }
        nl = memchr(buf + len, '\n', (size_t) n);
        len += (size_t) n;
        if (nl) {
            if (nl != buf + len - 1 || !fds_ok) {
                client_set_error("shmheapd at %s sent %s", c->path,
                                 fds_ok ? "bytes after its reply" : "too many descriptors");
                return -SHMHEAP_EPROTO;
            }
            *nl = 0;
            *ret_len = len - 1;
            return 0;
        }
        if (len >= cap - 1) {
            client_set_error("shmheapd at %s sent a reply over %zu bytes", c->path, cap - 1);
            return -SHMHEAP_EPROTO;
        }
    }
}

int conn_request_locked(struct conn *c, const cJSON *req, unsigned timeout_ms, struct reply *ret)
{
    char *out = NULL, *buf = NULL;
    size_t len = 0, olen;
    cJSON *ok, *err;
    int r;

    memset(ret, 0, sizeof(*ret));
    ret->code = ret->message = "";
    if (c->fd < 0) {
        client_set_error("not connected to shmheapd");
        return -SHMHEAP_EIO;
    }
    out = cJSON_PrintUnformatted(req);
    buf = malloc(CONN_LINE_MAX + 1);
    if (!out || !buf) {
        r = -SHMHEAP_ENOMEM;
        goto out;
    }
    olen = strlen(out);
    if (olen + 1 > CONN_LINE_MAX) {
        client_set_error("request over %u bytes", CONN_LINE_MAX);
        r = -SHMHEAP_EINVAL;
        goto out;
    }
    out[olen] = '\n'; /* replaces the NUL: sent as a line */
    r = send_all(c, out, olen + 1);
    if (r < 0)
        goto out;
    r = read_line(c, buf, CONN_LINE_MAX + 1, timeout_ms, ret, &len);
    if (r < 0)
        goto out;
    ret->json = cJSON_ParseWithLength(buf, len);
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
