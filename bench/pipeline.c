/* W6: a pipeline of four stages where every object is allocated in one
 * stage and freed in the next. Built once per allocator, as
 * bench/workloads.c (see bench/alloc.h).
 *
 *   stage 0 --ring 0--> stage 1 --ring 1--> stage 2 --ring 2--> stage 3
 *
 * Stage 0 allocates object i and passes its handle on; stages 1 and 2 each
 * take object i, check it, free it and pass on a new object i of their
 * own; stage 3 checks and frees. So 3 * w6_objs objects are allocated,
 * each in one stage and freed in the next, and the figure is those objects
 * per second (wall time from the first stage's start to the last one's
 * finish). Sizes cycle through W1's eight (16..512 bytes), shifted by the
 * stage, so that every stage frees into and allocates from every class.
 *
 * The rings are the shared queues: single-producer, single-consumer
 * (struct bench_ring, the same one W4 uses) and allocated from the heap
 * itself by stage 0, which publishes their handles before the start
 * barrier and frees them after the end barrier. shmheap, shmheap-api and
 * boost run the stages as four processes on one heap (handles are
 * offsets); that is the case a per-process allocator cannot do at all, so
 * the others run it as four threads of one process (handles are pointers),
 * the nearest thing they have, as in W4.
 *
 * A stage that fails (a bad handle, no memory, an overwritten object) ends
 * the run: as a process it exits and bench_run_children kills the others;
 * as a thread it exits the process, since the others would wait on it. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bench/alloc.h"
#include "bench/workloads.h"

#define W6_STAGES 4u
#define W6_RINGS  (W6_STAGES - 1)

static const uint32_t w6_sizes[8] = {16, 32, 48, 64, 96, 128, 256, 512};

/* The first word of object i made by stage k. */
#define W6_TAG(i, k) (UINT64_C(0x5736000000000000) ^ ((uint64_t) (k) << 48) ^ (uint64_t) (i))

/* Written before the start barrier (ring handles, by stage 0) or by each
 * stage for itself; read after the end barrier or after the stages have
 * exited. */
struct w6_shared {
    struct bench_barrier start;
    struct bench_barrier done;
    uint64_t ring_handle[W6_RINGS];
    uint64_t t0[W6_STAGES];
    uint64_t t1[W6_STAGES];
};

struct w6_arg {
    const struct bench_params *prm;
    ba_shared_t *heap;
    struct w6_shared *sh;
};

/* The ring inside an allocation made 64 bytes larger than it: its index
 * lines are cache-line aligned (an allocator need not give 64). The same
 * in every process, since every mapping of the heap is page aligned. */
static struct bench_ring *ring_in(void *raw)
{
    return (struct bench_ring *) (((uintptr_t) raw + 63) & ~(uintptr_t) 63);
}

static int w6_fail(unsigned k, const char *what, int r)
{
    fprintf(stderr, "bench: %s: W6 stage %u: %s: %s\n", bench_alloc_name, k, what, strerror(-r));
    if (!BA_W4_PROCESSES)
        _exit(1); /* the other threads would wait for this one forever */
    return r;
}

/* Stage 0's part before the start: the rings, allocated from the heap. */
static int w6_make_rings(struct w6_arg *a, ba_ctx_t c, void **raw)
{
    for (unsigned q = 0; q < W6_RINGS; q++) {
        struct bench_ring *ring;

        raw[q] = ba_malloc(c, bench_ring_bytes(a->prm->ring) + 64);
        if (!raw[q])
            return -ENOMEM;
        ring = ring_in(raw[q]);
        memset(ring, 0, sizeof(*ring));
        ring->mask = a->prm->ring - 1;
        a->sh->ring_handle[q] = ba_to_handle(c, raw[q]);
    }
    return 0;
}

/* The timed loop of stage k; *ret_bad counts objects that arrived with a
 * wrong tag. */
