/* The daemon's own drains, and its verify, survive its death (issue 9).
 *
 * A trim empties the recyclers into the slabs. The daemon has no thread
 * cache of its own for it: it claims a cache slot for the drain, whose
 * transit record and handoff word carry each bundle (shm/tcache.c,
 * drain_own_slot), so that a SIGKILL anywhere leaves the bundle in shared
 * memory, and the next daemon's adoption settles it as it does a dead
 * client's slot (shm/reclaim.c). (Before, the popped bundle was only in the
 * daemon's memory: killed after the pop, the heap lost it for good.) A
 * verify pops every bundle to walk the recyclers, and holds them the same
 * way, in the bins of a slot claimed for the walk (tcache_hold_*), until it
 * pushes them back.
 *
 * For each point of the drain (FAULT_TRIM_DRAIN_*, and a return half done,
 * FAULT_RETURN_MID): a daemon on a state directory, started with
 * SHMHEAP_FAULT=<point>; a client leaves bundles in the recyclers and 100
 * objects it shared (their offsets kept by the test); a trim (a verify, for
 * FAULT_VERIFY_*) kills the daemon at the point; a new daemon adopts the heap from the directory.
 * Then: verify consistent (with the exact object count), exactly the 100
 * objects in use, none lost; once a client frees them and a trim runs,
 * allocations == frees, no byte in use and no block claimed. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shm/fault.h"
#include "shmheap.h"
#include "tests/common/mptest.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

#define OBJECTS 400u /* allocated by the first client */
#define KEPT    100u /* of them, shared and still allocated */
#define SIZE    64u

static struct daemon_fixture fx;

struct share {
    char socket_path[108];
    shmheap_off_t kept[KEPT];
};

static uint64_t jnum(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    ck_assert_msg(cJSON_IsNumber(v), "no number %s", name);
    return (uint64_t) v->valuedouble;
}

static uint64_t stat_u64(const char *name)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"stats\"}");
    uint64_t n;

    ck_assert(reply_is_ok(r));
    n = jnum(cJSON_GetObjectItemCaseSensitive(r, "stats"), name);
    cJSON_Delete(r);
    return n;
}

/* Objects in the recyclers, all classes. */
static uint64_t in_recyclers(void)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"stats\"}"), *c;
    uint64_t n = 0;

    ck_assert(reply_is_ok(r));
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(
                                  cJSON_GetObjectItemCaseSensitive(r, "stats"), "classes"))
    {
        n += jnum(c, "in_recycler");
    }
    cJSON_Delete(r);
    return n;
}

/* Allocates OBJECTS, shares KEPT of them (their offsets go to the test),
 * frees the rest and flushes its cache (bundles to the recyclers), then
 * detaches. */
static int filler(void *arg, unsigned idx)
{
    struct share *sh = arg;
    void *p[OBJECTS];
    shmheap_t *h;

    (void) idx;
    MP_REQUIRE(shmheap_attach(sh->socket_path, &h) == 0, "attach: %s", shmheap_last_error());
    for (unsigned i = 0; i < OBJECTS; i++) {
        p[i] = shmheap_malloc(h, SIZE);
        MP_REQUIRE(p[i] != NULL, "malloc");
    }
    for (unsigned i = 0; i < KEPT; i++) {
        sh->kept[i] = shmheap_to_off(h, p[i]);
        MP_REQUIRE(sh->kept[i] != 0, "to_off");
    }
    for (unsigned i = KEPT; i < OBJECTS; i++)
        shmheap_free(h, p[i]);
    shmheap_thread_flush(h);
    shmheap_detach(h);
    return 0;
}

/* Frees the KEPT objects by their offsets. */
static int freer(void *arg, unsigned idx)
{
    struct share *sh = arg;
    shmheap_t *h;

    (void) idx;
    MP_REQUIRE(shmheap_attach(sh->socket_path, &h) == 0, "attach: %s", shmheap_last_error());
    for (unsigned i = 0; i < KEPT; i++) {
        void *p = shmheap_from_off(h, sh->kept[i]);

        MP_REQUIRE(p != NULL, "from_off");
        shmheap_free(h, p);
    }
    shmheap_thread_flush(h);
    shmheap_detach(h);
    return 0;
}

static void start(const char *state_dir, int point)
{
    const char *args[] = {"--state-dir", state_dir, NULL};
    char env[32];

    if (point) {
        (void) snprintf(env, sizeof(env), "%d", point);
        ck_assert_int_eq(setenv("SHMHEAP_FAULT", env, 1), 0);
    }
    fixture_start_args(&fx, "\"retain_empty_blocks\": 0", args);
    ck_assert_int_eq(unsetenv("SHMHEAP_FAULT"), 0);
}

