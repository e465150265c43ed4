/* SPDX-License-Identifier: MIT */
/*
 * bittree: a static three-level hierarchical bitmap in shared memory, used to find the first
 * free block of a heap segment with one tzcnt per level. See the preamble of bittree.c for the
 * levels, the invariants and the concurrency rules.
 *
 * Everything declared here is internal to shm/ (prefix bittree_, no SHMHEAP_EXPORT). The two
 * structs are shared-memory layout: no pointers, fixed offsets, pinned below.
 */
#ifndef SHMHEAP_SHM_BITTREE_H
#define SHMHEAP_SHM_BITTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BITTREE_BITS       16384u /* bits covered by one tree: 256 leaf words of 64 bits */
#define BITTREE_MID_WORDS  4u     /* level 1: one bit per leaf word */
#define BITTREE_LEAF_WORDS 256u   /* level 2: the bits themselves */
#define BITTREE_MAX_TREES  64u    /* the chain summary is one word, one bit per tree */
#define BITTREE_MAX_BITS   (BITTREE_MAX_TREES * BITTREE_BITS) /* 1,048,576 */

/* One 16,384-bit tree. A set bit means "available" (free). */
struct bittree {
    uint64_t top;                      /* level 0: bit i == (mid[i] != 0), bits 4..63 zero */
    uint64_t mid[BITTREE_MID_WORDS];   /* level 1: mid[i] bit j == (leaf[i*64+j] != 0) */
    uint64_t leaf[BITTREE_LEAF_WORDS]; /* level 2: bit k of leaf[w] is bit w*64+k */
};

/* A chain of ntrees = ceil(nbits / 16384) trees laid out contiguously after a 16-byte header.
 * It lives in shared memory at a caller-chosen place, 8-byte aligned at least (64 recommended);
 * bittree_chain_size() gives its length. nbits and ntrees are written once by
 * bittree_chain_init() and never change afterwards. */
struct bittree_chain {
    uint32_t nbits;         /* bits covered, 1..BITTREE_MAX_BITS */
    uint32_t ntrees;        /* ceil(nbits / BITTREE_BITS), 1..BITTREE_MAX_TREES */
    uint64_t summary;       /* bit t == (trees[t].top != 0), bits >= ntrees zero */
    struct bittree trees[]; /* bit b lives in trees[b / 16384] at b % 16384 */
};

/* Shared-memory layout: pinned so that every process and build agrees on it. */
_Static_assert(sizeof(struct bittree) == 8 + 32 + 2048, "bittree size");
_Static_assert(offsetof(struct bittree, top) == 0, "bittree.top offset");
_Static_assert(offsetof(struct bittree, mid) == 8, "bittree.mid offset");
_Static_assert(offsetof(struct bittree, leaf) == 40, "bittree.leaf offset");
_Static_assert(_Alignof(struct bittree) == 8, "bittree alignment");
_Static_assert(offsetof(struct bittree_chain, nbits) == 0, "bittree_chain.nbits offset");
_Static_assert(offsetof(struct bittree_chain, ntrees) == 4, "bittree_chain.ntrees offset");
_Static_assert(offsetof(struct bittree_chain, summary) == 8, "bittree_chain.summary offset");
_Static_assert(offsetof(struct bittree_chain, trees) == 16, "bittree_chain.trees offset");
_Static_assert(sizeof(struct bittree_chain) == 16, "bittree_chain header size");
_Static_assert(_Alignof(struct bittree_chain) == 8, "bittree_chain alignment");
_Static_assert(BITTREE_MID_WORDS * 64 == BITTREE_LEAF_WORDS, "one mid bit per leaf word");
_Static_assert(BITTREE_LEAF_WORDS * 64 == BITTREE_BITS, "one leaf bit per tree bit");

/* Returns the number of bytes a chain of nbits needs (header + trees), or 0 if nbits is 0 or
 * greater than BITTREE_MAX_BITS. */
size_t bittree_chain_size(uint32_t nbits);

/* Initialises the chain at c (bittree_chain_size(nbits) bytes) with every bit clear, or with
 * bits 0..nbits-1 set if all_set. Bits >= nbits are never set. nbits must be
 * 1..BITTREE_MAX_BITS (asserted). Call it before the chain is visible to other processes, or
 * under the lock. */
void bittree_chain_init(struct bittree_chain *c, uint32_t nbits, bool all_set);

/* Marks bit as available and keeps the summaries right. Setting a set bit is a no-op.
 * bit < nbits (asserted). Caller holds the lock. */
void bittree_set(struct bittree_chain *c, uint32_t bit);

/* Marks bit as unavailable and keeps the summaries right. Clearing a clear bit is a no-op.
 * bit < nbits (asserted). Caller holds the lock. */
void bittree_clear(struct bittree_chain *c, uint32_t bit);

/* Returns whether bit is set. bit < nbits (asserted). */
bool bittree_test(const struct bittree_chain *c, uint32_t bit);

/* Returns the lowest set bit, or -1 if none is set. O(1): one load and one tzcnt per level. */
int64_t bittree_find_first(const struct bittree_chain *c);

/* Returns the lowest set bit >= from, or -1 if there is none. from may be >= nbits (then -1),
 * so a loop can ask for find_next(c, prev + 1) without a special case. O(1) like find_first. */
int64_t bittree_find_next(const struct bittree_chain *c, uint32_t from);

/* Returns the number of set bits: a popcount walk over every leaf word (cold path). */
uint32_t bittree_count(const struct bittree_chain *c);

/* Checks the chain: nbits and ntrees agree and are in range, every summary bit agrees with the
 * level below (mid, top, chain summary), no unused summary bit is set, and no bit >= nbits is
 * set. Returns 0, or -EUCLEAN and writes a short NUL-terminated description of the first fault
 * found into buf (truncated to buflen; nothing is written if buf is NULL or buflen is 0).
 * The caller must know that bittree_chain_size(nbits) bytes are mapped at c for the nbits it
 * expects; compare c->nbits with that value first, since c->nbits itself is untrusted.
 * Run it under the lock: a reader without the lock may see a writer half-way through an update
 * and report a mismatch that is only transient. */
int bittree_check(const struct bittree_chain *c, char *buf, size_t buflen);

/* Sets bits [first, first + n). n may be 0; first + n <= nbits (asserted). Caller holds the lock.
 * Works a leaf word at a time: O(n / 64). */
void bittree_set_range(struct bittree_chain *c, uint32_t first, uint32_t n);

/* Clears bits [first, first + n). n may be 0; first + n <= nbits (asserted). Caller holds the
 * lock. Works a leaf word at a time: O(n / 64). */
void bittree_clear_range(struct bittree_chain *c, uint32_t first, uint32_t n);

#endif /* SHMHEAP_SHM_BITTREE_H */
