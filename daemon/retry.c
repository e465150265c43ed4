/* Reclaims that failed, retried until they succeed.
 *
 * The daemon's segment locks wait at most DAEMON_LOCK_WAIT_MS (issue 9: a
 * client stopped or stuck holding one must not hang a job thread). A
 * reclaim that meets such a lock fails with -ETIMEDOUT, and what the dead
 * (or detached) client held is still held: its slot stays OWNED by its dead
 * pid with the rest of its cache in its bins and handoff word, its owner
 * entry SWEEPING or DETACHED, its SESSION arenas alive (shm/reclaim.c
 * leaves each of them whole for a later try). So the reclaim is retried: a
 * record per failed reclaim (client id, pid, kind) and a timer, 100 ms
 * doubling to 10 s, for as long as the daemon runs. One record per client
 * and its timer is only re-armed once its job is done, so one client is
 * never reclaimed by two jobs at once (jobs run one at a time anyway:
 * work_lock).
 *
 * At shutdown the timers stop and the records go: what they still hold is
 * in shared memory as above, and the next daemon's adoption reclaims it
 * (heap_reclaim_dead: slots and owner entries of dead pids, DETACHED and
 * SWEEPING entries; the SESSION arenas of clients gone from the tables). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "shm/atomic.h"

#define RETRY_FIRST_MS 100u
#define RETRY_MAX_MS   10000u

struct reclaim_pending {
    struct link link; /* in d->reclaims while pending */
    struct daemon *d;
    uv_timer_t timer;
    uint64_t client_id;
    pid_t pid;
    bool exited;    /* the exit's reclaim, else a detach's sweep */
    bool exit_seen; /* its pidfd said so */
    bool running;   /* its job is queued or running */
    bool dropped;   /* no longer wanted: freed when its job is done */
    uint32_t delay_ms;
    uint64_t tries;
};

static void pending_count(struct daemon *d, int delta)
{
    /* Only the loop writes it (a load and a store suffice); relaxed: other
     * threads read a number (loop_figures_read), nothing published with it. */
    store_relaxed(&d->reclaims_pending, load_relaxed(&d->reclaims_pending) + (uint32_t) delta);
}

static void pending_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

/* Unlinks p and frees it once its timer is closed. */
static void pending_free(struct reclaim_pending *p)
{
    if (p->link.next != &p->link) {
        link_remove(&p->link);
        pending_count(p->d, -1);
    }
    uv_close((uv_handle_t *) &p->timer, pending_closed_cb);
}

static const char *kind_name(const struct reclaim_pending *p)
{
    return p->exited ? "exited" : "detached";
}

static void retry_timer_cb(uv_timer_t *t)
{
    struct reclaim_pending *p = t->data;
    struct daemon *d = p->d;
    int r;

    if (d->stopping || p->running)
        return;
    p->tries++;
    store_relaxed(&d->reclaim_retries, load_relaxed(&d->reclaim_retries) + 1);
    log_info("client %" PRIu64 " (pid %d) %s: retrying its reclaim (try %" PRIu64 ")", p->client_id,
             (int) p->pid, kind_name(p), p->tries);
    r = work_reclaim_retry(d, p);
    if (r < 0) {
        log_warning("client %" PRIu64 ": cannot queue the retry of its reclaim: %s", p->client_id,
                    strerror(-r));
        (void) uv_timer_start(&p->timer, retry_timer_cb, p->delay_ms, 0);
        return;
    }
    p->running = true;
}

static void pending_arm(struct reclaim_pending *p, int err)
{
    log_warning("client %" PRIu64 " (pid %d) %s; reclaiming failed: %s; retrying in %" PRIu32
                " ms (%" PRIu32 " reclaims pending)",
                p->client_id, (int) p->pid, kind_name(p), strerror(-err), p->delay_ms,
                load_relaxed(&p->d->reclaims_pending));
    (void) uv_timer_start(&p->timer, retry_timer_cb, p->delay_ms, 0);
}

static struct reclaim_pending *pending_find(struct daemon *d, uint64_t client_id)
{
    for (struct link *l = d->reclaims.next; l != &d->reclaims; l = l->next) {
        struct reclaim_pending *p = container_of(l, struct reclaim_pending, link);

        if (p->client_id == client_id)
            return p;
    }
    return NULL;
}

