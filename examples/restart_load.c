/* restart_load: N client processes that allocate and free without pause,
 * for watching a daemon restart from the clients' side (see
 * scripts/restart-bench.sh).
 *
 *   restart_load [-s SOCKET] [-n CLIENTS] [-t SECONDS]
 *
 * Each client keeps 256 small objects (16..2048 bytes) and 3 large ones
 * (6 MiB) in turnover. It stops at SIGINT/SIGTERM or after -t seconds, and
 * the parent prints one line: operations, and failed allocations split
 * into small ones (which always fit the mapped segments: any failure is a
 * bug) and large ones (which may need a new segment, so a daemon). */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmheap.h"

#define MAX_CLIENTS 64
#define NSMALL      256
#define NLARGE      3
#define LARGE_SIZE  (6u << 20)

struct counts {
    _Atomic int stop;
    _Atomic uint64_t ops[MAX_CLIENTS], small_fail[MAX_CLIENTS], large_fail[MAX_CLIENTS];
    _Atomic int attached[MAX_CLIENTS];
};

static struct counts *cnt;
static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    (void) sig;
    got_signal = 1;
}

static void client(const char *socket_path, int id)
{
    void *small[NSMALL] = {0}, *large[NLARGE] = {0};
    uint64_t r = 0x9e3779b97f4a7c15ull * (uint64_t) (id + 1);
    shmheap_t *h;

    if (shmheap_attach(socket_path, &h) < 0) {
        fprintf(stderr, "restart_load: attach: %s\n", shmheap_last_error());
        _exit(1);
    }
    atomic_store(&cnt->attached[id], 1);
    for (uint64_t n = 0; !atomic_load(&cnt->stop); n++) {
        unsigned j;

        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        j = (unsigned) (r % NSMALL);
        if (small[j]) {
            shmheap_free(h, small[j]);
            small[j] = NULL;
        } else if ((small[j] = shmheap_malloc(h, 16 + (size_t) (r >> 32) % 2048)) == NULL) {
            atomic_fetch_add(&cnt->small_fail[id], 1);
        } else {
            memset(small[j], 1, 16);
        }
        if (n % 64 == 0) {
            unsigned k = (unsigned) ((r >> 40) % NLARGE);

            if (large[k]) {
                shmheap_free(h, large[k]);
                large[k] = NULL;
            } else if ((large[k] = shmheap_malloc(h, LARGE_SIZE)) == NULL) {
                atomic_fetch_add(&cnt->large_fail[id], 1);
            }
        }
        atomic_fetch_add(&cnt->ops[id], 1);
    }
    for (unsigned j = 0; j < NSMALL; j++)
        shmheap_free(h, small[j]);
    for (unsigned k = 0; k < NLARGE; k++)
        shmheap_free(h, large[k]);
    shmheap_detach(h);
    _exit(0);
}

int main(int argc, char **argv)
{
    const char *socket_path = NULL;
    pid_t pids[MAX_CLIENTS];
    uint64_t ops = 0, sf = 0, lf = 0;
    int n = 4, seconds = 0, c, failed = 0;
    struct timespec t0, t1;

    while ((c = getopt(argc, argv, "s:n:t:h")) >= 0) {
        switch (c) {
        case 's':
            socket_path = optarg;
            break;
        case 'n':
            n = atoi(optarg);
            break;
        case 't':
            seconds = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: restart_load [-s SOCKET] [-n CLIENTS] [-t SECONDS]\n");
            return 2;
        }
    }
    if (n < 1 || n > MAX_CLIENTS) {
        fprintf(stderr, "restart_load: -n wants 1..%d\n", MAX_CLIENTS);
        return 2;
    }
    cnt = mmap(NULL, sizeof(*cnt), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (cnt == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    (void) clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            signal(SIGINT, SIG_IGN); /* the parent says when to stop */
            signal(SIGTERM, SIG_DFL);
            client(socket_path, i);
        }
    }
    for (int i = 0; i < n; i++)
        while (!atomic_load(&cnt->attached[i]) && !got_signal)
            (void) usleep(1000);
    printf("attached %d\n", n);
    fflush(stdout);
    for (int s = 0; !got_signal && (seconds == 0 || s < seconds * 10); s++)
        (void) usleep(100000);
    atomic_store(&cnt->stop, 1);
    for (int i = 0; i < n; i++) {
        int st;

        if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed++;
        ops += atomic_load(&cnt->ops[i]);
        sf += atomic_load(&cnt->small_fail[i]);
        lf += atomic_load(&cnt->large_fail[i]);
    }
    (void) clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("clients %d ops %" PRIu64 " small_failed %" PRIu64 " large_failed %" PRIu64
           " crashed %d seconds %.1f\n",
           n, ops, sf, lf, failed,
           (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return failed ? 1 : 0;
}
