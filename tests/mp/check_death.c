/* Processes that die at the worst moment.
 *
 * fault:   a child sets shm_fault_at and does the operation that reaches that
 *          point, where the core raises SIGKILL (TAKE, RETURN and CARVE with
 *          the segment lock held; DECOMMIT between the punch and the relock,
 *          leaving BUSY blocks). Then the parent, or on every other round
 *          another child, allocates and frees through the same lock
 *          (EOWNERDEAD, journal replay, repair); the heap verifies, and once
 *          the dead are reclaimed every block is free again.
 * cache:   a child dies with objects in its thread cache; the figures show
 *          them in its slot until heap_reclaim_dead / heap_reclaim_client
 *          gives them back, after which they are reusable. A trimmer that
 *          dies holding another thread's cache (after its steal, or in the
 *          middle of draining it) must not leave that thread waiting forever.
 * storm:   a child allocating in two threads is SIGKILLed after a random
 *          few milliseconds, 20 times (100 with SHMHEAP_SOAK=1); after each
 *          kill the parent reclaims the dead and verifies with the exact
 *          object count, and no object may be unaccounted for. Then trimmers, and processes that
 *          contend for the segment lock, are killed at random while another
 *          process allocates: it must never be left waiting (a deadlock is
 *          detected with a bound far above the normal run time).
 *
 * The fault tests run with recycler_cap_bundles = 0 (every flush and every
 * refill goes through the blocks) and retain_empty_blocks = 0. */
#include <check.h>
#include <execinfo.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ucontext.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/internal.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/mp/suites.h"

/* ---- fault points ---- */

static const size_t fault_sizes[] = {4096, 64, 1024, 256, 48, 16384};
#define NSIZES (sizeof(fault_sizes) / sizeof(fault_sizes[0]))

struct fault_ctx {
    struct test_heap *t;
    int point;
    size_t size;
};

static void fault_config(struct shm_config *cfg)
{
    heap_config_default(cfg);
    cfg->segment_size = UINT64_C(256) << 20;
    cfg->recycler_cap_bundles = 0;
    cfg->retain_empty_blocks = 0;
}

static int fault_child(void *arg, unsigned round)
{
    struct fault_ctx *f = arg;
    struct heap *h = th_attach_child(f->t, 100 + round);
    void *p[10];

    switch (f->point) {
    case FAULT_TAKE_MID:
    case FAULT_CARVE_MID:
        /* An empty cache and recycler: the refill takes from a slab (and
         * carves one, since none of this class has free objects). */
        shm_fault_at = f->point;
        (void) heap_malloc(h, f->size);
        break;
    case FAULT_RETURN_MID:
        for (unsigned i = 0; i < 10; i++) {
            p[i] = heap_malloc(h, f->size);
            MP_REQUIRE(p[i] != NULL, "heap_malloc(%zu)", f->size);
            mp_fill(p[i], f->size, mp_tag(1, 0, i));
        }
        for (unsigned i = 0; i < 10; i++)
            heap_free(h, p[i]);
        /* The recycler takes nothing (cap 0): the flush returns the bin's
         * objects to their slab under the lock. */
        shm_fault_at = f->point;
        heap_thread_flush(h);
        break;
    case FAULT_DECOMMIT_MID:
        shm_fault_at = f->point;
        (void) heap_trim(h, 0, NULL);
        break;
    case FAULT_COMMIT_COUNT_MID:
        /* Every free block decommitted: the carve of a slab (no slab of
         * this class has free objects) commits a unit again. */
        (void) heap_trim(h, 0, NULL);
        shm_fault_at = f->point;
        (void) heap_malloc(h, f->size);
        break;
    default:
        break;
    }
    fprintf(stderr, "fault child: point %d was not reached\n", f->point);
    return 3;
}

/* Allocates and frees through the segment lock (the cache is empty and the
 * recycler takes nothing), with patterns. Returns false on a problem. */
static bool use_heap(struct heap *h, size_t size, unsigned who)
{
    enum { N = 200 };
    void **p = calloc(N, sizeof(*p));
    size_t *sz = calloc(N, sizeof(*sz));
    uint64_t rng = 0xd1e + who + size;
    bool ok = p && sz;

    for (unsigned i = 0; ok && i < N; i++) {
        sz[i] = i % 2 ? size : mp_rand_size(&rng, 50);
        p[i] = heap_malloc(h, sz[i]);
        if (!p[i]) {
            fprintf(stderr, "use_heap: heap_malloc(%zu) failed\n", sz[i]);
            ok = false;
            break;
        }
        mp_fill(p[i], sz[i], mp_tag(who, 0, i));
    }
    for (unsigned i = 0; p && i < N && p[i]; i++) {
        if (mp_check(p[i], sz[i], mp_tag(who, 0, i)) != SIZE_MAX) {
            fprintf(stderr, "use_heap: object %u (%zu bytes) overwritten\n", i, sz[i]);
            ok = false;
        }
        heap_free(h, p[i]);
    }
    heap_thread_flush(h);
    free(p);
    free(sz);
    return ok;
}

struct recover_ctx {
    struct test_heap *t;
    size_t size;
};

static int recover_child(void *arg, unsigned round)
{
    struct recover_ctx *r = arg;
    struct heap *h = th_attach_child(r->t, 500 + round);
    bool ok = use_heap(h, r->size, 2);

    ok = th_verify_quiet(h) && ok;
    heap_detach(h);
    return ok ? 0 : 1;
}

