/* Per-CPU caches in shared memory (a prototype; docs/ARCHITECTURE.md,
 * "Per-CPU caches"). One area per heap, a large object published as the
 * root PCPU_ROOT; per CPU and per class up to PCPU_MAX_SIZE, one
 * struct pcpu_cache, touched only by restartable sequences (rseq.h).
 *
 * Invariants, per cache:
 *   count = pcpu_count(word) <= PCPU_CAP; slots[0..count-1] are free
 *   objects of the cache's class, each in no other cache, bin or recycler
 *   net = pcpu_net(word) = objects that came in from outside (batch push)
 *         minus those that went out (batch pop), modulo 2^48
 *   objects in use through the per-CPU layer = sum over caches of
 *         (net - count)
 * Every change of a cache is one store of its word (the commit of a
 * sequence), so a thread killed at any instruction leaves these true.
 *
 * Entered from alloc.c's fast paths only in a build with
 * -DSHMHEAP_PERCPU (make PERCPU=1); percpu_malloc()/percpu_free() take
 * the per-CPU path in any build (tests). */
#ifndef SHM_PERCPU_H
#define SHM_PERCPU_H

#include <stdbool.h>
#include <stdint.h>

#include "shm/internal.h"
#include "shm/rseq.h"

#define PCPU_ROOT        "shmheap.percpu"
#define PCPU_MAGIC       UINT64_C(0x5550434850414548) /* "HEAPHCPU" */
#define PCPU_MAX_SIZE    1024u                        /* classes 0..31 */
#define PCPU_NCLASSES    32u
#define PCPU_CAP         31u /* objects per cache: the cache is 256 bytes */
#define PCPU_BATCH       16u /* objects a refill or a flush moves */
#define PCPU_CLASS_SHIFT 8u
#define PCPU_CPU_SHIFT   RSEQ_PCPU_CPU_SHIFT /* PCPU_NCLASSES << PCPU_CLASS_SHIFT bytes per CPU */
#define PCPU_HDR         4096u
#define PCPU_MAX_CPUS    1024u

struct pcpu_cache {
    uint64_t word; /* count (bits 0..15) | net (bits 16..63) */
    uint64_t slots[PCPU_CAP];
};

struct pcpu_header {
    uint64_t magic;
    uint32_t ncpus; /* caches exist for CPUs 0..ncpus-1 */
    uint32_t nclasses;
    uint32_t cap;
    uint32_t pad;
    uint64_t bytes; /* the area, header included */
};

_Static_assert(sizeof(struct pcpu_cache) == 1u << PCPU_CLASS_SHIFT, "a cache is 256 bytes");
_Static_assert(PCPU_NCLASSES << PCPU_CLASS_SHIFT == 1u << PCPU_CPU_SHIFT, "per-CPU stride");
_Static_assert(PCPU_CAP < 0xffff, "count fits 16 bits");
_Static_assert(sizeof(struct pcpu_header) <= PCPU_HDR, "header fits its page");

static inline uint32_t pcpu_count(uint64_t word)
{
    return (uint32_t) (word & 0xffff);
}

/* net, sign-extended from its 48 bits. */
static inline int64_t pcpu_net(uint64_t word)
{
    return (int64_t) word >> 16;
}

/* Class cls's cache on CPU 0 in this process's mapping; CPU k's is
 * (k << PCPU_CPU_SHIFT) bytes further. */
static inline char *pcpu_cbase(char *caches, unsigned cls)
{
    return caches + ((uint64_t) cls << PCPU_CLASS_SHIFT);
}

/* The slow paths (percpu.c). percpu_malloc_slow: attaches the area on
 * first use, refills the CPU cache from the thread's bin and pops again;
 * NULL sends the caller to the thread cache. percpu_free_slow: the cache
 * was full, or the area not attached yet: true if it took the object. */
