/* Untrusted shared memory against a real shmheapd (issue 9, items 6 and 7).
 *
 * What only the daemon writes, the header page (header, config, segment
 * table: shm/layout.h), reaches clients as a sealed memfd: no client can map
 * it writable, mprotect it writable, write(2), grow or shrink it, whatever
 * fd it holds. Every segment is sealed against shrinking and growing.
 *
 * What clients can write (owner table, cache slots, recyclers, roots, and
 * the control memfd's own first page, a copy of the header page that
 * libshmheap never reads: it maps the header page over it) a scribbler
 * fills with random bytes while the daemon serves: the daemon stays up and
 * answers, `verify` reports the damage, a client that attaches afterwards
 * works, and a client that does not touch the damaged structures keeps its
 * objects and goes on.
 *
 * Figures (stderr): bytes scribbled, problems verify reported, attaches
 * that worked afterwards; the daemon must stop cleanly (no crash). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shm/layout.h"
#include "shm/meta.h"
#include "shmheap.h"
#include "tests/common/mptest.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

#ifndef F_SEAL_FUTURE_WRITE
#    define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define ATTACH_ROUNDS 30
#define SEED          UINT64_C(0x5c81bb1e5eed0009)

struct share {
    char socket_path[108];
    pid_t bystander; /* a client that does not touch the damaged structures */
    int go[2];       /* parent -> bystander: the scribbler is done */
    uint64_t scribbled;
    int hold[2]; /* exiter: exits when it reads EOF from hold[0] */
};

static uint64_t next_rand(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint64_t scribble(void *p, size_t n, uint64_t *rng)
{
    unsigned char *b = p;

    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = next_rand(rng);

        memcpy(b + i, &w, n - i < 8 ? n - i : 8);
    }
    return n;
}

/* hello, then header_page, on a connection of its own; fds[0] the control
 * segment, the last one the header page. Returns the connection. */
static int raw_hello(const char *sock, int *fds, int *nfds)
{
    int fd = daemon_connect(sock), n = 0;
    cJSON *r;

    MP_REQUIRE(fd >= 0, "connect: %s", strerror(-fd));
    r = fixture_hello(fd, fds, nfds);
    MP_REQUIRE(r && reply_is_ok(r) && *nfds >= 2 && *nfds < DAEMON_FIXTURE_MAX_FDS,
               "hello failed or sent %d fds", *nfds);
    cJSON_Delete(r);
    r = daemon_call(fd, "{\"op\":\"header_page\"}", fds + *nfds, &n);
    MP_REQUIRE(r && reply_is_ok(r) && n == 1, "header_page failed or sent %d fds", n);
    cJSON_Delete(r);
    (*nfds)++;
    return fd;
}

/* Everything a client holding the fds could try on the header page and the
 * segments' sizes is refused. Runs in the caller's process. */
static void try_read_only_parts(int ctl_fd, int hdr_fd, int seg_fd)
{
    int seals = fcntl(hdr_fd, F_GET_SEALS),
        want = F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    char proc[64];
    struct stat st;
    void *p;
    int fd2;

    MP_REQUIRE(seals >= 0 && (seals & want) == want, "header page seals %#x, want %#x", seals,
               want);
    errno = 0;
    p = mmap(NULL, SHM_HEADER_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, hdr_fd, 0);
    MP_REQUIRE(p == MAP_FAILED && errno == EPERM, "a writable mapping of the header page: %s",
               p == MAP_FAILED ? strerror(errno) : "granted");
    p = mmap(NULL, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED, hdr_fd, 0);
    MP_REQUIRE(p != MAP_FAILED, "a read-only mapping: %s", strerror(errno));
    MP_REQUIRE(((const struct ctl_header *) p)->magic == SHM_CTL_MAGIC, "no magic");
    errno = 0;
    MP_REQUIRE(mprotect(p, SHM_HEADER_PAGE, PROT_READ | PROT_WRITE) < 0 && errno == EACCES,
               "mprotect to PROT_WRITE: %s", errno ? strerror(errno) : "granted");
    (void) munmap(p, SHM_HEADER_PAGE);
    MP_REQUIRE(pwrite(hdr_fd, "x", 1, 8) < 0 && errno == EPERM, "pwrite: %s",
               errno == EPERM ? "?" : strerror(errno));
    MP_REQUIRE(ftruncate(hdr_fd, 0) < 0 && errno == EPERM, "shrinking the header page");
    MP_REQUIRE(ftruncate(hdr_fd, 2 * SHM_HEADER_PAGE) < 0 && errno == EPERM,
               "growing the header page");
    /* A fresh open file description changes nothing: the seal is the file's. */
    (void) snprintf(proc, sizeof(proc), "/proc/self/fd/%d", hdr_fd);
    fd2 = open(proc, O_RDWR | O_CLOEXEC);
    if (fd2 >= 0) {
        errno = 0;
        p = mmap(NULL, SHM_HEADER_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, 0);
        MP_REQUIRE(p == MAP_FAILED && errno == EPERM, "a reopened fd maps it writable");
        (void) close(fd2);
    }
    /* A private copy-on-write mapping is allowed, and nobody else sees it. */
    p = mmap(NULL, SHM_HEADER_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, hdr_fd, 0);
    MP_REQUIRE(p != MAP_FAILED, "a private mapping: %s", strerror(errno));
    memset(p, 0xee, SHM_HEADER_PAGE);
    (void) munmap(p, SHM_HEADER_PAGE);
    p = mmap(NULL, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED, hdr_fd, 0);
    MP_REQUIRE(p != MAP_FAILED && ((const struct ctl_header *) p)->magic == SHM_CTL_MAGIC,
               "a private copy's write reached the header page");
    (void) munmap(p, SHM_HEADER_PAGE);
    /* The control and heap segments: sealed against shrinking and growing. */
    MP_REQUIRE(fstat(ctl_fd, &st) == 0, "fstat");
    MP_REQUIRE(ftruncate(ctl_fd, st.st_size - 4096) < 0 && errno == EPERM, "shrinking the ctl");
    MP_REQUIRE(ftruncate(ctl_fd, st.st_size + 4096) < 0 && errno == EPERM, "growing the ctl");
    MP_REQUIRE(fstat(seg_fd, &st) == 0, "fstat");
    MP_REQUIRE(ftruncate(seg_fd, 0) < 0 && errno == EPERM, "shrinking a heap segment");
    MP_REQUIRE(ftruncate(seg_fd, st.st_size + 65536) < 0 && errno == EPERM,
               "growing a heap segment");
}

