/* A user of libshmheap for the debugger tests (tests/service/check_debuggers.c):
 * run under valgrind's memcheck, or built with ASan, each mode does one
 * thing a user might get wrong, or nothing wrong at all:
 *   track_user SOCKET clean     malloc family, sharing, arenas, pools: no error
 *   track_user SOCKET uaf       reads a freed object
 *   track_user SOCKET overflow  writes one byte past an object
 *   track_user SOCKET leak      loses an object it never frees or shares
 *   track_user SOCKET double    frees an object twice
 * Exit status 0 when the program itself ran to its end; the tool's verdict
 * is the tool's (memcheck's --error-exitcode, ASan's abort). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmheap.h"

static int clean(shmheap_t *h)
{
    char *small[64], *big, *z, *a, *r;
    shmheap_off_t arena, pool, off;
    void *q;

    for (unsigned i = 0; i < 64; i++) {
        small[i] = shmheap_malloc(h, 1 + i * 37);
        if (!small[i])
            return 2;
        memset(small[i], (int) i, 1 + i * 37);
    }
    big = shmheap_malloc(h, 200000);
    z = shmheap_calloc(h, 10, 100);
    a = shmheap_aligned_alloc(h, 256, 300);
    if (!big || !z || !a || (uintptr_t) a % 256)
        return 3;
    memset(big, 1, 200000);
    memset(a, 2, 300);
    for (unsigned i = 0; i < 1000; i++)
        if (z[i])
            return 4;
    /* Grow and shrink: the bytes asked for stay. */
    r = shmheap_realloc(h, small[10], 5000);
    if (!r || r[369] != 10)
        return 5;
    small[10] = shmheap_realloc(h, r, 8);
    if (!small[10] || small[10][7] != 10)
        return 6;
    if (shmheap_usable_size(h, small[3]) < 112)
        return 7;
    memset(small[3], 3, shmheap_usable_size(h, small[3]));
    /* Shared: through an offset, freed as another process would. */
    off = shmheap_to_off(h, small[20]);
    q = shmheap_from_off(h, off);
    if (q != small[20])
        return 8;
    for (unsigned i = 0; i < 64; i++)
        shmheap_free(h, small[i]);
    shmheap_free(h, big);
    shmheap_free(h, z);
    shmheap_free(h, a);
    /* Reused memory is usable again. */
    for (unsigned round = 0; round < 3; round++)
        for (unsigned i = 0; i < 2000; i++) {
            char *p = shmheap_malloc(h, 16 + i % 300);

            if (!p)
                return 9;
            memset(p, 7, 16 + i % 300);
            shmheap_free(h, p);
        }
    if (shmheap_arena_create(h, 1 << 20, 0, &arena) != 0 || shmheap_pool_create(h, 48, &pool) != 0)
        return 10;
    q = shmheap_arena_alloc(h, arena, 1000, 0);
    if (!q)
        return 11;
    memset(q, 4, 1000);
    q = shmheap_pool_alloc(h, pool);
    if (!q)
        return 12;
    memset(q, 5, 48);
    shmheap_pool_free(h, pool, q);
    if (shmheap_arena_destroy(h, arena) != 0 || shmheap_pool_destroy(h, pool) != 0)
        return 13;
    return 0;
}

int main(int argc, char **argv)
{
    volatile char sink;
    shmheap_t *h;
    char *p;
    int r, rc = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: track_user SOCKET clean|uaf|overflow|leak|double\n");
        return 64;
    }
    r = shmheap_attach(argv[1], &h);
    if (r < 0) {
        fprintf(stderr, "track_user: attach: %s\n", shmheap_strerror(r));
        return 65;
    }
    if (strcmp(argv[2], "clean") == 0) {
        rc = clean(h);
    } else if (strcmp(argv[2], "uaf") == 0) {
        p = shmheap_malloc(h, 64);
        memset(p, 1, 64);
        shmheap_free(h, p);
        sink = p[40]; /* the use after free */
        (void) sink;
    } else if (strcmp(argv[2], "overflow") == 0) {
        p = shmheap_malloc(h, 40);
        memset(p, 1, 40);
        p[40] = 2; /* one past the end */
        shmheap_free(h, p);
    } else if (strcmp(argv[2], "leak") == 0) {
        p = shmheap_malloc(h, 100);
        memset(p, 1, 100);
        p = NULL; /* lost */
    } else if (strcmp(argv[2], "double") == 0) {
        p = shmheap_malloc(h, 64);
        shmheap_free(h, p);
        shmheap_free(h, p);
    } else {
        fprintf(stderr, "track_user: unknown mode %s\n", argv[2]);
        rc = 64;
    }
    shmheap_detach(h);
    if (rc)
        fprintf(stderr, "track_user: %s failed at step %d\n", argv[2], rc);
    return rc;
}
