/* decay-trace-<allocator>: memory over time for the automatic trim's two
 * workloads, one process, the same code for every allocator (built with
 * -DTRACE_SHMHEAP, -DTRACE_JEMALLOC or -DTRACE_TCMALLOC; bench/decay.sh
 * runs them and sets each allocator's release up the same way).
 *
 *   decay-trace-<allocator> peak     allocate 128 MiB (96 MiB of 256 KiB
 *                                    objects, 32 MiB of 1000-byte ones),
 *                                    free all but 8 MiB, stay idle 4 s
 *   decay-trace-<allocator> breathe  every 200 ms allocate a 64 MiB working
 *                                    set, touch it, hold 100 ms, free it,
 *                                    for BREATHE_S (10) s; then idle 3 s
 *
 * A sampler thread prints every 50 ms
 *   T alloc=<a> workload=<w> t_ms=<ms> resident=<bytes> committed=<bytes>
 * (resident: the process's RSS; committed: shmheap's heap-wide committed
 * bytes, else the RSS), and the run ends with one summary line
 *   S alloc=<a> workload=<w> key=value ...
 * Allocator set-up (by bench/decay.sh): shmheap attaches to the shmheapd at
 * $SHMHEAP_SOCKET (decay_ms there); jemalloc reads MALLOC_CONF; tcmalloc
 * (gperftools, which has no background thread of its own) gets one here
 * that calls MallocExtension_ReleaseToSystem(TCMALLOC_BG_RATE / 10) every
 * 100 ms, as Google tcmalloc's background thread releases at its
 * background release rate. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#if defined(TRACE_SHMHEAP)
#    include "shmheap.h"
#    define ALLOC_NAME "shmheap"
static shmheap_t *heap;
#    define xmalloc(n) shmheap_malloc(heap, n)
#    define xfree(p)   shmheap_free(heap, p)
#elif defined(TRACE_JEMALLOC)
#    define ALLOC_NAME "jemalloc"
#    define xmalloc(n) malloc(n)
#    define xfree(p)   free(p)
#elif defined(TRACE_TCMALLOC)
#    include <gperftools/malloc_extension_c.h>
#    define ALLOC_NAME "tcmalloc"
#    define xmalloc(n) malloc(n)
#    define xfree(p)   free(p)
#else
#    error "build with -DTRACE_SHMHEAP, -DTRACE_JEMALLOC or -DTRACE_TCMALLOC"
#endif

#define KiB    (UINT64_C(1) << 10)
#define MiB    (UINT64_C(1) << 20)
#define LARGE  (256 * KiB)
#define SMALL  1000u
#define SAMPLE 50 /* ms */

static const char *workload;
static uint64_t t0_ms;
static atomic_bool stop;

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static uint64_t resident(void)
{
    unsigned long size, res;
    FILE *f = fopen("/proc/self/statm", "r");

    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &res) != 2)
        res = 0;
    fclose(f);
    return (uint64_t) res * (uint64_t) sysconf(_SC_PAGESIZE);
}

static uint64_t committed(void)
{
#if defined(TRACE_SHMHEAP)
    struct shmheap_stats st;

    if (shmheap_stats(heap, &st) == 0)
        return st.bytes_committed;
#endif
    return resident();
}

