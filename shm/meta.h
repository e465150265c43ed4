/* The block metadata word: one u64 per block, in a dense array apart from
 * the data (8 blocks per cache line).
 *
 *   bits  0..3   enum blk_state
 *   bits  8..15  size class (BLK_SLAB, BLK_SLAB_TAIL)
 *   bits 16..31  free objects in the slab (BLK_SLAB), or the owner tag of a
 *                run (BLK_RUN: a large object's owner, 0: shared; an arena's
 *                or pool chunk's creator while it creates it: run.c)
 *   bits  8..31  of a BLK_BUSY block instead: the pid of the process that
 *                took it out of the free tree (commit.c's decommit), so a
 *                reaper can free it once that process is gone (reclaim.c)
 *   bits 32..55  run length in blocks (BLK_RUN, BLK_SLAB: blocks in slab),
 *                or distance back to the head block (BLK_*_TAIL)
 *   bits 56..59  enum run_kind (BLK_RUN and its tails)
 *
 * Invariants (checked by heap_verify):
 *   free tree bit b       == (state(b) == BLK_FREE)
 *   class tree[c] bit b   == (state(b) == BLK_SLAB && class(b) == c && nfree(b) > 0)
 *   nfree(b)              == popcount(slab bitmap of b)
 *   every tail's head     == a BLK_SLAB / BLK_RUN whose length covers the tail
 * Words change only under the segment lock; the fast path of free reads a
 * word without it (relaxed: a block that holds a live object cannot change
 * state until that object is freed, so the class read is stable). */
#ifndef SHM_META_H
#define SHM_META_H

#include <stdint.h>

enum blk_state {
    BLK_FREE = 0,
    BLK_RESERVED,  /* segment header and metadata */
    BLK_SLAB,      /* head block of a slab */
    BLK_SLAB_TAIL, /* further blocks of a slab */
    BLK_RUN,       /* head block of a run (large object, arena, pool chunk) */
    BLK_RUN_TAIL,
    BLK_BUSY, /* taken out of the free tree by an operation in progress */
    _BLK_STATE_MAX,
};

enum run_kind {
    RUN_LARGE = 0,
    RUN_ARENA,
    RUN_POOL,
    _RUN_KIND_MAX,
};

static inline uint64_t
meta_make(enum blk_state st, unsigned cls, unsigned nfree, uint32_t len, enum run_kind kind)
{
    return (uint64_t) st | (uint64_t) (cls & 0xff) << 8 | (uint64_t) (nfree & 0xffff) << 16 |
           (uint64_t) (len & 0xffffff) << 32 | (uint64_t) (kind & 0xf) << 56;
}

static inline enum blk_state meta_state(uint64_t w)
{
    return (enum blk_state)(w & 0xf);
}

static inline unsigned meta_class(uint64_t w)
{
    return (unsigned) (w >> 8) & 0xff;
}

static inline unsigned meta_nfree(uint64_t w)
{
    return (unsigned) (w >> 16) & 0xffff;
}

static inline uint16_t meta_owner(uint64_t w)
{
    return (uint16_t) (w >> 16);
}

static inline uint32_t meta_len(uint64_t w)
{
    return (uint32_t) (w >> 32) & 0xffffff;
}

static inline enum run_kind meta_kind(uint64_t w)
{
    return (enum run_kind)((w >> 56) & 0xf);
}

static inline uint64_t meta_with_nfree(uint64_t w, unsigned nfree)
{
    return (w & ~(UINT64_C(0xffff) << 16)) | (uint64_t) (nfree & 0xffff) << 16;
}

/* The head word of a slab of cls, `blocks` long, with nfree free objects. */
static inline uint64_t meta_make_slab(unsigned cls, unsigned nfree, uint32_t blocks)
{
    return meta_make(BLK_SLAB, cls, nfree, blocks, RUN_LARGE);
}

/* The head word of a run of kind, len blocks long, with owner tag owner
 * (0: none). */
static inline uint64_t meta_make_run(uint32_t len, enum run_kind kind, uint16_t owner)
{
    return meta_make(BLK_RUN, 0, owner, len, kind);
}

/* A large object's owner (RUN_LARGE head blocks); 0: shared. */
static inline uint64_t meta_with_owner(uint64_t w, uint16_t owner)
{
    return (w & ~(UINT64_C(0xffff) << 16)) | (uint64_t) owner << 16;
}

#define META_BUSY_PID_MASK 0xffffffu /* pid_max is at most 2^22: any pid fits */

/* A block taken out of the free tree by process pid, len blocks long. */
static inline uint64_t meta_make_busy(uint32_t len, uint32_t pid)
{
    return meta_make(BLK_BUSY, 0, 0, len, 0) | (uint64_t) (pid & META_BUSY_PID_MASK) << 8;
}

/* The pid a BLK_BUSY word carries (its low 24 bits: a reaper compares it
 * with other BUSY words' pids, and asks whether it lives). */
static inline uint32_t meta_busy_pid(uint64_t w)
{
    return (uint32_t) (w >> 8) & META_BUSY_PID_MASK;
}

#endif
