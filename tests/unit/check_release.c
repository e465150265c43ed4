/* Unit tests for shm/release.c, the bounded release the daemon's
 * automatic trim uses: each call gives back at most its budget (whole
 * units, one slab's pages past it at most), calls in a row give back what
 * a trim would, live objects stay intact, no trim generation moves, and an
 * idle thread's cache is drained only when its slot is listed. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/heap.h"
#include "shm/local.h"
#include "tests/common/testheap.h"
#include "tests/unit/suites.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

static uint64_t seg_allocated(const struct test_heap *t, uint32_t index)
{
    struct stat st;
    int fd = heap_local_segment_fd(t->local, index);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(fstat(fd, &st), 0);
    return (uint64_t) st.st_blocks * 512;
}

static uint64_t cached_objects(struct heap *h)
{
    struct heap_stats st;
    uint64_t n = 0;

    ck_assert_int_eq(heap_stats(h, &st), 0);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        n += st.classes[c].cached;
    return n;
}

/* 24 MiB of 128 KiB objects and 8 MiB of 512-byte ones, one in eight of
 * each kept live with a pattern; then the rest is freed. */
START_TEST(release_bounded_steps)
{
    const uint64_t budget = 1 * MiB, slack = 5 * SHM_BLOCK_SIZE;
    unsigned nl = 192, ns = 16384, steps = 0;
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st0, st1;
    struct release_req req = {.max_bytes = budget, .retain_blocks = 0, .drain_recyclers = true};
    struct release_result res;
    uint64_t before, total = 0;
    void **p;

    th_config(&cfg, 256 * MiB);
    cfg.retain_empty_blocks = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    p = calloc(nl + ns, sizeof(*p));
    ck_assert_ptr_nonnull(p);
    for (unsigned i = 0; i < nl + ns; i++) {
        size_t sz = i < nl ? 128 * KiB : 512;

        p[i] = heap_malloc(t.h, sz);
        ck_assert_ptr_nonnull(p[i]);
        th_fill_pattern(p[i], sz, i);
    }
    for (unsigned i = 0; i < nl + ns; i++)
        if (i % 8) {
            heap_free(t.h, p[i]);
            p[i] = NULL;
        }
    heap_thread_flush(t.h);
    ck_assert_int_eq(heap_stats(t.h, &st0), 0);
    before = seg_allocated(&t, 1);
    /* Step by step, each within its budget. */
    for (;;) {
        ck_assert_int_eq(heap_release(t.h, &req, &res), 0);
        ck_assert_msg(res.bytes_released <= budget + slack,
                      "step %u released %" PRIu64 " bytes on a budget of %" PRIu64, steps,
                      res.bytes_released, budget);
        if (!res.bytes_released)
            break;
        total += res.bytes_released;
        steps++;
        ck_assert_uint_lt(steps, 1000);
    }
    ck_assert_uint_ge(steps, 10); /* 28 MiB freed: many steps of 1 MiB */
    ck_assert_uint_ge(total, 20 * MiB);
    ck_assert_uint_le(seg_allocated(&t, 1), before - 20 * MiB);
    ck_assert_int_eq(heap_stats(t.h, &st1), 0);
    ck_assert_uint_eq(st1.trim_gen, st0.trim_gen);
    ck_assert_uint_eq(st1.trims, st0.trims);
    ck_assert_uint_eq(st1.bytes_in_use, st0.bytes_in_use);
    th_verify(t.h);
    /* A full trim finds (almost) nothing left. */
    {
        struct trim_result tr;

        ck_assert_int_eq(heap_trim(t.h, 0, &tr), 0);
        ck_assert_msg(tr.bytes_released <= 2 * MiB, "the trim after the steps released %" PRIu64,
                      tr.bytes_released);
    }
    for (unsigned i = 0; i < nl + ns; i++)
        if (p[i]) {
            size_t sz = i < nl ? 128 * KiB : 512;

            ck_assert_msg(th_check_pattern(p[i], sz, i) == sz, "live object %u changed", i);
            heap_free(t.h, p[i]);
        }
    /* A budget of 0 releases nothing; bad arguments are refused. */
    req.max_bytes = 0;
    ck_assert_int_eq(heap_release(t.h, &req, &res), 0);
    ck_assert_uint_eq(res.bytes_released, 0);
    ck_assert_int_eq(heap_release(NULL, &req, &res), -EINVAL);
    req.nidle = 1;
    ck_assert_int_eq(heap_release(t.h, &req, &res), -EINVAL);
    th_verify(t.h);
    free(p);
    th_destroy(&t);
}
END_TEST

