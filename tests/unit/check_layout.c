/* Unit tests for attaching (shm/heap.c, ctl.c, segment.c): fds that are
 * not heaps, control and segment headers with a wrong magic, version or
 * geometry, a segment table that lies, hooks that hand out the wrong fd,
 * and configurations that cannot make a heap. Every case must fail with a
 * clear negative errno and leave nothing behind; none may crash. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/heap.h"
#include "shm/layout.h"
#include "shm/local.h"
#include "tests/common/testheap.h"
#include "tests/unit/suites.h"

#define MiB (UINT64_C(1) << 20)

static struct test_heap th;

static void heap_setup(void)
{
    struct shm_config cfg;

    th_config(&cfg, 16 * MiB);
    th_create(&th, &cfg, SHM_PAGES_OFF);
}

static void heap_teardown(void)
{
    th_destroy(&th);
}

static int hook_no_segment(void *ctx, uint32_t index)
{
    (void) ctx;
    (void) index;
    return -ENOENT;
}

static int memfd_of(size_t size, int fill)
{
    int fd = memfd_create("not-a-heap", MFD_CLOEXEC);
    char *buf;

    ck_assert_int_ge(fd, 0);
    if (size == 0)
        return fd;
    ck_assert_int_eq(ftruncate(fd, (off_t) size), 0);
    if (fill) {
        buf = malloc(size);
        ck_assert_ptr_nonnull(buf);
        memset(buf, fill, size);
        ck_assert_int_eq(pwrite(fd, buf, size, 0), (ssize_t) size);
        free(buf);
    }
    return fd;
}

/* heap_attach must fail with want, and leave *ret_heap alone. */
static void assert_attach_fails(int fd, const struct heap_hooks *hooks, int want, const char *what)
{
    struct heap *sentinel = (struct heap *) (uintptr_t) 0x5a5a, *h = sentinel;
    int r = heap_attach(fd, hooks, 7, &h);

    if (r == 0)
        heap_detach(h);
    ck_assert_msg(r == want, "%s: heap_attach returned %d (%s), want %d (%s)", what, r,
                  r ? strerror(-r) : "success", want, strerror(-want));
    ck_assert_ptr_eq(h, sentinel);
}

START_TEST(layout_attach_not_a_heap)
{
    const struct heap_hooks hooks = {.open_segment = hook_no_segment};
    size_t ctl = (sizeof(struct ctl_header) + 4095) & ~(size_t) 4095;
    int fd, pipefd[2];

    fd = memfd_of(ctl, 0);
    assert_attach_fails(fd, &hooks, -EBADF, "memfd of zeros, control size");
    (void) close(fd);
    fd = memfd_of(4 * ctl, 0);
    assert_attach_fails(fd, &hooks, -EBADF, "memfd of zeros, larger");
    (void) close(fd);
    fd = memfd_of(4096, 0);
    assert_attach_fails(fd, &hooks, -EBADF, "memfd of zeros, one page");
    (void) close(fd);
    fd = memfd_of(0, 0);
    assert_attach_fails(fd, &hooks, -EBADF, "empty memfd");
    (void) close(fd);
    fd = memfd_of(ctl, 0xa7);
    assert_attach_fails(fd, &hooks, -EBADF, "memfd of garbage");
    (void) close(fd);
    fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    assert_attach_fails(fd, &hooks, -EBADF, "/dev/null");
    (void) close(fd);
    ck_assert_int_eq(pipe2(pipefd, O_CLOEXEC), 0);
    assert_attach_fails(pipefd[0], &hooks, -EBADF, "a pipe");
    (void) close(pipefd[0]);
    (void) close(pipefd[1]);
    fd = memfd_of(0, 0);
    (void) close(fd); /* now a closed fd */
    assert_attach_fails(fd, &hooks, -EBADF, "a closed fd");

    /* Bad arguments. */
    assert_attach_fails(-1, &hooks, -EINVAL, "fd -1");
    assert_attach_fails(heap_local_ctl_fd(th.local), NULL, -EINVAL, "no hooks");
    {
        const struct heap_hooks none = {0};

        assert_attach_fails(heap_local_ctl_fd(th.local), &none, -EINVAL, "no open_segment");
    }
    ck_assert_int_eq(heap_attach(heap_local_ctl_fd(th.local), &hooks, 7, NULL), -EINVAL);
    th_verify(th.h);
}
END_TEST

/* Writes len bytes at off of fd, saving what was there into save. */
static void poke(int fd, off_t off, const void *val, size_t len, void *save)
{
    ck_assert_int_eq(pread(fd, save, len, off), (ssize_t) len);
    ck_assert_int_eq(pwrite(fd, val, len, off), (ssize_t) len);
}

