/* Kills at random moments, with exact figures after each.
 *
 * arena:  a process looping heap_arena_create(64 KiB, SESSION), SIGKILLed
 *         0-2 ms after it attached, 100 times; another looping create and
 *         destroy of plain arenas. After each death the dead are reclaimed
 *         as the daemon does (its SESSION arenas, its slots, its owner
 *         entry): no block may stay claimed but the one plain arena the
 *         second kind of child may have held alive (which the parent then
 *         finds and destroys).
 * storm:  a process of two threads that malloc, free and realloc (large
 *         objects too), use SESSION arenas and a pool the parent made, is
 *         SIGKILLed after a random 0-5 ms, over and over on one heap.
 *         After every kill: reclaim, verify with the exact object count,
 *         no object unaccounted for, allocations == frees and no byte in
 *         use (the child shares nothing, so everything it held is swept).
 *         Every 50 kills and at the end: the parent frees the pool and
 *         trims, and every block must be free. The figures (kills, lost
 *         objects, leaked blocks, verify failures, exact-count checks) go
 *         to stderr. 40 kills (4 under sanitizers); with SHMHEAP_SOAK=1,
 *         SHMHEAP_SOAK_KILLS of them (default 100,000: `make soak`, about 35 minutes here). */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/internal.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/mp/storm_audit.h"
#include "tests/mp/suites.h"

#define KiB 1024u

static bool soak(void)
{
    const char *e = getenv("SHMHEAP_SOAK");

    return e && strcmp(e, "1") == 0;
}

/* Runs of kind RUN_ARENA that still have a live header, destroyed; returns
 * how many. */
static unsigned destroy_live_arenas(struct heap *h)
{
    unsigned n = 0;

    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++) {
        struct seg_map *m = &h->segs[i];

        if (!load_acquire(&m->meta))
            continue;
        for (uint32_t b = m->hdr->first_block; b < m->nblocks; b++) {
            uint64_t w = load_relaxed(&m->meta[b]);

            if (meta_state(w) == BLK_RUN && meta_kind(w) == RUN_ARENA &&
                heap_arena_destroy(h, (uint64_t) i << SHM_SEG_SHIFT |
                                              (uint64_t) b << SHM_BLOCK_SHIFT) == 0)
                n++;
        }
    }
    return n;
}

/* Arena and pool runs: each counts as one allocation until it is freed. */
static uint64_t runs_alive(struct heap *h)
{
    uint64_t n = 0;

    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++) {
        struct seg_map *m = &h->segs[i];

        if (!load_acquire(&m->meta))
            continue;
        for (uint32_t b = m->hdr->first_block; b < m->nblocks; b++) {
            uint64_t w = load_relaxed(&m->meta[b]);

            n += meta_state(w) == BLK_RUN && meta_kind(w) != RUN_LARGE;
        }
    }
    return n;
}

/* ---- arenas created (and destroyed) while the kill comes ---- */

struct arena_ctx {
    struct test_heap *t;
    bool session;      /* SESSION arenas, kept; else plain ones, destroyed */
    uint32_t attached; /* atomic */
};

static int arena_child(void *arg, unsigned idx)
{
    struct arena_ctx *a = arg;
    struct heap *h = th_attach_child(a->t, 1000 + idx);
    uint64_t off;

    __atomic_store_n(&a->attached, 1, __ATOMIC_RELEASE);
    for (;;) {
        int r = heap_arena_create(h, 64 * KiB, a->session ? HEAP_ARENA_SESSION : 0, &off);

        if (r == -ENOMEM && a->session) {
            /* Full: start over, as a fresh process would. */
            MP_REQUIRE(heap_arena_destroy_session(h, 1000 + idx) >= 0, "destroy_session");
            continue;
        }
        MP_REQUIRE(r == 0, "heap_arena_create: %s", strerror(-r));
        if (!a->session)
            MP_REQUIRE(heap_arena_destroy(h, off) == 0, "heap_arena_destroy");
    }
    return 5;
}

