/* systemd's file descriptor store (docs/FILE_DESCRIPTOR_STORE.md in
 * systemd): the daemon hands each segment's memfd to the service manager
 * when it creates or adopts it, and a restarted daemon gets them back with
 * the listening socket (sd_listen_fds_with_names), told apart by name:
 * "control-segment", "heap-segment-N" (FDNAME allows [A-Za-z0-9_.:-]),
 * "header-page-<gen>" (the header page, shm/header.c: a sealed memfd
 * cannot be written again, so a restarted daemon stores a copy of the next
 * generation, then removes the older one; of several, the newest wins),
 * anything else a socket of shmheapd.socket.
 *
 * systemd keeps stored fds while the service runs, restarts (a restart job
 * or Restart=) or has a job queued; on 252 a plain `systemctl stop` then
 * `start` drops them (FileDescriptorStorePreserve=, which keeps them
 * across a stop, is 254+). Memfds are not pollable, so FDPOLL=0: systemd
 * then does not watch them for POLLHUP (246+). Storing the same file
 * twice is harmless (systemd drops duplicates), so adopted fds are not
 * stored again. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "daemon/daemon.h"

/* The segment index an FDNAME names, or -1. */
static int segment_of_name(const char *name)
{
    char want[32];

    for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++) {
        heap_segment_file_name(i, want, sizeof(want));
        if (strcmp(name, want) == 0)
            return (int) i;
    }
    return -1;
}

/* The generation a header page's FDNAME names, or -1. */
static int64_t header_gen_of_name(const char *name)
{
    char want[32], *end;
    unsigned long long gen;
    size_t n;

    heap_header_file_name(want, sizeof(want));
    n = strlen(want);
    if (strncmp(name, want, n) != 0 || name[n] != '-' || name[n + 1] < '0' || name[n + 1] > '9')
        return -1;
    errno = 0;
    gen = strtoull(name + n + 1, &end, 10);
    if (errno || *end || gen > INT64_MAX)
        return -1;
    return (int64_t) gen;
}

/* Keeps the newest header page passed back; older ones (a restart that
 * died between storing its copy and removing the old one) are dropped
 * from the store by name. Two of one generation are one page twice. */
static void collect_header(struct daemon *d, int fd, uint64_t gen)
{
    if (d->stored_hdr_fd >= 0 && d->stored_hdr_gen >= gen) {
        (void) close(fd);
        if (d->stored_hdr_gen > gen)
            fdstore_remove_header(d, gen);
        return;
    }
    if (d->stored_hdr_fd >= 0) {
        (void) close(d->stored_hdr_fd);
        fdstore_remove_header(d, d->stored_hdr_gen);
    }
    d->stored_hdr_fd = fd;
    d->stored_hdr_gen = gen;
}

void fdstore_collect(struct daemon *d)
{
    char **names = NULL;
    int n, nseg = 0;

    d->passed_listen_fd = -1;
    d->stored_hdr_fd = -1;
    for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++)
        d->stored_fds[i] = -1;
    /* unset_environment: LISTEN_* are for us, not for anything we run. */
    n = sd_listen_fds_with_names(1, &names);
    if (n < 0) {
        log_warning("cannot read the fds passed by systemd, ignoring them: %s", strerror(-n));
        return;
    }
    for (int k = 0; k < n; k++) {
        int fd = SD_LISTEN_FDS_START + k, index;
        const char *name = names && names[k] ? names[k] : "unknown";
        int64_t gen;

        (void) fcntl(fd, F_SETFD, FD_CLOEXEC);
        if ((gen = header_gen_of_name(name)) >= 0) {
            collect_header(d, fd, (uint64_t) gen);
            nseg++;
            continue;
        }
        index = segment_of_name(name);
        if (index >= 0) {
            if (d->stored_fds[index] >= 0) {
                log_warning("systemd passed %s twice; using the first", name);
                (void) close(fd);
                continue;
            }
            d->stored_fds[index] = fd;
            nseg++;
            continue;
        }
        if (d->passed_listen_fd < 0 && sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0) {
            d->passed_listen_fd = fd;
            continue;
        }
        log_warning("systemd passed fd %d named \"%s\", which is neither a segment nor a "
                    "listening Unix stream socket; closing it",
                    fd, name);
        (void) close(fd);
    }
    if (nseg)
        log_info("systemd passed %d stored segment fds", nseg);
    if (names) {
        for (int k = 0; k < n; k++)
            free(names[k]);
        free(names);
    }
}

void fdstore_put(struct daemon *d, uint32_t index, int fd)
{
    char name[32], msg[96];
    int r;

    if (!d->use_fdstore)
        return;
    heap_segment_file_name(index, name, sizeof(name));
    (void) snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s\nFDPOLL=0", name);
    r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
    if (r < 0)
        log_warning("cannot store %s in systemd's fd store, ignoring (a restart will not "
                    "find it): %s",
                    name, strerror(-r));
    else
        log_debug("stored %s in systemd's fd store", name);
}

void fdstore_put_header(struct daemon *d, uint64_t gen, int fd)
{
    char name[32], msg[112];
    int r;

    if (!d->use_fdstore)
        return;
    heap_header_file_name(name, sizeof(name));
    (void) snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s-%" PRIu64 "\nFDPOLL=0", name, gen);
    r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
    if (r < 0)
        log_warning("cannot store the header page in systemd's fd store, ignoring (a restart "
                    "will not adopt the heap): %s",
                    strerror(-r));
    else
        log_debug("stored %s-%" PRIu64 " in systemd's fd store", name, gen);
}

void fdstore_remove_header(struct daemon *d, uint64_t gen)
{
    char name[32], msg[112];

    if (!d->use_fdstore)
        return;
    heap_header_file_name(name, sizeof(name));
    (void) snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s-%" PRIu64, name, gen);
    (void) sd_notify(0, msg);
}

void fdstore_remove(struct daemon *d, uint32_t index)
{
    char name[32], msg[96];

    if (!d->use_fdstore)
        return;
    heap_segment_file_name(index, name, sizeof(name));
    (void) snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
    (void) sd_notify(0, msg);
}

void fdstore_close_unused(struct daemon *d)
{
    if (d->stored_hdr_fd >= 0)
        (void) close(d->stored_hdr_fd);
    d->stored_hdr_fd = -1;
    for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++) {
        if (d->stored_fds[i] >= 0)
            (void) close(d->stored_fds[i]);
        d->stored_fds[i] = -1;
    }
}