void retry_start(
        struct daemon *d, uint64_t client_id, pid_t pid, bool exited, bool exit_seen, int err)
{
    struct reclaim_pending *p;

    if (d->stopping) {
        log_error("client %" PRIu64 " (pid %d): reclaiming failed at shutdown: %s; the next "
                  "daemon's adoption reclaims it",
                  client_id, (int) pid, strerror(-err));
        return;
    }
    p = pending_find(d, client_id);
    if (p) {
        /* A detach's sweep pending, and now the exit's failed: the exit's
         * reclaim covers both. */
        p->exited |= exited;
        p->exit_seen |= exit_seen;
        if (!p->running)
            pending_arm(p, err);
        return;
    }
    p = calloc(1, sizeof(*p));
    if (!p || uv_timer_init(d->loop, &p->timer) < 0) {
        free(p);
        log_error("client %" PRIu64 " (pid %d): reclaiming failed (%s) and cannot be retried: "
                  "out of memory; the next trim or adoption reclaims it",
                  client_id, (int) pid, strerror(-err));
        return;
    }
    p->d = d;
    p->timer.data = p;
    p->client_id = client_id;
    p->pid = pid;
    p->exited = exited;
    p->exit_seen = exit_seen;
    p->delay_ms = RETRY_FIRST_MS;
    link_insert(&d->reclaims, &p->link);
    pending_count(d, 1);
    pending_arm(p, err);
}

void retry_done(struct reclaim_pending *p, int r)
{
    struct daemon *d = p->d;

    p->running = false;
    if (p->dropped || d->stopping) {
        pending_free(p);
        return;
    }
    if (r < 0) {
        p->delay_ms = p->delay_ms >= RETRY_MAX_MS / 2 ? RETRY_MAX_MS : p->delay_ms * 2;
        pending_arm(p, r);
        return;
    }
    log_info("client %" PRIu64 " (pid %d) %s: its reclaim succeeded after %" PRIu64 " retries",
             p->client_id, (int) p->pid, kind_name(p), p->tries);
    pending_free(p);
}

void retry_job_args(const struct reclaim_pending *p,
                    uint64_t *ret_client_id,
                    uint32_t *ret_pid,
                    bool *ret_exited,
                    bool *ret_exit_seen)
{
    *ret_client_id = p->client_id;
    *ret_pid = p->pid > 0 ? (uint32_t) p->pid : 0;
    *ret_exited = p->exited;
    *ret_exit_seen = p->exit_seen;
}

void retry_drop_detached(struct daemon *d, uint64_t client_id)
{
    struct reclaim_pending *p = pending_find(d, client_id);

    if (!p || p->exited)
        return;
    if (p->running) {
        /* Its job's result is ignored; the record goes with it. */
        p->dropped = true;
        link_remove(&p->link);
        pending_count(d, -1);
        return;
    }
    (void) uv_timer_stop(&p->timer);
    pending_free(p);
}

void retry_close_all(struct daemon *d)
{
    uint32_t n = load_relaxed(&d->reclaims_pending);
    struct link *l = d->reclaims.next;

    if (n)
        log_warning("%" PRIu32 " reclaims still pending at shutdown: the next daemon's adoption "
                    "reclaims what they hold",
                    n);
    while (l != &d->reclaims) {
        struct reclaim_pending *p = container_of(l, struct reclaim_pending, link);

        l = l->next;
        (void) uv_timer_stop(&p->timer);
        if (p->running) {
            p->dropped = true; /* freed when its job is done */
            link_remove(&p->link);
            pending_count(d, -1);
            continue;
        }
        pending_free(p);
    }
}

void loop_figures_read(struct daemon *d, struct loop_figures *ret)
{
    /* relaxed: pairs with the relaxed stores of the loop (quota.c, above);
     * numbers only. */
    ret->quota_refused = load_relaxed(&d->quota.refused);
    ret->reclaims_pending = load_relaxed(&d->reclaims_pending);
    ret->reclaim_retries = load_relaxed(&d->reclaim_retries);
}
