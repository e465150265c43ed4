/* Connections: reading request lines, the request and idle timers, and the
 * queue of replies with their file descriptors.
 *
 * A connection is a non-blocking socket watched with uv_poll (not a
 * uv_stream: replies carry fds with SCM_RIGHTS on their first byte, which
 * needs sendmsg). Flow control is one request at a time: while a reply is
 * queued or a job runs for the connection, no further line is handled and
 * the socket is not read, so a peer that sends and never reads fills its
 * own socket buffer, not our memory.
 *
 * Lines are framed by wire_line_end(): at most WIRE_LINE_MAX bytes with the
 * '\n'; a buffer full without a '\n' is answered line_too_long and the
 * connection closed. The input buffer is allocated with the first byte of
 * a request, doubled as the line grows (4 KiB to 64 KiB) and freed once its
 * lines are handled: an idle connection costs its struct and its fd, so
 * max_clients of them cost little memory. A partial line
 * older than request_timeout_ms is answered timeout and closed; so is a
 * connection without hello idle for idle_timeout_ms. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "daemon/daemon.h"

static uint64_t now_ns(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* The first size of a connection's input buffer: most requests fit. */
#define CONN_IN_FIRST 4096u

static void conn_poll_cb(uv_poll_t *handle, int status, int events);
static void conn_process(struct conn *c);
static void conn_flush(struct conn *c);

static void conn_maybe_free(struct conn *c)
{
    if (c->closing && c->handles == 0 && c->jobs == 0) {
        free(c->in);
        free(c);
    }
}

static void conn_handle_closed_cb(uv_handle_t *handle)
{
    struct conn *c = handle->data;

    c->handles--;
    conn_maybe_free(c);
}

static void outbuf_free(struct outbuf *o)
{
    for (int i = 0; i < o->nfds; i++)
        (void) close(o->fds[i]);
    free(o);
}

/* Starts the poll handle with what the connection needs now. */
static void conn_update_poll(struct conn *c)
{
    int ev = 0;

    if (c->closing)
        return;
    if (c->out_head)
        ev = UV_WRITABLE;
    else if (!c->eof && !c->close_after_flush && c->jobs == 0)
        ev = UV_READABLE | UV_DISCONNECT;
    if (ev == c->poll_events)
        return;
    if (ev)
        (void) uv_poll_start(&c->poll, ev, conn_poll_cb);
    else
        (void) uv_poll_stop(&c->poll);
    c->poll_events = ev;
}

static void conn_timer_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    struct daemon *d = c->d;
    unsigned ms;

    if (c->closing)
        return;
    switch (c->timer_mode) {
    case CONN_TIMER_SEND:
        log_info("connection %" PRIu64 " (pid %d, uid %u): a reply went unread for %u ms, "
                 "closing",
                 c->serial, (int) c->peer.pid, (unsigned) c->peer.uid, d->cfg.request_timeout_ms);
        conn_close(c, NULL);
        return;
    case CONN_TIMER_REQUEST:
        log_info("connection %" PRIu64 " (pid %d, uid %u): request not completed within %u ms, "
                 "closing",
                 c->serial, (int) c->peer.pid, (unsigned) c->peer.uid, d->cfg.request_timeout_ms);
        reply_error(c, "timeout", "the request was not completed within %u ms",
                    d->cfg.request_timeout_ms);
        break;
    case CONN_TIMER_IDLE:
        ms = c->denied ? d->cfg.request_timeout_ms : d->cfg.idle_timeout_ms;
        log_info("connection %" PRIu64 " (pid %d, uid %u): idle for %u ms without hello, closing",
                 c->serial, (int) c->peer.pid, (unsigned) c->peer.uid, ms);
        reply_error(c, "timeout", "the connection was idle for %u ms without hello", ms);
        break;
    default:
        return;
    }
    c->timer_mode = CONN_TIMER_OFF;
    c->inlen = 0;
    c->close_after_flush = true;
    conn_flush(c);
}

static void conn_timer_arm(struct conn *c, enum conn_timer_mode mode, unsigned ms, bool restart)
{
    if (mode == CONN_TIMER_OFF || ms == 0) {
        (void) uv_timer_stop(&c->timer);
        c->timer_mode = CONN_TIMER_OFF;
        return;
    }
    if (c->timer_mode == mode && !restart && uv_is_active((uv_handle_t *) &c->timer))
        return; /* keep the deadline we have */
    c->timer_mode = (uint8_t) mode;
    (void) uv_timer_start(&c->timer, conn_timer_cb, ms, 0);
}

