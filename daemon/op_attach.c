/* The ops of attaching clients: hello, segment, header_page, grow. Each reply that
 * names segments carries their fds (SCM_RIGHTS, in the listed order). */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "daemon/daemon.h"
#include "shm/atomic.h"

/* The largest min_bytes a grow may ask for: the segment adds its metadata
 * and is rounded up to whole pages, and must stay within SHM_SEG_SPAN. */
#define GROW_MAX_BYTES (SHM_SEG_SPAN - (UINT64_C(1) << 30))

cJSON *segment_json(struct daemon *d, uint32_t index)
{
    cJSON *o = cJSON_CreateObject();
    uint64_t size = 0;
    uint32_t page = 0;

    if (!o)
        return NULL;
    (void) owner_segment(d, index, &size, &page);
    if (!cJSON_AddNumberToObject(o, "index", index) || !json_add_u64(o, "size", size) ||
        !cJSON_AddNumberToObject(o, "page_size", page)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* A re-hello (docs/PROTOCOL.md): may c's peer take client id `id` back?
 * Only a process that had it: the id was handed out (by this daemon or the
 * one whose heap it adopted), no connection holds it, and the heap's
 * tables tie it to the peer's pid (its owner entry, `owner` = index + 1,
 * or else its thread caches). The tables are the writable part of the
 * control segment, which any client can
 * write, so this keeps honest clients apart; it cannot stop a process
 * that scribbles on the heap, which could do worse anyway. */
static bool resume_allowed(struct conn *c, uint64_t id, uint64_t owner)
{
    struct daemon *d = c->d;
    struct ctl_header *ctl = heap_ctl(d->heap);
    struct client *cl = clients_find(d, id);
    uint32_t pid = (uint32_t) c->peer.pid;

    if (id > d->next_client_id) {
        reply_error(c, "bad_value", "client_id %" PRIu64 " was never handed out", id);
        return false;
    }
    if (cl && (cl->conn || cl->exited)) {
        reply_error(c, "bad_value", "client_id %" PRIu64 " is %s", id,
                    cl->conn ? "attached on another connection" : "gone (its process exited)");
        return false;
    }
    if (cl && cl->peer.pid != c->peer.pid) {
        reply_error(c, "bad_value", "client_id %" PRIu64 " belongs to pid %d, not %d", id,
                    (int) cl->peer.pid, (int) c->peer.pid);
        return false;
    }
    if (owner) {
        const struct owner_entry *e = &ctl->owners[owner - 1];

        if (load_relaxed(&e->client_id) != id || load_relaxed(&e->pid) != pid ||
            load_acquire(&e->state) != OWNER_LIVE) {
            reply_error(c, "bad_value",
                        "owner %" PRIu64 " is not a live entry of client_id %" PRIu64 " and pid %d",
                        owner, id, (int) c->peer.pid);
            return false;
        }
        return true;
    }
    for (uint32_t i = 0, high = load_acquire(&ctl->slots_high); i < high && i < SHM_MAX_SLOTS;
         i++) {
        const struct cache_slot *s = &ctl->slots[i];

        if (load_acquire(&s->state) != SLOT_OWNED || load_relaxed(&s->client_id) != id)
            continue;
        if (load_relaxed(&s->pid) != pid) {
            reply_error(c, "bad_value", "client_id %" PRIu64 " has thread caches of pid %u, not %d",
                        id, load_relaxed(&s->pid), (int) c->peer.pid);
            return false;
        }
    }
    /* Its thread caches, or none: a client without an owner entry (the
     * table was full) that never allocated has nothing to lose. */
    return true;
}

void op_hello(struct conn *c, const cJSON *req)
{
    struct daemon *d = c->d;
    int fds[SHM_MAX_SEGMENTS], nfds = 0;
    uint64_t version = 0, pid = 0, resume_id = 0, owner = 0;
    struct client *cl;
    cJSON *reply, *segs;
    uint32_t n;
    int r;

    if (c->client) {
        reply_error(c, "bad_request", "hello was already sent on this connection");
        return;
    }
    if (!req_u64(c, req, "version", true, UINT32_MAX, &version) ||
        !req_u64(c, req, "pid", true, INT32_MAX, &pid))
        return;
    if (version != WIRE_VERSION) {
        reply_error(c, "bad_value",
                    "protocol version %" PRIu64 " is not supported; this daemon speaks version %d",
                    version, WIRE_VERSION);
        return;
    }
    if (!req_u64(c, req, "client_id", false, UINT64_C(1) << 53, &resume_id) ||
        !req_u64(c, req, "owner", false, SHM_MAX_OWNERS, &owner))
        return;
    if (owner && !resume_id) {
        reply_error(c, "bad_request", "owner is only sent with client_id (a re-hello)");
        return;
    }
    if (resume_id && !resume_allowed(c, resume_id, owner))
        return;
    if ((pid_t) pid != c->peer.pid)
        log_debug("connection %" PRIu64 ": hello says pid %" PRIu64 ", the socket says %d; "
                  "using the socket's",
                  c->serial, pid, (int) c->peer.pid);
    reply = reply_new();
    segs = reply ? cJSON_AddArrayToObject(reply, "segments") : NULL;
    if (!segs)
        goto oom;
    n = owner_nsegments(d);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t size;
        uint32_t page;
        int fd = owner_segment(d, i, &size, &page);
        cJSON *s;

        if (fd < 0)
            continue;
        s = segment_json(d, i);
        if (!s || !cJSON_AddItemToArray(segs, s)) {
            cJSON_Delete(s);
            goto oom;
        }
        fds[nfds++] = fd;
    }
    r = clients_attach(d, c, resume_id, &cl);
    if (r < 0) {
        cJSON_Delete(reply);
        reply_error(c, "internal", "cannot register the client: %s", strerror(-r));
        return;
    }
    if (!cJSON_AddNumberToObject(reply, "version", WIRE_VERSION) ||
        !json_add_u64(reply, "client_id", cl->id) ||
        !cJSON_AddBoolToObject(reply, "resumed", resume_id != 0))
        goto oom;
    reply_ok(c, reply, fds, nfds);
    return;
oom:
    cJSON_Delete(reply);
    reply_error(c, "internal", "out of memory");
}

