/* Clients: attachments made by hello, and what happens when they go.
 *
 * A client is watched two ways. Its connection closing is a detach (the
 * library flushed its caches first); its process exiting, seen on a pidfd
 * (SO_PEERPIDFD, else pidfd_open; one per process, shared by its clients:
 * procs.c), is the end: the daemon then gives back the caches of every
 * slot tagged with the client's id and destroys its SESSION arenas
 * (work.c runs that in the pool). After a detach the daemon frees what the
 * attachment kept private and looks at what it still holds: after a clean
 * detach nothing, and its record goes with its SESSION arenas; a client
 * whose connection dropped while its attachment lives (owner entry still
 * live, or caches left) is kept until it attaches again or its process
 * exits, so that whatever it left is reclaimed then. Polling pids or
 * heartbeats is not used: both misfire under load and on pid reuse. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "shm/atomic.h"

static uint64_t now_ns(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static void client_maybe_free(struct client *cl)
{
    if (!cl->proc && !cl->conn && cl->link.next == &cl->link)
        free(cl);
}

static void client_unwatch(struct client *cl)
{
    if (cl->proc)
        procs_unwatch(cl->proc);
    cl->proc = NULL;
}

/* The client's process is gone: stop watching it and reclaim. */
static void client_exited(struct client *cl, bool seen)
{
    struct daemon *d = cl->d;
    int r;

    if (cl->exited)
        return;
    cl->exited = true;
    cl->exit_seen = seen;
    client_unwatch(cl);
    if (cl->conn) {
        /* Its socket's hang-up is still on its way. */
        cl->conn->client = NULL;
        cl->conn = NULL;
        d->nclients--;
    }
    /* The exit's reclaim covers what a detach's sweep still had to do. */
    retry_drop_detached(d, cl->id);
    r = work_reclaim(d, cl);
    if (r < 0) {
        retry_start(d, cl->id, cl->peer.pid, true, seen, r);
        link_remove(&cl->link);
        client_maybe_free(cl);
    }
    metrics_clients_changed(d);
}

void clients_process_exited(struct daemon *d, struct proc *p)
{
    struct link *l = d->clients.next;

    while (l != &d->clients) {
        struct client *cl = container_of(l, struct client, link);

        /* client_exited may unlink cl (never another client). */
        l = l->next;
        if (cl->proc == p)
            client_exited(cl, true);
    }
}

/* Starts watching cl's process: the watch its other clients share, else a
 * new pidfd from the connection (SO_PEERPIDFD) or pidfd_open. */
static void client_watch(struct client *cl, int conn_fd)
{
    int r = procs_watch(cl->d, cl->peer.pid, conn_fd, &cl->proc);

    if (r < 0) {
        log_warning("cannot watch pid %d (%s): its caches will be reclaimed when its connection "
                    "closes",
                    (int) cl->peer.pid, strerror(-r));
        cl->proc = NULL;
    }
}

struct client *clients_find(struct daemon *d, uint64_t id)
{
    for (struct link *l = d->clients.next; l != &d->clients; l = l->next) {
        struct client *cl = container_of(l, struct client, link);

        if (cl->id == id)
            return cl;
    }
    return NULL;
}

int clients_attach(struct daemon *d, struct conn *c, uint64_t resume_id, struct client **ret)
{
    struct client *cl = resume_id ? clients_find(d, resume_id) : NULL;

    if (cl) {
        /* Known and not attached (op_hello checked): a client of the
         * earlier daemon (clients_adopt), or one whose connection dropped. */
        cl->peer = c->peer;
        cl->conn = c;
        c->client = cl;
        cl->held = false;
        d->nclients++;
        if (!cl->proc)
            client_watch(cl, c->fd);
        metrics_clients_changed(d);
        log_info("client %" PRIu64 " attached again: pid %d, uid %u (connection %" PRIu64 ")",
                 cl->id, (int) cl->peer.pid, (unsigned) cl->peer.uid, c->serial);
        *ret = cl;
        return 0;
    }
    cl = calloc(1, sizeof(*cl));
    if (!cl)
        return -ENOMEM;
    cl->d = d;
    if (resume_id) {
        cl->id = resume_id;
    } else {
        cl->id = ++d->next_client_id;
        /* A restarted daemon goes on from here (shm/adopt.c). */
        heap_header_set_client_id_next(&d->hdr, d->next_client_id);
    }
    cl->peer = c->peer;
    cl->attached_ns = now_ns();
    client_watch(cl, c->fd);
    cl->conn = c;
    c->client = cl;
    link_insert(&d->clients, &cl->link);
    d->nclients++;
    metrics_clients_changed(d);
    log_info("client %" PRIu64 " %s: pid %d, uid %u (connection %" PRIu64 ")", cl->id,
             resume_id ? "attached again" : "attached", (int) cl->peer.pid, (unsigned) cl->peer.uid,
             c->serial);
    *ret = cl;
    return 0;
}

