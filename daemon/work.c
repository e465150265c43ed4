/* Heap jobs in libuv's thread pool: trim, verify, the reclamation of an
 * exited client and the automatic trim's releases (decay.c), so the loop
 * never blocks on them.
 *
 * Jobs run one at a time (work_lock): each walks or drains the whole heap,
 * and a verify running beside a reclamation would report the objects in
 * flight as problems. A job touches only the heap (through the daemon's
 * own attachment, which is thread-safe) and its own struct; everything
 * else (replies, logs of the result, freeing a client) happens in its
 * after_work callback, on the loop thread. This file knows no wire format:
 * the result of a job a connection asked for goes back to its op
 * (op_trim_done, op_verify_done), which builds the reply. A connection waiting for a job
 * is paused (conn.c), so it outlives the job even if its peer hangs up. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"

/* How long a periodic trim waits for busy threads to flush themselves. */
#define PERIODIC_TRIM_WAIT_MS 10u

struct job {
    uv_work_t req;
    struct daemon *d;
    enum job_kind kind;
    struct conn *conn;             /* who asked (NULL: the periodic timer) */
    struct client *cl;             /* JOB_RECLAIM (NULL for a retry) */
    struct reclaim_pending *retry; /* JOB_RECLAIM*: the retry of a failed one (retry.c) */
    uint64_t client_id;            /* JOB_RECLAIM, copied for the worker */
    uint32_t pid;   /* JOB_RECLAIM*: the client's process, from its peer credentials */
    bool exit_seen; /* JOB_RECLAIM: its process has exited for sure */
    bool held;      /* JOB_RECLAIM_DETACHED: owner entries or caches remain */
    unsigned wait_ms;
    int r, slots, arenas;
    struct heap_owned_reclaim owned;
    struct trim_result trim;
    struct verify_report *verify;
    struct release_req release; /* JOB_DECAY; its idle_slots is idle_slots */
    struct release_result released;
    uint32_t *idle_slots;
};

static void work_cb(uv_work_t *req)
{
    struct job *j = req->data;
    struct heap *h = j->d->heap;

    pthread_mutex_lock(&j->d->work_lock);
    switch (j->kind) {
    case JOB_TRIM:
        j->r = heap_trim(h, j->wait_ms, &j->trim);
        break;
    case JOB_VERIFY:
        j->r = heap_verify(h, j->verify);
        break;
    case JOB_RECLAIM:
        j->slots = heap_reclaim_client(h, j->client_id);
        j->arenas = heap_arena_destroy_session(h, j->client_id);
        /* After its caches: see heap_reclaim_owned(). Only a pidfd proves
         * the process gone; after a bare hang-up, only what it detached. */
        j->r = heap_reclaim_owned_by(h, j->client_id, j->pid, j->exit_seen, &j->owned);
        break;
    case JOB_RECLAIM_DETACHED: {
        struct heap_client_usage u = {0};

        /* Entries are matched by the daemon's pid, not only the id an
         * entry claims: a written entry cannot steer the sweep. */
        j->r = heap_reclaim_owned_by(h, j->client_id, j->pid, false, &j->owned);
        /* A clean detach leaves no owner entry and no cache: the client is
         * gone for good and takes its SESSION arenas with it. */
        (void) heap_client_usage(h, j->client_id, 0, &u);
        j->held = j->r < 0 || u.threads > 0 || heap_client_owners(h, j->client_id) > 0;
        if (!j->held)
            j->arenas = heap_arena_destroy_session(h, j->client_id);
        break;
    }
    case JOB_DECAY:
        j->r = heap_release(h, &j->release, &j->released);
        break;
    }
    pthread_mutex_unlock(&j->d->work_lock);
}

/* A requested trim's result goes to its op (op_admin.c), which logs it and
 * builds the reply; a periodic one is only logged. */
static void trim_done(struct job *j)
{
    if (j->conn) {
        op_trim_done(j->conn, j->r, &j->trim);
        return;
    }
    j->d->periodic_trim_running = false;
    if (j->r == -EAGAIN) {
        log_warning("periodic trim: the recyclers were not drained: no cache slot free");
        return;
    }
    if (j->r < 0) {
        log_error("periodic trim failed: %s", strerror(-j->r));
        return;
    }
    log_msg(j->trim.bytes_released ? LOG_INFO : LOG_DEBUG,
            "periodic trim: released %" PRIu64 " bytes, flushed %" PRIu32 " of %" PRIu32
            " thread caches, trim_gen %" PRIu64,
            j->trim.bytes_released, j->trim.caches_flushed, j->trim.caches_total, j->trim.trim_gen);
}

