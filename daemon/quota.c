/* The per-uid quota (max_uid_bytes): every QUOTA_TICK_MS the daemon sums
 * the bytes allocated by the clients of each uid (their cache slots'
 * counters, as the `clients` op reports them) and marks the owner entries
 * of the clients of a uid over its quota, which refuse memory on their
 * slow paths (shm/quota.c) until the uid is back under it. The uid comes
 * from the connection's credentials (SO_PEERCRED), never from shared
 * memory. The per-client quota (max_client_bytes) needs no daemon: each
 * client checks itself against the config it reads from the control
 * segment. */
#include <inttypes.h>
#include <stdlib.h>

#include "daemon/daemon.h"
#include "shm/atomic.h"

#define QUOTA_TICK_MS 100

struct uid_sum {
    uid_t uid;
    uint64_t bytes;
    bool over; /* over max_uid_bytes at the last tick (and logged so) */
};

struct client_over {
    uint64_t client_id;
    uid_t uid;
    bool over;
};

static int cmp_client(const void *a, const void *b)
{
    uint64_t x = ((const struct client_over *) a)->client_id;
    uint64_t y = ((const struct client_over *) b)->client_id;

    return x < y ? -1 : x > y;
}

static bool client_over_cb(void *ctx, uint64_t client_id)
{
    const struct quota_tick *t = ctx;
    struct client_over key = {.client_id = client_id};
    const struct client_over *c =
            t->nclients ? bsearch(&key, t->clients, t->nclients, sizeof(key), cmp_client) : NULL;

    return c && c->over;
}

/* The uid's entry in t->uids, added if new; NULL without memory. */
static struct uid_sum *uid_sum_of(struct quota_tick *t, uid_t uid)
{
    struct uid_sum *u;

    for (size_t i = 0; i < t->nuids; i++)
        if (t->uids[i].uid == uid)
            return &t->uids[i];
    if (t->nuids == t->uids_cap) {
        size_t cap = t->uids_cap ? 2 * t->uids_cap : 8;

        u = realloc(t->uids, cap * sizeof(*u));
        if (!u)
            return NULL;
        t->uids = u;
        t->uids_cap = cap;
    }
    u = &t->uids[t->nuids++];
    *u = (struct uid_sum){.uid = uid};
    return u;
}

/* Sums each uid's clients; returns false without memory. */
static bool quota_sum(struct daemon *d, struct quota_tick *t)
{
    size_t n = 0;

    for (size_t i = 0; i < t->nuids; i++)
        t->uids[i].bytes = 0;
    for (struct link *l = d->clients.next; l != &d->clients; l = l->next)
        n++;
    if (n > t->clients_cap) {
        struct client_over *c = realloc(t->clients, n * sizeof(*c));

        if (!c)
            return false;
        t->clients = c;
        t->clients_cap = n;
    }
    t->nclients = 0;
    for (struct link *l = d->clients.next; l != &d->clients; l = l->next) {
        struct client *cl = container_of(l, struct client, link);
        struct uid_sum *u;
        uint32_t threads;
        uint64_t bytes;

        if (cl->exited)
            continue;
        u = uid_sum_of(t, cl->peer.uid);
        if (!u)
            return false;
        clients_slot_usage(d, cl->id, &threads, &bytes);
        u->bytes += bytes;
        t->clients[t->nclients++] = (struct client_over){.client_id = cl->id, .uid = cl->peer.uid};
    }
    return true;
}

void quota_tick(struct daemon *d)
{
    struct quota_tick *t = &d->quota;
    uint64_t limit = d->cfg.shm.max_uid_bytes;

    /* Off, and no owner entry left refused: nothing to do. */
    if (limit == 0 && t->refused == 0)
        return;
    if (limit != 0 && !quota_sum(d, t)) {
        log_warning("uid quota: out of memory summing the clients; trying again");
        return;
    }
    for (size_t i = 0; i < t->nclients; i++) {
        const struct uid_sum *u = NULL;

        for (size_t k = 0; k < t->nuids; k++)
            if (t->uids[k].uid == t->clients[i].uid)
                u = &t->uids[k];
        t->clients[i].over = limit != 0 && u && u->bytes >= limit;
    }
    if (limit == 0)
        t->nclients = 0; /* turned off: clear every refusal */
    /* Never qsort/bsearch a NULL array (no client yet): undefined even
     * for 0 elements (found by fuzz_proto under UBSan). */
    if (t->nclients > 1)
        qsort(t->clients, t->nclients, sizeof(t->clients[0]), cmp_client);
    /* relaxed: read by the metrics thread, which needs only the number. */
    store_relaxed(&t->refused, heap_quota_refuse_uid(d->heap, client_over_cb, t));
    for (size_t i = 0; i < t->nuids; i++) {
        struct uid_sum *u = &t->uids[i];
        bool over = limit != 0 && u->bytes >= limit;

        if (over && !u->over)
            log_notice("uid %u is over max_uid_bytes (%" PRIu64 " of %" PRIu64 " bytes): its "
                       "clients get ENOMEM until it frees",
                       (unsigned) u->uid, u->bytes, limit);
        else if (!over && u->over)
            log_info("uid %u is under max_uid_bytes again (%" PRIu64 " bytes)", (unsigned) u->uid,
                     u->bytes);
        u->over = over;
    }
    /* Forget uids with nothing allocated and nothing to report. */
    for (size_t i = 0; i < t->nuids;)
        if (t->uids[i].bytes == 0 && !t->uids[i].over)
            t->uids[i] = t->uids[--t->nuids];
        else
            i++;
}

bool quota_uid_over(struct daemon *d, uid_t uid, uint64_t *ret_bytes)
{
    const struct quota_tick *t = &d->quota;

    for (size_t i = 0; i < t->nuids; i++)
        if (t->uids[i].uid == uid) {
            *ret_bytes = t->uids[i].bytes;
            return t->uids[i].over;
        }
    *ret_bytes = 0;
    return false;
}

static void quota_tick_cb(uv_timer_t *timer)
{
    quota_tick(timer->data);
}

void quota_start(struct daemon *d)
{
    (void) uv_timer_init(d->loop, &d->quota.timer);
    d->quota.timer.data = d;
    (void) uv_timer_start(&d->quota.timer, quota_tick_cb, QUOTA_TICK_MS, QUOTA_TICK_MS);
}

static void quota_closed_cb(uv_handle_t *h)
{
    struct daemon *d = h->data;

    free(d->quota.uids);
    free(d->quota.clients);
    d->quota = (struct quota_tick){0};
}

void quota_stop(struct daemon *d)
{
    (void) uv_timer_stop(&d->quota.timer);
    uv_close((uv_handle_t *) &d->quota.timer, quota_closed_cb);
}
