/* Adoption's recovery (shm/adopt.c: heap_adopt_recover): while no owner
 * runs, one client dies with private objects and a full cache, one dies
 * halfway through a decommit (its blocks BUSY), one dies holding a
 * segment lock mid-take. A new owner attaches and recovers: the lock is
 * repaired, the BUSY blocks, caches and private objects come back, the one
 * shared object stays, and the heap verifies consistent. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "shm/internal.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/mp/suites.h"

#define NPRIVATE 50

struct adopt_ctx {
    struct test_heap *t;
    uint64_t shared_off; /* in mp_shared_alloc memory: written by the first child */
    uint64_t shared_size;
};

/* Keeps NPRIVATE private objects and a large one, shares one, dies. */
static int private_child(void *arg, unsigned idx)
{
    struct adopt_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 10 + idx);
    void *p;

    for (unsigned i = 0; i < NPRIVATE; i++)
        MP_REQUIRE(heap_malloc(h, 100) != NULL, "heap_malloc");
    MP_REQUIRE(heap_malloc(h, 100000) != NULL, "heap_malloc(large)");
    for (unsigned i = 0; i < 20; i++) /* and a few free objects in its cache */
        heap_free(h, heap_malloc(h, 300));
    p = heap_malloc(h, 512);
    MP_REQUIRE(p != NULL, "heap_malloc");
    mp_fill(p, 512, mp_tag(1, 2, 3));
    c->shared_off = heap_to_off(h, p);
    c->shared_size = heap_usable_size(h, p);
    raise(SIGKILL);
    return 3;
}

/* Dies halfway through the decommit of its trim. */
static int decommit_child(void *arg, unsigned idx)
{
    struct adopt_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 10 + idx);

    heap_free(h, heap_malloc(h, 1 << 20)); /* committed blocks, free again */
    shm_fault_at = FAULT_DECOMMIT_MID;
    (void) heap_trim(h, 0, NULL);
    return 3;
}

/* Dies holding a segment lock, objects half taken from a slab. */
static int take_child(void *arg, unsigned idx)
{
    struct adopt_ctx *c = arg;
    struct heap *h = th_attach_child(c->t, 10 + idx);

    shm_fault_at = FAULT_TAKE_MID;
    (void) heap_malloc(h, 2048);
    return 3;
}

START_TEST(adopt_recovers_deaths)
{
    struct shm_config cfg;
    struct test_heap t;
    struct adopt_ctx *c = mp_shared_alloc(sizeof(*c));
    struct heap_adopt_report *rep = calloc(1, sizeof(*rep));
    struct heap_stats st;
    struct heap *h;
    void *p;

    heap_config_default(&cfg);
    cfg.segment_size = UINT64_C(256) << 20;
    cfg.recycler_cap_bundles = 0;
    cfg.retain_empty_blocks = 0;
    th_create(&t, &cfg, SHM_PAGES_OFF);
    c->t = &t;
    /* The first owner goes (as a daemon that stops): only the fds stay. */
    heap_detach(t.h);
    t.h = NULL;
    mp_wait_signaled(mp_fork(private_child, c, 0), SIGKILL, "private child");
    mp_wait_signaled(mp_fork(decommit_child, c, 1), SIGKILL, "decommit child");
    mp_wait_signaled(mp_fork(take_child, c, 2), SIGKILL, "take child");

    /* The new owner. */
    ck_assert_int_eq(heap_local_attach(t.local, 0, &h), 0);
    t.h = h;
    ck_assert_int_eq(heap_adopt_recover(h, rep), 0);
    ck_assert_uint_eq(rep->segments, 1);
    ck_assert_uint_eq(rep->clients_gone, 3);
    ck_assert_uint_ge(rep->slots_reclaimed, 2); /* the private and the take child's caches */
    ck_assert_uint_eq(rep->owned_objects, NPRIVATE + 1);
    ck_assert_uint_ge(rep->max_client_id, 12);
    for (uint32_t i = 0; i < rep->nclients; i++)
        ck_assert_msg(!rep->clients[i].alive || rep->clients[i].client_id == 1,
                      "client %" PRIu64 " listed alive", rep->clients[i].client_id);
    th_verify(h);
    ck_assert_int_eq(heap_stats(h, &st), 0);
    ck_assert_uint_eq(st.bytes_in_use, c->shared_size);
    /* The shared object survived its creator, intact. */
    p = heap_from_off(h, c->shared_off);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(mp_check(p, 512, mp_tag(1, 2, 3)), SIZE_MAX);
    heap_free(h, p);
    heap_thread_flush(h);
    ck_assert_int_eq(heap_stats(h, &st), 0);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    ck_assert_uint_eq(mp_blocks_not_free(h), 0); /* BUSY blocks reaped too */
    th_verify(h);
    free(rep);
    th_destroy(&t);
    mp_shared_free(c, sizeof(*c));
}
END_TEST

Suite *adopt_suite(void)
{
    Suite *s = suite_create("adopt");
    TCase *tc = tcase_create("adopt");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, adopt_recovers_deaths);
    suite_add_tcase(s, tc);
    return s;
}