static void expect_alive(struct daemon_fixture *f)
{
    int st = 0;
    cJSON *r = daemon_call_once(f->socket_path, "{\"op\":\"stats\"}");

    /* The daemon is our child (daemon_fixture.h): a crash shows here. */
    if (!r || waitpid(f->pid, &st, WNOHANG) != 0) {
        char *log = daemon_log(f);

        fprintf(stderr, "---- the daemon's log ----\n%s---- end ----\n", log);
        free(log);
        f->pid = 0;
        ck_abort_msg("the daemon died or did not answer: status %#x", st);
    }
    ck_assert_msg(reply_is_ok(r), "stats: %s", reply_error_message(r));
    cJSON_Delete(r);
}

/* A client that attaches now: small and large objects, written, read back,
 * freed; then it detaches. */
static int fresh_client(void *arg, unsigned idx)
{
    const struct share *sh = arg;
    enum { N = 500 };
    void *small[N], *large[4];
    shmheap_t *h;
    int r = shmheap_attach(sh->socket_path, &h);

    MP_REQUIRE(r == 0, "attach after the scribbler: %s", shmheap_last_error());
    for (unsigned i = 0; i < N; i++) {
        small[i] = shmheap_malloc(h, 16 + (i % 40) * 16);
        MP_REQUIRE(small[i], "malloc %u", i);
        mp_fill(small[i], 16 + (i % 40) * 16, mp_tag(idx, 0, i));
    }
    for (unsigned i = 0; i < 4; i++) {
        large[i] = shmheap_malloc(h, 100000 + i * 70000);
        MP_REQUIRE(large[i], "large malloc %u", i);
        mp_fill(large[i], 100000 + i * 70000, mp_tag(idx, 1, i));
    }
    for (unsigned i = 0; i < N; i++) {
        MP_REQUIRE(mp_check(small[i], 16 + (i % 40) * 16, mp_tag(idx, 0, i)) == SIZE_MAX,
                   "object %u changed", i);
        shmheap_free(h, small[i]);
    }
    for (unsigned i = 0; i < 4; i++) {
        MP_REQUIRE(mp_check(large[i], 100000 + i * 70000, mp_tag(idx, 1, i)) == SIZE_MAX,
                   "large object %u changed", i);
        shmheap_free(h, large[i]);
    }
    shmheap_detach(h);
    return 0;
}

/* Attached before the scribbler; its objects and its own cache slot and
 * owner entry are left alone. After the scribbler: its objects are intact,
 * and it goes on allocating from its cache and in runs of blocks. */
static int bystander(void *arg, unsigned idx)
{
    struct share *sh = arg;
    enum { N = 100, SZ = 64, BIG = 1 << 20 };
    void *obj[N], *big;
    shmheap_t *h;
    char c;

    (void) idx;
    (void) close(sh->go[1]);
    MP_REQUIRE(shmheap_attach(sh->socket_path, &h) == 0, "attach: %s", shmheap_last_error());
    for (unsigned i = 0; i < N; i++) {
        obj[i] = shmheap_malloc(h, SZ);
        MP_REQUIRE(obj[i], "malloc");
        mp_fill(obj[i], SZ, mp_tag(7, 0, i));
    }
    big = shmheap_malloc(h, BIG);
    MP_REQUIRE(big, "large malloc");
    mp_fill(big, BIG, mp_tag(7, 1, 0));
    /* Freed and taken again: the cache holds them, no refill needed. */
    for (unsigned i = 0; i < N / 2; i++)
        shmheap_free(h, obj[i]);
    for (unsigned i = 0; i < N / 2; i++) {
        obj[i] = shmheap_malloc(h, SZ);
        MP_REQUIRE(obj[i], "malloc");
        mp_fill(obj[i], SZ, mp_tag(7, 0, i));
    }
    MP_REQUIRE(read(sh->go[0], &c, 1) == 1, "no go from the parent");
    for (unsigned i = 0; i < N; i++)
        MP_REQUIRE(mp_check(obj[i], SZ, mp_tag(7, 0, i)) == SIZE_MAX, "object %u changed", i);
    MP_REQUIRE(mp_check(big, BIG, mp_tag(7, 1, 0)) == SIZE_MAX, "the large object changed");
    for (unsigned round = 0; round < 20; round++) {
        for (unsigned i = 0; i < N / 2; i++)
            shmheap_free(h, obj[i]);
        for (unsigned i = 0; i < N / 2; i++) {
            obj[i] = shmheap_malloc(h, SZ);
            MP_REQUIRE(obj[i], "malloc after the scribbler");
            mp_fill(obj[i], SZ, mp_tag(7, 2 + round, i));
        }
        for (unsigned i = 0; i < N / 2; i++)
            MP_REQUIRE(mp_check(obj[i], SZ, mp_tag(7, 2 + round, i)) == SIZE_MAX, "changed");
    }
    shmheap_free(h, big);
    big = shmheap_malloc(h, BIG);
    MP_REQUIRE(big, "large malloc after the scribbler");
    mp_fill(big, BIG, mp_tag(7, 1, 1));
    MP_REQUIRE(mp_check(big, BIG, mp_tag(7, 1, 1)) == SIZE_MAX, "the large object changed");
    shmheap_free(h, big);
    for (unsigned i = 0; i < N; i++)
        shmheap_free(h, obj[i]);
    shmheap_detach(h);
    return 0;
}

