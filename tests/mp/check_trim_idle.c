/* Trim reaches caches whose threads do not run (DESIGN.md, pitfalls: idle
 * threads keep their caches). A thread fills its cache and then blocks in
 * read() for the whole trim; the trimmer (another thread of the process, or
 * another process: the daemon's situation) must take that cache over with
 * the busy/steal protocol, so the figures show it drained and committed
 * memory falls. The sleeper then wakes and allocates correctly. A thread
 * that stays busy allocating during the trim must neither deadlock with the
 * trimmer nor corrupt anything; whether it flushed in time is not asserted.
 *
 * Config: retain_empty_blocks = 0, so every empty block is decommitted. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/heap.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/mp/suites.h"

static const size_t sleeper_sizes[] = {1024, 4096, 16384};
#define NSLEEP  (sizeof(sleeper_sizes) / sizeof(sleeper_sizes[0]))
#define SLEEP_N 300u /* objects per class: more than a cache holds */

static void trim_config(struct shm_config *cfg)
{
    heap_config_default(cfg);
    cfg->segment_size = UINT64_C(256) << 20;
    cfg->retain_empty_blocks = 0;
}

static void xwrite(int fd, char c)
{
    ssize_t r;

    do
        r = write(fd, &c, 1);
    while (r < 0 && errno == EINTR);
    MP_REQUIRE(r == 1, "write to pipe: %s", strerror(errno));
}

static char xread(int fd)
{
    ssize_t r;
    char c = 0;

    do
        r = read(fd, &c, 1);
    while (r < 0 && errno == EINTR);
    MP_REQUIRE(r == 1, "read from pipe: %zd %s", r, strerror(errno));
    return c;
}

/* The sleeper: fills its cache, says so on ready_fd, blocks reading
 * wake_fd, then allocates and frees again with patterns. */
struct sleeper {
    struct heap *h;
    int ready_fd, wake_fd;
    bool ok;
};

static bool alloc_round(struct heap *h, uint64_t salt)
{
    void **p = calloc(NSLEEP * SLEEP_N, sizeof(*p));
    bool ok = p != NULL;

    for (unsigned k = 0; ok && k < NSLEEP; k++)
        for (unsigned i = 0; i < SLEEP_N; i++) {
            void *q = heap_malloc(h, sleeper_sizes[k]);

            if (!q) {
                fprintf(stderr, "sleeper: heap_malloc(%zu) failed\n", sleeper_sizes[k]);
                ok = false;
                break;
            }
            mp_fill(q, sleeper_sizes[k], mp_tag((unsigned) salt, k, i));
            p[k * SLEEP_N + i] = q;
        }
    for (unsigned k = 0; p && k < NSLEEP; k++)
        for (unsigned i = 0; i < SLEEP_N; i++) {
            void *q = p[k * SLEEP_N + i];

            if (!q)
                continue;
            if (mp_check(q, sleeper_sizes[k], mp_tag((unsigned) salt, k, i)) != SIZE_MAX) {
                fprintf(stderr, "sleeper: object %u of %zu bytes overwritten\n", i,
                        sleeper_sizes[k]);
                ok = false;
            }
            heap_free(h, q);
        }
    free(p);
    return ok;
}

static void *sleeper_main(void *arg)
{
    struct sleeper *s = arg;

    s->ok = alloc_round(s->h, 1);
    xwrite(s->ready_fd, s->ok ? 'r' : 'x');
    (void) xread(s->wake_fd); /* idle through the whole trim */
    s->ok = alloc_round(s->h, 2) && s->ok;
    s->ok = alloc_round(s->h, 3) && s->ok;
    return NULL;
}