static long minflt(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static void *sampler(void *arg)
{
    (void) arg;
    while (!atomic_load(&stop)) {
        printf("T alloc=%s workload=%s t_ms=%" PRIu64 " resident=%" PRIu64 " committed=%" PRIu64
               "\n",
               ALLOC_NAME, workload, now_ms() - t0_ms, resident(), committed());
        fflush(stdout);
        sleep_ms(SAMPLE);
    }
    return NULL;
}

#if defined(TRACE_TCMALLOC)
static void *tc_background(void *arg)
{
    const char *s = getenv("TCMALLOC_BG_RATE");
    uint64_t rate = s && *s ? strtoull(s, NULL, 0) : 1024 * MiB;

    (void) arg;
    while (!atomic_load(&stop)) {
        MallocExtension_ReleaseToSystem((size_t) (rate / 10));
        sleep_ms(100);
    }
    return NULL;
}
#endif

struct set {
    unsigned n, m;
    void **p;
};

static void set_alloc(struct set *s)
{
    for (unsigned i = 0; i < s->n + s->m; i++) {
        size_t sz = i < s->n ? LARGE : SMALL;

        s->p[i] = xmalloc(sz);
        if (!s->p[i]) {
            fprintf(stderr, "decay-trace: out of memory\n");
            exit(1);
        }
        for (size_t o = 0; o < sz; o += 4096)
            ((volatile char *) s->p[i])[o] = 1;
    }
}

static void set_free(struct set *s, unsigned from)
{
    for (unsigned i = from; i < s->n + s->m; i++)
        xfree(s->p[i]);
}

/* The first time after `from` (ms since t0) that committed fell to `bound`. */
static uint64_t settle_ms;

static void wait_idle(unsigned ms, uint64_t bound, uint64_t from)
{
    uint64_t end = now_ms() + ms;

    settle_ms = UINT64_MAX;
    while (now_ms() < end) {
        if (settle_ms == UINT64_MAX && committed() <= bound)
            settle_ms = now_ms() - t0_ms - from;
        sleep_ms(10);
    }
}

static void peak(void)
{
    struct set s = {.n = 384, .m = 32768};
    uint64_t base = committed(), top, freed_at, live = 32 * LARGE;

    s.p = calloc(s.n + s.m, sizeof(*s.p));
    /* The live part first, so that it does not sit among the freed. */
    set_alloc(&s);
    top = committed();
    freed_at = now_ms() - t0_ms;
    /* Keep the first 32 large objects (8 MiB). */
    set_free(&s, 32);
    wait_idle(4000, base + live + live / 4 + 4 * MiB, freed_at);
    printf("S alloc=%s workload=peak base=%" PRIu64 " top=%" PRIu64 " live=%" PRIu64 " end=%" PRIu64
           " settle_ms=%s%" PRIu64 "\n",
           ALLOC_NAME, base, top, live, committed(), settle_ms == UINT64_MAX ? "never:" : "",
           settle_ms == UINT64_MAX ? 0 : settle_ms);
    for (unsigned i = 0; i < 32; i++)
        xfree(s.p[i]);
    free(s.p);
}

static void breathe(void)
{
    const char *e = getenv("BREATHE_S");
    unsigned secs = e && *e ? (unsigned) atoi(e) : 10, breaths = secs * 5, drops = 0;
    struct set s = {.n = 192, .m = 16384};
    uint64_t base = committed(), low = UINT64_MAX, after_first, stop_at;
    long f_first, f_rest;

    s.p = calloc(s.n + s.m, sizeof(*s.p));
    f_first = minflt();
    set_alloc(&s);
    f_first = minflt() - f_first;
    sleep_ms(100);
    set_free(&s, 0);
    after_first = committed();
    sleep_ms(100);
    f_rest = minflt();
    for (unsigned b = 1; b < breaths; b++) {
        uint64_t before = committed(), c;

        set_alloc(&s);
        sleep_ms(100);
        set_free(&s, 0);
        sleep_ms(100);
        c = committed();
        if (c < low)
            low = c;
        if (c + 4 * MiB < before)
            drops++;
    }
    f_rest = minflt() - f_rest;
    stop_at = now_ms() - t0_ms;
    wait_idle(3000, base + 4 * MiB, stop_at);
    printf("S alloc=%s workload=breathe breaths=%u base=%" PRIu64 " after_first=%" PRIu64
           " low_between=%" PRIu64 " drops_between=%u faults_first=%ld faults_rest=%ld"
           " end=%" PRIu64 " settle_ms=%s%" PRIu64 "\n",
           ALLOC_NAME, breaths, base, after_first, low, drops, f_first, f_rest, committed(),
           settle_ms == UINT64_MAX ? "never:" : "", settle_ms == UINT64_MAX ? 0 : settle_ms);
    free(s.p);
}

int main(int argc, char **argv)
{
    pthread_t th;
#if defined(TRACE_TCMALLOC)
    pthread_t bg;
#endif

    if (argc != 2 || (strcmp(argv[1], "peak") != 0 && strcmp(argv[1], "breathe") != 0)) {
        fprintf(stderr, "usage: %s peak|breathe\n", argv[0]);
        return 2;
    }
    workload = argv[1];
#if defined(TRACE_SHMHEAP)
    if (shmheap_attach(NULL, &heap) < 0) {
        fprintf(stderr, "decay-trace: cannot attach to shmheapd\n");
        return 1;
    }
#elif defined(TRACE_TCMALLOC)
    pthread_create(&bg, NULL, tc_background, NULL);
#endif
    t0_ms = now_ms();
    pthread_create(&th, NULL, sampler, NULL);
    if (strcmp(workload, "peak") == 0)
        peak();
    else
        breathe();
    atomic_store(&stop, true);
    pthread_join(th, NULL);
#if defined(TRACE_SHMHEAP)
    shmheap_detach(heap);
#elif defined(TRACE_TCMALLOC)
    pthread_join(bg, NULL);
#endif
    return 0;
}
