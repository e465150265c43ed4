/* Multi-process allocation: NPROC children of NTHR threads each allocate and
 * free random sizes; every live object carries a pattern naming its owner
 * (process, thread, sequence) that is checked before the object is freed or
 * reallocated. A quarter of the frees happen in ANOTHER process: the offset
 * goes through that process's inbox (shared memory made before fork) and
 * the receiver checks the pattern, then frees it.
 *
 * At the end every child writes down its live objects; the parent proves no
 * two overlap and every pattern is intact, checks heap_stats against them
 * (allocs - frees == live objects, bytes_in_use == their usable sizes),
 * frees them all and verifies the heap.
 *
 * Variants: default config; tiny caches and recyclers (most traffic through
 * the segment locks); and a fifth process that trims all the while. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shm/heap.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/mp/suites.h"

#define NPROC        4u
#define NTHR         2u
#define MAXLIVE      384u  /* per thread */
#define INBOX_CAP    1024u /* per process */
#define LARGE_ONE_IN 97u

struct alloc_ctx {
    struct test_heap *t;
    uint64_t ops; /* per thread */
    uint64_t seed;
    unsigned nthr;         /* threads per process, at most NTHR */
    uint32_t threads_done; /* atomic: threads that finished sending */
    uint64_t trims;        /* by the trimmer child, if any */
    uint32_t nlive[NPROC][NTHR];
    uint64_t sent[NPROC][NTHR], received[NPROC][NTHR], reallocs[NPROC][NTHR];
    struct mp_obj live[NPROC][NTHR][MAXLIVE];
    struct mp_inbox *inbox[NPROC]; /* in a second shared mapping */
};

struct worker {
    struct alloc_ctx *ctx;
    struct heap *h;
    unsigned proc, thr;
};

struct live_obj {
    void *p;
    uint64_t size, tag;
};

static void *at_least(struct heap *h, void *p, size_t size, const char *what)
{
    MP_REQUIRE(p != NULL, "%s(%zu) failed: %s", what, size, strerror(errno));
    MP_REQUIRE(heap_usable_size(h, p) >= size, "%s(%zu): usable size %zu", what, size,
               heap_usable_size(h, p));
    return p;
}

static void check_obj(const void *p, uint64_t size, uint64_t tag, const char *where)
{
    size_t bad = mp_check(p, size, tag);

    MP_REQUIRE(bad == SIZE_MAX,
               "%s: object %p (tag %#" PRIx64 ", %" PRIu64 " bytes): pattern broken at byte %zu",
               where, p, tag, size, bad);
}

