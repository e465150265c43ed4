/* The per-CPU caches across processes (shm/percpu.c).
 *
 * shared:  a process frees objects into CPU 0's caches and another
 *          process, pinned to CPU 0 too, gets exactly those objects back:
 *          the caches belong to the CPU, not to a process.
 * mapping: an object freed into a CPU cache by the process that grew the
 *          heap lies in a segment another process has not mapped yet;
 *          that process's pop must not touch it before it maps the
 *          segment (it used to fault on the owner tag's store: found by
 *          client_four_processes_cross_free in a PERCPU=1 build).
 * kill:    a child churning through the per-CPU path in two threads is
 *          SIGKILLed at a random moment, 20 times on one heap; after each
 *          kill the parent reclaims the dead (its slots, then the sweep of
 *          its private objects, which drains every CPU's caches first by
 *          pinning itself to each CPU) and verifies: consistent always,
 *          the exact object count whenever no thread died inside the
 *          thread cache's busy section, and nothing in use once the dead
 *          child's objects are swept, beyond what a death inside a refill
 *          or flush may take with it (docs/ARCHITECTURE.md, "Per-CPU
 *          caches", kill windows).
 * Skipped (passing, with a note) where glibc registered no rseq. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/percpu.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/mp/suites.h"

static bool no_rseq(void)
{
    if (rseq_available())
        return false;
    fprintf(stderr, "check_percpu_death: no rseq registered by glibc, skipped\n");
    return true;
}

static int pin_cpu0(void)
{
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(0, &set);
    return sched_setaffinity(0, sizeof(set), &set);
}

/* ---- one CPU's cache, two processes ---- */

#define SHARED_N 20

struct shared_ctx {
    struct test_heap *t;
    uint64_t offs[SHARED_N]; /* what the parent freed, in order */
};

static int shared_child(void *arg, unsigned idx)
{
    struct shared_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 50 + idx);
    void *got[SHARED_N];

    MP_REQUIRE(pin_cpu0() == 0, "sched_setaffinity");
    /* LIFO: the last object the other process freed comes out first. */
    for (unsigned i = SHARED_N; i-- > 0;) {
        void *p = percpu_malloc(h, 96);

        MP_REQUIRE(p != NULL, "percpu_malloc");
        MP_REQUIRE(heap_to_off(h, p) == c->offs[i], "object %u: %#" PRIx64 ", expected %#" PRIx64,
                   i, heap_to_off(h, p), c->offs[i]);
        MP_REQUIRE(mp_check_sparse(p, 96, mp_tag(1, 0, i)), "object %u lost its bytes", i);
        got[i] = p;
    }
    for (unsigned i = 0; i < SHARED_N; i++)
        percpu_free(h, got[i]);
    heap_detach(h);
    return 0;
}

START_TEST(percpu_shared_by_processes)
{
    struct test_heap t;
    struct shared_ctx *c = mp_shared_alloc(sizeof(*c));
    void *p[SHARED_N];

    if (no_rseq())
        return;
    th_create(&t, NULL, SHM_PAGES_OFF);
    c->t = &t;
    ck_assert_int_eq(pin_cpu0(), 0);
    for (unsigned i = 0; i < SHARED_N; i++) {
        p[i] = percpu_malloc(t.h, 96);
        ck_assert_ptr_nonnull(p[i]);
        mp_fill_sparse(p[i], 96, mp_tag(1, 0, i));
        /* Shared: another process may take it (and its tag is cleared). */
        c->offs[i] = heap_to_off(t.h, p[i]);
    }
    /* Empty caches, so that the 20 frees below are all CPU 0's cache
     * holds of this class (what the refills left there goes back). */
    (void) percpu_drain_all(t.h, NULL);
    for (unsigned i = 0; i < SHARED_N; i++)
        percpu_free(t.h, p[i]);
    mp_wait_ok(mp_fork(shared_child, c, 0), "the other process on CPU 0");
    th_verify(t.h);
    th_destroy(&t);
    mp_shared_free(c, sizeof(*c));
}
END_TEST

/* ---- an object in a segment the popper has not mapped ---- */

struct mapping_ctx {
    struct test_heap *t;
    uint32_t attached; /* atomic: the child has attached (mapped what exists) */
    uint32_t pushed;   /* atomic: the parent has freed the object into CPU 0's cache */
    uint64_t off;
};

