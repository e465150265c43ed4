/* Unit tests for the per-CPU caches (shm/percpu.c, rseq.h): push and pop
 * through restartable sequences on a real heap, refill and flush through
 * the thread cache, the owner tag a pop writes, an immediate double free,
 * the drain by pinning, the figures, and two threads on one CPU that
 * preempt each other's sequences (so that aborts happen) without losing or
 * doubling an object. Each test pins itself to CPU 0 where it needs one
 * cache. Skipped (passing, with a note) where glibc registered no rseq. */
#include <check.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shm/percpu.h"
#include "tests/common/testheap.h"
#include "tests/unit/heap_fixture.h"
#include "tests/unit/suites.h"

static bool no_rseq(void)
{
    if (rseq_available())
        return false;
    fprintf(stderr, "check_percpu: no rseq registered by glibc, skipped\n");
    return true;
}

static void pin0(void)
{
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(0, &set);
    ck_assert_int_eq(sched_setaffinity(0, sizeof(set), &set), 0);
}

/* CPU 0's cache of cls. */
static struct pcpu_cache *cache0(struct heap *h, unsigned cls)
{
    ck_assert_ptr_nonnull(h->pcpu_caches);
    return (struct pcpu_cache *) pcpu_cbase(h->pcpu_caches, cls);
}

static void verify_exact(struct heap *h)
{
    struct verify_report rep;

    ck_assert_int_eq(heap_verify(h, &rep), 0);
    if (!rep.consistent)
        th_verify(h); /* prints the problems and fails */
    ck_assert_msg(rep.counts_checked, "verify skipped the exact counts");
}

/* 40 objects (more than a cache holds: refills), all distinct and intact,
 * then freed (more than a cache holds: a flush), LIFO on one CPU, and the
 * cache's word keeps count and net apart. */
START_TEST(percpu_push_pop)
{
    struct heap *h = th.h;
    void *p[40];
    unsigned cls = sizeclass_of_inline(64);
    struct pcpu_cache *pc;
    uint64_t w;

    if (no_rseq())
        return;
    pin0();
    for (unsigned i = 0; i < 40; i++) {
        p[i] = percpu_malloc(h, 64);
        ck_assert_ptr_nonnull(p[i]);
        th_fill_pattern(p[i], 64, i);
    }
    pc = cache0(h, cls);
    w = load_relaxed(&pc->word);
    ck_assert_uint_le(pcpu_count(w), PCPU_CAP);
    /* Objects in use through the CPU cache: net - count = 40, exactly
     * (every pop came from this cache). */
    ck_assert_int_eq(pcpu_net(w) - (int64_t) pcpu_count(w), 40);
    for (unsigned i = 0; i < 40; i++)
        for (unsigned j = i + 1; j < 40; j++)
            ck_assert_ptr_ne(p[i], p[j]);
    for (unsigned i = 0; i < 40; i++) {
        ck_assert_uint_eq(th_check_pattern(p[i], 64, i), 64);
        percpu_free(h, p[i]);
    }
    w = load_relaxed(&pc->word);
    ck_assert_int_eq(pcpu_net(w) - (int64_t) pcpu_count(w), 0);
    ck_assert_uint_ge(pcpu_count(w), 1);
    /* LIFO: the last object freed is the next one handed out. */
    ck_assert_ptr_eq(percpu_malloc(h, 64), p[39]);
    percpu_free(h, p[39]);
    verify_exact(h);
}
END_TEST

/* A pop writes the caller's owner tag into the object before it commits. */
START_TEST(percpu_owner_tag)
{
    struct heap *h = th.h;
    unsigned cls = sizeclass_of_inline(200);
    void *p;

    if (no_rseq())
        return;
    pin0();
    p = percpu_malloc(h, 200);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_ne(h->owner_tag, 0);
    ck_assert_uint_eq(*obj_tag(h, ptr_off(h, p), cls), h->owner_tag);
    /* Sharing clears it, as for any object. */
    (void) heap_to_off(h, p);
    ck_assert_uint_eq(*obj_tag(h, ptr_off(h, p), cls), 0);
    percpu_free(h, p);
    verify_exact(h);
}
END_TEST

/* An immediate double free is caught by the push and counted; the heap
 * stays consistent. */
START_TEST(percpu_double_free)
{
    struct heap *h = th.h;
    struct heap_stats st;
    void *p;

    if (no_rseq())
        return;
    pin0();
    p = percpu_malloc(h, 32);
    ck_assert_ptr_nonnull(p);
    percpu_free(h, p);
    percpu_free(h, p);
    ck_assert_int_eq(heap_stats(h, &st), 0);
    ck_assert_uint_eq(st.double_frees, 1);
    verify_exact(h);
}
END_TEST

/* The figures see the CPU caches: objects in use per class, cached, and
 * the drain takes every cached object back to the slabs. */
