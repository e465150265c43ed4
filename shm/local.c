/* A heap owned by this process, without a daemon (see local.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/local.h"

struct heap_local {
    int ctl_fd;
    int policy;
    struct shm_config cfg; /* the limits new segments obey */
    pid_t owner;
    pthread_mutex_t grow_lock;
    int seg_fds[SHM_MAX_SEGMENTS];
};

static int local_open_segment(void *ctx, uint32_t index)
{
    struct heap_local *l = ctx;
    int fd;

    if (index >= SHM_MAX_SEGMENTS || l->seg_fds[index] < 0)
        return -ENOENT;
    fd = fcntl(l->seg_fds[index], F_DUPFD_CLOEXEC, 3);
    return fd < 0 ? -errno : fd;
}

static int local_grow(void *ctx, uint64_t min_bytes)
{
    struct heap_local *l = ctx;
    uint32_t index;
    int fd, r;

    if (getpid() != l->owner)
        return -ENOSPC; /* only the creator can add segments */
    pthread_mutex_lock(&l->grow_lock);
    r = heap_segment_create(l->ctl_fd, &l->cfg, min_bytes, l->policy, &fd, &index);
    if (r == 0)
        l->seg_fds[index] = fd;
    pthread_mutex_unlock(&l->grow_lock);
    return r;
}

int heap_local_create(const struct shm_config *cfg, int policy, struct heap_local **ret_local)
{
    struct shm_config def;
    struct heap_local *l;
    uint32_t index;
    int r, fd;

    if (!ret_local)
        return -EINVAL;
    if (!cfg) {
        heap_config_default(&def);
        cfg = &def;
    }
    l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    for (unsigned i = 0; i < SHM_MAX_SEGMENTS; i++)
        l->seg_fds[i] = -1;
    l->policy = policy;
    l->cfg = *cfg;
    l->owner = getpid();
    pthread_mutex_init(&l->grow_lock, NULL);
    r = heap_ctl_create(cfg, &l->ctl_fd);
    if (r < 0) {
        free(l);
        return r;
    }
    r = heap_segment_create(l->ctl_fd, &l->cfg, 0, policy, &fd, &index);
    if (r < 0) {
        (void) close(l->ctl_fd);
        free(l);
        return r;
    }
    l->seg_fds[index] = fd;
    *ret_local = l;
    return 0;
}

int heap_local_attach(struct heap_local *l, uint64_t client_id, struct heap **ret_heap)
{
    struct heap_hooks hooks = {.ctx = l, .open_segment = local_open_segment, .grow = local_grow};

    if (!l)
        return -EINVAL;
    return heap_attach(l->ctl_fd, &hooks, client_id, ret_heap);
}

int heap_local_ctl_fd(const struct heap_local *l)
{
    return l->ctl_fd;
}

int heap_local_segment_fd(const struct heap_local *l, uint32_t index)
{
    return index < SHM_MAX_SEGMENTS ? l->seg_fds[index] : -1;
}

void heap_local_destroy(struct heap_local *l)
{
    if (!l)
        return;
    for (unsigned i = 0; i < SHM_MAX_SEGMENTS; i++)
        if (l->seg_fds[i] >= 0)
            (void) close(l->seg_fds[i]);
    (void) close(l->ctl_fd);
    pthread_mutex_destroy(&l->grow_lock);
    free(l);
}
