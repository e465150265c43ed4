/* Restartable sequences on the per-CPU caches (percpu.h), x86-64.
 *
 * glibc (2.35+) registers a struct rseq for every thread at the thread
 * pointer + __rseq_offset. A sequence stores the address of its descriptor
 * (struct rseq_cs: start, length up to the commit, abort address; section
 * __rseq_cs) into the thread's rseq_cs field, reads cpu_id, and ends with
 * one store, the commit. If the thread is preempted, migrated or signalled
 * between the start and the commit, the kernel moves it to the abort
 * address before it runs again; the kernel first checks that the four
 * bytes before that address are the signature glibc registered (RSEQ_SIG,
 * here as the operand of a `ud1`, as the kernel's selftests write it, so
 * that the bytes decode as one trapping instruction). Each operation here
 * retries from C after an abort.
 *
 * The caches are shared by every process on the machine: any other
 * thread's sequence on the same CPU was preempted to let this one run, and
 * aborts when it resumes. A thread killed inside a sequence never commits.
 *
 * Each operation reads the CPU id itself and refuses (returns "none") a
 * CPU at or past ncpus; a thread without rseq reads cpu_id as
 * RSEQ_CPU_ID_UNINITIALIZED or _REGISTRATION_FAILED (both huge), so it is
 * refused the same way.
 *
 * Cache address: cbase + (cpu << PCPU_CPU_SHIFT), where cbase is the
 * class's cache on CPU 0 in this process's mapping (percpu.h). */
#ifndef SHM_RSEQ_H
#define SHM_RSEQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/rseq.h>

#include "shm/layout.h"

#if !defined(__x86_64__)
#    error "shm/rseq.h: the per-CPU caches have an x86-64 implementation only"
#endif

_Static_assert(RSEQ_SIG == 0x53053053, "the signature the asm below writes");
_Static_assert(offsetof(struct rseq, cpu_id) == 4, "rseq.cpu_id at 4");
_Static_assert(offsetof(struct rseq, rseq_cs) == 8, "rseq.rseq_cs at 8");

/* The calling thread's rseq area. */
static inline struct rseq *rseq_self(void)
{
    return (struct rseq *) ((char *) __builtin_thread_pointer() + __rseq_offset);
}

/* True when glibc registered rseq for this process's threads. */
static inline int rseq_available(void)
{
    return __rseq_size != 0;
}

/* clang-format would break the asm templates' one instruction per line. */
/* clang-format off */

/* The descriptor (label 3), the sequence's start (1) and commit end (2),
 * and the abort handler (4) in its own section, after the signature. */
#define RSEQ_CS_DESCRIPTOR                                                     \
    ".pushsection __rseq_cs, \"aw\"\n\t"                                       \
    ".balign 32\n\t"                                                           \
    "3:\n\t"                                                                   \
    ".long 0x0, 0x0\n\t"                                                       \
    ".quad 1f, (2f - 1f), 4f\n\t"                                              \
    ".popsection\n\t"
#define RSEQ_CS_ARM(scratch)                                                   \
    "leaq 3b(%%rip), %" scratch "\n\t"                                         \
    "movq %" scratch ", 8(%[rs])\n\t"
#define RSEQ_CS_ABORT(label)                                                   \
    ".pushsection __rseq_failure, \"ax\"\n\t"                                  \
    ".byte 0x0f, 0xb9, 0x3d\n\t"                                               \
    ".long 0x53053053\n\t"                                                     \
    "4:\n\t"                                                                   \
    "jmp %l[" label "]\n\t"                                                    \
    ".popsection\n\t"

/* Bytes between one CPU's caches and the next's, as a shift (percpu.h
 * checks it against its layout). */
#define RSEQ_PCPU_CPU_SHIFT 13
#define RSEQ_STR2(x)        #x
#define RSEQ_STR(x)         RSEQ_STR2(x)

/* The cache of this CPU: c = cbase + (cpu << RSEQ_PCPU_CPU_SHIFT), or
 * "none". */
#define RSEQ_PCPU_CACHE                                                        \
    "movl 4(%[rs]), %k[c]\n\t"                                                 \
    "cmpl %[ncpu], %k[c]\n\t"                                                  \
    "jae %l[none]\n\t"                                                         \
    "shlq $" RSEQ_STR(RSEQ_PCPU_CPU_SHIFT) ", %[c]\n\t"                        \
    "addq %[cbase], %[c]\n\t"

