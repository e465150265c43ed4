/* A reclaim that fails is retried (issue 9, daemon/retry.c).
 *
 * The daemon waits for a segment lock at most DAEMON_LOCK_WAIT_MS. Here a
 * client stops (SIGSTOP at the fault point FAULT_TAKE_MID, inside a refill
 * from the slabs, the segment lock held: SHMHEAP_FAULT=<point>:stop) and another
 * client, holding objects in its thread cache and objects it never shared,
 * is killed. The daemon's reclaim of the dead one meets the held lock and
 * fails: the stats show it pending, its thread cache still counted, and
 * the retries go on. Then the stopped holder is killed: its lock is
 * recovered, the retry succeeds, and the figures are exact (no cache left,
 * no byte in use, the dead client's private objects reclaimed one for one,
 * nothing lost), and verify finds the heap consistent. The second test
 * stops the daemon (SIGTERM) while the reclaim is pending, kills the holder,
 * and starts a daemon on the same state directory: its adoption reclaims
 * what the dead client held, with the same exact figures. The third: a
 * client that detaches (and lives on) while the lock is held; the sweep of
 * its private objects is retried the same way. No timing is
 * asserted: every wait is a bounded poll. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shm/fault.h"
#include "shmheap.h"
#include "tests/common/mptest.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/prog.h"
#include "tests/service/program.h"
#include "tests/service/suites.h"

#define DIER_OBJECTS 200u /* allocated by the client that dies */
#define DIER_KEPT    50u  /* of them, still allocated (private) at its death */
#define DIER_SIZE    64u

static struct daemon_fixture fx;

struct share {
    char socket_path[108];
    int ready[2]; /* one byte per child once it is where it should be */
    int go[2];    /* the detacher's cue */
};

static uint64_t stat_u64(const char *name)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"stats\"}");
    const cJSON *v;
    uint64_t n;

    ck_assert(reply_is_ok(r));
    v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "stats"), name);
    ck_assert_msg(cJSON_IsNumber(v), "stats: no number %s", name);
    n = (uint64_t) v->valuedouble;
    cJSON_Delete(r);
    return n;
}

/* Polls stats until name == want (name >= want with at_least), for at most
 * 60 s (scaled): no timing is asserted, only that it gets there. */
static void wait_stat(const char *name, uint64_t want, bool at_least)
{
    int bound = daemon_test_ms(60000);
    uint64_t v = 0;

    for (int waited = 0; waited < bound; waited += 20) {
        v = stat_u64(name);
        if (v == want || (at_least && v > want))
            return;
        mp_sleep_ms(20);
    }
    ck_abort_msg("stats %s is %" PRIu64 ", not %s%" PRIu64 " after %d ms", name, v,
                 at_least ? ">= " : "", want, bound);
}

/* Allocates DIER_OBJECTS, frees all but DIER_KEPT (into its thread cache,
 * some to the recycler), says so, and waits for its SIGKILL. */
static int dier(void *arg, unsigned idx)
{
    struct share *sh = arg;
    void *p[DIER_OBJECTS];
    shmheap_t *h;
    char one = 1;

    (void) idx;
    MP_REQUIRE(shmheap_attach(sh->socket_path, &h) == 0, "attach: %s", shmheap_last_error());
    for (unsigned i = 0; i < DIER_OBJECTS; i++) {
        p[i] = shmheap_malloc(h, DIER_SIZE);
        MP_REQUIRE(p[i] != NULL, "malloc");
    }
    for (unsigned i = DIER_KEPT; i < DIER_OBJECTS; i++)
        shmheap_free(h, p[i]);
    MP_REQUIRE(write(sh->ready[1], &one, 1) == 1, "write");
    for (;;)
        (void) pause();
    return 5;
}

/* The holder: tests/static_user (a program of its own, so that
 * SHMHEAP_FAULT reaches the library's fault points, which a forked child
 * cannot set: libshmheap.a keeps them local). Its first refill of a class
 * comes from the slabs: it stops inside the take, the segment's lock held. */