void *percpu_malloc_slow(struct heap *h, struct tcache *tc, unsigned cls);
bool percpu_free_slow(struct heap *h, struct tcache *tc, uint64_t off, unsigned cls);

/* malloc of class cls < PCPU_NCLASSES through the CPU cache: the object,
 * or NULL (then use the thread cache). */
static inline __attribute__((always_inline)) void *
percpu_malloc_fast(struct heap *h, struct tcache *tc, unsigned cls)
{
    /* acquire: pairs with percpu_attach's release of pcpu_caches, so the
     * area's header checks and ncpus come with it. */
    char *caches = load_acquire(&h->pcpu_caches);

    if (likely(caches != NULL)) {
        uint64_t off = rseq_pcpu_pop(rseq_self(), &h->pcpu_ncpus, &h->nmapped,
                                     pcpu_cbase(caches, cls), h->base, h->cls_geo[cls].tags_off,
                                     h->cls_geo[cls].tag_mul, tc->owner_tag);

        if (likely(off != 0)) {
            struct cache_slot *s = tc->slot;
            uint32_t ops = load_relaxed(&s->ops) + 1;

            /* Counted as the thread cache counts (allocs + ops); the
             * tick also looks at the trim and config generations. */
            store_relaxed(&s->ops, ops);
            if (unlikely(ops >= TCACHE_TICK))
                tcache_tick(h, tc);
            return off_ptr(h, off);
        }
    }
    return percpu_malloc_slow(h, tc, cls);
}

/* free of the object at off, of class cls < PCPU_NCLASSES: true if the
 * CPU cache took it (or it was an immediate double free, counted). */
static inline __attribute__((always_inline)) bool
percpu_free_fast(struct heap *h, struct tcache *tc, uint64_t off, unsigned cls)
{
    char *caches = load_acquire(&h->pcpu_caches); /* as in percpu_malloc_fast */

    if (likely(caches != NULL)) {
        enum rseq_push_result r =
                rseq_pcpu_push(rseq_self(), &h->pcpu_ncpus, pcpu_cbase(caches, cls), off, PCPU_CAP);

        if (likely(r == RSEQ_PUSHED))
            return true;
        if (r == RSEQ_PUSH_DOUBLE) {
            (void) fetch_add_relaxed(&h->ctl->double_frees, 1);
            return true;
        }
    }
    return percpu_free_slow(h, tc, off, cls);
}

/* The per-CPU path in any build, for tests: malloc of up to PCPU_MAX_SIZE
 * bytes through the CPU cache (the thread cache when it cannot), and free
 * (any object of the heap: a small one of a per-CPU class goes to the CPU
 * cache, anything else to heap_free). */
void *percpu_malloc(struct heap *h, size_t size);
void percpu_free(struct heap *h, void *p);

/* Finds the area (making it if `create`): 0, -ENOENT (none and not
 * create), or a negative errno. Sets h->pcpu_caches. */
int percpu_attach(struct heap *h, bool create);

/* Drains every CPU's caches, pinning the calling thread to each CPU in
 * turn (restored after): the objects go through the caller's thread cache
 * (tags cleared) on to the recyclers. Returns the objects drained, and
 * in *ret_left (if not NULL) those left in caches of CPUs this thread may
 * not run on (or every cached object when this process has no rseq). 0
 * and nothing left when the heap has no area. */
uint64_t percpu_drain_all(struct heap *h, uint64_t *ret_left);

/* Sums the caches: per class, objects in use through them (net - count,
 * wrapping: add to other sums) and objects cached. Returns the area's
 * bytes in whole blocks (a RUN_LARGE run that the figures take off the
 * bytes in use: it is the allocator's own); 0 and nothing added when the
 * heap has no area (in a build without SHMHEAP_PERCPU looked for at most
 * every 100 ms while there is none). */
uint64_t
percpu_counts(struct heap *h, uint64_t in_use[SHM_NCLASSES], uint64_t cached[SHM_NCLASSES]);

#endif