static void run_arena_kills(bool session)
{
    struct arena_ctx *a = mp_shared_alloc(sizeof(*a));
    struct test_heap t;
    struct shm_config cfg;
    uint64_t rng = session ? 0xa7e4a : 0xa7e4b;
    unsigned rounds = (unsigned) test_scaled(100, 4), left_alive = 0;

    th_config(&cfg, UINT64_C(256) << 20);
    cfg.retain_empty_blocks = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    a->t = &t;
    a->session = session;
    for (unsigned round = 0; round < rounds; round++) {
        char what[80];
        bool counts = false;
        pid_t pid;
        int status;

        __atomic_store_n(&a->attached, 0, __ATOMIC_RELAXED);
        pid = mp_fork(arena_child, a, round);
        while (!__atomic_load_n(&a->attached, __ATOMIC_ACQUIRE)) {
            ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0, "arena child ended early");
            mp_sleep_us(50);
        }
        mp_sleep_us((unsigned) (test_rand(&rng) % 2001));
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        (void) snprintf(what, sizeof(what), "%s arena child, round %u",
                        session ? "SESSION" : "plain", round);
        mp_wait_signaled(pid, SIGKILL, what);
        /* What the daemon does for a client that died. */
        ck_assert_int_ge(heap_arena_destroy_session(t.h, 1000 + round), 0);
        ck_assert_int_ge(heap_reclaim_dead(t.h), 0);
        ck_assert_msg(mp_verify(t.h, &counts) && counts, "%s: verify", what);
        if (!session)
            left_alive += destroy_live_arenas(t.h); /* one it had not destroyed yet */
        ck_assert_msg(mp_blocks_not_free(t.h) == 0, "%s: %" PRIu64 " blocks leaked", what,
                      mp_blocks_not_free(t.h));
    }
    fprintf(stderr,
            "storm_arena (%s): %u kills, 0 blocks leaked, %u arenas alive at the kill "
            "(destroyed by the parent)\n",
            session ? "SESSION" : "plain", rounds, left_alive);
    th_destroy(&t);
    mp_shared_free(a, sizeof(*a));
}

START_TEST(storm_arena_session_create_killed)
{
    run_arena_kills(true);
}
END_TEST

START_TEST(storm_arena_create_destroy_killed)
{
    run_arena_kills(false);
}
END_TEST

/* ---- the storm ---- */

#define LIVE 96u

struct storm_ctx {
    struct test_heap *t;
    uint64_t pool;
    uint64_t seed;
    uint32_t running; /* atomic: threads started */
};

struct storm_thread {
    struct storm_ctx *s;
    struct heap *h;
    unsigned thr;
};

static void *storm_main(void *arg)
{
    struct storm_thread *st = arg;
    struct heap *h = st->h;
    void *p[LIVE] = {0};
    size_t sz[LIVE] = {0};
    uint8_t kind[LIVE] = {0}; /* 0 heap, 1 pool */
    uint64_t rng = st->s->seed ^ (st->thr + 1) * UINT64_C(0x9e3779b97f4a7c15), arena = 0;

    __atomic_fetch_add(&st->s->running, 1, __ATOMIC_RELEASE);
    for (uint64_t seq = 0;; seq++) {
        uint64_t r = test_rand(&rng);
        unsigned i = (unsigned) ((r >> 8) % LIVE);

        if (r % 97 == 3) {
            /* A SESSION arena: made, used, sometimes destroyed. */
            if (arena && r % 2)
                MP_REQUIRE(heap_arena_destroy(h, arena) == 0, "heap_arena_destroy");
            if (!arena || r % 2)
                MP_REQUIRE(heap_arena_create(h, 64 * KiB, HEAP_ARENA_SESSION, &arena) == 0,
                           "heap_arena_create");
            MP_REQUIRE(heap_arena_alloc(h, arena, 100, 16) || errno == ENOMEM, "arena_alloc");
            continue;
        }
        if (p[i]) {
            MP_REQUIRE(mp_check_sparse(p[i], sz[i], mp_tag(0, st->thr, i)), "overwritten");
            if (kind[i] == 1) {
                MP_REQUIRE(heap_pool_free(h, st->s->pool, p[i]) == 0, "heap_pool_free");
            } else if (r % 8 == 0) {
                size_t ns = mp_rand_size(&rng, 48);
                void *q = heap_realloc(h, p[i], ns);

                MP_REQUIRE(q != NULL, "heap_realloc(%zu)", ns);
                p[i] = q;
                sz[i] = ns;
                mp_fill_sparse(q, ns, mp_tag(0, st->thr, i));
                continue;
            } else {
                heap_free(h, p[i]);
            }
            p[i] = NULL;
        } else {
            kind[i] = r % 16 == 5;
            sz[i] = kind[i] ? 256 : mp_rand_size(&rng, 48);
            p[i] = kind[i] ? heap_pool_alloc(h, st->s->pool) : heap_malloc(h, sz[i]);
            MP_REQUIRE(p[i] != NULL, "alloc of %zu", sz[i]);
            mp_fill_sparse(p[i], sz[i], mp_tag(0, st->thr, i));
        }
        if (r % 1024 == 1)
            heap_thread_flush(h);
    }
    return NULL;
}