static pid_t holder_start(void)
{
    static char env[32];
    const char *argv[] = {program_path("tests/static_user", NULL), fx.socket_path, NULL};
    const char *envp[] = {env, NULL};
    char log[160];
    pid_t pid;

    (void) snprintf(env, sizeof(env), "SHMHEAP_FAULT=%d:stop", (int) FAULT_TAKE_MID);
    (void) snprintf(log, sizeof(log), "%s/holder.log", fx.dir);
    pid = prog_spawn(argv, envp, log);
    ck_assert_int_gt(pid, 0);
    return pid;
}

static bool log_has(const char *needle)
{
    char *log = daemon_log(&fx);
    bool found = strstr(log, needle) != NULL;

    free(log);
    return found;
}

/* The first verify after the holder's death reports the lock waits that
 * timed out since the last one (by design: owner_lock_report), and nothing
 * else; the next one finds the heap consistent. */
static void verify_reports_only_the_wait(void)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"verify\"}"), *p;
    unsigned n = 0;

    ck_assert(reply_is_ok(r));
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(r, "problems"))
    {
        ck_assert_msg(cJSON_IsString(p) && strstr(p->valuestring, "lock held over"), "verify: %s",
                      cJSON_IsString(p) ? p->valuestring : "?");
        n++;
    }
    ck_assert_uint_eq(n, 1);
    cJSON_Delete(r);
}

/* What a test starts with: a daemon (on state_dir, if not NULL), the
 * figures before any client, the holder stopped with the lock, and the
 * dier killed; returns once its reclaim has failed and been retried (at
 * least twice) and is still pending. */
struct scene {
    struct share *sh;
    uint64_t caches0, reclaimed0;
    pid_t stuck;
};

static void scene_start(struct scene *sc, const char *state_dir)
{
    const char *args[] = {"--state-dir", state_dir, NULL};
    pid_t dead;
    int status;
    char c;

    sc->sh = mp_shared_alloc(sizeof(*sc->sh));
    /* Nothing else may take the locks meanwhile: no periodic or automatic
     * trim (their defaults are off; said here for the reader). */
    fixture_start_args(&fx, "\"trim_interval_ms\": 0, \"decay_ms\": 0", state_dir ? args : NULL);
    (void) snprintf(sc->sh->socket_path, sizeof(sc->sh->socket_path), "%s", fx.socket_path);
    ck_assert_int_eq(pipe(sc->sh->ready), 0);
    sc->caches0 = stat_u64("thread_caches");
    sc->reclaimed0 = stat_u64("reclaimed_objects");
    ck_assert_uint_eq(stat_u64("reclaims_pending"), 0);
    ck_assert_uint_eq(stat_u64("reclaim_retries"), 0);

    dead = mp_fork(dier, sc->sh, 0);
    ck_assert_int_eq(read(sc->sh->ready[0], &c, 1), 1);
    (void) close(sc->sh->ready[0]);
    (void) close(sc->sh->ready[1]);
    sc->stuck = holder_start();
    ck_assert_int_eq(waitpid(sc->stuck, &status, WUNTRACED), sc->stuck);
    ck_assert_msg(WIFSTOPPED(status), "the holder did not stop at its fault point: %s",
                  mp_status_str(status, (char[32]){0}, 32));
    ck_assert_uint_eq(stat_u64("thread_caches"), sc->caches0 + 2);

    /* The dead client's reclaim meets the stopped holder's lock. */
    ck_assert_int_eq(kill(dead, SIGKILL), 0);
    mp_wait_signaled(dead, SIGKILL, "the client that dies");
    wait_stat("reclaims_pending", 1, false);
    wait_stat("reclaim_retries", 2, true);
    /* Still pending, and what it held is still held (its cache counted). */
    ck_assert_uint_eq(stat_u64("reclaims_pending"), 1);
    ck_assert_uint_eq(stat_u64("thread_caches"), sc->caches0 + 2);
    ck_assert_uint_eq(stat_u64("lost_objects"), 0);
    ck_assert(log_has("reclaiming failed: Connection timed out; retrying in"));
}