/* Maps what a client can write and fills it with random bytes: recyclers,
 * roots, every owner entry and cache slot but the bystander's, and the
 * control memfd's own first page (item 7's stray write). The header page
 * it only tries. */
static int scribbler(void *arg, unsigned idx)
{
    struct share *sh = arg;
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, sock;
    uint64_t rng = SEED, n = 0;
    struct ctl_header *c;
    struct stat st;

    (void) idx;
    sock = raw_hello(sh->socket_path, fds, &nfds);
    try_read_only_parts(fds[0], fds[nfds - 1], fds[1]);
    MP_REQUIRE(fstat(fds[0], &st) == 0, "fstat");
    c = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    MP_REQUIRE(c != MAP_FAILED, "map the control segment: %s", strerror(errno));
    n += scribble(c, SHM_HEADER_PAGE, &rng);
    n += scribble(c->rec, sizeof(c->rec), &rng);
    n += scribble(c->roots, sizeof(c->roots), &rng);
    for (unsigned i = 0; i < SHM_MAX_OWNERS; i++)
        if (c->owners[i].pid != (uint32_t) sh->bystander)
            n += scribble(&c->owners[i], sizeof(c->owners[i]), &rng);
    for (unsigned i = 0; i < SHM_MAX_SLOTS; i++)
        if (c->slots[i].pid != (uint32_t) sh->bystander)
            n += scribble(&c->slots[i], sizeof(c->slots[i]), &rng);
    sh->scribbled = n;
    (void) munmap(c, (size_t) st.st_size);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
    (void) close(sock);
    return 0;
}

START_TEST(scribbler_header_read_only)
{
    struct daemon_fixture f;
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, sock;

    fixture_start(&f, NULL);
    sock = raw_hello(f.socket_path, fds, &nfds);
    try_read_only_parts(fds[0], fds[nfds - 1], fds[1]);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
    (void) close(sock);
    fixture_finish(&f);
}
END_TEST

/* With a state directory the header page is a file (files cannot be
 * sealed): clients get a read-only fd of it, which maps read-only only. */
START_TEST(scribbler_header_read_only_state_dir)
{
    char dir[] = "/dev/shm/shmheap-scribbler-XXXXXX", path[96];
    const char *args[] = {"--state-dir", dir, NULL};
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, sock, hdr;
    struct daemon_fixture f;
    void *p;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    fixture_start_args(&f, NULL, args);
    sock = raw_hello(f.socket_path, fds, &nfds);
    hdr = fds[nfds - 1];
    ck_assert_int_eq(fcntl(hdr, F_GETFL) & O_ACCMODE, O_RDONLY);
    errno = 0;
    p = mmap(NULL, SHM_HEADER_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, hdr, 0);
    ck_assert(p == MAP_FAILED && errno == EACCES);
    p = mmap(NULL, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED, hdr, 0);
    ck_assert_ptr_ne(p, MAP_FAILED);
    ck_assert_uint_eq(((const struct ctl_header *) p)->magic, SHM_CTL_MAGIC);
    ck_assert_int_eq(mprotect(p, SHM_HEADER_PAGE, PROT_READ | PROT_WRITE), -1);
    ck_assert_int_eq(errno, EACCES);
    (void) munmap(p, SHM_HEADER_PAGE);
    ck_assert_int_eq(ftruncate(hdr, 0), -1);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
    (void) close(sock);
    fixture_finish(&f);
    /* The daemon's files: the segments and the header page. */
    for (unsigned i = 0; i < 3; i++) {
        static const char *const names[] = {"control-segment", "heap-segment-1", "header-page"};

        (void) snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        ck_assert_int_eq(unlink(path), 0);
    }
    (void) snprintf(path, sizeof(path), "%s/lock", dir);
    (void) unlink(path);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* Issue 9, item 7: a client writes random words over the first 4 KiB of the
 * control segment. Through its mapping (the control segment with the header
 * page over its first page, as libshmheap maps it) the write faults; what it
 * can write, the control memfd's own first page (a copy of the header page
 * for processes that map the control segment alone), verify reports and the
 * daemon restores. */
