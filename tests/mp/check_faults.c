/* Every fault point, hit and recovered.
 *
 * One test walks the whole of enum shm_fault_point (shm/fault.h): for each
 * point a fresh heap, then rounds of a child process that attaches, sets
 * shm_fault_at and does the one operation that reaches the point, where
 * the core raises SIGKILL. Then the parent, or another child, or the
 * reclaim itself (by turns) is the first to take the locks the dead one
 * may have held; the heap must verify consistent with the exact object
 * count, before and after the dead are reclaimed; and once everything is freed and trimmed, the
 * figures must be exact (allocations == frees, nothing in use, nothing
 * lost) and every block free again. A point a child survives, or a table
 * that misses a point, fails the test; the table of points, hits and
 * recoveries goes to stderr.
 *
 * Rounds per point: 3 (1 under sanitizers), 50 with SHMHEAP_SOAK=1. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/mp/suites.h"

#define KiB          1024u
#define SMALL        64u
#define LARGE        (300u * KiB)
#define POOL_OBJ     4096u
#define POOL_PER_CHK 255u /* objects of POOL_OBJ in a 1 MiB chunk, about */
#define SPARSE_N     2048u

struct fctx {
    struct test_heap *t;
    int point;
    unsigned round;
    uint64_t pool; /* made by the parent for the grow and destroy points */
    void **keep;   /* objects the parent keeps across the death */
    size_t nkeep;
    void **big; /* large objects filling the heap (DRAIN_POPPED) */
    size_t nbig;
};

/* ---- the child's operation, per point ---- */

static void alloc_free(struct heap *h, unsigned n, size_t size, int fault_before_free)
{
    void **p = calloc(n, sizeof(*p));

    MP_REQUIRE(p != NULL, "calloc");
    for (unsigned i = 0; i < n; i++) {
        p[i] = heap_malloc(h, size);
        MP_REQUIRE(p[i] != NULL, "heap_malloc(%zu)", size);
    }
    if (fault_before_free)
        shm_fault_at = fault_before_free;
    for (unsigned i = 0; i < n; i++)
        heap_free(h, p[i]);
    free(p);
}

/* Each does the operation that reaches f->point, if it is one of its own. */
static void child_blocks(struct fctx *f, struct heap *h)
{
    switch (f->point) {
    case FAULT_TAKE_MID:
    case FAULT_CARVE_MID:
    case FAULT_TAKE_DELIVERED:
    case FAULT_RUN_CLAIM_MID:
        /* An empty cache and recycler: a refill takes from a slab, carving
         * one; or a large object claims a run. */
        shm_fault_at = f->point;
        (void) heap_malloc(h, f->point == FAULT_RUN_CLAIM_MID ? LARGE : SMALL);
        break;
    case FAULT_RETURN_MID:
    case FAULT_RETURN_LAST_NOTED:
        /* The recycler takes nothing (cap 0): the flush returns the bin's
         * objects to their slab under the lock. */
        alloc_free(h, 10, SMALL, 0);
        shm_fault_at = f->point;
        heap_thread_flush(h);
        break;
    case FAULT_DECOMMIT_MID:
    case FAULT_PUNCH_MID:
    case FAULT_PUNCH_RESERVE_MID:
    case FAULT_PUNCH_RESTORE_MID:
        shm_fault_at = f->point;
        (void) heap_trim(h, 0, NULL);
        break;
    case FAULT_COMMIT_COUNT_MID:
        (void) heap_trim(h, 0, NULL); /* every free unit decommitted */
        shm_fault_at = f->point;
        (void) heap_malloc(h, SMALL);
        break;
    default:
        break;
    }
}

