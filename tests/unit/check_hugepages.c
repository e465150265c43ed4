/* Unit tests for huge page segments (shm/ctl.c, segment.c, os.c): a heap on
 * 2 MiB pages works and says so, SHM_PAGES_AUTO picks the largest size
 * that has free pages and falls back to 4 KiB when none has, a policy whose
 * pages are all taken is -ENOMEM (not SIGBUS), and a heap that runs out of
 * huge pages while allocating returns NULL/ENOMEM (never SIGBUS).
 *
 * The 2 MiB pool: tests use the free pages there are. As root they size
 * the pool themselves (nr_hugepages = pages in use + the number they
 * want free), always in the same way: the test process resizes the pool,
 * forks a worker that does the heap work, waits for it, and only then puts
 * the pool back, before it asserts anything (a failed ck_assert ends the
 * process at once, so nothing after it would run). The worker reports
 * through its exit status; a worker killed by SIGBUS is a failure of its
 * own. Without root and without enough free pages a test prints why it is
 * skipped and passes. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/heap.h"
#include "shm/local.h"
#include "tests/common/testheap.h"
#include "tests/unit/suites.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

#define HP2M_DIR "/sys/kernel/mm/hugepages/hugepages-2048kB"
#define HP1G_DIR "/sys/kernel/mm/hugepages/hugepages-1048576kB"

/* Exit statuses of a worker. */
#define WORKER_OK   0
#define WORKER_FAIL 1
#define WORKER_SKIP 77

static long read_long(const char *path)
{
    char buf[64];
    long v;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    (void) close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    if (sscanf(buf, "%ld", &v) != 1)
        return -1;
    return v;
}

/* A /proc/meminfo field, in its own unit (pages or kB); -1 if absent. */
static long meminfo(const char *field)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char line[128];
    size_t len = strlen(field);
    long v = -1;

    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, len) == 0 && line[len] == ':') {
            v = strtol(line + len + 1, NULL, 10);
            break;
        }
    (void) fclose(f);
    return v;
}

/* The 2 MiB pool: the per-size sysfs files if there are, else /proc (when 2 MiB is the
 * default huge page size). */
struct pool2m {
    long total, free, rsvd, surplus;
};

static bool default_is_2m(void)
{
    return meminfo("Hugepagesize") == 2048;
}

static bool pool_read(struct pool2m *p)
{
    if (access(HP2M_DIR, F_OK) == 0) {
        p->total = read_long(HP2M_DIR "/nr_hugepages");
        p->free = read_long(HP2M_DIR "/free_hugepages");
        p->rsvd = read_long(HP2M_DIR "/resv_hugepages");
        p->surplus = read_long(HP2M_DIR "/surplus_hugepages");
    } else if (default_is_2m()) {
        p->total = read_long("/proc/sys/vm/nr_hugepages");
        p->free = meminfo("HugePages_Free");
        p->rsvd = meminfo("HugePages_Rsvd");
        p->surplus = meminfo("HugePages_Surp");
    } else {
        return false;
    }
    return p->total >= 0 && p->free >= 0 && p->rsvd >= 0;
}

/* Pages a new heap can take now. */
static long pool_available(void)
{
    struct pool2m p;

    if (!pool_read(&p))
        return 0;
    return p.free > p.rsvd ? p.free - p.rsvd : 0;
}

static long free_1g(void)
{
    long v = read_long(HP1G_DIR "/free_hugepages");

    return v < 0 ? 0 : v;
}

static const char *pool_path(void)
{
    return access(HP2M_DIR, F_OK) == 0 ? HP2M_DIR "/nr_hugepages" : "/proc/sys/vm/nr_hugepages";
}

static bool pool_write(long total)
{
    char buf[32];
    int fd = open(pool_path(), O_WRONLY | O_CLOEXEC);
    int n = snprintf(buf, sizeof(buf), "%ld\n", total);
    bool ok;

    if (fd < 0)
        return false;
    ok = write(fd, buf, (size_t) n) == n;
    (void) close(fd);
    return ok;
}

static bool can_resize(void)
{
    return geteuid() == 0 && access(pool_path(), W_OK) == 0;
}

