/* systemd integration and signals (socket activation and the fd store:
 * fdstore.c), sd_notify messages, SIGHUP reloads the config, SIGTERM and SIGINT stop
 * the daemon. Without systemd (no $NOTIFY_SOCKET) the sd_* calls do
 * nothing.
 *
 * The notify sequence, each message from the loop thread:
 *   READY=1 + STATUS=   once the control socket accepts (main.c calls
 *                       service_ready after listen_open and the metrics
 *                       endpoint), never before;
 *   STATUS=             every SERVICE_STATUS_MS: clients attached, bytes
 *                       in use (heap_stats, shared memory);
 *   WATCHDOG=1          from a loop timer at half of $WATCHDOG_USEC, so a
 *                       loop that is stuck stops pinging and systemd
 *                       restarts the daemon (sd_watchdog_enabled(3));
 *   RELOADING=1 + MONOTONIC_USEC=, then READY=1   around a SIGHUP reload
 *                       (systemd 253+ wants the timestamp; 252 ignores it);
 *   STOPPING=1          when the daemon starts to stop. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "daemon/daemon.h"

#define SERVICE_STATUS_MS 5000u

/* "Serving 3 clients, 64M bytes in use on /run/shmheap/shmheap.sock" */
static void status_text(struct daemon *d, char *buf, size_t len)
{
    struct heap_stats *st = malloc(sizeof(*st));
    char b[32];

    if (st && heap_stats(d->heap, st) == 0)
        (void) snprintf(buf, len, "Serving %u client%s, %s bytes in use on %s", d->nclients,
                        d->nclients == 1 ? "" : "s", bytes_name(st->bytes_in_use, b, sizeof(b)),
                        d->socket_path);
    else
        (void) snprintf(buf, len, "Serving %u client%s on %s", d->nclients,
                        d->nclients == 1 ? "" : "s", d->socket_path);
    free(st);
}

static void status_cb(uv_timer_t *t)
{
    struct daemon *d = t->data;
    char status[256];

    status_text(d, status, sizeof(status));
    (void) sd_notifyf(0, "STATUS=%s", status);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    struct daemon *d = h->data;

    if (signum == SIGHUP) {
        struct timespec ts;
        char status[256];

        log_info("SIGHUP: reloading the config");
        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        (void) sd_notifyf(0, "RELOADING=1\nSTATUS=Reloading the config\nMONOTONIC_USEC=%" PRIu64,
                          (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u);
        settings_reload(d);
        status_text(d, status, sizeof(status));
        (void) sd_notifyf(0, "READY=1\nSTATUS=%s", status);
        return;
    }
    log_info("%s: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    daemon_shutdown(d, 0);
}

static void watchdog_cb(uv_timer_t *t)
{
    (void) t;
    (void) sd_notify(0, "WATCHDOG=1");
}

int service_init(struct daemon *d)
{
    uv_signal_t *sigs[] = {&d->sig_hup, &d->sig_term, &d->sig_int};
    const int nums[] = {SIGHUP, SIGTERM, SIGINT};
    uint64_t usec = 0;
    int r;

    (void) signal(SIGPIPE, SIG_IGN);
    for (unsigned i = 0; i < 3; i++) {
        r = uv_signal_init(d->loop, sigs[i]);
        if (r == 0)
            r = uv_signal_start(sigs[i], signal_cb, nums[i]);
        if (r < 0) {
            log_error("cannot handle signal %d: %s", nums[i], uv_strerror(r));
            return -EIO;
        }
        sigs[i]->data = d;
    }
    (void) uv_timer_init(d->loop, &d->watchdog_timer);
    d->watchdog_timer.data = d;
    (void) uv_timer_init(d->loop, &d->status_timer);
    d->status_timer.data = d;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        /* Twice per period, as sd_watchdog_enabled(3) advises. */
        uint64_t ms = usec / 2000 ? usec / 2000 : 1;

        (void) uv_timer_start(&d->watchdog_timer, watchdog_cb, ms, ms);
        log_info("watchdog: pinging systemd every %" PRIu64 " ms", ms);
    }
    return 0;
}

void service_ready(struct daemon *d)
{
    char status[256];

    status_text(d, status, sizeof(status));
    (void) sd_notifyf(0, "READY=1\nSTATUS=%s\nMAINPID=%d", status, (int) getpid());
    /* Only under systemd (or whoever set $NOTIFY_SOCKET) is it worth it. */
    if (getenv("NOTIFY_SOCKET"))
        (void) uv_timer_start(&d->status_timer, status_cb, SERVICE_STATUS_MS, SERVICE_STATUS_MS);
}

void service_stopping(struct daemon *d)
{
    (void) d;
    (void) sd_notify(0, "STOPPING=1\nSTATUS=Stopping");
}

void service_close(struct daemon *d)
{
    uv_handle_t *hs[] = {(uv_handle_t *) &d->sig_hup, (uv_handle_t *) &d->sig_term,
                         (uv_handle_t *) &d->sig_int, (uv_handle_t *) &d->watchdog_timer,
                         (uv_handle_t *) &d->status_timer};

    for (unsigned i = 0; i < sizeof(hs) / sizeof(hs[0]); i++)
        if (hs[i]->loop && !uv_is_closing(hs[i]))
            uv_close(hs[i], NULL);
}
