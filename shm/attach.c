/* Attaching to a heap and detaching from it: the address-space
 * reservation, then every module's per-attachment state in order (the
 * mapping, heap.c; the thread caches, tcache.c; the owner entry, owned.c),
 * and the same in reverse at detach.
 *
 * Each attachment reserves SHM_VA_SPAN bytes (PROT_NONE; fewer segment
 * slots where that much cannot be had) and maps segment i at base +
 * (i << SHM_SEG_SHIFT); the control segment is segment 0, and the owner's
 * header page (layout.h), when it has one, is mapped read-only over the
 * control segment's first page. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

static uint64_t attach_serial; /* unique per attachment in this process */

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
    if (r == 0 && hooks->open_header)
        r = heap_map_header(base, hooks->open_header(hooks->ctx));
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
    sizeclass_init();
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        h->cls_geo[cls].div_mul = sizeclass_info[cls].div_mul;
        h->cls_geo[cls].size = sizeclass_info[cls].geo.size;
        h->cls_geo[cls].capacity = sizeclass_info[cls].geo.capacity;
        h->cls_geo[cls].tags_off = sizeclass_info[cls].geo.tags_off;
        h->cls_geo[cls].tag_mul = sizeclass_info[cls].tag_mul;
    }
    for (unsigned i = 1; i <= 64; i++)
        h->class_by_16[i] = (uint8_t) sizeclass_of_inline((size_t) i * 16);
    pthread_mutex_init(&h->local_lock, NULL);
    pthread_mutex_init(&h->drain_lock, NULL);
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
    pthread_mutex_destroy(&h->drain_lock);
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
    pthread_mutex_destroy(&h->drain_lock);
    free(h);
}

struct ctl_header *heap_ctl(struct heap *h)
{
    return h->ctl;
}