static void unpoke(int fd, off_t off, const void *save, size_t len)
{
    ck_assert_int_eq(pwrite(fd, save, len, off), (ssize_t) len);
}

static void assert_local_attach(int want, const char *what)
{
    struct heap *h = NULL;
    int r = heap_local_attach(th.local, 2, &h);

    if (r == 0) {
        ck_assert_ptr_nonnull(h);
        heap_detach(h);
    }
    ck_assert_msg(r == want, "%s: attach returned %d (%s), want %d (%s)", what, r,
                  r ? strerror(-r) : "success", want, want ? strerror(-want) : "success");
}

struct field {
    const char *what;
    off_t off;
    size_t len;
    uint64_t value;
    int want;
};

static void poke_fields(int fd, const struct field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t save = 0;

        poke(fd, f[i].off, &f[i].value, f[i].len, &save);
        assert_local_attach(f[i].want, f[i].what);
        unpoke(fd, f[i].off, &save, f[i].len);
        assert_local_attach(0, "restored");
    }
}

START_TEST(layout_ctl_header)
{
    int fd = heap_local_ctl_fd(th.local);
    uint32_t version = 0;
    const struct field fields[] = {
            {"ctl version + 1", offsetof(struct ctl_header, version), 4, SHM_LAYOUT_VERSION + 1,
             -EPROTO},
            {"ctl version 0", offsetof(struct ctl_header, version), 4, 0, -EPROTO},
            {"ctl header_size", offsetof(struct ctl_header, header_size), 4,
             sizeof(struct ctl_header) - 64, -EPROTO},
            {"ctl magic", offsetof(struct ctl_header, magic), 8, SHM_SEG_MAGIC, -EBADF},
            {"ctl magic byte", offsetof(struct ctl_header, magic), 1, 'X', -EBADF},
            {"ctl_size", offsetof(struct ctl_header, ctl_size), 8, 4096, -EBADMSG},
            {"max_segments", offsetof(struct ctl_header, config.max_segments), 4, SHM_MAX_SEGMENTS,
             -EBADMSG},
    };

    assert_local_attach(0, "untouched");
    ck_assert_int_eq(pread(fd, &version, 4, offsetof(struct ctl_header, version)), 4);
    ck_assert_uint_eq(version, SHM_LAYOUT_VERSION);
    poke_fields(fd, fields, sizeof(fields) / sizeof(fields[0]));
    th_verify(th.h);
}
END_TEST

START_TEST(layout_segment_header)
{
    int fd = heap_local_segment_fd(th.local, 1);
    const struct field fields[] = {
            {"segment magic", offsetof(struct seg_header, magic), 8, UINT64_C(0xdeadbeef), -EBADF},
            {"segment magic = ctl magic", offsetof(struct seg_header, magic), 8, SHM_CTL_MAGIC,
             -EBADF},
            {"segment version", offsetof(struct seg_header, version), 4, SHM_LAYOUT_VERSION + 1,
             -EPROTO},
            {"segment index", offsetof(struct seg_header, index), 4, 2, -EBADMSG},
            {"segment size", offsetof(struct seg_header, size), 8, 32 * MiB, -EBADMSG},
            {"segment nblocks", offsetof(struct seg_header, nblocks), 4, 1 << 20, -EBADMSG},
            {"segment first_block", offsetof(struct seg_header, first_block), 4, 1 << 20, -EBADMSG},
            {"segment meta_end", offsetof(struct seg_header, meta_end), 8, 64 * MiB, -EBADMSG},
    };

    ck_assert_int_ge(fd, 0);
    poke_fields(fd, fields, sizeof(fields) / sizeof(fields[0]));
    th_verify(th.h);
}
END_TEST

/* The control segment's table says a segment is bigger than its fd, or is absurd. */
START_TEST(layout_segment_table_lies)
{
    int fd = heap_local_ctl_fd(th.local);
    off_t seg1 = (off_t) (offsetof(struct ctl_header, segs) + sizeof(struct seg_entry));
    const struct field fields[] = {
            {"table size > fd size", seg1 + (off_t) offsetof(struct seg_entry, size), 8, 64 * MiB,
             -EBADMSG},
            {"table size 0", seg1 + (off_t) offsetof(struct seg_entry, size), 8, 0, -EBADMSG},
            {"table size > span", seg1 + (off_t) offsetof(struct seg_entry, size), 8,
             SHM_SEG_SPAN * 2, -EBADMSG},
            {"table size smaller", seg1 + (off_t) offsetof(struct seg_entry, size), 8, 8 * MiB,
             -EBADMSG},
    };

    poke_fields(fd, fields, sizeof(fields) / sizeof(fields[0]));
    th_verify(th.h);
}
END_TEST

