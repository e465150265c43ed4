/* libshmheap internals: the attachment (struct client), the connection to
 * the daemon and error helpers. Grouped by source file.
 *
 * An attachment is a connection to shmheapd (kept open for the life of the
 * handle: the daemon tracks the client by it) plus the core's mapping of the
 * heap (struct heap, shm/heap.h), which does all the allocation work. The
 * public handle (shmheap_t *) is the core's struct heap itself, so the
 * malloc family is one jump into the core (measured: a load of a handle
 * member before the jump cost 0.2 ns per call more); the client's own state
 * (struct client) hangs off the heap's hooks.ctx. struct shmheap is never
 * defined: a shmheap_t * is only ever converted back to a struct heap *.
 *
 * Lock order: conn.lock, then (inside the core's hooks) nothing else; the
 * core calls the hooks with its own local_lock held, so a hook must never
 * call back into the core. */
#ifndef CLIENT_CLIENT_H
#define CLIENT_CLIENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "shmheap.h"

#include "shm/heap.h"
#include "shm/internal.h"

/* File descriptors one reply may carry: hello lists every segment. */
#define CONN_FDS_MAX SHM_MAX_SEGMENTS
/* How long a reply may take beyond what the request itself asks to wait. */
#define CONN_TIMEOUT_MS 30000u

/* One connection to the daemon: one request and its reply at a time. */
struct conn {
    int fd;
    pthread_mutex_t lock; /* serialises request/reply pairs of all threads */
    char path[108];       /* sun_path */
};

/* A parsed reply: the JSON (owned), the fds that came with it (owned, in
 * arrival order) and, on failure, the daemon's code and message. */
struct reply {
    cJSON *json;
    int fds[CONN_FDS_MAX];
    unsigned nfds;
    bool ok;
    const char *code;    /* into json; "" when ok */
    const char *message; /* into json; "" when ok */
};

enum rc_state {
    RC_CONNECTED = 0,
    RC_LOST,     /* the connection dropped: the watcher reconnects */
    RC_ORPHANED, /* the daemon there serves another heap, or refused us: never again */
};

struct client {
    struct heap *heap; /* the attachment; NULL until heap_attach returned */
    pid_t pid;         /* the process that attached (fork rule) */
    uint64_t client_id;
    struct conn conn;
    /* Segment fds received but not yet handed to the core, by index: from
     * hello, and from grow replies. Under conn.lock. */
    int pending_fd[SHM_MAX_SEGMENTS];
    int header_fd; /* from client_hello until heap_attach maps it (hooks.open_header) */
    /* Reconnection (reconnect.c). Lock order: conn.lock, then rc_lock. */
    pthread_mutex_t rc_lock;
    pthread_cond_t rc_cond; /* broadcast when state leaves RC_LOST */
    uint32_t rc_state;      /* enum rc_state, under rc_lock */
    uint64_t rc_epoch;      /* connections made so far, under rc_lock */
    uint64_t reconnects;    /* under rc_lock */
    pthread_t rc_thread;
    bool rc_running;
    bool rc_started;     /* the watcher is past its start-up, under rc_lock */
    int rc_wake;         /* eventfd: tells the watcher to stop */
    struct track *track; /* track.c: under valgrind or ASan, else NULL */
};

/* The owner entry of the attachment as the protocol's `owner` (index + 1),
 * or 0 (none, or not attached yet). */
static inline unsigned handle_heap_owner(const struct client *c)
{
    return c->heap ? c->heap->owner_tag : 0;
}

static inline struct heap *handle_heap(shmheap_t *h)
{
    return (struct heap *) (void *) h;
}

/* The client state of a handle (not NULL). */
static inline struct client *client_of(shmheap_t *h)
{
    return handle_heap(h)->hooks.ctx;
}

/* ---- conn.c ---- */
/* The socket path rule of INTERFACE.md into buf; -SHMHEAP_EINVAL when it
 * does not fit a sockaddr_un. */
