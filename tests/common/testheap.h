/* Helpers shared by the Check suites: a heap owned by the test process
 * (shm/local.h), verification with the problems printed, test scale. */
#ifndef TESTS_TESTHEAP_H
#define TESTS_TESTHEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

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

/* cfg = the built-in defaults with this segment size. */
void th_config(struct shm_config *cfg, uint64_t segment_size);
/* Writes a pattern derived from seed over [p, p+n); th_check_pattern
 * returns the index of the first byte that differs, or n if all match. */
void th_fill_pattern(void *p, size_t n, uint64_t seed);
size_t th_check_pattern(const void *p, size_t n, uint64_t seed);
/* waitpid on a child: its exit status, or 128 + the signal that killed
 * it, or -1 if waitpid failed. */
int th_wait_child(pid_t pid);

#endif