static int stray_writer(void *arg, unsigned idx)
{
    struct share *sh = arg;
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, sock, pfd[2];
    uint64_t rng = SEED + idx, words[SHM_HEADER_PAGE / 8];
    struct stat sst;
    char *base;

    sock = raw_hello(sh->socket_path, fds, &nfds);
    MP_REQUIRE(fstat(fds[0], &sst) == 0, "fstat");
    base = mmap(NULL, (size_t) sst.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    MP_REQUIRE(base != MAP_FAILED, "map the control segment");
    MP_REQUIRE(mmap(base, SHM_HEADER_PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fds[nfds - 1], 0) ==
                       base,
               "map the header page over it");
    /* The write: the kernel copying into the page (read(2) from a pipe)
     * gets EFAULT where a store would get SIGSEGV, with no signal to
     * catch (and none for a sanitizer to take over). */
    MP_REQUIRE(pipe(pfd) == 0, "pipe");
    scribble(words, sizeof(words), &rng);
    MP_REQUIRE(write(pfd[1], words, sizeof(words)) == (ssize_t) sizeof(words), "write");
    errno = 0;
    MP_REQUIRE(read(pfd[0], base, sizeof(words)) < 0 && errno == EFAULT,
               "a write to the header page in a client's mapping did not fault: %s",
               errno ? strerror(errno) : "it was written");
    (void) close(pfd[0]);
    (void) close(pfd[1]);
    MP_REQUIRE(((struct ctl_header *) base)->magic == SHM_CTL_MAGIC, "the header changed");
    scribble(words, sizeof(words), &rng);
    MP_REQUIRE(pwrite(fds[0], words, sizeof(words), 0) == (ssize_t) sizeof(words),
               "write the control memfd's first page");
    sh->scribbled = sizeof(words);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
    (void) close(sock);
    return 0;
}

START_TEST(scribbler_first_page)
{
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    struct daemon_fixture f;
    unsigned attached = 0;
    const cJSON *p;
    cJSON *r;

    fixture_start(&f, NULL);
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", f.socket_path);
    mp_wait_ok(mp_fork(stray_writer, sh, 0), "the stray writer");
    for (unsigned i = 0; i < ATTACH_ROUNDS; i++) {
        int st = mp_wait(mp_fork(fresh_client, sh, 10 + i));

        attached += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    expect_alive(&f);
    r = fixture_op(&f, "{\"op\":\"verify\"}");
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "consistent")));
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(r, "problems_total")->valuedouble, 1);
    p = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "problems"), 0);
    ck_assert_ptr_nonnull(strstr(p->valuestring, "first page"));
    fprintf(stderr,
            "scribbler: 4 KiB of random words over the control segment's first page: "
            "attaches afterwards %u of %u, verify: %s\n",
            attached, ATTACH_ROUNDS, p->valuestring);
    cJSON_Delete(r);
    /* Restored from the header page: the next verify finds nothing. */
    r = fixture_op(&f, "{\"op\":\"verify\"}");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "consistent")));
    cJSON_Delete(r);
    ck_assert_uint_eq(attached, ATTACH_ROUNDS);
    fixture_stop(&f);
    mp_shared_free(sh, sizeof(*sh));
}
END_TEST

START_TEST(scribbler_damage)
{
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    struct daemon_fixture f;
    unsigned attached = 0;
    double problems;
    pid_t by, s;
    cJSON *r;

    fixture_start(&f, NULL);
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", f.socket_path);
    ck_assert_int_eq(pipe(sh->go), 0);
    by = mp_fork(bystander, sh, 0);
    sh->bystander = by;
    (void) close(sh->go[0]);
    /* The bystander has attached and allocated once the daemon lists it
     * with its bytes; wait for that through the clients op. */
    for (int tries = 0;; tries++) {
        bool seen = false;
        const cJSON *cl;

        r = fixture_op(&f, "{\"op\":\"clients\"}");
        cJSON_ArrayForEach(cl, cJSON_GetObjectItemCaseSensitive(r, "clients"))
        {
            const cJSON *pid = cJSON_GetObjectItemCaseSensitive(cl, "pid");
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(cl, "bytes_allocated");

            seen |= cJSON_IsNumber(pid) && (pid_t) pid->valuedouble == by && cJSON_IsNumber(b) &&
                    b->valuedouble >= (1 << 20);
        }
        cJSON_Delete(r);
        if (seen)
            break;
        ck_assert_msg(tries < 2000, "the bystander never allocated");
        mp_sleep_ms(5);
    }
    s = mp_fork(scribbler, sh, 1);
    mp_wait_ok(s, "the scribbler");
    expect_alive(&f);
    /* A trim walks every slot and recycler; the daemon survives it. */
    r = fixture_op(&f, "{\"op\":\"trim\",\"wait_ms\":0}");
    ck_assert_ptr_nonnull(r);
    cJSON_Delete(r);
    expect_alive(&f);
    r = fixture_op(&f, "{\"op\":\"verify\"}");
    ck_assert_msg(reply_is_ok(r), "verify: %s", reply_error_message(r));
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "consistent")));
    problems = cJSON_GetObjectItemCaseSensitive(r, "problems_total")->valuedouble;
    ck_assert(problems >= 1);
    fprintf(stderr, "scribbler: the first problems verify reports:\n");
    {
        const cJSON *p;
        int k = 0;

        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(r, "problems")) if (k++ < 4)
                fprintf(stderr, "  %s\n", p->valuestring);
    }
    cJSON_Delete(r);
    for (unsigned i = 0; i < ATTACH_ROUNDS; i++) {
        int st = mp_wait(mp_fork(fresh_client, sh, 10 + i));

        attached += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    ck_assert_int_eq(write(sh->go[1], "g", 1), 1);
    (void) close(sh->go[1]);
    mp_wait_ok(by, "the bystander");
    expect_alive(&f);
    fprintf(stderr,
            "scribbler: %llu bytes scribbled (seed %#llx), daemon crashes 0, verify problems "
            "%.0f, attaches afterwards %u of %u\n",
            (unsigned long long) sh->scribbled, (unsigned long long) SEED, problems, attached,
            ATTACH_ROUNDS);
    ck_assert_uint_eq(attached, ATTACH_ROUNDS);
    /* Still serving, and it stops cleanly (status 0): it never crashed. */
    fixture_stop(&f);
    mp_shared_free(sh, sizeof(*sh));
}
END_TEST

