/* SPDX-License-Identifier: MIT */
/*
 * bittree: find the first free block of a segment in O(1).
 *
 * Objects
 *   A tree covers 16,384 bits in three levels of u64 words; a set bit means "available":
 *     level 0   top        1 word, bits 0..3 used      one bit per mid word
 *     level 1   mid[4]     4 words                     one bit per leaf word
 *     level 2   leaf[256]  256 words = 16,384 bits     the bits themselves
 *   A chain covers nbits (1..1,048,576) with ntrees = ceil(nbits / 16384) trees laid out one
 *   after another, plus a one-word summary with one bit per tree. Bit b of the chain is
 *     t = b / 16384          tree          (b >> 14)
 *     w = (b % 16384) / 64   leaf word     ((b >> 6) & 255)
 *     k = b % 64             bit in leaf   (b & 63)
 *     i = w / 64             mid word      (w >> 6)
 *     j = w % 64             bit in mid    (w & 63)
 *   so b == t*16384 + w*64 + k and w == i*64 + j. Everything is plain words at fixed offsets
 *   (no pointers), so every process can map the chain at its own address.
 *
 * Invariants (hold whenever the segment lock is free; bittree_check() tests them all):
 *   trees[t].leaf[w] bit k == (bit t*16384 + w*64 + k is available)
 *   trees[t].mid[i]  bit j == (trees[t].leaf[i*64 + j] != 0)
 *   trees[t].top     bit i == (trees[t].mid[i] != 0),       for i < 4
 *   trees[t].top     >> 4  == 0
 *   summary          bit t == (trees[t].top != 0),          for t < ntrees
 *   summary          >> ntrees == 0                         (when ntrees < 64)
 *   chain bit b set  =>  b < nbits
 *   ntrees == ceil(nbits / 16384),  1 <= nbits <= 64*16384
 *   find_first == t*16384 + w*64 + ctz(leaf[w])  with  t = ctz(summary), i = ctz(top),
 *                 j = ctz(mid[i]), w = i*64 + j: one load and one tzcnt per level.
 *
 * Who writes
 *   bittree_chain_init() writes nbits and ntrees once, before other processes can see the chain
 *   (or under the lock); they never change afterwards. Every other write (set, clear and the
 *   range forms) happens with the segment's mutex held by the caller, so writers never race
 *   one another. A writer updates the leaf first and then walks up, touching a summary word only
 *   when the word below changed between zero and non-zero.
 *
 * Memory order: relaxed everywhere
 *   Every access to a shared word is a relaxed 64-bit (or 32-bit, for the header) atomic load or
 *   store. Relaxed is enough: the external lock orders all writers and carries happens-before
 *   from one holder to the next (its unlock is a release, its lock an acquire), so code under
 *   the lock always sees a consistent tree. The atomics are there only for readers without the
 *   lock (statistics, a verifier peeking from another process): they must not be a data race,
 *   and they want only a snapshot. On x86-64 a relaxed load or store is a plain mov. We use a
 *   load and a store rather than an atomic read-modify-write because the lock already makes the
 *   update exclusive; a `lock or` would cost ~20 cycles for nothing.
 *
 *   A reader without the lock may see a half-done update (a summary bit without its leaf, or
 *   the reverse). The read functions therefore never trust a level: a zero word where a summary
 *   promised a bit ends that branch (never tzcnt of 0), a tree index is checked against ntrees,
 *   top is masked to its 4 bits, and a result >= nbits becomes -1. Their answer is then a bit
 *   that was set at some point, or -1. The same checks keep a corrupt chain from sending the
 *   heap outside its own metadata.
 *
 * Lock order: this file takes no locks. Callers hold the per-segment mutex around every
 * modification and every search whose result they act on.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "shm/atomic.h"
#include "shm/bittree.h"

_Static_assert(__atomic_always_lock_free(8, 0), "bittree words need lock-free 64-bit atomics");
_Static_assert(__atomic_always_lock_free(4, 0), "bittree header needs lock-free 32-bit atomics");

#define TOP_MASK ((UINT64_C(1) << BITTREE_MID_WORDS) - 1) /* used bits of trees[t].top */

/* relaxed: see "Memory order" above; the caller's lock orders every writer. Typed wrappers so
 * that every shared access in this file is one of these four. */
static inline uint64_t word_load(const uint64_t *p)
{
    return load_relaxed(p);
}

static inline void word_store(uint64_t *p, uint64_t v)
{
    store_relaxed(p, v);
}

/* relaxed: nbits and ntrees are written once, before the chain is shared. */
static inline uint32_t hdr_load(const uint32_t *p)
{
    return load_relaxed(p);
}

