/* shmheapctl's side of the socket: the path rule, connect, and one
 * request/reply exchange. Replies carry no descriptors for the ops
 * shmheapctl sends; any that arrive anyway are closed. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config/socket_path.h"
#include "ctl/ctl.h"

int conn_resolve_path(const char *arg, char *buf, size_t len)
{
    if (socket_path_resolve(arg, buf, len) < 0) {
        fprintf(stderr, "shmheapctl: socket path too long (at most %zu bytes)\n", len - 1);
        return -1;
    }
    return 0;
}

int conn_connect(struct ctl_conn *c, const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd, r;

    snprintf(c->path, sizeof(c->path), "%s", path);
    memcpy(addr.sun_path, c->path, strlen(c->path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "shmheapctl: cannot create a socket: %s\n", strerror(errno));
        return -1;
    }
    do {
        r = connect(fd, (struct sockaddr *) &addr, sizeof(addr));
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        fprintf(stderr, "shmheapctl: cannot connect to shmheapd at %s: %s (is shmheapd running?)\n",
                path, strerror(errno));
        (void) close(fd);
        return -1;
    }
    c->fd = fd;
    return 0;
}

void conn_disconnect(struct ctl_conn *c)
{
    if (c->fd >= 0)
        (void) close(c->fd);
    c->fd = -1;
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static int send_line(struct ctl_conn *c, const cJSON *req)
{
    char *out = cJSON_PrintUnformatted(req);
    size_t len, done = 0;

    if (!out) {
        fputs("shmheapctl: out of memory\n", stderr);
        return -1;
    }
    len = strlen(out);
    out[len++] = '\n'; /* over the NUL: the request is one line */
    while (done < len) {
        ssize_t n = send(c->fd, out + done, len - done, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "shmheapctl: lost the connection to shmheapd at %s: %s\n", c->path,
                    strerror(errno));
            cJSON_free(out);
            return -1;
        }
        done += (size_t) n;
    }
    cJSON_free(out);
    return 0;
}

static void close_fds(struct msghdr *msg)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
            int fd;

            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            (void) close(fd);
        }
    }
}

/* Reads one line into buf (cap bytes with the NUL); returns its length
 * without the \n, or -1 (message printed). */
static ssize_t read_line(struct ctl_conn *c, char *buf, size_t cap, unsigned timeout_ms)
{
    uint64_t deadline = now_ms() + timeout_ms;
    size_t len = 0;

    for (;;) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * 32)];
            struct cmsghdr align;
        } ctrl;
        struct iovec iov = {.iov_base = buf + len, .iov_len = cap - 1 - len};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = ctrl.buf,
                             .msg_controllen = sizeof(ctrl.buf)};
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        uint64_t now = now_ms();
        ssize_t n;
        char *nl;
        int r;

        if (now >= deadline) {
            fprintf(stderr, "shmheapctl: shmheapd at %s did not answer within %u ms\n", c->path,
                    timeout_ms);
            return -1;
        }
        r = poll(&pfd, 1, (int) (deadline - now));
        if (r < 0 && errno != EINTR) {
            fprintf(stderr, "shmheapctl: poll: %s\n", strerror(errno));
            return -1;
        }
        if (r <= 0)
            continue;
        n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            fprintf(stderr, "shmheapctl: lost the connection to shmheapd at %s: %s\n", c->path,
                    strerror(errno));
            return -1;
        }
        close_fds(&msg);
        if (n == 0) {
            fprintf(stderr, "shmheapctl: shmheapd at %s closed the connection%s\n", c->path,
                    len ? " in the middle of its reply" : " without a reply");
            return -1;
        }
        nl = memchr(buf + len, '\n', (size_t) n);
        len += (size_t) n;
        if (nl) {
            *nl = 0;
            return nl - buf;
        }
        if (len >= cap - 1) {
            fprintf(stderr, "shmheapctl: shmheapd at %s sent a reply over %zu bytes\n", c->path,
                    cap - 1);
            return -1;
        }
    }
}

int conn_exchange(struct ctl_conn *c,
                  const cJSON *req,
                  unsigned timeout_ms,
                  char **ret_line,
                  cJSON **ret_reply)
{
    char *buf;
    ssize_t len;
    cJSON *reply;

    if (send_line(c, req) < 0)
        return -1;
    buf = malloc(CTL_LINE_MAX + 1);
    if (!buf) {
        fputs("shmheapctl: out of memory\n", stderr);
        return -1;
    }
    len = read_line(c, buf, CTL_LINE_MAX + 1, timeout_ms);
    if (len < 0) {
        free(buf);
        return -1;
    }
    reply = cJSON_ParseWithLength(buf, (size_t) len);
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
