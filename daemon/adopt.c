/* Adoption: a daemon started on a heap an earlier one left (systemd's fd
 * store or a state directory) takes it over instead of creating one.
 *
 * Nothing is trusted that cannot be checked (shm/adopt.c checks the
 * header page, the control segment and every heap segment against fstat
 * and each other; the header page is the earlier daemon's, never a
 * client's: shm/header.c); a
 * segment that fails is refused with a log line that says why, and the
 * daemon exits non-zero, leaving everything as it found it, unless
 * --discard-bad-heap says to start clean. A heap of another layout version
 * is never discarded: a rollback to a daemon of that version adopts it.
 *
 * After the checks: the daemon's records of the segments come from what
 * it checked, its own attachment maps them, and recovery repairs the
 * locks of dead holders and reclaims what every process that died while
 * no daemon ran left (the same code path as a client that dies under a
 * running daemon). Clients still alive are watched by pidfd at once
 * (clients_adopt), so one that dies before it says hello again is
 * reclaimed too. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/daemon.h"

static int refuse(const char *source, uint32_t index, int r, const char *why)
{
    char name[32];

    heap_segment_file_name(index, name, sizeof(name));
    log_error("refusing to adopt the heap in %s: %s: %s", source, name, why);
    if (r == -EPROTO)
        log_error("the stored heap was made by a shmheapd of another layout version; it is "
                  "left untouched, so that a shmheapd of that version can still adopt it. To "
                  "start a new heap, remove it (the state directory's segment files, or stop "
                  "the service so that systemd drops its fd store) and start again");
    return r;
}

/* Without its header page, the heap cannot be adopted: the control
 * segment's own first page is client-writable. An older layout (which had
 * no header page) is refused as such, and left for a rollback. A control
 * segment of this layout whose own first page still holds the header with
 * no heap segment is a creation cut short before its header page (with
 * a header page, the first page is its copy): -ENODATA, nothing to adopt. */
static int refuse_no_header(const char *source, int ctl_fd)
{
    char why[160];
    uint32_t version = 0, nsegments = 0;

    if (heap_adopt_version(ctl_fd, &version, &nsegments) == 0) {
        if (version != SHM_LAYOUT_VERSION) {
            (void) snprintf(why, sizeof(why),
                            "layout version %" PRIu32 ", this build has layout version %u", version,
                            SHM_LAYOUT_VERSION);
            return refuse(source, 0, -EPROTO, why);
        }
        if (nsegments == 1) {
            log_notice("%s holds a control segment without a header page or heap segment (a "
                       "creation cut short): starting a new heap",
                       source);
            return -ENODATA;
        }
    }
    return refuse(source, 0, -EBADMSG, "its header page is missing");
}

/* The daemon's header page for the adopted heap: in a state directory the
 * file itself; from the fd store a copy of the stored (sealed, so
 * unwritable) page, of the next generation, stored before the old one is
 * removed. */
static int adopt_header(struct daemon *d, int hdr_fd, const char *source)
{
    uint64_t gen;
    int r;

    if (d->state_dir_fd >= 0) {
        r = heap_header_open_at(d->state_dir_fd, &d->hdr);
        if (r < 0)
            log_error("cannot map the header page in %s: %s", source, strerror(-r));
        return r;
    }
    r = heap_header_create(hdr_fd, -1, &d->hdr);
    if (r < 0) {
        log_error("cannot copy the header page from %s: %s", source, strerror(-r));
        return r;
    }
    gen = load_relaxed(&d->hdr.page->header_gen) + 1;
    store_relaxed(&d->hdr.page->header_gen, gen);
    fdstore_put_header(d, gen, d->hdr.fd);
    if (gen - 1 != d->stored_hdr_gen)
        log_warning("the header page stored as generation %" PRIu64 " says %" PRIu64,
                    d->stored_hdr_gen, gen - 1);
    fdstore_remove_header(d, d->stored_hdr_gen);
    return 0;
}

