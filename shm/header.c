/* The header page (layout.h): the control segment's first page, which only
 * the heap's owner writes, kept where attachments can map it read-only.
 *
 * The owner (shmheapd) makes it a memfd of its own, copies the header into
 * it, maps it read-write for itself and then seals it (os_seal_read_only:
 * F_SEAL_FUTURE_WRITE, and against shrinking and growing) before any fd of
 * it leaves the process: from then on every mmap of it with PROT_WRITE and
 * MAP_SHARED, and every mprotect of such a mapping to PROT_WRITE, is
 * refused, whoever holds the fd. Attachments map it over the first page of
 * the control segment (heap_attach), so the code that reads the header,
 * the config and the segment table reads it there as before.
 *
 * A sealed memfd cannot be written again, not even by a restarted owner:
 * a daemon that adopts a heap from systemd's fd store copies the stored
 * header page into a new one (header_gen + 1), and the clients that
 * reconnect map the new one (heap_remap_header). A state directory keeps
 * the header page as the file `header-page` (mode 0600): files cannot be
 * sealed, so the owner keeps it read-write and hands out a read-only fd of
 * it, which no one can map writable (a process of the daemon's own uid
 * could reopen the file, but such a process can write the daemon's memory
 * anyway). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

#define HEADER_FILE "header-page"

static int header_map(int fd, int prot, struct ctl_header **ret)
{
    void *p = mmap(NULL, SHM_HEADER_PAGE, prot, MAP_SHARED, fd, 0);

    if (p == MAP_FAILED)
        return -errno;
    *ret = p;
    return 0;
}

/* Copies src_fd's first page (a control segment, or an earlier header
 * page) into the new page. */
static int header_fill(struct ctl_header *page, int src_fd)
{
    uint64_t size;
    void *src;
    int r;

    r = os_fstat_size(src_fd, &size, NULL);
    if (r < 0)
        return r;
    if (size < SHM_HEADER_PAGE)
        return -EBADMSG;
    src = mmap(NULL, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED, src_fd, 0);
    if (src == MAP_FAILED)
        return -errno;
    memcpy(page, src, SHM_HEADER_PAGE);
    (void) munmap(src, SHM_HEADER_PAGE);
    return ctl_check_page(page);
}

static int header_create_memfd(int src_fd, struct heap_header *ret)
{
    struct ctl_header *page = NULL;
    int fd, r;

    fd = os_memfd("shmheap-header", 4096);
    if (fd < 0)
        return fd;
    r = os_truncate(fd, SHM_HEADER_PAGE);
    if (r < 0)
        goto fail;
    r = header_map(fd, PROT_READ | PROT_WRITE, &page);
    if (r < 0)
        goto fail;
    r = header_fill(page, src_fd);
    /* Sealed before the fd goes anywhere: our mapping above stays
     * writable, no later one can be. */
    if (r == 0)
        r = os_seal_read_only(fd);
    if (r < 0) {
        (void) munmap(page, SHM_HEADER_PAGE);
        goto fail;
    }
    ret->page = page;
    ret->fd = fd;
    return 0;
fail:
    (void) close(fd);
    return r;
}

/* The owner's read-write mapping of the directory's header page file, and
 * a read-only fd of it for attachments. */
static int header_open_file(int dir_fd, int rw_fd, struct heap_header *ret)
{
    struct ctl_header *page = NULL;
    int fd, r;

    r = header_map(rw_fd, PROT_READ | PROT_WRITE, &page);
    if (r < 0)
        return r;
    fd = os_file_open_read_only(dir_fd, HEADER_FILE);
    if (fd < 0) {
        (void) munmap(page, SHM_HEADER_PAGE);
        return fd;
    }
    ret->page = page;
    ret->fd = fd;
    return 0;
}

static int header_create_file(int dir_fd, int src_fd, struct heap_header *ret)
{
    struct ctl_header *page = NULL;
    int fd, r;

    fd = os_file_create(dir_fd, HEADER_FILE ".new");
    if (fd < 0)
        return fd;
    r = os_truncate(fd, SHM_HEADER_PAGE);
    if (r == 0)
        r = header_map(fd, PROT_READ | PROT_WRITE, &page);
    if (r == 0) {
        r = header_fill(page, src_fd);
        (void) munmap(page, SHM_HEADER_PAGE);
    }
    if (r == 0)
        r = os_file_rename(dir_fd, HEADER_FILE ".new", HEADER_FILE);
    if (r == 0)
        r = header_open_file(dir_fd, fd, ret);
    if (r < 0)
        (void) unlinkat(dir_fd, HEADER_FILE ".new", 0);
    (void) close(fd);
    return r;
}

int heap_header_create(int src_fd, int dir_fd, struct heap_header *ret)
{
    if (src_fd < 0 || !ret)
        return -EINVAL;
    return dir_fd >= 0 ? header_create_file(dir_fd, src_fd, ret) : header_create_memfd(src_fd, ret);
}

int heap_header_open_at(int dir_fd, struct heap_header *ret)
{
    struct ctl_header *page = NULL;
    uint64_t size;
    int fd, r;

    if (dir_fd < 0 || !ret)
        return -EINVAL;
    fd = os_file_open(dir_fd, HEADER_FILE);
    if (fd < 0)
        return fd;
    r = os_fstat_size(fd, &size, NULL);
    if (r == 0 && size != SHM_HEADER_PAGE)
        r = -EBADMSG;
    if (r == 0)
        r = header_map(fd, PROT_READ, &page);
    if (r == 0) {
        r = ctl_check_page(page);
        (void) munmap(page, SHM_HEADER_PAGE);
    }
    if (r == 0)
        r = header_open_file(dir_fd, fd, ret);
    (void) close(fd);
    return r;
}

void heap_header_close(struct heap_header *hp)
{
    if (!hp)
        return;
    if (hp->page)
        (void) munmap(hp->page, SHM_HEADER_PAGE);
    if (hp->fd >= 0)
        (void) close(hp->fd);
    hp->page = NULL;
    hp->fd = -1;
}

void heap_header_file_name(char *buf, size_t len)
{
    (void) snprintf(buf, len, "%s", HEADER_FILE);
}
