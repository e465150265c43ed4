/* The automatic trim policy (daemon/decay.c) against a real shmheapd and
 * real clients: memory idle longer than decay_ms goes back with no trim
 * requested, a workload that breathes faster than decay_ms keeps its
 * working set (no refault cycle), decay_ms changes live, memory pressure
 * (PSI, read from a file in the kernel's format) releases down to the live
 * bytes, and the policy never touches a live object: idle threads'
 * caches, a kill storm. Every test ends with the daemon's `verify`.
 *
 * The waits are generous bounded waits for a condition, never timing
 * assertions. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shmheap.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

#define MiB (UINT64_C(1) << 20)

static struct daemon_fixture fx;

static uint64_t ju64(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    return cJSON_IsNumber(v) ? (uint64_t) v->valuedouble : 0;
}

/* A snapshot of the stats reply's figures a test looks at. */
struct look {
    uint64_t committed, in_use, trims, trim_gen;
    uint64_t releases, released, floor, overhead, peak, held, caches_flushed, under_pressure;
    uint64_t ticks;
    bool enabled, psi_available;
    char state[40];
};

static struct look look(void)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"stats\"}");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(r, "stats");
    const cJSON *dc = cJSON_GetObjectItemCaseSensitive(st, "decay");
    const cJSON *state = cJSON_GetObjectItemCaseSensitive(dc, "state");
    struct look l = {0};

    ck_assert_msg(reply_is_ok(r) && cJSON_IsObject(dc), "stats has no decay object");
    l.committed = ju64(st, "bytes_committed");
    l.in_use = ju64(st, "bytes_in_use");
    l.trims = ju64(st, "trims");
    l.trim_gen = ju64(st, "trim_gen");
    l.releases = ju64(dc, "releases");
    l.released = ju64(dc, "released_bytes");
    l.floor = ju64(dc, "floor_bytes");
    l.overhead = ju64(dc, "overhead_bytes");
    l.peak = ju64(dc, "window_peak_bytes");
    l.held = ju64(dc, "held_bytes");
    l.caches_flushed = ju64(dc, "caches_flushed");
    l.ticks = ju64(dc, "ticks");
    l.under_pressure = ju64(dc, "under_pressure");
    l.enabled = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(dc, "enabled"));
    l.psi_available = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(dc, "psi_available"));
    ck_assert(cJSON_IsString(state));
    snprintf(l.state, sizeof(l.state), "%s", state->valuestring);
    cJSON_Delete(r);
    return l;
}

static void set_key(const char *key, const char *value)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"config.set\",\"key\":\"%s\",\"value\":%s}", key, value);

    ck_assert_msg(reply_is_ok(r), "config.set %s: %s", key, reply_error_message(r));
    cJSON_Delete(r);
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

/* The committed bytes the policy may keep once the peak has left its
 * window: overhead, live bytes with the margin, retained blocks, and a
 * little for pages of slabs that hold live objects. */
static uint64_t settled_bound(const struct look *l, unsigned retain_percent, unsigned retain_blocks)
{
    return l->overhead + l->in_use * (100 + retain_percent) / 100 +
           (uint64_t) retain_blocks * 65536 + 2 * MiB;
}

/* The figures of a tick that began after this call: the state and the
 * held bytes describe the heap as the last tick saw it, so a look right
 * after a change may still show the tick before it. */
static struct look look_next_tick(void)
{
    uint64_t end = now_ms() + (uint64_t) daemon_test_ms(5000);
    struct look l = look();
    uint64_t first = l.ticks;

    /* Two ticks: the first may have sampled the heap before the change. */
    while (l.ticks < first + 2) {
        ck_assert_msg(now_ms() < end, "the policy did not tick (ticks %" PRIu64 ")", l.ticks);
        mp_sleep_ms(10);
        l = look();
    }
    return l;
}

/* Waits up to timeout_ms for committed to fall to settled_bound() and for
 * the release that did it to be counted (the pages go before the release
 * job reports to the loop). */
static bool
wait_settled(struct look *l, unsigned retain_percent, unsigned retain_blocks, unsigned timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t) daemon_test_ms((int) timeout_ms);

    for (;;) {
        *l = look();
        if (l->committed <= settled_bound(l, retain_percent, retain_blocks) && l->releases > 0 &&
            strcmp(l->state, "releasing") != 0)
            return true;
        if (now_ms() > end)
            return false;
        mp_sleep_ms(20);
    }
}