static __attribute__((noinline)) int
w6_loop(ba_ctx_t c, unsigned k, struct bench_ring *in, struct bench_ring *out, uint64_t n)
{
    struct bench_ring_side ins = {0, 0}, outs = {0, 0};
    uint64_t i, bad = 0;

    for (i = 0; i < n; i++) {
        if (in) {
            uint64_t v = bench_ring_pop(in, &ins);
            void *p = ba_from_handle(c, v);

            if (!p)
                return -EFAULT;
            bad += *(uint64_t *) p != W6_TAG(i, k - 1);
            ba_free(c, p);
        }
        if (out) {
            void *p = ba_malloc(c, w6_sizes[(i + k) & 7]);

            if (!p)
                return -ENOMEM;
            *(uint64_t *) p = W6_TAG(i, k);
            bench_ring_push(out, &outs, ba_to_handle(c, p));
        }
    }
    if (out)
        bench_ring_flush(out, &outs);
    return bad ? -EIO : 0;
}

static int w6_stage(struct w6_arg *a, ba_ctx_t c, unsigned k)
{
    struct bench_ring *in = NULL, *out = NULL;
    void *raw[W6_RINGS] = {NULL};
    int r;

    if (k == 0) {
        r = w6_make_rings(a, c, raw);
        if (r < 0)
            return w6_fail(k, "allocating the rings", r);
    }
    /* acq_rel (see bench_barrier_wait): stage 0's ring handles and ring
     * headers, written above, are visible to every stage after it. */
    bench_barrier_wait(&a->sh->start, W6_STAGES);
    if (k > 0) {
        void *p = ba_from_handle(c, a->sh->ring_handle[k - 1]);

        in = p ? ring_in(p) : NULL;
    }
    if (k < W6_RINGS) {
        void *p = ba_from_handle(c, a->sh->ring_handle[k]);

        out = p ? ring_in(p) : NULL;
    }
    if ((k > 0 && !in) || (k < W6_RINGS && !out))
        return w6_fail(k, "a ring's handle maps to nothing", -EFAULT);

    a->sh->t0[k] = bench_now_ns();
    r = w6_loop(c, k, in, out, a->prm->w6_objs);
    a->sh->t1[k] = bench_now_ns();
    if (r < 0)
        return w6_fail(k, r == -EIO ? "objects arrived overwritten" : "the loop", r);

    /* Every stage is done with the rings before stage 0 frees them. */
    bench_barrier_wait(&a->sh->done, W6_STAGES);
    if (k == 0)
        for (unsigned q = 0; q < W6_RINGS; q++)
            ba_free(c, raw[q]);
    return 0;
}

#if BA_W4_PROCESSES
static int w6_child(void *arg, unsigned idx)
{
    struct w6_arg *a = arg;
    ba_ctx_t c;
    int r;

    r = ba_attach(a->heap, idx + 1, &c);
    if (r < 0) {
        fprintf(stderr, "bench: %s: W6 attach: %s\n", bench_alloc_name, strerror(-r));
        return r;
    }
    r = w6_stage(a, c, idx);
    ba_detach(c);
    return r;
}

static int w6_run(struct w6_arg *a)
{
    return bench_run_children(W6_STAGES, w6_child, a, "W6");
}
#else
static int w6_thread(void *arg, unsigned idx)
{
    return w6_stage(arg, NULL, idx);
}

static int w6_run(struct w6_arg *a)
{
    return bench_run_threads(W6_STAGES, w6_thread, a, "W6");
}
#endif

int bench_w6(const struct bench_params *prm, struct bench_result *ret)
{
    struct w6_arg a = {.prm = prm};
    uint64_t t0 = UINT64_MAX, t1 = 0;
    int r;

    a.sh = bench_map(sizeof(*a.sh), true);
    if (!a.sh)
        return -ENOMEM;
    r = ba_shared_create(&a.heap);
    if (r < 0) {
        fprintf(stderr, "bench: %s: W6 heap: %s\n", bench_alloc_name, strerror(-r));
        goto out;
    }
    r = w6_run(&a);
    if (r == 0 && prm->verify)
        r = ba_verify_shared(a.heap);
    ba_shared_destroy(a.heap);
    if (r < 0)
        goto out;
    for (unsigned k = 0; k < W6_STAGES; k++) {
        t0 = a.sh->t0[k] < t0 ? a.sh->t0[k] : t0;
        t1 = a.sh->t1[k] > t1 ? a.sh->t1[k] : t1;
    }
    bench_fill_result(ret, prm->w6_objs * W6_RINGS, t0, t1);
out:
    bench_unmap(a.sh, sizeof(*a.sh));
    return r;
}