/* One 64-byte object in 256 stays live: every slab keeps live objects, so
 * only pages inside slabs can go back. Small budgets must still get to
 * all of them (a punched page is asked for again by the next punch). */
START_TEST(release_slab_pages_in_steps)
{
    const size_t n = (size_t) (test_scale_small() ? 8 * MiB : 32 * MiB) / 64;
    struct release_req req = {.max_bytes = 256 * KiB, .drain_recyclers = true};
    struct release_result res;
    struct trim_result tr;
    struct shm_config cfg;
    struct test_heap t;
    uint64_t before, stepped, total = 0;
    unsigned steps = 0;
    void **p = malloc(n * sizeof(*p));

    ck_assert_ptr_nonnull(p);
    th_config(&cfg, 256 * MiB);
    cfg.retain_empty_blocks = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    for (size_t i = 0; i < n; i++) {
        p[i] = heap_malloc(t.h, 64);
        ck_assert_ptr_nonnull(p[i]);
        th_fill_pattern(p[i], 64, i);
    }
    for (size_t i = 0; i < n; i++)
        if (i % 256) {
            heap_free(t.h, p[i]);
            p[i] = NULL;
        }
    heap_thread_flush(t.h);
    before = seg_allocated(&t, 1);
    do {
        ck_assert_int_eq(heap_release(t.h, &req, &res), 0);
        total += res.bytes_released;
        ck_assert_uint_lt(++steps, 10000);
    } while (res.bytes_released);
    stepped = seg_allocated(&t, 1);
    ck_assert_uint_ge(total, (before - stepped) / 2);
    ck_assert_msg(stepped < before / 2, "%u steps left %" PRIu64 " of %" PRIu64 " bytes", steps,
                  stepped, before);
    /* A full trim finds next to nothing the steps left. */
    ck_assert_int_eq(heap_trim(t.h, 0, &tr), 0);
    ck_assert_msg(seg_allocated(&t, 1) + 512 * KiB >= stepped,
                  "the steps left %" PRIu64 " bytes, a trim then %" PRIu64, stepped,
                  seg_allocated(&t, 1));
    for (size_t i = 0; i < n; i += 256) {
        ck_assert_msg(th_check_pattern(p[i], 64, i) == 64, "live object %zu changed", i);
        heap_free(t.h, p[i]);
    }
    th_verify(t.h);
    free(p);
    th_destroy(&t);
}
END_TEST

struct sleeper {
    struct heap *h;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stage; /* 1: cache filled, 2: may finish */
    int failed;
};

static void *sleeper_main(void *arg)
{
    struct sleeper *s = arg;
    enum { N = 800 };
    void *p[N];

    for (int i = 0; i < N; i++)
        if (!(p[i] = heap_malloc(s->h, 128)))
            s->failed = 1;
    for (int i = 0; i < N; i++)
        heap_free(s->h, p[i]);
    pthread_mutex_lock(&s->lock);
    s->stage = 1;
    pthread_cond_broadcast(&s->cond);
    while (s->stage != 2)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < N; i++) {
        if (!(p[i] = heap_malloc(s->h, 128)))
            s->failed = 1;
        else
            th_fill_pattern(p[i], 128, (uint64_t) i);
    }
    for (int i = 0; i < N; i++) {
        if (p[i] && th_check_pattern(p[i], 128, (uint64_t) i) != 128)
            s->failed = 1;
        heap_free(s->h, p[i]);
    }
    return NULL;
}