/* Once every client is reclaimed: the exact figures. */
static void scene_check(const struct scene *sc)
{
    wait_stat("thread_caches", sc->caches0, false);
    ck_assert_uint_eq(stat_u64("reclaimed_objects") - sc->reclaimed0, DIER_KEPT);
    ck_assert_uint_eq(stat_u64("bytes_in_use"), 0);
    ck_assert_uint_eq(stat_u64("lost_objects"), 0);
    ck_assert_uint_eq(stat_u64("bad_frees"), 0);
}

START_TEST(reclaim_retried_after_lock_timeout)
{
    struct scene sc;
    uint64_t retries;

    scene_start(&sc, NULL);
    /* The holder goes: its lock is recovered, the next retry succeeds. */
    ck_assert_int_eq(kill(sc.stuck, SIGKILL), 0);
    mp_wait_signaled(sc.stuck, SIGKILL, "the stopped lock holder");
    wait_stat("reclaims_pending", 0, false);
    ck_assert(daemon_log_wait(&fx, "its reclaim succeeded after", daemon_test_ms(10000)));
    scene_check(&sc);
    retries = stat_u64("reclaim_retries");
    ck_assert_uint_ge(retries, 2);
    verify_reports_only_the_wait();
    fixture_verify(&fx);
    fprintf(stderr,
            "reclaim_retry: the dead client's reclaim succeeded after %" PRIu64
            " retries; %u private objects reclaimed, 0 lost\n",
            retries, DIER_KEPT);
    fixture_finish(&fx);
}
END_TEST

/* Stopped (SIGTERM) with the reclaim still pending: the daemon exits
 * cleanly, and the next one, on the same state directory, reclaims what
 * the dead client held at its adoption. */