#define KEEP_MAX 4u

static void run_fault(int point, const char *name)
{
    struct shm_config cfg;
    struct test_heap t;
    struct fault_ctx f = {.t = &t, .point = point};
    unsigned rounds = (unsigned) test_scaled(12, 3), nkeep;
    struct heap_stats st;
    void *keep[KEEP_MAX];
    size_t keep_size;

    fault_config(&cfg);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    for (unsigned round = 0; round < rounds; round++) {
        char what[96];
        bool counts = false;
        pid_t pid;
        int reclaimed;

        f.size = fault_sizes[round % NSIZES];
        if (point == FAULT_DECOMMIT_MID)
            /* Committed empty blocks for the child's trim to punch. */
            ck_assert(use_heap(t.h, 4096, 1));
        ck_assert_uint_eq(mp_blocks_not_free(t.h), 0);
        /* The parent keeps a few objects of the child's class across the
         * death, so the child works on a slab that is partly in use (for
         * CARVE another class: the child must find no slab to take from). */
        nkeep = 1 + round % KEEP_MAX;
        keep_size = point == FAULT_CARVE_MID || point == FAULT_COMMIT_COUNT_MID ? 32 : f.size;
        for (unsigned i = 0; i < nkeep; i++) {
            keep[i] = heap_malloc(t.h, keep_size);
            ck_assert_ptr_nonnull(keep[i]);
            mp_fill(keep[i], keep_size, mp_tag(7, round, i));
        }
        heap_thread_flush(t.h); /* the rest of the bin goes back to the slab */
        (void) snprintf(what, sizeof(what), "%s child, round %u, size %zu", name, round, f.size);
        pid = mp_fork(fault_child, &f, round);
        mp_wait_signaled(pid, SIGKILL, what);
        if (point == FAULT_DECOMMIT_MID)
            /* The punched blocks are BUSY for a dead process. */
            ck_assert_uint_gt(mp_blocks_not_free(t.h), 0);

        /* Someone else takes the lock the child died holding. */
        if (round % 2) {
            struct recover_ctx r = {.t = &t, .size = f.size};

            mp_wait_ok(mp_fork(recover_child, &r, round), "recovering child");
        } else {
            ck_assert_msg(use_heap(t.h, f.size, 1), "%s: the parent could not use the heap", what);
        }
        /* The dead child's slot is still there; the journal put back what
         * it held, so the object count is exact (and stays so after the
         * reclaim). */
        ck_assert_msg(mp_verify(t.h, &counts), "%s: heap_verify (see stderr)", what);
        ck_assert_msg(counts, "%s: heap_verify skipped the object count", what);
        /* The kept objects are still ours, still in a slab of their class. */
        for (unsigned i = 0; i < nkeep; i++) {
            ck_assert_msg(heap_usable_size(t.h, keep[i]) == sizeclass_size(sizeclass_of(keep_size)),
                          "%s: kept object %u (%p) has usable size %zu: its slab is gone", what, i,
                          keep[i], heap_usable_size(t.h, keep[i]));
            ck_assert_msg(mp_check(keep[i], keep_size, mp_tag(7, round, i)) == SIZE_MAX,
                          "%s: kept object %u overwritten", what, i);
            heap_free(t.h, keep[i]);
        }
        heap_thread_flush(t.h);
        reclaimed = heap_reclaim_dead(t.h);
        ck_assert_int_ge(reclaimed, 0);
        if (point != FAULT_DECOMMIT_MID) /* a trim claims no cache slot */
            ck_assert_int_ge(reclaimed, 1);
        th_verify(t.h);
        ck_assert_int_eq(heap_stats(t.h, &st), 0);
        ck_assert_uint_eq(st.allocs, st.frees);
        ck_assert_uint_eq(st.bytes_in_use, 0);
        ck_assert_uint_eq(mp_stats_cached(&st), 0);
        ck_assert_uint_eq(st.bad_frees, 0);
        ck_assert_uint_eq(st.double_frees, 0);
        ck_assert_uint_eq(st.lost_objects, 0);
        /* Nothing in use, nothing cached, nothing recycled (cap 0): every
         * block must be free again, BUSY ones of a dead decommitter too. */
        ck_assert_msg(mp_blocks_not_free(t.h) == 0, "%s: %" PRIu64 " blocks not free", what,
                      mp_blocks_not_free(t.h));
    }
    /* Still usable after all that, and nothing left behind. */
    ck_assert(use_heap(t.h, 128, 1));
    th_verify(t.h);
    ck_assert_uint_eq(mp_blocks_not_free(t.h), 0);
    th_destroy(&t);
}

START_TEST(death_fault_take)
{
    run_fault(FAULT_TAKE_MID, "TAKE_MID");
}
END_TEST

START_TEST(death_fault_return)
{
    run_fault(FAULT_RETURN_MID, "RETURN_MID");
}
END_TEST

START_TEST(death_fault_carve)
{
    run_fault(FAULT_CARVE_MID, "CARVE_MID");
}
END_TEST

/* Killed between a unit's commit bit and committed_units: recovery takes
 * the count from the map (verify compares them). */
START_TEST(death_fault_commit_count)
{
    run_fault(FAULT_COMMIT_COUNT_MID, "COMMIT_COUNT_MID");
}
END_TEST

START_TEST(death_fault_decommit)
{
    run_fault(FAULT_DECOMMIT_MID, "DECOMMIT_MID");
}
END_TEST