struct fake_ctx {
    int fd; /* what the hook hands out (a dup of it), or a negative errno */
};

static int hook_fake(void *ctx, uint32_t index)
{
    struct fake_ctx *f = ctx;

    (void) index;
    if (f->fd < 0)
        return f->fd;
    return fcntl(f->fd, F_DUPFD_CLOEXEC, 3);
}

/* open_segment hands out something other than the segment. */
START_TEST(layout_hook_wrong_fd)
{
    struct fake_ctx f;
    const struct heap_hooks hooks = {.ctx = &f, .open_segment = hook_fake};
    int ctl_fd = heap_local_ctl_fd(th.local), zeros = memfd_of(16 * MiB, 0);

    f.fd = -ENOENT;
    assert_attach_fails(ctl_fd, &hooks, -ENOENT, "hook says no such segment");
    f.fd = -EACCES;
    assert_attach_fails(ctl_fd, &hooks, -EACCES, "hook refuses");
    f.fd = zeros;
    assert_attach_fails(ctl_fd, &hooks, -EBADF, "hook hands out zeros");
    f.fd = ctl_fd;
    ck_assert_int_lt(heap_attach(ctl_fd, &hooks, 7, &(struct heap *){NULL}), 0);
    f.fd = memfd_of(4096, 0);
    assert_attach_fails(ctl_fd, &hooks, -EBADMSG, "hook hands out a small fd");
    (void) close(f.fd);
    (void) close(zeros);
    /* The real one works. */
    f.fd = heap_local_segment_fd(th.local, 1);
    {
        struct heap *h = NULL;

        ck_assert_int_eq(heap_attach(ctl_fd, &hooks, 7, &h), 0);
        ck_assert_ptr_nonnull(heap_malloc(h, 100));
        th_verify(h);
        heap_detach(h);
    }
    th_verify(th.h);
}
END_TEST

START_TEST(layout_bad_config)
{
    struct heap_local *l = NULL;
    struct shm_config cfg;
    int fd;
    uint32_t index;

    th_config(&cfg, 16 * MiB);
    cfg.max_segments = 0;
    ck_assert_int_eq(heap_local_create(&cfg, SHM_PAGES_OFF, &l), -EINVAL);
    cfg.max_segments = SHM_MAX_SEGMENTS;
    ck_assert_int_eq(heap_local_create(&cfg, SHM_PAGES_OFF, &l), -EINVAL);
    th_config(&cfg, 16 * MiB);
    ck_assert_int_eq(heap_local_create(&cfg, _SHM_PAGES_MAX, &l), -EINVAL);
    ck_assert_int_eq(heap_local_create(&cfg, -1, &l), -EINVAL);
    ck_assert_int_eq(heap_local_create(&cfg, SHM_PAGES_OFF, NULL), -EINVAL);
    cfg.segment_size = 16 * MiB + 4096; /* not whole blocks */
    ck_assert_int_lt(heap_local_create(&cfg, SHM_PAGES_OFF, &l), 0);
    cfg.segment_size = 4 * SHM_SEG_SPAN; /* more than a segment can span */
    ck_assert_int_lt(heap_local_create(&cfg, SHM_PAGES_OFF, &l), 0);
    ck_assert_ptr_null(l);
    ck_assert_int_eq(heap_ctl_create(NULL, &fd), -EINVAL);
    th_config(&cfg, 16 * MiB);
    ck_assert_int_eq(heap_segment_create(-1, &cfg, 0, SHM_PAGES_OFF, &fd, &index), -EBADF);
    ck_assert_int_eq(
            heap_segment_create(heap_local_ctl_fd(th.local), NULL, 0, SHM_PAGES_OFF, &fd, &index),
            -EINVAL);
    cfg.max_segments = SHM_MAX_SEGMENTS; /* past the table: refused, not trusted */
    ck_assert_int_eq(
            heap_segment_create(heap_local_ctl_fd(th.local), &cfg, 0, SHM_PAGES_OFF, &fd, &index),
            -EINVAL);
    ck_assert_int_eq(heap_local_attach(NULL, 1, &th.h), -EINVAL);
    th_verify(th.h);
}
END_TEST

/* A new segment's size and the segment count come from the owner's own
 * config, whatever an attacher wrote into the control segment's copy. */