static void child_runs(struct fctx *f, struct heap *h)
{
    uint64_t off;
    void *p;

    switch (f->point) {
    case FAULT_RUN_FREE_JOURNALED:
    case FAULT_RUN_FREE_MID:
        /* A large object's free, an arena's destroy, a pool's (its header,
         * the last run it frees), by turns. */
        if (f->round % 3 == 0) {
            p = heap_malloc(h, LARGE);
            MP_REQUIRE(p != NULL, "heap_malloc(%u)", LARGE);
            shm_fault_at = f->point;
            heap_free(h, p);
        } else if (f->round % 3 == 1) {
            MP_REQUIRE(heap_arena_create(h, 64 * KiB, 0, &off) == 0, "heap_arena_create");
            shm_fault_at = f->point;
            (void) heap_arena_destroy(h, off);
        } else {
            MP_REQUIRE(heap_pool_create(h, SMALL, &off) == 0, "heap_pool_create");
            shm_fault_at = f->point;
            (void) heap_pool_destroy(h, off);
        }
        break;
    case FAULT_ARENA_CLAIMED:
    case FAULT_ARENA_HEADER:
        shm_fault_at = f->point;
        (void) heap_arena_create(h, 64 * KiB, f->round % 2 ? HEAP_ARENA_SESSION : 0, &off);
        break;
    case FAULT_POOL_CLAIMED:
    case FAULT_POOL_HEADER:
        shm_fault_at = f->point;
        (void) heap_pool_create(h, SMALL, &off);
        break;
    case FAULT_POOL_GROW_CLAIMED:
    case FAULT_POOL_GROW_LINKED:
        /* The parent's pool, one chunk: past its end the pool grows. */
        shm_fault_at = f->point;
        for (unsigned i = 0; i < 2 * POOL_PER_CHK; i++)
            MP_REQUIRE(heap_pool_alloc(h, f->pool) != NULL, "heap_pool_alloc");
        break;
    case FAULT_POOL_DESTROY_MID:
        shm_fault_at = f->point;
        (void) heap_pool_destroy(h, f->pool);
        break;
    default:
        break;
    }
}

static void child_cache(struct fctx *f, struct heap *h)
{
    switch (f->point) {
    case FAULT_POP_NOTED:
    case FAULT_REFILL_POPPED:
    case FAULT_REFILL_DELIVERED:
        /* The parent filled the recycler: the refill pops a bundle. */
        shm_fault_at = f->point;
        (void) heap_malloc(h, SMALL);
        break;
    case FAULT_PUSH_NOTED:
    case FAULT_FLUSH_CUT:
    case FAULT_FLUSH_PUSHED:
    case FAULT_FREE_TAGGED:
        /* Frees overflow the bin: bundles go to the recycler (FREE_TAGGED:
         * the free that overflowed it, tagged, dies before its push, and
         * its owner's sweep frees it). */
        alloc_free(h, 400, SMALL, f->point);
        break;
    case FAULT_MALLOC_TAGGED:
    case FAULT_MALLOC_POPPED:
        /* The first malloc of a class refills its empty bin from the
         * slabs and tags the object it pops. */
        shm_fault_at = f->point;
        (void) heap_malloc(h, SMALL);
        break;
    case FAULT_GIVE_BACK_CUT:
        alloc_free(h, 100, SMALL, 0);
        shm_fault_at = f->point;
        heap_thread_flush(h); /* the bin's bundles to the recycler */
        break;
    case FAULT_DRAIN_POPPED:
        /* The heap is full and this class has no slab: the refill empties
         * the recyclers (the parent left bundles of SMALL there). */
        shm_fault_at = f->point;
        (void) heap_malloc(h, 1024);
        break;
    case FAULT_TRIM_DRAIN_NOTED:
    case FAULT_TRIM_DRAIN_POPPED:
    case FAULT_TRIM_DRAIN_HANDED:
    case FAULT_TRIM_DRAIN_RETURNED:
        /* A trim empties the recyclers (the parent filled one) through a
         * slot claimed for the drain, as the daemon's trim does. */
        shm_fault_at = f->point;
        (void) heap_trim(h, 0, NULL);
        break;
    case FAULT_VERIFY_NOTED:
    case FAULT_VERIFY_POPPED:
    case FAULT_VERIFY_HELD:
    case FAULT_VERIFY_CUT:
    case FAULT_VERIFY_PUSH_NOTED:
    case FAULT_VERIFY_PUSHED: {
        struct verify_report rep;

        /* verify holds the recyclers' bundles (the parent filled one) in
         * a slot claimed for its walk, and every other slot (the parent's
         * too: a dead thief it takes back, tcache.c). */
        shm_fault_at = f->point;
        (void) heap_verify(h, &rep);
        break;
    }
    default:
        break;
    }
}