/* Arms the timer for the connection's state: a reply the peer does not
 * read, or a partial request, keeps the deadline it got first; an idle
 * connection without hello gets a fresh idle deadline; anything else
 * (a job running, an attached client at rest) has none. */
static void conn_update_timer(struct conn *c, bool restart)
{
    struct daemon *d = c->d;
    unsigned idle = c->denied ? d->cfg.request_timeout_ms : d->cfg.idle_timeout_ms;

    if (c->closing)
        return;
    if (c->jobs)
        conn_timer_arm(c, CONN_TIMER_OFF, 0, false);
    else if (c->out_head)
        conn_timer_arm(c, CONN_TIMER_SEND, d->cfg.request_timeout_ms, restart);
    else if (c->close_after_flush || c->eof)
        conn_timer_arm(c, CONN_TIMER_OFF, 0, false);
    else if (c->inlen > 0)
        conn_timer_arm(c, CONN_TIMER_REQUEST, d->cfg.request_timeout_ms, restart);
    else if (!c->client)
        conn_timer_arm(c, CONN_TIMER_IDLE, idle, true);
    else
        conn_timer_arm(c, CONN_TIMER_OFF, 0, false);
}

void conn_refuse_raw(int fd, const char *code, const char *message)
{
    char *line = reply_error_line(code, message);

    if (line) {
        /* A fresh socket's buffer is empty: this goes out whole or not at all. */
        (void) send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
        free(line);
    }
}

/* Open connections of one uid: a walk, at most max_clients long, made only
 * when max_connections_per_uid is set. */
static unsigned conns_of_uid(struct daemon *d, uid_t uid)
{
    unsigned n = 0;

    for (struct link *l = d->conns.next; l != &d->conns; l = l->next)
        n += container_of(l, struct conn, link)->peer.uid == uid;
    return n;
}

void conn_accept(struct daemon *d, int fd, const struct peer *p)
{
    const char *why = NULL;
    struct conn *c;
    int r;

    if (d->stopping) {
        (void) close(fd);
        return;
    }
    if (d->nconns >= d->cfg.shm.max_clients) {
        char msg[128];

        (void) snprintf(msg, sizeof(msg), "the daemon already serves max_clients (%u) connections",
                        d->cfg.shm.max_clients);
        log_warning("refused a connection from pid %d (uid %u): too many clients (max_clients "
                    "%u)",
                    (int) p->pid, (unsigned) p->uid, d->cfg.shm.max_clients);
        conn_refuse_raw(fd, "too_many_clients", msg);
        (void) close(fd);
        return;
    }
    if (d->cfg.max_connections_per_uid &&
        conns_of_uid(d, p->uid) >= d->cfg.max_connections_per_uid) {
        char msg[160];

        (void) snprintf(msg, sizeof(msg),
                        "uid %u already holds max_connections_per_uid (%u) connections",
                        (unsigned) p->uid, d->cfg.max_connections_per_uid);
        log_warning("refused a connection from pid %d (uid %u): too many connections of its uid "
                    "(max_connections_per_uid %u)",
                    (int) p->pid, (unsigned) p->uid, d->cfg.max_connections_per_uid);
        conn_refuse_raw(fd, "too_many_clients", msg);
        (void) close(fd);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        log_warning("out of memory: closing a new connection from pid %d", (int) p->pid);
        (void) close(fd);
        return;
    }
    c->d = d;
    c->fd = fd;
    c->peer = *p;
    c->serial = ++d->next_conn_serial;
    c->connected_ns = now_ns();
    r = uv_poll_init(d->loop, &c->poll, fd);
    if (r < 0) {
        log_warning("cannot watch a new connection: %s", uv_strerror(r));
        (void) close(fd);
        free(c);
        return;
    }
    c->poll.data = c;
    (void) uv_timer_init(d->loop, &c->timer);
    c->timer.data = c;
    c->handles = 2;
    link_insert(&d->conns, &c->link);
    d->nconns++;
    if (!peer_allowed(d, fd, p, &why)) {
        c->denied = true;
        log_notice("refusing connection %" PRIu64 " from pid %d (uid %u, gid %u): %s", c->serial,
                   (int) p->pid, (unsigned) p->uid, (unsigned) p->gid, why);
    } else {
        log_debug("connection %" PRIu64 " from pid %d (uid %u)", c->serial, (int) p->pid,
                  (unsigned) p->uid);
    }
    conn_update_poll(c);
    conn_update_timer(c, true);
}

