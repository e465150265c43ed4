/* The allocator benchmark: shared declarations.
 *
 * Every allocator runs the same workload source. bench/workloads.c is
 * compiled once per allocator with -DBENCH_ALLOC_ID=BENCH_ID_<name>, and
 * bench/alloc.h turns that into direct calls (malloc/free for the
 * per-process allocators, heap_malloc/heap_free for shmheap), so no
 * allocator pays an indirect call in the timed loops that the others do
 * not. The one difference left is the one applications see as well: the
 * per-process allocators live in shared libraries (glibc, and mimalloc,
 * jemalloc and tcmalloc interposing malloc), so their calls go through the
 * PLT, while shmheap comes from the static archive libshmcore.a.
 *
 * Everything that does not depend on the allocator (parameters, the
 * clock, processes, the barrier, the ring) lives in bench/main.c and is
 * compiled once.
 *
 * Workloads (see bench/workloads.c for the exact loops):
 *   W1   malloc+free pairs, sizes cycling 16..512, one thread
 *   W1c  W1 while one object of each of those sizes stays allocated
 *   W2   one thread churns `live` objects of 16..1024 bytes at random
 *   W3   W2 in 1 and then in 2 processes at once (one shared heap for
 *        shmheap, shmheap-api and boost, independent processes for the
 *        others)
 *   W4   producer allocates 64-byte objects, consumer frees them, handles
 *        through an SPSC ring (two processes for shmheap, shmheap-api and
 *        boost, two threads for the others)
 *   W5b  allocate 1 GiB in 64..256-byte objects, free the oldest 90 %,
 *        release (trim), then read the memory still held against the
 *        4 KiB pages that hold a live byte (bench/memory.c)
 *   W6   a pipeline of 4 stages: each object is allocated in one stage and
 *        freed in the next, handles through rings that live in the heap
 *        (four processes for shmheap, shmheap-api and boost, four threads
 *        for the others; bench/pipeline.c) */
#ifndef BENCH_WORKLOADS_H
#define BENCH_WORKLOADS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* W3 runs N = 1, 2, 4, 8 processes (phase i: 1 << i). */
#define BENCH_W3_PHASES 4

/* Run sizes; each can be set from the environment (see bench_params_load). */
struct bench_params {
    uint64_t w1_ops;  /* BENCH_W1_OPS: malloc+free pairs in W1 and W1c */
    uint64_t w2_ops;  /* BENCH_W2_OPS: free+malloc pairs in W2 */
    uint64_t w3_ops;  /* BENCH_W3_OPS: pairs per process in W3 */
    uint64_t w4_objs; /* BENCH_W4_OBJS: objects passed in W4 */
    uint64_t w5b_bytes; /* BENCH_W5B_BYTES: bytes requested in W5b */
    uint64_t w6_objs;   /* BENCH_W6_OBJS: objects entering the W6 pipeline */
    uint32_t w3_procs;  /* BENCH_W3_PROCS: the W3 curve's largest N (1, 2, 4 or 8) */
    uint32_t live;    /* BENCH_LIVE: live objects in W2 and W3 */
    uint32_t ring;    /* BENCH_W4_RING: ring slots in W4, a power of two */
    uint64_t seed;    /* BENCH_SEED: xorshift64 seed, non-zero */
    bool verify;      /* BENCH_VERIFY=1: check the heap after the run (untimed) */
    bool w3_private;  /* BENCH_W3_PRIVATE=1: W3's processes each on a heap of its own */
};

/* One run's figures; which fields are set depends on the workload. */
struct bench_result {
    uint64_t ops;     /* pairs (W1, W1c, W2) or objects (W4) timed */
    double secs;      /* wall time of the timed part */
    double ns_per_op; /* W1, W1c, W2: per pair; W4: per object */
    double per_s;     /* W1, W1c, W2: pairs per second; W4: objects per second */
    double tput1;     /* W3: pairs per second, one process */
    double tput2;     /* W3: pairs per second, two processes together */
    double scaling;   /* W3: tput2 / tput1 */
    /* W3's curve: pairs per second of N processes together, for N = 1, 2,
     * 4, 8 (index 0..3; 0 where N was above w3_procs, -1 where that phase
     * failed). tput[0] == tput1, tput[1] == tput2. */
    double tput[BENCH_W3_PHASES];
    /* W5b */
    uint64_t held_bytes;   /* memory still held after the release call */
    uint64_t before_bytes; /* the same, measured before the release call */
    uint64_t floor_bytes;  /* 4 KiB pages holding a live byte, in bytes */
    uint64_t live_bytes;   /* bytes requested by the live objects */
};

/* ---- per allocator (workloads.c, built once per allocator) ---- */

extern const char bench_alloc_name[];

/* Writes the allocator's version into buf and checks that the allocator
 * really serves this binary's malloc (for the interposing ones). Returns 0,
 * or -ENOTSUP if the check failed (buf then says why). */
int bench_alloc_info(char *buf, size_t len);

int bench_w1(const struct bench_params *prm, bool keep_one_each, struct bench_result *ret);
int bench_w2(const struct bench_params *prm, struct bench_result *ret);
int bench_w3(const struct bench_params *prm, struct bench_result *ret);
int bench_w4(const struct bench_params *prm, struct bench_result *ret);
int bench_w5b(const struct bench_params *prm, struct bench_result *ret); /* memory.c */
int bench_w6(const struct bench_params *prm, struct bench_result *ret);  /* pipeline.c */

