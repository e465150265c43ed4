/* systemd integration and signals (socket activation and the fd store:
 * fdstore.c),
 * READY=1 / STOPPING=1 / WATCHDOG=1 (sd_notify), SIGHUP reloads the config,
 * SIGTERM and SIGINT stop the daemon. Without systemd the sd_* calls do
 * nothing. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "daemon/daemon.h"

static void signal_cb(uv_signal_t *h, int signum)
{
    struct daemon *d = h->data;

    if (signum == SIGHUP) {
        log_info("SIGHUP: reloading the config");
        (void) sd_notify(0, "RELOADING=1");
        settings_reload(d);
        (void) sd_notify(0, "READY=1");
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
    (void) sd_notifyf(0, "READY=1\nSTATUS=Serving the heap on %s\nMAINPID=%d", d->socket_path,
                      (int) getpid());
}

void service_stopping(struct daemon *d)
{
    (void) d;
    (void) sd_notify(0, "STOPPING=1");
}

void service_close(struct daemon *d)
{
    uv_handle_t *hs[] = {(uv_handle_t *) &d->sig_hup, (uv_handle_t *) &d->sig_term,
                         (uv_handle_t *) &d->sig_int, (uv_handle_t *) &d->watchdog_timer};

    for (unsigned i = 0; i < 4; i++)
        if (hs[i]->loop && !uv_is_closing(hs[i]))
            uv_close(hs[i], NULL);
}
