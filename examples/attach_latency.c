/* attach_latency: two figures against a running shmheapd.
 *
 *  1. Attach latency: from shmheap_attach() (connect, hello, mapping) to
 *     the first shmheap_malloc() returning, over N attaches (median, p99).
 *  2. The `stats` op's round trip on the control socket (median, p99) while
 *     two client processes allocate and free as fast as they can; and, for
 *     comparison, with no other client busy.
 *
 * Usage: attach_latency [-s SOCKET] [-n ATTACHES] [-r STATS_REQUESTS] [-m]
 *
 * -m adds one machine-readable line per figure (make bench reads them):
 *   SERVICE what=attach n=N min_us=.. median_us=.. p99_us=.. max_us=..
 *   SERVICE what=stats_rtt_idle n=N clients=0 min_us=.. median_us=.. p99_us=.. max_us=..
 *   SERVICE what=stats_rtt n=N clients=2 min_us=.. median_us=.. p99_us=.. max_us=.. busy_mops=..
 * The median of an even count is the mean of the middle two; p99 is the
 * nearest rank (the ceil(0.99 n)-th smallest: the 99th of 100, the 1980th
 * of 2000). busy_mops: the busy clients' malloc+free pairs per second,
 * together, while the stats requests ran. A figure whose measurement
 * failed gets no line, and the exit status is 1.
 *
 * Nothing here waits forever: the busy clients die with this process, it
 * waits at most 10 s for them to start, and each stats reply at most 10 s. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmheap.h"

#define BUSY_CLIENTS  2
#define START_WAIT_MS 10000
#define REPLY_WAIT_MS 10000

/* Shared with the busy clients (a MAP_SHARED page). */
struct busy_shared {
    int stop;          /* set by the parent */
    int ready;         /* clients attached and allocating */
    uint64_t pairs[2]; /* malloc+free pairs each did while measured */
    int measuring;     /* set by the parent around the stats requests */
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}

struct summary {
    double min, median, p99, max; /* microseconds */
};

static struct summary summarize(uint64_t *v, size_t n)
{
    struct summary s;
    size_t rank = (n * 99 + 99) / 100; /* ceil(0.99 n), 1-based */

    qsort(v, n, sizeof(*v), cmp_u64);
    s.min = v[0] / 1e3;
    s.max = v[n - 1] / 1e3;
    s.median = (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0) / 1e3;
    s.p99 = v[(rank ? rank : 1) - 1] / 1e3;
    return s;
}

static void report(const char *what, size_t n, struct summary s)
{
    printf("%-34s n=%zu  min %8.1f us  median %8.1f us  p99 %8.1f us  max %8.1f us\n", what, n,
           s.min, s.median, s.p99, s.max);
}

/* The socket path by the library's rule, for the raw stats connection. */
static void socket_path(const char *arg, char *buf, size_t len)
{
    const char *env;

    if (arg)
        snprintf(buf, len, "%s", arg);
    else if ((env = getenv("SHMHEAP_SOCKET")) && *env)
        snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        snprintf(buf, len, "/run/shmheap/shmheap.sock");
    else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
        snprintf(buf, len, "%s/shmheap.sock", env);
    else
        snprintf(buf, len, "/tmp/shmheap-%u.sock", (unsigned) getuid());
}

static void busy_client(const char *path, struct busy_shared *sh, int idx, pid_t parent)
{
    uint64_t x = 0x9e3779b97f4a7c15u ^ (uint64_t) getpid(), pairs = 0;
    void *live[256] = {0};
    shmheap_t *h;
    int r;

    /* Never outlive the parent (e.g. killed by make bench's timeout). */
    (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
    r = shmheap_attach(path, &h);
    if (r < 0) {
        fprintf(stderr, "busy client %d: attach: %s: %s\n", idx, shmheap_strerror(r),
                shmheap_last_error());
        _exit(1);
    }
    __atomic_add_fetch(&sh->ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE)) {
        int counting = __atomic_load_n(&sh->measuring, __ATOMIC_RELAXED);

        for (int i = 0; i < 4096; i++) {
            unsigned k;

            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            k = (unsigned) (x % 256);
            shmheap_free(h, live[k]);
            live[k] = shmheap_malloc(h, 16 + (size_t) (x >> 32) % 1024);
            if (live[k])
                *(uint64_t *) live[k] = x;
        }
        if (counting)
            pairs += 4096;
    }
    sh->pairs[idx] = pairs;
    for (int k = 0; k < 256; k++)
        shmheap_free(h, live[k]);
    shmheap_detach(h);
    _exit(0);
}

