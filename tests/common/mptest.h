/* Helpers for the multi-process suites (tests/mp/): shared scratch memory
 * inherited across fork(), children that report failure through their
 * exit status, object patterns that name their owner, a cross-process
 * inbox of offsets and the live-object checker.
 *
 * Children never call ck_assert (a failure there would be reported from
 * the wrong process): they print what went wrong and _exit() with a
 * non-zero status, which the parent turns into a test failure. */
#ifndef TESTS_MPTEST_H
#define TESTS_MPTEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm/heap.h"

/* ---- shared scratch memory ---- */

/* Zeroed MAP_SHARED|MAP_ANONYMOUS memory, created before fork() so that
 * every child sees the same bytes. Fails the test on error. */
void *mp_shared_alloc(size_t size);
void mp_shared_free(void *p, size_t size);

/* ---- children ---- */

/* Exit status of a child whose check failed (mp_fail). */
#define MP_EXIT_FAIL 86

/* In a child (or a child's thread): prints where and why, then _exit()s
 * the whole process with MP_EXIT_FAIL. */
__attribute__((noreturn, format(printf, 3, 4))) void
mp_fail(const char *file, int line, const char *fmt, ...);
#define MP_REQUIRE(cond, ...)                         \
    do {                                              \
        if (__builtin_expect(!(cond), 0))             \
            mp_fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

/* Forks; the child runs fn(arg, idx) and _exit()s with its return value
 * (it never returns into the test). Fails the test if fork fails. */
pid_t mp_fork(int (*fn)(void *arg, unsigned idx), void *arg, unsigned idx);
/* waitpid; returns the raw status. */
int mp_wait(pid_t pid);
/* Fails the test unless the child exited with status 0. */
void mp_wait_ok(pid_t pid, const char *what);
/* Waits for all n children in whatever order they end; as soon as one
 * fails, SIGKILLs and reaps the others (they may be waiting for it) and
 * fails the test naming the first failure. */
void mp_wait_all_ok(const pid_t *pids, unsigned n, const char *what);
/* As mp_wait_ok, but a child still running after `seconds` is taken for
 * deadlocked: each of its threads' /proc syscall line (a futex wait shows
 * the futex address) is printed, the child is SIGKILLed and the test fails.
 * A deadlock detector with a bound far above the normal time, not a
 * timing assertion. */
void mp_wait_ok_bounded(pid_t pid, unsigned seconds, const char *what);
/* Fails the test unless the child was killed by signal sig. */
void mp_wait_signaled(pid_t pid, int sig, const char *what);
/* Describes a wait status ("exit 3", "signal 9") into buf. */
const char *mp_status_str(int status, char *buf, size_t len);

void mp_sleep_ms(unsigned ms);
void mp_sleep_us(unsigned us);

/* ---- patterns ---- */

/* A tag names an object's owner: process, thread and sequence number. */
static inline uint64_t mp_tag(unsigned proc, unsigned thread, uint64_t seq)
{
    return (uint64_t) (proc & 0xff) << 56 | (uint64_t) (thread & 0xff) << 48 |
           (seq & UINT64_C(0xffffffffffff));
}

/* Fills [p, p+size) with a pattern derived from tag and checks it. Every
 * byte depends on the tag and its position, so any overlap with another
 * object, a stray link word or a lost write shows. */
void mp_fill(void *p, size_t size, uint64_t tag);
/* Returns the index of the first wrong byte, or SIZE_MAX if all match. */
size_t mp_check(const void *p, size_t size, uint64_t tag);
/* Cheaper variant for storms: only the first, middle and last words. */
void mp_fill_sparse(void *p, size_t size, uint64_t tag);
bool mp_check_sparse(const void *p, size_t size, uint64_t tag);

/* A random request size: mostly 16..4096 (biased small), and one in
 * large_one_in (0: never) a large object of 32 KiB + 1 .. 256 KiB. */
size_t mp_rand_size(uint64_t *rng, unsigned large_one_in);

/* ---- an inbox of objects handed from one process to another ---- */

/* An object named portably: offset (heap_to_off), requested size, tag. */
struct mp_obj {
    uint64_t off;
    uint64_t size;
    uint64_t tag;
};

/* A bounded multi-producer, multi-consumer queue in shared memory, guarded
 * by a process-shared mutex. */
struct mp_inbox {
    pthread_mutex_t lock;
    uint32_t cap;
    uint32_t head; /* next to receive */
    uint32_t count;
    uint32_t pad;
    uint64_t sent, received; /* totals, under lock */
    struct mp_obj msgs[];
};

size_t mp_inbox_bytes(uint32_t cap);
void mp_inbox_init(struct mp_inbox *b, uint32_t cap);
/* False if the inbox is full (the sender keeps the object). */
bool mp_inbox_send(struct mp_inbox *b, const struct mp_obj *m);
/* Takes up to max messages; returns how many. */
uint32_t mp_inbox_recv(struct mp_inbox *b, struct mp_obj *out, uint32_t max);
void mp_inbox_destroy(struct mp_inbox *b);

/* ---- ThreadSanitizer and objects that travel between processes ----
 *
 * TSan sees one process. The core tells it that an object changes hands at
 * each malloc and free (alloc.c), which covers objects that move through
 * the allocator. An object sent to another process while allocated
 * (through an mp_inbox) is outside that, both ways:
 *   - T1 of P frees X (its free, overflow or flush write X's link words
 *     after the free's release), X reaches Q through the recycler or the
 *     blocks, Q sends it back to T2 of P, T2 reads it;
 *   - T1 of P reads X and sends it to Q, Q frees it to the blocks, T2 of P
 *     takes it from there (slab_take links it before malloc's acquire).
 * Each chain runs through Q, so TSan would report T1's and T2's accesses as
 * a race. In reality every hop goes through X itself, a recycler head CAS
 * or a segment lock. So both the sender and the receiver release (send)
 * or acquire (receive) X and every recycler head and segment lock of h,
 * the sync objects the core uses. No-ops without TSan. */
void mp_tsan_send(struct heap *h, const void *obj);
void mp_tsan_receive(struct heap *h, const void *obj);

/* ---- verification ---- */

/* heap_verify with every problem printed. Returns false if the heap is
 * inconsistent; *ret_counts_checked (if not NULL) says whether the exact
 * object count was checked (it is skipped after a thread died inside a
 * cache operation). */
bool mp_verify(struct heap *h, bool *ret_counts_checked);
/* Blocks of every segment that are not free (header blocks excluded): 0
 * when no object, slab or run is left anywhere. */
uint64_t mp_blocks_not_free(struct heap *h);

/* ---- the checker ---- */

/* Checks a set of live objects seen through attachment h: each offset maps
 * to memory of h with a usable size of at least its requested size, no two
 * objects overlap (sorted by offset, each ends by the next one's start),
 * and every pattern is intact. Sorts objs by offset. Prints each problem
 * (at most 20) and returns the number found; *ret_usable gets the sum of
 * the usable sizes. */
unsigned mp_check_live(struct heap *h, struct mp_obj *objs, size_t n, uint64_t *ret_usable);

/* Sum of classes[].cached over every class. */
uint64_t mp_stats_cached(const struct heap_stats *st);

#endif
