/* A heap that outlives its owner: segments kept as files in a state
 * directory, and the checks and recovery a new owner runs before it adopts
 * segments an earlier one left (from that directory or systemd's fd store).
 *
 * Files: the control segment is `control-segment`, heap segment N is
 * `heap-segment-N`. Each is written under a `.new` name and renamed into
 * place once formatted, so a name in the directory always holds a whole
 * segment. Kept before published: a heap segment's file is renamed into
 * place, or its memfd handed to the fd store (the caller's `keep`), before
 * the control segment publishes it (nsegments, release), so a published
 * segment always has its file or stored fd. One beyond nsegments is from
 * a creation cut short, never published: nothing in it was ever used.
 *
 * Adoption trusts nothing it cannot check: the header page's magic,
 * layout version, header size, and the control segment's size against
 * fstat (the header page is the owner's, header.c: no client could write
 * it); each heap segment's
 * magic, version, index and geometry against the control segment's table
 * and fstat. A segment from another layout version is refused as such
 * (-EPROTO) so that the caller can leave it untouched for a rollback.
 *
 * Recovery: each segment lock is taken once, so a holder that died while no
 * owner ran is repaired now (EOWNERDEAD, seg_recover) rather than by the
 * next allocating thread; then heap_reclaim_dead() gives back the caches,
 * BUSY blocks and private objects of every process that is gone: the same
 * path a running daemon takes for a client that dies. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/internal.h"
#include "shm/os.h"

#define MiB (UINT64_C(1) << 20)

void heap_segment_file_name(uint32_t index, char *buf, size_t len)
{
    if (index == 0)
        (void) snprintf(buf, len, "control-segment");
    else
        (void) snprintf(buf, len, "heap-segment-%u", index);
}

int heap_ctl_create_at(int dir_fd, const struct shm_config *cfg, int *ret_fd)
{
    char name[32], tmp[40];
    int fd, r;

    if (dir_fd < 0 || !cfg || !ret_fd)
        return -EINVAL;
    heap_segment_file_name(0, name, sizeof(name));
    (void) snprintf(tmp, sizeof(tmp), "%s.new", name);
    fd = os_file_create(dir_fd, tmp);
    if (fd < 0)
        return fd;
    r = ctl_format(fd, cfg);
    if (r == 0)
        r = os_file_rename(dir_fd, tmp, name);
    if (r < 0) {
        (void) unlinkat(dir_fd, tmp, 0);
        (void) close(fd);
        return r;
    }
    *ret_fd = fd;
    return 0;
}

/* ---- checks before adoption ---- */

#define WHY(...) ((void) (why ? snprintf(why, why_len, __VA_ARGS__) : 0))

int heap_adopt_check_ctl(int ctl_fd, int hdr_fd, uint32_t *ret_nsegments, char *why, size_t why_len)
{
    const struct ctl_header *c;
    struct stat st, hst;
    uint32_t n;
    int r = 0;

    if (fstat(ctl_fd, &st) < 0 || fstat(hdr_fd, &hst) < 0) {
        r = -errno;
        WHY("cannot stat it: %s", strerror(-r));
        return r;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size < sizeof(struct ctl_header) ||
        (uint64_t) st.st_size > SHM_SEG_SPAN) {
        WHY("it is %jd bytes, not a control segment (%zu bytes or more)", (intmax_t) st.st_size,
            sizeof(struct ctl_header));
        return -EBADF;
    }
    if (!S_ISREG(hst.st_mode) || hst.st_size != SHM_HEADER_PAGE) {
        WHY("its header page is %jd bytes, not %u", (intmax_t) hst.st_size, SHM_HEADER_PAGE);
        return -EBADF;
    }
    /* The header page, not the control segment's own first page: only
     * the owner could write the header page, any client the other. */
    c = mmap(NULL, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED, hdr_fd, 0);
    if (c == MAP_FAILED) {
        r = -errno;
        WHY("cannot map its header page: %s", strerror(-r));
        return r;
    }
    /* acquire: pairs with the release store of the magic in ctl_format(). */
    if (load_acquire(&c->magic) != SHM_CTL_MAGIC) {
        WHY("wrong magic 0x%016jx (a control segment has 0x%016jx)", (uintmax_t) c->magic,
            (uintmax_t) SHM_CTL_MAGIC);
        r = -EBADF;
    } else if (c->version != SHM_LAYOUT_VERSION) {
        WHY("layout version %u, this build has layout version %u", c->version, SHM_LAYOUT_VERSION);
        r = -EPROTO;
    } else if (c->header_size != sizeof(struct ctl_header)) {
        WHY("header of %u bytes, this build's is %zu", c->header_size, sizeof(struct ctl_header));
        r = -EPROTO;
    } else if (c->ctl_size != (uint64_t) st.st_size) {
        WHY("its header says %ju bytes, the file holds %jd", (uintmax_t) c->ctl_size,
            (intmax_t) st.st_size);
        r = -EBADMSG;
    } else if (c->config.max_segments >= SHM_MAX_SEGMENTS) {
        WHY("its max_segments is %u (at most %u)", c->config.max_segments, SHM_MAX_SEGMENTS - 1);
        r = -EBADMSG;
    } else if ((n = load_acquire(&c->nsegments)) < 1 || n > SHM_MAX_SEGMENTS) {
        WHY("it lists %u segments (1..%u possible)", n, SHM_MAX_SEGMENTS);
        r = -EBADMSG;
    } else if (ret_nsegments) {
        *ret_nsegments = n;
    }
    (void) munmap((void *) c, SHM_HEADER_PAGE);
    return r;
}