/* Checks and frees what other processes sent us. */
static uint32_t drain_inbox(struct worker *w)
{
    struct mp_obj msgs[32];
    uint32_t n, total = 0;

    while ((n = mp_inbox_recv(w->ctx->inbox[w->proc], msgs, 32)) > 0) {
        for (uint32_t i = 0; i < n; i++) {
            void *p = heap_from_off(w->h, msgs[i].off);

            MP_REQUIRE(p != NULL, "received offset %#" PRIx64 " is not in the heap", msgs[i].off);
            mp_tsan_receive(w->h, p);
            MP_REQUIRE(heap_usable_size(w->h, p) >= msgs[i].size,
                       "received %#" PRIx64 ": usable %zu < %" PRIu64, msgs[i].off,
                       heap_usable_size(w->h, p), msgs[i].size);
            check_obj(p, msgs[i].size, msgs[i].tag, "received");
            heap_free(w->h, p);
        }
        total += n;
    }
    return total;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct alloc_ctx *ctx = w->ctx;
    struct live_obj *live = calloc(MAXLIVE, sizeof(*live));
    uint64_t rng =
            ctx->seed ^ ((uint64_t) (w->proc * NTHR + w->thr + 1) * UINT64_C(0x9e3779b97f4a7c15));
    uint64_t seq = 0, sent = 0, received = 0, reallocs = 0;
    uint32_t n = 0, target = MAXLIVE;

    MP_REQUIRE(live != NULL, "calloc");
    for (uint64_t op = 0; op < ctx->ops; op++) {
        uint64_t r = test_rand(&rng);

        /* The live set swings between full and nearly empty, so caches
         * overflow into the recycler and refill from it and from blocks. */
        if (op % 2048 == 0)
            target = (op / 2048) % 2 && op + 4096 < ctx->ops ? MAXLIVE / 8 : MAXLIVE;
        if (op % 16 == 0)
            received += drain_inbox(w);
        if (n > 0 && r % 32 == 0) {
            /* realloc: the prefix survives, then the new size is patterned. */
            struct live_obj *o = &live[(r >> 8) % n];
            size_t ns = mp_rand_size(&rng, LARGE_ONE_IN);
            size_t keep = ns < o->size ? ns : o->size;
            void *q;

            check_obj(o->p, o->size, o->tag, "before realloc");
            q = at_least(w->h, heap_realloc(w->h, o->p, ns), ns, "heap_realloc");
            check_obj(q, keep, o->tag, "after realloc");
            o->p = q;
            o->size = ns;
            o->tag = mp_tag(w->proc, w->thr, seq++);
            mp_fill(q, ns, o->tag);
            reallocs++;
            continue;
        }
        if (n == 0 || (n < target && (r >> 8) % 8 < 5)) {
            size_t size = mp_rand_size(&rng, LARGE_ONE_IN);
            void *p = (r >> 16) % 8 == 0 ? heap_calloc(w->h, 1, size) : heap_malloc(w->h, size);

            at_least(w->h, p, size, "heap_malloc");
            live[n].p = p;
            live[n].size = size;
            live[n].tag = mp_tag(w->proc, w->thr, seq++);
            mp_fill(p, size, live[n].tag);
            n++;
        } else {
            uint32_t k = (uint32_t) ((r >> 8) % n);
            struct live_obj o = live[k];

            live[k] = live[--n];
            check_obj(o.p, o.size, o.tag, "before free");
            if ((r >> 24) % 4 == 0) {
                unsigned dest = (w->proc + 1 + (unsigned) ((r >> 32) % (NPROC - 1))) % NPROC;
                struct mp_obj m = {.off = heap_to_off(w->h, o.p), .size = o.size, .tag = o.tag};

                MP_REQUIRE(m.off != 0, "heap_to_off(%p) == 0", o.p);
                mp_tsan_send(w->h, o.p);
                if (mp_inbox_send(ctx->inbox[dest], &m)) {
                    sent++;
                    continue;
                }
            }
            heap_free(w->h, o.p);
        }
    }
    /* Keep receiving until every thread of every process stopped sending:
     * a send happens before its sender's increment (both under or after the
     * inbox lock), so a drain after seeing the full count gets everything. */
    __atomic_fetch_add(&ctx->threads_done, 1, __ATOMIC_RELEASE);
    for (;;) {
        bool all = __atomic_load_n(&ctx->threads_done, __ATOMIC_ACQUIRE) == NPROC * ctx->nthr;

        received += drain_inbox(w);
        if (all)
            break;
        sched_yield();
    }
    for (uint32_t i = 0; i < n; i++) {
        check_obj(live[i].p, live[i].size, live[i].tag, "at the end");
        ctx->live[w->proc][w->thr][i] = (struct mp_obj){
                .off = heap_to_off(w->h, live[i].p), .size = live[i].size, .tag = live[i].tag};
    }
    ctx->nlive[w->proc][w->thr] = n;
    ctx->sent[w->proc][w->thr] = sent;
    ctx->received[w->proc][w->thr] = received;
    ctx->reallocs[w->proc][w->thr] = reallocs;
    free(live);
    return NULL;
}

static int child_main(void *arg, unsigned proc)
{
    struct alloc_ctx *ctx = arg;
    struct heap *h = th_attach_child(ctx->t, 10 + proc);
    struct worker w[NTHR];
    pthread_t tid[NTHR];

    for (unsigned i = 0; i < ctx->nthr; i++) {
        w[i] = (struct worker){.ctx = ctx, .h = h, .proc = proc, .thr = i};
        MP_REQUIRE(pthread_create(&tid[i], NULL, worker_main, &w[i]) == 0, "pthread_create");
    }
    for (unsigned i = 0; i < ctx->nthr; i++)
        MP_REQUIRE(pthread_join(tid[i], NULL) == 0, "pthread_join");
    heap_detach(h);
    return 0;
}

/* Another process trims over and over while the others allocate: the
 * daemon's situation under load (caches stolen from running threads of
 * other processes, recyclers emptied, blocks decommitted and reused). */
static int trimmer_main(void *arg, unsigned idx)
{
    struct alloc_ctx *ctx = arg;
    struct heap *h = th_attach_child(ctx->t, 90 + idx);
    struct trim_result res;
    uint64_t n = 0;

    while (__atomic_load_n(&ctx->threads_done, __ATOMIC_ACQUIRE) < NPROC * ctx->nthr) {
        MP_REQUIRE(heap_trim(h, 20, &res) == 0, "heap_trim");
        MP_REQUIRE(res.caches_flushed <= res.caches_total, "trim flushed %u of %u caches",
                   res.caches_flushed, res.caches_total);
        n++;
        mp_sleep_ms(1);
    }
    ctx->trims = n;
    heap_detach(h);
    return 0;
}