/* ---- a child killed with a full thread cache ---- */

static const size_t cache_sizes[] = {32, 256, 2048, 8192};
#define NCACHE  (sizeof(cache_sizes) / sizeof(cache_sizes[0]))
#define CACHE_K 20u /* objects per class and thread: fits a bin without overflow */

struct cache_ctx {
    struct test_heap *t;
    uint64_t client_id;
    unsigned nthreads;
    uint32_t ready;                /* atomic: threads whose cache is full */
    uint64_t child_cached[NCACHE]; /* classes[].cached as the child saw it last */
};

struct cache_thread {
    struct cache_ctx *c;
    struct heap *h;
    unsigned thr;
};

static void fill_cache(struct heap *h, unsigned thr)
{
    void *p[CACHE_K];

    for (unsigned k = 0; k < NCACHE; k++) {
        for (unsigned i = 0; i < CACHE_K; i++) {
            p[i] = heap_malloc(h, cache_sizes[k]);
            MP_REQUIRE(p[i] != NULL, "heap_malloc(%zu)", cache_sizes[k]);
            mp_fill(p[i], cache_sizes[k], mp_tag(thr, k, i));
        }
        for (unsigned i = 0; i < CACHE_K; i++) {
            MP_REQUIRE(mp_check(p[i], cache_sizes[k], mp_tag(thr, k, i)) == SIZE_MAX,
                       "pattern broken");
            heap_free(h, p[i]);
        }
    }
}

static void *cache_thread_main(void *arg)
{
    struct cache_thread *ct = arg;

    fill_cache(ct->h, ct->thr);
    __atomic_fetch_add(&ct->c->ready, 1, __ATOMIC_RELEASE);
    for (;;)
        pause(); /* holds its cache until the process dies */
    return NULL;
}

static int cache_child(void *arg, unsigned idx)
{
    struct cache_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, c->client_id);
    struct cache_thread ct[4];
    pthread_t tid;
    struct heap_stats st;

    (void) idx;
    fill_cache(h, 0);
    __atomic_fetch_add(&c->ready, 1, __ATOMIC_RELEASE);
    for (unsigned i = 1; i < c->nthreads; i++) {
        ct[i] = (struct cache_thread){.c = c, .h = h, .thr = i};
        MP_REQUIRE(pthread_create(&tid, NULL, cache_thread_main, &ct[i]) == 0, "pthread_create");
    }
    while (__atomic_load_n(&c->ready, __ATOMIC_ACQUIRE) < c->nthreads)
        mp_sleep_ms(1);
    MP_REQUIRE(heap_stats(h, &st) == 0, "heap_stats");
    for (unsigned k = 0; k < NCACHE; k++)
        c->child_cached[k] = st.classes[sizeclass_of(cache_sizes[k])].cached;
    (void) raise(SIGKILL);
    return 4;
}

static void run_cache_death(bool by_client)
{
    struct test_heap t;
    struct cache_ctx *c = mp_shared_alloc(sizeof(*c));
    struct heap_stats before, dead, after;
    void *p[CACHE_K * 8];
    int r;

    th_create(&t, NULL, SHM_PAGES_OFF);
    c->t = &t;
    c->client_id = 4242;
    c->nthreads = by_client ? 2 : 1;
    /* The parent (a survivor) holds some objects of these classes too. */
    for (unsigned k = 0; k < NCACHE; k++) {
        for (unsigned i = 0; i < 5; i++)
            p[i] = heap_malloc(t.h, cache_sizes[k]);
        for (unsigned i = 0; i < 5; i++)
            heap_free(t.h, p[i]);
    }
    ck_assert_int_eq(heap_stats(t.h, &before), 0);

    mp_wait_signaled(mp_fork(cache_child, c, 0), SIGKILL, "child with a full cache");

    /* The dead child's slot still holds its objects. */
    ck_assert_int_eq(heap_stats(t.h, &dead), 0);
    ck_assert_uint_eq(dead.slots_in_use, before.slots_in_use + c->nthreads);
    for (unsigned k = 0; k < NCACHE; k++) {
        unsigned cls = sizeclass_of(cache_sizes[k]);

        ck_assert_uint_eq(dead.classes[cls].cached, c->child_cached[k]);
        ck_assert_uint_ge(dead.classes[cls].cached,
                          before.classes[cls].cached + CACHE_K * c->nthreads);
    }
    th_verify(t.h); /* verify copes with a dead owner's slot */

    if (by_client) {
        r = heap_reclaim_client(t.h, c->client_id);
        ck_assert_int_eq(r, (int) c->nthreads);
        ck_assert_int_eq(heap_reclaim_dead(t.h), 0);
    } else {
        r = heap_reclaim_dead(t.h);
        ck_assert_int_ge(r, 1);
        ck_assert_int_eq(heap_reclaim_client(t.h, c->client_id), 0);
    }
    ck_assert_int_eq(heap_stats(t.h, &after), 0);
    ck_assert_uint_eq(after.slots_in_use, before.slots_in_use);
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
        ck_assert_msg(after.classes[cls].cached == before.classes[cls].cached,
                      "class %u: %" PRIu64 " cached after the reclaim, %" PRIu64 " before", cls,
                      after.classes[cls].cached, before.classes[cls].cached);
    ck_assert_uint_eq(after.allocs - after.frees, 0);
    ck_assert_uint_eq(after.bytes_in_use, 0);
    ck_assert_uint_eq(after.lost_objects, 0);
    th_verify(t.h);

    /* The objects are reusable: more than any cache holds, patterned. */
    for (unsigned k = 0; k < NCACHE; k++) {
        for (unsigned i = 0; i < CACHE_K * 8; i++) {
            p[i] = heap_malloc(t.h, cache_sizes[k]);
            ck_assert_ptr_nonnull(p[i]);
            mp_fill(p[i], cache_sizes[k], mp_tag(9, k, i));
        }
        for (unsigned i = 0; i < CACHE_K * 8; i++) {
            ck_assert_uint_eq(mp_check(p[i], cache_sizes[k], mp_tag(9, k, i)), SIZE_MAX);
            heap_free(t.h, p[i]);
        }
    }
    th_verify(t.h);
    /* Everything, the dead child's objects included, back in the blocks. */
    ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
    ck_assert_uint_eq(mp_blocks_not_free(t.h), 0);
    th_destroy(&t);
    mp_shared_free(c, sizeof(*c));
}