int adopt_heap(struct daemon *d, int fds[SHM_MAX_SEGMENTS], int hdr_fd, const char *source)
{
    struct heap_adopt_segment s;
    char why[256];
    uint32_t n;
    struct stat st;
    int r;

    if (hdr_fd < 0)
        return refuse_no_header(source, fds[0]);
    r = heap_adopt_check_ctl(fds[0], hdr_fd, &n, why, sizeof(why));
    if (r < 0)
        return refuse(source, 0, r, why);
    for (uint32_t i = 1; i < n; i++) {
        r = heap_adopt_check_segment(hdr_fd, i, fds[i], &s, why, sizeof(why));
        if (r < 0)
            return refuse(source, i, r, why);
        if (s.state == SEG_RETIRED && fds[i] >= 0) {
            /* Released by the earlier daemon: nobody maps it again. */
            (void) close(fds[i]);
            fds[i] = -1;
        }
    }
    for (uint32_t i = n; i < SHM_MAX_SEGMENTS; i++) {
        char name[32];

        if (fds[i] < 0)
            continue;
        heap_segment_file_name(i, name, sizeof(name));
        log_warning("%s holds %s, which the control segment never published (a creation cut "
                    "short); dropping it",
                    source, name);
        (void) close(fds[i]);
        fds[i] = -1;
        if (d->state_dir_fd >= 0)
            statedir_remove_from(d, i);
        else
            fdstore_remove(d, i);
    }
    r = adopt_header(d, hdr_fd, source);
    if (r < 0)
        return r;
    /* The records, from what was checked: fstat for sizes, as owner_grow
     * does for segments it creates. */
    pthread_mutex_lock(&d->seg_lock);
    for (uint32_t i = 0; i < n; i++) {
        if (fds[i] < 0) {
            d->seg_fds[i] = -1; /* retired */
            continue;
        }
        if (fstat(fds[i], &st) < 0) {
            r = -errno;
            pthread_mutex_unlock(&d->seg_lock);
            log_error("cannot stat segment %" PRIu32 " of %s: %s", i, source, strerror(-r));
            return r;
        }
        d->seg_fds[i] = fds[i];
        d->seg_size[i] = (uint64_t) st.st_size;
        d->seg_page[i] = i == 0 ? 4096 : (uint32_t) st.st_blksize;
        fds[i] = -1; /* ours now */
    }
    d->nsegs = n;
    d->ctl_fd = d->seg_fds[0];
    /* The copy in the control segment's own first page, from the header
     * page (whatever a client wrote there meanwhile). */
    r = heap_header_mirror_to(&d->hdr, d->ctl_fd);
    if (r < 0) {
        pthread_mutex_unlock(&d->seg_lock);
        log_error("cannot map the first page of the control segment of %s: %s", source,
                  strerror(-r));
        return r;
    }
    pthread_mutex_unlock(&d->seg_lock);
    d->adopted = true;
    return 0;
}

int adopt_recover(struct daemon *d, const char *source)
{
    struct heap_adopt_report *rep = malloc(sizeof(*rep));
    uint32_t watching = 0;
    int r;

    if (!rep)
        return -ENOMEM;
    r = heap_adopt_recover(d->heap, rep);
    if (r < 0) {
        log_error("cannot recover the heap adopted from %s: %s", source, strerror(-r));
        free(rep);
        return r;
    }
    if (rep->max_client_id > d->next_client_id)
        d->next_client_id = rep->max_client_id;
    for (uint32_t i = 0; i < rep->nclients; i++) {
        if (!rep->clients[i].alive)
            continue;
        if (clients_adopt(d, rep->clients[i].client_id, (pid_t) rep->clients[i].pid) == 0)
            watching++;
    }
    log_notice("adopted the heap from %s: %" PRIu32 " heap segments; %" PRIu32
               " clients still running (watched until they attach again); reclaimed what %" PRIu32
               " gone clients left: %" PRIu32 " thread caches, %" PRIu64
               " private objects (%" PRIu64 " bytes), %" PRIu32 " session arenas",
               source, rep->segments, watching, rep->clients_gone, rep->slots_reclaimed,
               rep->owned_objects, rep->owned_bytes, rep->arenas_destroyed);
    free(rep);
    return 0;
}