/* Stops the busy clients and reaps them; 0 if both exited cleanly. */
static int stop_clients(struct busy_shared *sh, const pid_t *kids, int n)
{
    int bad = 0;

    __atomic_store_n(&sh->stop, 1, __ATOMIC_RELEASE);
    for (int k = 0; k < n; k++) {
        int status = 0;

        if (kids[k] <= 0)
            continue;
        if (waitpid(kids[k], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "busy client %d failed (status %#x)\n", k, status);
            bad = 1;
        }
    }
    return bad ? -1 : 0;
}

/* Reads one reply line (at most REPLY_WAIT_MS); 0 or -1. */
static int read_reply(int fd, char *reply, size_t cap)
{
    uint64_t deadline = now_ns() + (uint64_t) REPLY_WAIT_MS * 1000000u;
    size_t len = 0;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        uint64_t now = now_ns();
        ssize_t n;

        if (now >= deadline || poll(&p, 1, (int) ((deadline - now) / 1000000u) + 1) == 0) {
            fprintf(stderr, "read: no reply within %d ms\n", REPLY_WAIT_MS);
            return -1;
        }
        n = read(fd, reply + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "read: %s\n", n < 0 ? strerror(errno) : "daemon hung up");
            return -1;
        }
        len += (size_t) n;
        if (reply[len - 1] == '\n') {
            reply[len] = 0;
            return 0;
        }
        if (len == cap - 1) {
            fprintf(stderr, "read: reply longer than %zu bytes\n", cap - 1);
            return -1;
        }
    }
}

/* 1. connect -> first malloc returned, `attaches` times. */
static int measure_attach(const char *path, unsigned attaches, uint64_t *t, int machine)
{
    struct summary s;

    for (unsigned i = 0; i < attaches; i++) {
        uint64_t t0 = now_ns();
        shmheap_t *h;
        void *p;
        int r = shmheap_attach(path, &h);

        if (r < 0) {
            fprintf(stderr, "attach failed: %s: %s\n", shmheap_strerror(r), shmheap_last_error());
            return -1;
        }
        p = shmheap_malloc(h, 64);
        t[i] = now_ns() - t0;
        if (!p) {
            fprintf(stderr, "malloc failed: %s\n", strerror(errno));
            shmheap_detach(h);
            return -1;
        }
        shmheap_free(h, p);
        shmheap_detach(h);
    }
    s = summarize(t, attaches);
    report("attach + first malloc", attaches, s);
    if (machine)
        printf("SERVICE what=attach n=%u min_us=%.1f median_us=%.1f p99_us=%.1f max_us=%.1f\n",
               attaches, s.min, s.median, s.p99, s.max);
    return 0;
}

/* Forks nbusy busy clients (their pids in kids[]) and waits until they
 * are attached and allocating. */
static int start_busy_clients(const char *path, struct busy_shared *sh, pid_t *kids, int nbusy)
{
    pid_t self = getpid();
    uint64_t start;

    fflush(NULL);
    for (int k = 0; k < nbusy; k++) {
        kids[k] = fork();
        if (kids[k] < 0) {
            perror("fork");
            return -1;
        }
        if (kids[k] == 0)
            busy_client(path, sh, k, self);
    }
    /* Wait until both are attached and allocating. */
    start = now_ns();
    while (__atomic_load_n(&sh->ready, __ATOMIC_ACQUIRE) < nbusy) {
        int st;

        for (int k = 0; k < BUSY_CLIENTS; k++)
            if (kids[k] > 0 && waitpid(kids[k], &st, WNOHANG) == kids[k]) {
                fprintf(stderr, "busy client %d exited before it was ready (status %#x)\n", k, st);
                kids[k] = 0;
                return -1;
            }
        if (now_ns() - start > (uint64_t) START_WAIT_MS * 1000000u) {
            fprintf(stderr, "busy clients not attached after %d ms\n", START_WAIT_MS);
            return -1;
        }
        usleep(1000);
    }
    if (nbusy)
        usleep(100 * 1000); /* let them get going */
    return 0;
}