static int storm_child(void *arg, unsigned idx)
{
    struct storm_ctx *s = arg;
    struct heap *h = th_attach_child(s->t, 2000 + idx);
    struct storm_thread th[2] = {{.s = s, .h = h, .thr = 0}, {.s = s, .h = h, .thr = 1}};
    pthread_t tid;

    MP_REQUIRE(pthread_create(&tid, NULL, storm_main, &th[1]) == 0, "pthread_create");
    storm_main(&th[0]);
    return 5;
}

/* Objects out of slabs minus those in use by the counters and those in
 * the recyclers (walked), on a heap with no slot in use: 0 when nothing is
 * unaccounted for. */
static int64_t unaccounted(struct heap *h)
{
    struct heap_stats st;
    int64_t out = 0;

    ck_assert_int_eq(heap_stats(h, &st), 0);
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
            out += (int64_t) g.capacity - (int64_t) meta_nfree(w);
        }
        seg_unlock(m);
    }
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        uint64_t firsts[1024], first;
        uint32_t counts[1024], count, n = 0;

        while (n < 1024 && (first = recycler_pop(h, NULL, FAULT_NONE, NULL, cls, &count)) != 0) {
            for (uint64_t x = first; x; x = obj_words(h, x)[0])
                out--;
            firsts[n] = first;
            counts[n++] = count;
        }
        while (n-- > 0)
            (void) recycler_push(h, NULL, FAULT_NONE, NULL, cls, firsts[n], counts[n],
                                 load_acquire(&h->nmapped) - 1, true);
        out -= (int64_t) st.classes[cls].in_use;
    }
    return out;
}

static unsigned storm_kills(void)
{
    const char *e = getenv("SHMHEAP_SOAK_KILLS");

    if (soak())
        return e && atoi(e) > 0 ? (unsigned) atoi(e) : 100000;
    return (unsigned) test_scaled(40, 10);
}

/* Frees the pool and trims; returns the blocks still claimed (leaked). */
static uint64_t checkpoint(struct storm_ctx *s)
{
    struct heap *h = s->t->h;
    bool counts = false;

    ck_assert_int_eq(heap_pool_destroy(h, s->pool), 0);
    heap_thread_flush(h);
    ck_assert_int_eq(heap_trim(h, 0, NULL), 0);
    ck_assert_msg(mp_verify(h, &counts) && counts, "storm checkpoint: verify");
    ck_assert_uint_eq(runs_alive(h), 0);
    return mp_blocks_not_free(h);
}

static char audit[256 * KiB];

