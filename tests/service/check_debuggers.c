/* Programs that use shmheap under the tools people debug with: valgrind,
 * whose address-space manager refuses the 512 GiB an attachment normally
 * reserves, and a process with a tight RLIMIT_AS, which refuses it the same
 * way. The attachment then reserves what it can get (shm/heap.c,
 * heap_reserve): everything works inside the segments it can map, and a
 * malloc that would need one past the cut fails with ENOMEM.
 *
 * Not under ASan or TSan: their shadow memory needs the address space a
 * tight RLIMIT_AS takes away, and valgrind cannot run sanitized programs.
 *
 * Then the tools' reports (client/track.c): tests/track/track_user makes
 * one mistake per run with shmheap objects, which memcheck (and, in the
 * ASan build, ASan) must report as it would for malloc's. */
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

/* ---- shmheap objects reported like malloc's (client/track.c) ---- */

static const char *track_user_path(void)
{
    static char buf[512];
    const char *dir = getenv("SHMHEAP_BUILD_DIR");

    snprintf(buf, sizeof(buf), "%s/tests/track_user", dir ? dir : "build");
    return buf;
}

/* Runs argv (env: an extra NAME=VALUE or NULL) with its stderr in a file
 * of the fixture's directory; returns the exit code (128 + signal), and the
 * stderr text in *ret_err (malloc'ed). */
static int run_capture(const char *const *argv, const char *env, char **ret_err)
{
    char path[256];
    pid_t pid;
    int code;
    FILE *f;
    long n;

    snprintf(path, sizeof(path), "%s/track.err", fx.dir);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        FILE *e = freopen(path, "w", stderr);

        if (!e)
            _exit(126);
        if (env)
            (void) putenv((char *) env);
        execvp(argv[0], (char *const *) argv);
        _exit(127);
    }
    code = exit_code(pid);
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    (void) fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    *ret_err = calloc(1, (size_t) n + 1);
    ck_assert_uint_eq(fread(*ret_err, 1, (size_t) n, f), (size_t) n);
    (void) fclose(f);
    return code;
}

/* Under memcheck, a user's mistakes with shmheap objects are reported as
 * with malloc's, and a clean program gets no report. */
START_TEST(track_memcheck_reports)
{
    static const struct {
        const char *mode, *want, *want2;
    } cases[] = {
            {"clean", NULL, NULL},
            {"uaf", "Invalid read of size 1", "40 bytes inside a block of size 64 free'd"},
            {"overflow", "Invalid write of size 1", "0 bytes after a block of size 40 alloc'd"},
            {"leak", "100 bytes in 1 blocks are definitely lost", NULL},
            {"double", "Invalid free()", "0 bytes inside a block of size 64 free'd"},
    };
    const char *prog = track_user_path();

    if (SANITIZED) {
        fprintf(stderr, "track_memcheck_reports: skipped under a sanitizer\n");
        return;
    }
    if (system("valgrind --version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "track_memcheck_reports: skipped, valgrind is not installed\n");
        return;
    }
    ck_assert_msg(access(prog, X_OK) == 0, "%s not built", prog);
    start();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *argv[] = {"valgrind",
                              "-q",
                              "--error-exitcode=97",
                              "--leak-check=full",
                              "--errors-for-leak-kinds=definite",
                              prog,
                              fx.socket_path,
                              cases[i].mode,
                              NULL};
        char *err = NULL;
        int code = run_capture(argv, NULL, &err);

        if (!cases[i].want) {
            ck_assert_msg(code == 0, "%s: exit %d under memcheck:\n%s", cases[i].mode, code, err);
        } else {
            ck_assert_msg(code == 97, "%s: exit %d, memcheck found nothing:\n%s", cases[i].mode,
                          code, err);
            ck_assert_msg(strstr(err, cases[i].want), "%s: no \"%s\" in:\n%s", cases[i].mode,
                          cases[i].want, err);
            ck_assert_msg(!cases[i].want2 || strstr(err, cases[i].want2), "%s: no \"%s\" in:\n%s",
                          cases[i].mode, cases[i].want2, err);
        }
        free(err);
    }
    /* The leak was the program's; the heap got its object back at detach. */
    ck_assert_uint_eq(stat_u64("bytes_in_use"), 0);
    verify_and_stop();
}
END_TEST

/* A program built with ASan: a use after free and an overrun of shmheap
 * objects are found (use-after-poison), a clean run is clean, and without
 * tracking the same use after free goes unseen. libshmheap is instrumented
 * here too, so tracking is asked for (SHMHEAP_TRACK=1); a program built
 * with ASan against the plain library gets it by itself. */
START_TEST(track_asan_reports)
{
    static const struct {
        const char *mode, *env;
        bool found;
    } cases[] = {
            {"clean", "SHMHEAP_TRACK=1", false},
            {"uaf", "SHMHEAP_TRACK=1", true},
            {"overflow", "SHMHEAP_TRACK=1", true},
            {"uaf", "SHMHEAP_TRACK=0", false},
    };
    const char *prog = track_user_path();

#if !defined(__SANITIZE_ADDRESS__)
    fprintf(stderr, "track_asan_reports: skipped, not an ASan build\n");
    return;
#endif
    ck_assert_msg(access(prog, X_OK) == 0, "%s not built", prog);
    start();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *argv[] = {prog, fx.socket_path, cases[i].mode, NULL};
        char *err = NULL;
        int code = run_capture(argv, cases[i].env, &err);

        if (cases[i].found) {
            ck_assert_msg(code != 0 && strstr(err, "AddressSanitizer: use-after-poison"),
                          "%s (%s): exit %d:\n%s", cases[i].mode, cases[i].env, code, err);
            ck_assert_msg(strstr(err, "track_user.c"), "%s: the report does not name the line",
                          cases[i].mode);
        } else {
            ck_assert_msg(code == 0, "%s (%s): exit %d:\n%s", cases[i].mode, cases[i].env, code,
                          err);
        }
        free(err);
    }
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
    tcase_add_test(tc, track_memcheck_reports);
    tcase_add_test(tc, track_asan_reports);
    suite_add_tcase(s, tc);
    return s;
}