static int fault_child(void *arg, unsigned idx)
{
    struct fctx *f = arg;
    struct heap *h = th_attach_child(f->t, 100 + idx);

    child_blocks(f, h);
    child_runs(f, h);
    child_cache(f, h);
    fprintf(stderr, "fault child: point %d was not reached\n", f->point);
    return 3;
}

/* ---- the parent's part ---- */

static bool point_wants_no_recycler(int point)
{
    return point == FAULT_RETURN_MID || point == FAULT_RETURN_LAST_NOTED;
}

/* Allocates and frees through the locks (mixed sizes, large ones too). */
static bool use_heap(struct heap *h, unsigned who)
{
    enum { N = 120 };
    void *p[N];
    size_t sz[N];
    uint64_t rng = 0xfa17 + who;
    bool ok = true;

    for (unsigned i = 0; i < N; i++) {
        sz[i] = i % 3 ? SMALL : mp_rand_size(&rng, 30);
        p[i] = heap_malloc(h, sz[i]);
        if (!p[i]) {
            fprintf(stderr, "use_heap: heap_malloc(%zu) failed\n", sz[i]);
            for (unsigned k = 0; k < i; k++)
                heap_free(h, p[k]);
            return false;
        }
        mp_fill(p[i], sz[i], mp_tag(who, 0, i));
    }
    for (unsigned i = 0; i < N; i++) {
        if (mp_check(p[i], sz[i], mp_tag(who, 0, i)) != SIZE_MAX)
            ok = false;
        heap_free(h, p[i]);
    }
    heap_thread_flush(h);
    return ok;
}

static int recover_child(void *arg, unsigned idx)
{
    struct fctx *f = arg;
    struct heap *h = th_attach_child(f->t, 500 + idx);
    bool ok = use_heap(h, 2);

    heap_thread_flush(h);
    heap_detach(h);
    return ok ? 0 : 1;
}

/* Bundles of SMALL in the recycler, then every free block taken by a
 * one-block large object (no allocation fails, which would drain the
 * recyclers here). */
static void fill_heap(struct fctx *f, struct heap *h)
{
    struct heap_stats st;
    uint64_t nfree = 0;
    void *p[200];

    for (unsigned i = 0; i < 200; i++)
        ck_assert_ptr_nonnull(p[i] = heap_malloc(h, SMALL));
    for (unsigned i = 0; i < 200; i++)
        heap_free(h, p[i]);
    heap_thread_flush(h);
    ck_assert_int_eq(heap_stats(h, &st), 0);
    for (uint32_t i = 0; i < st.nsegments; i++)
        nfree += st.segs[i].free_blocks;
    f->big = calloc(nfree, sizeof(*f->big));
    ck_assert_ptr_nonnull(f->big);
    for (f->nbig = 0; f->nbig < nfree; f->nbig++)
        ck_assert_ptr_nonnull(f->big[f->nbig] = heap_malloc(h, 32 * KiB + 1));
    ck_assert_uint_gt(load_relaxed(&h->ctl->rec[sizeclass_of(SMALL)].nbundles), 0);
}

