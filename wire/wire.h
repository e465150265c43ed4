/* The wire protocol's one home (docs/PROTOCOL.md): the protocol version, the
 * line limit, the socket path rule, and the reading and writing of lines.
 * shmheapd, shmheapctl and libshmheap all build on this module; it needs
 * libc only and never logs (libshmheap links it): failures come back as a
 * negative errno plus, where useful, a phrase saying what went wrong.
 *
 * Framing: a request or a reply is one JSON object on one line ending in
 * '\n', at most WIRE_LINE_MAX bytes with the '\n'. File descriptors travel
 * with SCM_RIGHTS on the bytes of the reply that announces them.
 *
 * Grouped by source file, as in shm/internal.h. */
#ifndef WIRE_WIRE_H
#define WIRE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The protocol version `hello` sends and the daemon answers with. */
#define WIRE_VERSION 1
/* The longest line, request or reply, its '\n' included (64 KiB). */
#define WIRE_LINE_MAX 65536u
/* Room for the socket path: sizeof(struct sockaddr_un.sun_path). */
#define WIRE_PATH_MAX 108u
/* Room for wire_read.why. */
#define WIRE_WHY_MAX 160u

/* ---- socket.c: where the socket is, and connecting to it ---- */
/* Writes into buf: arg if given, else $SHMHEAP_SOCKET, else
 * /run/shmheap/shmheap.sock as root, else $XDG_RUNTIME_DIR/shmheap.sock,
 * else /tmp/shmheap-$UID.sock (INTERFACE.md). Returns 0, or -ENAMETOOLONG
 * when the path does not fit buf or a sockaddr_un (buf is then garbage). */
int wire_socket_path(const char *arg, char *buf, size_t len);
/* A connected stream socket (blocking, SOCK_CLOEXEC) to path, or a
 * negative errno: -ENAMETOOLONG for a path too long for a sockaddr_un,
 * else what socket() or connect() said (-ENOENT, -ECONNREFUSED: nobody
 * listens there). */
int wire_connect(const char *path);

/* ---- line.c: framing, sending and reading lines ---- */
/* Where the first line in buf[0..len) ends: its length without the '\n'
 * (>= 0); -EAGAIN when buf holds no '\n' yet and may grow; -EMSGSIZE when
 * buf holds WIRE_LINE_MAX bytes or more without a '\n' (the line is too
 * long for the protocol). */
ssize_t wire_line_end(const char *buf, size_t len);

/* Sends line[0..len) and then a '\n' (one line; line must hold no '\n'),
 * all of it, retrying after EINTR; MSG_NOSIGNAL, so a peer that went away
 * is -EPIPE, never SIGPIPE. Returns 0, -EMSGSIZE when the line with its
 * '\n' is over WIRE_LINE_MAX (nothing is sent), or the negative errno of
 * send(). */
int wire_send_line(int fd, const char *line, size_t len);

/* One reply read by wire_read_line(): what the caller gives, what it gets. */
struct wire_read {
    unsigned timeout_ms;    /* in: the longest wait for the whole line */
    int *fds;               /* in: room for descriptors (NULL when fds_max is 0) */
    unsigned fds_max;       /* in */
    unsigned nfds;          /* out: descriptors in fds[], in arrival order */
    size_t len;             /* out: the line's length without its '\n' */
    char why[WIRE_WHY_MAX]; /* out, on failure: e.g. "did not answer within 100 ms" */
};

/* Reads one line from the stream socket fd into buf (WIRE_LINE_MAX bytes),
 * with recvmsg (MSG_CMSG_CLOEXEC: no fd leaks into an exec'd child), until
 * the '\n' or rd->timeout_ms. The '\n' is replaced by a NUL. Every fd that
 * arrives with the line's bytes is kept in rd->fds.
 * Returns 0, or a negative errno with rd->why set (a phrase that follows
 * "shmheapd at PATH ") and every received fd closed (rd->nfds is 0):
 *   -ETIMEDOUT  no whole line within the timeout
 *   -ECONNRESET the peer closed the connection (before or within the line)
 *   -EMSGSIZE   no '\n' within WIRE_LINE_MAX bytes
 *   -EPROTO     bytes after the line (one request, one reply), or more
 *               descriptors than rd->fds_max
 *   other       what poll() or recvmsg() said */
int wire_read_line(int fd, char *buf, struct wire_read *rd);

#endif
