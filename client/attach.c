/* Attaching to shmheapd and detaching.
 *
 * shmheap_attach: connect to the socket (conn.c), send `hello`, receive the
 * segment list with one fd per segment (index 0 is the control segment),
 * ask for the header page's fd (header_page), and hand the control fd to the core's
 * heap_attach, which maps the header page read-only over the control
 * segment's first page (hooks.open_header) and every live segment through
 * hooks.open_segment. The connection stays open for the
 * life of the handle: the daemon tracks the client by it and, when it
 * closes or the process dies, reclaims what the client left (caches,
 * SESSION arenas).
 *
 * The hooks (called by the core, possibly from any thread, possibly with
 * the core's local_lock held, so they never call back into the core):
 *   open_segment  an fd received earlier (hello or grow) if there is one,
 *                 else the daemon's `segment` op;
 *   grow          the daemon's `grow` op; the reply's fd is kept for the
 *                 open_segment call that follows.
 *
 * Fork: a child inherits the handle, the socket and the mappings. It must
 * not use them (the parent's threads own the caches and the connection):
 * the core refuses its allocations (ESTALE), the int-returning calls here
 * return -SHMHEAP_EFORKED, and the hooks refuse before touching the
 * connection's lock, which a parent's thread may have held at fork. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shmheap.h"

#include "client/client.h"
#include "shm/layout.h"
#include "wire/wire.h"

/* This process's pid, refreshed in a fork's child; see client_forked_fast. */
static pid_t client_pid;
static pthread_once_t client_once = PTHREAD_ONCE_INIT;

static void client_atfork_child(void)
{
    store_relaxed(&client_pid, getpid());
}

static void client_init_once(void)
{
    store_relaxed(&client_pid, getpid());
    (void) pthread_atfork(NULL, NULL, client_atfork_child);
}

bool client_forked(shmheap_t *h)
{
    return handle_heap(h)->pid != getpid();
}

bool client_forked_fast(shmheap_t *h)
{
    return handle_heap(h)->pid != load_relaxed(&client_pid);
}

/* Keeps fd for segment index until the core asks for it. conn.lock held. */
static void pending_put(struct client *c, uint32_t index, int fd)
{
    if (index >= SHM_MAX_SEGMENTS) {
        (void) close(fd);
        return;
    }
    if (c->pending_fd[index] >= 0)
        (void) close(c->pending_fd[index]);
    c->pending_fd[index] = fd;
}

static void pending_close_all(struct client *c)
{
    for (unsigned i = 0; i < SHM_MAX_SEGMENTS; i++) {
        if (c->pending_fd[i] >= 0)
            (void) close(c->pending_fd[i]);
        c->pending_fd[i] = -1;
    }
}

/* Takes the single fd of a `segment` or `grow` reply and files it under the
 * reply's segment.index. Returns the index, or a negative errno. */
static int reply_take_segment(struct client *c, struct reply *rep)
{
    const cJSON *seg = cJSON_GetObjectItemCaseSensitive(rep->json, "segment");
    uint64_t index;
    int fd;

    if (!json_get_u64(seg, "index", &index) || index == 0 || index >= SHM_MAX_SEGMENTS ||
        rep->nfds != 1) {
        client_set_error("shmheapd at %s sent a segment reply without a valid index and fd",
                         c->conn.path);
        return -EPROTO;
    }
    fd = rep->fds[0];
    rep->fds[0] = -1; /* now ours, not the reply's */
    pending_put(c, (uint32_t) index, fd);
    return (int) index;
}

/* A hook's request that got no answer: no daemon came back within
 * reconnect_wait_ms (or no memory to ask), so the allocation that needed
 * it fails with ENOMEM, as the malloc family promises (never EIO). */
static int hook_call_errno(int r)
{
    return r == -SHMHEAP_ECONNECT || r == -SHMHEAP_ENOMEM ? -ENOMEM : -EIO;
}