/* The sleeper's slot: the one whose signature did not move and holds
 * objects (this thread holds none: it has not allocated). */
static uint32_t find_idle_slot(struct heap *h)
{
    uint32_t found = UINT32_MAX;

    for (uint32_t i = 0; i < heap_slots_high(h); i++) {
        struct slot_activity a, b;

        if (!heap_slot_activity(h, i, &a) || !heap_slot_activity(h, i, &b))
            continue;
        ck_assert_uint_eq(a.signature, b.signature);
        ck_assert_uint_eq(a.pid, (uint32_t) getpid());
        if (a.cached_objects)
            found = i;
    }
    return found;
}

START_TEST(release_drains_listed_idle_slot)
{
    struct sleeper s = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    struct release_req req = {.max_bytes = UINT64_MAX, .drain_recyclers = true};
    struct release_result res;
    struct slot_activity a, b;
    struct heap_stats st;
    struct test_heap t;
    pthread_t thr;
    uint32_t slot;

    th_create(&t, NULL, SHM_PAGES_OFF);
    s.h = t.h;
    ck_assert_int_eq(pthread_create(&thr, NULL, sleeper_main, &s), 0);
    pthread_mutex_lock(&s.lock);
    while (s.stage != 1)
        pthread_cond_wait(&s.cond, &s.lock);
    pthread_mutex_unlock(&s.lock);
    slot = find_idle_slot(t.h);
    ck_assert_uint_ne(slot, UINT32_MAX);
    ck_assert(heap_slot_activity(t.h, slot, &a));
    ck_assert_uint_gt(a.cached_objects, 0);
    ck_assert_uint_eq(cached_objects(t.h), a.cached_objects);
    /* Not listed: its cache stays. */
    ck_assert_int_eq(heap_release(t.h, &req, &res), 0);
    ck_assert_uint_eq(res.caches_flushed, 0);
    ck_assert_uint_eq(cached_objects(t.h), a.cached_objects);
    /* Listed: drained, and its signature moved (its bins are empty). */
    req.idle_slots = &slot;
    req.nidle = 1;
    ck_assert_int_eq(heap_release(t.h, &req, &res), 0);
    ck_assert_uint_eq(res.caches_flushed, 1);
    ck_assert_uint_eq(cached_objects(t.h), 0);
    ck_assert(heap_slot_activity(t.h, slot, &b));
    ck_assert_uint_eq(b.cached_objects, 0);
    ck_assert_uint_ne(b.signature, a.signature);
    ck_assert_int_eq(heap_stats(t.h, &st), 0);
    ck_assert_uint_eq(st.trims, 0);
    th_verify(t.h);
    /* The thread wakes and its cache works. */
    pthread_mutex_lock(&s.lock);
    s.stage = 2;
    pthread_cond_broadcast(&s.cond);
    pthread_mutex_unlock(&s.lock);
    ck_assert_int_eq(pthread_join(thr, NULL), 0);
    ck_assert_int_eq(s.failed, 0);
    ck_assert_int_eq(heap_stats(t.h, &st), 0);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    /* A slot out of range or free is skipped. */
    slot = SHM_MAX_SLOTS + 5;
    ck_assert_int_eq(heap_release(t.h, &req, &res), 0);
    ck_assert_uint_eq(res.caches_flushed, 0);
    ck_assert(!heap_slot_activity(t.h, SHM_MAX_SLOTS + 5, &a));
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

Suite *release_suite(void)
{
    Suite *s = suite_create("release");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, release_bounded_steps);
    tcase_add_test(tc, release_slab_pages_in_steps);
    tcase_add_test(tc, release_drains_listed_idle_slot);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}
