/* The ops that report: stats, clients, segments. They read the heap's
 * counters with relaxed loads (heap_stats): a snapshot that costs the
 * clients' fast paths nothing. The stats object is built by
 * stats_json_build() from the heap (shared memory, safe from any thread)
 * and a copy of the daemon's client list (struct client_view), so the
 * metrics thread (metrics.c) builds the very same object without touching
 * what the loop thread owns. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/daemon.h"

static uint64_t now_ns(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

cJSON *segments_json(const struct heap_stats *st)
{
    cJSON *a = cJSON_CreateArray();

    for (uint32_t i = 0; a && i < st->nsegments && i < SHM_MAX_SEGMENTS; i++) {
        const struct heap_seg_stats *s = &st->segs[i];
        cJSON *o = cJSON_CreateObject();
        char buf[24];

        if (!o || !cJSON_AddItemToArray(a, o)) {
            cJSON_Delete(o);
            goto oom;
        }
        if (!cJSON_AddNumberToObject(o, "index", s->index) || !json_add_u64(o, "size", s->size) ||
            !cJSON_AddStringToObject(o, "page_size",
                                     page_size_name(s->page_size, buf, sizeof(buf))) ||
            !json_add_u64(o, "committed_bytes", s->committed_bytes) ||
            !json_add_u64(o, "free_blocks", s->free_blocks) ||
            !json_add_u64(o, "metadata_bytes", s->metadata_bytes))
            goto oom;
    }
    return a;
oom:
    cJSON_Delete(a);
    return NULL;
}

static bool add_classes(cJSON *stats, const struct heap_stats *st)
{
    cJSON *a = cJSON_AddArrayToObject(stats, "classes"), *rec;
    uint64_t pushes = 0, pops = 0, retries = 0;

    if (!a)
        return false;
    for (unsigned i = 0; i < SHM_NCLASSES; i++) {
        const struct heap_class_stats *k = &st->classes[i];
        cJSON *o;

        pushes += k->rec_pushes;
        pops += k->rec_pops;
        retries += k->rec_retries;
        if (!k->in_use && !k->cached && !k->in_recycler && !k->rec_pushes && !k->rec_pops)
            continue; /* never used */
        o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(a, o)) {
            cJSON_Delete(o);
            return false;
        }
        if (!cJSON_AddNumberToObject(o, "object_size", k->object_size) ||
            !json_add_u64(o, "in_use", k->in_use) || !json_add_u64(o, "cached", k->cached) ||
            !json_add_u64(o, "in_recycler", k->in_recycler) ||
            !json_add_u64(o, "recycler_pushes", k->rec_pushes) ||
            !json_add_u64(o, "recycler_pops", k->rec_pops) ||
            !json_add_u64(o, "recycler_cas_retries", k->rec_retries))
            return false;
    }
    rec = cJSON_AddObjectToObject(stats, "recycler");
    return rec && json_add_u64(rec, "pushes", pushes) && json_add_u64(rec, "pops", pops) &&
           json_add_u64(rec, "cas_retries", retries);
}

int client_views(struct daemon *d, struct client_view **ret_views, size_t *ret_n)
{
    struct client_view *v;
    size_t n = 0, i = 0;

    for (struct link *l = d->clients.next; l != &d->clients; l = l->next)
        n++;
    v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        return -ENOMEM;
    for (struct link *l = d->clients.next; l != &d->clients && i < n; l = l->next, i++) {
        const struct client *cl = container_of(l, struct client, link);

        v[i] = (struct client_view){
                .id = cl->id, .pid = cl->peer.pid, .attached = cl->conn != NULL, .held = cl->held};
    }
    *ret_views = v;
    *ret_n = n;
    return 0;
}

/* "per_client": [{client_id, pid, threads, bytes_allocated}], the rows
 * the clients op shows (a detached client with nothing left is not one). */
