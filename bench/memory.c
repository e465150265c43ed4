/* W5b: the memory an allocator still holds after a peak, against the floor.
 * Built once per allocator, as bench/workloads.c (see bench/alloc.h).
 *
 * One thread allocates w5b_bytes (1 GiB) in objects of 64..256 bytes
 * (uniform, xorshift64 from BENCH_SEED: the same sequence for every
 * allocator), frees the oldest 90 % in allocation order, calls the
 * allocator's release (ba_release: shmheap's trim, malloc_trim(0),
 * mi_collect(true), jemalloc's purge, tcmalloc's ReleaseFreeMemory) and
 * reads what is still held (ba_held):
 *   shmheap, shmheap-api  the heap's shared memory: the kernel's count of
 *                         the memfds' pages (st_blocks) for the core, the
 *                         heap's committed bytes (shmheap_stats) for the
 *                         API; the control segment included
 *   the others            RssAnon of this process, less what it was before
 *                         the first allocation and less the bench's own
 *                         list of the live objects
 * The floor is the memory no allocator can do without: the 4 KiB pages
 * that hold at least one byte of a live object, counted from the live
 * objects' addresses (an object of at most 256 bytes touches one page or
 * two). The figures: the bytes held, and held / floor.
 *
 * Each object's first word holds its index and its requested size; both
 * are checked before it is freed, so overlapping objects fail the run. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/alloc.h"
#include "bench/workloads.h"

#define W5B_MIN  64u  /* smallest object */
#define W5B_SPAN 193u /* sizes W5B_MIN .. W5B_MIN + W5B_SPAN - 1 = 256 */
#define W5B_PAGE 4096u

/* The first word of object i of n bytes. */
#define W5B_TAG(i, n)  (((uint64_t) (i) << 16) | (uint64_t) (n))
#define W5B_TAG_LEN(t) ((uint32_t) ((t) &0xffff))

#if BA_HAS_RELEASE
static inline uint32_t w5b_size(uint64_t *rng)
{
    uint32_t x = (uint32_t) bench_xorshift64(rng);

    /* Multiply and shift maps x to [0, W5B_SPAN), as workloads.c's range32. */
    return W5B_MIN + (uint32_t) (((uint64_t) x * W5B_SPAN) >> 32);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}

/* The 4 KiB pages (of this process's addresses; every mapping is page
 * aligned, so they are the allocator's pages) that hold a byte of one of
 * the n live objects, in bytes. */
static int floor_bytes(void *const *obj, uint64_t n, uint64_t *ret_bytes)
{
    size_t len = sizeof(uint64_t) * 2 * (n ? n : 1);
    uint64_t *pg = bench_map(len, false);
    uint64_t i, k = 0, distinct = 0;

    if (!pg)
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        uintptr_t a = (uintptr_t) obj[i];
        uint32_t sz = W5B_TAG_LEN(*(const uint64_t *) obj[i]);

        pg[k++] = a / W5B_PAGE;
        if ((a + sz - 1) / W5B_PAGE != a / W5B_PAGE)
            pg[k++] = (a + sz - 1) / W5B_PAGE;
    }
    qsort(pg, k, sizeof(*pg), cmp_u64);
    for (i = 0; i < k; i++)
        distinct += i == 0 || pg[i] != pg[i - 1];
    bench_unmap(pg, len);
    *ret_bytes = distinct * W5B_PAGE;
    return 0;
}

/* Frees the n objects listed in obj, whose indices start at first_index,
 * checking each one's tag first; returns how many were wrong. */
static uint64_t free_range(ba_ctx_t c, void *const *obj, uint64_t first_index, uint64_t n)
{
    uint64_t i, bad = 0;

    for (i = 0; i < n; i++) {
        uint64_t t = *(const uint64_t *) obj[i];

        bad += (t >> 16) != first_index + i || W5B_TAG_LEN(t) < W5B_MIN ||
               W5B_TAG_LEN(t) >= W5B_MIN + W5B_SPAN;
        ba_free(c, obj[i]);
    }
    return bad;
}