START_TEST(death_cache_reclaim_dead)
{
    run_cache_death(false);
}
END_TEST

START_TEST(death_cache_reclaim_client)
{
    run_cache_death(true);
}
END_TEST

/* ---- SIGKILL at a random moment of an allocation storm ---- */

#define STORM_LIVE  128u
#define WHERE_DEPTH 12

struct storm_ctx {
    struct test_heap *t;
    uint64_t seed;
    uint32_t running; /* atomic: storm threads that have started */
    /* SHMHEAP_MP_WHERE=1 (diagnosis): instead of SIGKILL the parent sends
     * SIGUSR1; each storm thread records its stack where the signal
     * stopped it (offsets into the executable, for addr2line -f -i -e
     * build/tests/run_mp), then the process is SIGKILLed as before. */
    uint32_t stopped; /* atomic */
    pthread_t tids[2];
    uint64_t where[2][WHERE_DEPTH];
};

static struct storm_ctx *where_ctx;
static __thread int where_thr = -1;
extern char __executable_start[];

static void where_handler(int sig, siginfo_t *si, void *ucv)
{
    struct storm_ctx *s = where_ctx;
    ucontext_t *uc = ucv;
    void *frames[WHERE_DEPTH + 2];
    int me = where_thr, n;

    (void) sig;
    (void) si;
    if (me < 0 || me > 1)
        (void) raise(SIGKILL);
    s->where[me][0] = (uint64_t) uc->uc_mcontext.gregs[REG_RIP] - (uint64_t) __executable_start;
    n = backtrace(frames, WHERE_DEPTH + 2);
    /* frames[0] is this handler, frames[1] the signal trampoline. */
    for (int i = 2; i < n && i - 1 < WHERE_DEPTH; i++)
        s->where[me][i - 1] = (uint64_t) frames[i] - (uint64_t) __executable_start;
    if (__atomic_add_fetch(&s->stopped, 1, __ATOMIC_ACQ_REL) < 2) {
        (void) pthread_kill(s->tids[1 - me], SIGUSR1);
        for (;;)
            pause();
    }
    (void) raise(SIGKILL);
}

static bool where_mode(void)
{
    const char *e = getenv("SHMHEAP_MP_WHERE");

    return e && strcmp(e, "1") == 0;
}