static bool add_per_client(cJSON *stats,
                           struct heap *heap,
                           const struct client_view *views,
                           size_t nviews,
                           unsigned *ret_attached)
{
    cJSON *a = cJSON_AddArrayToObject(stats, "per_client");
    unsigned attached = 0;

    if (!a)
        return false;
    for (size_t i = 0; i < nviews; i++) {
        struct heap_client_usage u = {0};
        cJSON *o;

        attached += views[i].attached;
        (void) heap_client_usage(heap, views[i].id, 0, &u);
        if (!views[i].attached && u.threads == 0 && !views[i].held)
            continue;
        o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(a, o)) {
            cJSON_Delete(o);
            return false;
        }
        /* Net bytes: a client that frees more than it allocates (others'
         * objects) counts 0, as in the clients op. */
        if (!json_add_u64(o, "client_id", views[i].id) ||
            !cJSON_AddNumberToObject(o, "pid", views[i].pid) ||
            !cJSON_AddNumberToObject(o, "threads", u.threads) ||
            !json_add_u64(o, "bytes_allocated", u.bytes_in_use > 0 ? (uint64_t) u.bytes_in_use : 0))
            return false;
    }
    *ret_attached = attached;
    return true;
}

cJSON *stats_json_build(struct heap *heap,
                        const struct client_view *views,
                        size_t nviews,
                        const struct loop_figures *fig)
{
    struct heap_stats *st = malloc(sizeof(*st));
    cJSON *o = NULL, *segs;
    unsigned attached = 0;
    int r;

    if (!st)
        return NULL;
    r = heap_stats(heap, st);
    if (r < 0)
        goto out;
    o = cJSON_CreateObject();
    if (!o)
        goto out;
    if (!json_add_u64(o, "bytes_reserved", st->bytes_reserved) ||
        !json_add_u64(o, "bytes_committed", st->bytes_committed) ||
        !json_add_u64(o, "bytes_in_use", st->bytes_in_use) ||
        !json_add_u64(o, "peak_bytes_in_use", st->peak_bytes_in_use) ||
        !json_add_u64(o, "allocs", st->allocs) || !json_add_u64(o, "frees", st->frees) ||
        !json_add_u64(o, "trim_gen", st->trim_gen) || !json_add_u64(o, "trims", st->trims) ||
        !json_add_u64(o, "trim_bytes_released", st->trim_bytes_released) ||
        !json_add_u64(o, "bad_frees", st->bad_frees) ||
        !json_add_u64(o, "double_frees", st->double_frees) ||
        !json_add_u64(o, "lost_objects", st->lost_objects) ||
        !json_add_u64(o, "reclaimed_objects", st->reclaimed_objects) ||
        !json_add_u64(o, "reclaimed_bytes", st->reclaimed_bytes) ||
        !add_per_client(o, heap, views, nviews, &attached) ||
        !cJSON_AddNumberToObject(o, "clients", attached) ||
        !cJSON_AddNumberToObject(o, "clients_refused_uid_quota", fig->quota_refused) ||
        !cJSON_AddNumberToObject(o, "reclaims_pending", fig->reclaims_pending) ||
        !json_add_u64(o, "reclaim_retries", fig->reclaim_retries) ||
        !cJSON_AddNumberToObject(o, "thread_caches", st->slots_in_use) || !add_classes(o, st))
        goto fail;
    segs = segments_json(st);
    if (!segs || !cJSON_AddItemToObject(o, "segments", segs)) {
        cJSON_Delete(segs);
        goto fail;
    }
out:
    free(st);
    return o;
fail:
    cJSON_Delete(o);
    free(st);
    return NULL;
}

cJSON *stats_json(struct daemon *d)
{
    struct loop_figures fig;
    struct client_view *views;
    size_t n;
    cJSON *o;

    if (client_views(d, &views, &n) < 0)
        return NULL;
    loop_figures_read(d, &fig);
    o = stats_json_build(d->heap, views, n, &fig);
    free(views);
    /* The automatic trim: what it released, when, and the floor it keeps
     * (the loop's own state: the metrics endpoint gets a copy per tick). */
    if (o) {
        cJSON *dj = decay_json(d);

        if (!dj || !cJSON_AddItemToObject(o, "decay", dj)) {
            cJSON_Delete(dj);
            cJSON_Delete(o);
            return NULL;
        }
    }
    return o;
}

void op_stats(struct conn *c, const cJSON *req)
{
    cJSON *reply = reply_new(), *s = stats_json(c->d);

    (void) req;
    if (!reply || !s || !cJSON_AddItemToObject(reply, "stats", s)) {
        cJSON_Delete(s);
        cJSON_Delete(reply);
        reply_error(c, "internal", "cannot read the heap's figures");
        return;
    }
    reply_ok(c, reply, NULL, 0);
}