START_TEST(reclaim_pending_at_shutdown_adopted)
{
    char state_dir[128], cmd[160];
    struct scene sc;
    cJSON *r, *p;

    (void) snprintf(state_dir, sizeof(state_dir), "%s/shmheapd-retry-XXXXXX",
                    access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(state_dir));
    scene_start(&sc, state_dir);
    ck_assert(daemon_log_wait(&fx, "retrying in", daemon_test_ms(10000)));
    fixture_stop(&fx); /* a clean exit (status 0), the reclaim still pending */
    ck_assert_int_eq(kill(sc.stuck, SIGKILL), 0);
    mp_wait_signaled(sc.stuck, SIGKILL, "the stopped lock holder");

    fixture_start_args(&fx, "\"trim_interval_ms\": 0, \"decay_ms\": 0",
                       (const char *const[]){"--state-dir", state_dir, NULL});
    ck_assert(daemon_log_wait(&fx, "adopted the heap", daemon_test_ms(10000)));
    ck_assert_uint_eq(stat_u64("reclaims_pending"), 0);
    scene_check(&sc);
    /* The new daemon's lock recoveries may be reported once; nothing else. */
    r = fixture_op(&fx, "{\"op\":\"verify\"}");
    ck_assert(reply_is_ok(r));
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(r, "problems"))
    {
        ck_assert_msg(cJSON_IsString(p) && strstr(p->valuestring, "lock"), "verify: %s",
                      cJSON_IsString(p) ? p->valuestring : "?");
    }
    cJSON_Delete(r);
    fixture_verify(&fx);
    fprintf(stderr,
            "reclaim_retry: pending at SIGTERM; the next daemon's adoption reclaimed "
            "the dead client's cache and its %u private objects, 0 lost\n",
            DIER_KEPT);
    fixture_finish(&fx);
    (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", state_dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* Allocates DIER_KEPT objects it never shares, then (on a byte from the
 * test) detaches, leaving them to the daemon's sweep, and lives on until
 * its pipe closes. Its cache holds no more than the recycler takes (a
 * detach's flush pushes bundles, lock-free), so it detaches while the
 * holder keeps the segment's lock. */
static int detacher(void *arg, unsigned idx)
{
    struct share *sh = arg;
    shmheap_t *h;
    char c, one = 1;

    (void) idx;
    (void) close(sh->go[1]); /* the test's end: its close is our EOF */
    MP_REQUIRE(shmheap_attach(sh->socket_path, &h) == 0, "attach: %s", shmheap_last_error());
    for (unsigned i = 0; i < DIER_KEPT; i++)
        MP_REQUIRE(shmheap_malloc(h, DIER_SIZE) != NULL, "malloc");
    MP_REQUIRE(write(sh->ready[1], &one, 1) == 1, "write");
    MP_REQUIRE(read(sh->go[0], &c, 1) == 1, "read");
    shmheap_detach(h);
    MP_REQUIRE(write(sh->ready[1], &one, 1) == 1, "write");
    (void) read(sh->go[0], &c, 1); /* EOF: the test is done */
    return 0;
}

/* A detach's sweep that meets the held lock is retried the same way; once
 * the holder is gone it frees the detached attachment's private objects
 * and the client's record goes. */
START_TEST(detach_sweep_retried)
{
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    uint64_t reclaimed0;
    pid_t det, stuck;
    int status;
    char c, one = 1;

    fixture_start(&fx, "\"trim_interval_ms\": 0, \"decay_ms\": 0");
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", fx.socket_path);
    ck_assert_int_eq(pipe(sh->ready), 0);
    ck_assert_int_eq(pipe(sh->go), 0);
    reclaimed0 = stat_u64("reclaimed_objects");
    det = mp_fork(detacher, sh, 0);
    ck_assert_int_eq(read(sh->ready[0], &c, 1), 1);
    stuck = holder_start();
    ck_assert_int_eq(waitpid(stuck, &status, WUNTRACED), stuck);
    ck_assert_msg(WIFSTOPPED(status), "the holder did not stop at its fault point: %s",
                  mp_status_str(status, (char[32]){0}, 32));
    ck_assert_int_eq(write(sh->go[1], &one, 1), 1);
    ck_assert_int_eq(read(sh->ready[0], &c, 1), 1); /* detached */
    wait_stat("reclaims_pending", 1, false);
    wait_stat("reclaim_retries", 2, true);
    ck_assert(log_has("detached; reclaiming failed: Connection timed out; retrying in"));
    ck_assert_uint_eq(stat_u64("reclaimed_objects"), reclaimed0);

    ck_assert_int_eq(kill(stuck, SIGKILL), 0);
    mp_wait_signaled(stuck, SIGKILL, "the stopped lock holder");
    wait_stat("reclaims_pending", 0, false);
    ck_assert(daemon_log_wait(&fx, "detached: its reclaim succeeded after", daemon_test_ms(10000)));
    /* The detacher still runs: only the sweep freed its objects. */
    ck_assert_uint_eq(stat_u64("reclaimed_objects") - reclaimed0, DIER_KEPT);
    ck_assert_uint_eq(stat_u64("bytes_in_use"), 0);
    ck_assert_uint_eq(stat_u64("lost_objects"), 0);
    (void) close(sh->go[1]);
    mp_wait_ok(det, "the detacher");
    verify_reports_only_the_wait();
    fixture_verify(&fx);
    fprintf(stderr, "reclaim_retry: a detach's sweep retried; %u private objects freed, 0 lost\n",
            DIER_KEPT);
    fixture_finish(&fx);
}
END_TEST

Suite *reclaim_retry_suite(void)
{
    Suite *s = suite_create("reclaim_retry");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, reclaim_retried_after_lock_timeout);
    tcase_add_test(tc, reclaim_pending_at_shutdown_adopted);
    tcase_add_test(tc, detach_sweep_retried);
    suite_add_tcase(s, tc);
    return s;
}