/* Sends what the queue holds until the socket is full. Returns false if
 * the connection was closed (the peer is gone). */
static bool conn_send_pending(struct conn *c)
{
    while (c->out_head) {
        struct outbuf *o = c->out_head;
        union {
            char buf[CMSG_SPACE(sizeof(int) * SHM_MAX_SEGMENTS)];
            struct cmsghdr align;
        } u;
        struct iovec iov = {.iov_base = o->data + o->off, .iov_len = o->len - o->off};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n;

        if (o->off == 0 && o->nfds > 0) {
            struct cmsghdr *cm;

            memset(&u, 0, sizeof(u));
            msg.msg_control = u.buf;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t) o->nfds);
            cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t) o->nfds);
            memcpy(CMSG_DATA(cm), o->fds, sizeof(int) * (size_t) o->nfds);
        }
        n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            log_debug("connection %" PRIu64 ": send failed: %m", c->serial);
            conn_close(c, NULL);
            return false;
        }
        /* The fds went with the first byte; our dups are no longer needed. */
        for (int i = 0; i < o->nfds; i++)
            (void) close(o->fds[i]);
        o->nfds = 0;
        o->off += (size_t) n;
        if (o->off == o->len) {
            c->out_head = o->next;
            if (!c->out_head)
                c->out_tail = NULL;
            free(o);
        }
    }
    return true;
}

/* The socket can take more: send, then carry on with waiting lines. */
static void conn_flush(struct conn *c)
{
    if (!conn_send_pending(c))
        return;
    if (c->out_head) {
        conn_update_poll(c);
        conn_update_timer(c, false);
        return;
    }
    conn_process(c);
}

int conn_send(struct conn *c, const char *line, size_t len, const int *fds, int nfds)
{
    struct outbuf *o;

    if (c->closing)
        return -EPIPE;
    if (nfds < 0 || nfds > (int) SHM_MAX_SEGMENTS)
        return -EINVAL;
    o = malloc(sizeof(*o) + len + 1);
    if (!o)
        return -ENOMEM;
    memcpy(o->data, line, len);
    o->data[len] = '\n';
    o->len = len + 1;
    o->off = 0;
    o->next = NULL;
    o->nfds = 0;
    for (int i = 0; i < nfds; i++) {
        int fd = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);

        if (fd < 0) {
            int r = -errno;

            outbuf_free(o);
            return r;
        }
        o->fds[o->nfds++] = fd;
    }
    if (c->out_tail)
        c->out_tail->next = o;
    else
        c->out_head = o;
    c->out_tail = o;
    /* Sent by conn_process after the line is handled, or by conn_resume
     * when a job replies. */
    return 0;
}

void conn_close(struct conn *c, const char *why)
{
    struct daemon *d = c->d;

    if (c->closing)
        return;
    if (why)
        log_info("connection %" PRIu64 " (pid %d, uid %u): %s", c->serial, (int) c->peer.pid,
                 (unsigned) c->peer.uid, why);
    else
        log_debug("connection %" PRIu64 " (pid %d) closed", c->serial, (int) c->peer.pid);
    c->closing = true;
    if (c->client) {
        clients_detach(c->client);
        c->client = NULL;
    }
    link_remove(&c->link);
    d->nconns--;
    while (c->out_head) {
        struct outbuf *o = c->out_head;

        c->out_head = o->next;
        outbuf_free(o);
    }
    c->out_tail = NULL;
    /* uv_close stops the poll at once, so the fd may be closed right after. */
    uv_close((uv_handle_t *) &c->poll, conn_handle_closed_cb);
    uv_close((uv_handle_t *) &c->timer, conn_handle_closed_cb);
    (void) close(c->fd);
    c->fd = -1;
}

/* Handles the complete lines in the buffer, one at a time, while nothing
 * is queued or running for this connection; then settles what the
 * connection waits for next (or closes it). */
