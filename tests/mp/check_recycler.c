/* Contention on recycler_push/recycler_pop, called directly.
 *
 * The parent allocates NOBJ objects of one class (so they are distinct
 * objects that nothing else will hand out), numbers them (word 2 = index,
 * word 3 = a check word; words 0 and 1 belong to the recycler), links them
 * into bundles (word 0, 0 ends a bundle) and pushes the bundles. Workers
 * then pop bundles and push them back, either as they were or regrouped:
 * several bundles popped, concatenated, cut into new bundles of random
 * sizes. While a worker holds an object it owns it in a shared table
 * (CAS 0 -> worker); two holders at once is the ABA bug the tag prevents.
 *
 * At the end the parent pops everything and proves every object is present
 * exactly once and the bundle and object counts add up. Two variants:
 * processes x threads (cross-process cmpxchg16b) and threads of one process
 * (what TSan can see). */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shm/internal.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/mp/suites.h"

#define OBJ_SIZE    64u
#define MAXWORKERS  16u
#define MAXBUNDLE   32u /* objects per bundle the test builds */
#define MAXHOLD     4u  /* bundles a worker pops at once */
#define CHECK_MAGIC UINT64_C(0x52454359434c4552)

struct rec_ctx {
    struct test_heap *t;
    unsigned cls;
    uint32_t nobj;
    uint64_t iters;
    uint64_t seed;
    uint64_t *offs;   /* sorted object offsets (shared) */
    uint32_t *holder; /* per object: 0 or the worker holding it + 1 (shared, atomic) */
    uint64_t pushes[MAXWORKERS], pops[MAXWORKERS], retries[MAXWORKERS], empty[MAXWORKERS];
    uint64_t moved[MAXWORKERS]; /* objects walked */
};

struct rec_worker {
    struct rec_ctx *ctx;
    struct heap *h;
    unsigned idx;
};

