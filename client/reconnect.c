/* Riding out a daemon restart.
 *
 * An attachment keeps working on the segments it has mapped while no
 * daemon runs: malloc, free, roots, arenas and pools need none. What needs
 * the daemon (a new segment, a segment another process created, trim) goes
 * through client_call(), which waits for a connection.
 *
 * The watcher: one thread per attachment, asleep in poll() on the
 * connection (POLLRDHUP) and an eventfd (detach). When the daemon hangs
 * up, it reconnects by itself, retrying with a backoff (10 ms doubling to
 * 250 ms) for as long as the attachment lives, and sends a re-hello (its
 * client id and owner entry, docs/PROTOCOL.md) so that the new daemon
 * watches its process again and can reclaim it if it dies. The new
 * daemon's control segment must be the very file this attachment maps
 * (same st_dev and st_ino): a daemon that started a new heap, or refuses
 * the re-hello, leaves the attachment orphaned (RC_ORPHANED): it keeps its
 * mapped segments and objects, but can never grow again.
 *
 * The thread blocks every signal (they are the application's) and never
 * calls into the core, so it takes no core lock; it takes conn.lock only
 * to swap the connection's fd and file the new segments' fds.
 *
 * Lock order: conn.lock, then rc_lock. client_call() waits on rc_cond
 * with neither held... except that the core may call the hooks (and so
 * client_call) with its local_lock held: the wait is bounded by
 * reconnect_wait_ms, and the watcher needs no core lock, so it cannot
 * deadlock, only delay other threads mapping a segment for that long. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shmheap.h"

#include "client/client.h"

#define BACKOFF_MIN_MS  10u
#define BACKOFF_MAX_MS  250u
#define REHELLO_TIMEOUT 5000u   /* a daemon that accepted but does not answer */
#define WAIT_DEFAULT_MS 5000u   /* before the control segment can be read */
#define WAIT_MAX_MS     600000u /* the config key's bound; shared memory is untrusted */