int heap_adopt_version(int ctl_fd, uint32_t *ret_version, uint32_t *ret_nsegments)
{
    const struct ctl_header *c;
    uint64_t size;
    int r;

    r = os_fstat_size(ctl_fd, &size, NULL);
    if (r < 0)
        return r;
    if (size < 4096)
        return -EBADF;
    c = mmap(NULL, 4096, PROT_READ, MAP_SHARED, ctl_fd, 0);
    if (c == MAP_FAILED)
        return -errno;
    r = load_acquire(&c->magic) == SHM_CTL_MAGIC ? 0 : -EBADF;
    if (r == 0) {
        *ret_version = c->version;
        *ret_nsegments = load_relaxed(&c->nsegments);
    }
    (void) munmap((void *) c, 4096);
    return r;
}

int heap_adopt_check_segment(int hdr_fd,
                             uint32_t index,
                             int fd,
                             struct heap_adopt_segment *ret,
                             char *why,
                             size_t why_len)
{
    const struct seg_header *hdr;
    const struct ctl_header *c;
    struct heap_adopt_segment s;
    struct stat st;
    int r;

    if (index == 0 || index >= SHM_MAX_SEGMENTS || !ret)
        return -EINVAL;
    c = mmap(NULL, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED, hdr_fd, 0);
    if (c == MAP_FAILED)
        return -errno;
    s.state = load_relaxed(&c->segs[index].state);
    s.size = load_relaxed(&c->segs[index].size);
    s.page_size = load_relaxed(&c->segs[index].page_size);
    (void) munmap((void *) c, SHM_HEADER_PAGE);
    if (s.state == SEG_RETIRED) {
        *ret = s;
        return 0; /* released: nothing to map */
    }
    if (s.state != SEG_LIVE || s.size < 4 * MiB || s.size > SHM_SEG_SPAN) {
        WHY("the control segment's table has no live segment %u (state %u, size %ju)", index,
            s.state, (uintmax_t) s.size);
        return -EBADMSG;
    }
    if (fd < 0) {
        WHY("its file descriptor is missing");
        return -ENOENT;
    }
    if (fstat(fd, &st) < 0) {
        r = -errno;
        WHY("cannot stat it: %s", strerror(-r));
        return r;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != s.size) {
        WHY("it holds %jd bytes, the control segment's table says %ju", (intmax_t) st.st_size,
            (uintmax_t) s.size);
        return -EBADMSG;
    }
    hdr = mmap(NULL, sizeof(*hdr), PROT_READ, MAP_SHARED, fd, 0);
    if (hdr == MAP_FAILED) {
        r = -errno;
        WHY("cannot map it: %s", strerror(-r));
        return r;
    }
    r = seg_check_header(hdr, index, s.size);
    if (r == -EBADF)
        WHY("wrong magic 0x%016jx (a heap segment has 0x%016jx)", (uintmax_t) hdr->magic,
            (uintmax_t) SHM_SEG_MAGIC);
    else if (r == -EPROTO)
        WHY("layout version %u, this build has layout version %u", hdr->version,
            SHM_LAYOUT_VERSION);
    else if (r < 0)
        WHY("its header (index %u, %ju bytes, %u blocks) does not match segment %u of %ju "
            "bytes",
            hdr->index, (uintmax_t) hdr->size, hdr->nblocks, index, (uintmax_t) s.size);
    else if (hdr->page_size != s.page_size ||
             (s.page_size > 4096 && (uint64_t) st.st_blksize != s.page_size)) {
        WHY("its page size (%u in its header, %ju by fstat) is not the table's %u", hdr->page_size,
            (uintmax_t) st.st_blksize, s.page_size);
        r = -EBADMSG;
    }
    (void) munmap((void *) hdr, sizeof(*hdr));
    if (r == 0)
        *ret = s;
    return r;
}

