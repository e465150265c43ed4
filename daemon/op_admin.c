/* The ops that act on the heap or the daemon: trim, verify, config.get,
 * config.set. Trim and verify run in the thread pool (work.c), which hands
 * their results back to op_trim_done() and op_verify_done() here, on the
 * loop thread; the connection waits meanwhile (no further line is read). */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "config/utf8.h"
#include "daemon/daemon.h"

#define TRIM_WAIT_DEFAULT_MS 100u
#define TRIM_WAIT_MAX_MS     60000u

void op_trim(struct conn *c, const cJSON *req)
{
    uint64_t wait_ms = TRIM_WAIT_DEFAULT_MS;
    int r;

    if (!req_u64(c, req, "wait_ms", false, TRIM_WAIT_MAX_MS, &wait_ms))
        return;
    r = work_trim(c->d, c, (unsigned) wait_ms);
    if (r < 0)
        reply_error(c, "internal", "cannot start the trim: %s", strerror(-r));
}

void op_trim_done(struct conn *c, int r, const struct trim_result *t)
{
    cJSON *reply;

    if (r == -EAGAIN) {
        /* Every cache slot claimed: the recyclers were left as they are
         * (no slot to carry their bundles, heap_trim); the rest was done. */
        log_warning("trim (requested by pid %d): released %" PRIu64
                    " bytes, but the recyclers were not drained: no cache slot free",
                    (int) c->peer.pid, t->bytes_released);
        reply_error(c, "unavailable",
                    "the recyclers were not drained: no cache slot free (the rest of the trim "
                    "was done)");
        return;
    }
    if (r < 0) {
        log_error("trim (requested by pid %d) failed: %s", (int) c->peer.pid, strerror(-r));
        reply_error(c, "internal", "the trim failed: %s", strerror(-r));
        return;
    }
    log_info("trim (requested by pid %d): released %" PRIu64 " bytes, flushed %" PRIu32
             " of %" PRIu32 " thread caches, trim_gen %" PRIu64,
             (int) c->peer.pid, t->bytes_released, t->caches_flushed, t->caches_total, t->trim_gen);
    reply = reply_new();
    if (reply && (!json_add_u64(reply, "trim_gen", t->trim_gen) ||
                  !json_add_u64(reply, "bytes_released", t->bytes_released) ||
                  !cJSON_AddNumberToObject(reply, "caches_flushed", t->caches_flushed) ||
                  !cJSON_AddNumberToObject(reply, "caches_total", t->caches_total))) {
        cJSON_Delete(reply);
        reply = NULL;
    }
    reply_ok(c, reply, NULL, 0); /* NULL: answers internal, out of memory */
}

void op_verify(struct conn *c, const cJSON *req)
{
    int r;

    (void) req;
    r = work_verify(c->d, c);
    if (r < 0)
        reply_error(c, "internal", "cannot start the verification: %s", strerror(-r));
}

/* At most this many problems are listed in the reply (problems_total
 * counts them all), so the reply stays far below the line limit. */
#define VERIFY_PROBLEMS_LISTED 16u

void op_verify_done(struct conn *c, int r, const struct verify_report *rep)
{
    cJSON *reply, *problems;

    if (r == -EMFILE) {
        /* heap_verify holds the recyclers' bundles in a slot of its own. */
        log_warning("verify (requested by pid %d): not run, no cache slot free for its walk",
                    (int) c->peer.pid);
        reply_error(c, "unavailable", "no cache slot free for the verification's walk");
        return;
    }
    if (r < 0) {
        log_error("verify failed: %s", strerror(-r));
        reply_error(c, "internal", "the verification failed: %s", strerror(-r));
        return;
    }
    if (rep->consistent)
        log_info("verify (requested by pid %d): consistent, %" PRIu64 " blocks checked",
                 (int) c->peer.pid, rep->checked_blocks);
    else
        log_warning("verify (requested by pid %d): %" PRIu32 " problems, the first: %.160s",
                    (int) c->peer.pid, rep->nproblems, rep->problems[0]);
    reply = reply_new();
    problems = reply ? cJSON_CreateArray() : NULL;
    if (!problems || !cJSON_AddBoolToObject(reply, "consistent", rep->consistent) ||
        !cJSON_AddItemToObject(reply, "problems", problems)) {
        cJSON_Delete(problems);
        goto oom;
    }
    for (uint32_t i = 0; i < rep->nproblems && i < VERIFY_PROBLEMS_LISTED; i++) {
        char text[sizeof(rep->problems[0]) + 1];
        cJSON *s;

        memcpy(text, rep->problems[i], sizeof(rep->problems[i]));
        text[sizeof(text) - 1] = 0;
        s = cJSON_CreateString(text);
        if (!s || !cJSON_AddItemToArray(problems, s)) {
            cJSON_Delete(s);
            goto oom;
        }
    }
    if (!json_add_u64(reply, "checked_blocks", rep->checked_blocks) ||
        !json_add_u64(reply, "checked_objects", rep->checked_objects) ||
        !cJSON_AddNumberToObject(reply, "problems_total", rep->nproblems))
        goto oom;
    reply_ok(c, reply, NULL, 0);
    return;
oom:
    cJSON_Delete(reply);
    reply_error(c, "internal", "out of memory");
}

static void reply_config(struct conn *c, const struct config_key *only)
{
    cJSON *reply = reply_new(), *cfg;

    cfg = reply ? cJSON_AddObjectToObject(reply, "config") : NULL;
    if (!cfg || config_add_to_object(&c->d->cfg, only, cfg) < 0) {
        cJSON_Delete(reply);
        reply_error(c, "internal", "out of memory");
        return;
    }
    reply_ok(c, reply, NULL, 0);
}

void op_config_get(struct conn *c, const cJSON *req)
{
    const struct config_key *k = NULL;
    const char *key = NULL;

    if (!req_string(c, req, "key", false, &key))
        return;
    if (key) {
        k = config_key_find(key);
        if (!k) {
            reply_error(c, "unknown_key", "unknown key \"%.*s%s\"", (int) utf8_prefix(key, 64), key,
                        strlen(key) > 64 ? "..." : "");
            return;
        }
    }
    reply_config(c, k);
}

void op_config_set(struct conn *c, const cJSON *req)
{
    struct daemon *d = c->d;
    char err[CONFIG_ERR_MAX], why[96];
    const char *key = NULL;
    const cJSON *value;
    struct config next;
    int r;

    if (!req_string(c, req, "key", true, &key))
        return;
    value = cJSON_GetObjectItemCaseSensitive(req, "value");
    if (!value) {
        reply_error(c, "bad_request", "missing field \"value\"");
        return;
    }
    if (!peer_is_admin(&c->peer)) {
        log_notice("refused config.set of %.*s by pid %d (uid %u): not root or the daemon's "
                   "user",
                   (int) utf8_prefix(key, 64), key, (int) c->peer.pid, (unsigned) c->peer.uid);
        reply_error(c, "permission_denied", "only root or the daemon's user may change the config");
        return;
    }
    next = d->cfg;
    r = config_set_json(&next, key, value, err, sizeof(err));
    if (r == -ENOENT) {
        reply_error(c, "unknown_key", "%s", err);
        return;
    }
    if (r < 0) {
        reply_error(c, "bad_value", "%s", err);
        return;
    }
    (void) snprintf(why, sizeof(why), "config.set by pid %d, uid %u", (int) c->peer.pid,
                    (unsigned) c->peer.uid);
    if (settings_apply(d, &next, why, err, sizeof(err)) < 0) {
        reply_error(c, "unavailable", "%s", err);
        return;
    }
    reply_config(c, config_key_find(key));
}
