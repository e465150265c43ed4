/* The workloads, built once per allocator (see bench/workloads.h and
 * bench/alloc.h): the same loops, the same sizes and the same random
 * sequence for every allocator, each calling its allocator directly.
 *
 * Honesty rules every loop keeps:
 *   - each object is written (its first word) after it is allocated, so no
 *     allocator is measured on memory nobody touches;
 *   - every pointer escapes (a volatile sink, a slot array or the ring), so
 *     the compiler cannot drop a malloc/free pair;
 *   - set-up (attaching, filling the live set, warm-up) is not timed, and
 *     the timed part is read with CLOCK_MONOTONIC around the loop only;
 *   - the churn loops check, on free, that the word they wrote is still
 *     there, and the W4 consumer checks the sequence number the producer
 *     wrote; a mismatch (two live objects overlapping) fails the run. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bench/alloc.h"
#include "bench/workloads.h"

const char bench_alloc_name[] = BA_NAME;

/* W1's sizes; the loop cycles through them in this order. */
static const uint32_t w1_sizes[8] = {16, 32, 48, 64, 96, 128, 256, 512};

/* W2/W3 sizes: 16..1024 bytes, uniform. */
#define CHURN_MIN  16u
#define CHURN_SPAN 1009u

/* W4's object size. */
#define W4_SIZE 64u

/* The word a churn loop writes into the object in slot s. */
#define CHURN_TAG(s) (UINT64_C(0x5348504845415021) ^ (uint64_t) (s))

/* Where W1 puts each pointer so that its malloc/free pair stays. */
static void *volatile bench_sink;

int bench_alloc_info(char *buf, size_t len)
{
    return ba_info(buf, len);
}

/* Maps `x`'s 32 bits to [0, n) by multiply and shift (Lemire), not by a
 * division that would add tens of cycles to every op of every allocator. */
static inline uint32_t range32(uint32_t x, uint32_t n)
{
    return (uint32_t) (((uint64_t) x * n) >> 32);
}

/* ---- W1, W1c ---- */

static __attribute__((noinline)) int w1_loop(ba_ctx_t c, uint64_t ops)
{
    uint64_t i;

    for (i = 0; i < ops; i++) {
        void *p = ba_malloc(c, w1_sizes[i & 7]);

        if (!p)
            return -ENOMEM;
        *(uint64_t *) p = i;
        bench_sink = p;
        ba_free(c, p);
    }
    return 0;
}

int bench_w1(const struct bench_params *prm, bool keep_one_each, struct bench_result *ret)
{
    void *kept[8] = {NULL};
    ba_shared_t *s;
    uint64_t t0, t1, warm;
    ba_ctx_t c;
    unsigned k;
    int r;

    r = ba_shared_create(&s);
    if (r < 0)
        return r;
    r = ba_attach(s, 1, &c);
    if (r < 0)
        goto out_destroy;

    if (keep_one_each) {
        for (k = 0; k < 8; k++) {
            kept[k] = ba_malloc(c, w1_sizes[k]);
            if (!kept[k]) {
                r = -ENOMEM;
                goto out_free;
            }
            *(uint64_t *) kept[k] = k;
        }
    }

    /* Warm-up: first touches, thread-cache creation, lazy initialisation. */
    warm = prm->w1_ops / 100 < 80000 ? prm->w1_ops / 100 : 80000;
    r = w1_loop(c, warm);
    if (r < 0)
        goto out_free;

    t0 = bench_now_ns();
    r = w1_loop(c, prm->w1_ops);
    t1 = bench_now_ns();
    if (r < 0)
        goto out_free;
    bench_fill_result(ret, prm->w1_ops, t0, t1);

out_free:
    for (k = 0; k < 8; k++)
        if (kept[k])
            ba_free(c, kept[k]);
    if (r == 0 && prm->verify)
        r = ba_verify(c);
    ba_detach(c);
out_destroy:
    ba_shared_destroy(s);
    return r;
}

/* ---- W2, W3: churn ---- */

struct churn {
    void **slot;
    uint32_t live;
    uint64_t rng;
    uint64_t bad; /* objects whose tag was overwritten */
};

static int churn_init(struct churn *ch, uint32_t live, uint64_t seed)
{
    ch->slot = bench_map(sizeof(void *) * live, false);
    if (!ch->slot)
        return -ENOMEM;
    ch->live = live;
    ch->rng = seed ? seed : 1;
    ch->bad = 0;
    return 0;
}

/* Fills every slot with a random size from the same sequence. */
static int churn_fill(ba_ctx_t c, struct churn *ch)
{
    uint32_t s;

    for (s = 0; s < ch->live; s++) {
        uint64_t x = bench_xorshift64(&ch->rng);
        void *p = ba_malloc(c, CHURN_MIN + range32((uint32_t) x, CHURN_SPAN));

        if (!p)
            return -ENOMEM;
        *(uint64_t *) p = CHURN_TAG(s);
        ch->slot[s] = p;
    }
    return 0;
}

