/* One process's mapping of a heap: the segments, offsets and pointers, and
 * the one check of an offset (heap_at). Attaching and detaching, which set
 * up every other module, are attach.c.
 *
 * Each attachment reserves SHM_VA_SPAN bytes (PROT_NONE) and maps segment
 * i at base + (i << SHM_SEG_SHIFT); the control segment is segment 0. So
 * an offset is a pointer minus base, and the reverse is one add. Segments
 * are mapped in index order; h->nmapped is stored with release after a
 * segment's seg_map is complete and loaded with acquire by readers, and
 * each seg_map's nblocks and meta pointer likewise (free's fast path reads
 * nblocks). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

int heap_map_segment(struct heap *h, uint32_t index)
{
    int r = 0;

    if (index >= SHM_MAX_SEGMENTS)
        return -EINVAL;
    if (index >= h->va_slots)
        return -ENOMEM; /* beyond a reservation cut short (heap_reserve) */
    pthread_mutex_lock(&h->local_lock);
    while (h->nmapped <= index) {
        uint32_t i = h->nmapped;
        struct seg_entry *e = &h->ctl->segs[i];
        uint64_t size = load_relaxed(&e->size), fsize;
        char *addr = h->base + ((uint64_t) i << SHM_SEG_SHIFT);
        struct seg_map m;
        uint64_t *meta;
        uint32_t nblocks;
        int fd;

        if (i >= ctl_nsegments(h->ctl)) {
            r = -ENOENT;
            break;
        }
        if (load_relaxed(&e->state) != SEG_LIVE) {
            /* Retired: stays unmapped. release: pairs with heap_nmapped(). */
            store_release(&h->nmapped, i + 1);
            continue;
        }
        if (size < SHM_SEG_MIN_SIZE || size > SHM_SEG_SPAN) {
            r = -EBADMSG;
            break;
        }
        fd = h->hooks.open_segment(h->hooks.ctx, i);
        if (fd < 0) {
            r = fd;
            break;
        }
        r = os_fstat_size(fd, &fsize, NULL);
        if (r == 0 && fsize < size)
            r = -EBADMSG; /* the table claims more than the fd holds */
        if (r == 0)
            r = os_map_at(addr, size, fd);
        if (r == 0) {
            r = seg_check_header((struct seg_header *) addr, i, size);
            if (r < 0)
                (void) os_unmap_at(addr, size);
        }
        if (r < 0) {
            (void) close(fd);
            break;
        }
        if (load_relaxed(&e->page_size) <= 4096)
            os_advise_hugepage(addr, size);
        seg_map_init(&m, addr, fd, i);
        meta = m.meta;
        nblocks = m.nblocks;
        m.meta = NULL;
        m.nblocks = 0;
        h->segs[i] = m;
        /* release, nblocks then meta: free's fast path (alloc.c) reads
         * nblocks alone (0: not mapped here); everyone else reads meta
         * (heap_mapped(), internal.h), after which nblocks is set. */
        store_release(&h->segs[i].nblocks, nblocks);
        store_release(&h->segs[i].meta, meta);
        store_release(&h->nmapped, i + 1);
    }
    pthread_mutex_unlock(&h->local_lock);
    return r;
}

int heap_map_header(void *base, int fd)
{
    uint64_t size;
    int r;

    if (fd < 0)
        return fd;
    r = os_fstat_size(fd, &size, NULL);
    if (r == 0 && size != SHM_HEADER_PAGE)
        r = -EBADF;
    /* MAP_FIXED over the control segment's first page: one mmap call, so
     * a reader in another thread sees the old page or the new one. */
    if (r == 0)
        r = os_map_read_only_at(base, SHM_HEADER_PAGE, fd);
    (void) close(fd);
    return r;
}

int heap_remap_header(struct heap *h, int fd)
{
    const struct ctl_header *c;
    uint32_t nmapped;
    int r = 0;

    if (fd < 0)
        return -EINVAL;
    c = mmap(NULL, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED, fd, 0);
    if (c == MAP_FAILED) {
        r = -errno;
        (void) close(fd);
        return r;
    }
    /* Another heap's header, or one whose table would pull a mapped
     * segment away, is refused: this attachment keeps the one it has. */
    r = ctl_check_page(c);
    if (r == 0 && load_relaxed(&c->ctl_size) != load_relaxed(&h->ctl->ctl_size))
        r = -EBADMSG;
    pthread_mutex_lock(&h->local_lock);
    nmapped = load_relaxed(&h->nmapped);
    if (r == 0 && ctl_nsegments(c) < nmapped)
        r = -EBADMSG;
    for (uint32_t i = 1; r == 0 && i < nmapped; i++)
        if (heap_mapped(h, i) && (load_relaxed(&c->segs[i].state) != SEG_LIVE ||
                                  load_relaxed(&c->segs[i].size) != h->segs[i].size))
            r = -EBADMSG;
    (void) munmap((void *) c, SHM_HEADER_PAGE);
    if (r == 0)
        r = heap_map_header(h->base, fd);
    else
        (void) close(fd);
    pthread_mutex_unlock(&h->local_lock);
    return r;
}

int heap_sync_segments(struct heap *h)
{
    uint32_t n = ctl_nsegments(h->ctl);

    if (n <= heap_nmapped(h))
        return 0;
    return heap_map_segment(h, n - 1);
}

struct seg_map *heap_seg_for(struct heap *h, uint64_t off)
{
    uint32_t i = (uint32_t) (off >> SHM_SEG_SHIFT);

    if (i == 0 || i >= SHM_MAX_SEGMENTS)
        return NULL;
    if (i >= heap_nmapped(h) && heap_map_segment(h, i) < 0)
        return NULL;
    if (!heap_mapped(h, i) || (off & SHM_OFF_MASK) >= h->segs[i].size)
        return NULL;
    return &h->segs[i];
}

void *heap_at(struct heap *h, uint64_t off, uint64_t len, uint64_t align)
{
    struct seg_map *m = heap_seg_for(h, off);

    return m ? seg_at(m, off, len, align) : NULL;
}

void *heap_obj_at(struct heap *h, uint64_t off)
{
    struct seg_map *m = heap_seg_for(h, off);

    return m ? seg_obj_at(m, off) : NULL;
}

void heap_count_bad_free(struct heap *h)
{
    ctl_count_bad_free(h->ctl);
}

bool heap_contains(struct heap *h, const void *p)
{
    uint64_t off = ptr_off(h, p);

    return (uintptr_t) p >= (uintptr_t) h->base && heap_seg_for(h, off) != NULL &&
           (off & SHM_OFF_MASK) >= h->segs[off >> SHM_SEG_SHIFT].hdr->first_block * SHM_BLOCK_SIZE;
}

void *heap_from_off(struct heap *h, uint64_t off)
{
    return heap_at(h, off, 1, 1);
}