/* ---- recovery after adoption ---- */

static void note_client(struct heap_adopt_report *ret, uint64_t client_id, uint32_t pid)
{
    if (client_id > ret->max_client_id)
        ret->max_client_id = client_id;
    if (client_id == 0)
        return; /* the owner's own attachment: not a client */
    for (uint32_t i = 0; i < ret->nclients; i++)
        if (ret->clients[i].client_id == client_id && ret->clients[i].pid == pid)
            return;
    if (ret->nclients < HEAP_ADOPT_MAX_CLIENTS) {
        ret->clients[ret->nclients].client_id = client_id;
        ret->clients[ret->nclients].pid = pid;
        ret->clients[ret->nclients].alive = os_pid_alive((pid_t) pid);
        ret->nclients++;
    }
}

int heap_adopt_recover(struct heap *h, struct heap_adopt_report *ret)
{
    struct ctl_header *c;
    uint64_t objects0, bytes0;
    int r;

    if (!h || !ret)
        return -EINVAL;
    memset(ret, 0, sizeof(*ret));
    c = h->ctl;
    /* Who had the heap: every attachment in the owner table and every
     * thread cache, with whether its process still runs. Read before the
     * reclamation below frees the entries of the gone ones. */
    for (uint32_t i = 0, high = load_acquire(&c->owners_high); i < high && i < SHM_MAX_OWNERS;
         i++) {
        const struct owner_entry *e = &c->owners[i];
        uint32_t st = load_acquire(&e->state);

        if (st != OWNER_FREE && i != h->owner_index)
            note_client(ret, load_relaxed(&e->client_id), load_relaxed(&e->pid));
    }
    for (uint32_t i = 0, high = slot_high(c); i < high; i++) {
        const struct cache_slot *s = &c->slots[i];

        if (load_acquire(&s->state) == SLOT_OWNED && load_relaxed(&s->pid) != (uint32_t) h->pid)
            note_client(ret, load_relaxed(&s->client_id), load_relaxed(&s->pid));
    }
    if (load_relaxed(&c->client_id_next) > ret->max_client_id)
        ret->max_client_id = load_relaxed(&c->client_id_next);
    /* A lock whose holder died while no owner ran is repaired by its next
     * holder (EOWNERDEAD): be that holder now. */
    r = ctl_lock_for(h); /* the daemon's: guarded (shm/os.c) */
    if (r < 0)
        return r;
    ctl_unlock(c);
    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++) {
        struct seg_map *m = &h->segs[i];

        if (!load_acquire(&m->meta))
            continue;
        r = seg_lock(m, h);
        if (r < 0)
            return r;
        seg_unlock(m);
        ret->segments++;
    }
    objects0 = load_relaxed(&c->owned_reclaimed_objects);
    bytes0 = load_relaxed(&c->owned_reclaimed_bytes);
    r = heap_reclaim_dead(h);
    if (r < 0)
        return r;
    ret->slots_reclaimed = (uint32_t) r;
    ret->owned_objects = load_relaxed(&c->owned_reclaimed_objects) - objects0;
    ret->owned_bytes = load_relaxed(&c->owned_reclaimed_bytes) - bytes0;
    /* SESSION arenas die with their creator, as heap_arena_destroy_session
     * does for a client that exits under a running daemon. */
    for (uint32_t i = 0; i < ret->nclients; i++) {
        bool other_alive = false;

        if (ret->clients[i].alive)
            continue;
        /* A client id is one attachment, of one process; but be safe. */
        for (uint32_t k = 0; k < ret->nclients; k++)
            other_alive |=
                    ret->clients[k].client_id == ret->clients[i].client_id && ret->clients[k].alive;
        if (other_alive)
            continue;
        r = heap_arena_destroy_session(h, ret->clients[i].client_id);
        if (r > 0)
            ret->arenas_destroyed += (uint32_t) r;
        ret->clients_gone++;
    }
    return 0;
}