int clients_adopt(struct daemon *d, uint64_t id, pid_t pid)
{
    struct client *cl;

    if (clients_find(d, id))
        return -EEXIST; /* one entry per client id is enough */
    cl = calloc(1, sizeof(*cl));
    if (!cl)
        return -ENOMEM;
    cl->d = d;
    cl->id = id;
    cl->peer.pid = pid;
    {
        char proc[32];
        struct stat st;

        /* Until it says hello again (SO_PEERCRED then), its uid is that of
         * its /proc entry: the per-uid quota (quota.c) counts it there. */
        snprintf(proc, sizeof(proc), "/proc/%d", (int) pid);
        cl->peer.uid = stat(proc, &st) == 0 ? st.st_uid : (uid_t) -1;
        cl->peer.gid = stat(proc, &st) == 0 ? st.st_gid : (gid_t) -1;
    }
    cl->attached_ns = now_ns();
    client_watch(cl, -1);
    if (!cl->proc) {
        free(cl);
        return -ESRCH;
    }
    link_insert(&d->clients, &cl->link);
    log_info("client %" PRIu64 " (pid %d) of the earlier daemon runs on; watching it until it "
             "attaches again",
             id, (int) pid);
    return 0;
}

void clients_detach(struct client *cl)
{
    struct daemon *d = cl->d;

    if (!cl->conn)
        return;
    cl->conn = NULL;
    d->nclients--;
    metrics_clients_changed(d);
    if (cl->exited)
        return;
    /* Without a pidfd the hang-up is all we will ever know: reclaim now.
     * With one, a process that has already exited is reclaimed at once
     * (its hang-up usually comes just before its pidfd turns readable). */
    if (!cl->proc || procs_exited(cl->proc)) {
        client_exited(cl, cl->proc != NULL);
        return;
    }
    /* A clean detach marked its owner entry: what it kept private is
     * unreachable now and can go at once. The job then looks at what the
     * client still holds: nothing after a clean detach, and the record
     * goes (clients_detach_swept); a connection that dropped while its
     * attachment lives keeps its owner entry, and the record stays until
     * the process exits. */
    if (work_reclaim_detached(d, cl->id, cl->peer.pid) < 0) {
        cl->held = true;
        log_warning("client %" PRIu64 ": cannot schedule freeing its private objects now; they "
                    "go when it exits",
                    cl->id);
    }
}

void clients_detach_swept(struct daemon *d, uint64_t client_id, bool held, int arenas)
{
    struct client *cl = clients_find(d, client_id);

    if (!cl || cl->conn || cl->exited)
        return; /* attached again, or its exit is being reclaimed */
    if (held) {
        cl->held = true;
        metrics_clients_changed(d);
        log_info("client %" PRIu64 " (pid %d) detached; what it still holds is reclaimed when "
                 "it exits",
                 cl->id, (int) cl->peer.pid);
        return;
    }
    if (arenas > 0)
        log_info("client %" PRIu64 " (pid %d) detached: destroyed %d session arenas", cl->id,
                 (int) cl->peer.pid, arenas);
    else
        log_info("client %" PRIu64 " (pid %d) detached", cl->id, (int) cl->peer.pid);
    /* Nothing left to reclaim: the record and its share of the process's
     * pidfd go now, so attach/detach cycles cost the daemon nothing. */
    client_unwatch(cl);
    link_remove(&cl->link);
    metrics_clients_changed(d);
    client_maybe_free(cl);
}

void clients_log_reclaimed(
        uint64_t id, pid_t pid, int slots, int arenas, const struct heap_owned_reclaim *owned)
{
    log_info("client %" PRIu64 " (pid %d) exited: reclaimed %d thread caches, destroyed %d "
             "session arenas, freed %" PRIu64 " objects (%" PRIu64 " bytes) it had not shared",
             id, (int) pid, slots, arenas, owned->objects, owned->bytes);
}

void clients_reclaimed(struct client *cl,
                       int slots,
                       int arenas,
                       int owned_r,
                       const struct heap_owned_reclaim *owned)
{
    int err = reclaim_error(slots, arenas, owned_r);

    if (err < 0) /* retried until it succeeds (retry.c); the record goes now */
        retry_start(cl->d, cl->id, cl->peer.pid, true, cl->exit_seen, err);
    else
        clients_log_reclaimed(cl->id, cl->peer.pid, slots, arenas, owned);
    link_remove(&cl->link);
    metrics_clients_changed(cl->d);
    client_maybe_free(cl);
}

void clients_close_all(struct daemon *d)
{
    struct link *l = d->clients.next;

    while (l != &d->clients) {
        struct client *cl = container_of(l, struct client, link);

        l = l->next;
        if (cl->exited)
            continue; /* its reclamation job frees it */
        client_unwatch(cl);
        if (cl->conn) {
            cl->conn->client = NULL;
            cl->conn = NULL;
            d->nclients--;
        }
        link_remove(&cl->link);
        client_maybe_free(cl);
    }
    metrics_clients_changed(d);
}

void clients_slot_usage(struct daemon *d,
                        uint64_t client_id,
                        uint32_t *ret_threads,
                        uint64_t *ret_bytes)
{
    struct heap_client_usage u = {0};

    (void) heap_client_usage(d->heap, client_id, 0, &u);
    *ret_threads = u.threads;
    /* Net bytes: a client that frees more than it allocates (others'
     * objects) counts 0, not a negative figure. */
    *ret_bytes = u.bytes_in_use > 0 ? (uint64_t) u.bytes_in_use : 0;
}