/* Pop: the object's offset, or 0 (empty cache, no cache for this CPU, or
 * the object lies in a segment at or past *nmapped, which this process
 * has not mapped yet: another process freed it there; the caller maps
 * and retries). Before the commit it writes `tag` into the object's owner
 * tag: the u16
 * at its block's start + toff + 2 * ((bytes into the block * mul) >> 32)
 * (obj_tag_at() in internal.h). An abort after that store leaves the tag
 * on an object still in the cache (see percpu.c: the sweep drains the CPU
 * caches before it reads tags). */
static inline __attribute__((always_inline)) uint64_t rseq_pcpu_pop(struct rseq *rs,
                                                                   const uint32_t *ncpu,
                                                                   const uint32_t *nmapped,
                                                                   char *cbase,
                                                                   char *base,
                                                                   uint64_t toff,
                                                                   uint64_t mul,
                                                                   uint16_t tag)
{
    uint64_t c, w, t, u, off;

retry:
    __asm__ __volatile__ goto(RSEQ_CS_DESCRIPTOR RSEQ_CS_ARM("[c]")
             "1:\n\t" RSEQ_PCPU_CACHE
             "movq (%[c]), %[w]\n\t"
             "movzwl %w[w], %k[t]\n\t"
             "testl %k[t], %k[t]\n\t"
             "jz %l[none]\n\t"
             /* slots[count - 1] is at c + 8 * count. */
             "movq (%[c],%[t],8), %[off]\n\t"
             /* A plain load of nmapped is an acquire on x86-64 (pairs
              * with heap_map_segment's release of it). */
             "movq %[off], %[u]\n\t"
             "shrq %[segshift], %[u]\n\t"
             "cmpl %[nmapped], %k[u]\n\t"
             "jae %l[none]\n\t"
             "leaq (%[base],%[off]), %[t]\n\t"
             "movzwl %w[t], %k[u]\n\t"
             "subq %[u], %[t]\n\t"
             "imulq %[mul], %[u]\n\t"
             "shrq $32, %[u]\n\t"
             "addq %[toff], %[t]\n\t"
             "movw %w[tag], (%[t],%[u],2)\n\t"
             "subq $1, %[w]\n\t"
             "movq %[w], (%[c])\n\t" /* commit */
             "2:\n\t" RSEQ_CS_ABORT("abort")
             : [c] "=&r"(c), [w] "=&r"(w), [t] "=&r"(t), [u] "=&r"(u), [off] "=&r"(off)
             : [rs] "r"(rs), [ncpu] "m"(*ncpu), [nmapped] "m"(*nmapped),
               [segshift] "i"(SHM_SEG_SHIFT), [cbase] "r"(cbase), [base] "r"(base),
               [toff] "r"(toff), [mul] "r"(mul), [tag] "r"(tag)
             : "memory", "cc"
             : none, abort);
    return off;
none:
    return 0;
abort:
    goto retry;
}

enum rseq_push_result {
    RSEQ_PUSHED = 0,
    RSEQ_PUSH_FULL,   /* the cache is full, or no cache for this CPU */
    RSEQ_PUSH_DOUBLE, /* off is the last object pushed: a double free */
};

/* Push of the object at off into a cache of at most `cap` objects. */
static inline __attribute__((always_inline)) enum rseq_push_result
rseq_pcpu_push(struct rseq *rs, const uint32_t *ncpu, char *cbase, uint64_t off, uint32_t cap)
{
    uint64_t c, w, t;

retry:
    __asm__ __volatile__ goto(RSEQ_CS_DESCRIPTOR RSEQ_CS_ARM("[c]")
             "1:\n\t" RSEQ_PCPU_CACHE
             "movq (%[c]), %[w]\n\t"
             "movzwl %w[w], %k[t]\n\t"
             "cmpl %[cap], %k[t]\n\t"
             "jae %l[none]\n\t"
             "testl %k[t], %k[t]\n\t"
             "jz 5f\n\t"
             "cmpq %[off], (%[c],%[t],8)\n\t"
             "je %l[dbl]\n\t"
             "5:\n\t"
             "movq %[off], 8(%[c],%[t],8)\n\t"
             "addq $1, %[w]\n\t"
             "movq %[w], (%[c])\n\t" /* commit */
             "2:\n\t" RSEQ_CS_ABORT("abort")
             : [c] "=&r"(c), [w] "=&r"(w), [t] "=&r"(t)
             : [rs] "r"(rs), [ncpu] "m"(*ncpu), [cbase] "r"(cbase), [off] "r"(off),
               [cap] "ri"(cap)
             : "memory", "cc"
             : none, dbl, abort);
    return RSEQ_PUSHED;
none:
    return RSEQ_PUSH_FULL;
dbl:
    return RSEQ_PUSH_DOUBLE;
abort:
    goto retry;
}