static uint32_t obj_index(const struct rec_ctx *ctx, uint64_t off)
{
    uint32_t lo = 0, hi = ctx->nobj;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;

        if (ctx->offs[mid] < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < ctx->nobj && ctx->offs[lo] == off ? lo : UINT32_MAX;
}

/* Walks a popped bundle of `count` objects, claims each for worker idx and
 * appends them to objs[]. Returns the new number of objects in objs. */
static uint32_t
take_bundle(struct rec_worker *w, uint64_t first, uint32_t count, uint64_t *objs, uint32_t n)
{
    struct rec_ctx *ctx = w->ctx;
    uint64_t off = first;
    uint32_t got = 0;

    MP_REQUIRE(count >= 1 && count <= MAXBUNDLE, "popped bundle %#" PRIx64 " says %u objects",
               first, count);
    while (off) {
        uint64_t *words = heap_from_off(w->h, off);
        uint32_t id = obj_index(ctx, off), expected = 0;

        MP_REQUIRE(got < count, "bundle %#" PRIx64 " has more than its %u objects", first, count);
        MP_REQUIRE(words && id != UINT32_MAX,
                   "bundle %#" PRIx64 ": %#" PRIx64 " is not one of ours", first, off);
        MP_REQUIRE(words[2] == id && words[3] == (CHECK_MAGIC ^ id),
                   "object %u at %#" PRIx64 ": numbering overwritten (%#" PRIx64 ", %#" PRIx64 ")",
                   id, off, words[2], words[3]);
        /* acquire: the previous holder's release before its push. */
        MP_REQUIRE(__atomic_compare_exchange_n(&ctx->holder[id], &expected, w->idx + 1, false,
                                               __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE),
                   "object %u popped by worker %u while worker %u holds it", id, w->idx,
                   expected - 1);
        objs[n + got++] = off;
        off = words[0];
    }
    MP_REQUIRE(got == count, "bundle %#" PRIx64 " says %u objects, has %u", first, count, got);
    return n + got;
}

/* Links objs[0..n) into one bundle and pushes it. */
static void
push_bundle(struct rec_worker *w, struct cache_bin *stats, const uint64_t *objs, uint32_t n)
{
    struct rec_ctx *ctx = w->ctx;

    for (uint32_t i = 0; i < n; i++) {
        uint64_t *words = heap_from_off(w->h, objs[i]);

        words[0] = i + 1 < n ? objs[i + 1] : 0;
        /* release: our writes to the object come before the next holder's claim. */
        __atomic_store_n(&ctx->holder[obj_index(ctx, objs[i])], 0, __ATOMIC_RELEASE);
    }
    MP_REQUIRE(recycler_push(w->h, NULL, FAULT_NONE, stats, ctx->cls, objs[0], n, 1, false),
               "recycler_push refused a bundle of %u", n);
}

static void rec_work(struct rec_worker *w)
{
    struct rec_ctx *ctx = w->ctx;
    struct cache_bin stats;
    uint64_t rng = ctx->seed ^ ((uint64_t) (w->idx + 1) * UINT64_C(0x9e3779b97f4a7c15));
    uint64_t objs[MAXHOLD * MAXBUNDLE], empty = 0, moved = 0;

    memset(&stats, 0, sizeof(stats));
    for (uint64_t it = 0; it < ctx->iters; it++) {
        uint64_t r = test_rand(&rng);
        unsigned want = r % 2 ? 1 : 1 + (unsigned) ((r >> 8) % MAXHOLD);
        uint32_t n = 0, nb = 0, starts[MAXHOLD + 1];

        for (unsigned k = 0; k < want; k++) {
            uint32_t count = 0;
            uint64_t first = recycler_pop(w->h, NULL, FAULT_NONE, &stats, ctx->cls, &count);

            if (!first)
                break;
            starts[nb++] = n;
            n = take_bundle(w, first, count, objs, n);
        }
        starts[nb] = n;
        if (nb == 0) {
            empty++;
            sched_yield();
            continue;
        }
        moved += n;
        if ((r >> 16) % 3 == 0) {
            /* As they were, in reverse order. */
            for (uint32_t k = nb; k-- > 0;)
                push_bundle(w, &stats, objs + starts[k], starts[k + 1] - starts[k]);
        } else {
            /* Regrouped: random cuts of the concatenation. */
            for (uint32_t i = 0; i < n;) {
                uint32_t len = 1 + (uint32_t) (test_rand(&rng) % MAXBUNDLE);

                if (len > n - i)
                    len = n - i;
                push_bundle(w, &stats, objs + i, len);
                i += len;
            }
        }
    }
    ctx->pushes[w->idx] = stats.rec_pushes;
    ctx->pops[w->idx] = stats.rec_pops;
    ctx->retries[w->idx] = stats.rec_retries;
    ctx->empty[w->idx] = empty;
    ctx->moved[w->idx] = moved;
}

static void *rec_thread(void *arg)
{
    rec_work(arg);
    return NULL;
}

/* Runs nthr workers on h, with indexes first.. first+nthr-1. */
static void rec_run_threads(struct rec_ctx *ctx, struct heap *h, unsigned first, unsigned nthr)
{
    struct rec_worker w[MAXWORKERS];
    pthread_t tid[MAXWORKERS];

    for (unsigned i = 0; i < nthr; i++) {
        w[i] = (struct rec_worker){.ctx = ctx, .h = h, .idx = first + i};
        MP_REQUIRE(pthread_create(&tid[i], NULL, rec_thread, &w[i]) == 0, "pthread_create");
    }
    for (unsigned i = 0; i < nthr; i++)
        MP_REQUIRE(pthread_join(tid[i], NULL) == 0, "pthread_join");
}

#define THREADS_PER_CHILD 2u

static int rec_child(void *arg, unsigned idx)
{
    struct rec_ctx *ctx = arg;
    struct heap *h = th_attach_child(ctx->t, 20 + idx);

    rec_run_threads(ctx, h, idx * THREADS_PER_CHILD, THREADS_PER_CHILD);
    heap_detach(h);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}

/* nproc 0: the workers are nthr threads of the test process. */
static void run_recycler(unsigned nproc, unsigned nthr)
{
    struct shm_config cfg;
    struct test_heap t;
    struct rec_ctx *ctx = mp_shared_alloc(sizeof(*ctx));
    uint32_t nobj = (uint32_t) test_scaled(4096, 4), count, nworkers;
    size_t offs_bytes = nobj * sizeof(uint64_t), holder_bytes = nobj * sizeof(uint32_t);
    uint64_t rng = 0xb0b0cafe, pushes = 0, pops = 0, retries = 0, moved = 0, first;
    uint64_t initial_bundles = 0, final_bundles = 0, total = 0;
    uint8_t *seen = calloc(nobj, 1);
    struct ctl_header *c;
    void **ptrs = calloc(nobj, sizeof(*ptrs));
    pid_t pid[MAXWORKERS];

    ck_assert_ptr_nonnull(seen);
    ck_assert_ptr_nonnull(ptrs);
    heap_config_default(&cfg);
    cfg.segment_size = UINT64_C(64) << 20;
    cfg.recycler_cap_bundles = 1u << 20; /* pushes never refused for the cap */
    th_create(&t, &cfg, SHM_PAGES_OFF);
    c = heap_ctl(t.h);
    ctx->t = &t;
    ctx->cls = sizeclass_of(OBJ_SIZE);
    ctx->nobj = nobj;
    ctx->iters = test_scaled(200000, 20);
    ctx->seed = 0x7ec7c1e5;
    ctx->offs = mp_shared_alloc(offs_bytes);
    ctx->holder = mp_shared_alloc(holder_bytes);
    nworkers = nproc ? nproc * THREADS_PER_CHILD : nthr;
    ck_assert_uint_le(nworkers, MAXWORKERS);

    /* Distinct objects of one class, numbered by their rank in offset order. */
    for (uint32_t i = 0; i < nobj; i++) {
        ptrs[i] = heap_malloc(t.h, OBJ_SIZE);
        ck_assert_ptr_nonnull(ptrs[i]);
        ctx->offs[i] = heap_to_off(t.h, ptrs[i]);
        ck_assert_uint_eq(ctx->offs[i] >> SHM_SEG_SHIFT, 1);
    }
    qsort(ctx->offs, nobj, sizeof(uint64_t), cmp_u64);
    for (uint32_t i = 0; i < nobj; i++) {
        uint64_t *words = heap_from_off(t.h, ctx->offs[i]);

        ck_assert_uint_ne(ctx->offs[i], i ? ctx->offs[i - 1] : 0);
        words[2] = i;
        words[3] = CHECK_MAGIC ^ i;
    }
    ck_assert_uint_eq(recycler_pop(t.h, NULL, FAULT_NONE, NULL, ctx->cls, &count), 0);
    /* Bundles of random sizes over a shuffled order. */
    {
        uint32_t *order = malloc(nobj * sizeof(*order));

        ck_assert_ptr_nonnull(order);
        for (uint32_t i = 0; i < nobj; i++)
            order[i] = i;
        for (uint32_t i = nobj - 1; i > 0; i--) {
            uint32_t j = (uint32_t) (test_rand(&rng) % (i + 1)), tmp = order[i];

            order[i] = order[j];
            order[j] = tmp;
        }
        for (uint32_t i = 0; i < nobj;) {
            uint32_t len = 1 + (uint32_t) (test_rand(&rng) % MAXBUNDLE);

            if (len > nobj - i)
                len = nobj - i;
            for (uint32_t k = 0; k < len; k++)
                ((uint64_t *) heap_from_off(t.h, ctx->offs[order[i + k]]))[0] =
                        k + 1 < len ? ctx->offs[order[i + k + 1]] : 0;
            ck_assert(recycler_push(t.h, NULL, FAULT_NONE, NULL, ctx->cls, ctx->offs[order[i]], len,
                                    1, false));
            initial_bundles++;
            i += len;
        }
        free(order);
    }
    ck_assert_uint_eq(load_relaxed(&c->rec[ctx->cls].nbundles), initial_bundles);
    ck_assert_uint_eq(load_relaxed(&c->rec[ctx->cls].objects), nobj);

    if (nproc) {
        for (unsigned i = 0; i < nproc; i++)
            pid[i] = mp_fork(rec_child, ctx, i);
        mp_wait_all_ok(pid, nproc, "recycler child");
    } else {
        rec_run_threads(ctx, t.h, 0, nthr);
    }
    for (unsigned i = 0; i < nworkers; i++) {
        pushes += ctx->pushes[i];
        pops += ctx->pops[i];
        retries += ctx->retries[i];
        moved += ctx->moved[i];
    }
    ck_assert_msg(pops > 0 && moved > 0, "the workers moved nothing");
    fprintf(stderr,
            "recycler %s: %u workers, %" PRIu64 " pops, %" PRIu64 " pushes, %" PRIu64
            " CAS retries, %" PRIu64 " objects moved\n",
            nproc ? "processes" : "threads", nworkers, pops, pushes, retries, moved);

    /* Everything back out: each object exactly once, counts that add up. */
    while ((first = recycler_pop(t.h, NULL, FAULT_NONE, NULL, ctx->cls, &count)) != 0) {
        uint32_t got = 0;

        final_bundles++;
        for (uint64_t off = first; off; off = ((uint64_t *) heap_from_off(t.h, off))[0]) {
            uint32_t id = UINT32_MAX, lo = 0, hi = nobj;

            while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;

                if (ctx->offs[mid] < off)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo < nobj && ctx->offs[lo] == off)
                id = lo;
            ck_assert_msg(id != UINT32_MAX, "bundle %#" PRIx64 ": %#" PRIx64 " is not ours", first,
                          off);
            ck_assert_msg(!seen[id], "object %u (%#" PRIx64 ") is in the recycler twice", id, off);
            ck_assert_msg(ctx->holder[id] == 0, "object %u still held by worker %u", id,
                          ctx->holder[id] - 1);
            seen[id] = 1;
            got++;
            ck_assert_uint_le(got, count);
        }
        ck_assert_msg(got == count, "bundle %#" PRIx64 " says %u objects, has %u", first, count,
                      got);
        total += got;
    }
    ck_assert_uint_eq(total, nobj);
    for (uint32_t i = 0; i < nobj; i++)
        ck_assert_msg(seen[i], "object %u is missing", i);
    ck_assert_uint_eq(initial_bundles + pushes - pops, final_bundles);
    ck_assert_uint_eq(load_relaxed(&c->rec[ctx->cls].nbundles), 0);
    ck_assert_uint_eq(load_relaxed(&c->rec[ctx->cls].objects), 0);

    /* They are still allocated objects: give them back and verify. */
    for (uint32_t i = 0; i < nobj; i++)
        heap_free(t.h, ptrs[i]);
    th_verify(t.h);
    ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
    ck_assert_uint_eq(mp_blocks_not_free(t.h), 0);

    free(ptrs);
    free(seen);
    th_destroy(&t);
    mp_shared_free(ctx->offs, offs_bytes);
    mp_shared_free(ctx->holder, holder_bytes);
    mp_shared_free(ctx, sizeof(*ctx));
}

START_TEST(recycler_processes)
{
    run_recycler(test_scale_small() ? 2 : 4, 0);
}
END_TEST

START_TEST(recycler_threads)
{
    run_recycler(0, 4);
}
END_TEST

Suite *recycler_suite(void)
{
    Suite *s = suite_create("recycler");
    TCase *tc = tcase_create("contention");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, recycler_processes);
    tcase_add_test(tc, recycler_threads);
    suite_add_tcase(s, tc);
    return s;
}
