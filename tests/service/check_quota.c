/* Quotas against a real shmheapd: max_client_bytes refuses one runaway
 * client while others allocate on; max_uid_bytes refuses every client of a
 * uid once the daemon's tick finds the uid over it; both let a client
 * allocate again once it frees; the `clients` op shows use against the
 * quota. The test's processes all share one uid. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shmheap.h"
#include "tests/common/mptest.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

#define MiB      (UINT64_C(1) << 20)
#define OBJ      4000 /* a small object: refills, not runs */
#define MAX_OBJS 65536

static struct daemon_fixture fx;

static void start(const char *quota_json)
{
    fixture_start(&fx, quota_json);
}

static void verify_and_stop(void)
{
    fixture_finish(&fx);
}

/* Shared with the children (mp_shared_alloc). */
struct quota_share {
    char socket_path[108];
    int go[2];                /* parent -> runaway: free half, then allocate again */
    int ready[2];             /* children -> parent: at the quota / done */
    uint64_t runaway_bytes;   /* what the runaway had when it was refused */
    int runaway_errno;        /* errno of that refusal */
    uint64_t others_bytes[3]; /* what each other client allocated */
};

static shmheap_t *child_attach(const char *path)
{
    shmheap_t *h = NULL;
    int r = shmheap_attach(path, &h);

    MP_REQUIRE(r == 0, "attach: %s: %s", shmheap_strerror(r), shmheap_last_error());
    return h;
}

static void pipe_put(int fd)
{
    char c = 'x';

    MP_REQUIRE(write(fd, &c, 1) == 1, "pipe write: %s", strerror(errno));
}

static void pipe_get(int fd)
{
    char c;

    MP_REQUIRE(read(fd, &c, 1) == 1, "pipe read: %s", strerror(errno));
}

/* Allocates OBJ-byte objects until refused (or MAX_OBJS); returns how many. */
static unsigned fill(shmheap_t *h, void **objs, unsigned from)
{
    unsigned n = from;

    while (n < MAX_OBJS) {
        objs[n] = shmheap_malloc(h, OBJ);
        if (!objs[n])
            break;
        memset(objs[n], 0x5c, 64);
        n++;
    }
    return n;
}

static int runaway(void *arg, unsigned idx)
{
    struct quota_share *sh = arg;
    void **objs = calloc(MAX_OBJS, sizeof(*objs));
    shmheap_t *h = child_attach(sh->socket_path);
    unsigned n, again;
    uint64_t off;

    (void) idx;
    MP_REQUIRE(objs, "calloc");
    n = fill(h, objs, 0);
    sh->runaway_errno = errno;
    sh->runaway_bytes = (uint64_t) n * OBJ;
    MP_REQUIRE(n < MAX_OBJS, "never refused: %u objects", n);
    /* Large objects, arenas and pools are refused the same way. */
    MP_REQUIRE(!shmheap_malloc(h, 1 << 20) && errno == ENOMEM, "large object not refused");
    MP_REQUIRE(shmheap_arena_create(h, 1 << 20, 0, &off) < 0, "arena not refused");
    pipe_put(sh->ready[1]);
    pipe_get(sh->go[0]);
    /* Freeing half lets it allocate again, up to the quota. */
    for (unsigned i = n / 2; i < n; i++)
        shmheap_free(h, objs[i]);
    shmheap_thread_flush(h);
    again = fill(h, objs, n / 2);
    MP_REQUIRE(again > n / 2 + n / 8, "after freeing half, only %u more objects", again - n / 2);
    for (unsigned i = 0; i < again; i++)
        shmheap_free(h, objs[i]);
    shmheap_detach(h);
    free(objs);
    return 0;
}

static int other(void *arg, unsigned idx)
{
    struct quota_share *sh = arg;
    shmheap_t *h = child_attach(sh->socket_path);
    void **objs = calloc(MAX_OBJS, sizeof(*objs));
    unsigned want = (unsigned) (3 * MiB / OBJ), n;

    MP_REQUIRE(objs, "calloc");
    /* Each of the others stays under its own quota: never refused. */
    n = 0;
    while (n < want) {
        objs[n] = shmheap_malloc(h, OBJ);
        MP_REQUIRE(objs[n], "client %u refused after %u objects: %s", idx, n, strerror(errno));
        n++;
    }
    sh->others_bytes[idx] = (uint64_t) n * OBJ;
    for (unsigned i = 0; i < n; i++)
        shmheap_free(h, objs[i]);
    shmheap_detach(h);
    free(objs);
    return 0;
}

