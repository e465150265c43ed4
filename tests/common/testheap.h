/* Helpers shared by the Check suites: a heap owned by the test process
 * (shm/local.h), verification with the problems printed, test scale. */
#ifndef TESTS_TESTHEAP_H
#define TESTS_TESTHEAP_H

#include <stdbool.h>
#include <stdint.h>

#include "shm/heap.h"
#include "shm/local.h"

struct test_heap {
    struct heap_local *local;
    struct heap *h; /* this process's attachment */
};

/* Creates a local heap (cfg NULL: defaults with a 256 MiB segment) and
 * attaches to it with client id 1. Fails the test on error. */
void th_create(struct test_heap *t, const struct shm_config *cfg, int policy);
/* In a forked child: a new attachment of the child's own (the parent's
 * handle must not be used in the child). Exits the child on failure. */
struct heap *th_attach_child(struct test_heap *t, uint64_t client_id);
/* Runs heap_verify and fails the test, printing every problem, unless the
 * heap is consistent. */
void th_verify(struct heap *h);
/* Same, returning false (and printing) instead of failing; for children. */
bool th_verify_quiet(struct heap *h);
void th_destroy(struct test_heap *t);
/* True when SHMHEAP_TEST_SCALE=small (sanitizer runs): use smaller sizes. */
bool test_scale_small(void);
/* Scales n down by `div` under test_scale_small(). */
uint64_t test_scaled(uint64_t n, uint64_t div);
/* xorshift64*: deterministic test randomness. */
uint64_t test_rand(uint64_t *state);

#endif