static void where_print(struct storm_ctx *s)
{
    for (int t = 0; t < 2; t++) {
        fprintf(stderr, "storm thread %d stopped at:", t);
        for (int i = 0; i < WHERE_DEPTH && s->where[t][i]; i++)
            fprintf(stderr, " %#" PRIx64, s->where[t][i]);
        fprintf(stderr, "\n");
    }
}

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

    where_thr = (int) st->thr;
    /* Running once its cache slot is claimed (by its first malloc): the
     * parent's kill must find a slot to reclaim, however slowly the thread
     * starts (TSan on a loaded machine took longer than the parent's
     * shortest wait). */
    {
        void *first = heap_malloc(st->h, 16);

        MP_REQUIRE(first != NULL, "heap_malloc(16)");
        heap_free(st->h, first);
    }
    __atomic_fetch_add(&st->s->running, 1, __ATOMIC_RELEASE);
    for (;;) {
        uint64_t r = test_rand(&rng);
        unsigned i = (unsigned) ((r >> 8) % STORM_LIVE);

        if (p[i]) {
            MP_REQUIRE(mp_check_sparse(p[i], sz[i], tag[i]), "storm object overwritten");
            if (r % 16 == 0) {
                size_t ns = mp_rand_size(&rng, 64);
                void *q = heap_realloc(st->h, p[i], ns);

                MP_REQUIRE(q != NULL, "heap_realloc(%zu)", ns);
                p[i] = q;
                sz[i] = ns;
                tag[i] = mp_tag(0, st->thr, seq++);
                mp_fill_sparse(q, ns, tag[i]);
                continue;
            }
            heap_free(st->h, p[i]);
            p[i] = NULL;
        } else {
            sz[i] = mp_rand_size(&rng, 64);
            p[i] = heap_malloc(st->h, sz[i]);
            MP_REQUIRE(p[i] != NULL, "heap_malloc(%zu)", sz[i]);
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
    void *frames[2];

    if (where_mode()) {
        struct sigaction sa = {.sa_sigaction = where_handler, .sa_flags = SA_SIGINFO};

        (void) backtrace(frames, 2); /* loads the unwinder outside the handler */
        where_ctx = s;
        sigemptyset(&sa.sa_mask);
        MP_REQUIRE(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
    }
    s->tids[0] = pthread_self();
    MP_REQUIRE(pthread_create(&s->tids[1], NULL, storm_main, &th[1]) == 0, "pthread_create");
    storm_main(&th[0]);
    return 5;
}

/* Objects out of their slabs that nobody accounts for, on a quiescent heap
 * whose cache slots are all free: out of slabs - (in use by the counters +
 * in the recyclers, walked). A thread killed inside a cache operation
 * takes nothing with it (what it was moving is settled from its transit
 * record, handoff word or journal), so anything but 0 is a leak (or,
 * negative, an object counted twice). Fills out[] per class. */
static void unaccounted_objects(struct heap *h, int64_t out[SHM_NCLASSES])
{
    struct heap_stats st;

    ck_assert_int_eq(heap_stats(h, &st), 0);
    ck_assert_uint_eq(st.slots_in_use, 0);
    memset(out, 0, SHM_NCLASSES * sizeof(out[0]));
    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++) {
        struct seg_map *m = &h->segs[i];

        if (!load_acquire(&m->meta))
            continue;
        ck_assert_int_eq(seg_lock(m, h), 0);
        for (uint32_t b = m->hdr->first_block; b < m->nblocks; b++) {
            uint64_t w = load_relaxed(&m->meta[b]);
            struct slab_geometry g;

            if (meta_state(w) != BLK_SLAB || meta_class(w) >= SHM_NCLASSES)
                continue;
            sizeclass_geometry(meta_class(w), &g);
            out[meta_class(w)] += (int64_t) g.capacity - (int64_t) meta_nfree(w);
        }
        seg_unlock(m);
    }
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        uint64_t firsts[4096], first;
        uint32_t counts[4096], count, n = 0;
        int64_t recycled = 0;

        while (n < 4096 && (first = recycler_pop(h, NULL, FAULT_NONE, NULL, cls, &count)) != 0) {
            for (uint64_t x = first; x; x = obj_words(h, x)[0])
                recycled++;
            firsts[n] = first;
            counts[n++] = count;
        }
        while (n-- > 0)
            (void) recycler_push(h, NULL, FAULT_NONE, NULL, cls, firsts[n], counts[n],
                                 load_acquire(&h->nmapped) - 1, true);
        out[cls] -= (int64_t) st.classes[cls].in_use + recycled;
    }
}

/* The first half of the rounds gets a fresh heap each, the second half
 * shares one heap (the dead pile up); the exact object count is checked
 * after every kill. */
START_TEST(death_random_kill)
{
    const char *soak = getenv("SHMHEAP_SOAK");
    unsigned rounds = soak && strcmp(soak, "1") == 0 ? 100 : (unsigned) test_scaled(20, 2);
    struct storm_ctx *s = mp_shared_alloc(sizeof(*s));
    uint64_t rng = 0x4b111;
    unsigned counted = 0;
    struct test_heap t = {0};
    int64_t unaccounted[SHM_NCLASSES], prev_unaccounted[SHM_NCLASSES] = {0};
    struct heap_stats st;

    for (unsigned round = 0; round < rounds; round++) {
        unsigned delay_us = 1000 + (unsigned) (test_rand(&rng) % 20000);
        char what[96];
        bool counts = false, fresh = round <= rounds / 2;
        pid_t pid;
        int status, reclaimed;

        if (fresh) {
            if (t.h)
                th_destroy(&t);
            th_create(&t, NULL, SHM_PAGES_OFF);
            s->t = &t;
        }
        s->seed = test_rand(&rng);
        __atomic_store_n(&s->running, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s->stopped, 0, __ATOMIC_RELAXED);
        memset(s->where, 0, sizeof(s->where));
        pid = mp_fork(storm_child, s, round);
        /* Let both threads get going, then kill at a random moment. */
        while (__atomic_load_n(&s->running, __ATOMIC_ACQUIRE) < 2) {
            ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0, "storm child %u ended early: %s",
                          round, mp_status_str(status, what, sizeof(what)));
            mp_sleep_us(200);
        }
        mp_sleep_us(delay_us);
        ck_assert_int_eq(kill(pid, where_mode() ? SIGUSR1 : SIGKILL), 0);
        (void) snprintf(what, sizeof(what), "storm child, round %u, killed after %u us", round,
                        delay_us);
        mp_wait_signaled(pid, SIGKILL, what);

        reclaimed = heap_reclaim_dead(t.h);
        ck_assert_msg(reclaimed >= 1, "%s: reclaimed %d slots", what, reclaimed);
        if (where_mode())
            where_print(s);
        if (!mp_verify(t.h, &counts))
            ck_abort_msg("%s: heap_verify found problems after heap_reclaim_dead (see stderr)",
                         what);
        counted += counts;
        /* No death loses objects any more (transit records, tcache.c). */
        ck_assert_msg(counts, "%s: the exact object count was skipped", what);
        ck_assert_int_eq(heap_stats(t.h, &st), 0);
        ck_assert_msg(st.bad_frees == 0 && st.double_frees == 0,
                      "%s: %" PRIu64 " bad frees, %" PRIu64 " double frees", what, st.bad_frees,
                      st.double_frees);
        /* What this round's kill left unaccounted (on the shared heap, on
         * top of the earlier rounds'). Two threads: each at most a bundle
         * (64 objects) and one object more. */
        {
            int64_t lost = 0, min_class = 0;

            unaccounted_objects(t.h, unaccounted);
            for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
                int64_t d = unaccounted[cls] - (fresh ? 0 : prev_unaccounted[cls]);

                lost += d;
                if (d < min_class)
                    min_class = d;
                prev_unaccounted[cls] = unaccounted[cls];
            }
            if (lost != 0)
                fprintf(stderr, "%s: %" PRId64 " objects unaccounted for\n", what, lost);
            ck_assert_msg(lost == 0 && min_class == 0,
                          "%s: %" PRId64 " objects unaccounted for (lowest class %" PRId64 ")",
                          what, lost, min_class);
        }
        ck_assert_uint_eq(st.slots_in_use, 0);
    }
    fprintf(stderr, "death_random_kill: %u rounds, exact object count checked after %u\n", rounds,
            counted);
    ck_assert(use_heap(t.h, 512, 1));
    th_verify(t.h);
    th_destroy(&t);
    mp_shared_free(s, sizeof(*s));
}
END_TEST

