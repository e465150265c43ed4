/* Size classes: the inline lookup used on the fast path and slab geometry. */
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

void sizeclass_geometry(unsigned cls, struct slab_geometry *ret);

/* For free's fast path: is `rel` (bytes from a slab's start) the start of
 * an object of the class? size = d << shift with d odd; rel is a multiple
 * of size iff its low `shift` bits are 0 and (rel >> shift) * d^-1 mod 2^64
 * <= UINT64_MAX / d (divisibility by an odd number without a division). */
struct class_check {
    uint64_t inv;   /* d^-1 mod 2^64 */
    uint64_t limit; /* UINT64_MAX / d */
    uint32_t shift;
    uint32_t span; /* capacity * size: objects end there, the tags follow */
    /* Object index of `rel` bytes into a slab: (rel * div_mul) >> 40,
     * exact for rel < 2^19 (a slab is at most 5 blocks) and size <= 2^15,
     * since div_mul = 2^40 / size + 1 errs by less than rel / 2^40. */
    uint64_t div_mul;
    uint32_t tags_off;
    uint32_t pad;
};
extern struct class_check sizeclass_checks[SHM_NCLASSES];
/* Fills sizeclass_checks; called once before the first attachment. */
void sizeclass_init(void);

static inline uint64_t sizeclass_index(unsigned cls, uint64_t rel)
{
    return (rel * sizeclass_checks[cls].div_mul) >> 40;
}

static inline int sizeclass_is_object(unsigned cls, uint64_t rel)
{
    const struct class_check *c = &sizeclass_checks[cls];

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