static cJSON *clients_reply(void)
{
    cJSON *r = daemon_call_once(fx.socket_path, "{\"op\":\"clients\"}");

    ck_assert_msg(r && reply_is_ok(r), "clients refused");
    return r;
}

static uint64_t jnum(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    ck_assert_msg(cJSON_IsNumber(v), "no %s", name);
    return (uint64_t) v->valuedouble;
}

START_TEST(quota_client_refused_others_allocate)
{
    struct quota_share *sh = mp_shared_alloc(sizeof(*sh));
    uint64_t limit = 8 * MiB;
    bool seen_over = false;
    pid_t run, others[3];
    cJSON *r, *c;

    start("\"max_client_bytes\": \"8M\", \"thread_cache_bytes\": \"256K\"");
    snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", fx.socket_path);
    ck_assert_int_eq(pipe(sh->go), 0);
    ck_assert_int_eq(pipe(sh->ready), 0);
    run = mp_fork(runaway, sh, 0);
    ck_assert_int_eq(read(sh->ready[0], &(char){0}, 1), 1);
    /* Refused with ENOMEM, at the quota less at most a bundle, never past
     * it by more than its cache (256K). */
    ck_assert_int_eq(sh->runaway_errno, ENOMEM);
    ck_assert_msg(sh->runaway_bytes >= limit - MiB && sh->runaway_bytes <= limit + 256 * 1024,
                  "refused at %llu bytes, quota %llu", (unsigned long long) sh->runaway_bytes,
                  (unsigned long long) limit);
    /* The `clients` op shows the runaway at its quota. */
    r = clients_reply();
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(r, "clients"))
    {
        ck_assert_uint_eq(jnum(c, "quota_bytes"), limit);
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "over_quota")) ||
            jnum(c, "bytes_allocated") + MiB >= limit)
            seen_over = true;
    }
    cJSON_Delete(r);
    ck_assert_msg(seen_over, "clients shows no client at its quota");
    /* While the runaway is held at its quota, three others allocate. */
    for (unsigned i = 0; i < 3; i++)
        others[i] = mp_fork(other, sh, i);
    mp_wait_all_ok(others, 3, "other clients");
    for (unsigned i = 0; i < 3; i++)
        ck_assert_uint_ge(sh->others_bytes[i], 3 * MiB - OBJ);
    ck_assert_int_eq(write(sh->go[1], "x", 1), 1);
    mp_wait_ok(run, "runaway client");
    mp_shared_free(sh, sizeof(*sh));
    verify_and_stop();
}
END_TEST

/* What one uid_filler allocates at full speed: 3/4 of the uid's quota. */
#define UID_SHARE (12 * MiB)

static int uid_filler(void *arg, unsigned idx)
{
    struct quota_share *sh = arg;
    shmheap_t *h = child_attach(sh->socket_path);
    void **objs = calloc(MAX_OBJS, sizeof(*objs));
    unsigned n = 0;

    MP_REQUIRE(objs, "calloc");
    /* A steady allocator: the daemon's tick (100 ms) catches up with it.
     * Alone it stops short of the uid's quota (UID_SHARE), then trickles
     * (an object every 20 ms) until the other client's share joins it and
     * the tick refuses both: on a loaded machine one client may run long
     * before the other starts, and must not reach the quota by itself. */
    for (;;) {
        MP_REQUIRE(n < MAX_OBJS, "client %u never refused", idx);
        objs[n] = shmheap_malloc(h, OBJ);
        if (!objs[n])
            break;
        n++;
        if ((uint64_t) n * OBJ >= UID_SHARE)
            usleep(20000);
        else if (n % 64 == 0)
            usleep(2000);
    }
    MP_REQUIRE(errno == ENOMEM, "refusal with errno %d", errno);
    sh->others_bytes[idx] = (uint64_t) n * OBJ;
    pipe_put(sh->ready[1]);
    pipe_get(sh->go[0]);
    /* The uid is back under its quota once these are freed. */
    for (unsigned i = 0; i < n; i++)
        shmheap_free(h, objs[i]);
    shmheap_thread_flush(h);
    for (int tries = 0;; tries++) {
        void *p = shmheap_malloc(h, OBJ);

        if (p) {
            shmheap_free(h, p);
            break;
        }
        MP_REQUIRE(tries < 5000, "client %u still refused 10 s after freeing", idx);
        usleep(2000);
    }
    shmheap_detach(h);
    free(objs);
    return 0;
}