static void setup(struct fctx *f)
{
    struct heap *h = f->t->h;

    f->keep = NULL;
    f->nkeep = 0;
    f->big = NULL;
    f->nbig = 0;
    f->pool = 0;
    switch (f->point) {
    case FAULT_DECOMMIT_MID:
        ck_assert(use_heap(h, 1)); /* committed empty blocks for the trim */
        break;
    case FAULT_PUNCH_MID:
    case FAULT_PUNCH_RESERVE_MID:
    case FAULT_PUNCH_RESTORE_MID: {
        void **all = calloc(SPARSE_N, sizeof(*all));

        /* One 64-byte object kept in 256: whole free pages inside slabs. */
        f->keep = calloc(SPARSE_N / 256, sizeof(*f->keep));
        ck_assert(all && f->keep);
        for (unsigned i = 0; i < SPARSE_N; i++) {
            all[i] = heap_malloc(h, SMALL);
            ck_assert_ptr_nonnull(all[i]);
        }
        for (unsigned i = 0; i < SPARSE_N; i++) {
            if (i % 256 == 0) {
                f->keep[f->nkeep] = all[i];
                mp_fill(all[i], SMALL, mp_tag(7, 0, f->nkeep));
                f->nkeep++;
            } else {
                heap_free(h, all[i]);
            }
        }
        free(all);
        heap_thread_flush(h);
        break;
    }
    case FAULT_POOL_GROW_CLAIMED:
    case FAULT_POOL_GROW_LINKED:
        ck_assert_int_eq(heap_pool_create(h, POOL_OBJ, &f->pool), 0);
        break;
    case FAULT_POOL_DESTROY_MID:
        ck_assert_int_eq(heap_pool_create(h, POOL_OBJ, &f->pool), 0);
        for (unsigned i = 0; i < 3 * POOL_PER_CHK; i++) /* four chunks */
            ck_assert_ptr_nonnull(heap_pool_alloc(h, f->pool));
        break;
    case FAULT_DRAIN_POPPED:
        fill_heap(f, h);
        break;
    case FAULT_POP_NOTED:
    case FAULT_REFILL_POPPED:
    case FAULT_REFILL_DELIVERED:
    case FAULT_TRIM_DRAIN_NOTED:
    case FAULT_TRIM_DRAIN_POPPED:
    case FAULT_TRIM_DRAIN_HANDED:
    case FAULT_TRIM_DRAIN_RETURNED:
    case FAULT_VERIFY_NOTED:
    case FAULT_VERIFY_POPPED:
    case FAULT_VERIFY_HELD:
    case FAULT_VERIFY_CUT:
    case FAULT_VERIFY_PUSH_NOTED:
    case FAULT_VERIFY_PUSHED: {
        void *p[200];

        for (unsigned i = 0; i < 200; i++)
            ck_assert_ptr_nonnull(p[i] = heap_malloc(h, SMALL));
        for (unsigned i = 0; i < 200; i++)
            heap_free(h, p[i]);
        heap_thread_flush(h); /* into the recycler */
        ck_assert_uint_gt(load_relaxed(&h->ctl->rec[sizeclass_of(SMALL)].nbundles), 0);
        break;
    }
    default:
        break;
    }
}

/* What the parent still holds goes; a pool the child was growing must
 * still work, one it was destroying must be gone. */
static void cleanup(struct fctx *f)
{
    struct heap *h = f->t->h;

    for (size_t i = 0; i < f->nkeep; i++) {
        ck_assert_msg(mp_check(f->keep[i], SMALL, mp_tag(7, 0, i)) == SIZE_MAX,
                      "point %d: kept object %zu overwritten", f->point, i);
        heap_free(h, f->keep[i]);
    }
    free(f->keep);
    f->keep = NULL;
    f->nkeep = 0;
    if (f->point == FAULT_POOL_GROW_CLAIMED || f->point == FAULT_POOL_GROW_LINKED) {
        for (unsigned i = 0; i < 2 * POOL_PER_CHK; i++)
            ck_assert_msg(heap_pool_alloc(h, f->pool) != NULL, "point %d: pool alloc %u", f->point,
                          i);
        ck_assert_int_eq(heap_pool_destroy(h, f->pool), 0);
    } else if (f->point == FAULT_POOL_DESTROY_MID) {
        ck_assert_int_eq(heap_pool_destroy(h, f->pool), -EINVAL);
    }
}