void op_segments(struct conn *c, const cJSON *req)
{
    struct heap_stats *st = malloc(sizeof(*st));
    cJSON *reply = reply_new(), *a = NULL;

    (void) req;
    if (st && reply && heap_stats(c->d->heap, st) == 0)
        a = segments_json(st);
    free(st);
    if (!a || !cJSON_AddItemToObject(reply, "segments", a)) {
        cJSON_Delete(a);
        cJSON_Delete(reply);
        reply_error(c, "internal", "cannot read the segments");
        return;
    }
    reply_ok(c, reply, NULL, 0);
}

/* "connections": every open connection, attached or not (shmheapctl's),
 * since each holds an fd of the daemon's. */
static bool add_connections(cJSON *reply, struct daemon *d, uint64_t now)
{
    cJSON *a = cJSON_AddArrayToObject(reply, "connections");

    if (!a)
        return false;
    for (struct link *l = d->conns.next; l != &d->conns; l = l->next) {
        const struct conn *k = container_of(l, struct conn, link);
        cJSON *o = cJSON_CreateObject();

        if (!o || !cJSON_AddItemToArray(a, o)) {
            cJSON_Delete(o);
            return false;
        }
        if (!json_add_u64(o, "connection", k->serial) ||
            !cJSON_AddNumberToObject(o, "pid", k->peer.pid) ||
            !cJSON_AddNumberToObject(o, "uid", k->peer.uid) ||
            !json_add_u64(o, "client_id", k->client ? k->client->id : 0) ||
            !json_add_u64(o, "connected_s", (now - k->connected_ns) / 1000000000u))
            return false;
    }
    return true;
}

void op_clients(struct conn *c, const cJSON *req)
{
    struct daemon *d = c->d;
    cJSON *reply = reply_new(), *a;
    uint64_t now = now_ns();

    (void) req;
    a = reply ? cJSON_AddArrayToObject(reply, "clients") : NULL;
    if (!a)
        goto oom;
    for (struct link *l = d->clients.next; l != &d->clients; l = l->next) {
        struct client *cl = container_of(l, struct client, link);
        uint64_t bytes, uid_bytes;
        uint32_t threads;
        bool uid_over;
        cJSON *o;

        clients_slot_usage(d, cl->id, &threads, &bytes);
        uid_over = quota_uid_over(d, cl->peer.uid, &uid_bytes);
        /* A client that detached and has nothing left is not worth a row
         * (its record goes once its detach is swept); one that left slots
         * or a live owner entry behind (still alive, or being reclaimed) is. */
        if (!cl->conn && threads == 0 && !cl->held)
            continue;
        o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(a, o)) {
            cJSON_Delete(o);
            goto oom;
        }
        if (!json_add_u64(o, "client_id", cl->id) ||
            !cJSON_AddNumberToObject(o, "pid", cl->peer.pid) ||
            !cJSON_AddNumberToObject(o, "uid", cl->peer.uid) ||
            !cJSON_AddNumberToObject(o, "threads", threads) ||
            !json_add_u64(o, "bytes_allocated", bytes) ||
            !json_add_u64(o, "quota_bytes", d->cfg.shm.max_client_bytes) ||
            !json_add_u64(o, "uid_quota_bytes", d->cfg.shm.max_uid_bytes) ||
            !json_add_u64(o, "uid_bytes_allocated", uid_bytes) ||
            !cJSON_AddBoolToObject(o, "over_quota",
                                   uid_over || (d->cfg.shm.max_client_bytes &&
                                                bytes >= d->cfg.shm.max_client_bytes)) ||
            !json_add_u64(o, "connected_s", (now - cl->attached_ns) / 1000000000u) ||
            !cJSON_AddBoolToObject(o, "attached", cl->conn != NULL))
            goto oom;
    }
    if (!add_connections(reply, d, now) ||
        !cJSON_AddNumberToObject(reply, "processes_watched", d->nprocs))
        goto oom;
    reply_ok(c, reply, NULL, 0);
    return;
oom:
    cJSON_Delete(reply);
    reply_error(c, "internal", "out of memory");
}