START_TEST(quota_uid_refuses_every_client_of_the_uid)
{
    struct quota_share *sh = mp_shared_alloc(sizeof(*sh));
    uint64_t total;
    pid_t kids[2];
    cJSON *r, *c;

    start("\"max_uid_bytes\": \"16M\", \"thread_cache_bytes\": \"256K\"");
    snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", fx.socket_path);
    ck_assert_int_eq(pipe(sh->go), 0);
    ck_assert_int_eq(pipe(sh->ready), 0);
    for (unsigned i = 0; i < 2; i++)
        kids[i] = mp_fork(uid_filler, sh, i);
    for (unsigned i = 0; i < 2; i++)
        ck_assert_int_eq(read(sh->ready[0], &(char){0}, 1), 1);
    /* Together they reached the uid's quota; each alone is under it. */
    total = sh->others_bytes[0] + sh->others_bytes[1];
    ck_assert_msg(total >= 16 * MiB - MiB, "refused at %llu bytes together",
                  (unsigned long long) total);
    ck_assert_msg(sh->others_bytes[0] < 16 * MiB && sh->others_bytes[1] < 16 * MiB,
                  "one client alone reached the uid quota");
    r = clients_reply();
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(r, "clients"))
    {
        ck_assert_uint_eq(jnum(c, "uid_quota_bytes"), 16 * MiB);
        ck_assert_uint_ge(jnum(c, "uid_bytes_allocated"), 16 * MiB - MiB);
        ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "over_quota")));
    }
    cJSON_Delete(r);
    ck_assert_msg(daemon_log_wait(&fx, "over max_uid_bytes", daemon_test_ms(2000)),
                  "the daemon did not log the refusal");
    ck_assert_int_eq(write(sh->go[1], "xx", 2), 2);
    mp_wait_all_ok(kids, 2, "uid clients");
    mp_shared_free(sh, sizeof(*sh));
    verify_and_stop();
}
END_TEST

START_TEST(quota_keys_have_bounds)
{
    cJSON *r;

    start("\"max_client_bytes\": 0");
    r = daemon_call_once(fx.socket_path,
                         "{\"op\":\"config.set\",\"key\":\"max_client_bytes\",\"value\":1000}");
    ck_assert(r && !reply_is_ok(r));
    ck_assert_str_eq(reply_error_code(r), "bad_value");
    ck_assert_msg(strstr(reply_error_message(r), "max_client_bytes"), "message: %s",
                  reply_error_message(r));
    cJSON_Delete(r);
    r = daemon_call_once(fx.socket_path,
                         "{\"op\":\"config.set\",\"key\":\"max_uid_bytes\",\"value\":\"64M\"}");
    ck_assert(r && reply_is_ok(r));
    cJSON_Delete(r);
    r = daemon_call_once(fx.socket_path, "{\"op\":\"config.get\",\"key\":\"max_uid_bytes\"}");
    ck_assert(r && reply_is_ok(r));
    ck_assert_uint_eq(jnum(cJSON_GetObjectItemCaseSensitive(r, "config"), "max_uid_bytes"),
                      64 * MiB);
    cJSON_Delete(r);
    verify_and_stop();
}
END_TEST

Suite *quota_suite(void)
{
    Suite *s = suite_create("quota");
    TCase *tc = tcase_create("quota");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, quota_client_refused_others_allocate);
    tcase_add_test(tc, quota_uid_refuses_every_client_of_the_uid);
    tcase_add_test(tc, quota_keys_have_bounds);
    suite_add_tcase(s, tc);
    return s;
}