static void reply_segment(struct conn *c, uint32_t index)
{
    uint64_t size;
    uint32_t page;
    int fd = owner_segment(c->d, index, &size, &page);
    cJSON *reply, *s;

    if (fd < 0) {
        reply_error(c, "no_such_segment", "no segment %" PRIu32 " (the heap has %" PRIu32 ")",
                    index, owner_nsegments(c->d));
        return;
    }
    reply = reply_new();
    s = segment_json(c->d, index);
    if (!reply || !s || !cJSON_AddItemToObject(reply, "segment", s)) {
        cJSON_Delete(s);
        cJSON_Delete(reply);
        reply_error(c, "internal", "out of memory");
        return;
    }
    reply_ok(c, reply, &fd, 1);
}

void op_segment(struct conn *c, const cJSON *req)
{
    uint64_t index;

    if (!req_u64(c, req, "index", true, UINT32_MAX, &index))
        return;
    if (index >= SHM_MAX_SEGMENTS) {
        reply_error(c, "no_such_segment", "no segment %" PRIu64 " (the heap has %" PRIu32 ")",
                    index, owner_nsegments(c->d));
        return;
    }
    reply_segment(c, (uint32_t) index);
}

/* The header page (shm/header.c): clients map it read-only over the control
 * segment's first page, whose own bytes any client can write. */
void op_header_page(struct conn *c, const cJSON *req)
{
    cJSON *reply = reply_new();

    (void) req;
    if (!reply || !cJSON_AddNumberToObject(reply, "size", SHM_HEADER_PAGE)) {
        cJSON_Delete(reply);
        reply_error(c, "internal", "out of memory");
        return;
    }
    reply_ok(c, reply, &c->d->hdr.fd, 1);
}

void op_grow(struct conn *c, const cJSON *req)
{
    struct daemon *d = c->d;
    uint64_t min_bytes = 0, seen;
    uint32_t n, index;
    int r;

    if (!req_u64(c, req, "min_bytes", false, GROW_MAX_BYTES, &min_bytes) ||
        !req_u64(c, req, "seen", true, UINT32_MAX, &seen))
        return;
    n = owner_nsegments(d);
    if (n > seen && n > 1) {
        /* Another client grew the heap since this one looked: that segment
         * may be enough; the client asks again with the new count if not. */
        reply_segment(c, n - 1);
        return;
    }
    r = owner_grow(d, min_bytes, &index);
    if (r == -ENOSPC) {
        reply_error(c, "heap_full", "the heap has max_segments (%" PRIu32 ") heap segments",
                    d->cfg.shm.max_segments);
        return;
    }
    if (r < 0) {
        reply_error(c, "no_memory", "cannot create a heap segment: %s", strerror(-r));
        return;
    }
    log_info("client %" PRIu64 " (pid %d) grew the heap to %" PRIu32 " segments", c->client->id,
             (int) c->peer.pid, index + 1);
    r = heap_sync_segments(d->heap);
    if (r < 0)
        log_warning("cannot map segment %" PRIu32 " in the daemon, ignoring: %s", index,
                    strerror(-r));
    reply_segment(c, index);
}