static void run_alloc(const struct shm_config *cfg, uint64_t seed, unsigned nthr, bool trimmer)
{
    struct test_heap t;
    struct alloc_ctx *ctx = mp_shared_alloc(sizeof(*ctx));
    size_t ib = mp_inbox_bytes(INBOX_CAP);
    char *boxes = mp_shared_alloc(ib * NPROC);
    struct heap_stats st;
    struct mp_obj *all;
    uint64_t usable = 0, sent = 0, received = 0, reallocs = 0;
    size_t n = 0;
    pid_t pid[NPROC + 1];
    unsigned problems;

    th_create(&t, cfg, SHM_PAGES_OFF);
    ctx->t = &t;
    ctx->seed = seed;
    ctx->nthr = nthr;
    ctx->ops = test_scaled(400000, 20);
    for (unsigned i = 0; i < NPROC; i++) {
        ctx->inbox[i] = (struct mp_inbox *) (boxes + i * ib);
        mp_inbox_init(ctx->inbox[i], INBOX_CAP);
    }
    for (unsigned i = 0; i < NPROC; i++)
        pid[i] = mp_fork(child_main, ctx, i);
    if (trimmer)
        pid[NPROC] = mp_fork(trimmer_main, ctx, 0);
    mp_wait_all_ok(pid, NPROC + trimmer, "child (the last is the trimmer, if any)");

    for (unsigned i = 0; i < NPROC; i++) {
        ck_assert_uint_eq(ctx->inbox[i]->count, 0);
        ck_assert_uint_eq(ctx->inbox[i]->sent, ctx->inbox[i]->received);
        for (unsigned k = 0; k < nthr; k++) {
            n += ctx->nlive[i][k];
            sent += ctx->sent[i][k];
            received += ctx->received[i][k];
            reallocs += ctx->reallocs[i][k];
        }
    }
    ck_assert_uint_eq(sent, received);
    fprintf(stderr,
            "mp_alloc: %u processes x %u threads x %" PRIu64 " ops: %" PRIu64
            " objects freed by another process, %" PRIu64 " reallocs, %zu left live, %" PRIu64
            " trims\n",
            NPROC, nthr, ctx->ops, sent, reallocs, n, ctx->trims);
    ck_assert_msg(sent > 0 && reallocs > 0,
                  "no cross-process frees (%" PRIu64 ") or reallocs (%" PRIu64 ")", sent, reallocs);
    all = calloc(n ? n : 1, sizeof(*all));
    ck_assert_ptr_nonnull(all);
    n = 0;
    for (unsigned i = 0; i < NPROC; i++)
        for (unsigned k = 0; k < nthr; k++)
            for (uint32_t j = 0; j < ctx->nlive[i][k]; j++)
                all[n++] = ctx->live[i][k][j];

    /* The checker: no overlap, patterns intact, figures agree. */
    problems = mp_check_live(t.h, all, n, &usable);
    ck_assert_msg(problems == 0, "checker: %u problems among %zu live objects (see stderr)",
                  problems, n);
    ck_assert_int_eq(heap_stats(t.h, &st), 0);
    ck_assert_uint_eq(st.allocs - st.frees, n);
    ck_assert_uint_eq(st.bytes_in_use, usable);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    ck_assert_uint_eq(st.lost_objects, 0);
    th_verify(t.h);

    /* The parent frees everything the children left. */
    for (size_t i = 0; i < n; i++)
        heap_free(t.h, heap_from_off(t.h, all[i].off));
    heap_thread_flush(t.h);
    ck_assert_int_eq(heap_stats(t.h, &st), 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    th_verify(t.h);
    /* No object left anywhere: once the recyclers are emptied, every block
     * is free (nothing leaked by any process). */
    ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
    ck_assert_msg(mp_blocks_not_free(t.h) == 0, "%" PRIu64 " blocks not free at the end",
                  mp_blocks_not_free(t.h));

    free(all);
    for (unsigned i = 0; i < NPROC; i++)
        mp_inbox_destroy(ctx->inbox[i]);
    th_destroy(&t);
    mp_shared_free(boxes, ib * NPROC);
    mp_shared_free(ctx, sizeof(*ctx));
}

START_TEST(mp_alloc_cross_free)
{
    run_alloc(NULL, 0x5eed0001, NTHR, false);
}
END_TEST

/* Tiny caches and recyclers: most traffic goes through the segment lock,
 * so the processes contend on it and on slab carving and release. */
START_TEST(mp_alloc_small_caches)
{
    struct shm_config cfg;

    heap_config_default(&cfg);
    cfg.segment_size = UINT64_C(256) << 20;
    cfg.thread_cache_bytes = 16u << 10;
    cfg.bundle_objects = 4;
    cfg.recycler_cap_bundles = 2;
    cfg.retain_empty_blocks = 0;
    run_alloc(&cfg, 0x5eed0002, NTHR, false);
}
END_TEST

/* A fifth process trims all the while. Under TSan one thread per
 * allocating process: a cache stolen and drained by the trimmer reaches a
 * sibling thread through the trimmer's process, a chain TSan cannot see. */
START_TEST(mp_alloc_concurrent_trim)
{
    struct shm_config cfg;

    heap_config_default(&cfg);
    cfg.segment_size = UINT64_C(256) << 20;
    cfg.retain_empty_blocks = 0;
#if defined(__SANITIZE_THREAD__)
    run_alloc(&cfg, 0x5eed0003, 1, true);
#else
    run_alloc(&cfg, 0x5eed0003, NTHR, true);
#endif
}
END_TEST

Suite *mp_alloc_suite(void)
{
    Suite *s = suite_create("mp_alloc");
    TCase *tc = tcase_create("cross_process");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, mp_alloc_cross_free);
    tcase_add_test(tc, mp_alloc_small_caches);
    tcase_add_test(tc, mp_alloc_concurrent_trim);
    suite_add_tcase(s, tc);
    return s;
}
