/* Unit tests for shm/trim.c and decommit (segment.c): after freeing, a trim
 * gives the memory back to the system (the memfd's allocated blocks fall),
 * keeps what is live intact, reaches the cache of a thread that sleeps
 * through it, and leaves a heap that allocates again. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/heap.h"
#include "shm/internal.h"
#include "shm/local.h"
#include "shm/sizeclass.h"
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

static void get_stats(struct heap *h, struct heap_stats *st)
{
    int r = heap_stats(h, st);

    ck_assert_msg(r == 0, "heap_stats: %s", strerror(-r));
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

struct objs {
    void **p;
    uint32_t *size;
    size_t n;
    uint64_t bytes; /* requested */
};

/* Small objects of 64 B .. 1 KiB until `total` bytes; each gets a pattern over its first
 * 16 bytes (which also touches every page). */
static void alloc_small(struct heap *h, uint64_t total, struct objs *o, uint64_t seed)
{
    size_t cap = (size_t) (total / 64) + 1;

    o->p = malloc(cap * sizeof(*o->p));
    o->size = malloc(cap * sizeof(*o->size));
    ck_assert_ptr_nonnull(o->p);
    ck_assert_ptr_nonnull(o->size);
    o->n = 0;
    o->bytes = 0;
    while (o->bytes < total) {
        uint32_t size = 64 + (uint32_t) (test_rand(&seed) % (1024 - 64 + 1));
        void *p = heap_malloc(h, size);

        if (!p)
            ck_abort_msg("malloc(%" PRIu32 ") after %" PRIu64 " bytes: %s", size, o->bytes,
                         strerror(errno));
        th_fill_pattern(p, 16, o->n);
        o->p[o->n] = p;
        o->size[o->n] = size;
        o->n++;
        o->bytes += size;
    }
}

static void objs_free(struct objs *o)
{
    free(o->p);
    free(o->size);
}

static uint64_t big_total(void)
{
    return test_scale_small() ? 64 * MiB : 512 * MiB;
}

/* Everything freed, then trim: the segment's memfd keeps only the metadata and
 * retain_empty_blocks blocks. */
