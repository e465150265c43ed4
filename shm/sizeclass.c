/* Size classes: 16..128 in steps of 16, then 8 classes per doubling up to
 * SHM_SMALL_MAX. Class c's size:
 *   c < 8:   16 * (c + 1)
 *   c >= 8:  2^p + k * 2^(p-3),  p = 7 + (c - 8) / 8,  k = (c - 8) % 8 + 1
 * so for any request n > 128, size(class(n)) - n < size / 8 <= n / 8 + 1,
 * and for n <= 128 the waste is under 16 bytes (the alignment granule). */
#include <assert.h>
#include <pthread.h>

#include "shm/heap.h"
#include "shm/sizeclass.h"

_Static_assert(SHM_NCLASSES == 8 + 8 * 8, "8 small classes, 8 per doubling 128..32768");

uint32_t sizeclass_size(unsigned cls)
{
    unsigned p, k;

    assert(cls < SHM_NCLASSES);
    if (cls < 8)
        return 16u * (cls + 1);
    p = 7 + (cls - 8) / 8;
    k = (cls - 8) % 8 + 1;
    return (1u << p) + (k << (p - 3));
}

unsigned sizeclass_of(size_t size)
{
    return sizeclass_of_inline(size);
}

/* Slab geometry: enough blocks that a slab holds at least 8 objects, so a
 * slab of the largest classes wastes little; objects from the slab's start
 * (so an object of size s is aligned to the largest power of two dividing
 * s, up to the block size), then an owner tag per object (u16, 8-byte
 * aligned), and the free bitmap in the slab's last words. */
static void geometry_compute(unsigned cls, struct slab_geometry *ret)
{
    uint64_t size = sizeclass_size(cls);
    uint64_t blocks = (8 * size + SHM_BLOCK_SIZE - 1) / SHM_BLOCK_SIZE;
    uint64_t bytes, cap;

    if (blocks < 1)
        blocks = 1;
    for (;;) {
        bytes = blocks * SHM_BLOCK_SIZE;
        cap = bytes / size;
        while (cap * size + (cap * 2 + 7) / 8 * 8 + (cap + 63) / 64 * 8 > bytes)
            cap--;
        if (cap >= 8 || blocks == SHM_SLAB_MAX_BLOCKS)
            break;
        blocks++; /* the bitmap took the eighth object's room */
    }
    assert(cap >= 8 && cap <= SHM_SLAB_MAX_OBJECTS);
    ret->size = (uint32_t) size;
    ret->blocks = (uint32_t) blocks;
    ret->capacity = (uint32_t) cap;
    ret->bitmap_words = (uint32_t) ((cap + 63) / 64);
    ret->bitmap_off = (uint32_t) (bytes - ret->bitmap_words * 8);
    ret->tags_off = (uint32_t) (ret->bitmap_off - (cap * 2 + 7) / 8 * 8);
}

struct sizeclass_info sizeclass_info[SHM_NCLASSES];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_fill(void)
{
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        struct sizeclass_info *c = &sizeclass_info[cls];
        struct slab_geometry *g = &c->geo;
        uint64_t d, inv;

        geometry_compute(cls, g);
        c->shift = (uint32_t) __builtin_ctz(g->size);
        d = g->size >> c->shift;
        /* Newton's iteration doubles the correct low bits each step; d * d
         * == 1 mod 8 for odd d, so 3 -> 6 -> 12 -> 24 -> 48 -> 96 bits. */
        inv = d;
        for (int i = 0; i < 5; i++)
            inv *= 2 - d * inv;
        c->inv = inv;
        c->limit = UINT64_MAX / d;
        c->span = g->capacity * g->size;
        c->div_mul = (UINT64_C(1) << 40) / g->size + 1;
        c->tag_mul = g->blocks == 1 ? (uint32_t) ((UINT64_C(1) << 32) / g->size + 1) : 0;
    }
}

void sizeclass_init(void)
{
    (void) pthread_once(&table_once, table_fill);
}

void sizeclass_geometry(unsigned cls, struct slab_geometry *ret)
{
    assert(cls < SHM_NCLASSES);
    sizeclass_init();
    *ret = sizeclass_info[cls].geo;
}
