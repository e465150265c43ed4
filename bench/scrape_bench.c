/* The /metrics figures: scrape latency (median, 99th percentile) over
 * SCRAPES scrapes while NCLIENTS client processes allocate and free busily
 * across NCLASSES size classes, and the body's size then.
 *
 * Usage: scrape-bench SOCKET PORT [SCRAPES]
 * against a running shmheapd with --metrics-listen 127.0.0.1:PORT
 * (scripts/metrics-bench.sh starts one). Scrapes go over one kept-alive
 * connection, as Prometheus does, and then over a fresh connection each. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmheap.h"

#define NCLIENTS 4
#define NCLASSES 40

static double now_us(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec * 1e6 + (double) ts.tv_nsec / 1e3;
}

/* A client: one object held in each of NCLASSES classes, and a loop of
 * malloc/free over the same sizes until killed. */
static void busy_client(const char *sock, int id, int ready_fd)
{
    shmheap_t *h;
    void *held[NCLASSES];
    unsigned x = (unsigned) id * 2654435761u + 1;
    char c = 1;

    if (shmheap_attach(sock, &h) != 0)
        _exit(2);
    for (int i = 0; i < NCLASSES; i++)
        if (!(held[i] = shmheap_malloc(h, (size_t) (i + 1) * 48)))
            _exit(3);
    if (write(ready_fd, &c, 1) != 1)
        _exit(4);
    for (;;) {
        void *tmp[32];

        for (int i = 0; i < 32; i++) {
            x = x * 1103515245u + 12345u;
            tmp[i] = shmheap_malloc(h, (size_t) ((x >> 16) % NCLASSES + 1) * 48);
        }
        for (int i = 0; i < 32; i++)
            shmheap_free(h, tmp[i]);
    }
}

static int connect_port(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t) port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *) &a, sizeof(a)) < 0) {
        perror("scrape-bench: connect");
        exit(1);
    }
    return fd;
}

/* One GET /metrics on fd; returns the body size. */
static size_t scrape(int fd, char *buf, size_t cap)
{
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    size_t got = 0;
    long body = -1;
    char *sep = NULL;

    if (send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t) sizeof(req) - 1) {
        perror("scrape-bench: send");
        exit(1);
    }
    while (!sep || (long) (got - (size_t) (sep + 4 - buf)) < body) {
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);

        if (n <= 0) {
            fprintf(stderr, "scrape-bench: the connection closed mid-reply\n");
            exit(1);
        }
        got += (size_t) n;
        buf[got] = 0;
        sep = strstr(buf, "\r\n\r\n");
        if (sep && body < 0) {
            const char *cl = strcasestr(buf, "\r\nContent-Length:");

            if (!cl || strncmp(buf, "HTTP/1.1 200 ", 13) != 0) {
                fprintf(stderr, "scrape-bench: bad reply: %.100s\n", buf);
                exit(1);
            }
            body = strtol(cl + 17, NULL, 10);
        }
    }
    return (size_t) body;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;

    return x < y ? -1 : x > y;
}

static void report(const char *how, double *lat, int n, size_t body)
{
    qsort(lat, (size_t) n, sizeof(*lat), cmp_double);
    printf("scrape (%s): %d scrapes, median %.0f us, p99 %.0f us, max %.0f us; body %zu bytes\n",
           how, n, lat[n / 2], lat[(n * 99) / 100], lat[n - 1], body);
}

int main(int argc, char **argv)
{
    static char buf[4 << 20];
    pid_t kids[NCLIENTS];
    int ready[2], port, n, fd;
    double *lat;
    size_t body = 0;

    if (argc < 3) {
        fprintf(stderr, "usage: scrape-bench SOCKET PORT [SCRAPES]\n");
        return 2;
    }
    port = atoi(argv[2]);
    n = argc > 3 ? atoi(argv[3]) : 1000;
    if (n < 1 || pipe(ready) < 0)
        return 2;
    lat = calloc((size_t) n, sizeof(*lat));
    for (int i = 0; i < NCLIENTS; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            (void) close(ready[0]);
            busy_client(argv[1], i, ready[1]);
        }
    }
    (void) close(ready[1]);
    for (int i = 0; i < NCLIENTS; i++) {
        char c;

        if (read(ready[0], &c, 1) != 1) {
            fprintf(stderr, "scrape-bench: a client failed to start\n");
            return 1;
        }
    }
    fd = connect_port(port);
    for (int i = 0; i < n; i++) {
        double t0 = now_us();

        body = scrape(fd, buf, sizeof(buf));
        lat[i] = now_us() - t0;
    }
    (void) close(fd);
    report("kept-alive connection", lat, n, body);
    for (int i = 0; i < n; i++) {
        double t0 = now_us();

        fd = connect_port(port);
        body = scrape(fd, buf, sizeof(buf));
        (void) close(fd);
        lat[i] = now_us() - t0;
    }
    report("a connection each", lat, n, body);
    printf("with %d clients busy, %d size classes in use\n", NCLIENTS, NCLASSES);
    for (int i = 0; i < NCLIENTS; i++) {
        (void) kill(kids[i], SIGKILL);
        (void) waitpid(kids[i], NULL, 0);
    }
    free(lat);
    return 0;
}
