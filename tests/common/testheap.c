/* Helpers shared by the Check suites; see testheap.h. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/common/testheap.h"

void th_create(struct test_heap *t, const struct shm_config *cfg, int policy)
{
    struct shm_config def;
    int r;

    if (!cfg) {
        heap_config_default(&def);
        def.segment_size = UINT64_C(256) << 20;
        cfg = &def;
    }
    memset(t, 0, sizeof(*t));
    r = heap_local_create(cfg, policy, &t->local);
    ck_assert_msg(r == 0, "heap_local_create: %s", strerror(-r));
    r = heap_local_attach(t->local, 1, &t->h);
    ck_assert_msg(r == 0, "heap_local_attach: %s", strerror(-r));
}

struct heap *th_attach_child(struct test_heap *t, uint64_t client_id)
{
    struct heap *h;
    int r = heap_local_attach(t->local, client_id, &h);

    if (r < 0) {
        fprintf(stderr, "child %d: attach: %s\n", (int) getpid(), strerror(-r));
        _exit(99);
    }
    return h;
}

bool th_verify_quiet(struct heap *h)
{
    struct verify_report rep;
    int r = heap_verify(h, &rep);

    if (r < 0) {
        fprintf(stderr, "heap_verify: %s\n", strerror(-r));
        return false;
    }
    for (uint32_t i = 0; i < rep.nproblems && i < 16; i++)
        fprintf(stderr, "verify: %s\n", rep.problems[i]);
    return rep.consistent;
}

void th_verify(struct heap *h)
{
    ck_assert_msg(th_verify_quiet(h), "heap_verify found problems (see stderr)");
}

void th_destroy(struct test_heap *t)
{
    if (t->h)
        heap_detach(t->h);
    if (t->local)
        heap_local_destroy(t->local);
    memset(t, 0, sizeof(*t));
}

bool test_scale_small(void)
{
    const char *s = getenv("SHMHEAP_TEST_SCALE");

    return s && strcmp(s, "small") == 0;
}

uint64_t test_scaled(uint64_t n, uint64_t div)
{
    return test_scale_small() ? (n / div ? n / div : 1) : n;
}

uint64_t test_rand(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

void th_config(struct shm_config *cfg, uint64_t segment_size)
{
    heap_config_default(cfg);
    cfg->segment_size = segment_size;
}

/* One pattern word per 8 bytes, mixed from the seed and the word's index,
 * so that a shifted or swapped copy does not match. */
static uint64_t pattern_word(uint64_t seed, uint64_t i)
{
    uint64_t x = seed * UINT64_C(0x9e3779b97f4a7c15) + i * UINT64_C(0xbf58476d1ce4e5b9) + 1;

    x ^= x >> 31;
    x *= UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 29);
}

void th_fill_pattern(void *p, size_t n, uint64_t seed)
{
    unsigned char *b = p;

    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = pattern_word(seed, i / 8);

        memcpy(b + i, &w, n - i < 8 ? n - i : 8);
    }
}

size_t th_check_pattern(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = pattern_word(seed, i / 8);
        size_t len = n - i < 8 ? n - i : 8;

        if (memcmp(b + i, &w, len) != 0) {
            for (size_t k = 0; k < len; k++)
                if (b[i + k] != ((const unsigned char *) &w)[k])
                    return i + k;
        }
    }
    return n;
}

int th_wait_child(pid_t pid)
{
    int status;

    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}
