/* The control segment: its header check, its lock (lock.c) and the
 * heap-wide counters kept in it. Creating it, and heap segments, is the
 * owner's job (create.c); cache slots have their own file (slot.c).
 *
 * Lock order: the control segment's lock is taken with no segment lock
 * held. */
#include <errno.h>
#include <string.h>

#include "shm/internal.h"
#include "shm/os.h"

int ctl_check_page(const struct ctl_header *c)
{
    /* acquire: pairs with ctl_format's release of the magic. */
    if (load_acquire(&c->magic) != SHM_CTL_MAGIC)
        return -EBADF;
    if (c->version != SHM_LAYOUT_VERSION || c->header_size != sizeof(*c))
        return -EPROTO;
    if (c->config.max_segments >= SHM_MAX_SEGMENTS)
        return -EBADMSG;
    return 0;
}

int ctl_check_header(const struct ctl_header *c, uint64_t size)
{
    int r;

    if (size < sizeof(*c))
        return -EBADF;
    r = ctl_check_page(c);
    if (r == 0 && c->ctl_size != size)
        r = -EBADMSG;
    return r;
}

/* A dead holder may have left a root half written: any entry whose name
 * is not terminated is cleared. */
static void ctl_recover(struct ctl_header *c)
{
    for (unsigned i = 0; i < SHM_MAX_ROOTS; i++)
        if (memchr(c->roots[i].name, 0, sizeof(c->roots[i].name)) == NULL)
            memset(&c->roots[i], 0, sizeof(c->roots[i]));
}

int ctl_lock(struct ctl_header *c)
{
    int r = shlock_lock(&c->lock);

    if (r == EOWNERDEAD) {
        ctl_recover(c);
        r = 0;
    }
    return -r;
}

int ctl_lock_for(struct heap *h)
{
    struct ctl_header *c = h->ctl;
    struct shlock_note n;
    int r;

    if (!h->lock_wait_ms)
        return ctl_lock(c);
    r = shlock_lock_until(&c->lock, h->lock_wait_ms, &n);
    heap_lock_note(h, 0, &n, r);
    if (r == EOWNERDEAD) {
        ctl_recover(c);
        r = 0;
    }
    return -r;
}

void ctl_unlock(struct ctl_header *c)
{
    /* -EPERM: the word was written while we held it; the next locker
     * deals with it (lock.c), and the daemon's reports it. */
    (void) shlock_unlock(&c->lock);
}

uint64_t ctl_raise_peak(struct ctl_header *c, uint64_t bytes)
{
    /* relaxed: the peak publishes nothing. */
    return raise_max64_relaxed(&c->peak_bytes, bytes);
}