/* Before/after figures of a trim that must drain the sleeper's cache. */
static void
check_drained(struct heap *h, const struct heap_stats *before, const struct trim_result *res)
{
    struct heap_stats after;

    for (unsigned k = 0; k < NSLEEP; k++)
        ck_assert_msg(before->classes[sizeclass_of(sleeper_sizes[k])].cached > 0,
                      "the sleeper's cache holds no %zu-byte objects before the trim",
                      sleeper_sizes[k]);
    ck_assert_int_eq(heap_stats(h, &after), 0);
    ck_assert_uint_eq(res->caches_total, 1);
    ck_assert_msg(res->caches_flushed == res->caches_total,
                  "trim flushed %u of %u caches while nobody was busy", res->caches_flushed,
                  res->caches_total);
    for (unsigned k = 0; k < NSLEEP; k++) {
        unsigned cls = sizeclass_of(sleeper_sizes[k]);

        ck_assert_msg(after.classes[cls].cached == 0,
                      "%" PRIu64 " objects of %zu bytes still cached after the trim",
                      after.classes[cls].cached, sleeper_sizes[k]);
    }
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        ck_assert_uint_eq(after.classes[cls].in_recycler, 0);
    ck_assert_uint_gt(res->bytes_released, 0);
    ck_assert_msg(after.bytes_committed < before->bytes_committed,
                  "committed bytes did not fall: %" PRIu64 " -> %" PRIu64, before->bytes_committed,
                  after.bytes_committed);
    ck_assert_uint_eq(after.bytes_in_use, 0);
}

START_TEST(trim_idle_sleeper_thread)
{
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats before;
    struct trim_result res;
    struct sleeper s;
    int ready[2], wake[2];
    pthread_t tid;

    trim_config(&cfg);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    ck_assert_int_eq(pipe(ready), 0);
    ck_assert_int_eq(pipe(wake), 0);
    s = (struct sleeper){.h = t.h, .ready_fd = ready[1], .wake_fd = wake[0]};
    ck_assert_int_eq(pthread_create(&tid, NULL, sleeper_main, &s), 0);
    ck_assert_int_eq(xread(ready[0]), 'r');

    ck_assert_int_eq(heap_stats(t.h, &before), 0);
    ck_assert_int_eq(heap_trim(t.h, 500, &res), 0);
    check_drained(t.h, &before, &res);
    th_verify(t.h); /* the sleeper still sleeps */

    xwrite(wake[1], 'w');
    ck_assert_int_eq(pthread_join(tid, NULL), 0);
    ck_assert_msg(s.ok, "the sleeper found a problem after waking (see stderr)");
    th_verify(t.h);
    ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
    ck_assert_uint_eq(mp_blocks_not_free(t.h), 0);
    for (int i = 0; i < 2; i++) {
        (void) close(ready[i]);
        (void) close(wake[i]);
    }
    th_destroy(&t);
}
END_TEST

/* ---- a thread that keeps allocating during the trim ---- */

struct busy {
    struct heap *h;
    unsigned thr;
    uint32_t stop; /* atomic */
    uint64_t ops;  /* atomic */
    bool ok;
};

static void *busy_main(void *arg)
{
    struct busy *b = arg;
    enum { LIVE = 64 };
    void *p[LIVE] = {0};
    size_t sz[LIVE] = {0};
    uint64_t rng = 0xb05e + b->thr, seq = 0, ops = 0;

    b->ok = true;
    while (!__atomic_load_n(&b->stop, __ATOMIC_ACQUIRE)) {
        uint64_t r = test_rand(&rng);
        unsigned i = (unsigned) ((r >> 8) % LIVE);

        if (p[i]) {
            if (mp_check(p[i], sz[i], mp_tag(b->thr, 0, i)) != SIZE_MAX) {
                fprintf(stderr, "busy thread: object overwritten\n");
                b->ok = false;
            }
            heap_free(b->h, p[i]);
            p[i] = NULL;
        } else {
            sz[i] = 16 + (size_t) ((r >> 16) % 2048);
            p[i] = heap_malloc(b->h, sz[i]);
            if (!p[i]) {
                b->ok = false;
                break;
            }
            mp_fill(p[i], sz[i], mp_tag(b->thr, 0, i));
        }
        seq++;
        __atomic_store_n(&b->ops, ++ops, __ATOMIC_RELAXED);
    }
    for (unsigned i = 0; i < LIVE; i++)
        heap_free(b->h, p[i]);
    return NULL;
}

