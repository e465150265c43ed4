/* attach_latency: two figures against a running shmheapd.
 *
 *  1. Attach latency: from shmheap_attach() (connect, hello, mapping) to
 *     the first shmheap_malloc() returning, over N attaches (median, p99).
 *  2. The `stats` op's round trip on the control socket (median, p99) while
 *     two client processes allocate and free as fast as they can.
 *
 * Usage: attach_latency [-s SOCKET] [-n ATTACHES] [-r STATS_REQUESTS] */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmheap.h"

#define BUSY_CLIENTS 2

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

static void report(const char *what, uint64_t *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_u64);
    printf("%-34s n=%zu  min %8.1f us  median %8.1f us  p99 %8.1f us  max %8.1f us\n", what, n,
           v[0] / 1e3, v[n / 2] / 1e3, v[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] / 1e3,
           v[n - 1] / 1e3);
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

static void busy_client(const char *path, volatile int *stop)
{
    uint64_t x = 0x9e3779b97f4a7c15u ^ (uint64_t) getpid();
    void *live[256] = {0};
    shmheap_t *h;

    if (shmheap_attach(path, &h) < 0)
        _exit(1);
    while (!*stop) {
        for (int i = 0; i < 4096; i++) {
            unsigned k;

            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            k = (unsigned) (x % 256);
            shmheap_free(h, live[k]);
            live[k] = shmheap_malloc(h, 16 + (size_t) (x >> 32) % 1024);
        }
    }
    for (int k = 0; k < 256; k++)
        shmheap_free(h, live[k]);
    shmheap_detach(h);
    _exit(0);
}

int main(int argc, char **argv)
{
    const char *arg_socket = NULL;
    unsigned attaches = 100, requests = 2000;
    pid_t kids[BUSY_CLIENTS];
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    volatile int *stop;
    uint64_t *t;
    char path[sizeof(addr.sun_path)], reply[65536];
    int opt, fd;

    while ((opt = getopt(argc, argv, "s:n:r:")) != -1) {
        if (opt == 's')
            arg_socket = optarg;
        else if (opt == 'n')
            attaches = (unsigned) strtoul(optarg, NULL, 10);
        else if (opt == 'r')
            requests = (unsigned) strtoul(optarg, NULL, 10);
        else {
            fprintf(stderr, "usage: %s [-s SOCKET] [-n ATTACHES] [-r STATS_REQUESTS]\n", argv[0]);
            return 2;
        }
    }
    if (attaches == 0 || requests == 0)
        return 2;
    socket_path(arg_socket, path, sizeof(path));
    t = calloc(attaches > requests ? attaches : requests, sizeof(*t));
    if (!t)
        return 1;

    /* 1. connect -> first malloc returned. */
    for (unsigned i = 0; i < attaches; i++) {
        uint64_t t0 = now_ns();
        shmheap_t *h;
        void *p;
        int r = shmheap_attach(path, &h);

        if (r < 0) {
            fprintf(stderr, "attach: %s: %s\n", shmheap_strerror(r), shmheap_last_error());
            return 1;
        }
        p = shmheap_malloc(h, 64);
        t[i] = now_ns() - t0;
        if (!p) {
            fprintf(stderr, "malloc: %s\n", strerror(errno));
            return 1;
        }
        shmheap_free(h, p);
        shmheap_detach(h);
    }
    report("attach + first malloc", t, attaches);

    /* 2. stats round trips with busy clients. */
    stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (stop == MAP_FAILED)
        return 1;
    for (int k = 0; k < BUSY_CLIENTS; k++) {
        kids[k] = fork();
        if (kids[k] == 0)
            busy_client(path, stop);
    }
    usleep(200 * 1000); /* let them attach and get going */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memcpy(addr.sun_path, path, strlen(path) + 1);
    if (fd < 0 || connect(fd, (struct sockaddr *) &addr, sizeof(addr)) < 0) {
        perror("connect");
        *stop = 1;
        return 1;
    }
    for (unsigned i = 0; i < requests; i++) {
        static const char req[] = "{\"op\":\"stats\"}\n";
        uint64_t t0 = now_ns();
        size_t len = 0;

        if (write(fd, req, sizeof(req) - 1) != (ssize_t) sizeof(req) - 1) {
            perror("write");
            break;
        }
        for (;;) {
            ssize_t n = read(fd, reply + len, sizeof(reply) - len);

            if (n <= 0) {
                fprintf(stderr, "read: %s\n", n < 0 ? strerror(errno) : "daemon hung up");
                *stop = 1;
                return 1;
            }
            len += (size_t) n;
            if (reply[len - 1] == '\n')
                break;
        }
        t[i] = now_ns() - t0;
        if (i == 0 && strncmp(reply, "{\"ok\":true", 10) != 0)
            fprintf(stderr, "stats reply: %.200s\n", reply);
    }
    report("stats round trip, 2 busy clients", t, requests);
    close(fd);
    *stop = 1;
    for (int k = 0; k < BUSY_CLIENTS; k++) {
        int status;

        waitpid(kids[k], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fprintf(stderr, "busy client %d failed (status %#x)\n", k, status);
    }
    free(t);
    return 0;
}