/* A working set: n large objects of `large` bytes and m small ones of
 * `small` bytes, every page touched. */
struct wset {
    unsigned n, m;
    size_t large, small;
    void **p;
};

static void wset_alloc(shmheap_t *h, struct wset *w, uint64_t tag)
{
    if (!w->p)
        w->p = calloc(w->n + w->m, sizeof(*w->p));
    ck_assert_ptr_nonnull(w->p);
    for (unsigned i = 0; i < w->n + w->m; i++) {
        size_t sz = i < w->n ? w->large : w->small;

        w->p[i] = shmheap_malloc(h, sz);
        ck_assert_msg(w->p[i], "malloc %zu", sz);
        for (size_t o = 0; o < sz; o += 4096)
            ((volatile char *) w->p[i])[o] = (char) tag;
        mp_fill_sparse(w->p[i], sz, mp_tag(5, (unsigned) tag, i));
    }
}

static void wset_free(shmheap_t *h, struct wset *w, uint64_t tag)
{
    for (unsigned i = 0; i < w->n + w->m; i++) {
        size_t sz = i < w->n ? w->large : w->small;

        ck_assert_msg(mp_check_sparse(w->p[i], sz, mp_tag(5, (unsigned) tag, i)),
                      "object %u of the working set damaged", i);
        shmheap_free(h, w->p[i]);
        w->p[i] = NULL;
    }
}

