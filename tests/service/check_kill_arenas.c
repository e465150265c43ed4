/* Arenas whose creator dies inside their creation, through the real daemon
 * (issue 9's reproduction): a process looping
 * shmheap_arena_create(h, 64 KiB, SHMHEAP_ARENA_SESSION), SIGKILLed 0-2 ms
 * after it attached, 100 times. The daemon reclaims each dead client (its
 * pidfd: its SESSION arenas, its caches, what it never shared, the runs
 * it was creating); after the last one, a trim must leave no block claimed
 * in any segment (by the `segments` op), and `verify` must find the heap
 * consistent. (Plain arenas and pools killed mid-create or mid-destroy:
 * tests/mp/check_faults.c and check_storm.c.) */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shmheap.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

#define KiB 1024u

static struct daemon_fixture fx;

static bool daemon_lists_pid(pid_t pid)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"clients\"}"), *c;
    bool found = false;

    ck_assert(reply_is_ok(r));
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(r, "clients"))
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, "pid");

        if (cJSON_IsNumber(v) && (pid_t) v->valuedouble == pid)
            found = true;
    }
    cJSON_Delete(r);
    return found;
}

/* Blocks claimed in every segment after a trim, by the daemon's
 * `segments` op (the parent never attaches: it forks the creators). */
static uint64_t claimed_blocks(void)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"trim\"}");

    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    return fixture_claimed_blocks(&fx);
}

struct kill_ctx {
    int pipe_fd; /* one byte once attached */
};

static int creator_child(void *arg, unsigned idx)
{
    struct kill_ctx *k = arg;
    shmheap_t *h = NULL;
    shmheap_off_t off;
    int r = shmheap_attach(fx.socket_path, &h);
    char one = 1;

    (void) idx;
    MP_REQUIRE(r == 0, "attach: %s", shmheap_last_error());
    MP_REQUIRE(write(k->pipe_fd, &one, 1) == 1, "write");
    for (;;) {
        r = shmheap_arena_create(h, 64 * KiB, SHMHEAP_ARENA_SESSION, &off);
        MP_REQUIRE(r == 0 || r == -SHMHEAP_ENOMEM, "arena_create: %s", shmheap_strerror(r));
    }
    return 5;
}

static void kill_rounds(unsigned rounds, uint64_t *rng)
{
    struct kill_ctx k;

    for (unsigned i = 0; i < rounds; i++) {
        char c, what[64];
        int fds[2];
        pid_t pid;

        ck_assert_int_eq(pipe(fds), 0);
        k.pipe_fd = fds[1];
        pid = mp_fork(creator_child, &k, i);
        (void) close(fds[1]);
        ck_assert_int_eq(read(fds[0], &c, 1), 1); /* attached */
        (void) close(fds[0]);
        mp_sleep_us((unsigned) (test_rand(rng) % 2001));
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        (void) snprintf(what, sizeof(what), "SESSION arena creator, round %u", i);
        mp_wait_signaled(pid, SIGKILL, what);
        for (unsigned waited = 0; daemon_lists_pid(pid); waited += 5) {
            ck_assert_msg(waited < 10000, "%s: still listed 10 s after its death", what);
            mp_sleep_us(5000);
        }
    }
}

START_TEST(kill_arena_creators)
{
    uint64_t rng = 0x9a7e4a, leaked;
    unsigned rounds = (unsigned) test_scaled(100, 5);

    fixture_start(&fx, "\"max_segments\": 4, \"retain_empty_blocks\": 0");
    ck_assert_uint_eq(claimed_blocks(), 0);
    kill_rounds(rounds, &rng);
    leaked = claimed_blocks();
    ck_assert_msg(leaked == 0, "SESSION arena creators: %" PRIu64 " blocks leaked", leaked);
    fixture_verify(&fx);
    fprintf(stderr, "kill_arena_creators: %u SESSION creators killed, 0 blocks leaked\n", rounds);
    fixture_finish(&fx);
}
END_TEST

Suite *kill_arenas_suite(void)
{
    Suite *s = suite_create("kill_arenas");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, kill_arena_creators);
    suite_add_tcase(s, tc);
    return s;
}