static int mapping_child(void *arg, unsigned idx)
{
    struct mapping_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 60 + idx);
    void *p;

    MP_REQUIRE(pin_cpu0() == 0, "sched_setaffinity");
    p = percpu_malloc(h, 16); /* attaches the area; maps what exists now */
    MP_REQUIRE(p != NULL, "percpu_malloc");
    percpu_free(h, p);
    __atomic_store_n(&c->attached, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&c->pushed, __ATOMIC_ACQUIRE))
        mp_sleep_ms(1);
    MP_REQUIRE((c->off >> SHM_SEG_SHIFT) >= load_acquire(&h->nmapped),
               "the object's segment is mapped already: the test tests nothing");
    /* Here the new segment cannot be mapped at all (a heap_local child
     * has no way to get its fd): the pop must leave the object alone
     * rather than write its tag into unmapped address space. NULL (our
     * segment is full and we cannot grow) or another object is fine. */
    p = percpu_malloc(h, 96);
    MP_REQUIRE(!p || heap_to_off(h, p) != c->off, "took an object it cannot have mapped");
    if (p)
        percpu_free(h, p);
    heap_detach(h);
    return 0;
}

START_TEST(percpu_pop_unmapped_segment)
{
    struct mapping_ctx *c = mp_shared_alloc(sizeof(*c));
    struct shm_config cfg;
    struct test_heap t;
    void *big[64], *p = NULL;
    unsigned nbig = 0;
    pid_t pid;

    if (no_rseq())
        return;
    th_config(&cfg, UINT64_C(64) << 20);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    c->t = &t;
    ck_assert_int_eq(pin_cpu0(), 0);
    pid = mp_fork(mapping_child, c, 0);
    while (!__atomic_load_n(&c->attached, __ATOMIC_ACQUIRE))
        mp_sleep_ms(1);
    /* Fill segment 1 with large objects until the heap grows, then take
     * small objects until one lies in the new segment. */
    while (load_acquire(&t.h->nmapped) < 3 && nbig < 64) {
        big[nbig] = heap_malloc(t.h, UINT64_C(4) << 20);
        ck_assert_ptr_nonnull(big[nbig]);
        nbig++;
    }
    ck_assert_uint_ge(load_acquire(&t.h->nmapped), 3);
    for (unsigned i = 0; i < 100000; i++) {
        p = percpu_malloc(t.h, 96);
        ck_assert_ptr_nonnull(p);
        if ((heap_to_off(t.h, p) >> SHM_SEG_SHIFT) >= 2)
            break;
    }
    c->off = heap_to_off(t.h, p);
    ck_assert_uint_ge(c->off >> SHM_SEG_SHIFT, 2);
    mp_fill_sparse(p, 96, mp_tag(2, 0, 0));
    /* On top of CPU 0's cache of its class. */
    (void) percpu_drain_all(t.h, NULL);
    percpu_free(t.h, p);
    __atomic_store_n(&c->pushed, 1, __ATOMIC_RELEASE);
    mp_wait_ok(pid, "the process that had not mapped the segment");
    /* Still on top of CPU 0's cache. */
    ck_assert_ptr_eq(percpu_malloc(t.h, 96), p);
    ck_assert(mp_check_sparse(p, 96, mp_tag(2, 0, 0)));
    heap_free(t.h, p);
    while (nbig > 0)
        heap_free(t.h, big[--nbig]);
    th_verify(t.h);
    th_destroy(&t);
    mp_shared_free(c, sizeof(*c));
}
END_TEST

/* ---- SIGKILL at a random moment of a per-CPU storm ---- */

#define STORM_LIVE 48

struct storm_ctx {
    struct test_heap *t;
    uint64_t seed;
    uint32_t running; /* atomic: storm threads that have started */
};

struct storm_thread {
    struct storm_ctx *s;
    struct heap *h;
    unsigned thr;
};

static void *storm_main(void *arg)
{
    struct storm_thread *st = arg;
    void *p[STORM_LIVE] = {0};
    size_t sz[STORM_LIVE] = {0};
    uint64_t tag[STORM_LIVE] = {0};
    uint64_t rng = st->s->seed ^ (st->thr + 1) * UINT64_C(0x9e3779b97f4a7c15), seq = 0;

    __atomic_fetch_add(&st->s->running, 1, __ATOMIC_RELEASE);
    for (;;) {
        uint64_t r = test_rand(&rng);
        unsigned i = (unsigned) ((r >> 8) % STORM_LIVE);

        if (p[i]) {
            MP_REQUIRE(mp_check_sparse(p[i], sz[i], tag[i]), "storm object overwritten");
            percpu_free(st->h, p[i]);
            p[i] = NULL;
        } else {
            sz[i] = 16 + (size_t) (r >> 20) % PCPU_MAX_SIZE;
            if (sz[i] > PCPU_MAX_SIZE)
                sz[i] = PCPU_MAX_SIZE;
            p[i] = percpu_malloc(st->h, sz[i]);
            MP_REQUIRE(p[i] != NULL, "percpu_malloc(%zu)", sz[i]);
            tag[i] = mp_tag(0, st->thr, seq++);
            mp_fill_sparse(p[i], sz[i], tag[i]);
        }
        if (r % 4096 == 1)
            heap_thread_flush(st->h);
    }
    return NULL;
}