static void kill_mid_drain(int point, const char *name, const char *op)
{
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    char state_dir[128], what[96], *reply = NULL;
    uint64_t allocs, frees, rec;
    int r;

    (void) snprintf(what, sizeof(what), "the daemon killed at %s", name);
    (void) snprintf(state_dir, sizeof(state_dir), "%s/shmheapd-drain-XXXXXX",
                    access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(state_dir));

    start(state_dir, point);
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", fx.socket_path);
    mp_wait_ok(mp_fork(filler, sh, 0), "the filler");
    rec = in_recyclers();
    ck_assert_msg(rec > 0, "%s: nothing in the recyclers to drain", what);
    /* The trim's drain (the verify's walk) reaches the point: no reply,
     * the daemon is killed. */
    {
        char req[48];

        (void) snprintf(req, sizeof(req), "{\"op\":\"%s\"}", op);
        r = daemon_request(fx.socket_path, req, &reply, NULL, NULL);
    }
    ck_assert_msg(r < 0, "%s: the %s was answered: %s", what, op, reply ? reply : "");
    free(reply);
    daemon_stop(&fx);
    ck_assert_msg(WIFSIGNALED(fx.status) && WTERMSIG(fx.status) == SIGKILL,
                  "%s: the daemon was not killed at its fault point (%s)", what,
                  mp_status_str(fx.status, (char[32]){0}, 32));

    /* The next daemon adopts the heap and settles the dead one's drain. */
    start(state_dir, 0);
    ck_assert(daemon_log_wait(&fx, "adopted the heap", daemon_test_ms(10000)));
    fixture_verify(&fx);
    allocs = stat_u64("allocs");
    frees = stat_u64("frees");
    ck_assert_msg(allocs - frees == KEPT, "%s: %" PRIu64 " objects in use, not %u", what,
                  allocs - frees, KEPT);
    ck_assert_uint_eq(stat_u64("bytes_in_use"), (uint64_t) KEPT * SIZE);
    ck_assert_uint_eq(stat_u64("lost_objects"), 0);
    ck_assert_uint_eq(stat_u64("bad_frees"), 0);
    ck_assert_uint_eq(stat_u64("double_frees"), 0);

    /* Everything freed and trimmed: nothing left anywhere. */
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", fx.socket_path);
    mp_wait_ok(mp_fork(freer, sh, 1), "the freer");
    expect_reply(fixture_op(&fx, "{\"op\":\"trim\"}"), NULL);
    ck_assert_uint_eq(stat_u64("allocs"), stat_u64("frees"));
    ck_assert_uint_eq(stat_u64("bytes_in_use"), 0);
    ck_assert_uint_eq(stat_u64("lost_objects"), 0);
    ck_assert_uint_eq(in_recyclers(), 0);
    ck_assert_msg(fixture_claimed_blocks(&fx) == 0, "%s: %" PRIu64 " blocks leaked", what,
                  fixture_claimed_blocks(&fx));
    fixture_verify(&fx);
    fprintf(stderr,
            "daemon_drain: killed at %-20s (%-6s) with %" PRIu64
            " objects in the recyclers; adopted: %u in use, 0 lost, 0 blocks leaked\n",
            name, op, rec, KEPT);
    fixture_finish(&fx);
    {
        char cmd[160];

        /* The state directory holds only the heap's files. */
        (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", state_dir);
        ck_assert_int_eq(system(cmd), 0);
    }
}

static const struct {
    int point;
    const char *name;
    const char *op; /* the request that reaches it */
} drain_points[] = {
        {FAULT_TRIM_DRAIN_NOTED, "TRIM_DRAIN_NOTED", "trim"},
        {FAULT_TRIM_DRAIN_POPPED, "TRIM_DRAIN_POPPED", "trim"},
        {FAULT_TRIM_DRAIN_HANDED, "TRIM_DRAIN_HANDED", "trim"},
        {FAULT_TRIM_DRAIN_RETURNED, "TRIM_DRAIN_RETURNED", "trim"},
        /* Inside the return of a bundle, the segment lock held. */
        {FAULT_RETURN_MID, "RETURN_MID", "trim"},
        /* verify's walk of the recyclers: each bundle held in its slot. */
        {FAULT_VERIFY_NOTED, "VERIFY_NOTED", "verify"},
        {FAULT_VERIFY_POPPED, "VERIFY_POPPED", "verify"},
        {FAULT_VERIFY_HELD, "VERIFY_HELD", "verify"},
        {FAULT_VERIFY_CUT, "VERIFY_CUT", "verify"},
        {FAULT_VERIFY_PUSH_NOTED, "VERIFY_PUSH_NOTED", "verify"},
        {FAULT_VERIFY_PUSHED, "VERIFY_PUSHED", "verify"},
};

START_TEST(daemon_killed_mid_drain)
{
    kill_mid_drain(drain_points[_i].point, drain_points[_i].name, drain_points[_i].op);
}
END_TEST

Suite *daemon_drain_suite(void)
{
    Suite *s = suite_create("daemon_drain");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, daemon_killed_mid_drain, 0,
                        (int) (sizeof(drain_points) / sizeof(drain_points[0])));
    suite_add_tcase(s, tc);
    return s;
}