/* One op: free a random slot's object, allocate a random size into it. */
static __attribute__((noinline)) int churn_run(ba_ctx_t c, struct churn *ch, uint64_t ops)
{
    void **slot = ch->slot;
    uint32_t live = ch->live;
    uint64_t rng = ch->rng, bad = 0, i;

    for (i = 0; i < ops; i++) {
        uint64_t x = bench_xorshift64(&rng);
        uint32_t s = range32((uint32_t) (x >> 32), live);
        size_t n = CHURN_MIN + range32((uint32_t) x, CHURN_SPAN);
        void *p = slot[s];

        bad += *(uint64_t *) p != CHURN_TAG(s);
        ba_free(c, p);
        p = ba_malloc(c, n);
        if (!p) {
            slot[s] = NULL;
            ch->rng = rng;
            ch->bad += bad;
            return -ENOMEM;
        }
        *(uint64_t *) p = CHURN_TAG(s);
        slot[s] = p;
    }
    ch->rng = rng;
    ch->bad += bad;
    return 0;
}

static void churn_done(ba_ctx_t c, struct churn *ch)
{
    uint32_t s;

    if (!ch->slot)
        return;
    for (s = 0; s < ch->live; s++)
        if (ch->slot[s])
            ba_free(c, ch->slot[s]);
    bench_unmap(ch->slot, sizeof(void *) * ch->live);
    ch->slot = NULL;
}

/* Fill, then time `ops` churn ops; *ret_t0 and *ret_t1 bracket the loop.
 * With a barrier, every participant starts the clock after it. */
static int churn_timed(ba_ctx_t c,
                       const struct bench_params *prm,
                       uint64_t seed,
                       uint64_t ops,
                       struct bench_barrier *bar,
                       uint32_t nbar,
                       uint64_t *ret_t0,
                       uint64_t *ret_t1)
{
    struct churn ch = {0};
    uint64_t t0, t1;
    int r;

    r = churn_init(&ch, prm->live, seed);
    if (r < 0)
        return r;
    r = churn_fill(c, &ch);
    if (r < 0)
        goto out;
    if (bar)
        bench_barrier_wait(bar, nbar);
    t0 = bench_now_ns();
    r = churn_run(c, &ch, ops);
    t1 = bench_now_ns();
    if (r < 0)
        goto out;
    if (ch.bad) {
        fprintf(stderr, "bench: %s: %llu objects were overwritten while live\n", bench_alloc_name,
                (unsigned long long) ch.bad);
        r = -EIO;
        goto out;
    }
    *ret_t0 = t0;
    *ret_t1 = t1;
out:
    churn_done(c, &ch);
    return r;
}

int bench_w2(const struct bench_params *prm, struct bench_result *ret)
{
    uint64_t t0 = 0, t1 = 0;
    ba_shared_t *s;
    ba_ctx_t c;
    int r;

    r = ba_shared_create(&s);
    if (r < 0)
        return r;
    r = ba_attach(s, 1, &c);
    if (r < 0)
        goto out_destroy;
    r = churn_timed(c, prm, prm->seed, prm->w2_ops, NULL, 0, &t0, &t1);
    if (r == 0)
        bench_fill_result(ret, prm->w2_ops, t0, t1);
    if (r == 0 && prm->verify)
        r = ba_verify(c);
    ba_detach(c);
out_destroy:
    ba_shared_destroy(s);
    return r;
}

/* Written by the children of one W3 phase, read by the parent after they
 * have exited (waitpid orders the reads after the children's writes). */
struct w3_shared {
    struct bench_barrier bar;
    uint64_t t0[1u << (BENCH_W3_PHASES - 1)];
    uint64_t t1[1u << (BENCH_W3_PHASES - 1)];
};

struct w3_arg {
    const struct bench_params *prm;
    ba_shared_t *heap;
    struct w3_shared *sh;
    uint32_t nproc;
    uint64_t ops; /* per process */
};

/* Process idx's seed: process 0 replays W2's sequence, process 1 its own,
 * and so on; the same for every allocator. */
static uint64_t w3_seed(uint64_t seed, unsigned idx)
{
    return idx == 0 ? seed : seed ^ (UINT64_C(0xD1B54A32D192ED03) * idx);
}

