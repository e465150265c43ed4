/* Named-order atomics for memory shared between processes, and the single
 * 128-bit compare-and-swap.
 *
 * Every helper here works on plain integer fields of shared structures (the
 * layout in layout.h is an ABI, so it uses fixed-width integers rather than
 * _Atomic types whose representation the ABI would then depend on). The
 * __atomic builtins compile to single instructions on x86-64 for 1, 2, 4
 * and 8 byte widths; _Static_asserts below pin that.
 *
 * 16-byte atomics are the exception: gcc sends __atomic_*_16 to libatomic,
 * whose fallback is a per-process lock table and therefore NOT atomic
 * between processes. cas128() is lock cmpxchg16b itself, in inline asm;
 * `make check-atomics` proves no __atomic_*_16 symbol reaches the build. */
#ifndef SHM_ATOMIC_H
#define SHM_ATOMIC_H

#include <stdbool.h>
#include <stdint.h>

_Static_assert(__atomic_always_lock_free(4, 0), "4-byte atomics must be lock-free");
_Static_assert(__atomic_always_lock_free(8, 0), "8-byte atomics must be lock-free");
#if !defined(__x86_64__) || !defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16)
#    error "shmheap needs x86-64 with cmpxchg16b (build with -mcx16)"
#endif

#define load_relaxed(p)         __atomic_load_n((p), __ATOMIC_RELAXED)
#define load_acquire(p)         __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_relaxed(p, v)     __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define store_release(p, v)     __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define fetch_add_relaxed(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define fetch_add_acq_rel(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
#define fetch_sub_relaxed(p, v) __atomic_fetch_sub((p), (v), __ATOMIC_RELAXED)
#define exchange_acq_rel(p, v)  __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)
#define cas_strong_acq_rel(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define cas_weak_acq_rel(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), true, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
/* Weak CASes for retry loops that publish with the new value (release) or
 * publish nothing (relaxed); a failure only refreshes *expp (relaxed). */
#define cas_weak_release(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), true, __ATOMIC_RELEASE, __ATOMIC_RELAXED)
#define cas_weak_relaxed(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)
/* A lock's word (lock.c): taking it acquires what the last holder
 * released; letting go releases what the holder wrote. */
#define cas_strong_acquire(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)
#define cas_strong_release(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), false, __ATOMIC_RELEASE, __ATOMIC_RELAXED)
#define fetch_and_relaxed(p, v) __atomic_fetch_and((p), (v), __ATOMIC_RELAXED)
/* A single try that publishes nothing (a repair of one word). */
#define cas_strong_relaxed(p, expp, v) \
    __atomic_compare_exchange_n((p), (expp), (v), false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)
/* Owner-only counters: one writer, lock-free readers. A relaxed load and
 * store (not an atomic read-modify-write) is a plain add on x86-64 and costs
 * the fast path nothing; readers only ever want a snapshot. */
#define bump_relaxed(p, v) store_relaxed((p), load_relaxed(p) + (v))
/* Keeps the compiler from moving memory accesses across this point; the
 * hardware needs nothing more for same-thread ordering (see tcache.c). */
#define compiler_barrier() __atomic_signal_fence(__ATOMIC_SEQ_CST)

/* Raises the maximum *p to v if v is higher, and returns the maximum. A
 * bound that only grows. _release: a reader that loads the new value with
 * acquire sees what the raiser wrote before (the caller says what, and
 * which acquire pairs with it). _relaxed: the value publishes nothing; a
 * lost race retries with the value that won. */
static inline uint32_t raise_max32_release(uint32_t *p, uint32_t v)
{
    uint32_t seen = load_relaxed(p);

    while (v > seen && !cas_weak_release(p, &seen, v))
        ;
    return v > seen ? v : seen;
}

static inline uint64_t raise_max64_relaxed(uint64_t *p, uint64_t v)
{
    uint64_t seen = load_relaxed(p);

    while (v > seen && !cas_weak_relaxed(p, &seen, v))
        ;
    return v > seen ? v : seen;
}

/* A Treiber stack head: {offset, tag}. Every successful pop bumps the tag,
 * so a head that was popped and pushed back between another process's read
 * and its CAS (ABA) makes that CAS fail. The tag is a full 64 bits: it
 * cannot wrap in the life of a machine. */
typedef union {
    struct {
        uint64_t off;
        uint64_t tag;
    } s;
    unsigned __int128 u;
} __attribute__((aligned(16))) tagged_head_t;

_Static_assert(sizeof(tagged_head_t) == 16, "tagged head is 16 bytes");

#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#endif

/* lock cmpxchg16b, written out: a locked instruction is a full barrier, so
 * this is at least acq_rel (a successful pop acquires what the pusher
 * released; a push releases the links it wrote before). On failure
 * *expected receives the value seen. Inline asm rather than __sync: the
 * sanitizers route 16-byte __sync builtins through their runtime, where
 * TSan emulates them under a process-local lock; under TSan the
 * happens-before edge is announced by hand instead. */
static inline bool cas128(tagged_head_t *p, tagged_head_t *expected, tagged_head_t desired)
{
    bool ok;

#if defined(__SANITIZE_THREAD__)
    __tsan_release(p);
#endif
    __asm__ __volatile__("lock cmpxchg16b %1"
                         : "=@ccz"(ok), "+m"(p->u), "+a"(expected->s.off), "+d"(expected->s.tag)
                         : "b"(desired.s.off), "c"(desired.s.tag)
                         : "memory");
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(p);
#endif
    return ok;
}

/* Reads the two halves with relaxed 64-bit loads (never a 16-byte load,
 * which would be a cmpxchg16b and write). A torn pair is harmless: the CAS
 * that follows compares all 128 bits and rejects it. */
static inline tagged_head_t head_read(const tagged_head_t *p)
{
    tagged_head_t h;

    h.s.tag = load_acquire(&p->s.tag);
    h.s.off = load_acquire(&p->s.off);
    return h;
}

#endif
