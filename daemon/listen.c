/* The control socket: its path, creating it (or taking it from systemd),
 * and accepting connections.
 *
 * A socket file left by a daemon that died is removed, but only when
 * nothing answers on it: a live daemon's socket is never taken over. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/daemon.h"

/* mkdir -p of the socket's directory; new directories get mode 0755. */
static int make_parent_dirs(const char *path)
{
    char dir[PATH_MAX];
    size_t n = strlen(path);

    if (n >= sizeof(dir))
        return -ENAMETOOLONG;
    memcpy(dir, path, n + 1);
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    return 0;
}

static void sockaddr_for(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, path, strlen(path) + 1);
}

/* 0: path is free (absent, or a stale socket now removed); -EADDRINUSE: a
 * daemon answers there; another -errno: cannot tell or not a socket. */
static int clear_stale_socket(const char *path)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, r;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        log_error("%s exists and is not a socket; not touching it", path);
        return -EEXIST;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    sockaddr_for(path, &sa);
    r = connect(fd, (struct sockaddr *) &sa, sizeof(sa));
    if (r == 0 || errno == EAGAIN) {
        (void) close(fd);
        log_error("another daemon answers on %s; exiting", path);
        return -EADDRINUSE;
    }
    r = -errno;
    (void) close(fd);
    if (r != -ECONNREFUSED) {
        log_error("cannot tell whether %s is in use: %s", path, strerror(-r));
        return r;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        r = -errno;
        log_error("cannot remove the stale socket %s: %s", path, strerror(-r));
        return r;
    }
    log_info("removed the stale socket %s (nothing answered on it)", path);
    return 0;
}

static void accept_all(struct daemon *d);

static void listen_cb(uv_poll_t *handle, int status, int events)
{
    struct daemon *d = handle->data;

    (void) events;
    if (status < 0) {
        log_warning("polling the listening socket failed: %s", uv_strerror(status));
        return;
    }
    accept_all(d);
}

static void listen_retry_cb(uv_timer_t *t)
{
    struct daemon *d = t->data;

    if (d->listening && !d->stopping)
        (void) uv_poll_start(&d->listen_poll, UV_READABLE, listen_cb);
}

static void accept_all(struct daemon *d)
{
    for (;;) {
        struct peer p;
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN)
                return;
            /* Out of fds: polling on would spin, so pause for a moment. */
            log_warning("cannot accept a connection, pausing 100 ms: %m");
            (void) uv_poll_stop(&d->listen_poll);
            (void) uv_timer_start(&d->listen_retry, listen_retry_cb, 100, 0);
            return;
        }
        if (peer_credentials(fd, &p) < 0) {
            log_warning("cannot read a connection's credentials, closing it: %m");
            (void) close(fd);
            continue;
        }
        conn_accept(d, fd, &p);
    }
}

static int listen_bind(struct daemon *d)
{
    struct sockaddr_un sa;
    struct stat st;
    mode_t old;
    int fd, r;

    r = make_parent_dirs(d->socket_path);
    if (r < 0) {
        log_error("cannot create the directory of %s: %s", d->socket_path, strerror(-r));
        return r;
    }
    r = clear_stale_socket(d->socket_path);
    if (r < 0)
        return r;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r = -errno;
        log_error("cannot create a socket: %m");
        return r;
    }
    sockaddr_for(d->socket_path, &sa);
    old = umask(0117); /* the socket is born 0660 */
    r = bind(fd, (struct sockaddr *) &sa, sizeof(sa));
    (void) umask(old);
    if (r < 0) {
        r = -errno;
        log_error("cannot bind %s: %m", d->socket_path);
        goto fail;
    }
    d->socket_created = true;
    if (chmod(d->socket_path, 0660) < 0 || stat(d->socket_path, &st) < 0) {
        r = -errno;
        log_error("cannot set the mode of %s: %m", d->socket_path);
        goto fail;
    }
    d->socket_dev = st.st_dev;
    d->socket_ino = st.st_ino;
    if (listen(fd, SOMAXCONN) < 0) {
        r = -errno;
        log_error("cannot listen on %s: %m", d->socket_path);
        goto fail;
    }
    d->listen_fd = fd;
    return 0;
fail:
    (void) close(fd);
    if (d->socket_created)
        (void) unlink(d->socket_path);
    d->socket_created = false;
    return r;
}

int listen_open(struct daemon *d)
{
    int fd = service_listen_fd(), r;

    if (fd >= 0) {
        struct sockaddr_un sa;
        socklen_t salen = sizeof(sa);

        d->socket_activated = true;
        d->listen_fd = fd;
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0 ||
            fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
            log_error("cannot set up the socket passed by systemd: %m");
            return -errno;
        }
        memset(&sa, 0, sizeof(sa));
        if (getsockname(fd, (struct sockaddr *) &sa, &salen) == 0 && sa.sun_path[0])
            (void) snprintf(d->socket_path, sizeof(d->socket_path), "%s", sa.sun_path);
    } else {
        r = listen_bind(d);
        if (r < 0)
            return r;
    }
    r = uv_poll_init(d->loop, &d->listen_poll, d->listen_fd);
    if (r == 0)
        r = uv_timer_init(d->loop, &d->listen_retry);
    if (r < 0) {
        log_error("cannot watch the listening socket: %s", uv_strerror(r));
        return -EIO;
    }
    d->listen_poll.data = d;
    d->listen_retry.data = d;
    d->listening = true;
    (void) uv_poll_start(&d->listen_poll, UV_READABLE, listen_cb);
    return 0;
}

void listen_close(struct daemon *d)
{
    struct stat st;

    if (d->listening) {
        uv_close((uv_handle_t *) &d->listen_poll, NULL);
        uv_close((uv_handle_t *) &d->listen_retry, NULL);
        d->listening = false;
    }
    if (d->listen_fd >= 0)
        (void) close(d->listen_fd);
    d->listen_fd = -1;
    /* Remove the socket only if it is still the one we made. */
    if (d->socket_created && stat(d->socket_path, &st) == 0 && st.st_dev == d->socket_dev &&
        st.st_ino == d->socket_ino)
        (void) unlink(d->socket_path);
    d->socket_created = false;
}