START_TEST(storm_kill)
{
    struct storm_ctx *s = mp_shared_alloc(sizeof(*s));
    struct test_heap t;
    struct shm_config cfg;
    uint64_t rng = 0x5707e, leaked = 0, lost = 0, exact = 0, verify_failures = 0;
    unsigned kills = storm_kills(), checkpoints = 0, every = 50;
    bool audit_all;
    const char *e = getenv("SHMHEAP_STORM_CHECKPOINT");

    if (e && atoi(e) > 0)
        every = (unsigned) atoi(e);    /* kills between full-free checkpoints */
    e = getenv("SHMHEAP_STORM_AUDIT"); /* 1: print every kill's audit */
    audit_all = e && atoi(e) > 0;

    th_config(&cfg, UINT64_C(512) << 20);
    cfg.retain_empty_blocks = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    s->t = &t;
    ck_assert_int_eq(heap_pool_create(t.h, 256, &s->pool), 0);
    for (unsigned k = 0; k < kills; k++) {
        struct heap_stats st;
        char what[80];
        bool counts = false;
        pid_t pid;
        int status;
        int64_t un;
        uint32_t anomalies = 0;
        uint64_t refused_before;

        s->seed = test_rand(&rng);
        __atomic_store_n(&s->running, 0, __ATOMIC_RELAXED);
        pid = mp_fork(storm_child, s, k);
        while (__atomic_load_n(&s->running, __ATOMIC_ACQUIRE) < 2) {
            ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0, "storm child %u ended early", k);
            mp_sleep_us(100);
        }
        mp_sleep_us((unsigned) (test_rand(&rng) % 5001));
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        (void) snprintf(what, sizeof(what), "storm kill %u", k);
        mp_wait_signaled(pid, SIGKILL, what);
        /* What the dead left, read before the reclaim: printed at once if
         * an object is reachable twice, and when the figures below fail. */
        refused_before = t.h->ctl->refused_frees + t.h->ctl->double_frees;
        (void) storm_audit(t.h, (uint32_t) pid, audit, sizeof(audit), &anomalies);
        if (anomalies || audit_all)
            fprintf(stderr, "%s: %u anomalies before the reclaim\n%s", what, anomalies, audit);
        ck_assert_int_ge(heap_arena_destroy_session(t.h, 2000 + k), 0);
        ck_assert_int_ge(heap_reclaim_dead(t.h), 1);
        if (t.h->ctl->refused_frees + t.h->ctl->double_frees != refused_before)
            fprintf(stderr,
                    "%s: the reclaim refused a free (refused %" PRIu64 ", double %" PRIu64
                    "); before it:\n%s",
                    what, t.h->ctl->refused_frees, t.h->ctl->double_frees, audit);
        if (!mp_verify(t.h, &counts))
            verify_failures++;
        exact += counts;
        ck_assert_msg(counts, "%s: the exact object count was skipped", what);
        un = unaccounted(t.h);
        if (un != 0)
            fprintf(stderr, "%s: %" PRId64 " unaccounted; before the reclaim:\n%s", what, un,
                    audit);
        ck_assert_int_eq(heap_stats(t.h, &st), 0);
        lost += st.lost_objects + (uint64_t) (un < 0 ? -un : un);
        ck_assert_msg(un == 0, "%s: %" PRId64 " objects unaccounted for", what, un);
        /* On a mismatch, the counters it is made of (for the diagnosis). */
        if (st.allocs != st.frees + runs_alive(t.h)) {
            uint64_t la = 0, lf = 0, sa = 0;
            int64_t siu = 0;
            struct ctl_header *c = t.h->ctl;

            for (uint32_t i = 0; i < SHM_MAX_SLOTS; i++) {
                la += c->slots[i].large_allocs;
                lf += c->slots[i].large_frees;
                sa += c->slots[i].allocs + c->slots[i].ops;
                for (unsigned cls = 0; cls < SHM_NCLASSES; cls++)
                    siu += (int64_t) (c->slots[i].bins[cls].net -
                                      bin_count(c->slots[i].bins[cls].head));
            }
            fprintf(stderr,
                    "%s: the counts behind the figures: large_allocs %" PRIu64
                    " large_frees %" PRIu64 " owned_reclaimed_large %" PRIu64
                    " small allocs %" PRIu64 " small in use %" PRId64 " refused %" PRIu64 "\n",
                    what, la, lf, c->owned_reclaimed_large, sa, siu, c->refused_frees);
        }
        /* Nothing in use but the pool's chunks (each run counts as one
         * allocation until it is freed). */
        ck_assert_msg(st.allocs == st.frees + runs_alive(t.h) && st.bytes_in_use == 0,
                      "%s: %" PRIu64 " allocations, %" PRIu64 " frees, %" PRIu64
                      " arena and pool runs, %" PRIu64 " bytes in use on a quiescent heap",
                      what, st.allocs, st.frees, runs_alive(t.h), st.bytes_in_use);
        ck_assert_uint_eq(st.lost_objects, 0);
        ck_assert_uint_eq(st.bad_frees + st.double_frees, 0);
        ck_assert_msg(verify_failures == 0, "%s: verify found problems (see stderr)", what);
        if ((k + 1) % every == 0 || k + 1 == kills) {
            uint64_t b = checkpoint(s);

            leaked += b;
            checkpoints++;
            ck_assert_msg(b == 0, "%s: %" PRIu64 " blocks leaked", what, b);
            if (k + 1 < kills)
                ck_assert_int_eq(heap_pool_create(t.h, 256, &s->pool), 0);
        }
    }
    fprintf(stderr,
            "storm_kill: %u kills, %" PRIu64 " lost objects, %" PRIu64
            " leaked blocks (%u full-free checkpoints), %" PRIu64 " verify failures, %" PRIu64
            " exact-count checks, every one exact\n",
            kills, lost, leaked, checkpoints, verify_failures, exact);
    th_destroy(&t);
    mp_shared_free(s, sizeof(*s));
}
END_TEST

Suite *storm_suite(void)
{
    Suite *s = suite_create("storm");
    TCase *tc = tcase_create("arena");
    TCase *tk = tcase_create("storm");

    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, storm_arena_session_create_killed);
    tcase_add_test(tc, storm_arena_create_destroy_killed);
    suite_add_tcase(s, tc);
    /* The soak runs for an hour or so: no bound but a day. */
    tcase_set_timeout(tk, soak() ? 86400 : 300);
    tcase_add_test(tk, storm_kill);
    suite_add_tcase(s, tk);
    return s;
}