START_TEST(layout_segment_limits_are_the_owners)
{
    struct shm_config cfg;
    struct ctl_header *c;
    int ctl_fd, fd[3];
    uint32_t index;
    uint64_t size;

    th_config(&cfg, 16 * MiB);
    cfg.max_segments = 2;
    ck_assert_int_eq(heap_ctl_create(&cfg, &ctl_fd), 0);
    size = (uint64_t) lseek(ctl_fd, 0, SEEK_END);
    c = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, ctl_fd, 0);
    ck_assert_ptr_ne(c, MAP_FAILED);
    /* What any client could write: a huge segment, as many as fit. */
    c->config.segment_size = SHM_SEG_SPAN;
    c->config.max_segments = SHM_MAX_SEGMENTS - 1;
    for (uint32_t i = 1; i <= 2; i++) {
        ck_assert_int_eq(heap_segment_create(ctl_fd, &cfg, 0, SHM_PAGES_OFF, &fd[i], &index), 0);
        ck_assert_uint_eq(index, i);
        ck_assert_uint_eq(c->segs[i].size, 16 * MiB);
        ck_assert_uint_eq((uint64_t) lseek(fd[i], 0, SEEK_END), 16 * MiB);
    }
    ck_assert_int_eq(heap_segment_create(ctl_fd, &cfg, 0, SHM_PAGES_OFF, &fd[0], &index), -ENOSPC);
    ck_assert_uint_eq(c->nsegments, 3);
    for (uint32_t i = 1; i <= 2; i++)
        (void) close(fd[i]);
    (void) munmap(c, size);
    (void) close(ctl_fd);
}
END_TEST

/* A segment table entry smaller than the layout allows is refused at map
 * time: free's fast path relies on every mapped segment being at least
 * SHM_SEG_MIN_SIZE. */
/* A scribbler's cycle in the control segment: a recycler whose one bundle
 * links to itself, and whose object links to itself. verify ends, reports
 * it, and collects no more objects than the slabs have handed out (its
 * memory stays bounded by the heap's live objects). */
START_TEST(layout_verify_cycle_bounded)
{
    struct verify_report *rep = calloc(1, sizeof(*rep));
    unsigned cls = sizeclass_of(64);
    struct test_heap t;
    struct ctl_header *c;
    uint64_t *p, off;

    ck_assert_ptr_nonnull(rep);
    th_create(&t, NULL, SHM_PAGES_OFF);
    p = heap_malloc(t.h, 64);
    ck_assert_ptr_nonnull(p);
    off = heap_to_off(t.h, p);
    c = heap_ctl(t.h);
    p[0] = off;                        /* the bundle's list: itself, forever */
    p[1] = bundle_link(off, 65535, 1); /* the next bundle: itself */
    c->rec[cls].head.s.off = off;
    ck_assert_int_eq(heap_verify(t.h, rep), 0);
    ck_assert(!rep->consistent);
    ck_assert(!rep->counts_checked);
    ck_assert_uint_lt(rep->checked_objects, 65535);
    ck_assert_uint_ge(rep->nproblems, 2);
    c->rec[cls].head.s.off = 0; /* let the heap go cleanly */
    free(rep);
    th_destroy(&t);
}
END_TEST

START_TEST(layout_segment_too_small)
{
    struct shm_config cfg;
    struct heap *h = NULL;
    struct ctl_header *c = heap_ctl(th.h);
    uint32_t n = c->nsegments, index;
    int fd;

    th_config(&cfg, 16 * MiB);
    ck_assert_int_eq(
            heap_segment_create(heap_local_ctl_fd(th.local), &cfg, 0, SHM_PAGES_OFF, &fd, &index),
            0);
    ck_assert_uint_eq(index, n);
    c->segs[n].size = SHM_SEG_MIN_SIZE - SHM_BLOCK_SIZE;
    ck_assert_int_eq(heap_local_attach(th.local, 7, &h), -EBADMSG);
    ck_assert_ptr_null(h);
    (void) close(fd);
}
END_TEST

Suite *layout_suite(void)
{
    Suite *s = suite_create("layout");
    TCase *tc = tcase_create("attach");

    tcase_add_checked_fixture(tc, heap_setup, heap_teardown);
    tcase_add_test(tc, layout_attach_not_a_heap);
    tcase_add_test(tc, layout_ctl_header);
    tcase_add_test(tc, layout_segment_header);
    tcase_add_test(tc, layout_segment_table_lies);
    tcase_add_test(tc, layout_hook_wrong_fd);
    tcase_add_test(tc, layout_bad_config);
    tcase_add_test(tc, layout_segment_limits_are_the_owners);
    tcase_add_test(tc, layout_segment_too_small);
    tcase_add_test(tc, layout_verify_cycle_bounded);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    return s;
}