START_TEST(percpu_stats_drain)
{
    struct heap *h = th.h;
    struct heap_stats st;
    void *keep[10], *tmp[20];
    uint64_t left = 1, drained;
    unsigned cls = sizeclass_of_inline(512);

    if (no_rseq())
        return;
    pin0();
    for (unsigned i = 0; i < 10; i++)
        keep[i] = percpu_malloc(h, 512);
    for (unsigned i = 0; i < 20; i++)
        tmp[i] = percpu_malloc(h, 512);
    for (unsigned i = 0; i < 20; i++)
        percpu_free(h, tmp[i]);
    ck_assert_int_eq(heap_stats(h, &st), 0);
    ck_assert_uint_eq(st.classes[cls].in_use, 10);
    ck_assert_uint_ge(st.classes[cls].cached, 20);
    ck_assert_uint_ge(st.allocs, 30);
    /* The area itself (a large object) counts in no slot. */
    ck_assert_uint_eq(st.allocs - st.frees, 10);
    drained = percpu_drain_all(h, &left);
    ck_assert_uint_eq(left, 0);
    ck_assert_uint_ge(drained, 20);
    ck_assert_uint_eq(pcpu_count(load_relaxed(&cache0(h, cls)->word)), 0);
    ck_assert_int_eq(heap_stats(h, &st), 0);
    ck_assert_uint_eq(st.classes[cls].in_use, 10);
    verify_exact(h);
    for (unsigned i = 0; i < 10; i++)
        percpu_free(h, keep[i]);
    ck_assert_int_eq(heap_stats(h, &st), 0);
    ck_assert_uint_eq(st.classes[cls].in_use, 0);
    /* Nor in the bytes in use. */
    ck_assert_uint_eq(st.bytes_in_use, 0);
    verify_exact(h);
}
END_TEST

/* Two threads pinned to one CPU churn the same classes; each is preempted
 * inside the other's sequences now and then (the kernel aborts those).
 * Every object keeps its pattern while held; at the end nothing is lost
 * or in two places (verify's exact counts and its duplicate check). */
struct churn_arg {
    struct heap *h;
    unsigned id;
    unsigned ops;
    int bad;
};

static void *churn_thread(void *arg)
{
    struct churn_arg *a = arg;
    struct {
        void *p;
        size_t n;
        uint64_t seed;
    } live[64] = {{0}};
    uint64_t rng = 7 + a->id;
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(0, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
        a->bad = 1;
        return NULL;
    }
    for (unsigned op = 0; op < a->ops; op++) {
        unsigned k = (unsigned) (test_rand(&rng) % 64);

        if (live[k].p) {
            if (th_check_pattern(live[k].p, live[k].n, live[k].seed) != live[k].n)
                a->bad = 1;
            percpu_free(a->h, live[k].p);
            live[k].p = NULL;
        } else {
            live[k].n = 16 + test_rand(&rng) % 1009;
            live[k].seed = ((uint64_t) a->id << 32) | op;
            live[k].p = percpu_malloc(a->h, live[k].n);
            if (!live[k].p) {
                a->bad = 1;
                break;
            }
            th_fill_pattern(live[k].p, live[k].n, live[k].seed);
        }
    }
    for (unsigned k = 0; k < 64; k++)
        if (live[k].p)
            percpu_free(a->h, live[k].p);
    return NULL;
}

START_TEST(percpu_preempted)
{
    struct churn_arg a[2];
    pthread_t t[2];
    struct heap_stats st;

    if (no_rseq())
        return;
    for (unsigned i = 0; i < 2; i++) {
        a[i] = (struct churn_arg){.h = th.h, .id = i, .ops = (unsigned) test_scaled(400000, 10)};
        ck_assert_int_eq(pthread_create(&t[i], NULL, churn_thread, &a[i]), 0);
    }
    for (unsigned i = 0; i < 2; i++) {
        ck_assert_int_eq(pthread_join(t[i], NULL), 0);
        ck_assert_msg(!a[i].bad, "thread %u saw a broken object or a failed malloc", i);
    }
    verify_exact(th.h);
    ck_assert_int_eq(heap_stats(th.h, &st), 0);
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        ck_assert_msg(st.classes[cls].in_use == 0, "class %u: %lu in use", cls,
                      (unsigned long) st.classes[cls].in_use);
}
END_TEST

Suite *percpu_suite(void)
{
    Suite *s = suite_create("percpu");
    TCase *tc = tcase_create("core");

    tcase_add_checked_fixture(tc, heap_setup, heap_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, percpu_push_pop);
    tcase_add_test(tc, percpu_owner_tag);
    tcase_add_test(tc, percpu_double_free);
    tcase_add_test(tc, percpu_stats_drain);
    tcase_add_test(tc, percpu_preempted);
    suite_add_tcase(s, tc);
    return s;
}
