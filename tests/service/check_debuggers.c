/* Programs that use shmheap under the tools people debug with: valgrind,
 * whose address-space manager refuses the 512 GiB an attachment normally
 * reserves, and a process with a tight RLIMIT_AS, which refuses it the same
 * way. The attachment then reserves what it can get (shm/heap.c,
 * heap_reserve): everything works inside the segments it can map, and a
 * malloc that would need one past the cut fails with ENOMEM.
 *
 * Not under ASan or TSan: their shadow memory needs the address space a
 * tight RLIMIT_AS takes away, and valgrind cannot run sanitized programs. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shmheap.h"
#include "tests/common/mptest.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#    define SANITIZED 1
#else
#    define SANITIZED 0
#endif

static struct daemon_fixture fx;

static void start(void)
{
    /* Small segments and room for several: the limit a test meets is the
     * client's reservation, never max_segments. */
    fixture_start(&fx, "\"max_segments\": 8");
}

static uint64_t stat_u64(const char *name)
{
    cJSON *r = daemon_call_once(fx.socket_path, "{\"op\":\"stats\"}");
    const cJSON *v;
    uint64_t x;

    ck_assert_msg(r && reply_is_ok(r), "stats refused");
    v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "stats"), name);
    if (!v)
        v = cJSON_GetObjectItemCaseSensitive(r, name);
    ck_assert_msg(cJSON_IsNumber(v), "stats has no %s", name);
    x = (uint64_t) v->valuedouble;
    cJSON_Delete(r);
    return x;
}

static void verify_and_stop(void)
{
    fixture_finish(&fx);
}

/* 40 GiB of address space: room for the control segment and one heap
 * segment slot (16 GiB each) and the program itself, not for a third. */
#define TIGHT_AS (UINT64_C(40) << 30)
#define BIG_OBJ  (UINT64_C(1) << 20)

static int tight_child(void *arg, unsigned idx)
{
    const char *socket_path = arg;
    struct rlimit rl = {TIGHT_AS, TIGHT_AS};
    struct shmheap_stats st;
    unsigned n = 0;
    void *objs[512];
    shmheap_t *h;
    int r;

    (void) idx;
    MP_REQUIRE(setrlimit(RLIMIT_AS, &rl) == 0, "setrlimit: %s", strerror(errno));
    r = shmheap_attach(socket_path, &h);
    MP_REQUIRE(r == 0, "attach with a 40 GiB address space: %s: %s", shmheap_strerror(r),
               shmheap_last_error());
    /* Small objects and large ones work inside the first segment. */
    for (unsigned i = 0; i < 1000; i++) {
        char *p = shmheap_malloc(h, 16 + i);

        MP_REQUIRE(p, "malloc %u: %s", 16 + i, strerror(errno));
        memset(p, 0x5a, 16 + i);
        shmheap_free(h, p);
    }
    /* Fill past one segment: the heap grows (the daemon makes segment 2),
     * but this process cannot map it, so malloc says ENOMEM, never a
     * signal. */
    for (;;) {
        MP_REQUIRE(n < sizeof(objs) / sizeof(objs[0]), "%u MiB allocated: no limit met", n);
        objs[n] = shmheap_malloc(h, BIG_OBJ);
        if (!objs[n])
            break;
        memset(objs[n], 0xa5, 4096);
        n++;
    }
    MP_REQUIRE(errno == ENOMEM, "malloc past the reservation: errno %d (%s), want ENOMEM", errno,
               strerror(errno));
    /* A 64 MiB segment holds at least 48 objects of 1 MiB. */
    MP_REQUIRE(n >= 48, "only %u MiB before ENOMEM", n);
    MP_REQUIRE(shmheap_stats(h, &st) == 0, "stats");
    MP_REQUIRE(st.nsegments == 1, "%u segments mapped, want 1", (unsigned) st.nsegments);
    while (n > 0)
        shmheap_free(h, objs[--n]);
    shmheap_detach(h);
    return 0;
}

START_TEST(attach_with_little_address_space)
{
    if (SANITIZED) {
        fprintf(stderr, "attach_with_little_address_space: skipped under a sanitizer\n");
        return;
    }
    start();
    mp_wait_ok(mp_fork(tight_child, fx.socket_path, 0), "client with RLIMIT_AS 40 GiB");
    ck_assert_uint_eq(stat_u64("bytes_in_use"), 0);
    verify_and_stop();
}
END_TEST

/* Runs argv under valgrind's memcheck; returns its pid. */
static pid_t spawn_valgrind(const char *const *args)
{
    const char *argv[16] = {"valgrind", "-q", "--error-exitcode=97", "--leak-check=full",
                            "--errors-for-leak-kinds=definite"};
    unsigned n = 5;
    pid_t pid;

    for (unsigned i = 0; args[i] && n + 1 < sizeof(argv) / sizeof(argv[0]); i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execvp("valgrind", (char *const *) argv);
        _exit(127);
    }
    return pid;
}

static const char *example_path(const char *name)
{
    static char buf[2][512];
    static unsigned k;
    const char *dir = getenv("SHMHEAP_BUILD_DIR");
    char *b = buf[k++ % 2];

    snprintf(b, sizeof(buf[0]), "%s/examples/%s", dir ? dir : "build", name);
    return b;
}

static int exit_code(pid_t pid)
{
    int st;

    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

START_TEST(examples_run_under_valgrind)
{
    const char *consumer, *producer;
    pid_t c, p;

    if (SANITIZED) {
        fprintf(stderr, "examples_run_under_valgrind: skipped under a sanitizer\n");
        return;
    }
    if (system("valgrind --version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "examples_run_under_valgrind: skipped, valgrind is not installed\n");
        return;
    }
    consumer = example_path("consumer");
    producer = example_path("producer");
    if (access(consumer, X_OK) != 0 || access(producer, X_OK) != 0) {
        fprintf(stderr, "examples_run_under_valgrind: skipped, %s not built\n", consumer);
        return;
    }
    start();
    /* One process allocates, the other frees: both under memcheck, which
     * must report no error (exit 97 if it does). */
    c = spawn_valgrind((const char *[]){consumer, "-s", fx.socket_path, NULL});
    p = spawn_valgrind((const char *[]){producer, "-s", fx.socket_path, "2000", NULL});
    ck_assert_msg(exit_code(p) == 0, "producer under valgrind failed");
    ck_assert_msg(exit_code(c) == 0, "consumer under valgrind failed");
    ck_assert_uint_eq(stat_u64("bytes_in_use"), 0);
    verify_and_stop();
}
END_TEST

Suite *debuggers_suite(void)
{
    Suite *s = suite_create("debuggers");
    TCase *tc = tcase_create("debuggers");

    /* valgrind starts slowly; two programs under it take a few seconds. */
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, attach_with_little_address_space);
    tcase_add_test(tc, examples_run_under_valgrind);
    suite_add_tcase(s, tc);
    return s;
}
