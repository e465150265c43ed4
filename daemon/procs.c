/* Processes: one pidfd per client process, however many attachments it
 * makes.
 *
 * A client is watched until its process exits (clients.c), because what
 * it left in the heap is reclaimed then. A process that attaches and
 * detaches in a loop, or holds many attachments, must not cost the daemon
 * an fd per attachment: every client of one process shares one struct
 * proc (its pidfd and the uv_poll on it), counted by refs, and the pidfd
 * is closed when the last client that needs it goes.
 *
 * Sharing by pid is safe while the watched process lives: its pid cannot
 * be reused until it has exited, and a pidfd that says it has exited is
 * never shared again (a new process with the same pid gets its own). */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/daemon.h"

struct proc {
    struct link link; /* in d->procs while it may be shared */
    struct daemon *d;
    pid_t pid;
    int pidfd;
    uv_poll_t poll;
    unsigned refs; /* clients watching through it */
    bool exited;   /* its pidfd said so */
};

static void proc_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

static void proc_close(struct proc *p)
{
    struct daemon *d = p->d;

    if (p->link.next != &p->link) {
        link_remove(&p->link);
        d->nprocs--;
    }
    /* uv_close stops the poll at once, so the fd may be closed right after. */
    uv_close((uv_handle_t *) &p->poll, proc_closed_cb);
    (void) close(p->pidfd);
    p->pidfd = -1;
}

static void proc_poll_cb(uv_poll_t *h, int status, int events)
{
    struct proc *p = h->data;

    (void) status;
    (void) events;
    if (p->exited)
        return;
    p->exited = true;
    (void) uv_poll_stop(&p->poll);
    /* Held across the walk: each exiting client drops its reference. */
    p->refs++;
    clients_process_exited(p->d, p);
    procs_unwatch(p);
}

/* Whether p's process has exited, looking at its pidfd now. */
static bool proc_gone(struct proc *p)
{
    struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};

    return p->exited || poll(&pfd, 1, 0) > 0;
}

int procs_watch(struct daemon *d, pid_t pid, int conn_fd, struct proc **ret)
{
    struct proc *p;
    int r;

    for (struct link *l = d->procs.next; l != &d->procs; l = l->next) {
        p = container_of(l, struct proc, link);
        if (p->pid != pid || proc_gone(p))
            continue; /* an exited one's callback is still to come */
        p->refs++;
        *ret = p;
        return 0;
    }
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->d = d;
    p->pid = pid;
    link_init(&p->link);
    p->pidfd = peer_pidfd(conn_fd, pid);
    if (p->pidfd < 0) {
        r = p->pidfd;
        free(p);
        return r;
    }
    r = uv_poll_init(d->loop, &p->poll, p->pidfd);
    if (r < 0) {
        (void) close(p->pidfd);
        free(p);
        return -EIO;
    }
    p->poll.data = p;
    p->refs = 1;
    link_insert(&d->procs, &p->link);
    d->nprocs++;
    (void) uv_poll_start(&p->poll, UV_READABLE, proc_poll_cb);
    *ret = p;
    return 0;
}

void procs_unwatch(struct proc *p)
{
    if (--p->refs == 0)
        proc_close(p);
}

bool procs_exited(struct proc *p)
{
    return proc_gone(p);
}

pid_t procs_pid(const struct proc *p)
{
    return p->pid;
}