static int storm_child(void *arg, unsigned round)
{
    struct storm_ctx *s = arg;
    struct heap *h = th_attach_child(s->t, 300 + round);
    struct storm_thread th[2] = {{.s = s, .h = h, .thr = 0}, {.s = s, .h = h, .thr = 1}};
    pthread_t tid;

    MP_REQUIRE(pthread_create(&tid, NULL, storm_main, &th[1]) == 0, "pthread_create");
    storm_main(&th[0]);
    return 5;
}

/* Small objects in use by the figures, every class (the CPU caches'
 * net - count included). */
static int64_t small_in_use(struct heap *h)
{
    struct heap_stats st;
    int64_t n = 0;

    ck_assert_int_eq(heap_stats(h, &st), 0);
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        n += (int64_t) st.classes[cls].in_use;
    return n;
}

START_TEST(percpu_random_kill)
{
    unsigned rounds = (unsigned) test_scaled(20, 2), counted = 0;
    struct storm_ctx *s = mp_shared_alloc(sizeof(*s));
    uint64_t rng = 0x9c1, deaths_before = 0;
    struct test_heap t;
    struct heap_stats st;
    int64_t allowed = 0;

    if (no_rseq())
        return;
    th_create(&t, NULL, SHM_PAGES_OFF);
    s->t = &t;
    for (unsigned round = 0; round < rounds; round++) {
        unsigned delay_us = 1000 + (unsigned) (test_rand(&rng) % 20000);
        char what[96];
        bool counts = false;
        int status, reclaimed;
        int64_t in_use;
        pid_t pid;

        s->seed = test_rand(&rng);
        __atomic_store_n(&s->running, 0, __ATOMIC_RELAXED);
        pid = mp_fork(storm_child, s, round);
        while (__atomic_load_n(&s->running, __ATOMIC_ACQUIRE) < 2) {
            ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0, "storm child %u ended early: %s",
                          round, mp_status_str(status, what, sizeof(what)));
            mp_sleep_us(200);
        }
        mp_sleep_us(delay_us);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        (void) snprintf(what, sizeof(what), "per-CPU storm, round %u, killed after %u us", round,
                        delay_us);
        mp_wait_signaled(pid, SIGKILL, what);

        /* Its slots, then its private objects (after every CPU's caches
         * are drained to the slabs). */
        reclaimed = heap_reclaim_dead(t.h);
        ck_assert_msg(reclaimed >= 1, "%s: reclaimed %d slots", what, reclaimed);
        if (!mp_verify(t.h, &counts))
            ck_abort_msg("%s: heap_verify found problems (see stderr)", what);
        counted += counts;
        ck_assert_int_eq(heap_stats(t.h, &st), 0);
        ck_assert_msg(st.bad_frees == 0 && st.double_frees == 0,
                      "%s: %" PRIu64 " bad frees, %" PRIu64 " double frees", what, st.bad_frees,
                      st.double_frees);
        /* Ours only: the drain before the sweep runs through our cache. */
        ck_assert_uint_le(st.slots_in_use, 1);
        /* A thread that died inside the busy section of a refill or flush
         * may have held up to a bundle (64) and PCPU_BATCH objects more. */
        if (load_relaxed(&t.h->ctl->deaths_mid_op) != deaths_before) {
            allowed += (int64_t) (load_relaxed(&t.h->ctl->deaths_mid_op) - deaths_before) *
                       (64 + PCPU_BATCH + 1);
            deaths_before = load_relaxed(&t.h->ctl->deaths_mid_op);
        }
        in_use = small_in_use(t.h);
        if (in_use != 0)
            fprintf(stderr, "%s: %" PRId64 " objects in use after the sweep\n", what, in_use);
        ck_assert_msg(in_use >= 0 && in_use <= allowed,
                      "%s: %" PRId64 " small objects in use after the sweep (at most %" PRId64
                      " may have died in a window)",
                      what, in_use, allowed);
    }
    fprintf(stderr,
            "percpu_random_kill: %u rounds, exact count checked after %u, deaths inside a "
            "cache operation %" PRIu64 "\n",
            rounds, counted, deaths_before);
    th_verify(t.h);
    th_destroy(&t);
    mp_shared_free(s, sizeof(*s));
}
END_TEST

Suite *percpu_death_suite(void)
{
    Suite *s = suite_create("percpu_death");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, percpu_shared_by_processes);
    tcase_add_test(tc, percpu_pop_unmapped_segment);
    tcase_add_test(tc, percpu_random_kill);
    suite_add_tcase(s, tc);
    return s;
}