static inline void hdr_store(uint32_t *p, uint32_t v)
{
    store_relaxed(p, v);
}

static inline uint64_t bit_mask(unsigned k)
{
    return UINT64_C(1) << k;
}

/* Bits k..63; k < 64. */
static inline uint64_t mask_from(unsigned k)
{
    return ~UINT64_C(0) << k;
}

/* Bits k+1..63, empty for k == 63; k < 64. */
static inline uint64_t mask_above(unsigned k)
{
    return ~UINT64_C(1) << k;
}

/* Bits 0..n-1; n <= 64. */
static inline uint64_t mask_low(unsigned n)
{
    return n >= 64 ? ~UINT64_C(0) : bit_mask(n) - 1;
}

/* w must not be 0. */
static inline unsigned ctz(uint64_t w)
{
    return (unsigned) __builtin_ctzll(w);
}

static inline uint32_t ntrees_for(uint32_t nbits)
{
    return (nbits + BITTREE_BITS - 1) / BITTREE_BITS;
}

/* Summary bits that may be set for a chain of ntrees trees. */
static inline uint64_t summary_mask(uint32_t ntrees)
{
    return mask_low(ntrees);
}

/* ORs bits into trees[t].leaf[w]; sets each summary bit whose word went from 0 to non-zero. */
static void leaf_or(struct bittree_chain *c, unsigned t, unsigned w, uint64_t bits)
{
    struct bittree *tr = &c->trees[t];
    unsigned i = w / 64, j = w % 64;
    uint64_t old = word_load(&tr->leaf[w]);
    uint64_t mid, top, sum;

    if ((old | bits) == old)
        return;
    word_store(&tr->leaf[w], old | bits);
    if (old != 0)
        return;

    mid = word_load(&tr->mid[i]);
    word_store(&tr->mid[i], mid | bit_mask(j));
    if (mid != 0)
        return;

    top = word_load(&tr->top);
    word_store(&tr->top, top | bit_mask(i));
    if (top != 0)
        return;

    sum = word_load(&c->summary);
    word_store(&c->summary, sum | bit_mask(t));
}

/* Clears bits in trees[t].leaf[w]; clears each summary bit whose word went to 0. */
static void leaf_andnot(struct bittree_chain *c, unsigned t, unsigned w, uint64_t bits)
{
    struct bittree *tr = &c->trees[t];
    unsigned i = w / 64, j = w % 64;
    uint64_t old = word_load(&tr->leaf[w]);
    uint64_t leaf = old & ~bits;
    uint64_t mid, top, sum;

    if (leaf == old)
        return;
    word_store(&tr->leaf[w], leaf);
    if (leaf != 0)
        return;

    mid = word_load(&tr->mid[i]) & ~bit_mask(j);
    word_store(&tr->mid[i], mid);
    if (mid != 0)
        return;

    top = word_load(&tr->top) & ~bit_mask(i);
    word_store(&tr->top, top);
    if (top != 0)
        return;

    sum = word_load(&c->summary) & ~bit_mask(t);
    word_store(&c->summary, sum);
}

/* Lowest set bit of leaf[i*64 + ctz(mid)], as a bit index within the tree, or -1 if that leaf
 * word is 0 (only a reader without the lock can see that). mid must not be 0. */
static inline int64_t tree_descend(const struct bittree *tr, unsigned i, uint64_t mid)
{
    unsigned w = i * 64 + ctz(mid);
    uint64_t leaf = word_load(&tr->leaf[w]);

    if (leaf == 0)
        return -1;
    return (int64_t) w * 64 + ctz(leaf);
}

/* Lowest set bit of the tree, or -1. */
static inline int64_t tree_first(const struct bittree *tr)
{
    uint64_t top = word_load(&tr->top) & TOP_MASK;
    uint64_t mid;
    unsigned i;

    if (top == 0)
        return -1;
    i = ctz(top);
    mid = word_load(&tr->mid[i]);
    if (mid == 0)
        return -1;
    return tree_descend(tr, i, mid);
}

/* Lowest set bit >= pos within the tree (pos < 16384), or -1. */
static int64_t tree_next(const struct bittree *tr, unsigned pos)
{
    unsigned w = pos / 64, i = w / 64, j = w % 64;
    uint64_t leaf, mid, top;

    /* The rest of pos's own leaf word. */
    leaf = word_load(&tr->leaf[w]) & mask_from(pos % 64);
    if (leaf != 0)
        return (int64_t) w * 64 + ctz(leaf);

    /* Later leaf words under the same mid word. */
    mid = word_load(&tr->mid[i]) & mask_above(j);
    if (mid != 0)
        return tree_descend(tr, i, mid);

    /* Later mid words. */
    top = word_load(&tr->top) & TOP_MASK & mask_above(i);
    if (top == 0)
        return -1;
    i = ctz(top);
    mid = word_load(&tr->mid[i]);
    if (mid == 0)
        return -1;
    return tree_descend(tr, i, mid);
}