/* Waits until the daemon lists client pid `by` with a large object. */
static void wait_allocated(struct daemon_fixture *f, pid_t by)
{
    for (int tries = 0;; tries++) {
        bool seen = false;
        const cJSON *cl;
        cJSON *r = fixture_op(f, "{\"op\":\"clients\"}");

        cJSON_ArrayForEach(cl, cJSON_GetObjectItemCaseSensitive(r, "clients"))
        {
            const cJSON *pid = cJSON_GetObjectItemCaseSensitive(cl, "pid");
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(cl, "bytes_allocated");

            seen |= cJSON_IsNumber(pid) && (pid_t) pid->valuedouble == by && cJSON_IsNumber(b) &&
                    b->valuedouble >= (1 << 20);
        }
        cJSON_Delete(r);
        if (seen)
            return;
        ck_assert_msg(tries < 2000, "the bystander never allocated");
        mp_sleep_ms(5);
    }
}

/* verify answers, finds the heap inconsistent, and one of its problems
 * contains `what`. */
static void expect_verify_says(struct daemon_fixture *f, const char *what)
{
    cJSON *r = fixture_op(f, "{\"op\":\"verify\"}");
    const cJSON *p;
    bool found = false;

    ck_assert_msg(reply_is_ok(r), "verify: %s", reply_error_message(r));
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "consistent")));
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(r, "problems"))
    {
        found |= cJSON_IsString(p) && strstr(p->valuestring, what);
    }
    if (!found) {
        char *s = cJSON_Print(r);

        fprintf(stderr, "verify said:\n%s\n", s);
        free(s);
    }
    cJSON_Delete(r);
    ck_assert_msg(found, "verify did not report \"%s\"", what);
}

/* A pid that no process has: a child that has exited and been reaped. */
static pid_t dead_pid(void)
{
    pid_t p = fork();

    ck_assert_int_ge(p, 0);
    if (p == 0)
        _exit(0);
    ck_assert_int_eq(waitpid(p, NULL, 0), p);
    return p;
}

/* Heap segment 1 mapped writable by a raw attachment (hello, no library):
 * what a scribbling client can reach. */
struct raw_segment {
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds, sock;
    struct seg_header *seg;
    size_t size;
};

static void raw_segment_map(struct daemon_fixture *f, struct raw_segment *rs)
{
    struct stat st;

    rs->nfds = 0;
    rs->sock = raw_hello(f->socket_path, rs->fds, &rs->nfds);
    ck_assert_int_eq(fstat(rs->fds[1], &st), 0);
    rs->size = (size_t) st.st_size;
    rs->seg = mmap(NULL, rs->size, PROT_READ | PROT_WRITE, MAP_SHARED, rs->fds[1], 0);
    ck_assert_msg(rs->seg != MAP_FAILED, "map segment 1: %s", strerror(errno));
}

static void raw_segment_unmap(struct raw_segment *rs)
{
    (void) munmap(rs->seg, rs->size);
    for (int i = 0; i < rs->nfds; i++)
        (void) close(rs->fds[i]);
    (void) close(rs->sock);
}

enum lock_scribble { LOCK_DEAD_TID, LOCK_GARBAGE, LOCK_LIVE_TID };

/* Segment 1's lock, mapped as any client can map it, gets a word no holder
 * wrote: a thread that does not exist; garbage (the waiters and owner-died
 * bits over a TID beyond pid_max); or this (live, never locking) process's pid. The daemon keeps
 * answering stats, a trim finishes, verify reports what it found, and the
 * bystander (held back so that the daemon's lock meets the word first)
 * then allocates. */