static void conn_process(struct conn *c)
{
    while (!c->closing && !c->close_after_flush && c->jobs == 0 && !c->out_head && c->inlen) {
        ssize_t end = wire_line_end(c->in, c->inlen);
        size_t len;

        if (end < 0) {
            if (end == -EMSGSIZE) {
                log_info("connection %" PRIu64 " (pid %d, uid %u): request line longer than "
                         "%u bytes, closing",
                         c->serial, (int) c->peer.pid, (unsigned) c->peer.uid, WIRE_LINE_MAX);
                reply_error(c, "line_too_long",
                            "a request line may have at most %u bytes with its newline",
                            WIRE_LINE_MAX);
                c->inlen = 0;
                c->close_after_flush = true;
            }
            break;
        }
        len = (size_t) end;
        c->in[len] = 0; /* the '\n' */
        proto_handle_line(c, c->in, len);
        if (c->closing)
            return;
        memmove(c->in, c->in + len + 1, c->inlen - len - 1);
        c->inlen -= len + 1;
        if (!conn_send_pending(c))
            return;
    }
    if (c->closing)
        return;
    if (c->inlen == 0 && c->in) {
        /* Every line handled: an idle connection keeps no buffer. */
        free(c->in);
        c->in = NULL;
        c->incap = 0;
    }
    if (c->jobs == 0 && !c->out_head && (c->close_after_flush || c->eof)) {
        if (c->eof && c->inlen && !c->close_after_flush)
            log_debug("connection %" PRIu64 " (pid %d): hung up mid-request", c->serial,
                      (int) c->peer.pid);
        conn_close(c, NULL);
        return;
    }
    conn_update_poll(c);
    conn_update_timer(c, false);
}

static void conn_read(struct conn *c)
{
    ssize_t n;

    if (c->inlen == c->incap) {
        size_t cap = c->incap ? 2 * c->incap : CONN_IN_FIRST;
        char *b;

        if (c->incap >= WIRE_LINE_MAX) {
            conn_process(c); /* a full buffer without a '\n': line_too_long */
            return;
        }
        if (cap > WIRE_LINE_MAX)
            cap = WIRE_LINE_MAX;
        b = realloc(c->in, cap);
        if (!b) {
            log_warning("connection %" PRIu64 " (pid %d): out of memory for its request, "
                        "closing",
                        c->serial, (int) c->peer.pid);
            conn_close(c, NULL);
            return;
        }
        c->in = b;
        c->incap = cap;
    }
    n = recv(c->fd, c->in + c->inlen, c->incap - c->inlen, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        log_debug("connection %" PRIu64 ": receive failed: %m", c->serial);
        conn_close(c, NULL);
        return;
    }
    if (n == 0)
        c->eof = true;
    c->inlen += (size_t) n;
    conn_process(c);
}

static void conn_poll_cb(uv_poll_t *handle, int status, int events)
{
    struct conn *c = handle->data;

    if (c->closing)
        return;
    if (status < 0) {
        log_debug("connection %" PRIu64 ": poll failed: %s", c->serial, uv_strerror(status));
        conn_close(c, NULL);
        return;
    }
    if (events & UV_WRITABLE)
        conn_flush(c);
    if (!c->closing && (events & (UV_READABLE | UV_DISCONNECT)))
        conn_read(c);
}

void conn_pause(struct conn *c)
{
    c->jobs++;
    conn_update_poll(c);
    conn_update_timer(c, false);
}

void conn_resume(struct conn *c)
{
    c->jobs--;
    if (c->closing) {
        conn_maybe_free(c);
        return;
    }
    conn_flush(c);
}

void conn_timers_reconfigure(struct daemon *d)
{
    for (struct link *l = d->conns.next; l != &d->conns; l = l->next)
        conn_update_timer(container_of(l, struct conn, link), true);
}

void conn_drain_all(struct daemon *d)
{
    struct link *l = d->conns.next;

    while (l != &d->conns) {
        struct conn *c = container_of(l, struct conn, link);

        l = l->next;
        /* Lines not yet started are dropped: an attached client sends its
         * request again once it has reattached to the next daemon. */
        c->inlen = 0;
        c->close_after_flush = true;
        if (c->jobs == 0 && !c->out_head)
            conn_close(c, NULL);
        else
            conn_flush(c);
    }
}

void conn_close_all(struct daemon *d)
{
    while (d->conns.next != &d->conns)
        conn_close(container_of(d->conns.next, struct conn, link), NULL);
}