static int hook_open_segment(void *ctx, uint32_t index)
{
    struct client *c = ctx;
    struct reply rep;
    cJSON *req;
    int fd, r;

    if (c->pid != getpid())
        return -ESTALE; /* before the lock: a parent's thread may have held it */
    if (index == 0 || index >= SHM_MAX_SEGMENTS)
        return -EINVAL;
    pthread_mutex_lock(&c->conn.lock);
    fd = c->pending_fd[index];
    c->pending_fd[index] = -1; /* the core keeps it: no claim of ours left */
    pthread_mutex_unlock(&c->conn.lock);
    if (fd >= 0)
        return fd;
    req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "op", "segment") ||
        !cJSON_AddNumberToObject(req, "index", index)) {
        cJSON_Delete(req);
        return -ENOMEM;
    }
    r = client_call(c, req, CONN_TIMEOUT_MS, &rep);
    cJSON_Delete(req);
    if (r < 0)
        return hook_call_errno(r);
    pthread_mutex_lock(&c->conn.lock);
    if (!rep.ok) {
        r = reply_error(&rep, "segment") == -SHMHEAP_ENOENT ? -ENOENT : -EIO;
    } else {
        r = reply_take_segment(c, &rep);
        if (r >= 0 && (uint32_t) r != index) {
            client_set_error("shmheapd sent segment %d when asked for %u", r, index);
            r = -EPROTO;
        }
    }
    reply_free(&rep);
    if (r >= 0) {
        r = c->pending_fd[index];
        c->pending_fd[index] = -1;
    }
    pthread_mutex_unlock(&c->conn.lock);
    return r;
}

/* The header page's fd from client_hello, mapped once by heap_attach. */
static int hook_open_header(void *ctx)
{
    struct client *c = ctx;
    int fd = c->header_fd;

    c->header_fd = -1;
    return fd >= 0 ? fd : -EBADF;
}

static int hook_grow(void *ctx, uint64_t min_bytes)
{
    struct client *c = ctx;
    struct heap *heap;
    struct reply rep;
    uint32_t seen;
    cJSON *req;
    int r;

    if (c->pid != getpid())
        return -ESTALE;
    heap = load_acquire(&c->heap);
    if (!heap)
        return -EAGAIN; /* not attached yet: the core never grows then */
    /* acquire: pairs with the daemon's release of the count; the daemon
     * compares it with its own to tell a fresh request from a stale one. */
    seen = load_acquire(&heap_ctl(heap)->nsegments);
    req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "op", "grow") ||
        !cJSON_AddNumberToObject(req, "min_bytes", (double) min_bytes) ||
        !cJSON_AddNumberToObject(req, "seen", seen)) {
        cJSON_Delete(req);
        return -ENOMEM;
    }
    r = client_call(c, req, CONN_TIMEOUT_MS, &rep);
    cJSON_Delete(req);
    if (r < 0)
        return hook_call_errno(r);
    pthread_mutex_lock(&c->conn.lock);
    if (!rep.ok) {
        /* heap_full: at max_segments (the core reports ENOMEM to the
         * caller); no_memory: the daemon could not create a segment. */
        (void) reply_error(&rep, "grow");
        r = strcmp(rep.code, "heap_full") == 0   ? -ENOSPC
            : strcmp(rep.code, "no_memory") == 0 ? -ENOMEM
                                                 : -EIO;
    } else {
        r = reply_take_segment(c, &rep);
        /* A segment this process mapped already (another thread asked
         * for it meanwhile) needs no second fd. */
        if (r > 0 && (uint32_t) r < load_acquire(&heap->nmapped)) {
            (void) close(c->pending_fd[r]);
            c->pending_fd[r] = -1;
        }
        r = r < 0 ? r : 0;
    }
    reply_free(&rep);
    pthread_mutex_unlock(&c->conn.lock);
    return r;
}

/* The header page's fd (the header_page op), on conn after its hello. */
static int
request_header_page(struct client *c, struct conn *conn, unsigned timeout_ms, int *ret_fd)
{
    struct reply rep;
    uint64_t size;
    cJSON *req = cJSON_CreateObject();
    int r;

    if (!req || !cJSON_AddStringToObject(req, "op", "header_page")) {
        cJSON_Delete(req);
        return -SHMHEAP_ENOMEM;
    }
    r = conn_request(conn, req, timeout_ms, &rep);
    cJSON_Delete(req);
    if (r < 0)
        return r;
    if (!rep.ok) {
        (void) reply_error(&rep, "header_page");
        r = -SHMHEAP_EPROTO; /* a daemon without it speaks another protocol */
    } else if (!json_get_u64(rep.json, "size", &size) || size != SHM_HEADER_PAGE || rep.nfds != 1) {
        client_set_error("shmheapd at %s sent a header_page reply without its page", c->conn.path);
        r = -SHMHEAP_EPROTO;
    } else {
        *ret_fd = rep.fds[0];
        rep.fds[0] = -1;
        r = 0;
    }
    reply_free(&rep);
    return r;
}

