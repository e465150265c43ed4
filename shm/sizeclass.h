/* Size classes: the inline lookup used on the fast path, and the one table
 * of each class's figures. */
#ifndef SHM_SIZECLASS_H
#define SHM_SIZECLASS_H

#include <stddef.h>
#include <stdint.h>

#include "shm/layout.h"

struct slab_geometry {
    uint32_t size;         /* object size */
    uint32_t blocks;       /* blocks per slab */
    uint32_t capacity;     /* objects per slab */
    uint32_t bitmap_words; /* u64 words of the free bitmap */
    uint32_t bitmap_off;   /* byte offset of the bitmap from the slab's start */
    uint32_t tags_off;     /* byte offset of the owner tags (u16 per object) */
};

/* The per-class table: everything about a class, computed once
 * (sizeclass_init) from sizeclass_size() and the slab geometry rule in
 * sizeclass.c. One cache line per class.
 *
 * For free's fast path: is `rel` (bytes from a slab's start) the start of
 * an object of the class? size = d << shift with d odd; rel is a multiple
 * of size iff its low `shift` bits are 0 and (rel >> shift) * d^-1 mod 2^64
 * <= UINT64_MAX / d (divisibility by an odd number without a division).
 * Those fields come first: the fast path reads only them. */
struct __attribute__((aligned(64))) sizeclass_info {
    uint64_t inv;   /* d^-1 mod 2^64 */
    uint64_t limit; /* UINT64_MAX / d */
    uint32_t shift;
    uint32_t span; /* capacity * size: objects end there, the tags follow */
    /* Object index of `rel` bytes into a slab: (rel * div_mul) >> 40,
     * exact for rel < 2^19 (a slab is at most 5 blocks) and size <= 2^15,
     * since div_mul = 2^40 / size + 1 errs by less than rel / 2^40. */
    uint64_t div_mul;
    struct slab_geometry geo;
    /* The same index for slabs of one block, in 32 bits (rel < 2^16):
     * (rel * tag_mul) >> 32 with tag_mul = 2^32 / size + 1; 0 for classes
     * whose slabs span blocks. Each attachment copies it beside its tag
     * offsets (struct heap's cls_geo) for obj_tag_at(). */
    uint32_t tag_mul;
};
_Static_assert(sizeof(struct sizeclass_info) == 64, "one cache line per class");
extern struct sizeclass_info sizeclass_info[SHM_NCLASSES];
/* Fills sizeclass_info; idempotent and thread-safe, called before the
 * table's first use (sizeclass_geometry() and every attachment call it). */
void sizeclass_init(void);
/* Copies class cls's slab geometry out of the table. */
void sizeclass_geometry(unsigned cls, struct slab_geometry *ret);

static inline uint64_t sizeclass_index(unsigned cls, uint64_t rel)
{
    return (rel * sizeclass_info[cls].div_mul) >> 40;
}

static inline int sizeclass_is_object(unsigned cls, uint64_t rel)
{
    const struct sizeclass_info *c = &sizeclass_info[cls];

    return rel < c->span && (rel & ((UINT64_C(1) << c->shift) - 1)) == 0 &&
           (rel >> c->shift) * c->inv <= c->limit;
}

/* size must be 1..SHM_SMALL_MAX (0 is treated as 1). */
static inline unsigned sizeclass_of_inline(size_t size)
{
    unsigned p;

    if (size <= 128)
        return size ? (unsigned) ((size - 1) >> 4) : 0;
    p = 63u - (unsigned) __builtin_clzll(size - 1); /* 2^p < size <= 2^(p+1) */
    /* k - 1 where k = ceil((size - 2^p) / 2^(p-3)), k in 1..8 */
    return 8u + (p - 7) * 8 + (unsigned) ((size - ((size_t) 1 << p) - 1) >> (p - 3));
}

#endif
