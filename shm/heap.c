/* One process's attachment to a heap: the address-space reservation, the
 * mapping of segments, offsets and pointers.
 *
 * Each attachment reserves SHM_VA_SPAN bytes (PROT_NONE) and maps segment
 * i at base + (i << SHM_SEG_SHIFT); the control segment is segment 0. So
 * an offset is a pointer minus base, and the reverse is one add. Segments
 * are mapped in index order; h->nmapped is stored with release after a
 * segment's seg_map is complete and loaded with acquire by readers, and
 * each seg_map's meta pointer likewise (free's fast path reads it). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

static uint64_t attach_serial;

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
        int fd;

        if (i >= load_acquire(&h->ctl->nsegments)) {
            r = -ENOENT;
            break;
        }
        if (load_relaxed(&e->state) != SEG_LIVE) {
            store_release(&h->nmapped, i + 1); /* retired: stays unmapped */
            continue;
        }
        if (size == 0 || size > SHM_SEG_SPAN) {
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
        m.meta = NULL;
        h->segs[i] = m;
        store_release(&h->segs[i].meta, meta);
        store_release(&h->nmapped, i + 1);
    }
    pthread_mutex_unlock(&h->local_lock);
    return r;
}

int heap_sync_segments(struct heap *h)
{
    uint32_t n = load_acquire(&h->ctl->nsegments);

    if (n <= load_acquire(&h->nmapped))
        return 0;
    return heap_map_segment(h, n - 1);
}

struct seg_map *heap_seg_for(struct heap *h, uint64_t off)
{
    uint32_t i = (uint32_t) (off >> SHM_SEG_SHIFT);

    if (i == 0 || i >= SHM_MAX_SEGMENTS)
        return NULL;
    if (i >= load_acquire(&h->nmapped) && heap_map_segment(h, i) < 0)
        return NULL;
    if (!load_acquire(&h->segs[i].meta) || (off & SHM_OFF_MASK) >= h->segs[i].size)
        return NULL;
    return &h->segs[i];
}

void heap_count_bad_free(struct heap *h)
{
    (void) fetch_add_relaxed(&h->ctl->bad_frees, 1);
}

/* Reserves the address space for every segment slot (SHM_VA_SPAN). Where
 * that much cannot be had (valgrind's address-space manager stops near
 * 64 GiB; a tight RLIMIT_AS), takes the most slots that fit, down to the
 * control segment and one heap segment: the offset of each byte stays what
 * it is everywhere, and segments past the cut cannot be mapped here
 * (heap_map_segment says -ENOMEM, which malloc reports as ENOMEM). */
static int heap_reserve(struct heap *h, void **ret_base)
{
    int r = -ENOMEM;

    for (uint32_t slots = SHM_MAX_SEGMENTS; slots >= 2; slots--) {
        r = os_reserve((uint64_t) slots << SHM_SEG_SHIFT, UINT64_C(1) << 30, ret_base);
        if (r == 0) {
            h->va_slots = slots;
            return 0;
        }
        if (r != -ENOMEM && r != -EINVAL)
            return r;
    }
    return r;
}

int heap_attach(int ctl_fd,
                const struct heap_hooks *hooks,
                uint64_t client_id,
                struct heap **ret_heap)
{
    uint64_t size;
    struct heap *h;
    void *base;
    int r;

    if (ctl_fd < 0 || !hooks || !hooks->open_segment || !ret_heap)
        return -EINVAL;
    r = os_fstat_size(ctl_fd, &size, NULL);
    if (r < 0)
        return r;
    if (size < sizeof(struct ctl_header) || size > SHM_SEG_SPAN)
        return -EBADF;
    h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    r = heap_reserve(h, &base);
    if (r < 0)
        goto fail_free;
    h->base = base;
    h->ctl = base;
    r = os_map_at(base, size, ctl_fd);
    if (r < 0)
        goto fail_unreserve;
    r = ctl_check_header(h->ctl, size);
    if (r < 0)
        goto fail_unreserve;
    h->ctl_fd = fcntl(ctl_fd, F_DUPFD_CLOEXEC, 3);
    if (h->ctl_fd < 0) {
        r = -errno;
        goto fail_unreserve;
    }
    h->pid = getpid();
    h->serial = fetch_add_relaxed(&attach_serial, 1) + 1;
    h->client_id = client_id;
    h->hooks = *hooks;
    h->nmapped = 1;
    h->seg_hint = 1;
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        struct slab_geometry g;

        sizeclass_geometry(cls, &g);
        h->tag_geo[cls].off = g.tags_off;
        h->tag_geo[cls].mul = g.blocks == 1 ? (uint32_t) ((UINT64_C(1) << 32) / g.size + 1) : 0;
    }
    pthread_mutex_init(&h->local_lock, NULL);
    r = heap_sync_segments(h);
    if (r < 0)
        goto fail_close;
    r = tcache_attach(h);
    if (r < 0)
        goto fail_close;
    owned_attach(h);
    /* Lets a trimmer's membarrier reach this process's threads; without
     * it, idle caches here are only drained when their thread runs. */
    (void) os_membarrier_register();
    *ret_heap = h;
    return 0;
fail_close:
    for (uint32_t i = 1; i < h->nmapped; i++)
        if (h->segs[i].meta)
            (void) close(h->segs[i].fd);
    (void) close(h->ctl_fd);
    pthread_mutex_destroy(&h->local_lock);
fail_unreserve:
    os_unreserve(base, (uint64_t) h->va_slots << SHM_SEG_SHIFT);
fail_free:
    free(h);
    return r;
}

void heap_detach(struct heap *h)
{
    if (!h)
        return;
    if (h->pid == getpid()) {
        tcache_detach(h);
        owned_detach(h);
    }
    for (uint32_t i = 1; i < h->nmapped; i++)
        if (h->segs[i].meta)
            (void) close(h->segs[i].fd);
    (void) close(h->ctl_fd);
    os_unreserve(h->base, (uint64_t) h->va_slots << SHM_SEG_SHIFT);
    pthread_mutex_destroy(&h->local_lock);
    free(h);
}

struct ctl_header *heap_ctl(struct heap *h)
{
    return h->ctl;
}

bool heap_contains(struct heap *h, const void *p)
{
    uint64_t off = ptr_off(h, p);

    return (uintptr_t) p >= (uintptr_t) h->base && heap_seg_for(h, off) != NULL &&
           (off & SHM_OFF_MASK) >= h->segs[off >> SHM_SEG_SHIFT].hdr->first_block * SHM_BLOCK_SIZE;
}

uint64_t heap_to_off(struct heap *h, const void *p)
{
    if (!p || !heap_contains(h, p))
        return 0;
    /* An offset is how an object leaves its process: from now on it may be
     * anyone's, and its owner's death must not free it. */
    owned_share(h, ptr_off(h, p));
    return ptr_off(h, p);
}

void *heap_from_off(struct heap *h, uint64_t off)
{
    if (off == 0 || !heap_seg_for(h, off))
        return NULL;
    return off_ptr(h, off);
}