/* hello's segment list: each fd of the reply to its index (0: the control
 * segment), taken out of the reply. False, with the error set, on a list
 * that does not match the fds or names an index twice. */
static bool
take_segment_fds(struct client *c, struct reply *rep, int fds[SHM_MAX_SEGMENTS], int *ret_ctl_fd)
{
    const cJSON *segs = cJSON_GetObjectItemCaseSensitive(rep->json, "segments"), *s;
    unsigned i = 0;

    if (!cJSON_IsArray(segs) || (unsigned) cJSON_GetArraySize(segs) != rep->nfds) {
        client_set_error("shmheapd at %s sent %u fds for %d segments", c->conn.path, rep->nfds,
                         cJSON_GetArraySize(segs));
        return false;
    }
    cJSON_ArrayForEach(s, segs)
    {
        uint64_t index;

        if (!json_get_u64(s, "index", &index) || index >= SHM_MAX_SEGMENTS ||
            (index == 0 ? *ret_ctl_fd >= 0 : fds[index] >= 0)) {
            client_set_error("shmheapd at %s sent a bad segment list", c->conn.path);
            return false;
        }
        if (index == 0)
            *ret_ctl_fd = rep->fds[i];
        else
            fds[index] = rep->fds[i];
        rep->fds[i++] = -1;
    }
    if (*ret_ctl_fd < 0) {
        client_set_error("shmheapd at %s sent no control segment", c->conn.path);
        return false;
    }
    return true;
}

int client_hello(struct client *c,
                 struct conn *conn,
                 bool resume,
                 unsigned timeout_ms,
                 int fds[SHM_MAX_SEGMENTS],
                 int *ret_header_fd)
{
    struct reply rep;
    uint64_t version, client_id;
    struct stat st = {0};
    cJSON *req;
    int r, ctl_fd = -1;

    req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "op", "hello") ||
        !cJSON_AddNumberToObject(req, "version", WIRE_VERSION) ||
        !cJSON_AddNumberToObject(req, "pid", (double) getpid()) ||
        (resume && (!cJSON_AddNumberToObject(req, "client_id", (double) c->client_id) ||
                    !cJSON_AddNumberToObject(req, "owner", handle_heap_owner(c))))) {
        cJSON_Delete(req);
        return -SHMHEAP_ENOMEM;
    }
    r = conn_request(conn, req, timeout_ms, &rep);
    cJSON_Delete(req);
    if (r < 0)
        return r;
    if (!rep.ok) {
        r = reply_error(&rep, "hello");
        /* A daemon that does not take our hello speaks another protocol. */
        if (r == -SHMHEAP_EINVAL)
            r = -SHMHEAP_EPROTO;
        goto out;
    }
    r = -SHMHEAP_EPROTO;
    if (!json_get_u64(rep.json, "version", &version) || version != WIRE_VERSION) {
        client_set_error("shmheapd at %s speaks another protocol version than this "
                         "library's (%d)",
                         c->conn.path, WIRE_VERSION);
        goto out;
    }
    if (!json_get_u64(rep.json, "client_id", &client_id) || client_id == 0) {
        client_set_error("shmheapd at %s sent hello without a client_id", c->conn.path);
        goto out;
    }
    if (!take_segment_fds(c, &rep, fds, &ctl_fd))
        goto out;
    if (resume && client_id != c->client_id) {
        client_set_error("shmheapd at %s gave client_id %llu back for %llu", c->conn.path,
                         (unsigned long long) client_id, (unsigned long long) c->client_id);
        goto out;
    }
    /* Not a control segment: said now, before the next request. */
    if (fstat(ctl_fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (uint64_t) st.st_size < sizeof(struct ctl_header)) {
        client_set_error("shmheapd at %s sent a control segment of %jd bytes, not a heap",
                         c->conn.path, (intmax_t) st.st_size);
        goto out;
    }
    r = request_header_page(c, conn, timeout_ms, ret_header_fd);
    if (r < 0)
        goto out;
    c->client_id = client_id;
    r = ctl_fd;
    ctl_fd = -1;
out:
    if (ctl_fd >= 0)
        (void) close(ctl_fd);
    reply_free(&rep);
    return r;
}