/* ---- allocator-independent helpers (main.c) ---- */

/* Fills *ret from the defaults and the environment; -EINVAL on a bad value. */
int bench_params_load(struct bench_params *ret);

/* Zeroes *ret and sets ops, secs, ns_per_op and per_s from a timed part
 * that ran from t0 to t1 (bench_now_ns). */
void bench_fill_result(struct bench_result *ret, uint64_t ops, uint64_t t0, uint64_t t1);

/* This process's resident anonymous memory (RssAnon of /proc/self/status),
 * in bytes; a negative errno if it cannot be read. */
int64_t bench_rss_anon(void);

/* Runs fn(arg, i) for i = 0..n-1 in n threads of this process (fn(arg, 0)
 * in the calling one); returns the first negative result, else 0. */
int bench_run_threads(unsigned n, int (*fn)(void *arg, unsigned idx), void *arg, const char *what);

/* A zeroed anonymous mapping, NULL on failure. shared: MAP_SHARED, so that
 * children forked after it is made see the same memory; else private. */
void *bench_map(size_t len, bool shared);
void bench_unmap(void *p, size_t len);

/* Forks n children; child i runs fn(arg, i) and exits with 0 if it
 * returned 0, else 1. Each child dies with the parent. Then waits for all;
 * when one fails (non-zero exit or a signal) the others are killed.
 * Returns 0 if every child succeeded, else -ECHILD (reported on stderr). */
int bench_run_children(unsigned n, int (*fn)(void *arg, unsigned idx), void *arg, const char *what);

static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * UINT64_C(1000000000) + (uint64_t) ts.tv_nsec;
}

/* Marsaglia's xorshift64 (13, 7, 17); the state must never be 0. */
static inline uint64_t bench_xorshift64(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

static inline void bench_cpu_relax(void)
{
    __builtin_ia32_pause();
}

/* A one-shot barrier for threads or processes in a shared mapping. Zero it,
 * then every one of the n participants calls bench_barrier_wait once. */
struct bench_barrier {
    uint32_t arrived;
    uint32_t pad[15];
};

void bench_barrier_wait(struct bench_barrier *b, uint32_t n);

/* Single-producer, single-consumer ring of u64 handles, in a shared
 * mapping. Each side keeps its own copy of the other's index and rereads
 * the shared one only when the ring looks full (producer) or empty
 * (consumer), and publishes its own index every BENCH_RING_BATCH handles
 * (and always before it waits, so neither can wait for the other's
 * unpublished progress). That keeps the two index lines from bouncing
 * between the CPUs on every handle, which would otherwise dominate W4
 * and make it depend on whether the ring happens to run full or empty.
 *
 * release: the producer's store to `head` publishes the slots written
 * before it; pairs with the consumer's acquire load of `head`. Likewise the
 * consumer's release store to `tail` hands the slots back to the producer,
 * which acquires `tail` before writing them again. */
#define BENCH_RING_BATCH 32u

struct bench_ring {
    _Alignas(64) uint64_t head; /* written by the producer only */
    _Alignas(64) uint64_t tail; /* written by the consumer only */
    _Alignas(64) uint32_t mask; /* slots - 1; set before either side starts */
    _Alignas(64) uint64_t slot[];
};

/* Per-side state; never shared. */
struct bench_ring_side {
    uint64_t mine;   /* head for the producer, tail for the consumer */
    uint64_t theirs; /* last value seen of the other side's index */
};

size_t bench_ring_bytes(uint32_t slots);
void bench_ring_wait(unsigned *spins);

/* Producer: makes every pushed handle visible (also done every batch). */
static inline void bench_ring_flush(struct bench_ring *r, struct bench_ring_side *s)
{
    /* release: publishes the slots; pairs with the acquire in bench_ring_pop. */
    __atomic_store_n(&r->head, s->mine, __ATOMIC_RELEASE);
}

static inline void bench_ring_push(struct bench_ring *r, struct bench_ring_side *s, uint64_t v)
{
    unsigned spins = 0;

    if (s->mine - s->theirs > r->mask) {
        bench_ring_flush(r, s);
        for (;;) {
            /* acquire: pairs with the consumer's release store of tail; the
             * slots we are about to overwrite have been read. */
            s->theirs = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
            if (s->mine - s->theirs <= r->mask)
                break;
            bench_ring_wait(&spins);
        }
    }
    r->slot[s->mine & r->mask] = v;
    s->mine++;
    if ((s->mine & (BENCH_RING_BATCH - 1)) == 0)
        bench_ring_flush(r, s);
}

static inline uint64_t bench_ring_pop(struct bench_ring *r, struct bench_ring_side *s)
{
    unsigned spins = 0;
    uint64_t v;

    if (s->mine == s->theirs) {
        /* release: the slots are read; pairs with the acquire in bench_ring_push. */
        __atomic_store_n(&r->tail, s->mine, __ATOMIC_RELEASE);
        for (;;) {
            /* acquire: pairs with the producer's release store of head. */
            s->theirs = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
            if (s->mine != s->theirs)
                break;
            bench_ring_wait(&spins);
        }
    }
    v = r->slot[s->mine & r->mask];
    s->mine++;
    if ((s->mine & (BENCH_RING_BATCH - 1)) == 0)
        __atomic_store_n(&r->tail, s->mine, __ATOMIC_RELEASE); /* as above */
    return v;
}

#endif