static long minflt(void)
{
    struct rusage ru;

    ck_assert_int_eq(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_minflt;
}

/* ---- peak, then idle ---- */

START_TEST(decay_peak_then_idle)
{
    struct wset peak = {.n = 160, .m = 8192, .large = 256 << 10, .small = 1000};
    struct wset live = {.n = 16, .m = 0, .large = 256 << 10};
    struct look before, l;
    uint64_t t0;
    shmheap_t *h;

    fixture_start(&fx, "\"decay_ms\": 300, \"decay_retain_percent\": 25");
    h = fixture_attach(&fx);
    before = look();
    ck_assert(before.enabled);
    wset_alloc(h, &live, 1);
    wset_alloc(h, &peak, 2);
    l = look();
    ck_assert_uint_ge(l.committed, 40 * MiB);
    wset_free(h, &peak, 2);
    t0 = now_ms();
    /* The small objects this thread freed sit in its cache, which it no
     * longer uses: the policy drains it as an idle thread's. */
    ck_assert_msg(wait_settled(&l, 25, 16, 300 + 1000 + 10000),
                  "committed %" PRIu64 " bytes %" PRIu64 " ms after the free, live %" PRIu64
                  ", floor %" PRIu64 ", state %s",
                  l.committed, now_ms() - t0, l.in_use, l.floor, l.state);
    fprintf(stderr,
            "decay_peak_then_idle: committed %" PRIu64 " KiB (live %" PRIu64
            " KiB, overhead %" PRIu64 " KiB) %" PRIu64 " ms after the free, %" PRIu64 " releases\n",
            l.committed >> 10, l.in_use >> 10, l.overhead >> 10, now_ms() - t0, l.releases);
    ck_assert_uint_gt(l.releases, before.releases);
    ck_assert_uint_gt(l.released, 0);
    /* No trim was asked for. */
    ck_assert_uint_eq(l.trims, before.trims);
    ck_assert_uint_eq(l.trim_gen, before.trim_gen);
    /* The live objects are intact. */
    wset_free(h, &live, 1);
    free(peak.p);
    free(live.p);
    shmheap_detach(h);
    fixture_finish(&fx);
}
END_TEST

/* ---- a workload that breathes ---- */

START_TEST(decay_breathing_keeps_working_set)
{
    struct wset w = {.n = 64, .m = 2048, .large = 256 << 10, .small = 1000};
    unsigned breaths = (unsigned) test_scaled(15, 2), decay_ms = 1000;
    uint64_t releases_start, committed_low = UINT64_MAX, committed_first;
    long faults_first, faults_rest;
    struct look l;
    shmheap_t *h;

    fixture_start(&fx, "\"decay_ms\": 1000");
    h = fixture_attach(&fx);
    /* The first breath commits the working set and faults its pages. */
    faults_first = minflt();
    wset_alloc(h, &w, 0);
    faults_first = minflt() - faults_first;
    mp_sleep_ms(100);
    wset_free(h, &w, 0);
    l = look();
    releases_start = l.releases;
    committed_first = l.committed;
    /* Then a breath every 200 ms: allocate, touch, hold 100 ms, free,
     * rest 100 ms, for longer than decay_ms. */
    faults_rest = minflt();
    for (unsigned b = 1; b < breaths; b++) {
        wset_alloc(h, &w, b);
        mp_sleep_ms(100);
        wset_free(h, &w, b);
        l = look();
        if (l.committed < committed_low)
            committed_low = l.committed;
        mp_sleep_ms(100);
    }
    faults_rest = minflt() - faults_rest;
    l = look();
    fprintf(stderr,
            "decay_breathing: %u breaths of %" PRIu64 " KiB: first faulted %ld pages, the "
            "other %u %ld; releases while breathing %" PRIu64 ", committed after the first %" PRIu64
            " KiB, lowest between breaths %" PRIu64 " KiB\n",
            breaths, (uint64_t) (w.n * w.large + w.m * w.small) >> 10, faults_first, breaths - 1,
            faults_rest, l.releases - releases_start, committed_first >> 10, committed_low >> 10);
    /* No refault cycle: nothing was released between breaths, and the
     * later breaths found their pages committed. */
    ck_assert_msg(l.releases == releases_start,
                  "the policy released %" PRIu64 " times between breaths",
                  l.releases - releases_start);
    ck_assert_msg(committed_low + 2 * MiB >= committed_first,
                  "committed fell between breaths: %" PRIu64 " -> %" PRIu64, committed_first,
                  committed_low);
    /* Per breath, a refault would cost what the first breath did; allow
     * a quarter of it for the runtime's own pages (sanitizers). */
    ck_assert_msg((uint64_t) faults_rest / (breaths - 1) < (uint64_t) faults_first / 4,
                  "the later %u breaths faulted %ld pages, the first %ld", breaths - 1, faults_rest,
                  faults_first);
    l = look_next_tick();
    ck_assert_uint_eq(l.releases, releases_start);
    ck_assert_str_eq(l.state, "holding");
    ck_assert_uint_gt(l.held, 0);
    /* It stops: the working set goes back within decay_ms and a tick. */
    ck_assert_msg(wait_settled(&l, 25, 16, decay_ms + 1000 + 10000),
                  "committed %" PRIu64 " after the breathing stopped, floor %" PRIu64, l.committed,
                  l.floor);
    ck_assert_uint_gt(l.releases, releases_start);
    ck_assert_uint_eq(l.trims, 0);
    free(w.p);
    shmheap_detach(h);
    fixture_finish(&fx);
}
END_TEST

/* ---- decay_ms live ---- */

START_TEST(decay_ms_changes_live)
{
    struct wset w = {.n = 96, .m = 0, .large = 256 << 10};
    struct look l, held;
    shmheap_t *h;

    fixture_start(&fx, "\"decay_ms\": 600000");
    h = fixture_attach(&fx);
    wset_alloc(h, &w, 1);
    wset_free(h, &w, 1);
    /* Ten minutes of decay: the policy holds the peak. */
    mp_sleep_ms(1500);
    held = look_next_tick();
    ck_assert_uint_eq(held.releases, 0);
    ck_assert_str_eq(held.state, "holding");
    ck_assert_uint_ge(held.held, 20 * MiB);
    ck_assert_uint_ge(held.floor, held.committed);
    /* Shorter: at the next tick the old peak is out of the new window. */
    set_key("decay_ms", "100");
    ck_assert_msg(wait_settled(&l, 25, 16, 100 + 1000 + 10000),
                  "committed %" PRIu64 " after decay_ms went to 100, floor %" PRIu64 ", state %s",
                  l.committed, l.floor, l.state);
    ck_assert_uint_gt(l.releases, 0);
    ck_assert_uint_lt(l.committed, held.committed);
    /* 0 stops it: a new peak stays committed. */
    set_key("decay_ms", "0");
    l = look();
    ck_assert(!l.enabled);
    ck_assert_str_eq(l.state, "off");
    held = l;
    wset_alloc(h, &w, 2);
    wset_free(h, &w, 2);
    mp_sleep_ms(1000);
    l = look();
    ck_assert_uint_eq(l.releases, held.releases);
    ck_assert_uint_ge(l.committed, held.committed + 20 * MiB);
    /* Only a trim gives it back now. */
    ck_assert_int_eq(shmheap_trim(h, 100), 0);
    l = look();
    ck_assert_uint_eq(l.releases, held.releases);
    ck_assert_uint_lt(l.committed, held.committed + 20 * MiB);
    free(w.p);
    shmheap_detach(h);
    fixture_finish(&fx);
}
END_TEST

/* ---- memory pressure ---- */

static void write_psi(const char *path, const char *some_avg10)
{
    char tmp[256];
    FILE *f;

    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f,
            "some avg10=%s avg60=0.00 avg300=0.00 total=12345\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            some_avg10);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(rename(tmp, path), 0);
}

START_TEST(decay_pressure_releases_to_live)
{
    struct wset w = {.n = 96, .m = 0, .large = 256 << 10};
    struct wset live = {.n = 8, .m = 0, .large = 256 << 10};
    char dir[] = "/tmp/shmheap-psi-XXXXXX", path[128];
    const char *args[3] = {"--pressure-file", path, NULL};
    struct look l;
    shmheap_t *h;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/memory.pressure", dir);
    write_psi(path, "0.00");
    /* A long decay: only pressure can make it release soon. */
    fixture_start_args(&fx, "\"decay_ms\": 600000, \"decay_pressure_percent\": 10", args);
    h = fixture_attach(&fx);
    wset_alloc(h, &live, 1);
    wset_alloc(h, &w, 2);
    wset_free(h, &w, 2);
    mp_sleep_ms(1500);
    l = look();
    ck_assert(l.psi_available);
    ck_assert_uint_eq(l.under_pressure, 0);
    ck_assert_uint_eq(l.releases, 0);
    ck_assert_uint_ge(l.held, 20 * MiB);
    /* Pressure: down to the live bytes, no margin, no retained blocks. */
    write_psi(path, "42.50");
    ck_assert_msg(wait_settled(&l, 0, 0, 1000 + 10000),
                  "committed %" PRIu64 " under pressure, live %" PRIu64 ", floor %" PRIu64
                  ", state %s",
                  l.committed, l.in_use, l.floor, l.state);
    ck_assert_uint_eq(l.under_pressure, 1);
    ck_assert_uint_gt(l.releases, 0);
    ck_assert_uint_eq(l.trims, 0);
    wset_free(h, &live, 1);
    free(w.p);
    free(live.p);
    shmheap_detach(h);
    fixture_finish(&fx);
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

START_TEST(decay_no_psi_runs_on_time)
{
    const char *args[] = {"--pressure-file", "/nonexistent/pressure/memory", NULL};
    struct wset w = {.n = 64, .m = 0, .large = 256 << 10};
    struct look l;
    shmheap_t *h;

    fixture_start_args(&fx, "\"decay_ms\": 200", args);
    ck_assert(daemon_log_wait(&fx, "no memory pressure information", daemon_test_ms(5000)));
    h = fixture_attach(&fx);
    wset_alloc(h, &w, 1);
    wset_free(h, &w, 1);
    ck_assert(wait_settled(&l, 25, 16, 200 + 1000 + 10000));
    ck_assert(!l.psi_available);
    ck_assert_uint_gt(l.releases, 0);
    free(w.p);
    shmheap_detach(h);
    fixture_finish(&fx);
}
END_TEST

/* ---- the policy never touches a live object ---- */

struct sleeper {
    shmheap_t *h;
    int ready[2];
    volatile int go;
};

static void *sleeper_main(void *arg)
{
    struct sleeper *s = arg;
    void *v[2000];
    char c = 1;

    for (unsigned i = 0; i < 2000; i++) {
        v[i] = shmheap_malloc(s->h, 256);
        MP_REQUIRE(v[i], "malloc");
    }
    for (unsigned i = 0; i < 2000; i++)
        shmheap_free(s->h, v[i]);
    MP_REQUIRE(write(s->ready[1], &c, 1) == 1, "write");
    while (!__atomic_load_n(&s->go, __ATOMIC_ACQUIRE))
        mp_sleep_ms(10); /* idle, holding a full cache */
    for (unsigned i = 0; i < 2000; i++) {
        v[i] = shmheap_malloc(s->h, 256);
        MP_REQUIRE(v[i], "malloc after the drain");
        mp_fill(v[i], 256, mp_tag(2, 2, i));
    }
    for (unsigned i = 0; i < 2000; i++) {
        MP_REQUIRE(mp_check(v[i], 256, mp_tag(2, 2, i)) == SIZE_MAX, "object %u", i);
        shmheap_free(s->h, v[i]);
    }
    return NULL;
}

static uint64_t cached_of(shmheap_t *h, uint32_t object_size)
{
    struct shmheap_stats st;

    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    for (uint32_t i = 0; i < st.nclasses; i++)
        if (st.classes[i].object_size == object_size)
            return st.classes[i].cached;
    return 0;
}

START_TEST(decay_drains_idle_thread)
{
    struct wset live = {.n = 4, .m = 512, .large = 100000, .small = 256};
    struct sleeper s = {0};
    uint64_t end;
    struct look l;
    pthread_t th;
    char c;

    fixture_start(&fx, "\"decay_ms\": 200");
    s.h = fixture_attach(&fx);
    wset_alloc(s.h, &live, 3);
    ck_assert_int_eq(pipe(s.ready), 0);
    ck_assert_int_eq(pthread_create(&th, NULL, sleeper_main, &s), 0);
    ck_assert_int_eq(read(s.ready[0], &c, 1), 1);
    ck_assert_uint_gt(cached_of(s.h, 256), 0);
    /* Idle longer than decay_ms: its cache goes back, with no trim. */
    end = now_ms() + (uint64_t) daemon_test_ms(10000);
    do {
        mp_sleep_ms(20);
        l = look();
    } while (l.caches_flushed == 0 && now_ms() < end);
    ck_assert_msg(l.caches_flushed > 0, "no idle cache drained, state %s", l.state);
    ck_assert_uint_eq(cached_of(s.h, 256), 0);
    ck_assert_uint_eq(l.trims, 0);
    /* The thread wakes and works; the live objects are intact. */
    __atomic_store_n(&s.go, 1, __ATOMIC_RELEASE);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    wset_free(s.h, &live, 3);
    shmheap_thread_flush(s.h);
    l = look();
    ck_assert_uint_eq(l.in_use, 0);
    free(live.p);
    shmheap_detach(s.h);
    fixture_finish(&fx);
}
END_TEST

/* A child that allocates and frees in two threads until it is killed,
 * checking its objects' contents as it goes. */
static shmheap_t *storm_h;

static void *storm_thread(void *arg)
{
    uint64_t rng = (uint64_t) (uintptr_t) arg, seed = rng;
    shmheap_t *h = storm_h;
    void *live[64] = {0};
    size_t sizes[64] = {0};

    for (;;) {
        unsigned k = (unsigned) (test_rand(&rng) % 64);
        uint64_t tag = mp_tag((unsigned) seed, 0, k);

        if (live[k]) {
            MP_REQUIRE(mp_check_sparse(live[k], sizes[k], tag), "storm object %u damaged", k);
            shmheap_free(h, live[k]);
        }
        sizes[k] = mp_rand_size(&rng, 64);
        live[k] = shmheap_malloc(h, sizes[k]);
        if (live[k])
            mp_fill_sparse(live[k], sizes[k], tag);
    }
    return NULL;
}

static int storm_child(void *arg, unsigned idx)
{
    pthread_t th;

    (void) arg;
    MP_REQUIRE(shmheap_attach(fx.socket_path, &storm_h) == 0, "attach");
    MP_REQUIRE(pthread_create(&th, NULL, storm_thread, (void *) (uintptr_t) (idx * 2 + 7)) == 0,
               "pthread_create");
    storm_thread((void *) (uintptr_t) (idx * 2 + 8));
    return 0;
}

struct in_use_probe {
    uint64_t want, seen;
};

static bool in_use_settles(struct in_use_probe *p, unsigned timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t) daemon_test_ms((int) timeout_ms);

    for (;;) {
        struct look l = look();

        p->seen = l.in_use;
        if (p->seen == p->want)
            return true;
        if (now_ms() > end)
            return false;
        mp_sleep_ms(10);
    }
}

START_TEST(decay_kill_storm_keeps_live_objects)
{
    struct wset live = {.n = 8, .m = 1024, .large = 200000, .small = 700};
    unsigned rounds = (unsigned) test_scaled(40, 4);
    uint64_t rng = 99;
    struct in_use_probe p;
    struct look l;
    shmheap_t *h;

    /* An eager policy: a short decay, no margin, no retained blocks. */
    fixture_start(&fx, "\"decay_ms\": 20, \"decay_retain_percent\": 0, \"retain_empty_blocks\": 0, "
                       "\"max_segments\": 8");
    h = fixture_attach(&fx);
    wset_alloc(h, &live, 4);
    shmheap_thread_flush(h);
    p.want = look().in_use;
    for (unsigned i = 0; i < rounds; i++) {
        pid_t pid = mp_fork(storm_child, NULL, i);

        mp_sleep_us(20000 + (unsigned) (test_rand(&rng) % 60000));
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        mp_wait_signaled(pid, SIGKILL, "storm child");
        ck_assert_msg(in_use_settles(&p, 10000),
                      "round %u: %" PRIu64 " bytes in use, the survivors hold %" PRIu64, i, p.seen,
                      p.want);
        if (i % 8 == 7)
            fixture_verify(&fx);
    }
    l = look();
    fprintf(stderr, "decay_kill_storm: %u rounds, %" PRIu64 " releases (%" PRIu64 " KiB)\n", rounds,
            l.releases, l.released >> 10);
    ck_assert_msg(l.releases > 0, "the policy never released during the storm");
    ck_assert_uint_eq(l.trims, 0);
    fixture_verify(&fx);
    wset_free(h, &live, 4);
    shmheap_thread_flush(h);
    ck_assert_uint_eq(look().in_use, 0);
    free(live.p);
    shmheap_detach(h);
    fixture_finish(&fx);
}
END_TEST

/* ---- stats and the table ---- */

START_TEST(decay_stats_everywhere)
{
    char cmd[512], *out = NULL;
    const char *ctl = getenv("SHMHEAPCTL");
    size_t len = 0;
    FILE *f;

    fixture_start(&fx, "\"decay_ms\": 5000");
    mp_sleep_ms(800);
    snprintf(cmd, sizeof(cmd), "%s --socket %s stats --prometheus", ctl ? ctl : "build/shmheapctl",
             fx.socket_path);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(getdelim(&out, &len, 0, f), 0);
    ck_assert_int_eq(pclose(f), 0);
    ck_assert_msg(strstr(out, "\nshmheap_decay_floor_bytes "), "%s", out);
    ck_assert(strstr(out, "\nshmheap_decay_released_bytes_total "));
    ck_assert(strstr(out, "\nshmheap_decay_releases_total "));
    ck_assert(strstr(out, "\nshmheap_decay_window_peak_bytes "));
    ck_assert(strstr(out, "# TYPE shmheap_decay_released_bytes_total counter"));
    free(out);
    out = NULL;
    snprintf(cmd, sizeof(cmd), "%s --socket %s stats", ctl ? ctl : "build/shmheapctl",
             fx.socket_path);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(getdelim(&out, &len, 0, f), 0);
    ck_assert_int_eq(pclose(f), 0);
    ck_assert_msg(strstr(out, "automatic trim") && strstr(out, "floor kept"), "%s", out);
    free(out);
    fixture_finish(&fx);
}
END_TEST

Suite *decay_suite(void)
{
    Suite *s = suite_create("decay");
    TCase *t = tcase_create("decay");

    tcase_set_timeout(t, 120);
    tcase_add_test(t, decay_peak_then_idle);
    tcase_add_test(t, decay_breathing_keeps_working_set);
    tcase_add_test(t, decay_ms_changes_live);
    tcase_add_test(t, decay_pressure_releases_to_live);
    tcase_add_test(t, decay_no_psi_runs_on_time);
    tcase_add_test(t, decay_drains_idle_thread);
    tcase_add_test(t, decay_kill_storm_keeps_live_objects);
    tcase_add_test(t, decay_stats_everywhere);
    suite_add_tcase(s, t);
    return s;
}