/* ---- track.c: memory debuggers (valgrind's memcheck, ASan) ---- */
struct track;
/* Tracks h's objects if a tool is there (SHMHEAP_TRACK=0: never). */
int client_track_start(struct client *c, struct heap *h);
void client_track_stop(struct client *c);
/* The size asked for a tracked object p, 0 if p is not one. */
size_t client_track_size(struct client *c, const void *p);
/* realloc that always moves (each object keeps the size the tool knows). */
void *client_track_realloc(struct client *c, void *p, size_t size);
/* p is shared (shmheap_to_off): no longer this process's to free. */
void client_track_share(struct client *c, const void *p);
/* Frees what the quarantine holds (before the detach). */
void client_track_flush(struct client *c);

int conn_default_path(const char *arg, char *buf, size_t len);
/* Connects (SOCK_CLOEXEC). -SHMHEAP_ECONNECT with the path in
 * shmheap_last_error() when nobody listens there. */
int conn_open(struct conn *c, const char *path);
void conn_close(struct conn *c);
/* Sends `req` (one object; serialised here) and reads its reply, collecting
 * fds. timeout_ms bounds the wait for the reply. The caller holds c->lock.
 * Returns 0 with *ret filled (ok or not: see ret->ok), or
 * -SHMHEAP_EIO / -SHMHEAP_EPROTO (with shmheap_last_error() set). */
int conn_request_locked(struct conn *c, const cJSON *req, unsigned timeout_ms, struct reply *ret);
/* Same, taking c->lock. */
int conn_request(struct conn *c, const cJSON *req, unsigned timeout_ms, struct reply *ret);
/* Frees the JSON and closes every fd still in the reply. */
void reply_free(struct reply *r);
/* Maps a failure reply to a negative SHMHEAP_E* code, and records its
 * message with shmheap_last_error(). */
int reply_error(const struct reply *r, const char *what);
/* The reply member `name` as an unsigned integer (a JSON number that is a
 * whole number >= 0); false if missing or ill-typed. */
bool json_get_u64(const cJSON *obj, const char *name, uint64_t *ret);

/* ---- error.c ---- */
/* Records a message for shmheap_last_error() (thread-local). */
void client_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void client_clear_error(void);
/* Maps a negative errno from the core (or the OS) to a negative
 * SHMHEAP_E* code. */
int client_errno_code(int neg_errno);

/* ---- reconnect.c ---- */
/* Starts the watcher thread of an attached client; 0 or -SHMHEAP_E*. */
int reconnect_start(struct client *c);
/* Stops and joins it (detach). */
void reconnect_stop(struct client *c);
/* One request through c's connection, riding out a daemon restart: while
 * the connection is down it waits for the watcher to reconnect (at most
 * the control segment's reconnect_wait_ms), and a request that fails
 * because the connection dropped is sent once more on the new one. Takes
 * conn.lock. -SHMHEAP_ECONNECT when no daemon came back in time. */
int client_call(struct client *c, const cJSON *req, unsigned timeout_ms, struct reply *ret);

/* ---- attach.c ---- */
/* Sends hello on conn (resume: a re-hello with c's client id and owner
 * entry), checks the reply and files the heap segments' fds into fds[] by
 * index; then asks for the header page (header_page) and puts its fd in
 * *ret_header_fd. Returns the control segment's fd (the caller's to close,
 * as *ret_header_fd) or a
 * negative SHMHEAP_E* code. */
int client_hello(struct client *c,
                 struct conn *conn,
                 bool resume,
                 unsigned timeout_ms,
                 int fds[SHM_MAX_SEGMENTS],
                 int *ret_header_fd);
/* True when h is used in a process other than the one that attached it
 * (a fork's child). Calls getpid(): for the cold, int-returning paths. */
bool client_forked(shmheap_t *h);
/* Same, without a system call: compares with a pid cached at attach and
 * refreshed by a pthread_atfork child handler. For the warm paths
 * (arena and pool allocation). */
bool client_forked_fast(shmheap_t *h);

#endif