static int w3_child(void *arg, unsigned idx)
{
    struct w3_arg *a = arg;
    ba_shared_t *own = NULL;
    ba_ctx_t c;
    int r;

    /* BENCH_W3_PRIVATE=1: each process on a heap of its own (what sharing
     * one heap costs, against the same allocator). */
    if (a->prm->w3_private) {
        r = ba_shared_create(&own);
        if (r < 0)
            return r;
    }
    r = ba_attach(own ? own : a->heap, idx + 1, &c);
    if (r < 0) {
        fprintf(stderr, "bench: %s: W3 attach: %s\n", bench_alloc_name, strerror(-r));
        return r;
    }
    r = churn_timed(c, a->prm, w3_seed(a->prm->seed, idx), a->ops, &a->sh->bar, a->nproc,
                    &a->sh->t0[idx], &a->sh->t1[idx]);
    if (r < 0)
        fprintf(stderr, "bench: %s: W3 process %u of %u: %s\n", bench_alloc_name, idx + 1, a->nproc,
                strerror(-r));
    ba_detach(c);
    if (own)
        ba_shared_destroy(own);
    return r;
}

/* One phase in nproc fresh processes, each doing `ops` pairs; returns the
 * pairs per second of all of them together (or <0). */
static double w3_phase(const struct bench_params *prm, uint32_t nproc, uint64_t ops)
{
    struct w3_arg a = {.prm = prm, .nproc = nproc, .ops = ops};
    uint64_t t0 = UINT64_MAX, t1 = 0;
    double tput = -1;
    char what[32];
    uint32_t i;
    int r;

    a.sh = bench_map(sizeof(*a.sh), true);
    if (!a.sh)
        return -1;
    r = ba_shared_create(&a.heap);
    if (r < 0) {
        fprintf(stderr, "bench: %s: W3 heap: %s\n", bench_alloc_name, strerror(-r));
        goto out;
    }
    (void) snprintf(what, sizeof(what), "W3 %u process%s", nproc, nproc == 1 ? "" : "es");
    r = bench_run_children(nproc, w3_child, &a, what);
    if (r == 0 && prm->verify)
        r = ba_verify_shared(a.heap);
    ba_shared_destroy(a.heap);
    if (r < 0)
        goto out;
    /* Wall time from the first start to the last finish. */
    for (i = 0; i < nproc; i++) {
        t0 = a.sh->t0[i] < t0 ? a.sh->t0[i] : t0;
        t1 = a.sh->t1[i] > t1 ? a.sh->t1[i] : t1;
    }
    tput = (double) ops * nproc / ((double) (t1 > t0 ? t1 - t0 : 1) / 1e9);
out:
    bench_unmap(a.sh, sizeof(*a.sh));
    return tput;
}

/* The curve: N = 1, 2, 4, 8 processes on one heap (shmheap, shmheap-api,
 * boost) or N private heaps (the others). N = 1 and 2 each do w3_ops pairs
 * per process, as W3 always has (W3_scaling is their ratio). Above 2 the
 * phase keeps the 2-process phase's total, 2 * w3_ops pairs split over N,
 * so that it takes about as long: on a machine with fewer CPUs than N it
 * shows what oversubscription costs (a lock convoy, a spinner burning the
 * time slice of a preempted holder) rather than more work. */
int bench_w3(const struct bench_params *prm, struct bench_result *ret)
{
    double t[BENCH_W3_PHASES] = {0};
    unsigned i;

    for (i = 0; i < BENCH_W3_PHASES && (1u << i) <= prm->w3_procs; i++) {
        uint32_t n = 1u << i;
        uint64_t ops = n <= 2 ? prm->w3_ops : prm->w3_ops * 2 / n;

        t[i] = w3_phase(prm, n, ops ? ops : 1);
        /* W3 proper is N = 1 and 2: without them there is no figure. A
         * failed point further along the curve is reported as failed
         * (tput -1, the reason on stderr) and the curve goes on. */
        if (t[i] < 0 && n <= 2)
            return -ECHILD;
    }
    memset(ret, 0, sizeof(*ret));
    ret->ops = prm->w3_ops;
    memcpy(ret->tput, t, sizeof(t));
    ret->tput1 = t[0];
    ret->tput2 = t[1];
    ret->scaling = t[1] > 0 ? t[1] / t[0] : 0; /* t[1] == 0: w3_procs was 1 */
    return 0;
}

/* ---- W4: producer allocates, consumer frees ---- */

struct w4_shared {
    struct bench_barrier bar;
    uint64_t t0[2];
    uint64_t t1[2];
    uint64_t bad;
};

struct w4_arg {
    const struct bench_params *prm;
    ba_shared_t *heap;
    struct w4_shared *sh;
    struct bench_ring *ring;
};

static __attribute__((noinline)) int w4_produce(ba_ctx_t c, struct bench_ring *ring, uint64_t n)
{
    struct bench_ring_side side = {0, 0};
    uint64_t i;

    for (i = 0; i < n; i++) {
        void *p = ba_malloc(c, W4_SIZE);

        if (!p) {
            bench_ring_push(ring, &side, 0); /* tells the consumer to stop */
            bench_ring_flush(ring, &side);
            return -ENOMEM;
        }
        *(uint64_t *) p = i;
        bench_ring_push(ring, &side, ba_to_handle(c, p));
    }
    bench_ring_flush(ring, &side);
    return 0;
}