/* ---- a trimmer that dies holding another thread's cache ---- */

struct thief_ctx {
    struct test_heap *t;
    pid_t victim;
    int mode; /* 0: steal and die; 1: heap_trim dying mid-drain (FAULT_RETURN_MID) */
};

static int thief_child(void *arg, unsigned idx)
{
    struct thief_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 700 + idx);
    struct ctl_header *ctl = heap_ctl(h);

    if (c->mode == 1) {
        shm_fault_at = FAULT_RETURN_MID;
        (void) heap_trim(h, 0, NULL);
        return 3; /* the fault point was not reached */
    }
    for (uint32_t i = 0; i < SHM_MAX_SLOTS; i++) {
        struct cache_slot *s = &ctl->slots[i];

        if (load_acquire(&s->state) == SLOT_OWNED &&
            load_relaxed(&s->pid) == (uint32_t) c->victim) {
            /* What heap_trim does to an idle cache, then death. */
            MP_REQUIRE(tcache_steal_begin(h, s, false) == 0, "tcache_steal_begin on slot %u", i);
            (void) raise(SIGKILL);
        }
    }
    fprintf(stderr, "thief: no slot of pid %d\n", (int) c->victim);
    return 4;
}

static void run_thief(int mode)
{
    struct shm_config cfg;
    struct test_heap t;
    struct thief_ctx c = {.t = &t, .victim = getpid(), .mode = mode};
    struct heap_stats st;
    uint32_t stolen = 0;
    bool counts = false;
    void *p[64];

    fault_config(&cfg);
    th_create(&t, &cfg, SHM_PAGES_OFF);
    /* Our cache holds objects of two classes. */
    for (unsigned i = 0; i < 64; i++) {
        p[i] = heap_malloc(t.h, i % 2 ? 96 : 1000);
        ck_assert_ptr_nonnull(p[i]);
    }
    for (unsigned i = 0; i < 64; i++)
        heap_free(t.h, p[i]);
    ck_assert_int_eq(heap_stats(t.h, &st), 0);
    ck_assert_uint_gt(mp_stats_cached(&st), 2);

    mp_wait_signaled(mp_fork(thief_child, &c, 0), SIGKILL, "thief");
    for (uint32_t i = 0; i < SHM_MAX_SLOTS; i++)
        if (load_relaxed(&heap_ctl(t.h)->slots[i].pid) == (uint32_t) getpid())
            stolen |= load_relaxed(&heap_ctl(t.h)->slots[i].steal);
    ck_assert_msg(stolen != 0, "the thief died without holding our slot");

    /* Our next cache operation must take the slot back (the thief is gone)
     * rather than wait for it forever; Check's timeout is the deadlock
     * detector here. */
    for (unsigned i = 0; i < 64; i++) {
        p[i] = heap_malloc(t.h, i % 2 ? 96 : 1000);
        ck_assert_ptr_nonnull(p[i]);
        mp_fill(p[i], i % 2 ? 96 : 1000, i);
    }
    for (unsigned i = 0; i < 64; i++) {
        ck_assert_uint_eq(mp_check(p[i], i % 2 ? 96 : 1000, i), SIZE_MAX);
        heap_free(t.h, p[i]);
    }
    ck_assert_msg(mp_verify(t.h, &counts), "heap_verify (see stderr)");
    ck_assert_msg(counts, "heap_verify skipped the object count");
    heap_thread_flush(t.h);
    ck_assert_int_eq(heap_stats(t.h, &st), 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    ck_assert_uint_eq(mp_stats_cached(&st), 0);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    ck_assert_uint_eq(st.lost_objects, 0);
    ck_assert_uint_eq(mp_blocks_not_free(t.h), 0);
    th_verify(t.h);
    th_destroy(&t);
}

START_TEST(death_trimmer_holding_steal)
{
    run_thief(0);
}
END_TEST

START_TEST(death_trimmer_mid_drain)
{
    run_thief(1);
}
END_TEST

/* ---- trimmers killed at random moments while another process allocates ---- */

struct tstorm_ctx {
    struct test_heap *t;
    uint32_t stop;    /* atomic: the allocator stops */
    uint32_t running; /* atomic: allocator threads going */
    uint64_t trims;   /* atomic: trims completed, all trimmers */
};

struct tstorm_thread {
    struct tstorm_ctx *c;
    struct heap *h;
    unsigned thr;
};

static void *tstorm_alloc_main(void *arg)
{
    struct tstorm_thread *tt = arg;
    void *p[STORM_LIVE] = {0};
    size_t sz[STORM_LIVE] = {0};
    uint64_t rng = 0x7217 + tt->thr, seq = 0;

    __atomic_fetch_add(&tt->c->running, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&tt->c->stop, __ATOMIC_ACQUIRE)) {
        uint64_t r = test_rand(&rng);
        unsigned i = (unsigned) ((r >> 8) % STORM_LIVE);

        if (p[i]) {
            MP_REQUIRE(mp_check(p[i], sz[i], mp_tag(1, tt->thr, i)) == SIZE_MAX,
                       "object overwritten");
            heap_free(tt->h, p[i]);
            p[i] = NULL;
        } else {
            sz[i] = mp_rand_size(&rng, 64);
            p[i] = heap_malloc(tt->h, sz[i]);
            MP_REQUIRE(p[i] != NULL, "heap_malloc(%zu)", sz[i]);
            mp_fill(p[i], sz[i], mp_tag(1, tt->thr, i));
        }
        seq++;
    }
    for (unsigned i = 0; i < STORM_LIVE; i++)
        if (p[i]) {
            MP_REQUIRE(mp_check(p[i], sz[i], mp_tag(1, tt->thr, i)) == SIZE_MAX,
                       "object overwritten");
            heap_free(tt->h, p[i]);
        }
    return NULL;
}

