/* A static user of libshmheap (linked with libshmheap.a alone) whose own
 * global functions and variables carry names that the library uses inside:
 * conn_open (client/), os_commit and heap_malloc (shm/), wire_read_line
 * (wire/), tl_last (a thread-local of the core). Issue 7: the archive used
 * to export ~150 such names, so this program failed to link ("multiple
 * definition") or, worse, had the library call the user's function. It now
 * links because libshmheap.a keeps only shmheap_* global (Makefile).
 *
 * Run by the service suite (tests/service/check_static.c) with the socket
 * path of a live daemon: attaches, allocates, frees and detaches through the
 * library, checks that its own names still mean its own things, prints
 * "static user: ok" and exits 0; any failure is a message and exit 1. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "shmheap.h"

/* The user's own globals; the prototypes keep -Wmissing-prototypes happy. */
int conn_open(int x);
int heap_malloc(void);
long wire_read_line(const char *s);
int os_commit = 7;
__thread int tl_last = 5;

int conn_open(int x)
{
    return x + 1;
}

int heap_malloc(void)
{
    return 42;
}

long wire_read_line(const char *s)
{
    return (long) strlen(s);
}

#define OBJECTS 256

static int fail(const char *what, int r)
{
    fprintf(stderr, "static user: %s: %s (%s)\n", what, shmheap_strerror(r), shmheap_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    struct shmheap_stats st;
    void *p[OBJECTS];
    shmheap_t *h;
    int r;

    if (argc != 2) {
        fprintf(stderr, "usage: static_user SOCKET\n");
        return 2;
    }
    r = shmheap_attach(argv[1], &h);
    if (r < 0)
        return fail("attach", r);
    for (int i = 0; i < OBJECTS; i++) {
        p[i] = shmheap_malloc(h, 16 + (size_t) i * 8);
        if (!p[i])
            return fail("malloc", -1);
        memset(p[i], i, 16 + (size_t) i * 8);
    }
    for (int i = 0; i < OBJECTS; i++)
        shmheap_free(h, p[i]);
    shmheap_thread_flush(h);
    r = shmheap_stats(h, &st);
    if (r < 0)
        return fail("stats", r);
    if (st.allocs < OBJECTS || st.frees < OBJECTS) {
        fprintf(stderr, "static user: stats count %llu allocs, %llu frees\n",
                (unsigned long long) st.allocs, (unsigned long long) st.frees);
        return 1;
    }
    shmheap_detach(h);
    /* The library ran without touching what these names mean here. */
    if (conn_open(1) != 2 || heap_malloc() != 42 || wire_read_line("abc") != 3 || os_commit != 7 ||
        tl_last != 5) {
        fprintf(stderr, "static user: its own globals were replaced by the library's\n");
        return 1;
    }
    printf("static user: ok\n");
    return 0;
}