static void lock_scribble(enum lock_scribble how, const char *what)
{
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    struct raw_segment rs;
    struct daemon_fixture f;
    struct seg_header *seg;
    uint32_t written = 0;
    pid_t by;
    cJSON *r;

    fixture_start(&f, NULL);
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", f.socket_path);
    ck_assert_int_eq(pipe(sh->go), 0);
    by = mp_fork(bystander, sh, 0);
    sh->bystander = by;
    (void) close(sh->go[0]);
    wait_allocated(&f, by);
    raw_segment_map(&f, &rs);
    seg = rs.seg;
    switch (how) {
    case LOCK_DEAD_TID:
        written = (uint32_t) dead_pid();
        break;
    case LOCK_GARBAGE:
        written = FUTEX_WAITERS | FUTEX_OWNER_DIED | 0x3ffffffe;
        break;
    case LOCK_LIVE_TID:
        written = (uint32_t) getpid();
        break;
    }
    __atomic_store_n(&seg->lock.word, written, __ATOMIC_RELAXED);
    expect_alive(&f);
    r = fixture_op(&f, "{\"op\":\"trim\",\"wait_ms\":0}");
    ck_assert_ptr_nonnull(r); /* an answer: ok, or an error saying the lock stayed taken */
    cJSON_Delete(r);
    expect_alive(&f);
    /* A dead TID over a free lock with no holder record is what a locker
     * killed right after the kernel gave it the word leaves (lock.c): it
     * is recovered like that, and the log says so; verify has nothing to
     * report. The others name what no holder leaves. */
    if (what)
        expect_verify_says(&f, what);
    ck_assert(daemon_log_wait(&f, "segment 1: its lock", 5000));
    if (how == LOCK_LIVE_TID) /* the "holder" lets go */
        __atomic_store_n(&seg->lock.word, 0, __ATOMIC_RELEASE);
    else /* repaired, not just left */
        ck_assert_uint_ne(__atomic_load_n(&seg->lock.word, __ATOMIC_RELAXED), written);
    ck_assert_int_eq(write(sh->go[1], "g", 1), 1);
    (void) close(sh->go[1]);
    mp_wait_ok(by, "the bystander");
    mp_wait_ok(mp_fork(fresh_client, sh, 3), "a client attached afterwards");
    expect_alive(&f);
    raw_segment_unmap(&rs);
    fixture_stop(&f);
    mp_shared_free(sh, sizeof(*sh));
}

START_TEST(scribbler_lock_dead_tid)
{
    lock_scribble(LOCK_DEAD_TID, NULL);
}
END_TEST

START_TEST(scribbler_lock_garbage)
{
    lock_scribble(LOCK_GARBAGE, "which does not exist");
}
END_TEST

START_TEST(scribbler_lock_live_tid)
{
    lock_scribble(LOCK_LIVE_TID, "lock held over");
}
END_TEST

/* Starts the bystander (allocated and waiting) and then the exiter `fn`
 * (held on sh->hold until the test lets it go) against f's daemon. */
static void start_bystander_and_exiter(struct daemon_fixture *f,
                                       struct share *sh,
                                       int (*fn)(void *arg, unsigned idx),
                                       pid_t *ret_by,
                                       pid_t *ret_x)
{
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", f->socket_path);
    ck_assert_int_eq(pipe(sh->go), 0);
    *ret_by = mp_fork(bystander, sh, 0);
    sh->bystander = *ret_by;
    wait_allocated(f, *ret_by);
    ck_assert_int_eq(pipe(sh->hold), 0); /* after the bystander's fork: only the exiter's */
    *ret_x = mp_fork(fn, sh, 1);
    (void) close(sh->go[0]);
    (void) close(sh->hold[0]);
}

/* Attaches, allocates nothing, and exits without detaching when its pipe
 * closes: the daemon then reclaims what its owner entry tags (nothing). */
static int exiter(void *arg, unsigned idx)
{
    const struct share *sh = arg;
    shmheap_t *h;
    char c;

    (void) idx;
    (void) close(sh->go[1]);
    (void) close(sh->hold[1]);
    MP_REQUIRE(shmheap_attach(sh->socket_path, &h) == 0, "attach: %s", shmheap_last_error());
    (void) read(sh->hold[0], &c, 1);
    _exit(0);
}

/* The owner entry of process pid in the mapped control segment, or NULL. */
static struct owner_entry *entry_of(struct ctl_header *c, pid_t pid)
{
    for (unsigned i = 0; i < SHM_MAX_OWNERS; i++)
        if (__atomic_load_n(&c->owners[i].pid, __ATOMIC_RELAXED) == (uint32_t) pid &&
            __atomic_load_n(&c->owners[i].state, __ATOMIC_ACQUIRE) == OWNER_LIVE)
            return &c->owners[i];
    return NULL;
}

/* The bystander's live owner entry is written so that the daemon's sweep
 * of another client, which exits, would take it: its client id becomes
 * the exiting client's, or its state SWEEPING (a sweep cut short, which
 * any sweep used to take over). The daemon matches entries by the pid it
 * knows from the exiting client's credentials: it frees none of the
 * bystander's objects (the log says 0 objects freed), and the bystander
 * finds them intact and goes on. */