/* Batch push (a refill): moves buf[0..k-1] into the cache, k = min(n,
 * room), and adds k to both count and net in the one commit. Returns k (0:
 * full, or no cache for this CPU). */
static inline uint64_t rseq_pcpu_push_batch(struct rseq *rs,
                                            const uint32_t *ncpu,
                                            char *cbase,
                                            const uint64_t *buf,
                                            uint64_t n,
                                            uint32_t cap)
{
    uint64_t c, w, t, k, u, x;

retry:
    __asm__ __volatile__ goto(RSEQ_CS_DESCRIPTOR RSEQ_CS_ARM("[c]")
             "1:\n\t" RSEQ_PCPU_CACHE
             "movq (%[c]), %[w]\n\t"
             "movzwl %w[w], %k[t]\n\t"
             "movl %[cap], %k[k]\n\t"
             "subl %k[t], %k[k]\n\t"
             "jbe %l[none]\n\t"
             "cmpq %[n], %[k]\n\t"
             "cmova %[n], %[k]\n\t"
             "testq %[k], %[k]\n\t"
             "jz %l[none]\n\t"
             "leaq 8(%[c],%[t],8), %[t]\n\t"
             "xorl %k[u], %k[u]\n\t"
             "5:\n\t"
             "movq (%[buf],%[u],8), %[x]\n\t"
             "movq %[x], (%[t],%[u],8)\n\t"
             "addq $1, %[u]\n\t"
             "cmpq %[k], %[u]\n\t"
             "jb 5b\n\t"
             "movq %[k], %[u]\n\t"
             "shlq $16, %[u]\n\t"
             "addq %[k], %[u]\n\t"
             "addq %[u], %[w]\n\t"
             "movq %[w], (%[c])\n\t" /* commit */
             "2:\n\t" RSEQ_CS_ABORT("abort")
             : [c] "=&r"(c), [w] "=&r"(w), [t] "=&r"(t), [k] "=&r"(k), [u] "=&r"(u),
               [x] "=&r"(x)
             : [rs] "r"(rs), [ncpu] "m"(*ncpu), [cbase] "r"(cbase), [buf] "r"(buf),
               [n] "r"(n), [cap] "ri"(cap)
             : "memory", "cc"
             : none, abort);
    return k;
none:
    return 0;
abort:
    goto retry;
}

/* Batch pop (a flush or a drain): copies the top k = min(n, count)
 * objects into buf[0..k-1] and takes k from both count and net in the one
 * commit. Returns k (0: empty, or no cache for this CPU). */
static inline uint64_t
rseq_pcpu_pop_batch(struct rseq *rs, const uint32_t *ncpu, char *cbase, uint64_t *buf, uint64_t n)
{
    uint64_t c, w, t, k, u, x;

retry:
    __asm__ __volatile__ goto(RSEQ_CS_DESCRIPTOR RSEQ_CS_ARM("[c]")
             "1:\n\t" RSEQ_PCPU_CACHE
             "movq (%[c]), %[w]\n\t"
             "movzwl %w[w], %k[t]\n\t"
             "movq %[n], %[k]\n\t"
             "cmpq %[t], %[k]\n\t"
             "cmova %[t], %[k]\n\t"
             "testq %[k], %[k]\n\t"
             "jz %l[none]\n\t"
             "subq %[k], %[t]\n\t"
             "leaq 8(%[c],%[t],8), %[t]\n\t"
             "xorl %k[u], %k[u]\n\t"
             "5:\n\t"
             "movq (%[t],%[u],8), %[x]\n\t"
             "movq %[x], (%[buf],%[u],8)\n\t"
             "addq $1, %[u]\n\t"
             "cmpq %[k], %[u]\n\t"
             "jb 5b\n\t"
             "movq %[k], %[u]\n\t"
             "shlq $16, %[u]\n\t"
             "addq %[k], %[u]\n\t"
             "subq %[u], %[w]\n\t"
             "movq %[w], (%[c])\n\t" /* commit */
             "2:\n\t" RSEQ_CS_ABORT("abort")
             : [c] "=&r"(c), [w] "=&r"(w), [t] "=&r"(t), [k] "=&r"(k), [u] "=&r"(u),
               [x] "=&r"(x)
             : [rs] "r"(rs), [ncpu] "m"(*ncpu), [cbase] "r"(cbase), [buf] "r"(buf),
               [n] "r"(n)
             : "memory", "cc"
             : none, abort);
    return k;
none:
    return 0;
abort:
    goto retry;
}

/* clang-format on */

#endif