static const char *const point_names[FAULT_COUNT] = {
        [FAULT_TAKE_MID] = "TAKE_MID",
        [FAULT_RETURN_MID] = "RETURN_MID",
        [FAULT_CARVE_MID] = "CARVE_MID",
        [FAULT_DECOMMIT_MID] = "DECOMMIT_MID",
        [FAULT_PUNCH_MID] = "PUNCH_MID",
        [FAULT_PUNCH_RESERVE_MID] = "PUNCH_RESERVE_MID",
        [FAULT_PUNCH_RESTORE_MID] = "PUNCH_RESTORE_MID",
        [FAULT_COMMIT_COUNT_MID] = "COMMIT_COUNT_MID",
        [FAULT_RUN_CLAIM_MID] = "RUN_CLAIM_MID",
        [FAULT_RUN_FREE_JOURNALED] = "RUN_FREE_JOURNALED",
        [FAULT_RUN_FREE_MID] = "RUN_FREE_MID",
        [FAULT_ARENA_CLAIMED] = "ARENA_CLAIMED",
        [FAULT_ARENA_HEADER] = "ARENA_HEADER",
        [FAULT_POOL_CLAIMED] = "POOL_CLAIMED",
        [FAULT_POOL_HEADER] = "POOL_HEADER",
        [FAULT_POOL_GROW_CLAIMED] = "POOL_GROW_CLAIMED",
        [FAULT_POOL_GROW_LINKED] = "POOL_GROW_LINKED",
        [FAULT_POOL_DESTROY_MID] = "POOL_DESTROY_MID",
        [FAULT_REFILL_POPPED] = "REFILL_POPPED",
        [FAULT_REFILL_DELIVERED] = "REFILL_DELIVERED",
        [FAULT_FLUSH_CUT] = "FLUSH_CUT",
        [FAULT_FLUSH_PUSHED] = "FLUSH_PUSHED",
        [FAULT_GIVE_BACK_CUT] = "GIVE_BACK_CUT",
        [FAULT_TAKE_DELIVERED] = "TAKE_DELIVERED",
        [FAULT_DRAIN_POPPED] = "DRAIN_POPPED",
        [FAULT_POP_NOTED] = "POP_NOTED",
        [FAULT_PUSH_NOTED] = "PUSH_NOTED",
        [FAULT_FREE_TAGGED] = "FREE_TAGGED",
        [FAULT_MALLOC_TAGGED] = "MALLOC_TAGGED",
        [FAULT_MALLOC_POPPED] = "MALLOC_POPPED",
        [FAULT_RETURN_LAST_NOTED] = "RETURN_LAST_NOTED",
        [FAULT_TRIM_DRAIN_NOTED] = "TRIM_DRAIN_NOTED",
        [FAULT_TRIM_DRAIN_POPPED] = "TRIM_DRAIN_POPPED",
        [FAULT_TRIM_DRAIN_HANDED] = "TRIM_DRAIN_HANDED",
        [FAULT_TRIM_DRAIN_RETURNED] = "TRIM_DRAIN_RETURNED",
        [FAULT_VERIFY_NOTED] = "VERIFY_NOTED",
        [FAULT_VERIFY_POPPED] = "VERIFY_POPPED",
        [FAULT_VERIFY_HELD] = "VERIFY_HELD",
        [FAULT_VERIFY_CUT] = "VERIFY_CUT",
        [FAULT_VERIFY_PUSH_NOTED] = "VERIFY_PUSH_NOTED",
        [FAULT_VERIFY_PUSHED] = "VERIFY_PUSHED",
};

static unsigned fault_rounds(void)
{
    const char *soak = getenv("SHMHEAP_SOAK");

    return soak && strcmp(soak, "1") == 0 ? 50 : (unsigned) test_scaled(3, 3);
}

/* Kills a child at point, `rounds` times; returns the exact-count checks
 * done (each one passed, or the test has failed). */