static void note(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "hugepages: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* Checked-fixture teardown: a second line of defence that puts the pool back if a test left
 * it resized (it runs only when the test body returns). */
static long saved_total = -1;

static void pool_teardown(void)
{
    if (saved_total >= 0) {
        (void) pool_write(saved_total);
        saved_total = -1;
    }
}

/* Runs fn in a worker process with `want` 2 MiB pages available (want < 0: whatever there
 * is). Returns the worker's exit status (128 + signal if killed), or WORKER_SKIP, with a note,
 * when the pool cannot be made so. */
static int with_pool(long want, int (*fn)(void *), void *arg, const char *what)
{
    struct pool2m p;
    bool resized = false;
    long avail = pool_available();
    pid_t pid;
    int status;

    if (want >= 0 && avail != want) {
        if (!can_resize() || !pool_read(&p)) {
            note("%s: skipped: runs with %ld free 2 MiB pages, %ld are free, and the pool "
                 "cannot be resized (not root, or no 2 MiB huge pages)",
                 what, want, avail);
            return WORKER_SKIP;
        }
        /* In use = total - free, reserved pages are free but promised: keep them. */
        saved_total = p.total;
        if (!pool_write(p.total - p.free + p.rsvd + want)) {
            note("%s: skipped: cannot write %s: %s", what, pool_path(), strerror(errno));
            pool_teardown();
            return WORKER_SKIP;
        }
        resized = true;
        avail = pool_available();
        if (avail != want) {
            pool_teardown();
            note("%s: skipped: asked for %ld free 2 MiB pages, the kernel gave %ld", what, want,
                 avail);
            return WORKER_SKIP;
        }
    }
    pid = fork();
    if (pid == 0) {
        alarm(60); /* the worker must not outlive the test's timeout */
        _exit(fn(arg));
    }
    status = pid < 0 ? -1 : th_wait_child(pid);
    if (resized)
        pool_teardown();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (status == 128 + SIGBUS)
        ck_abort_msg("%s: the worker died of SIGBUS: a huge page was touched that was never "
                     "reserved",
                     what);
    return status;
}

static void expect_worker(int status, const char *what)
{
    if (status == WORKER_SKIP)
        return;
    ck_assert_msg(status == WORKER_OK, "%s: worker failed with status %d%s (see stderr)", what,
                  status,
                  status == 128 + SIGABRT ? " (aborted: a sanitizer report, or a SIGBUS that "
                                            "ASan caught)"
                                          : "");
}

/* In a worker: report and leave. */
#define W_REQUIRE(cond, ...)                                        \
    do {                                                            \
        if (!(cond)) {                                              \
            fprintf(stderr, "worker: %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                           \
            fprintf(stderr, "\n");                                  \
            return WORKER_FAIL;                                     \
        }                                                           \
    } while (0)

static int
w_heap(const struct shm_config *cfg, int policy, struct heap_local **ret_l, struct heap **ret_h)
{
    int r = heap_local_create(cfg, policy, ret_l);

    if (r < 0)
        return r;
    r = heap_local_attach(*ret_l, 1, ret_h);
    if (r < 0) {
        heap_local_destroy(*ret_l);
        return r;
    }
    return 0;
}

static void w_close(struct heap_local *l, struct heap *h)
{
    heap_detach(h);
    heap_local_destroy(l);
}

/* ---- the workers ---- */

struct heap_work {
    int policy;
    uint32_t want_page; /* page size heap_stats must report */
};

/* A 2 MiB heap: allocate and free small and large objects with patterns, check the figures,
 * verify, and give the pages back with a trim. */
static int w_heap_works(void *arg)
{
    const struct heap_work *w = arg;
    enum { N = 2000 };
    struct shm_config cfg;
    struct heap_local *l;
    struct heap *h;
    struct heap_stats st;
    struct trim_result res;
    static void *small[N];
    void *large[4];
    long before = pool_available(), after;
    int r;

    th_config(&cfg, 16 * MiB);
    r = w_heap(&cfg, w->policy, &l, &h);
    W_REQUIRE(r == 0, "heap on policy %d: %s", w->policy, strerror(-r));
    W_REQUIRE(heap_stats(h, &st) == 0, "heap_stats");
    W_REQUIRE(st.nsegments == 1 && st.segs[0].page_size == w->want_page,
              "segment page size %" PRIu32 ", want %" PRIu32, st.segs[0].page_size, w->want_page);
    W_REQUIRE(st.segs[0].size % w->want_page == 0, "segment size %" PRIu64, st.segs[0].size);
    for (int i = 0; i < N; i++) {
        small[i] = heap_malloc(h, 16 + (size_t) (i % 64) * 16);
        W_REQUIRE(small[i], "malloc #%d: %s", i, strerror(errno));
        th_fill_pattern(small[i], 16, (uint64_t) i);
    }
    for (int i = 0; i < 4; i++) {
        large[i] = heap_malloc(h, 1 * MiB + (size_t) i * 100 * KiB);
        W_REQUIRE(large[i], "large malloc #%d: %s", i, strerror(errno));
        memset(large[i], i, 1 * MiB);
    }
    W_REQUIRE(heap_stats(h, &st) == 0, "heap_stats");
    W_REQUIRE(st.segs[0].committed_bytes % w->want_page == 0,
              "committed %" PRIu64 " bytes: not whole pages", st.segs[0].committed_bytes);
    W_REQUIRE(th_verify_quiet(h), "verify with objects live");
    for (int i = 0; i < N; i++) {
        W_REQUIRE(th_check_pattern(small[i], 16, (uint64_t) i) == 16, "object %d changed", i);
        heap_free(h, small[i]);
    }
    for (int i = 0; i < 4; i++)
        heap_free(h, large[i]);
    W_REQUIRE(th_verify_quiet(h), "verify after freeing");
    W_REQUIRE(heap_trim(h, 100, &res) == 0, "trim");
    W_REQUIRE(th_verify_quiet(h), "verify after trim");
    after = pool_available();
    if (w->want_page == 2 * MiB) {
        /* Everything but the header's page went back to the pool. */
        W_REQUIRE(res.bytes_released > 0, "trim released nothing");
        W_REQUIRE(after >= before - 1, "%ld pages free before the heap, %ld after the trim", before,
                  after);
    }
    /* And the heap still works after its pages were punched out. */
    small[0] = heap_malloc(h, 100);
    large[0] = heap_malloc(h, 3 * MiB);
    W_REQUIRE(small[0] && large[0], "allocation after trim: %s", strerror(errno));
    memset(large[0], 1, 3 * MiB);
    heap_free(h, small[0]);
    heap_free(h, large[0]);
    W_REQUIRE(th_verify_quiet(h), "final verify");
    w_close(l, h);
    return WORKER_OK;
}

struct create_fails {
    int policy;
    int want;
};

static int w_create_fails(void *arg)
{
    const struct create_fails *c = arg;
    struct shm_config cfg;
    struct heap_local *l = NULL;
    int r;

    th_config(&cfg, 16 * MiB);
    r = heap_local_create(&cfg, c->policy, &l);
    if (r == 0)
        heap_local_destroy(l);
    W_REQUIRE(r == c->want, "heap_local_create(policy %d) = %d (%s), want %d (%s)", c->policy, r,
              r ? strerror(-r) : "success", c->want, strerror(-c->want));
    return WORKER_OK;
}

/* Large, then small objects until the pool is empty: NULL with ENOMEM each time. */
static int w_run_out(void *arg)
{
    enum { MAX = 4096 };
    struct shm_config cfg;
    struct heap_local *l;
    struct heap *h;
    static void *objs[MAX];
    int n = 0, nlarge, r;

    (void) arg;
    th_config(&cfg, 64 * MiB);
    cfg.max_segments = 4;
    r = w_heap(&cfg, SHM_PAGES_2M, &l, &h);
    W_REQUIRE(r == 0, "heap: %s", strerror(-r));
    for (;;) {
        void *p;

        errno = 0;
        p = heap_malloc(h, 1 * MiB);
        if (!p)
            break;
        W_REQUIRE(n < MAX, "no end to 1 MiB objects");
        memset(p, 0xab, 1 * MiB); /* touch every page: SIGBUS here if it was not reserved */
        objs[n++] = p;
    }
    W_REQUIRE(errno == ENOMEM, "large malloc failed with errno %d, want ENOMEM", errno);
    W_REQUIRE(n > 0, "not even one 1 MiB object");
    nlarge = n;
    for (;;) {
        void *p;

        errno = 0;
        p = heap_malloc(h, 4000);
        if (!p)
            break;
        W_REQUIRE(n < MAX, "no end to small objects");
        memset(p, 0xcd, 4000);
        objs[n++] = p;
    }
    W_REQUIRE(errno == ENOMEM, "small malloc failed with errno %d, want ENOMEM", errno);
    errno = 0;
    W_REQUIRE(heap_calloc(h, 1, 300000) == NULL && errno == ENOMEM, "calloc: errno %d", errno);
    W_REQUIRE(th_verify_quiet(h), "verify when full");
    for (int i = 0; i < n; i++)
        heap_free(h, objs[i]);
    heap_thread_flush(h);
    W_REQUIRE(th_verify_quiet(h), "verify after freeing");
    /* What was given back can be had again. */
    objs[0] = heap_malloc(h, 1 * MiB);
    W_REQUIRE(objs[0], "1 MiB after freeing %d objects (%d large): %s", n, nlarge, strerror(errno));
    memset(objs[0], 1, 1 * MiB);
    heap_free(h, objs[0]);
    W_REQUIRE(th_verify_quiet(h), "final verify");
    w_close(l, h);
    return WORKER_OK;
}

/* A segment whose metadata is larger than one huge page (8 GiB of 64 KiB blocks: about
 * 2.3 MiB of metadata), created with a single free page: the creator must reserve every
 * page the header and metadata need, so the answer is -ENOMEM (or a working heap), not
 * SIGBUS while formatting. */
static int w_big_segment(void *arg)
{
    struct shm_config cfg;
    struct heap_local *l;
    struct heap *h;
    int r;

    (void) arg;
    th_config(&cfg, 8 * GiB);
    r = w_heap(&cfg, SHM_PAGES_2M, &l, &h);
    W_REQUIRE(r == 0 || r == -ENOMEM, "heap of 8 GiB on one free page: %s", strerror(-r));
    if (r == 0) {
        void *p = heap_malloc(h, 100);

        W_REQUIRE(p || errno == ENOMEM, "malloc: %s", strerror(errno));
        heap_free(h, p);
        W_REQUIRE(th_verify_quiet(h), "verify");
        w_close(l, h);
    }
    return WORKER_OK;
}

/* ---- the tests ---- */

START_TEST(hugepages_2m_heap)
{
    struct heap_work w = {SHM_PAGES_2M, 2 * MiB};
    long avail = pool_available();

    expect_worker(with_pool(avail >= 4 ? -1 : 8, w_heap_works, &w, "2 MiB heap"), "2 MiB heap");
}
END_TEST

START_TEST(hugepages_auto_picks_largest)
{
    struct heap_work w = {SHM_PAGES_AUTO, free_1g() > 0 ? GiB : 2 * MiB};
    long avail = pool_available();

    if (free_1g() > 0)
        note("auto: 1 GiB pages are free, expecting SHM_PAGES_AUTO to take one");
    expect_worker(with_pool(avail >= 4 ? -1 : 8, w_heap_works, &w, "auto with 2 MiB pages"),
                  "auto with 2 MiB pages");
}
END_TEST

START_TEST(hugepages_none_free)
{
    struct create_fails c = {SHM_PAGES_2M, -ENOMEM};
    struct heap_work w = {SHM_PAGES_AUTO, 4096};
    int status;

    if (free_1g() > 0) {
        note("none free: skipped: 1 GiB pages are free, so SHM_PAGES_AUTO would not fall back");
        return;
    }
    status = with_pool(0, w_create_fails, &c, "2 MiB with none free");
    expect_worker(status, "2 MiB with none free");
    if (status == WORKER_SKIP)
        return;
    expect_worker(with_pool(0, w_heap_works, &w, "auto with none free"), "auto with none free");
}
END_TEST

START_TEST(hugepages_1g_none_free)
{
    struct create_fails c = {SHM_PAGES_1G, -ENOMEM};

    if (free_1g() > 0) {
        note("1 GiB: skipped: %ld 1 GiB pages are free", free_1g());
        return;
    }
    expect_worker(with_pool(-1, w_create_fails, &c, "1 GiB with none free"),
                  "1 GiB with none free");
}
END_TEST

START_TEST(hugepages_run_out)
{
    long avail = pool_available();
    int status;

    /* 6 pages; without root, any number from 4 up (the heap's limit then ends it). */
    status = with_pool(avail >= 4 && !can_resize() ? -1 : 6, w_run_out, NULL, "run out");
    expect_worker(status, "run out of huge pages");
}
END_TEST

START_TEST(hugepages_big_segment_one_page)
{
    expect_worker(with_pool(1, w_big_segment, NULL, "8 GiB segment on one free page"),
                  "8 GiB segment on one free page");
}
END_TEST

Suite *hugepages_suite(void)
{
    Suite *s = suite_create("hugepages");
    TCase *tc = tcase_create("pool");

    tcase_add_checked_fixture(tc, NULL, pool_teardown);
    tcase_add_test(tc, hugepages_2m_heap);
    tcase_add_test(tc, hugepages_auto_picks_largest);
    tcase_add_test(tc, hugepages_none_free);
    tcase_add_test(tc, hugepages_1g_none_free);
    tcase_add_test(tc, hugepages_run_out);
    tcase_add_test(tc, hugepages_big_segment_one_page);
    tcase_set_timeout(tc, 90);
    suite_add_tcase(s, tc);
    return s;
}