static void deadline_after(struct timespec *ts, unsigned ms)
{
    (void) clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long) (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Sleeps ms unless detach wakes us; true if it did. */
static bool sleep_or_stop(struct client *c, unsigned ms)
{
    struct pollfd p = {.fd = c->rc_wake, .events = POLLIN};

    return poll(&p, 1, (int) ms) > 0;
}

static void set_state(struct client *c, enum rc_state st)
{
    pthread_mutex_lock(&c->rc_lock);
    c->rc_state = st;
    if (st == RC_CONNECTED) {
        c->rc_epoch++;
        c->reconnects++;
    }
    pthread_cond_broadcast(&c->rc_cond);
    pthread_mutex_unlock(&c->rc_lock);
}

static bool same_file(int a, int b)
{
    struct stat sa, sb;

    return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* One attempt: connect, re-hello, check the heap, swap the connection in.
 * 0 done, -EAGAIN try again later, -ESTALE orphaned. */
static int reconnect_once(struct client *c)
{
    struct heap *heap = c->heap;
    int fds[SHM_MAX_SEGMENTS], ctl_fd, hdr_fd = -1, r;
    struct conn tmp = {.fd = -1};

    for (unsigned i = 0; i < SHM_MAX_SEGMENTS; i++)
        fds[i] = -1;
    if (conn_open(&tmp, c->conn.path) < 0)
        return -EAGAIN;
    ctl_fd = client_hello(c, &tmp, true, REHELLO_TIMEOUT, fds, &hdr_fd);
    if (ctl_fd < 0) {
        /* Refused (the daemon does not know this client) or another
         * protocol: orphaned. Anything else (a daemon busy, full, or
         * gone again) may pass: try again. */
        r = ctl_fd == -SHMHEAP_EPROTO ? -ESTALE : -EAGAIN;
        goto out;
    }
    if (!same_file(ctl_fd, heap->ctl_fd)) {
        client_set_error("shmheapd at %s serves another heap now; this attachment keeps its "
                         "mapped segments but cannot grow",
                         c->conn.path);
        r = -ESTALE;
        goto out;
    }
    /* A restarted daemon (fd store) made a new header page: a copy of
     * the old one, which it can no longer write. Mapped over the old. */
    r = heap_remap_header(heap, hdr_fd);
    hdr_fd = -1;
    if (r < 0) {
        client_set_error("shmheapd at %s sent a header page that does not match this heap: %s",
                         c->conn.path, strerror(-r));
        r = -ESTALE;
        goto out;
    }
    pthread_mutex_lock(&c->conn.lock);
    for (uint32_t i = 1; i < SHM_MAX_SEGMENTS; i++) {
        if (fds[i] < 0)
            continue;
        /* Mapped already: the core has its own fd. Else kept for the
         * open_segment call that maps it. */
        if (i < load_acquire(&heap->nmapped) || c->pending_fd[i] >= 0) {
            (void) close(fds[i]);
        } else {
            c->pending_fd[i] = fds[i];
        }
        fds[i] = -1;
    }
    if (c->conn.fd >= 0)
        (void) close(c->conn.fd);
    c->conn.fd = tmp.fd;
    tmp.fd = -1;
    pthread_mutex_unlock(&c->conn.lock);
    r = 0;
out:
    if (ctl_fd >= 0)
        (void) close(ctl_fd);
    if (hdr_fd >= 0)
        (void) close(hdr_fd);
    for (unsigned i = 0; i < SHM_MAX_SEGMENTS; i++)
        if (fds[i] >= 0)
            (void) close(fds[i]);
    conn_close(&tmp);
    return r;
}

static void *watcher(void *arg)
{
    struct client *c = arg;

    pthread_mutex_lock(&c->rc_lock);
    c->rc_started = true;
    pthread_cond_broadcast(&c->rc_cond);
    pthread_mutex_unlock(&c->rc_lock);
    for (;;) {
        struct pollfd p[2] = {{.fd = c->rc_wake, .events = POLLIN},
                              {.fd = -1, .events = POLLRDHUP}};
        unsigned backoff = BACKOFF_MIN_MS;
        int r;

        /* The fd changes only here (and in the detach that stopped us). */
        p[1].fd = c->conn.fd;
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            (void) sleep_or_stop(c, BACKOFF_MAX_MS);
            continue;
        }
        if (p[0].revents)
            return NULL;
        if (!(p[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
            continue;
        /* The daemon is gone (or closed us): requests wait from now on. */
        pthread_mutex_lock(&c->rc_lock);
        if (c->rc_state == RC_CONNECTED)
            c->rc_state = RC_LOST;
        pthread_mutex_unlock(&c->rc_lock);
        pthread_mutex_lock(&c->conn.lock);
        if (c->conn.fd >= 0)
            (void) close(c->conn.fd);
        c->conn.fd = -1;
        pthread_mutex_unlock(&c->conn.lock);
        while ((r = reconnect_once(c)) == -EAGAIN) {
            if (sleep_or_stop(c, backoff))
                return NULL;
            backoff = backoff * 2 < BACKOFF_MAX_MS ? backoff * 2 : BACKOFF_MAX_MS;
        }
        if (r < 0) {
            set_state(c, RC_ORPHANED);
            return NULL;
        }
        set_state(c, RC_CONNECTED);
    }
}

int reconnect_start(struct client *c)
{
    sigset_t all, old;
    int r;

    c->rc_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->rc_wake < 0) {
        client_set_error("cannot create an eventfd: %s", strerror(errno));
        return -SHMHEAP_ENOMEM;
    }
    pthread_mutex_init(&c->rc_lock, NULL);
    {
        pthread_condattr_t ca;

        (void) pthread_condattr_init(&ca);
        (void) pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&c->rc_cond, &ca);
        (void) pthread_condattr_destroy(&ca);
    }
    c->rc_state = RC_CONNECTED;
    c->rc_epoch = 1;
    /* The thread inherits this mask: it takes none of the application's
     * signals. */
    (void) sigfillset(&all);
    (void) pthread_sigmask(SIG_SETMASK, &all, &old);
    r = pthread_create(&c->rc_thread, NULL, watcher, c);
    (void) pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        client_set_error("cannot start the reconnect thread: %s", strerror(r));
        (void) close(c->rc_wake);
        pthread_cond_destroy(&c->rc_cond);
        pthread_mutex_destroy(&c->rc_lock);
        return -SHMHEAP_ENOMEM;
    }
    c->rc_running = true;
    /* Attach returns once the thread runs our code: its start-up (a
     * sanitizer's allocator, say) may take locks that no atfork handler
     * releases, and a fork right after attach must not copy them held. */
    pthread_mutex_lock(&c->rc_lock);
    while (!c->rc_started)
        pthread_cond_wait(&c->rc_cond, &c->rc_lock);
    pthread_mutex_unlock(&c->rc_lock);
    return 0;
}

void reconnect_stop(struct client *c)
{
    uint64_t one = 1;

    if (!c->rc_running)
        return;
    if (write(c->rc_wake, &one, sizeof(one)) < 0) {
        /* An eventfd write fails only on overflow: it is set already. */
    }
    (void) pthread_join(c->rc_thread, NULL);
    (void) close(c->rc_wake);
    pthread_cond_destroy(&c->rc_cond);
    pthread_mutex_destroy(&c->rc_lock);
    c->rc_running = false;
}

static unsigned wait_budget_ms(struct client *c)
{
    struct heap *heap = load_acquire(&c->heap);
    uint32_t ms;

    if (!heap)
        return WAIT_DEFAULT_MS;
    /* relaxed: a coarse tunable; any value within bounds will do. */
    ms = load_relaxed(&heap_ctl(heap)->config.reconnect_wait_ms);
    return ms > WAIT_MAX_MS ? WAIT_MAX_MS : ms;
}

/* Waits until connected; returns the connection's epoch, or 0 if none
 * came within the budget (or never will). */
static uint64_t wait_connected(struct client *c, const struct timespec *deadline)
{
    uint64_t epoch = 0;

    pthread_mutex_lock(&c->rc_lock);
    while (c->rc_state == RC_LOST) {
        if (pthread_cond_timedwait(&c->rc_cond, &c->rc_lock, deadline) == ETIMEDOUT)
            break;
    }
    if (c->rc_state == RC_CONNECTED)
        epoch = c->rc_epoch;
    pthread_mutex_unlock(&c->rc_lock);
    return epoch;
}

int client_call(struct client *c, const cJSON *req, unsigned timeout_ms, struct reply *ret)
{
    struct timespec deadline;
    int r = -SHMHEAP_ECONNECT;

    if (!c->rc_running) {
        /* Attaching (no watcher yet: the connection is the first one) or
         * detaching (the watcher has stopped): the connection as it is. */
        return conn_request(&c->conn, req, timeout_ms, ret);
    }
    deadline_after(&deadline, wait_budget_ms(c));
    for (int attempt = 0; attempt < 2; attempt++) {
        uint64_t epoch = wait_connected(c, &deadline);

        if (!epoch) {
            client_set_error("no shmheapd answers at %s (waited reconnect_wait_ms, %u ms)",
                             c->conn.path, wait_budget_ms(c));
            return -SHMHEAP_ECONNECT;
        }
        pthread_mutex_lock(&c->conn.lock);
        r = conn_request_locked(&c->conn, req, timeout_ms, ret);
        if (r == -SHMHEAP_EIO) {
            /* The connection failed mid-request: make sure the watcher
             * sees it (a daemon that hangs without closing), then wait for
             * the next connection and send once more. Requests are safe to
             * repeat: grow says what it saw, segment and trim are
             * idempotent. */
            pthread_mutex_lock(&c->rc_lock);
            if (c->rc_epoch == epoch && c->rc_state == RC_CONNECTED) {
                c->rc_state = RC_LOST;
                if (c->conn.fd >= 0)
                    (void) shutdown(c->conn.fd, SHUT_RDWR);
            }
            pthread_mutex_unlock(&c->rc_lock);
        }
        pthread_mutex_unlock(&c->conn.lock);
        if (r != -SHMHEAP_EIO)
            return r;
    }
    return r;
}