/* A connection to the daemon's socket, or -1. */
static int connect_socket(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd;

    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "socket path too long: %s\n", path);
        return -1;
    }
    memcpy(addr.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *) &addr, sizeof(addr)) < 0) {
        perror("connect");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* requests stats round trips on fd, each one's time in t[]. */
static int time_stats(int fd, unsigned requests, uint64_t *t)
{
    static const char req[] = "{\"op\":\"stats\"}\n";
    static char reply[1 << 17];

    for (unsigned i = 0; i < requests; i++) {
        uint64_t t0 = now_ns();

        if (write(fd, req, sizeof(req) - 1) != (ssize_t) sizeof(req) - 1) {
            perror("write");
            return -1;
        }
        if (read_reply(fd, reply, sizeof(reply)) < 0)
            return -1;
        t[i] = now_ns() - t0;
        if (strncmp(reply, "{\"ok\":true", 10) != 0) {
            fprintf(stderr, "stats reply: %.200s\n", reply);
            return -1;
        }
    }
    return 0;
}

static void report_stats(unsigned requests, uint64_t *t, int machine, int nbusy, double mops)
{
    struct summary s = summarize(t, requests);

    if (nbusy == 0) {
        report("stats round trip, no busy client", requests, s);
        if (machine)
            printf("SERVICE what=stats_rtt_idle n=%u clients=0 min_us=%.1f median_us=%.1f "
                   "p99_us=%.1f max_us=%.1f\n",
                   requests, s.min, s.median, s.p99, s.max);
    } else {
        report("stats round trip, 2 busy clients", requests, s);
        if (machine)
            printf("SERVICE what=stats_rtt n=%u clients=%d min_us=%.1f median_us=%.1f "
                   "p99_us=%.1f max_us=%.1f busy_mops=%.2f\n",
                   requests, nbusy, s.min, s.median, s.p99, s.max, mops);
    }
}

/* 2. stats round trips while nbusy (0 or BUSY_CLIENTS) processes allocate. */
static int measure_stats(const char *path, unsigned requests, uint64_t *t, int machine, int nbusy)
{
    pid_t kids[BUSY_CLIENTS] = {0};
    struct busy_shared *sh;
    uint64_t t0m = 0, t1m = 1;
    int fd = -1, r = -1;

    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return -1;
    }
    if (start_busy_clients(path, sh, kids, nbusy) < 0)
        goto out;
    fd = connect_socket(path);
    if (fd < 0)
        goto out;
    __atomic_store_n(&sh->measuring, 1, __ATOMIC_RELAXED);
    t0m = now_ns();
    if (time_stats(fd, requests, t) < 0)
        goto out;
    t1m = now_ns();
    __atomic_store_n(&sh->measuring, 0, __ATOMIC_RELAXED);
    r = 0;
out:
    if (fd >= 0)
        close(fd);
    if (stop_clients(sh, kids, BUSY_CLIENTS) < 0)
        r = -1;
    if (r == 0)
        report_stats(requests, t, machine, nbusy,
                     (double) (sh->pairs[0] + sh->pairs[1]) / ((double) (t1m - t0m) / 1e3));
    munmap(sh, sizeof(*sh));
    return r;
}

int main(int argc, char **argv)
{
    const char *arg_socket = NULL;
    unsigned attaches = 100, requests = 2000;
    char path[sizeof(((struct sockaddr_un *) 0)->sun_path)];
    int opt, machine = 0, r = 0;
    uint64_t *t;

    while ((opt = getopt(argc, argv, "s:n:r:m")) != -1) {
        if (opt == 's')
            arg_socket = optarg;
        else if (opt == 'n')
            attaches = (unsigned) strtoul(optarg, NULL, 10);
        else if (opt == 'r')
            requests = (unsigned) strtoul(optarg, NULL, 10);
        else if (opt == 'm')
            machine = 1;
        else {
            fprintf(stderr, "usage: %s [-s SOCKET] [-n ATTACHES] [-r STATS_REQUESTS] [-m]\n",
                    argv[0]);
            return 2;
        }
    }
    if (attaches == 0 || requests == 0)
        return 2;
    socket_path(arg_socket, path, sizeof(path));
    t = calloc(attaches > requests ? attaches : requests, sizeof(*t));
    if (!t)
        return 1;
    /* Each figure on its own: a failed attach loop does not hide the other. */
    if (measure_attach(path, attaches, t, machine) < 0)
        r = 1;
    if (measure_stats(path, requests, t, machine, 0) < 0)
        r = 1;
    if (measure_stats(path, requests, t, machine, BUSY_CLIENTS) < 0)
        r = 1;
    fflush(stdout);
    free(t);
    return r;
}