static __attribute__((noinline)) int
w4_consume(ba_ctx_t c, struct bench_ring *ring, uint64_t n, uint64_t *ret_bad)
{
    struct bench_ring_side side = {0, 0};
    uint64_t i, bad = 0;

    for (i = 0; i < n; i++) {
        uint64_t v = bench_ring_pop(ring, &side);
        void *p;

        if (v == 0)
            return -ECANCELED; /* the producer failed */
        p = ba_from_handle(c, v);
        if (!p) {
            fprintf(stderr, "bench: %s: W4 handle %#llx maps to nothing\n", bench_alloc_name,
                    (unsigned long long) v);
            return -EFAULT;
        }
        bad += *(uint64_t *) p != i;
        ba_free(c, p);
    }
    *ret_bad = bad;
    return 0;
}

/* Side idx (0 producer, 1 consumer) of W4, in a thread or a process. */
static int w4_side(struct w4_arg *a, ba_ctx_t c, unsigned idx)
{
    uint64_t n = a->prm->w4_objs, bad = 0;
    int r;

    bench_barrier_wait(&a->sh->bar, 2);
    a->sh->t0[idx] = bench_now_ns();
    if (idx == 0) {
        r = w4_produce(c, a->ring, n);
    } else {
        r = w4_consume(c, a->ring, n, &bad);
        a->sh->bad = bad;
    }
    a->sh->t1[idx] = bench_now_ns();
    if (r < 0)
        fprintf(stderr, "bench: %s: W4 %s: %s\n", bench_alloc_name,
                idx == 0 ? "producer" : "consumer", strerror(-r));
    return r;
}

#if BA_W4_PROCESSES
static int w4_child(void *arg, unsigned idx)
{
    struct w4_arg *a = arg;
    ba_ctx_t c;
    int r;

    r = ba_attach(a->heap, idx + 1, &c);
    if (r < 0) {
        fprintf(stderr, "bench: %s: W4 attach: %s\n", bench_alloc_name, strerror(-r));
        return r;
    }
    r = w4_side(a, c, idx);
    ba_detach(c);
    return r;
}

static int w4_run(struct w4_arg *a)
{
    return bench_run_children(2, w4_child, a, "W4");
}
#else
struct w4_thread {
    struct w4_arg *a;
    int r;
};

static void *w4_producer_thread(void *arg)
{
    struct w4_thread *t = arg;

    t->r = w4_side(t->a, NULL, 0);
    return NULL;
}

/* The producer runs in a new thread, the consumer in this one. */
static int w4_run(struct w4_arg *a)
{
    struct w4_thread t = {.a = a};
    pthread_t tid;
    int r;

    r = pthread_create(&tid, NULL, w4_producer_thread, &t);
    if (r != 0) {
        fprintf(stderr, "bench: %s: W4 pthread_create: %s\n", bench_alloc_name, strerror(r));
        return -r;
    }
    r = w4_side(a, NULL, 1);
    (void) pthread_join(tid, NULL);
    return t.r < 0 ? t.r : r;
}
#endif

int bench_w4(const struct bench_params *prm, struct bench_result *ret)
{
    struct w4_arg a = {.prm = prm};
    size_t ring_bytes = bench_ring_bytes(prm->ring);
    uint64_t t0, t1;
    int r = -ENOMEM;

    a.sh = bench_map(sizeof(*a.sh), true);
    a.ring = bench_map(ring_bytes, true); /* its own mapping, made before any fork */
    if (!a.sh || !a.ring)
        goto out;
    a.ring->mask = prm->ring - 1;
    r = ba_shared_create(&a.heap);
    if (r < 0) {
        fprintf(stderr, "bench: %s: W4 heap: %s\n", bench_alloc_name, strerror(-r));
        goto out;
    }
    r = w4_run(&a);
    if (r == 0 && prm->verify)
        r = ba_verify_shared(a.heap);
    ba_shared_destroy(a.heap);
    if (r < 0)
        goto out;
    if (a.sh->bad) {
        fprintf(stderr, "bench: %s: W4: %llu objects arrived overwritten\n", bench_alloc_name,
                (unsigned long long) a.sh->bad);
        r = -EIO;
        goto out;
    }
    t0 = a.sh->t0[0] < a.sh->t0[1] ? a.sh->t0[0] : a.sh->t0[1];
    t1 = a.sh->t1[0] > a.sh->t1[1] ? a.sh->t1[0] : a.sh->t1[1];
    bench_fill_result(ret, prm->w4_objs, t0, t1);
out:
    if (a.ring)
        bench_unmap(a.ring, ring_bytes);
    if (a.sh)
        bench_unmap(a.sh, sizeof(*a.sh));
    return r;
}
