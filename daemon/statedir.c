/* A state directory (--state-dir, config key state_dir): the heap's
 * segments as files (shm/adopt.c names them), so that a daemon started on
 * the directory adopts the heap an earlier one left. On tmpfs the
 * segments have normal pages, on hugetlbfs the mount's huge pages.
 *
 * One daemon per directory: it holds an flock on DIR/lock while it runs
 * (released by the kernel when it dies, so a crash never leaves the
 * directory locked). */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "daemon/daemon.h"

/* mkdir -p; new directories get mode 0700 (the segments are the heap). */
static int make_dirs(const char *path)
{
    char dir[CONFIG_PATH_MAX];
    size_t n = strlen(path);

    if (n >= sizeof(dir))
        return -ENAMETOOLONG;
    memcpy(dir, path, n + 1);
    for (char *p = dir + 1;; p++) {
        if (*p && *p != '/')
            continue;
        {
            char save = *p;

            *p = 0;
            if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
            *p = save;
        }
        if (!*p)
            break;
    }
    return 0;
}

int statedir_open(struct daemon *d)
{
    const char *path = d->cfg.state_dir;
    int fd, lock, r;

    r = make_dirs(path);
    if (r < 0) {
        log_error("cannot create the state directory %s: %s", path, strerror(-r));
        return r;
    }
    fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        r = -errno;
        log_error("cannot open the state directory %s: %m", path);
        return r;
    }
    lock = openat(fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) < 0) {
        r = -errno;
        if (r == -EWOULDBLOCK)
            log_error("another shmheapd uses the state directory %s; exiting", path);
        else
            log_error("cannot lock the state directory %s: %s", path, strerror(-r));
        if (lock >= 0)
            (void) close(lock);
        (void) close(fd);
        return r;
    }
    d->state_dir_fd = fd;
    d->state_lock_fd = lock;
    {
        struct statfs sf;

        if (fstatfs(fd, &sf) == 0 && sf.f_type != TMPFS_MAGIC && sf.f_type != HUGETLBFS_MAGIC)
            log_notice("the state directory %s is neither on tmpfs nor on hugetlbfs: the heap's "
                       "pages are written back to that filesystem",
                       path);
    }
    (void) snprintf(d->state_dir, sizeof(d->state_dir), "%s", path);
    return 0;
}

int statedir_load(struct daemon *d, int fds[SHM_MAX_SEGMENTS])
{
    int n = 0;

    for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++) {
        char name[32];

        heap_segment_file_name(i, name, sizeof(name));
        fds[i] = openat(d->state_dir_fd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fds[i] >= 0) {
            n++;
        } else if (errno != ENOENT) {
            int r = -errno;

            log_error("cannot open %s/%s: %s", d->state_dir, name, strerror(-r));
            for (uint32_t k = 0; k < i; k++)
                if (fds[k] >= 0)
                    (void) close(fds[k]);
            return r;
        }
    }
    return n;
}

void statedir_discard(struct daemon *d)
{
    /* Index SHM_MAX_SEGMENTS: the header page's file. */
    for (uint32_t i = 0; i <= SHM_MAX_SEGMENTS; i++) {
        char name[32], aside[48];

        if (i == SHM_MAX_SEGMENTS)
            heap_header_file_name(name, sizeof(name));
        else
            heap_segment_file_name(i, name, sizeof(name));
        (void) snprintf(aside, sizeof(aside), "%s.discarded", name);
        if (renameat(d->state_dir_fd, name, d->state_dir_fd, aside) == 0)
            log_notice("moved %s/%s aside to %s", d->state_dir, name, aside);
    }
}

void statedir_remove_from(struct daemon *d, uint32_t from)
{
    for (uint32_t i = from ? from : 1; i < SHM_MAX_SEGMENTS; i++) {
        char name[32];

        heap_segment_file_name(i, name, sizeof(name));
        if (unlinkat(d->state_dir_fd, name, 0) == 0)
            log_info("removed %s/%s: a segment an earlier daemon created but never published",
                     d->state_dir, name);
    }
}

void statedir_close(struct daemon *d)
{
    if (d->state_lock_fd >= 0)
        (void) close(d->state_lock_fd);
    if (d->state_dir_fd >= 0)
        (void) close(d->state_dir_fd);
    d->state_lock_fd = d->state_dir_fd = -1;
}