/* Lowest set bit in the trees named by sum (a subset of the summary). The loop runs once under
 * the lock; it only goes round again past a tree whose summary bit a lock-free reader saw
 * without the tree's contents. */
static int64_t
chain_first_in(const struct bittree_chain *c, uint64_t sum, uint32_t nbits, uint32_t ntrees)
{
    for (; sum != 0; sum &= sum - 1) {
        unsigned t = ctz(sum);
        int64_t r;

        if (t >= ntrees)
            return -1;
        r = tree_first(&c->trees[t]);
        if (r >= 0) {
            r += (int64_t) t * BITTREE_BITS;
            return r < nbits ? r : -1;
        }
    }
    return -1;
}

size_t bittree_chain_size(uint32_t nbits)
{
    if (nbits == 0 || nbits > BITTREE_MAX_BITS)
        return 0;
    return sizeof(struct bittree_chain) + (size_t) ntrees_for(nbits) * sizeof(struct bittree);
}

void bittree_chain_init(struct bittree_chain *c, uint32_t nbits, bool all_set)
{
    uint32_t ntrees = ntrees_for(nbits);

    assert(nbits >= 1 && nbits <= BITTREE_MAX_BITS);

    hdr_store(&c->nbits, nbits);
    hdr_store(&c->ntrees, ntrees);
    word_store(&c->summary, 0);
    for (uint32_t t = 0; t < ntrees; t++) {
        struct bittree *tr = &c->trees[t];

        word_store(&tr->top, 0);
        for (unsigned i = 0; i < BITTREE_MID_WORDS; i++)
            word_store(&tr->mid[i], 0);
        for (unsigned w = 0; w < BITTREE_LEAF_WORDS; w++)
            word_store(&tr->leaf[w], 0);
    }
    if (all_set)
        bittree_set_range(c, 0, nbits);
}

void bittree_set(struct bittree_chain *c, uint32_t bit)
{
    assert(bit < hdr_load(&c->nbits));
    leaf_or(c, bit / BITTREE_BITS, (bit / 64) % BITTREE_LEAF_WORDS, bit_mask(bit % 64));
}

void bittree_clear(struct bittree_chain *c, uint32_t bit)
{
    assert(bit < hdr_load(&c->nbits));
    leaf_andnot(c, bit / BITTREE_BITS, (bit / 64) % BITTREE_LEAF_WORDS, bit_mask(bit % 64));
}

bool bittree_test(const struct bittree_chain *c, uint32_t bit)
{
    uint64_t leaf;

    assert(bit < hdr_load(&c->nbits));
    leaf = word_load(&c->trees[bit / BITTREE_BITS].leaf[(bit / 64) % BITTREE_LEAF_WORDS]);
    return (leaf >> (bit % 64)) & 1;
}

int64_t bittree_find_first(const struct bittree_chain *c)
{
    return chain_first_in(c, word_load(&c->summary), hdr_load(&c->nbits), hdr_load(&c->ntrees));
}

int64_t bittree_find_next(const struct bittree_chain *c, uint32_t from)
{
    uint32_t nbits = hdr_load(&c->nbits), ntrees = hdr_load(&c->ntrees);
    unsigned t = from / BITTREE_BITS;
    int64_t r;

    if (from >= nbits || t >= ntrees)
        return -1;

    /* Within from's own tree, then the first non-empty tree after it. */
    r = tree_next(&c->trees[t], from % BITTREE_BITS);
    if (r >= 0) {
        r += (int64_t) t * BITTREE_BITS;
        return r < nbits ? r : -1;
    }
    return chain_first_in(c, word_load(&c->summary) & mask_above(t), nbits, ntrees);
}

uint32_t bittree_count(const struct bittree_chain *c)
{
    uint32_t ntrees = hdr_load(&c->ntrees);
    uint32_t n = 0;

    assert(ntrees <= BITTREE_MAX_TREES);
    if (ntrees > BITTREE_MAX_TREES)
        ntrees = BITTREE_MAX_TREES;
    for (uint32_t t = 0; t < ntrees; t++)
        for (unsigned w = 0; w < BITTREE_LEAF_WORDS; w++)
            n += (uint32_t) __builtin_popcountll(word_load(&c->trees[t].leaf[w]));
    return n;
}