SHMHEAP_EXPORT int shmheap_attach(const char *socket_path, shmheap_t **out)
{
    struct heap_hooks hooks = {
            .open_segment = hook_open_segment, .grow = hook_grow, .open_header = hook_open_header};
    char path[sizeof(((struct conn *) 0)->path)];
    struct client *c;
    struct heap *heap;
    int ctl_fd, r;

    client_clear_error();
    if (!out)
        return -SHMHEAP_EINVAL;
    (void) pthread_once(&client_once, client_init_once);
    r = conn_default_path(socket_path, path, sizeof(path));
    if (r < 0)
        return r;
    c = calloc(1, sizeof(*c));
    if (!c)
        return -SHMHEAP_ENOMEM;
    c->pid = getpid();
    c->conn.fd = -1;
    c->header_fd = -1;
    for (unsigned i = 0; i < SHM_MAX_SEGMENTS; i++)
        c->pending_fd[i] = -1;
    r = conn_open(&c->conn, path);
    if (r < 0)
        goto fail_free;
    ctl_fd = client_hello(c, &c->conn, false, CONN_TIMEOUT_MS, c->pending_fd, &c->header_fd);
    if (ctl_fd < 0) {
        r = ctl_fd;
        goto fail_close;
    }
    hooks.ctx = c;
    r = heap_attach(ctl_fd, &hooks, c->client_id, &heap);
    (void) close(ctl_fd); /* heap_attach keeps a dup of its own */
    if (r < 0) {
        client_set_error("cannot map the heap of shmheapd at %s: %s", path, strerror(-r));
        r = r == -EPROTO || r == -EBADF ? -SHMHEAP_EPROTO : client_errno_code(r);
        goto fail_close;
    }
    /* Under valgrind or ASan, before the first allocation (track.c). */
    r = client_track_start(c, heap);
    if (r < 0) {
        heap_detach(heap);
        r = client_errno_code(r);
        goto fail_close;
    }
    /* Fds of segments the core did not map (retired ones) are not needed;
     * from here on the hooks may run in any thread. */
    pthread_mutex_lock(&c->conn.lock);
    pending_close_all(c);
    store_release(&c->heap, heap);
    pthread_mutex_unlock(&c->conn.lock);
    r = reconnect_start(c);
    if (r < 0) {
        heap_detach(heap);
        client_track_stop(c);
        goto fail_close;
    }
    *out = (shmheap_t *) (void *) heap;
    return 0;
fail_close:
    if (c->header_fd >= 0)
        (void) close(c->header_fd);
    pending_close_all(c);
    conn_close(&c->conn);
fail_free:
    free(c);
    return r;
}

SHMHEAP_EXPORT void shmheap_detach(shmheap_t *h)
{
    struct client *c;
    bool forked;

    if (!h)
        return;
    c = client_of(h);
    forked = client_forked(h);
    /* In a fork's child the core only unmaps its copy; the caches belong to
     * the parent's threads. The connection is needed while the caches go
     * back (a segment may have to be mapped), so it closes last. */
    /* The watcher reads the heap (its control fd, what is mapped): it
     * stops first. The hooks then use the connection as it is; one that
     * is down fails them (the daemon reclaims what could not go back). */
    if (!forked) {
        reconnect_stop(c); /* the parent's thread: not the child's to stop */
        client_track_flush(c);
    }
    heap_detach(handle_heap(h));
    client_track_stop(c);
    pending_close_all(c);
    if (forked) {
        /* The parent's copy keeps the connection open; the lock may have
         * been held by a parent's thread at fork, so only the fd is closed. */
        (void) close(c->conn.fd);
        if (c->rc_running)
            (void) close(c->rc_wake);
        free(c);
        return;
    }
    conn_close(&c->conn);
    free(c);
}