static unsigned run_point(int point, unsigned rounds)
{
    struct shm_config cfg;
    struct test_heap t;
    struct fctx f = {.t = &t, .point = point};
    unsigned exact = 0;

    th_config(&cfg, UINT64_C(256) << 20);
    cfg.retain_empty_blocks = 0;
    if (point_wants_no_recycler(point))
        cfg.recycler_cap_bundles = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    for (unsigned round = 0; round < rounds; round++) {
        struct heap_stats st;
        char what[96];
        bool counts = false;

        f.round = round;
        (void) snprintf(what, sizeof(what), "fault point %d (%s), round %u", point,
                        point_names[point], round);
        setup(&f);
        mp_wait_signaled(mp_fork(fault_child, &f, round), SIGKILL, what);
        /* Room again for the recovery's allocations. */
        for (size_t i = 0; i < f.nbig; i++)
            heap_free(t.h, f.big[i]);
        free(f.big);
        f.big = NULL;
        f.nbig = 0;
        /* Who goes through the locks the child may have held first: the
         * parent's allocations, another child's, or the reclaim itself
         * (then the dead one's cache is drained by the same process that
         * recovers its locks). */
        if (round % 3 == 1)
            mp_wait_ok(mp_fork(recover_child, &f, round), what);
        else if (round % 3 == 0)
            ck_assert_msg(use_heap(t.h, 1), "%s: the parent could not use the heap", what);
        if (round % 3 != 2) {
            ck_assert_msg(mp_verify(t.h, &counts), "%s: inconsistent before the reclaim", what);
            ck_assert_msg(counts, "%s: the object count skipped before the reclaim", what);
            exact++;
        }
        /* What the daemon does for a client that died: its SESSION arenas,
         * then its caches and what it never shared. */
        ck_assert_int_ge(heap_arena_destroy_session(t.h, 100 + round), 0);
        ck_assert_int_ge(heap_reclaim_dead(t.h), 0);
        if (round % 3 == 2)
            ck_assert_msg(use_heap(t.h, 1), "%s: the parent could not use the heap", what);
        ck_assert_msg(mp_verify(t.h, &counts), "%s: inconsistent after the reclaim", what);
        ck_assert_msg(counts, "%s: the object count skipped after the reclaim", what);
        exact++;
        cleanup(&f);
        heap_thread_flush(t.h);
        ck_assert_int_eq(heap_trim(t.h, 0, NULL), 0);
        ck_assert_msg(mp_verify(t.h, &counts) && counts, "%s: after the full free and trim", what);
        exact++;
        ck_assert_int_eq(heap_stats(t.h, &st), 0);
        ck_assert_msg(st.allocs == st.frees, "%s: %" PRIu64 " allocations, %" PRIu64 " frees", what,
                      st.allocs, st.frees);
        ck_assert_msg(st.bytes_in_use == 0, "%s: %" PRIu64 " bytes in use", what, st.bytes_in_use);
        ck_assert_uint_eq(st.lost_objects, 0);
        ck_assert_uint_eq(st.bad_frees, 0);
        ck_assert_uint_eq(st.double_frees, 0);
        ck_assert_msg(mp_blocks_not_free(t.h) == 0, "%s: %" PRIu64 " blocks leaked", what,
                      mp_blocks_not_free(t.h));
    }
    th_destroy(&t);
    return exact;
}

START_TEST(faults_every_point)
{
    unsigned rounds = fault_rounds(), hit = 0, exact = 0;

    for (int p = FAULT_NONE + 1; p < FAULT_COUNT; p++) {
        ck_assert_msg(point_names[p] != NULL, "fault point %d has no case in this test", p);
        exact += run_point(p, rounds);
        hit++;
        fprintf(stderr, "fault point %2d %-20s hit %u/%u, recovered %u/%u\n", p, point_names[p],
                rounds, rounds, rounds, rounds);
    }
    fprintf(stderr,
            "faults: %u points, %u kills, 0 lost objects, 0 leaked blocks, 0 verify failures, "
            "%u exact-count checks\n",
            hit, hit * rounds, exact);
    ck_assert_uint_eq(hit, FAULT_COUNT - 1);
}
END_TEST

Suite *faults_suite(void)
{
    Suite *s = suite_create("faults");
    TCase *tc = tcase_create("every_point");

    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, faults_every_point);
    suite_add_tcase(s, tc);
    return s;
}