/* Writes the description of a fault into buf (if any room) and returns -EUCLEAN. */
__attribute__((format(printf, 3, 4))) static int
check_fail(char *buf, size_t buflen, const char *fmt, ...)
{
    va_list ap;

    if (buf && buflen > 0) {
        va_start(ap, fmt);
        (void) vsnprintf(buf, buflen, fmt, ap);
        va_end(ap);
    }
    return -EUCLEAN;
}

int bittree_check(const struct bittree_chain *c, char *buf, size_t buflen)
{
    uint32_t nbits = hdr_load(&c->nbits), ntrees = hdr_load(&c->ntrees);
    uint64_t sum;

    if (nbits == 0 || nbits > BITTREE_MAX_BITS)
        return check_fail(buf, buflen, "bittree: nbits %" PRIu32 " not in 1..%u", nbits,
                          BITTREE_MAX_BITS);
    if (ntrees != ntrees_for(nbits))
        return check_fail(buf, buflen,
                          "bittree: ntrees %" PRIu32 ", expected %" PRIu32 " for nbits %" PRIu32,
                          ntrees, ntrees_for(nbits), nbits);

    sum = word_load(&c->summary);
    if (sum & ~summary_mask(ntrees))
        return check_fail(buf, buflen,
                          "bittree: summary %#" PRIx64 " has bits at or past tree %" PRIu32, sum,
                          ntrees);

    for (uint32_t t = 0; t < ntrees; t++) {
        const struct bittree *tr = &c->trees[t];
        uint64_t top = word_load(&tr->top);

        if (top & ~TOP_MASK)
            return check_fail(buf, buflen,
                              "bittree: tree %" PRIu32 " top %#" PRIx64
                              " has bits past mid word %u",
                              t, top, BITTREE_MID_WORDS - 1);
        if (((sum >> t) & 1) != (top != 0))
            return check_fail(buf, buflen,
                              "bittree: summary bit %" PRIu32 " is %u but tree %" PRIu32
                              " top is %#" PRIx64,
                              t, (unsigned) ((sum >> t) & 1), t, top);

        for (unsigned i = 0; i < BITTREE_MID_WORDS; i++) {
            uint64_t mid = word_load(&tr->mid[i]);

            if (((top >> i) & 1) != (mid != 0))
                return check_fail(buf, buflen,
                                  "bittree: tree %" PRIu32 " top bit %u is %u"
                                  " but mid[%u] is %#" PRIx64,
                                  t, i, (unsigned) ((top >> i) & 1), i, mid);

            for (unsigned j = 0; j < 64; j++) {
                unsigned w = i * 64 + j;
                uint64_t leaf = word_load(&tr->leaf[w]);
                uint64_t base = (uint64_t) t * BITTREE_BITS + (uint64_t) w * 64;

                if (((mid >> j) & 1) != (leaf != 0))
                    return check_fail(buf, buflen,
                                      "bittree: tree %" PRIu32 " mid[%u] bit %u"
                                      " is %u but leaf[%u] is %#" PRIx64,
                                      t, i, j, (unsigned) ((mid >> j) & 1), w, leaf);
                if (base + 64 > nbits &&
                    (leaf & ~(base >= nbits ? 0 : mask_low((unsigned) (nbits - base)))))
                    return check_fail(buf, buflen,
                                      "bittree: tree %" PRIu32 " leaf[%u] is %#" PRIx64
                                      ", with bits at or past nbits %" PRIu32,
                                      t, w, leaf, nbits);
            }
        }
    }
    return 0;
}

/* Sets or clears bits [first, first + n) a leaf word at a time. */
static void range_apply(struct bittree_chain *c, uint32_t first, uint32_t n, bool set)
{
    uint32_t end = first + n;

    for (uint32_t b = first; b < end;) {
        unsigned k = b % 64;
        uint32_t width = end - b < 64 - k ? end - b : 64 - k;
        uint64_t bits = mask_low(width) << k;
        unsigned t = b / BITTREE_BITS, w = (b / 64) % BITTREE_LEAF_WORDS;

        if (set)
            leaf_or(c, t, w, bits);
        else
            leaf_andnot(c, t, w, bits);
        b += width;
    }
}

void bittree_set_range(struct bittree_chain *c, uint32_t first, uint32_t n)
{
    uint32_t nbits = hdr_load(&c->nbits);

    assert(first <= nbits && n <= nbits - first);
    (void) nbits;
    range_apply(c, first, n, true);
}

void bittree_clear_range(struct bittree_chain *c, uint32_t first, uint32_t n)
{
    uint32_t nbits = hdr_load(&c->nbits);

    assert(first <= nbits && n <= nbits - first);
    (void) nbits;
    range_apply(c, first, n, false);
}