/* Under TSan one allocating thread: a cache a trimmer drained reaches the
 * sibling thread through the trimmer's process, a chain TSan cannot see
 * (the object's link word written by the owner's free, then by the
 * sibling's slab_take under the segment lock). */
#if defined(__SANITIZE_THREAD__)
#    define TSTORM_THREADS 1u
#else
#    define TSTORM_THREADS 2u
#endif

static int tstorm_allocator(void *arg, unsigned idx)
{
    struct tstorm_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 800 + idx);
    struct tstorm_thread tt[2] = {{.c = c, .h = h, .thr = 0}, {.c = c, .h = h, .thr = 1}};
    pthread_t tid;

    if (TSTORM_THREADS > 1)
        MP_REQUIRE(pthread_create(&tid, NULL, tstorm_alloc_main, &tt[1]) == 0, "pthread_create");
    tstorm_alloc_main(&tt[0]);
    if (TSTORM_THREADS > 1)
        MP_REQUIRE(pthread_join(tid, NULL) == 0, "pthread_join");
    heap_detach(h);
    return 0;
}

static int tstorm_trimmer(void *arg, unsigned round)
{
    struct tstorm_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 900 + round);

    for (;;) {
        MP_REQUIRE(heap_trim(h, 5, NULL) == 0, "heap_trim");
        __atomic_fetch_add(&c->trims, 1, __ATOMIC_RELAXED);
    }
    return 0;
}

/* Nothing that holds a cache slot dies here: only trimmers, which own no
 * cache, so the heap must come out exact (the object count checked), and
 * the allocating threads must never be left waiting for a dead trimmer. */
START_TEST(death_random_kill_trimmer)
{
    const char *soak = getenv("SHMHEAP_SOAK");
    unsigned rounds = soak && strcmp(soak, "1") == 0 ? 1000 : (unsigned) test_scaled(150, 6);
    struct tstorm_ctx *c = mp_shared_alloc(sizeof(*c));
    struct shm_config cfg;
    struct test_heap t;
    struct heap_stats st;
    uint64_t rng = 0x7e1a;
    bool counts = false;
    pid_t alloc;
    int status;

    heap_config_default(&cfg);
    cfg.segment_size = UINT64_C(256) << 20;
    cfg.retain_empty_blocks = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    c->t = &t;
    alloc = mp_fork(tstorm_allocator, c, 0);
    while (__atomic_load_n(&c->running, __ATOMIC_ACQUIRE) < TSTORM_THREADS) {
        ck_assert_msg(waitpid(alloc, &status, WNOHANG) == 0, "allocator ended early");
        mp_sleep_us(200);
    }
    for (unsigned round = 0; round < rounds; round++) {
        unsigned delay_us =
                200 + (unsigned) (test_rand(&rng) % (test_scale_small() ? 40000 : 4000));
        char what[96];
        pid_t pid = mp_fork(tstorm_trimmer, c, round);

        mp_sleep_us(delay_us);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        (void) snprintf(what, sizeof(what), "trimmer, round %u, killed after %u us", round,
                        delay_us);
        mp_wait_signaled(pid, SIGKILL, what);
        ck_assert_msg(waitpid(alloc, &status, WNOHANG) == 0, "allocator ended during round %u: %s",
                      round, mp_status_str(status, what, sizeof(what)));
    }
    __atomic_store_n(&c->stop, 1, __ATOMIC_RELEASE);
    /* The allocator must finish (in milliseconds; 60 s means deadlock). */
    mp_wait_ok_bounded(alloc, 60, "allocating child");
    fprintf(stderr, "death_random_kill_trimmer: %u trimmers killed, %" PRIu64 " trims done\n",
            rounds, __atomic_load_n(&c->trims, __ATOMIC_RELAXED));

    ck_assert_int_eq(heap_reclaim_dead(t.h), 0);
    ck_assert_msg(mp_verify(t.h, &counts), "heap_verify (see stderr)");
    ck_assert_msg(counts, "heap_verify skipped the object count");
    ck_assert_int_eq(heap_stats(t.h, &st), 0);
    ck_assert_uint_eq(st.allocs, st.frees);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    ck_assert_uint_eq(st.lost_objects, 0);
    /* No object anywhere once the recyclers are emptied: every block free. */
    ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
    ck_assert_msg(mp_blocks_not_free(t.h) == 0, "%" PRIu64 " blocks not free after the last trim",
                  mp_blocks_not_free(t.h));
    th_verify(t.h);
    th_destroy(&t);
    mp_shared_free(c, sizeof(*c));
}
END_TEST