START_TEST(trim_releases_all)
{
    const uint32_t retain = _i == 0 ? 16 : 0;
    const uint64_t total = big_total();
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st0, st1, st2;
    struct trim_result res;
    struct objs o;
    uint64_t before, after, limit, meta;

    th_config(&cfg, 1024 * MiB);
    cfg.retain_empty_blocks = retain;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    alloc_small(t.h, total, &o, 1);
    get_stats(t.h, &st0);
    ck_assert_uint_eq(st0.nsegments, 1);
    before = seg_allocated(&t, 1);
    ck_assert_uint_ge(before, total);
    for (size_t i = 0; i < o.n; i++)
        heap_free(t.h, o.p[i]);
    get_stats(t.h, &st1);
    ck_assert_uint_eq(st1.bytes_in_use, 0);

    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    get_stats(t.h, &st2);
    after = seg_allocated(&t, 1);
    meta = round_up(st2.segs[0].metadata_bytes, SHM_BLOCK_SIZE);
    limit = (uint64_t) retain * SHM_BLOCK_SIZE + meta + total / 100;
    ck_assert_msg(after <= limit,
                  "after trim the segment holds %" PRIu64 " KiB (before %" PRIu64
                  " KiB); want at most %" PRIu64 " KiB (%" PRIu32 " retained blocks + %" PRIu64
                  " KiB metadata + 1%%); trim released %" PRIu64 " KiB, caches %" PRIu32 "/%" PRIu32
                  " flushed",
                  after / KiB, before / KiB, limit / KiB, retain, meta / KiB,
                  res.bytes_released / KiB, res.caches_flushed, res.caches_total);
    ck_assert_uint_gt(res.bytes_released, 0);
    ck_assert_uint_ge(res.bytes_released, before - after - total / 100);
    ck_assert_uint_eq(res.trim_gen, st0.trim_gen + 1);
    ck_assert_uint_ge(res.caches_total, 1);
    ck_assert_uint_eq(res.caches_flushed, res.caches_total);
    ck_assert_uint_lt(st2.bytes_committed, st1.bytes_committed);
    ck_assert_uint_le(st2.segs[0].committed_bytes, (uint64_t) retain * SHM_BLOCK_SIZE + meta);
    ck_assert_uint_eq(st2.trims, st0.trims + 1);
    ck_assert_uint_eq(st2.trim_bytes_released, st0.trim_bytes_released + res.bytes_released);
    ck_assert_uint_eq(st2.trim_gen, res.trim_gen);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        if (st2.classes[c].cached || st2.classes[c].in_recycler)
            ck_abort_msg("class %u: %" PRIu64 " cached, %" PRIu64 " in recyclers after trim", c,
                         st2.classes[c].cached, st2.classes[c].in_recycler);
    th_verify(t.h);
    objs_free(&o);

    /* The heap allocates again, over the punched blocks. */
    alloc_small(t.h, total / 4, &o, 2);
    for (size_t i = 0; i < o.n; i++)
        if (th_check_pattern(o.p[i], 16, i) != 16)
            ck_abort_msg("object %zu changed", i);
    th_verify(t.h);
    for (size_t i = 0; i < o.n; i++)
        heap_free(t.h, o.p[i]);
    objs_free(&o);
    /* A second trim with nothing new to release is harmless. */
    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
    ck_assert_uint_le(seg_allocated(&t, 1), limit);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* Every 16th object stays live: trim keeps their memory and their contents. */
START_TEST(trim_keeps_live)
{
    const uint64_t total = big_total();
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st1, st2;
    struct trim_result res;
    struct objs o;
    uint64_t live = 0, live_class = 0;

    th_config(&cfg, 1024 * MiB);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    alloc_small(t.h, total, &o, 3);
    for (size_t i = 0; i < o.n; i++) {
        if (i % 16 == 0) {
            th_fill_pattern(o.p[i], o.size[i], i);
            live += o.size[i];
            live_class += sizeclass_size(sizeclass_of(o.size[i]));
        } else {
            heap_free(t.h, o.p[i]);
        }
    }
    get_stats(t.h, &st1);
    ck_assert_uint_eq(st1.bytes_in_use, live_class);
    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    get_stats(t.h, &st2);
    ck_assert_uint_ge(st2.segs[0].committed_bytes, live);
    ck_assert_uint_ge(seg_allocated(&t, 1), live);
    ck_assert_uint_le(st2.bytes_committed, st1.bytes_committed);
    ck_assert_uint_eq(st2.bytes_in_use, live_class);
    for (size_t i = 0; i < o.n; i += 16)
        if (th_check_pattern(o.p[i], o.size[i], i) != o.size[i])
            ck_abort_msg("live object %zu (%p, %" PRIu32 " bytes) changed by the trim", i, o.p[i],
                         o.size[i]);
    th_verify(t.h);
    /* Freeing the rest and trimming again releases them too. */
    for (size_t i = 0; i < o.n; i += 16)
        heap_free(t.h, o.p[i]);
    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    ck_assert_uint_gt(res.bytes_released, 0);
    ck_assert_uint_le(seg_allocated(&t, 1),
                      16 * SHM_BLOCK_SIZE + round_up(st2.segs[0].metadata_bytes, SHM_BLOCK_SIZE) +
                              total / 100);
    objs_free(&o);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* Live objects grouped (every 16th run of 256 KiB of one size): the slabs of the freed runs
 * empty out, and the trim gives most of their memory back. */
START_TEST(trim_partial_release)
{
    static const uint32_t sizes[] = {64, 96, 192, 256, 400, 512, 640, 1000, 1024};
    const uint64_t total = big_total(), run = 256 * KiB;
    size_t nruns = (size_t) (total / run), per, n = 0, cap;
    struct shm_config cfg;
    struct test_heap t;
    struct trim_result res;
    void **p;
    uint64_t freed = 0, kept = 0, after;

    th_config(&cfg, 1024 * MiB);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    cap = (size_t) (total / 64) + 1;
    p = malloc(cap * sizeof(*p));
    ck_assert_ptr_nonnull(p);
    for (size_t r = 0; r < nruns; r++) {
        uint32_t size = sizes[r % (sizeof(sizes) / sizeof(sizes[0]))];

        per = (size_t) (run / size);
        for (size_t k = 0; k < per && n < cap; k++) {
            p[n] = heap_malloc(t.h, size);
            ck_assert_ptr_nonnull(p[n]);
            memset(p[n], (int) (r & 0xff), size);
            n++;
        }
    }
    n = 0;
    for (size_t r = 0; r < nruns; r++) {
        uint32_t size = sizes[r % (sizeof(sizes) / sizeof(sizes[0]))];

        per = (size_t) (run / size);
        for (size_t k = 0; k < per; k++, n++) {
            if (r % 16 == 0) {
                kept += size;
                continue;
            }
            heap_free(t.h, p[n]);
            p[n] = NULL;
            freed += size;
        }
    }
    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    after = seg_allocated(&t, 1);
    ck_assert_msg(res.bytes_released >= freed / 2,
                  "trim released %" PRIu64 " KiB of %" PRIu64 " KiB freed",
                  res.bytes_released / KiB, freed / KiB);
    ck_assert_uint_ge(after, kept);
    ck_assert_uint_le(after, kept * 2 + 16 * SHM_BLOCK_SIZE + 2 * MiB + total / 100);
    n = 0;
    for (size_t r = 0; r < nruns; r++) {
        uint32_t size = sizes[r % (sizeof(sizes) / sizeof(sizes[0]))];
        const unsigned char *b;

        per = (size_t) (run / size);
        for (size_t k = 0; k < per; k++, n++) {
            if (!p[n])
                continue;
            b = p[n];
            for (uint32_t j = 0; j < size; j++)
                if (b[j] != (unsigned char) (r & 0xff))
                    ck_abort_msg("kept object of run %zu changed at byte %" PRIu32, r, j);
            heap_free(t.h, p[n]);
        }
    }
    free(p);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* Objects over several segments: after freeing and a trim every segment's memfd is back to
 * its metadata, and retain_empty_blocks is a limit for the whole heap, not per segment. */
START_TEST(trim_many_segments)
{
    const uint64_t total = test_scaled(80 * MiB, 2);
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st;
    struct trim_result res;
    struct objs o;
    uint64_t sum = 0, meta = 0;

    th_config(&cfg, 16 * MiB);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    alloc_small(t.h, total, &o, 5);
    get_stats(t.h, &st);
    ck_assert_uint_ge(st.nsegments, 3);
    for (size_t i = 0; i < o.n; i++)
        heap_free(t.h, o.p[i]);
    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    get_stats(t.h, &st);
    for (uint32_t i = 0; i < st.nsegments; i++) {
        uint64_t a = seg_allocated(&t, st.segs[i].index);

        meta += round_up(st.segs[i].metadata_bytes, SHM_BLOCK_SIZE);
        sum += a;
        ck_assert_msg(a <= 16 * SHM_BLOCK_SIZE +
                                      round_up(st.segs[i].metadata_bytes, SHM_BLOCK_SIZE) +
                                      total / 100,
                      "segment %" PRIu32 " holds %" PRIu64 " KiB after the trim", st.segs[i].index,
                      a / KiB);
    }
    ck_assert_msg(sum <= 16 * SHM_BLOCK_SIZE + meta + total / 100,
                  "%" PRIu32 " segments hold %" PRIu64 " KiB after the trim; %" PRIu64
                  " KiB metadata + 16 retained blocks",
                  st.nsegments, sum / KiB, meta / KiB);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    th_verify(t.h);
    objs_free(&o);
    alloc_small(t.h, total, &o, 6);
    for (size_t i = 0; i < o.n; i++)
        if (th_check_pattern(o.p[i], 16, i) != 16)
            ck_abort_msg("object %zu changed", i);
    for (size_t i = 0; i < o.n; i++)
        heap_free(t.h, o.p[i]);
    objs_free(&o);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* A process that dies with objects in its cache: trim (and heap_reclaim_dead) take its
 * slot back, and nothing is lost. */
START_TEST(trim_dead_child)
{
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st0, st;
    struct trim_result res;
    pid_t pid;

    th_config(&cfg, 64 * MiB);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    get_stats(t.h, &st0);
    for (int round = 0; round < 2; round++) {
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            struct heap *hc = th_attach_child(&t, 2);
            void *p[300];

            for (int i = 0; i < 300; i++)
                if (!(p[i] = heap_malloc(hc, 16 + (size_t) i * 8)))
                    _exit(1);
            for (int i = 0; i < 300; i++)
                heap_free(hc, p[i]);
            _exit(0); /* no detach: its cache stays in its slot */
        }
        ck_assert_int_eq(th_wait_child(pid), 0);
        get_stats(t.h, &st);
        ck_assert_uint_eq(st.slots_in_use, st0.slots_in_use + 1);
        th_verify(t.h); /* a dead owner's cache is part of the heap too */
        if (round == 0) {
            ck_assert_int_eq(heap_reclaim_dead(t.h), 1);
            ck_assert_int_eq(heap_reclaim_dead(t.h), 0);
        } else {
            ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
            ck_assert_uint_eq(res.caches_flushed, res.caches_total);
        }
        get_stats(t.h, &st);
        ck_assert_uint_eq(st.slots_in_use, st0.slots_in_use);
        ck_assert_uint_eq(st.bytes_in_use, 0);
        for (unsigned c = 0; c < SHM_NCLASSES; c++)
            ck_assert_uint_eq(st.classes[c].cached, 0);
        ck_assert_uint_eq(st.lost_objects, 0);
        th_verify(t.h);
    }
    ck_assert_int_eq(heap_reclaim_client(t.h, 2), 0);
    ck_assert_int_eq(heap_reclaim_client(NULL, 2), -EINVAL);
    ck_assert_int_eq(heap_reclaim_dead(NULL), -EINVAL);
    ck_assert_int_eq(heap_trim(NULL, 0, &res), -EINVAL);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* A thread whose cache holds objects sleeps through the trim: the trim takes its cache over
 * (DESIGN.md: idle threads keep their caches otherwise). */
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
    enum { N = 500 };
    void *p[N];

    for (int i = 0; i < N; i++) {
        p[i] = heap_malloc(s->h, 32 + (size_t) (i % 8) * 100);
        if (!p[i])
            s->failed = 1;
    }
    for (int i = 0; i < N; i++)
        heap_free(s->h, p[i]);
    pthread_mutex_lock(&s->lock);
    s->stage = 1;
    pthread_cond_broadcast(&s->cond);
    while (s->stage != 2)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    /* After the trim this thread's cache still works. */
    for (int i = 0; i < N; i++) {
        p[i] = heap_malloc(s->h, 64);
        if (!p[i])
            s->failed = 1;
    }
    for (int i = 0; i < N; i++)
        heap_free(s->h, p[i]);
    return NULL;
}

START_TEST(trim_idle_thread)
{
    struct shm_config cfg;
    struct test_heap t;
    struct sleeper s = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    struct heap_stats st;
    struct trim_result res;
    pthread_t thr;
    uint64_t cached = 0;

    th_config(&cfg, 64 * MiB);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    s.h = t.h;
    ck_assert_int_eq(pthread_create(&thr, NULL, sleeper_main, &s), 0);
    pthread_mutex_lock(&s.lock);
    while (s.stage != 1)
        pthread_cond_wait(&s.cond, &s.lock);
    pthread_mutex_unlock(&s.lock);
    get_stats(t.h, &st);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        cached += st.classes[c].cached;
    ck_assert_uint_gt(cached, 0);

    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    get_stats(t.h, &st);
    cached = 0;
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        cached += st.classes[c].cached + st.classes[c].in_recycler;
    ck_assert_msg(cached == 0, "%" PRIu64 " objects still cached while their thread sleeps",
                  cached);
    ck_assert_uint_ge(res.caches_total, 1);
    ck_assert_uint_eq(res.caches_flushed, res.caches_total);
    ck_assert_uint_le(st.segs[0].committed_bytes,
                      16 * SHM_BLOCK_SIZE + round_up(st.segs[0].metadata_bytes, SHM_BLOCK_SIZE));
    th_verify(t.h);

    pthread_mutex_lock(&s.lock);
    s.stage = 2;
    pthread_cond_broadcast(&s.cond);
    pthread_mutex_unlock(&s.lock);
    ck_assert_int_eq(pthread_join(thr, NULL), 0);
    ck_assert_int_eq(s.failed, 0);
    get_stats(t.h, &st);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* Keeps one 64-byte object in 256 (one per 16 KiB): every slab keeps live objects, so
 * only the pages inside slabs that hold nothing live can go back. */
static void keep_sparse(struct heap *h, void ***ret_keep, size_t *ret_n)
{
    size_t n = (size_t) (test_scale_small() ? 16 * MiB : 64 * MiB) / 64, nkeep = 0;
    void **all = malloc(n * sizeof(*all)), **keep = malloc((n / 256 + 1) * sizeof(*keep));

    ck_assert_ptr_nonnull(all);
    ck_assert_ptr_nonnull(keep);
    for (size_t i = 0; i < n; i++) {
        all[i] = heap_malloc(h, 64);
        ck_assert_ptr_nonnull(all[i]);
        th_fill_pattern(all[i], 64, i);
    }
    for (size_t i = 0; i < n; i++) {
        if (i % 256 == 0)
            keep[nkeep++] = all[i];
        else
            heap_free(h, all[i]);
    }
    free(all);
    *ret_keep = keep;
    *ret_n = nkeep;
}

START_TEST(trim_punches_pages_inside_slabs)
{
    struct shm_config cfg;
    struct test_heap t;
    struct trim_result res;
    uint64_t before, after;
    void **keep;
    size_t n;

    th_config(&cfg, 256 * MiB);
    cfg.retain_empty_blocks = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    keep_sparse(t.h, &keep, &n);
    heap_thread_flush(t.h);
    before = seg_allocated(&t, 1);
    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    after = seg_allocated(&t, 1);
    /* 64 B objects, one kept in 256: 3 of every 4 pages hold nothing live. */
    ck_assert_msg(after < before / 2, "memfd %" PRIu64 " -> %" PRIu64 " bytes after trim", before,
                  after);
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(th_check_pattern(keep[i], 64, i * 256) == 64, "kept object %zu damaged", i);
        heap_free(t.h, keep[i]);
    }
    free(keep);
    /* Punched pages come back (zeroed) when their objects are handed out again. */
    keep_sparse(t.h, &keep, &n);
    for (size_t i = 0; i < n; i++)
        heap_free(t.h, keep[i]);
    free(keep);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* A trimmer killed with objects reserved for a punch (outside the lock: a
 * reaper puts them back), or inside the lock halfway through reserving or
 * restoring them (the next holder's recovery finishes the job). */
static const int puncher_faults[] = {FAULT_PUNCH_MID, FAULT_PUNCH_RESERVE_MID,
                                     FAULT_PUNCH_RESTORE_MID};

START_TEST(trim_puncher_killed)
{
    struct shm_config cfg;
    struct test_heap t;
    struct verify_report rep;
    void **keep;
    size_t n;
    pid_t pid;
    int status;

    th_config(&cfg, 256 * MiB);
    cfg.retain_empty_blocks = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    keep_sparse(t.h, &keep, &n);
    heap_thread_flush(t.h);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct heap *h = th_attach_child(&t, 77);

        shm_fault_at = puncher_faults[_i];
        (void) heap_trim(h, 0, NULL);
        _exit(3); /* the fault point was not reached */
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
    (void) heap_reclaim_dead(t.h);
    ck_assert_int_eq(heap_verify(t.h, &rep), 0);
    ck_assert_msg(rep.consistent, "inconsistent after a dead puncher: %s",
                  rep.nproblems ? rep.problems[0] : "");
    ck_assert_msg(rep.counts_checked, "object counts skipped");
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(th_check_pattern(keep[i], 64, i * 256) == 64, "kept object %zu damaged", i);
        heap_free(t.h, keep[i]);
    }
    free(keep);
    ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

/* The slot table full (every SHM_MAX_SLOTS slot claimed): a trim, a release
 * and a verify cannot claim a slot to carry the recyclers' bundles, and
 * pop none (a bundle held in process memory only is lost to a kill: issue
 * 9). The trim and the release do the rest and say -EAGAIN, verify says
 * -EMFILE; once a slot is free again, the trim empties the recyclers. */
START_TEST(trim_no_free_slot)
{
    static uint32_t claimed[SHM_MAX_SLOTS];
    const unsigned cls = sizeclass_of(64);
    struct release_req req = {.max_bytes = UINT64_MAX, .drain_recyclers = true};
    struct release_result rel;
    struct verify_report rep;
    struct shm_config cfg;
    struct trim_result res;
    struct test_heap t;
    uint64_t objects;
    uint32_t n = 0;
    void *p[200];

    th_config(&cfg, 64 * MiB);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    for (unsigned i = 0; i < 200; i++)
        ck_assert_ptr_nonnull(p[i] = heap_malloc(t.h, 64));
    for (unsigned i = 0; i < 200; i++)
        heap_free(t.h, p[i]);
    heap_thread_flush(t.h); /* bundles into the recycler */
    objects = load_relaxed(&t.h->ctl->rec[cls].objects);
    ck_assert_uint_gt(objects, 0);
    while (n < SHM_MAX_SLOTS && slot_claim(t.h, &claimed[n]) == 0)
        n++;
    ck_assert_int_eq(slot_claim(t.h, &(uint32_t){0}), -EMFILE);

    ck_assert_int_eq(heap_trim(t.h, 0, &res), -EAGAIN);
    ck_assert_uint_eq(load_relaxed(&t.h->ctl->rec[cls].objects), objects);
    ck_assert_int_eq(heap_release(t.h, &req, &rel), -EAGAIN);
    ck_assert_uint_eq(load_relaxed(&t.h->ctl->rec[cls].objects), objects);
    ck_assert_int_eq(heap_verify(t.h, &rep), -EMFILE);
    ck_assert_uint_eq(load_relaxed(&t.h->ctl->rec[cls].objects), objects);

    for (uint32_t i = 0; i < n; i++)
        slot_release(t.h, claimed[i]);
    th_verify(t.h);
    ck_assert_int_eq(heap_trim(t.h, 0, &res), 0);
    ck_assert_uint_eq(load_relaxed(&t.h->ctl->rec[cls].objects), 0);
    ck_assert_uint_eq(load_relaxed(&t.h->ctl->rec[cls].nbundles), 0);
    th_verify(t.h);
    th_destroy(&t);
}
END_TEST

Suite *trim_suite(void)
{
    Suite *s = suite_create("trim");
    TCase *tc = tcase_create("core");

    tcase_add_loop_test(tc, trim_releases_all, 0, 2);
    tcase_add_test(tc, trim_keeps_live);
    tcase_add_test(tc, trim_partial_release);
    tcase_add_test(tc, trim_many_segments);
    tcase_add_test(tc, trim_idle_thread);
    tcase_add_test(tc, trim_dead_child);
    tcase_add_test(tc, trim_punches_pages_inside_slabs);
    tcase_add_test(tc, trim_no_free_slot);
    tcase_add_loop_test(tc, trim_puncher_killed, 0,
                        (int) (sizeof(puncher_faults) / sizeof(puncher_faults[0])));
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}