static void after_work_cb(uv_work_t *req, int status)
{
    struct job *j = req->data;
    struct daemon *d = j->d;
    int err;

    d->jobs--;
    if (status < 0) /* cancelled: never ran */
        j->r = j->slots = j->arenas = -ECANCELED;
    switch (j->kind) {
    case JOB_TRIM:
        trim_done(j);
        break;
    case JOB_VERIFY:
        /* On the loop thread: the daemon's own records are the loop's. */
        if (j->r == 0) {
            owner_verify(d, j->verify);
            owner_lock_report(d, j->verify);
        }
        op_verify_done(j->conn, j->r, j->verify);
        break;
    case JOB_RECLAIM:
        if (!j->retry) {
            clients_reclaimed(j->cl, j->slots, j->arenas, j->r, &j->owned);
            break;
        }
        err = reclaim_error(j->slots, j->arenas, j->r);
        if (err == 0)
            clients_log_reclaimed(j->client_id, (pid_t) j->pid, j->slots, j->arenas, &j->owned);
        retry_done(j->retry, err);
        break;
    case JOB_RECLAIM_DETACHED:
        /* No caches here (0); the arenas go only once the sweep has. */
        err = reclaim_error(0, j->arenas, j->r);
        if (err < 0) {
            /* Retried (retry.c) until it succeeds: the record stays. */
            if (j->retry)
                retry_done(j->retry, err);
            else
                retry_start(d, j->client_id, (pid_t) j->pid, false, false, err);
            break;
        }
        if (j->owned.objects)
            log_info("client %" PRIu64 " detached: freed %" PRIu64 " objects (%" PRIu64
                     " bytes) it had not shared",
                     j->client_id, j->owned.objects, j->owned.bytes);
        clients_detach_swept(d, j->client_id, j->held, j->arenas);
        if (j->retry)
            retry_done(j->retry, 0);
        break;
    case JOB_DECAY:
        decay_released(d, j->r, &j->released, j->idle_slots, j->release.nidle);
        break;
    }
    if (j->kind != JOB_VERIFY || j->r != 0)
        owner_lock_report(d, NULL); /* the log says what the job's locks found */
    if (j->conn)
        conn_resume(j->conn);
    free(j->idle_slots);
    free(j->verify);
    free(j);
}

static int job_start(struct daemon *d, struct job *j)
{
    int r;

    j->d = d;
    j->req.data = j;
    r = uv_queue_work(d->loop, &j->req, work_cb, after_work_cb);
    if (r < 0) {
        free(j->idle_slots);
        free(j->verify);
        free(j);
        return -EAGAIN;
    }
    d->jobs++;
    if (j->conn)
        conn_pause(j->conn);
    return 0;
}

int work_trim(struct daemon *d, struct conn *c, unsigned wait_ms)
{
    struct job *j = calloc(1, sizeof(*j));

    if (!j)
        return -ENOMEM;
    j->kind = JOB_TRIM;
    j->conn = c;
    j->wait_ms = wait_ms;
    return job_start(d, j);
}

int work_verify(struct daemon *d, struct conn *c)
{
    struct job *j = calloc(1, sizeof(*j));

    if (!j)
        return -ENOMEM;
    j->verify = calloc(1, sizeof(*j->verify));
    if (!j->verify) {
        free(j);
        return -ENOMEM;
    }
    j->kind = JOB_VERIFY;
    j->conn = c;
    return job_start(d, j);
}

int work_reclaim_detached(struct daemon *d, uint64_t client_id, pid_t pid)
{
    struct job *j = calloc(1, sizeof(*j));

    if (!j)
        return -ENOMEM;
    j->kind = JOB_RECLAIM_DETACHED;
    j->client_id = client_id;
    j->pid = pid > 0 ? (uint32_t) pid : 0;
    return job_start(d, j);
}

int work_reclaim(struct daemon *d, struct client *cl)
{
    struct job *j = calloc(1, sizeof(*j));

    if (!j)
        return -ENOMEM;
    j->kind = JOB_RECLAIM;
    j->cl = cl;
    j->client_id = cl->id;
    j->pid = cl->peer.pid > 0 ? (uint32_t) cl->peer.pid : 0;
    j->exit_seen = cl->exit_seen;
    return job_start(d, j);
}

int work_reclaim_retry(struct daemon *d, struct reclaim_pending *p)
{
    struct job *j = calloc(1, sizeof(*j));
    bool exited;

    if (!j)
        return -ENOMEM;
    retry_job_args(p, &j->client_id, &j->pid, &exited, &j->exit_seen);
    j->kind = exited ? JOB_RECLAIM : JOB_RECLAIM_DETACHED;
    j->retry = p;
    return job_start(d, j);
}

int work_release(struct daemon *d, const struct release_req *req)
{
    struct job *j = calloc(1, sizeof(*j));

    if (!j)
        return -ENOMEM;
    j->kind = JOB_DECAY;
    j->release = *req;
    if (req->nidle) {
        j->idle_slots = malloc(req->nidle * sizeof(*j->idle_slots));
        if (!j->idle_slots) {
            free(j);
            return -ENOMEM;
        }
        memcpy(j->idle_slots, req->idle_slots, req->nidle * sizeof(*j->idle_slots));
    }
    j->release.idle_slots = j->idle_slots;
    return job_start(d, j);
}

static void trim_timer_cb(uv_timer_t *t)
{
    struct daemon *d = t->data;

    if (d->periodic_trim_running || d->stopping)
        return; /* the last one is still going: skip a beat */
    if (work_trim(d, NULL, PERIODIC_TRIM_WAIT_MS) == 0)
        d->periodic_trim_running = true;
}

void work_trim_timer_update(struct daemon *d)
{
    uint32_t ms = d->cfg.shm.trim_interval_ms;

    (void) uv_timer_stop(&d->trim_timer);
    if (ms > 0 && !d->stopping)
        (void) uv_timer_start(&d->trim_timer, trim_timer_cb, ms, ms);
}