/* ---- processes killed while they wait for a segment lock ----
 *
 * With tiny caches and no recycler almost every malloc and free goes
 * through the segment lock, so processes that are killed spend much of
 * their life waiting for it. A waiter that is woken by an unlock and killed
 * before it takes the lock must not leave the other waiters asleep on a
 * free lock (the PI futex handover: ARCHITECTURE.md, dead lock holders). */
#define NCONTENDERS 4u

static int contender_main(void *arg, unsigned round)
{
    struct tstorm_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 1000 + round);
    void *p[16] = {0};
    uint64_t rng = 0xc0de + round;

    (void) c;
    for (;;) { /* until killed; what it holds then is leaked, so keep it small */
        uint64_t r = test_rand(&rng);
        unsigned i = (unsigned) ((r >> 8) % 16);

        if (p[i]) {
            heap_free(h, p[i]);
            p[i] = NULL;
        } else {
            p[i] = heap_malloc(h, 16 + (size_t) ((r >> 16) % 1024));
            MP_REQUIRE(p[i] != NULL, "heap_malloc");
        }
    }
    return 0;
}

START_TEST(death_lock_waiters_killed)
{
    const char *soak = getenv("SHMHEAP_SOAK");
    unsigned rounds = soak && strcmp(soak, "1") == 0 ? 2000 : (unsigned) test_scaled(200, 8);
    struct tstorm_ctx *c = mp_shared_alloc(sizeof(*c));
    struct shm_config cfg;
    struct test_heap t;
    uint64_t rng = 0x10c4;
    pid_t alloc;
    int status;

    heap_config_default(&cfg);
    cfg.segment_size = UINT64_C(256) << 20;
    cfg.thread_cache_bytes = 4096; /* bundles of 2 */
    cfg.recycler_cap_bundles = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    c->t = &t;
    alloc = mp_fork(tstorm_allocator, c, 0);
    while (__atomic_load_n(&c->running, __ATOMIC_ACQUIRE) < TSTORM_THREADS) {
        ck_assert_msg(waitpid(alloc, &status, WNOHANG) == 0, "allocator ended early");
        mp_sleep_us(200);
    }
    for (unsigned round = 0; round < rounds; round++) {
        pid_t pid[NCONTENDERS];
        char what[96];

        for (unsigned k = 0; k < NCONTENDERS; k++)
            pid[k] = mp_fork(contender_main, c, NCONTENDERS * round + k);
        mp_sleep_us(200 + (unsigned) (test_rand(&rng) % 3000));
        for (unsigned k = 0; k < NCONTENDERS; k++) {
            ck_assert_int_eq(kill(pid[k], SIGKILL), 0);
            (void) snprintf(what, sizeof(what), "contender %u of round %u", k, round);
            mp_wait_signaled(pid[k], SIGKILL, what);
        }
        /* Their cache slots back (the slot table is finite), while the
         * allocator runs: the daemon's situation. */
        ck_assert_int_ge(heap_reclaim_dead(t.h), 0);
        ck_assert_msg(waitpid(alloc, &status, WNOHANG) == 0, "allocator ended during round %u: %s",
                      round, mp_status_str(status, what, sizeof(what)));
    }
    __atomic_store_n(&c->stop, 1, __ATOMIC_RELEASE);
    /* The allocator must finish (in milliseconds; 60 s means deadlock). */
    mp_wait_ok_bounded(alloc, 60, "allocating child");

    ck_assert_int_ge(heap_reclaim_dead(t.h), 0);
    th_verify(t.h);
    th_destroy(&t);
    mp_shared_free(c, sizeof(*c));
}
END_TEST

Suite *death_suite(void)
{
    Suite *s = suite_create("death");
    TCase *tc = tcase_create("fault");
    TCase *tc2 = tcase_create("cache");
    TCase *tc3 = tcase_create("storm");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, death_fault_take);
    tcase_add_test(tc, death_fault_return);
    tcase_add_test(tc, death_fault_carve);
    tcase_add_test(tc, death_fault_decommit);
    tcase_add_test(tc, death_fault_commit_count);
    suite_add_tcase(s, tc);
    tcase_set_timeout(tc2, 60);
    tcase_add_test(tc2, death_cache_reclaim_dead);
    tcase_add_test(tc2, death_cache_reclaim_client);
    tcase_add_test(tc2, death_trimmer_holding_steal);
    tcase_add_test(tc2, death_trimmer_mid_drain);
    suite_add_tcase(s, tc2);
    tcase_set_timeout(tc3, 180);
    tcase_add_test(tc3, death_random_kill);
    tcase_add_test(tc3, death_random_kill_trimmer);
    tcase_add_test(tc3, death_lock_waiters_killed);
    suite_add_tcase(s, tc3);
    return s;
}