static void owner_scribble(bool sweeping)
{
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, sock;
    struct owner_entry *mine, *its;
    struct daemon_fixture f;
    struct ctl_header *c;
    char needle[64], *log;
    struct stat st;
    pid_t by, x;

    fixture_start(&f, NULL);
    start_bystander_and_exiter(&f, sh, exiter, &by, &x);
    sock = raw_hello(f.socket_path, fds, &nfds);
    ck_assert_int_eq(fstat(fds[0], &st), 0);
    c = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    ck_assert_msg(c != MAP_FAILED, "map the control segment: %s", strerror(errno));
    for (int tries = 0; !(its = entry_of(c, x)); tries++) {
        ck_assert_msg(tries < 2000, "the exiting client never attached");
        mp_sleep_ms(5);
    }
    mine = entry_of(c, by);
    ck_assert_ptr_nonnull(mine);
    if (sweeping)
        __atomic_store_n(&mine->state, OWNER_SWEEPING, __ATOMIC_RELEASE);
    else
        __atomic_store_n(&mine->client_id, its->client_id, __ATOMIC_RELEASE);
    (void) close(sh->hold[1]); /* the exiting client exits */
    mp_wait_ok(x, "the exiting client");
    (void) snprintf(needle, sizeof(needle), "(pid %d) exited: ", (int) x);
    ck_assert(daemon_log_wait(&f, needle, 10000));
    log = daemon_log(&f);
    ck_assert_msg(strstr(strstr(log, needle), "freed 0 objects (0 bytes)"),
                  "the sweep of the exited client freed the bystander's objects:\n%s", log);
    free(log);
    expect_alive(&f);
    if (!sweeping) /* the entry is the bystander's again, for its detach */
        __atomic_store_n(&mine->client_id, 0, __ATOMIC_RELAXED);
    ck_assert_int_eq(write(sh->go[1], "g", 1), 1);
    (void) close(sh->go[1]);
    mp_wait_ok(by, "the bystander");
    expect_alive(&f);
    (void) munmap(c, (size_t) st.st_size);
    for (int i = 0; i < nfds; i++)
        (void) close(fds[i]);
    (void) close(sock);
    fixture_stop(&f);
    mp_shared_free(sh, sizeof(*sh));
}

START_TEST(scribbler_owner_client_id)
{
    owner_scribble(false);
}
END_TEST

START_TEST(scribbler_owner_sweeping)
{
    owner_scribble(true);
}
END_TEST

/* The last block of segment 1 (free: nothing lives there) gets a slab
 * head word of a class past the table, and the segment's punch record
 * names it, with a puncher that does not exist. The next trim or verify
 * reaps the dead puncher's punch (shm/punch.c): it used to read the
 * class's geometry from past the table (an assert abort in shmheapd).
 * Now the word is checked first: the daemon answers, verify reports the
 * block, and clients attach and allocate. */
START_TEST(scribbler_slab_meta)
{
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    struct raw_segment rs;
    struct daemon_fixture f;
    struct seg_header *seg;
    uint64_t *meta;
    uint32_t last;
    char what[64];

    fixture_start(&f, NULL);
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", f.socket_path);
    raw_segment_map(&f, &rs);
    seg = rs.seg;
    meta = (uint64_t *) ((char *) seg + seg->meta_off);
    last = seg->nblocks - 1;
    ck_assert_uint_eq(meta_state(meta[last]), BLK_FREE);
    __atomic_store_n(&meta[last], meta_make(BLK_SLAB, 200, 3, 5, RUN_LARGE), __ATOMIC_RELAXED);
    seg->punch_block = last;
    seg->punch_phase = PUNCH_RESTORING;
    __atomic_store_n(&seg->punch_pid, (uint32_t) dead_pid(), __ATOMIC_RELEASE);
    expect_alive(&f);
    cJSON_Delete(fixture_op(&f, "{\"op\":\"trim\",\"wait_ms\":0}"));
    expect_alive(&f);
    (void) snprintf(what, sizeof(what), "block %u: bad class 200", last);
    expect_verify_says(&f, what);
    for (unsigned i = 0; i < 3; i++)
        mp_wait_ok(mp_fork(fresh_client, sh, 20 + i), "a client attached afterwards");
    expect_alive(&f);
    raw_segment_unmap(&rs);
    fixture_stop(&f);
    mp_shared_free(sh, sizeof(*sh));
}
END_TEST

/* Segment 1's journal says a dead holder was returning a chain whose
 * handoff word is in the header page (read-only in every mapping), and
 * its lock word names a thread that does not exist: the daemon's next
 * lock of it recovers and replays the journal. Before, the replay stored
 * into the header page (SIGSEGV in shmheapd), and it read each journal
 * field again after checking it. Now each is read once and checked: the
 * daemon answers, logs the recovery, clients attach and allocate. */
START_TEST(scribbler_journal)
{
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    struct raw_segment rs;
    struct daemon_fixture f;
    struct seg_header *seg;

    fixture_start(&f, NULL);
    (void) snprintf(sh->socket_path, sizeof(sh->socket_path), "%s", f.socket_path);
    raw_segment_map(&f, &rs);
    seg = rs.seg;
    seg->journal.chain = (UINT64_C(1) << SHM_SEG_SHIFT) | 0x12340;
    seg->journal.slot_word = 64; /* in the header page */
    seg->journal.block = seg->first_block;
    seg->journal.n = UINT32_MAX;
    __atomic_store_n(&seg->journal.op, JOP_RETURN, __ATOMIC_RELEASE);
    __atomic_store_n(&seg->lock.word, (uint32_t) dead_pid(), __ATOMIC_RELEASE);
    expect_alive(&f);
    cJSON_Delete(fixture_op(&f, "{\"op\":\"trim\",\"wait_ms\":0}"));
    expect_alive(&f);
    /* Taken over and replayed (a dead TID over a free lock is what a
     * killed locker leaves: the log says it, verify has nothing to add). */
    ck_assert(daemon_log_wait(&f, "segment 1: its lock's holder was gone", 5000));
    ck_assert_uint_ne(__atomic_load_n(&seg->journal.op, __ATOMIC_ACQUIRE), JOP_RETURN);
    for (unsigned i = 0; i < 3; i++)
        mp_wait_ok(mp_fork(fresh_client, sh, 30 + i), "a client attached afterwards");
    expect_alive(&f);
    raw_segment_unmap(&rs);
    fixture_stop(&f);
    mp_shared_free(sh, sizeof(*sh));
}
END_TEST