START_TEST(trim_busy_thread)
{
    struct shm_config cfg;
    struct test_heap t;
    struct trim_result res;
    struct heap_stats st;
    struct busy b[2];
    pthread_t tid[2];
    unsigned nbusy = 2, trims = (unsigned) test_scaled(5, 2);

    trim_config(&cfg);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    for (unsigned i = 0; i < nbusy; i++) {
        b[i] = (struct busy){.h = t.h, .thr = i};
        ck_assert_int_eq(pthread_create(&tid[i], NULL, busy_main, &b[i]), 0);
    }
    for (unsigned i = 0; i < nbusy; i++)
        while (__atomic_load_n(&b[i].ops, __ATOMIC_RELAXED) < 1000)
            mp_sleep_ms(1);
    for (unsigned k = 0; k < trims; k++) {
        /* Returns at all (no deadlock with the busy owners), and its
         * figures make sense; how many flushed in time is the machine's
         * business. */
        ck_assert_int_eq(heap_trim(t.h, 500, &res), 0);
        ck_assert_uint_le(res.caches_flushed, res.caches_total);
        ck_assert_uint_le(res.caches_total, nbusy);
        mp_sleep_ms(5);
    }
    for (unsigned i = 0; i < nbusy; i++) {
        uint64_t seen = __atomic_load_n(&b[i].ops, __ATOMIC_RELAXED);

        /* Still making progress after the trims. */
        while (__atomic_load_n(&b[i].ops, __ATOMIC_RELAXED) < seen + 1000 && b[i].ok)
            mp_sleep_ms(1);
        __atomic_store_n(&b[i].stop, 1, __ATOMIC_RELEASE);
    }
    for (unsigned i = 0; i < nbusy; i++) {
        ck_assert_int_eq(pthread_join(tid[i], NULL), 0);
        ck_assert_msg(b[i].ok, "busy thread %u found a problem (see stderr)", i);
    }
    ck_assert_int_eq(heap_stats(t.h, &st), 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    th_verify(t.h);
    ck_assert_int_eq(heap_trim(t.h, 500, &res), 0);
    ck_assert_uint_eq(mp_blocks_not_free(t.h), 0);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* ---- the sleeper in another process, the trim in the parent ---- */

struct proc_ctx {
    struct test_heap *t;
    int ready[2], wake[2];
};

static int sleeper_child(void *arg, unsigned idx)
{
    struct proc_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 60 + idx);
    struct sleeper s = {.h = h, .ready_fd = c->ready[1], .wake_fd = c->wake[0]};
    pthread_t tid;

    MP_REQUIRE(pthread_create(&tid, NULL, sleeper_main, &s) == 0, "pthread_create");
    MP_REQUIRE(pthread_join(tid, NULL) == 0, "pthread_join");
    MP_REQUIRE(s.ok, "the sleeper found a problem");
    MP_REQUIRE(th_verify_quiet(h), "heap_verify in the child");
    heap_detach(h);
    return 0;
}

START_TEST(trim_idle_other_process)
{
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats before;
    struct trim_result res;
    struct proc_ctx c = {.t = &t};
    pid_t pid;

    trim_config(&cfg);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    ck_assert_int_eq(pipe(c.ready), 0);
    ck_assert_int_eq(pipe(c.wake), 0);
    pid = mp_fork(sleeper_child, &c, 0);
    ck_assert_int_eq(xread(c.ready[0]), 'r');

    ck_assert_int_eq(heap_stats(t.h, &before), 0);
    ck_assert_int_eq(heap_trim(t.h, 500, &res), 0);
    check_drained(t.h, &before, &res);
    th_verify(t.h);

    xwrite(c.wake[1], 'w');
    mp_wait_ok(pid, "sleeping child");
    th_verify(t.h);
    ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
    ck_assert_uint_eq(mp_blocks_not_free(t.h), 0);
    for (int i = 0; i < 2; i++) {
        (void) close(c.ready[i]);
        (void) close(c.wake[i]);
    }
    th_destroy(&t);
}
END_TEST

Suite *trim_idle_suite(void)
{
    Suite *s = suite_create("trim_idle");
    TCase *tc = tcase_create("trim");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, trim_idle_sleeper_thread);
    tcase_add_test(tc, trim_busy_thread);
    tcase_add_test(tc, trim_idle_other_process);
    suite_add_tcase(s, tc);
    return s;
}
