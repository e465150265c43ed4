/* bench-<allocator>: runs one workload once and prints one line.
 *
 *   bench-<allocator> --info     INFO alloc=<name> version=<v>
 *                                (exit 1: the allocator does not serve malloc here)
 *   bench-<allocator> W1|W1c|W2  BENCH alloc=.. workload=.. ops=.. secs=.. ns_per_op=.. per_s=..
 *   bench-<allocator> W3         BENCH alloc=.. workload=W3 ops=.. tput1=.. tput2=.. scaling=..
 *                                tput4=.. tput8=.. (the curve: N processes together;
 *                                "fail" for a point whose processes failed, on stderr)
 *   bench-<allocator> W4 | W6    BENCH alloc=.. workload=.. ops=.. secs=.. ns_per_op=.. per_s=..
 *   bench-<allocator> W5b        BENCH alloc=.. workload=W5b ops=.. secs=.. held_bytes=..
 *                                before_bytes=.. floor_bytes=.. live_bytes=.. ratio=..
 *
 * Exit status 0 on success, 1 when the run failed (the reason on stderr),
 * 2 on bad usage. Sizes come from the environment: BENCH_W1_OPS (20M),
 * BENCH_W2_OPS (10M), BENCH_W3_OPS (per process; default BENCH_W2_OPS),
 * BENCH_W4_OBJS (2M), BENCH_W5B_BYTES (1 GiB), BENCH_W6_OBJS (1M),
 * BENCH_LIVE (10000), BENCH_W4_RING (1024, also W6's rings),
 * BENCH_W3_PROCS (8: the W3 curve runs N = 1, 2, 4, 8 up to it),
 * BENCH_SEED; BENCH_QUICK=1 divides the six counts by 10. BENCH_VERIFY=1
 * makes shmheap walk and check its heap after each run (untimed; an
 * inconsistent heap fails the run). bench-shmheap-api attaches to the
 * shmheapd at BENCH_SHMHEAP_SOCKET (else the library's default socket);
 * bench-boost's segment is BENCH_BOOST_SEGMENT bytes (256 MiB).
 *
 * This file does not depend on the allocator: it is compiled once and
 * linked with each allocator's bench/workloads.c object. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/workloads.h"

#define MAX_CHILDREN 8u

static int env_u64(const char *name, uint64_t def, uint64_t min, uint64_t max, uint64_t *ret)
{
    const char *s = getenv(name);
    unsigned long long v;
    char *end;

    if (!s || !*s) {
        *ret = def;
        return 0;
    }
    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || *end || v < min || v > max) {
        fprintf(stderr, "bench: %s=%s: want a number in [%" PRIu64 ", %" PRIu64 "]\n", name, s, min,
                max);
        return -EINVAL;
    }
    *ret = v;
    return 0;
}

int bench_params_load(struct bench_params *ret)
{
    struct bench_params p = {0};
    uint64_t quick, verify, live, ring, procs, w3_private;
    int r = 0;

    r |= env_u64("BENCH_QUICK", 0, 0, 1, &quick);
    r |= env_u64("BENCH_VERIFY", 0, 0, 1, &verify);
    r |= env_u64("BENCH_W3_PRIVATE", 0, 0, 1, &w3_private);
    r |= env_u64("BENCH_W1_OPS", 20000000, 1, UINT64_MAX / 2, &p.w1_ops);
    r |= env_u64("BENCH_W2_OPS", 10000000, 1, UINT64_MAX / 2, &p.w2_ops);
    r |= env_u64("BENCH_W3_OPS", p.w2_ops, 1, UINT64_MAX / 2, &p.w3_ops);
    r |= env_u64("BENCH_W4_OBJS", 2000000, 1, UINT64_MAX / 2, &p.w4_objs);
    r |= env_u64("BENCH_W5B_BYTES", UINT64_C(1) << 30, 4096, UINT64_C(1) << 40, &p.w5b_bytes);
    r |= env_u64("BENCH_W6_OBJS", 1000000, 1, UINT64_MAX / 8, &p.w6_objs);
    r |= env_u64("BENCH_W3_PROCS", MAX_CHILDREN, 1, MAX_CHILDREN, &procs);
    r |= env_u64("BENCH_LIVE", 10000, 1, 100000000, &live);
    r |= env_u64("BENCH_W4_RING", 1024, 2, UINT64_C(1) << 24, &ring);
    r |= env_u64("BENCH_SEED", UINT64_C(0x9E3779B97F4A7C15), 1, UINT64_MAX, &p.seed);
    if (r)
        return -EINVAL;
    if (ring & (ring - 1)) {
        fprintf(stderr, "bench: BENCH_W4_RING=%" PRIu64 ": want a power of two\n", ring);
        return -EINVAL;
    }
    if (procs & (procs - 1)) {
        fprintf(stderr, "bench: BENCH_W3_PROCS=%" PRIu64 ": want 1, 2, 4 or 8\n", procs);
        return -EINVAL;
    }
    p.live = (uint32_t) live;
    p.ring = (uint32_t) ring;
    p.w3_procs = (uint32_t) procs;
    p.verify = verify != 0;
    p.w3_private = w3_private != 0;
    if (quick) {
        p.w1_ops = p.w1_ops / 10 ? p.w1_ops / 10 : 1;
        p.w2_ops = p.w2_ops / 10 ? p.w2_ops / 10 : 1;
        p.w3_ops = p.w3_ops / 10 ? p.w3_ops / 10 : 1;
        p.w4_objs = p.w4_objs / 10 ? p.w4_objs / 10 : 1;
        p.w5b_bytes = p.w5b_bytes / 10 >= 4096 ? p.w5b_bytes / 10 : 4096;
        p.w6_objs = p.w6_objs / 10 ? p.w6_objs / 10 : 1;
    }
    *ret = p;
    return 0;
}

void bench_fill_result(struct bench_result *ret, uint64_t ops, uint64_t t0, uint64_t t1)
{
    uint64_t ns = t1 > t0 ? t1 - t0 : 1;

    memset(ret, 0, sizeof(*ret));
    ret->ops = ops;
    ret->secs = (double) ns / 1e9;
    ret->ns_per_op = (double) ns / (double) (ops ? ops : 1);
    ret->per_s = (double) ops / ret->secs;
}

int64_t bench_rss_anon(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    unsigned long long kib;
    char line[256];
    int64_t r = -ENOENT;

    if (!f)
        return -errno;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "RssAnon: %llu kB", &kib) == 1) {
            r = (int64_t) kib * 1024;
            break;
        }
    (void) fclose(f);
    return r;
}

void *bench_map(size_t len, bool shared)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);

    return p == MAP_FAILED ? NULL : p;
}

void bench_unmap(void *p, size_t len)
{
    (void) munmap(p, len);
}

/* Spins politely; after a while lets others (the partner on a busy
 * machine) have the CPU. */
