/* Lines on the control socket: where one ends, sending one, and reading
 * one reply with the descriptors that come with it.
 *
 * wire_line_end() is the framing rule both ends apply: the daemon to the
 * bytes it has buffered from a connection (daemon/conn.c), the clients to
 * the bytes of a reply. wire_read_line() is the one blocking reader, used
 * by libshmheap and shmheapctl: a reply never takes longer than its
 * timeout, so a hung daemon is an error, never a hung client. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "wire/wire.h"

/* Descriptors one recvmsg can bring: Linux passes at most SCM_MAX_FD (253)
 * in one SCM_RIGHTS message. Should more arrive, the control data is cut
 * off (MSG_CTRUNC), which the reader refuses. */
#define WIRE_FDS_PER_MSG 253u

ssize_t wire_line_end(const char *buf, size_t len)
{
    const char *nl = memchr(buf, '\n', len < WIRE_LINE_MAX ? len : WIRE_LINE_MAX);

    if (nl)
        return nl - buf;
    return len >= WIRE_LINE_MAX ? -EMSGSIZE : -EAGAIN;
}

int wire_send_line(int fd, const char *line, size_t len)
{
    struct iovec iov[2] = {{.iov_base = (void *) line, .iov_len = len},
                           {.iov_base = (void *) "\n", .iov_len = 1}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};

    if (len >= WIRE_LINE_MAX)
        return -EMSGSIZE;
    while (msg.msg_iovlen > 0) {
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        /* Skip what went out: whole iovecs first, then into the next. */
        while (msg.msg_iovlen > 0 && (size_t) n >= msg.msg_iov->iov_len) {
            n -= (ssize_t) msg.msg_iov->iov_len;
            msg.msg_iov++;
            msg.msg_iovlen--;
        }
        if (msg.msg_iovlen > 0) {
            msg.msg_iov->iov_base = (char *) msg.msg_iov->iov_base + n;
            msg.msg_iov->iov_len -= (size_t) n;
        }
    }
    return 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static void close_fds(struct wire_read *rd)
{
    for (unsigned i = 0; i < rd->nfds; i++)
        (void) close(rd->fds[i]);
    rd->nfds = 0;
}

/* Keeps the fds of every SCM_RIGHTS message in msg, closing those beyond
 * rd->fds_max. Returns false if any did not fit (or were cut off). */
static bool take_fds(struct msghdr *msg, struct wire_read *rd)
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
            if (rd->nfds < rd->fds_max) {
                rd->fds[rd->nfds++] = fd;
            } else {
                (void) close(fd);
                fit = false;
            }
        }
    }
    return fit;
}

/* Sets rd->why, closes the fds received so far, returns r. */
__attribute__((format(printf, 3, 4))) static int
fail(struct wire_read *rd, int r, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    (void) vsnprintf(rd->why, sizeof(rd->why), fmt, ap);
    va_end(ap);
    close_fds(rd);
    return r;
}

int wire_read_line(int fd, char *buf, struct wire_read *rd)
{
    uint64_t deadline = now_ms() + rd->timeout_ms;
    bool fds_ok = true;
    size_t len = 0;

    rd->nfds = 0;
    rd->len = 0;
    rd->why[0] = 0;
    for (;;) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * WIRE_FDS_PER_MSG)];
            struct cmsghdr align;
        } ctrl;
        struct iovec iov = {.iov_base = buf + len, .iov_len = WIRE_LINE_MAX - len};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = ctrl.buf,
                             .msg_controllen = sizeof(ctrl.buf)};
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        uint64_t now = now_ms();
        size_t start = len;
        ssize_t n, end;
        int r;

        if (now >= deadline)
            return fail(rd, -ETIMEDOUT, "did not answer within %u ms", rd->timeout_ms);
        r = poll(&pfd, 1, (int) (deadline - now));
        if (r < 0 && errno != EINTR) {
            r = errno;
            return fail(rd, -r, "could not be waited for: poll: %s", strerror(r));
        }
        if (r <= 0)
            continue;
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            r = errno;
            return fail(rd, -r, "dropped the connection: %s", strerror(r));
        }
        fds_ok = take_fds(&msg, rd) && fds_ok;
        if (n == 0)
            return fail(rd, -ECONNRESET, "closed the connection %s",
                        len ? "in the middle of its reply" : "without a reply");
        /* Only the new bytes can hold the '\n': the old ones did not. */
        end = wire_line_end(buf + len, (size_t) n);
        len += (size_t) n;
        if (end >= 0) {
            if (start + (size_t) end + 1 != len)
                return fail(rd, -EPROTO, "sent bytes after its reply");
            if (!fds_ok)
                return fail(rd, -EPROTO, "sent more descriptors than a reply may carry (%u)",
                            rd->fds_max);
            buf[len - 1] = 0;
            rd->len = len - 1;
            return 0;
        }
        if (len >= WIRE_LINE_MAX)
            return fail(rd, -EMSGSIZE, "sent a reply over %u bytes", WIRE_LINE_MAX);
    }
}
