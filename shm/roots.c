/* Named roots: a small table in the control segment mapping names to
 * offsets, so processes can find each other's data. Guarded by the control
 * segment's lock (lock.c) (a dead holder's half-written entry is cleared by
 * ctl_recover). */
#include <errno.h>
#include <string.h>

#include "shm/internal.h"

static int name_check(const char *name)
{
    size_t len;

    if (!name)
        return -EINVAL;
    len = strnlen(name, SHM_ROOT_NAME);
    if (len == 0)
        return -EINVAL;
    if (len >= SHM_ROOT_NAME)
        return -ENAMETOOLONG;
    return 0;
}

int heap_root_set(struct heap *h, const char *name, uint64_t off)
{
    struct root_entry *free_e = NULL;
    struct ctl_header *c;
    int r;

    if (!h)
        return -EINVAL;
    r = name_check(name);
    if (r < 0)
        return r;
    if (off && !heap_from_off(h, off))
        return -EFAULT;
    c = h->ctl;
    r = ctl_lock(c);
    if (r < 0)
        return r;
    for (unsigned i = 0; i < SHM_MAX_ROOTS; i++) {
        struct root_entry *e = &c->roots[i];

        if (e->name[0] == 0) {
            if (!free_e)
                free_e = e;
            continue;
        }
        if (strncmp(e->name, name, SHM_ROOT_NAME) == 0) {
            if (off) {
                /* relaxed: readers hold the control segment's lock too,
                 * which orders this store before their load. */
                store_relaxed(&e->off, off);
            } else {
                memset(e->name, 0, sizeof(e->name));
                store_relaxed(&e->off, 0);
            }
            ctl_unlock(c);
            return 0;
        }
    }
    if (!off) {
        ctl_unlock(c);
        return -ENOENT;
    }
    if (!free_e) {
        ctl_unlock(c);
        return -ENOSPC;
    }
    store_relaxed(&free_e->off, off);
    /* The name last: a reader under the lock sees a full entry or none. */
    memcpy(free_e->name, name, strlen(name) + 1);
    ctl_unlock(c);
    return 0;
}

int heap_root_get(struct heap *h, const char *name, uint64_t *ret_off)
{
    struct ctl_header *c;
    int r;

    if (!h || !ret_off)
        return -EINVAL;
    r = name_check(name);
    if (r < 0)
        return r;
    c = h->ctl;
    r = ctl_lock(c);
    if (r < 0)
        return r;
    r = -ENOENT;
    for (unsigned i = 0; i < SHM_MAX_ROOTS; i++) {
        if (strncmp(c->roots[i].name, name, SHM_ROOT_NAME) == 0) {
            *ret_off = load_relaxed(&c->roots[i].off);
            r = 0;
            break;
        }
    }
    ctl_unlock(c);
    return r;
}