int bench_w5b(const struct bench_params *prm, struct bench_result *ret)
{
    uint64_t cap = prm->w5b_bytes / W5B_MIN + 1, n = 0, nold, nlive, total = 0;
    uint64_t rng = prm->seed, base = 0, before = 0, held = 0, flr = 0, live_bytes = 0;
    uint64_t bad = 0, t0, t1, own, i;
    size_t obj_len = sizeof(void *) * cap, live_len = 0;
    void **obj, **live = NULL;
    ba_shared_t *s;
    ba_ctx_t c;
    void *p;
    int r;

    /* The list of objects is a mapping of its own, not the allocator's:
     * virtual until written, and unmapped before anything is measured. */
    obj = bench_map(obj_len, false);
    if (!obj)
        return -ENOMEM;
    r = ba_shared_create(&s);
    if (r < 0)
        goto out_unmap;
    r = ba_attach(s, 1, &c);
    if (r < 0)
        goto out_destroy;

    /* The allocator's own start-up (its first arena, the thread's cache)
     * goes into the baseline. */
    p = ba_malloc(c, W5B_MIN);
    if (!p) {
        r = -ENOMEM;
        goto out_detach;
    }
    ba_free(c, p);
    if (BA_HELD_IS_RSS) {
        r = ba_held(s, c, &base);
        if (r < 0)
            goto out_detach;
    }

    t0 = bench_now_ns();
    while (total < prm->w5b_bytes) {
        uint32_t sz = w5b_size(&rng);

        p = ba_malloc(c, sz);
        if (!p) {
            r = -ENOMEM;
            break;
        }
        *(uint64_t *) p = W5B_TAG(n, sz);
        obj[n++] = p;
        total += sz;
    }
    nold = r < 0 ? n : n - n / 10;
    bad += free_range(c, obj, 0, nold);
    nlive = n - nold;
    if (r < 0)
        goto out_detach;

    /* Only the live tenth stays listed, in a mapping of its own. */
    live_len = sizeof(void *) * (nlive ? nlive : 1);
    live = bench_map(live_len, false);
    if (!live) {
        r = -ENOMEM;
        bad += free_range(c, obj + nold, nold, nlive);
        goto out_detach;
    }
    memcpy(live, obj + nold, sizeof(void *) * nlive);
    bench_unmap(obj, obj_len);
    obj = NULL;
    for (i = 0; i < nlive; i++)
        live_bytes += W5B_TAG_LEN(*(const uint64_t *) live[i]);

    r = ba_held(s, c, &before);
    if (r == 0)
        r = ba_release(c);
    if (r == 0)
        r = ba_held(s, c, &held);
    t1 = bench_now_ns();
    if (r == 0)
        r = floor_bytes(live, nlive, &flr);
    bad += free_range(c, live, nold, nlive);
    if (r < 0) {
        fprintf(stderr, "bench: %s: W5b release or measure: %s\n", bench_alloc_name, strerror(-r));
        goto out_detach;
    }

    if (BA_HELD_IS_RSS) {
        /* RssAnon counts the list of live objects too (its pages are all
         * written); neither it nor the baseline is the allocator's. */
        own = base + (live_len + W5B_PAGE - 1) / W5B_PAGE * W5B_PAGE;
        held = held > own ? held - own : 0;
        before = before > own ? before - own : 0;
    }
    bench_fill_result(ret, n, t0, t1);
    ret->held_bytes = held;
    ret->before_bytes = before;
    ret->floor_bytes = flr;
    ret->live_bytes = live_bytes;
    if (prm->verify)
        r = ba_verify(c);

out_detach:
    if (bad) {
        fprintf(stderr, "bench: %s: W5b: %llu objects were overwritten while live\n",
                bench_alloc_name, (unsigned long long) bad);
        r = -EIO;
    }
    ba_detach(c);
out_destroy:
    ba_shared_destroy(s);
out_unmap:
    if (obj)
        bench_unmap(obj, obj_len);
    if (live)
        bench_unmap(live, live_len);
    return r;
}
#else
int bench_w5b(const struct bench_params *prm, struct bench_result *ret)
{
    (void) prm;
    (void) ret;
    fprintf(stderr, "bench: %s: W5b: this allocator has no call that gives memory back\n",
            bench_alloc_name);
    return -ENOTSUP;
}
#endif