/* Attaches, allocates (its cache slot is claimed), and exits without
 * detaching, its objects in its cache, when its pipe closes: the daemon's
 * reclaim of it takes every lock (seg_recover_all). */
static int slot_exiter(void *arg, unsigned idx)
{
    const struct share *sh = arg;
    shmheap_t *h;
    char c;

    (void) idx;
    (void) close(sh->go[1]);
    (void) close(sh->hold[1]);
    MP_REQUIRE(shmheap_attach(sh->socket_path, &h) == 0, "attach: %s", shmheap_last_error());
    for (unsigned i = 0; i < 50; i++)
        MP_REQUIRE(shmheap_malloc(h, 48), "malloc %u", i);
    (void) read(sh->hold[0], &c, 1);
    _exit(0);
}

/* Garbage over every byte that was glibc's mutex: the control segment's
 * lock word and what were its kind, owner and robust-list links (now
 * padding), and segment 1's lock word and the padding after it. A client
 * that then dies holding a cache slot makes the daemon take both locks
 * (its reclaim): it stays up, answers stats, repairs both words, verify
 * and the log report them, and clients attach and allocate afterwards. */
START_TEST(scribbler_lock_words_garbage)
{
    const uint32_t ctl_word = FUTEX_WAITERS | 0x3ffffffd,
                   seg_word = FUTEX_WAITERS | FUTEX_OWNER_DIED | 0x3ffffffe;
    struct share *sh = mp_shared_alloc(sizeof(*sh));
    struct raw_segment rs;
    struct daemon_fixture f;
    struct ctl_header *c;
    char needle[64];
    struct stat st;
    pid_t by, x;

    fixture_start(&f, NULL);
    start_bystander_and_exiter(&f, sh, slot_exiter, &by, &x);
    raw_segment_map(&f, &rs);
    ck_assert_int_eq(fstat(rs.fds[0], &st), 0);
    c = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, rs.fds[0], 0);
    ck_assert_msg(c != MAP_FAILED, "map the control segment: %s", strerror(errno));
    for (int tries = 0; !entry_of(c, x); tries++) {
        ck_assert_msg(tries < 2000, "the exiting client never attached");
        mp_sleep_ms(5);
    }
    mp_sleep_ms(50); /* its mallocs done (it only waits on its pipe then) */
    memset(c->pad_lock, 0xa5, sizeof(c->pad_lock));
    __atomic_store_n(&c->lock.holder, UINT32_MAX, __ATOMIC_RELAXED);
    __atomic_store_n(&c->lock.word, ctl_word, __ATOMIC_RELEASE);
    __atomic_store_n(&rs.seg->lock.holder, UINT32_MAX, __ATOMIC_RELAXED);
    __atomic_store_n(&rs.seg->lock.word, seg_word, __ATOMIC_RELEASE);
    (void) close(sh->hold[1]); /* the exiting client exits */
    mp_wait_ok(x, "the exiting client");
    (void) snprintf(needle, sizeof(needle), "(pid %d) exited: ", (int) x);
    ck_assert(daemon_log_wait(&f, needle, 10000));
    expect_alive(&f);
    ck_assert(daemon_log_wait(&f, "its lock word named thread", 5000));
    expect_verify_says(&f, "which does not exist");
    ck_assert_uint_ne(__atomic_load_n(&c->lock.word, __ATOMIC_ACQUIRE), ctl_word);
    ck_assert_uint_ne(__atomic_load_n(&rs.seg->lock.word, __ATOMIC_ACQUIRE), seg_word);
    ck_assert_int_eq(write(sh->go[1], "g", 1), 1);
    (void) close(sh->go[1]);
    mp_wait_ok(by, "the bystander");
    mp_wait_ok(mp_fork(fresh_client, sh, 3), "a client attached afterwards");
    expect_alive(&f);
    (void) munmap(c, (size_t) st.st_size);
    raw_segment_unmap(&rs);
    fixture_stop(&f);
    mp_shared_free(sh, sizeof(*sh));
}
END_TEST

Suite *scribbler_suite(void)
{
    Suite *s = suite_create("scribbler");
    TCase *tc = tcase_create("untrusted");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, scribbler_header_read_only);
    tcase_add_test(tc, scribbler_header_read_only_state_dir);
    tcase_add_test(tc, scribbler_first_page);
    tcase_add_test(tc, scribbler_damage);
    tcase_add_test(tc, scribbler_lock_dead_tid);
    tcase_add_test(tc, scribbler_lock_garbage);
    tcase_add_test(tc, scribbler_lock_live_tid);
    tcase_add_test(tc, scribbler_lock_words_garbage);
    tcase_add_test(tc, scribbler_owner_client_id);
    tcase_add_test(tc, scribbler_owner_sweeping);
    tcase_add_test(tc, scribbler_slab_meta);
    tcase_add_test(tc, scribbler_journal);
    suite_add_tcase(s, tc);
    return s;
}