static void spin_wait(unsigned *spins)
{
    if (++*spins < 512)
        bench_cpu_relax();
    else
        (void) sched_yield();
}

void bench_barrier_wait(struct bench_barrier *b, uint32_t n)
{
    unsigned spins = 0;

    /* acq_rel: our set-up happens before the others leave the barrier, and
     * theirs before we do; pairs with the acquire loads below. */
    (void) __atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&b->arrived, __ATOMIC_ACQUIRE) < n)
        spin_wait(&spins);
}

size_t bench_ring_bytes(uint32_t slots)
{
    return sizeof(struct bench_ring) + sizeof(uint64_t) * slots;
}

void bench_ring_wait(unsigned *spins)
{
    spin_wait(spins);
}

static void kill_all(const pid_t *pids, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++)
        if (pids[i] > 0)
            (void) kill(pids[i], SIGKILL);
}

int bench_run_children(unsigned n, int (*fn)(void *arg, unsigned idx), void *arg, const char *what)
{
    pid_t pids[MAX_CHILDREN] = {0};
    pid_t parent = getpid();
    unsigned i, left;
    int failed = 0;

    if (n == 0 || n > MAX_CHILDREN)
        return -EINVAL;
    (void) fflush(NULL);
    for (i = 0; i < n; i++) {
        pid_t pid = fork();

        if (pid < 0) {
            fprintf(stderr, "bench: %s: fork: %s\n", what, strerror(errno));
            kill_all(pids, i);
            failed = 1;
            n = i;
            break;
        }
        if (pid == 0) {
            /* Never outlive the parent (e.g. killed by the driver's timeout). */
            (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            _exit(fn(arg, i) == 0 ? 0 : 1);
        }
        pids[i] = pid;
    }

    for (left = n; left > 0; left--) {
        int st;
        pid_t pid;

        do {
            pid = waitpid(-1, &st, 0);
        } while (pid < 0 && errno == EINTR);
        if (pid < 0)
            break;
        for (i = 0; i < n && pids[i] != pid; i++)
            ;
        if (i == n) {
            left++; /* not one of ours */
            continue;
        }
        pids[i] = 0;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            continue;
        if (WIFSIGNALED(st))
            fprintf(stderr, "bench: %s: child %u (pid %d) killed by signal %d (%s)\n", what, i,
                    (int) pid, WTERMSIG(st), strsignal(WTERMSIG(st)));
        else
            fprintf(stderr, "bench: %s: child %u (pid %d) failed with status %d\n", what, i,
                    (int) pid, WEXITSTATUS(st));
        if (!failed)
            kill_all(pids, n); /* the others may wait at a barrier for it */
        failed = 1;
    }
    return failed ? -ECHILD : 0;
}

struct bench_thread {
    int (*fn)(void *arg, unsigned idx);
    void *arg;
    unsigned idx;
    int r;
};

static void *bench_thread_main(void *arg)
{
    struct bench_thread *t = arg;

    t->r = t->fn(t->arg, t->idx);
    return NULL;
}

int bench_run_threads(unsigned n, int (*fn)(void *arg, unsigned idx), void *arg, const char *what)
{
    struct bench_thread t[MAX_CHILDREN];
    pthread_t tid[MAX_CHILDREN];
    unsigned i, started;
    int r = 0, e;

    if (n == 0 || n > MAX_CHILDREN)
        return -EINVAL;
    for (started = 1; started < n; started++) {
        t[started] = (struct bench_thread){.fn = fn, .arg = arg, .idx = started};
        e = pthread_create(&tid[started], NULL, bench_thread_main, &t[started]);
        if (e != 0) {
            /* The threads already started would wait for this one at their
             * barrier: a run cannot go on without it. */
            fprintf(stderr, "bench: %s: pthread_create: %s\n", what, strerror(e));
            _exit(1);
        }
    }
    r = fn(arg, 0);
    for (i = 1; i < n; i++) {
        (void) pthread_join(tid[i], NULL);
        if (t[i].r < 0 && r == 0)
            r = t[i].r;
    }
    return r;
}

static int usage(const char *prog)
{
    fprintf(stderr, "usage: %s --info | W1 | W1c | W2 | W3 | W4 | W5b | W6\n", prog);
    return 2;
}

int main(int argc, char **argv)
{
    struct bench_result res;
    struct bench_params prm;
    const char *w;
    char info[128];
    int r;

    if (argc != 2)
        return usage(argv[0]);
    w = argv[1];

    if (strcmp(w, "--info") == 0) {
        r = bench_alloc_info(info, sizeof(info));
        if (r < 0) {
            printf("INFO alloc=%s error=%s\n", bench_alloc_name, info);
            return 1;
        }
        printf("INFO alloc=%s version=%s\n", bench_alloc_name, info);
        return 0;
    }

    if (bench_params_load(&prm) < 0)
        return 2;

    if (strcmp(w, "W1") == 0)
        r = bench_w1(&prm, false, &res);
    else if (strcmp(w, "W1c") == 0)
        r = bench_w1(&prm, true, &res);
    else if (strcmp(w, "W2") == 0)
        r = bench_w2(&prm, &res);
    else if (strcmp(w, "W3") == 0)
        r = bench_w3(&prm, &res);
    else if (strcmp(w, "W4") == 0)
        r = bench_w4(&prm, &res);
    else if (strcmp(w, "W5b") == 0)
        r = bench_w5b(&prm, &res);
    else if (strcmp(w, "W6") == 0)
        r = bench_w6(&prm, &res);
    else
        return usage(argv[0]);

    if (r < 0) {
        fprintf(stderr, "bench: %s: %s failed: %s\n", bench_alloc_name, w, strerror(-r));
        return 1;
    }
    if (strcmp(w, "W3") == 0) {
        printf("BENCH alloc=%s workload=%s ops=%" PRIu64 " tput1=%.0f tput2=%.0f scaling=%.4f",
               bench_alloc_name, w, res.ops, res.tput1, res.tput2, res.scaling);
        for (unsigned i = 2; i < BENCH_W3_PHASES; i++)
            if (res.tput[i] > 0)
                printf(" tput%u=%.0f", 1u << i, res.tput[i]);
            else if (res.tput[i] < 0)
                printf(" tput%u=fail", 1u << i);
        printf("\n");
    } else if (strcmp(w, "W5b") == 0)
        printf("BENCH alloc=%s workload=%s ops=%" PRIu64 " secs=%.3f held_bytes=%" PRIu64
               " before_bytes=%" PRIu64 " floor_bytes=%" PRIu64 " live_bytes=%" PRIu64
               " ratio=%.4f\n",
               bench_alloc_name, w, res.ops, res.secs, res.held_bytes, res.before_bytes,
               res.floor_bytes, res.live_bytes,
               (double) res.held_bytes / (double) (res.floor_bytes ? res.floor_bytes : 1));
    else
        printf("BENCH alloc=%s workload=%s ops=%" PRIu64 " secs=%.6f ns_per_op=%.3f per_s=%.0f\n",
               bench_alloc_name, w, res.ops, res.secs, res.ns_per_op, res.per_s);
    return 0;
}
