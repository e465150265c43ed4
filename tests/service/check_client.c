/* libshmheap against a real shmheapd (started per test by the fixture in
 * daemon_fixture.h): attaching, the API across processes, the fork rule,
 * thread exit, a heap that fills and one that grows, clients killed in the
 * middle of allocating, trim with idle, busy and sleeping threads, and
 * config changes reaching running clients. Every test ends with the
 * daemon's `verify` op, which must find the heap consistent.
 *
 * Children report failure through their exit status (MP_REQUIRE in
 * tests/common/mptest.h), never with ck_assert. Sizes shrink under
 * SHMHEAP_TEST_SCALE=small; SHMHEAP_SOAK=1 makes the kill storm longer. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shmheap.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

/* Every test but the no-daemon one runs its own daemon (fixture.h's
 * FIXTURE_SMALL config). */
static struct daemon_fixture fx;

static void start(const char *extra_json)
{
    fixture_start(&fx, extra_json);
}

static uint64_t ju64(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

    return cJSON_IsNumber(v) ? (uint64_t) v->valuedouble : 0;
}

/* The daemon's verify op must find the heap consistent. */
static void verify_ok(void)
{
    fixture_verify(&fx);
}

static void finish(void)
{
    fixture_finish(&fx);
}

static shmheap_t *attach_ok(void)
{
    return fixture_attach(&fx);
}

/* In a child: attach or exit failing. */
static shmheap_t *child_attach(void)
{
    shmheap_t *h = NULL;
    int r = shmheap_attach(fx.socket_path, &h);

    MP_REQUIRE(r == 0, "attach: %s: %s", shmheap_strerror(r), shmheap_last_error());
    return h;
}

/* True if the daemon's `clients` op lists pid. */
static bool daemon_lists_pid(pid_t pid)
{
    cJSON *r = fixture_op(&fx, "{\"op\":\"clients\"}"), *c;
    bool found = false;

    ck_assert(reply_is_ok(r));
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(r, "clients"))
    {
        if (ju64(c, "pid") == (uint64_t) pid)
            found = true;
    }
    cJSON_Delete(r);
    return found;
}

/* Waits up to timeout_ms for cond(arg); returns whether it came true. */
static bool wait_until(bool (*cond)(void *arg), void *arg, unsigned timeout_ms)
{
    for (unsigned waited = 0;; waited += 5) {
        if (cond(arg))
            return true;
        if (waited >= timeout_ms)
            return false;
        mp_sleep_ms(5);
    }
}

/* Waits for every child; when one fails, kills the others (they may be
 * waiting for it at a barrier) and fails the test. */
static void wait_all(pid_t *pids, unsigned n, const char *what)
{
    unsigned left = n;
    char buf[64];

    while (left) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);

        if (pid < 0 && errno == EINTR)
            continue;
        ck_assert_msg(pid > 0, "waitpid: %s", strerror(errno));
        for (unsigned i = 0; i < n; i++) {
            if (pids[i] != pid)
                continue;
            pids[i] = 0;
            left--;
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                for (unsigned k = 0; k < n; k++)
                    if (pids[k] > 0)
                        (void) kill(pids[k], SIGKILL);
                ck_abort_msg("%s %u (pid %d): %s", what, i, (int) pid,
                             mp_status_str(status, buf, sizeof(buf)));
            }
        }
    }
}

static bool pid_gone(void *arg)
{
    return !daemon_lists_pid(*(pid_t *) arg);
}

struct arena_probe {
    shmheap_t *h;
    shmheap_off_t arena;
};

static bool arena_gone(void *arg)
{
    struct arena_probe *a = arg;
    struct shmheap_arena_stats st;

    return shmheap_arena_stats(a->h, a->arena, &st) == -SHMHEAP_ENOENT;
}

static uint64_t cached_total(shmheap_t *h)
{
    struct shmheap_stats st;
    uint64_t n = 0;

    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    for (uint32_t i = 0; i < st.nclasses; i++)
        n += st.classes[i].cached;
    return n;
}

static uint64_t cached_of(shmheap_t *h, uint32_t object_size)
{
    struct shmheap_stats st;

    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    for (uint32_t i = 0; i < st.nclasses; i++)
        if (st.classes[i].object_size == object_size)
            return st.classes[i].cached;
    ck_abort_msg("no size class of %u bytes", object_size);
    return 0;
}

static unsigned open_fds(void)
{
    unsigned n = 0;

    for (int fd = 0; fd < 4096; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            n++;
    return n;
}

static uint64_t committed(shmheap_t *h)
{
    struct shmheap_stats st;

    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    return st.bytes_committed;
}

/* ---- attaching ---- */

START_TEST(client_attach_basic)
{
    struct shmheap_stats st;
    unsigned fds;
    shmheap_t *h;
    char *p, *q;

    start(NULL);
    fds = open_fds();
    h = attach_ok();
    ck_assert_str_eq(shmheap_last_error(), "");

    p = shmheap_malloc(h, 100);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq((uintptr_t) p % 16, 0);
    ck_assert_uint_ge(shmheap_usable_size(h, p), 100);
    memset(p, 0xab, 100);
    ck_assert_ptr_eq(shmheap_from_off(h, shmheap_to_off(h, p)), p);
    ck_assert_uint_ne(shmheap_to_off(h, p), SHMHEAP_OFF_NULL);
    ck_assert_uint_eq(shmheap_to_off(h, &st), SHMHEAP_OFF_NULL); /* not in the heap */
    ck_assert_ptr_null(shmheap_from_off(h, SHMHEAP_OFF_NULL));

    q = shmheap_realloc(h, p, 5000);
    ck_assert_ptr_nonnull(q);
    for (int i = 0; i < 100; i++)
        ck_assert_uint_eq((unsigned char) q[i], 0xab);
    shmheap_free(h, q);

    p = shmheap_calloc(h, 100, 10);
    ck_assert_ptr_nonnull(p);
    for (int i = 0; i < 1000; i++)
        ck_assert_int_eq(p[i], 0);
    shmheap_free(h, p);
    errno = 0;
    ck_assert_ptr_null(shmheap_calloc(h, SIZE_MAX / 2, 4));
    ck_assert_int_eq(errno, ENOMEM);

    p = shmheap_aligned_alloc(h, 64, 200);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq((uintptr_t) p % 64, 0);
    shmheap_free(h, p);
    errno = 0;
    ck_assert_ptr_null(shmheap_aligned_alloc(h, 48, 200));
    ck_assert_int_eq(errno, EINVAL);

    p = shmheap_malloc(h, 1 << 20); /* a large object: a run of blocks */
    ck_assert_ptr_nonnull(p);
    memset(p, 1, 1 << 20);
    ck_assert_uint_ge(shmheap_usable_size(h, p), 1 << 20);
    shmheap_free(h, p);

    shmheap_free(h, NULL);
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    ck_assert_uint_ge(st.allocs, 5);
    ck_assert_uint_ge(st.nsegments, 1);
    ck_assert_uint_eq(st.segments[0].page_size, 4096);
    ck_assert_uint_ge(st.bytes_reserved, UINT64_C(64) << 20);
    ck_assert_uint_ge(st.thread_caches, 1);
    ck_assert_int_eq(st.process_bytes_in_use, 0);
    ck_assert(daemon_lists_pid(getpid()));
    shmheap_detach(h);
    ck_assert_uint_eq(open_fds(), fds); /* the connection and every segment fd closed */
    /* Attach and detach again and again: nothing piles up. */
    for (unsigned i = 0; i < 50; i++) {
        h = attach_ok();
        shmheap_free(h, shmheap_malloc(h, 16));
        shmheap_detach(h);
    }
    ck_assert_uint_eq(open_fds(), fds);
    ck_assert(!daemon_lists_pid(getpid()));
    finish();
}
END_TEST

START_TEST(client_daemon_goes_away)
{
    shmheap_t *h;
    void *p;
    int r;

    start("\"reconnect_wait_ms\": 200");
    h = attach_ok();
    p = shmheap_malloc(h, 100);
    ck_assert_ptr_nonnull(p);
    daemon_stop(&fx);
    /* The mapped heap stays usable; what needs the daemon waits
     * reconnect_wait_ms for a new one, then fails cleanly. */
    shmheap_free(h, p);
    p = shmheap_malloc(h, 100);
    ck_assert_ptr_nonnull(p);
    memset(p, 1, 100);
    r = shmheap_trim(h, 0);
    ck_assert_int_eq(r, -SHMHEAP_ECONNECT);
    ck_assert_ptr_nonnull(strstr(shmheap_last_error(), fx.socket_path));
    errno = 0;
    ck_assert_ptr_null(shmheap_malloc(h, 200 << 20)); /* would need a new segment */
    ck_assert_int_eq(errno, ENOMEM);
    shmheap_free(h, p);
    shmheap_detach(h);
}
END_TEST

START_TEST(client_attach_no_daemon)
{
    char path[128], env_path[128];
    shmheap_t *h = (shmheap_t *) &h;
    int r;

    snprintf(path, sizeof(path), "/tmp/shmheap-test-nobody-%d.sock", (int) getpid());
    r = shmheap_attach(path, &h);
    ck_assert_int_eq(r, -SHMHEAP_ECONNECT);
    ck_assert_ptr_eq(h, (shmheap_t *) &h); /* untouched on failure */
    ck_assert_msg(strstr(shmheap_last_error(), path) != NULL, "last error '%s' lacks the path",
                  shmheap_last_error());
    ck_assert_str_eq(shmheap_strerror(r), shmheap_strerror(SHMHEAP_ECONNECT));

    /* NULL: $SHMHEAP_SOCKET wins over the built-in paths. */
    snprintf(env_path, sizeof(env_path), "/tmp/shmheap-test-env-%d.sock", (int) getpid());
    setenv("SHMHEAP_SOCKET", env_path, 1);
    ck_assert_int_eq(shmheap_attach(NULL, &h), -SHMHEAP_ECONNECT);
    ck_assert_ptr_nonnull(strstr(shmheap_last_error(), env_path));
    unsetenv("SHMHEAP_SOCKET");
    /* As root, the system path. */
    if (geteuid() == 0 && access("/run/shmheap/shmheap.sock", F_OK) != 0) {
        ck_assert_int_eq(shmheap_attach(NULL, &h), -SHMHEAP_ECONNECT);
        ck_assert_ptr_nonnull(strstr(shmheap_last_error(), "/run/shmheap/shmheap.sock"));
    }
    ck_assert_int_eq(shmheap_attach(path, NULL), -SHMHEAP_EINVAL);
    for (int c = 0; c < _SHMHEAP_EMAX; c++)
        ck_assert_str_ne(shmheap_strerror(-c), "unknown error");
    ck_assert_str_eq(shmheap_strerror(-1000), "unknown error");
}
END_TEST

/* ---- a daemon that answers hello wrongly ---- */

/* One fake daemon per case: accepts one connection, reads the hello line,
 * answers `reply` (NULL: hangs up) with `fd` attached if >= 0. */
struct fake {
    int listen_fd;
    const char *reply;
    int fd;
};

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    char buf[4096], cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov;
    struct msghdr msg = {0};
    size_t len = 0;
    int c = accept4(f->listen_fd, NULL, NULL, SOCK_CLOEXEC);

    if (c < 0)
        return NULL;
    while (len < sizeof(buf) && !memchr(buf, '\n', len)) {
        ssize_t n = read(c, buf + len, sizeof(buf) - len);

        if (n <= 0)
            break;
        len += (size_t) n;
    }
    if (f->reply) {
        iov.iov_base = (void *) f->reply;
        iov.iov_len = strlen(f->reply);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (f->fd >= 0) {
            struct cmsghdr *cm;

            msg.msg_control = cbuf;
            msg.msg_controllen = sizeof(cbuf);
            cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &f->fd, sizeof(int));
        }
        (void) sendmsg(c, &msg, MSG_NOSIGNAL);
    }
    (void) close(c);
    return NULL;
}

START_TEST(client_attach_bad_daemon)
{
    static const struct {
        const char *reply;
        bool with_fd;
        int expect;
    } cases[] = {
            {"{\"ok\":true,\"version\":2,\"client_id\":1,\"segments\":[]}\n", false,
             -SHMHEAP_EPROTO},
            {"{\"ok\":false,\"error\":{\"code\":\"bad_value\",\"message\":\"protocol version 1 "
             "is not supported\"}}\n",
             false, -SHMHEAP_EPROTO},
            {"{\"ok\":false,\"error\":{\"code\":\"permission_denied\",\"message\":\"uid 1 is "
             "not allowed\"}}\n",
             false, -SHMHEAP_EDENIED},
            {"{\"ok\":false,\"error\":{\"code\":\"too_many_clients\",\"message\":\"full\"}}\n",
             false, -SHMHEAP_ENOSPC},
            {"hello there\n", false, -SHMHEAP_EPROTO},
            {"{\"ok\":true,\"version\":1,\"client_id\":1,\"segments\":[{\"index\":0}]}\n", false,
             -SHMHEAP_EPROTO}, /* a segment without its fd */
            {"{\"ok\":true,\"version\":1,\"client_id\":1,\"segments\":[{\"index\":0}]}\n", true,
             -SHMHEAP_EPROTO},           /* an fd that is not a heap */
            {NULL, false, -SHMHEAP_EIO}, /* hangs up */
    };
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char dir[] = "/tmp/shmheap-fake-XXXXXX";
    unsigned fds = open_fds();

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/s.sock", dir);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fake f = {.reply = cases[i].reply, .fd = -1};
        shmheap_t *h = NULL;
        pthread_t th;
        int r;

        f.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(f.listen_fd, 0);
        (void) unlink(addr.sun_path);
        ck_assert_int_eq(bind(f.listen_fd, (struct sockaddr *) &addr, sizeof(addr)), 0);
        ck_assert_int_eq(listen(f.listen_fd, 1), 0);
        if (cases[i].with_fd) {
            f.fd = memfd_create("not-a-heap", MFD_CLOEXEC);
            ck_assert_int_eq(ftruncate(f.fd, 1 << 20), 0);
        }
        ck_assert_int_eq(pthread_create(&th, NULL, fake_main, &f), 0);
        r = shmheap_attach(addr.sun_path, &h);
        ck_assert_msg(r == cases[i].expect, "case %zu: %d (%s), expected %d; %s", i, r,
                      shmheap_strerror(r), cases[i].expect, shmheap_last_error());
        ck_assert_ptr_null(h);
        ck_assert_str_ne(shmheap_last_error(), "");
        ck_assert_int_eq(pthread_join(th, NULL), 0);
        (void) close(f.listen_fd);
        if (f.fd >= 0)
            (void) close(f.fd);
    }
    (void) unlink(addr.sun_path);
    (void) rmdir(dir);
    ck_assert_uint_eq(open_fds(), fds); /* nothing leaked on any failure */
}
END_TEST

/* ---- a user the daemon does not allow ---- */

#define NOBODY 65534

/* As uid NOBODY (group root, so that the 0660 socket opens): attach must
 * give `expect`. */
static int nobody_child(void *arg, unsigned expect_ok)
{
    shmheap_t *h = NULL;
    int r;

    (void) arg;
    MP_REQUIRE(setgroups(0, NULL) == 0 && setgid(0) == 0 && setuid(NOBODY) == 0, "setuid: %s",
               strerror(errno));
    r = shmheap_attach(fx.socket_path, &h);
    if (!expect_ok) {
        MP_REQUIRE(r == -SHMHEAP_EDENIED, "attach as uid %d: %d (%s): %s", NOBODY, r,
                   shmheap_strerror(r), shmheap_last_error());
        MP_REQUIRE(strstr(shmheap_last_error(), "permission_denied"), "last error: %s",
                   shmheap_last_error());
        return 0;
    }
    MP_REQUIRE(r == 0, "attach as an allowed uid: %s", shmheap_last_error());
    MP_REQUIRE(shmheap_malloc(h, 100), "malloc as an allowed uid");
    shmheap_detach(h);
    return 0;
}

START_TEST(client_attach_denied)
{
    cJSON *r;

    if (geteuid() != 0)
        return; /* needs root to become another user */
    start(NULL);
    ck_assert_int_eq(chmod(fx.dir, 0750), 0);
    mp_wait_ok(mp_fork(nobody_child, NULL, 0), "denied child");
    r = fixture_op(&fx, "{\"op\":\"config.set\",\"key\":\"allowed_uids\",\"value\":[%d]}", NOBODY);
    ck_assert(reply_is_ok(r));
    cJSON_Delete(r);
    mp_wait_ok(mp_fork(nobody_child, NULL, 1), "allowed child");
    finish();
}
END_TEST

/* ---- four processes share objects ---- */

#define MP_PROCS 4u

struct mp_share {
    pthread_barrier_t barrier;
};

static size_t mp_size(unsigned proc, unsigned k)
{
    static const size_t sizes[] = {16, 24, 100, 256, 1000, 4096, 12000, 40000, 100000};

    return sizes[(proc + k) % (sizeof(sizes) / sizeof(sizes[0]))];
}

static unsigned mp_count(void)
{
    return (unsigned) test_scaled(1500, 5);
}

static int mp_child(void *arg, unsigned me)
{
    struct mp_share *sh = arg;
    unsigned n = mp_count(), peer = (me + 1) % MP_PROCS;
    shmheap_t *h = child_attach();
    shmheap_off_t *mine, *theirs, off;
    char name[32];
    int r;

    /* Allocate, fill with patterns naming us, publish the offsets under a root. */
    mine = shmheap_malloc(h, n * sizeof(*mine));
    MP_REQUIRE(mine, "malloc index: %s", strerror(errno));
    for (unsigned k = 0; k < n; k++) {
        void *p = shmheap_malloc(h, mp_size(me, k));

        MP_REQUIRE(p, "malloc %zu: %s", mp_size(me, k), strerror(errno));
        mp_fill(p, mp_size(me, k), mp_tag(me, 0, k));
        mine[k] = shmheap_to_off(h, p);
        MP_REQUIRE(mine[k] != SHMHEAP_OFF_NULL, "to_off");
    }
    snprintf(name, sizeof(name), "test.mp.%u", me);
    r = shmheap_root_set(h, name, shmheap_to_off(h, mine));
    MP_REQUIRE(r == 0, "root_set: %s", shmheap_strerror(r));
    pthread_barrier_wait(&sh->barrier);

    /* Check and free what the next process made. */
    snprintf(name, sizeof(name), "test.mp.%u", peer);
    r = shmheap_root_get(h, name, &off);
    MP_REQUIRE(r == 0, "root_get %s: %s", name, shmheap_strerror(r));
    theirs = shmheap_from_off(h, off);
    MP_REQUIRE(theirs, "from_off of the peer's index");
    for (unsigned k = 0; k < n; k++) {
        void *p = shmheap_from_off(h, theirs[k]);
        size_t bad;

        MP_REQUIRE(p, "from_off %#" PRIx64, theirs[k]);
        MP_REQUIRE(shmheap_usable_size(h, p) >= mp_size(peer, k), "usable size");
        bad = mp_check(p, mp_size(peer, k), mp_tag(peer, 0, k));
        MP_REQUIRE(bad == SIZE_MAX, "object %u of process %u: byte %zu differs", k, peer, bad);
        shmheap_free(h, p);
    }
    pthread_barrier_wait(&sh->barrier);

    /* Our index is ours to free; the peer is done with it. */
    snprintf(name, sizeof(name), "test.mp.%u", me);
    MP_REQUIRE(shmheap_root_set(h, name, SHMHEAP_OFF_NULL) == 0, "root remove");
    shmheap_free(h, mine);
    shmheap_detach(h);
    return 0;
}

START_TEST(client_four_processes_cross_free)
{
    struct mp_share *sh = mp_shared_alloc(sizeof(*sh));
    pthread_barrierattr_t ba;
    struct shmheap_stats st;
    pid_t pids[MP_PROCS];
    shmheap_t *h;

    start("\"max_segments\": 8");
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&sh->barrier, &ba, MP_PROCS);
    for (unsigned i = 0; i < MP_PROCS; i++)
        pids[i] = mp_fork(mp_child, sh, i);
    wait_all(pids, MP_PROCS, "cross-free child");
    h = attach_ok();
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    ck_assert_uint_eq(st.bytes_in_use, 0); /* every object was freed, by another process */
    ck_assert_uint_eq(st.allocs, st.frees);
    ck_assert_uint_eq(st.bad_frees, 0);
    ck_assert_uint_eq(st.double_frees, 0);
    shmheap_detach(h);
    mp_shared_free(sh, sizeof(*sh));
    finish();
}
END_TEST

/* ---- roots ---- */

static int roots_child(void *arg, unsigned idx)
{
    shmheap_t *h = child_attach();
    uint64_t *p = shmheap_malloc(h, 64);
    int r;

    (void) arg;
    (void) idx;
    MP_REQUIRE(p, "malloc");
    *p = 0x5eed;
    r = shmheap_root_set(h, "test.child", shmheap_to_off(h, p));
    MP_REQUIRE(r == 0, "root_set: %s", shmheap_strerror(r));
    shmheap_detach(h); /* the object and the root outlive us */
    return 0;
}

START_TEST(client_roots)
{
    char long_name[64];
    shmheap_off_t off = 0, got = 0;
    shmheap_t *h;
    uint64_t *p;

    start(NULL);
    h = attach_ok();
    p = shmheap_malloc(h, 32);
    off = shmheap_to_off(h, p);
    ck_assert_int_eq(shmheap_root_get(h, "test.a", &got), -SHMHEAP_ENOENT);
    ck_assert_int_eq(shmheap_root_set(h, "test.a", off), 0);
    ck_assert_int_eq(shmheap_root_get(h, "test.a", &got), 0);
    ck_assert_uint_eq(got, off);
    ck_assert_int_eq(shmheap_root_set(h, "test.a", off + 16), 0); /* replaces */
    ck_assert_int_eq(shmheap_root_get(h, "test.a", &got), 0);
    ck_assert_uint_eq(got, off + 16);
    ck_assert_int_eq(shmheap_root_set(h, "test.a", SHMHEAP_OFF_NULL), 0); /* removes */
    ck_assert_int_eq(shmheap_root_get(h, "test.a", &got), -SHMHEAP_ENOENT);
    ck_assert_int_eq(shmheap_root_set(h, "test.a", SHMHEAP_OFF_NULL), -SHMHEAP_ENOENT);

    memset(long_name, 'x', 56);
    long_name[56] = 0;
    ck_assert_int_eq(shmheap_root_set(h, long_name, off), -SHMHEAP_ENAMETOOLONG);
    long_name[55] = 0;
    ck_assert_int_eq(shmheap_root_set(h, long_name, off), 0);
    ck_assert_int_eq(shmheap_root_set(h, "", off), -SHMHEAP_EINVAL);
    ck_assert_int_eq(shmheap_root_set(h, NULL, off), -SHMHEAP_EINVAL);
    ck_assert_int_eq(shmheap_root_get(h, "test.a", NULL), -SHMHEAP_EINVAL);
    ck_assert_int_eq(shmheap_root_set(h, "test.bad", UINT64_C(1) << 60), -SHMHEAP_EINVAL);

    /* Another process's root and object. */
    mp_wait_ok(mp_fork(roots_child, NULL, 0), "roots child");
    ck_assert_int_eq(shmheap_root_get(h, "test.child", &got), 0);
    p = shmheap_from_off(h, got);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(*p, 0x5eed);
    shmheap_free(h, p);
    ck_assert_int_eq(shmheap_root_set(h, "test.child", SHMHEAP_OFF_NULL), 0);
    shmheap_free(h, shmheap_from_off(h, off));
    ck_assert_int_eq(shmheap_root_set(h, long_name, SHMHEAP_OFF_NULL), 0);
    shmheap_detach(h);
    finish();
}
END_TEST

/* ---- arenas ---- */

struct arena_share {
    shmheap_off_t session, plain;
};

/* Creates a SESSION arena and a plain one, allocates in both, then leaves:
 * idx 0 detaches, idx 1 exits without detaching. */
static int arena_child(void *arg, unsigned idx)
{
    struct arena_share *sh = arg;
    shmheap_t *h = child_attach();
    void *p;
    int r;

    r = shmheap_arena_create(h, 1 << 20, SHMHEAP_ARENA_SESSION, &sh->session);
    MP_REQUIRE(r == 0, "arena_create session: %s", shmheap_strerror(r));
    r = shmheap_arena_create(h, 1 << 20, 0, &sh->plain);
    MP_REQUIRE(r == 0, "arena_create: %s", shmheap_strerror(r));
    p = shmheap_arena_alloc(h, sh->session, 1000, 0);
    MP_REQUIRE(p, "arena_alloc session");
    memset(p, 1, 1000);
    p = shmheap_arena_alloc(h, sh->plain, 1008, 0);
    MP_REQUIRE(p, "arena_alloc plain");
    memset(p, 2, 1008);
    if (idx == 0)
        shmheap_detach(h);
    return 0;
}

START_TEST(client_arenas)
{
    struct arena_share *sh = mp_shared_alloc(sizeof(*sh));
    struct shmheap_arena_stats ast;
    struct arena_probe probe;
    shmheap_off_t a;
    shmheap_t *h;
    char *p, *q;

    start(NULL);
    h = attach_ok();
    ck_assert_int_eq(shmheap_arena_create(h, 0, 0, &a), -SHMHEAP_EINVAL);
    ck_assert_int_eq(shmheap_arena_create(h, 4096, 0x80, &a), -SHMHEAP_EINVAL);
    ck_assert_int_eq(shmheap_arena_create(h, 256 << 10, 0, &a), 0);
    p = shmheap_arena_alloc(h, a, 10, 0);
    q = shmheap_arena_alloc(h, a, 100, 256);
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(q);
    ck_assert_uint_eq((uintptr_t) p % 16, 0);
    ck_assert_uint_eq((uintptr_t) q % 256, 0);
    ck_assert_uint_gt((uintptr_t) q, (uintptr_t) p);
    ck_assert_int_eq(shmheap_arena_stats(h, a, &ast), 0);
    ck_assert_uint_eq(ast.count, 2);
    ck_assert_uint_eq(ast.capacity, 256 << 10);
    errno = 0;
    ck_assert_ptr_null(shmheap_arena_alloc(h, a, 1 << 20, 0)); /* out of space */
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_ptr_nonnull(shmheap_arena_alloc(h, a, 64, 0)); /* still usable */
    errno = 0;
    ck_assert_ptr_null(shmheap_arena_alloc(h, a, 64, 3));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(shmheap_arena_reset(h, a), 0);
    ck_assert_ptr_eq(shmheap_arena_alloc(h, a, 10, 0), p); /* O(1) reset: same start */
    ck_assert_int_eq(shmheap_arena_destroy(h, a), 0);
    ck_assert_int_eq(shmheap_arena_destroy(h, a), -SHMHEAP_ENOENT);
    ck_assert_int_eq(shmheap_arena_reset(h, a), -SHMHEAP_ENOENT);
    ck_assert_int_eq(shmheap_arena_stats(h, a, &ast), -SHMHEAP_ENOENT);
    errno = 0;
    ck_assert_ptr_null(shmheap_arena_alloc(h, a, 10, 0));
    ck_assert_int_eq(errno, EINVAL);

    /* SESSION arenas go with their creator, whether it detaches (0) or just
     * exits (1); plain arenas stay. */
    for (unsigned way = 0; way < 2; way++) {
        pid_t pid = mp_fork(arena_child, sh, way);

        mp_wait_ok(pid, "arena child");
        probe.h = h;
        probe.arena = sh->session;
        ck_assert_msg(wait_until(arena_gone, &probe, 5000),
                      "SESSION arena still there 5 s after its creator %s",
                      way ? "exited" : "detached");
        ck_assert_int_eq(shmheap_arena_reset(h, sh->session), -SHMHEAP_ENOENT);
        ck_assert_int_eq(shmheap_arena_stats(h, sh->plain, &ast), 0);
        ck_assert_uint_eq(ast.count, 1);
        p = shmheap_arena_alloc(h, sh->plain, 1000, 0);
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq(p[-1], 2); /* the child's bytes, just before */
        ck_assert_int_eq(p[-1008], 2);
        ck_assert_int_eq(shmheap_arena_destroy(h, sh->plain), 0);
    }
    shmheap_detach(h);
    mp_shared_free(sh, sizeof(*sh));
    finish();
}
END_TEST

/* ---- pools ---- */

struct pool_share {
    shmheap_off_t pool;
    shmheap_off_t objs[256];
};

static int pool_child(void *arg, unsigned idx)
{
    struct pool_share *sh = arg;
    shmheap_t *h = child_attach();

    (void) idx;
    for (unsigned i = 0; i < 256; i++) {
        uint64_t *p = shmheap_from_off(h, sh->objs[i]);

        MP_REQUIRE(p && *p == i, "pool object %u", i);
        if (i % 2)
            shmheap_pool_free(h, sh->pool, p);
    }
    for (unsigned i = 0; i < 64; i++) {
        uint64_t *p = shmheap_pool_alloc(h, sh->pool);

        MP_REQUIRE(p, "pool_alloc in child: %s", strerror(errno));
        *p = 1000 + i;
    }
    shmheap_detach(h);
    return 0;
}

START_TEST(client_pools)
{
    struct pool_share *sh = mp_shared_alloc(sizeof(*sh));
    struct shmheap_stats st;
    uint64_t bad_before;
    shmheap_t *h;
    void *stray;

    start(NULL);
    h = attach_ok();
    ck_assert_int_eq(shmheap_pool_create(h, 0, &sh->pool), -SHMHEAP_EINVAL);
    ck_assert_int_eq(shmheap_pool_create(h, 200, &sh->pool), 0);
    for (unsigned i = 0; i < 256; i++) {
        uint64_t *p = shmheap_pool_alloc(h, sh->pool);

        ck_assert_ptr_nonnull(p);
        *p = i;
        sh->objs[i] = shmheap_to_off(h, p);
    }
    mp_wait_ok(mp_fork(pool_child, sh, 0), "pool child");
    for (unsigned i = 0; i < 256; i += 2) {
        uint64_t *p = shmheap_from_off(h, sh->objs[i]);

        ck_assert_uint_eq(*p, i);
        shmheap_pool_free(h, sh->pool, p);
    }
    /* A pointer that is not one of the pool's objects: ignored, counted. */
    stray = shmheap_malloc(h, 200);
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    bad_before = st.bad_frees;
    shmheap_pool_free(h, sh->pool, stray);
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    ck_assert_uint_eq(st.bad_frees, bad_before + 1);
    shmheap_free(h, stray);
    ck_assert_int_eq(shmheap_pool_destroy(h, sh->pool), 0);
    ck_assert_int_eq(shmheap_pool_destroy(h, sh->pool), -SHMHEAP_ENOENT);
    errno = 0;
    ck_assert_ptr_null(shmheap_pool_alloc(h, sh->pool));
    shmheap_detach(h);
    mp_shared_free(sh, sizeof(*sh));
    finish();
}
END_TEST

/* ---- fork ---- */

struct fork_share {
    shmheap_t *h;
    shmheap_off_t parent_obj;
    shmheap_off_t arena;
    shmheap_off_t pool;
};

static int fork_child(void *arg, unsigned idx)
{
    struct fork_share *sh = arg;
    shmheap_t *h = sh->h, *mine;
    struct shmheap_stats st;
    shmheap_off_t off;
    void *p;

    (void) idx;
    /* The parent's handle fails cleanly ... */
    errno = 0;
    MP_REQUIRE(shmheap_malloc(h, 64) == NULL && errno == ESTALE, "malloc: %p errno %d",
               shmheap_malloc(h, 64), errno);
    errno = 0;
    MP_REQUIRE(shmheap_malloc(h, 1 << 20) == NULL && errno == ESTALE, "large malloc");
    errno = 0;
    MP_REQUIRE(shmheap_calloc(h, 4, 16) == NULL && errno == ESTALE, "calloc");
    errno = 0;
    MP_REQUIRE(shmheap_aligned_alloc(h, 64, 64) == NULL && errno == ESTALE, "aligned_alloc");
    p = shmheap_from_off(h, sh->parent_obj);
    errno = 0;
    MP_REQUIRE(shmheap_realloc(h, p, 8) == NULL && errno == ESTALE, "realloc");
    shmheap_free(h, p); /* ignored: the parent still owns it */
    shmheap_thread_flush(h);
    errno = 0;
    MP_REQUIRE(shmheap_arena_alloc(h, sh->arena, 8, 0) == NULL && errno == ESTALE, "arena_alloc");
    errno = 0;
    MP_REQUIRE(shmheap_pool_alloc(h, sh->pool) == NULL && errno == ESTALE, "pool_alloc");
    MP_REQUIRE(shmheap_root_set(h, "test.fork", sh->parent_obj) == -SHMHEAP_EFORKED, "root_set");
    MP_REQUIRE(shmheap_root_get(h, "test.fork", &off) == -SHMHEAP_EFORKED, "root_get");
    MP_REQUIRE(shmheap_stats(h, &st) == -SHMHEAP_EFORKED, "stats");
    MP_REQUIRE(shmheap_trim(h, 0) == -SHMHEAP_EFORKED, "trim");
    MP_REQUIRE(shmheap_arena_create(h, 4096, 0, &off) == -SHMHEAP_EFORKED, "arena_create");
    MP_REQUIRE(shmheap_arena_reset(h, sh->arena) == -SHMHEAP_EFORKED, "arena_reset");
    MP_REQUIRE(shmheap_pool_create(h, 64, &off) == -SHMHEAP_EFORKED, "pool_create");
    MP_REQUIRE(shmheap_pool_destroy(h, sh->pool) == -SHMHEAP_EFORKED, "pool_destroy");

    /* ... and an attachment of the child's own works. */
    mine = child_attach();
    p = shmheap_malloc(mine, 64);
    MP_REQUIRE(p, "malloc on the child's own handle");
    MP_REQUIRE(shmheap_root_set(mine, "test.fork", shmheap_to_off(mine, p)) == 0, "root_set");
    shmheap_detach(mine);
    shmheap_detach(h); /* the child's copy: unmaps, the parent is unaffected */
    return 0;
}

START_TEST(client_fork_child_uses_parent_handle)
{
    struct fork_share *sh = mp_shared_alloc(sizeof(*sh));
    shmheap_off_t off;
    uint64_t *p;

    start(NULL);
    sh->h = attach_ok();
    p = shmheap_malloc(sh->h, 48);
    *p = 42;
    sh->parent_obj = shmheap_to_off(sh->h, p);
    ck_assert_int_eq(shmheap_arena_create(sh->h, 4096, 0, &sh->arena), 0);
    ck_assert_int_eq(shmheap_pool_create(sh->h, 32, &sh->pool), 0);
    mp_wait_ok(mp_fork(fork_child, sh, 0), "fork child");

    /* The parent carries on: its object is intact and its handle works. */
    ck_assert_uint_eq(*p, 42);
    shmheap_free(sh->h, p);
    p = shmheap_malloc(sh->h, 48);
    ck_assert_ptr_nonnull(p);
    shmheap_free(sh->h, p);
    ck_assert_int_eq(shmheap_root_get(sh->h, "test.fork", &off), 0);
    shmheap_free(sh->h, shmheap_from_off(sh->h, off));
    ck_assert_int_eq(shmheap_root_set(sh->h, "test.fork", SHMHEAP_OFF_NULL), 0);
    ck_assert_int_eq(shmheap_arena_destroy(sh->h, sh->arena), 0);
    ck_assert_int_eq(shmheap_pool_destroy(sh->h, sh->pool), 0);
    ck_assert_int_eq(shmheap_trim(sh->h, 10), 0);
    shmheap_detach(sh->h);
    mp_shared_free(sh, sizeof(*sh));
    finish();
}
END_TEST

/* ---- thread exit ---- */

struct cache_thread {
    shmheap_t *h;
    int ready[2], go[2];
};

static void pipe_put(int fd)
{
    char c = 1;

    MP_REQUIRE(write(fd, &c, 1) == 1, "pipe write: %s", strerror(errno));
}

static void pipe_get(int fd)
{
    char c;
    ssize_t r;

    do
        r = read(fd, &c, 1);
    while (r < 0 && errno == EINTR);
    MP_REQUIRE(r == 1, "pipe read");
}

static void *cache_thread_main(void *arg)
{
    struct cache_thread *t = arg;
    void *objs[1000];

    for (unsigned i = 0; i < 1000; i++) {
        objs[i] = shmheap_malloc(t->h, 64);
        MP_REQUIRE(objs[i], "malloc");
    }
    for (unsigned i = 0; i < 1000; i++)
        shmheap_free(t->h, objs[i]);
    pipe_put(t->ready[1]);
    pipe_get(t->go[0]);
    return NULL; /* the cache goes back as the thread exits */
}

START_TEST(client_thread_exit_flushes_cache)
{
    struct cache_thread t;
    pthread_t th;
    uint64_t before;

    start(NULL);
    t.h = attach_ok();
    ck_assert_int_eq(pipe(t.ready), 0);
    ck_assert_int_eq(pipe(t.go), 0);
    ck_assert_uint_eq(cached_total(t.h), 0);
    ck_assert_int_eq(pthread_create(&th, NULL, cache_thread_main, &t), 0);
    pipe_get(t.ready[0]);
    before = cached_of(t.h, 64);
    ck_assert_uint_gt(before, 0);
    pipe_put(t.go[1]);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_uint_eq(cached_total(t.h), 0);

    /* shmheap_thread_flush does the same for a thread that stays. */
    for (unsigned i = 0; i < 100; i++)
        shmheap_free(t.h, shmheap_malloc(t.h, 64));
    ck_assert_uint_gt(cached_of(t.h, 64), 0);
    shmheap_thread_flush(t.h);
    ck_assert_uint_eq(cached_total(t.h), 0);
    shmheap_detach(t.h);
    finish();
}
END_TEST

/* ---- a heap that fills, and one that grows ---- */

START_TEST(client_heap_full)
{
    enum { MAXOBJ = 4096 };
    void **objs = calloc(MAXOBJ, sizeof(*objs));
    unsigned n = 0, nsmall = 0;
    shmheap_t *h;
    void *p;

    start("\"max_segments\": 1");
    h = attach_ok();
    /* Large objects until the one segment is full. */
    for (;;) {
        ck_assert_uint_lt(n, MAXOBJ);
        errno = 0;
        p = shmheap_malloc(h, 1 << 20);
        if (!p)
            break;
        memset(p, 0x5a, 4096);
        objs[n++] = p;
    }
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_uint_ge(n, 32); /* most of 64 MiB */
    ck_assert_uint_le(n, 64);
    /* Small objects fill what is left; then they fail too. */
    for (;;) {
        p = shmheap_malloc(h, 8192);
        if (!p)
            break;
        if (n < MAXOBJ)
            objs[n++] = p;
        nsmall++;
        ck_assert_uint_lt(nsmall, 64u << 7);
    }
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(shmheap_malloc(h, 128 << 20)); /* more than a segment */
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_int_eq(shmheap_arena_create(h, 32 << 20, 0, &(shmheap_off_t){0}), -SHMHEAP_ENOMEM);
    verify_ok();
    /* Everything back; then allocation works again. */
    for (unsigned i = 0; i < n; i++)
        shmheap_free(h, objs[i]);
    shmheap_thread_flush(h);
    p = shmheap_malloc(h, 1 << 20);
    ck_assert_ptr_nonnull(p);
    shmheap_free(h, p);
    free(objs);
    shmheap_detach(h);
    finish();
}
END_TEST

#define GROW_OBJS 96u /* of 1 MiB: more than one 64 MiB segment */

struct grow_share {
    int ready[2], go[2];
    shmheap_off_t offs[GROW_OBJS];
};

/* Attaches before the heap grows, so it learns of the new segments later,
 * from offsets (mapping them through the daemon's `segment` op). */
static int grow_reader(void *arg, unsigned idx)
{
    struct grow_share *sh = arg;
    shmheap_t *h = child_attach();
    struct shmheap_stats st;

    (void) idx;
    MP_REQUIRE(shmheap_stats(h, &st) == 0 && st.nsegments == 1, "one segment at first");
    pipe_put(sh->ready[1]);
    pipe_get(sh->go[0]);
    for (unsigned i = 0; i < GROW_OBJS; i++) {
        void *p = shmheap_from_off(h, sh->offs[i]);

        MP_REQUIRE(p, "from_off %#" PRIx64 " (segment %u)", sh->offs[i],
                   (unsigned) (sh->offs[i] >> 34));
        MP_REQUIRE(mp_check(p, 4096, mp_tag(0, 0, i)) == SIZE_MAX, "object %u", i);
        shmheap_free(h, p);
    }
    MP_REQUIRE(shmheap_stats(h, &st) == 0 && st.nsegments >= 2, "segments mapped");
    shmheap_detach(h);
    return 0;
}

START_TEST(client_heap_grows)
{
    struct grow_share *sh = mp_shared_alloc(sizeof(*sh));
    struct shmheap_stats st;
    unsigned fds;
    pid_t reader;
    cJSON *r;
    shmheap_t *h;

    start("\"max_segments\": 3");
    ck_assert_int_eq(pipe(sh->go), 0);
    ck_assert_int_eq(pipe(sh->ready), 0);
    fds = open_fds();
    h = attach_ok();
    reader = mp_fork(grow_reader, sh, 0);
    pipe_get(sh->ready[0]); /* attached while the heap has one segment */
    for (unsigned i = 0; i < GROW_OBJS; i++) {
        void *p = shmheap_malloc(h, 1 << 20);

        ck_assert_msg(p, "malloc %u: %s", i, strerror(errno));
        mp_fill(p, 4096, mp_tag(0, 0, i));
        sh->offs[i] = shmheap_to_off(h, p);
    }
    r = fixture_op(&fx, "{\"op\":\"segments\"}");
    ck_assert(reply_is_ok(r));
    ck_assert_int_ge(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "segments")), 2);
    cJSON_Delete(r);
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    ck_assert_uint_ge(st.nsegments, 2);
    /* Another process reads (and frees) objects in every segment. */
    pipe_put(sh->go[1]);
    mp_wait_ok(reader, "reader");
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    shmheap_detach(h);
    ck_assert_uint_eq(open_fds(), fds);
    mp_shared_free(sh, sizeof(*sh));
    finish();
}
END_TEST

/* A set of objects a test keeps live across what it does. */
struct live_set {
    void *p[64];
    size_t size[64];
};

static void live_make(shmheap_t *h, struct live_set *l)
{
    for (unsigned i = 0; i < 64; i++) {
        l->size[i] = 16u << (i % 10);
        l->p[i] = shmheap_malloc(h, l->size[i]);
        ck_assert_ptr_nonnull(l->p[i]);
        mp_fill(l->p[i], l->size[i], mp_tag(9, 9, i));
    }
}

static void live_check_free(shmheap_t *h, struct live_set *l)
{
    for (unsigned i = 0; i < 64; i++) {
        ck_assert_msg(mp_check(l->p[i], l->size[i], mp_tag(9, 9, i)) == SIZE_MAX,
                      "live object %u damaged", i);
        shmheap_free(h, l->p[i]);
    }
}

/* ---- clients killed in the middle of allocating ---- */

static unsigned storm_rounds(void)
{
    const char *soak = getenv("SHMHEAP_SOAK");

    if (soak && *soak && strcmp(soak, "0") != 0)
        return 1000;
    return (unsigned) test_scaled(100, 5);
}

struct storm {
    shmheap_t *h;
    uint64_t seed;
    uint64_t *ops; /* shared with the parent: proof the storm ran */
};

#define STORM_SHARED 3 /* objects each storm child shares before its storm */

struct storm_share {
    int fd;       /* the child writes its SESSION arena's offset, then its shared objects */
    uint64_t ops; /* operations done by all children, roughly */
};

/* What a storm child hands the parent before it storms. */
struct storm_hello {
    shmheap_off_t arena;
    shmheap_off_t shared[STORM_SHARED];
    size_t size[STORM_SHARED];
};

static void *storm_thread(void *arg)
{
    struct storm *s = arg;
    void *live[64] = {0};
    size_t sizes[64] = {0};
    uint64_t rng = s->seed;

    for (uint64_t n = 0;; n++) {
        unsigned k = (unsigned) (test_rand(&rng) % 64);
        uint64_t tag = mp_tag((unsigned) s->seed, 0, k);

        if (live[k]) {
            MP_REQUIRE(mp_check_sparse(live[k], sizes[k], tag), "storm object %u damaged", k);
            shmheap_free(s->h, live[k]);
        }
        sizes[k] = mp_rand_size(&rng, 256);
        live[k] = shmheap_malloc(s->h, sizes[k]);
        if (live[k])
            mp_fill_sparse(live[k], sizes[k], tag);
        if ((n & 63) == 63)
            __atomic_fetch_add(s->ops, 64, __ATOMIC_RELAXED);
    }
    return NULL;
}

/* Attaches, creates a SESSION arena, shares a few objects (one large) with
 * the parent, says so, then allocates and frees in two threads until
 * killed: what it holds then is private and must go with it. */
static int storm_child(void *arg, unsigned idx)
{
    struct storm_share *sh = arg;
    struct storm_hello hello;
    struct storm s[2];
    pthread_t th;
    shmheap_t *h = child_attach();
    int r;

    r = shmheap_arena_create(h, 64 << 10, SHMHEAP_ARENA_SESSION, &hello.arena);
    MP_REQUIRE(r == 0, "arena_create: %s", shmheap_strerror(r));
    MP_REQUIRE(shmheap_arena_alloc(h, hello.arena, 100, 0), "arena_alloc");
    for (unsigned k = 0; k < STORM_SHARED; k++) {
        void *p;

        hello.size[k] = k == 0 ? 200000 : 24 + 1000 * k;
        p = shmheap_malloc(h, hello.size[k]);
        MP_REQUIRE(p, "malloc");
        mp_fill(p, hello.size[k], mp_tag(77, idx, k));
        hello.shared[k] = shmheap_to_off(h, p);
    }
    MP_REQUIRE(write(sh->fd, &hello, sizeof(hello)) == sizeof(hello), "write");
    s[0].h = s[1].h = h;
    s[0].ops = s[1].ops = &sh->ops;
    s[0].seed = idx * 2 + 1;
    s[1].seed = idx * 2 + 2;
    MP_REQUIRE(pthread_create(&th, NULL, storm_thread, &s[1]) == 0, "pthread_create");
    storm_thread(&s[0]);
    return 0;
}

struct in_use_probe {
    shmheap_t *h;
    uint64_t want, seen;
};

static bool in_use_is(void *arg)
{
    struct in_use_probe *u = arg;
    struct shmheap_stats st;

    ck_assert_int_eq(shmheap_stats(u->h, &st), 0);
    u->seen = st.bytes_in_use;
    return st.bytes_in_use == u->want;
}

START_TEST(client_killed_mid_storm)
{
    struct storm_share *sh = mp_shared_alloc(sizeof(*sh));
    unsigned rounds = storm_rounds();
    uint64_t rng = 12345, before_reclaimed;
    struct shmheap_stats st;
    struct arena_probe probe;
    struct in_use_probe in_use;
    struct live_set mine;
    shmheap_off_t *kept;
    size_t *kept_size;
    unsigned nkept = 0;
    shmheap_t *h;

    start("\"max_segments\": 8");
    h = attach_ok();
    probe.h = h;
    in_use.h = h;
    kept = calloc(rounds * STORM_SHARED, sizeof(*kept));
    kept_size = calloc(rounds * STORM_SHARED, sizeof(*kept_size));
    ck_assert(kept && kept_size);
    /* The survivors: this process's own objects, and the objects each dead
     * child shared (they must outlive it). */
    live_make(h, &mine);
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    in_use.want = st.bytes_in_use;
    before_reclaimed = st.reclaimed_objects;
    for (unsigned i = 0; i < rounds; i++) {
        struct storm_hello hello;
        struct pollfd pfd;
        int fds[2];
        pid_t pid;

        ck_assert_int_eq(pipe(fds), 0);
        sh->fd = fds[1];
        pid = mp_fork(storm_child, sh, i);
        (void) close(fds[1]);
        pfd.fd = fds[0];
        pfd.events = POLLIN;
        ck_assert_msg(poll(&pfd, 1, 10000) == 1, "round %u: child never got going", i);
        ck_assert_int_eq(read(fds[0], &hello, sizeof(hello)), sizeof(hello));
        (void) close(fds[0]);
        probe.arena = hello.arena;
        for (unsigned k = 0; k < STORM_SHARED; k++) {
            void *p = shmheap_from_off(h, hello.shared[k]);

            ck_assert_ptr_nonnull(p);
            kept[nkept] = hello.shared[k];
            kept_size[nkept++] = hello.size[k];
            in_use.want += shmheap_usable_size(h, p);
        }
        mp_sleep_us((unsigned) (test_rand(&rng) % 10000)); /* somewhere in the storm */
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        mp_wait_signaled(pid, SIGKILL, "storm child");

        ck_assert_msg(wait_until(pid_gone, &pid, 10000),
                      "round %u: the daemon still lists pid %d 10 s after SIGKILL", i, (int) pid);
        ck_assert_msg(wait_until(arena_gone, &probe, 10000),
                      "round %u: the SESSION arena of pid %d survived it", i, (int) pid);
        /* Bytes in use: back to what the survivors hold, exactly. */
        ck_assert_msg(wait_until(in_use_is, &in_use, 10000),
                      "round %u: %" PRIu64 " bytes in use after pid %d died, the survivors hold "
                      "%" PRIu64,
                      i, in_use.seen, (int) pid, in_use.want);
        verify_ok();
    }
    /* The shared objects outlived their makers, intact; the private ones
     * went with them. */
    for (unsigned k = 0; k < nkept; k++) {
        void *p = shmheap_from_off(h, kept[k]);

        ck_assert_msg(mp_check(p, kept_size[k], mp_tag(77, k / STORM_SHARED, k % STORM_SHARED)) ==
                              SIZE_MAX,
                      "shared object %u of a dead child damaged", k);
        in_use.want -= shmheap_usable_size(h, p);
        shmheap_free(h, p);
    }
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    ck_assert_msg(st.reclaimed_objects > before_reclaimed, "no private object was reclaimed");
    live_check_free(h, &mine);
    shmheap_thread_flush(h);
    ck_assert_int_eq(shmheap_stats(h, &st), 0);
    ck_assert_uint_eq(st.bytes_in_use, 0);
    /* Everything the dead held in caches went back: no cache is left but
     * this process's (which holds nothing). */
    ck_assert_uint_eq(cached_total(h), 0);
    ck_assert_msg(sh->ops >= 64, "the storms never got going"); /* counted 64 at a time */
    free(kept);
    free(kept_size);
    shmheap_detach(h);
    mp_shared_free(sh, sizeof(*sh));
    finish();
}
END_TEST

/* ---- trim ---- */

#define TRIM_CFG "\"retain_empty_blocks\": 0"

/* Allocates and frees n objects of size bytes: caches, recyclers and
 * blocks fill, then hold free memory a trim can give back. */
static void churn(shmheap_t *h, unsigned n, size_t size)
{
    void **v = calloc(n, sizeof(*v));

    for (unsigned i = 0; i < n; i++) {
        v[i] = shmheap_malloc(h, size);
        ck_assert_ptr_nonnull(v[i]);
        memset(v[i], 0x77, size < 256 ? size : 256);
    }
    for (unsigned i = 0; i < n; i++)
        shmheap_free(h, v[i]);
    free(v);
}

START_TEST(client_trim_idle)
{
    struct live_set live;
    uint64_t before, after;
    shmheap_t *h;

    start(TRIM_CFG);
    h = attach_ok();
    live_make(h, &live);
    churn(h, (unsigned) test_scaled(20000, 4), 1024);
    before = committed(h);
    ck_assert_int_eq(shmheap_trim(h, 100), 0);
    after = committed(h);
    ck_assert_msg(after + (UINT64_C(2) << 20) <= before,
                  "committed bytes did not fall: %" PRIu64 " -> %" PRIu64, before, after);
    ck_assert_uint_eq(cached_total(h), 0);
    live_check_free(h, &live);
    churn(h, 1000, 1024); /* and allocation carries on */
    shmheap_detach(h);
    finish();
}
END_TEST

struct busy {
    shmheap_t *h;
    volatile int stop;
    uint64_t ops;
};

static void *busy_main(void *arg)
{
    struct busy *b = arg;
    void *live[256] = {0};
    size_t size[256] = {0};
    uint64_t rng = 99;

    while (!b->stop) {
        unsigned k = (unsigned) (test_rand(&rng) % 256);

        if (live[k]) {
            MP_REQUIRE(mp_check_sparse(live[k], size[k], mp_tag(1, 1, k)), "busy object %u", k);
            shmheap_free(b->h, live[k]);
        }
        size[k] = mp_rand_size(&rng, 0);
        live[k] = shmheap_malloc(b->h, size[k]);
        MP_REQUIRE(live[k], "busy malloc: %s", strerror(errno));
        mp_fill_sparse(live[k], size[k], mp_tag(1, 1, k));
        b->ops++;
    }
    for (unsigned k = 0; k < 256; k++)
        shmheap_free(b->h, live[k]);
    return NULL;
}

START_TEST(client_trim_busy)
{
    struct live_set live;
    struct busy b = {0};
    pthread_t th;
    shmheap_t *h;

    start(TRIM_CFG);
    h = attach_ok();
    b.h = h;
    live_make(h, &live);
    ck_assert_int_eq(pthread_create(&th, NULL, busy_main, &b), 0);
    for (unsigned i = 0; i < 10; i++) {
        churn(h, 2000, 512);
        ck_assert_int_eq(shmheap_trim(h, 20), 0);
    }
    b.stop = 1;
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_uint_gt(b.ops, 0);
    live_check_free(h, &live);
    ck_assert_int_eq(shmheap_trim(h, 100), 0);
    ck_assert_uint_eq(cached_total(h), 0);
    shmheap_detach(h);
    finish();
}
END_TEST

struct sleeper {
    shmheap_t *h;
    int ready[2];
    unsigned sleep_s;
};

static void *sleeper_main(void *arg)
{
    struct sleeper *s = arg;
    void *v[2000];

    for (unsigned i = 0; i < 2000; i++) {
        v[i] = shmheap_malloc(s->h, 256);
        MP_REQUIRE(v[i], "malloc");
    }
    for (unsigned i = 0; i < 2000; i++)
        shmheap_free(s->h, v[i]);
    pipe_put(s->ready[1]);
    sleep(s->sleep_s); /* blocked, holding a full cache, through the trim */
    /* Awake: the cache was drained under us; allocation must still work. */
    for (unsigned i = 0; i < 2000; i++) {
        v[i] = shmheap_malloc(s->h, 256);
        MP_REQUIRE(v[i], "malloc after the trim");
        mp_fill(v[i], 256, mp_tag(2, 2, i));
    }
    for (unsigned i = 0; i < 2000; i++) {
        MP_REQUIRE(mp_check(v[i], 256, mp_tag(2, 2, i)) == SIZE_MAX, "object %u after trim", i);
        shmheap_free(s->h, v[i]);
    }
    return NULL;
}

START_TEST(client_trim_sleeper)
{
    struct sleeper s = {.sleep_s = 2};
    struct live_set live;
    uint64_t before, after;
    pthread_t th;

    start(TRIM_CFG);
    s.h = attach_ok();
    live_make(s.h, &live);
    ck_assert_int_eq(pipe(s.ready), 0);
    ck_assert_int_eq(pthread_create(&th, NULL, sleeper_main, &s), 0);
    pipe_get(s.ready[0]);
    mp_sleep_ms(50); /* into sleep() */
    ck_assert_uint_gt(cached_of(s.h, 256), 0);
    before = committed(s.h);
    ck_assert_int_eq(shmheap_trim(s.h, 100), 0);
    after = committed(s.h);
    ck_assert_uint_eq(cached_of(s.h, 256), 0); /* the sleeper's cache was drained */
    ck_assert_msg(after < before, "committed bytes did not fall: %" PRIu64 " -> %" PRIu64, before,
                  after);
    live_check_free(s.h, &live);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    shmheap_detach(s.h);
    finish();
}
END_TEST

/* ---- config reaches running clients ---- */

/* Frees n objects of 64 bytes in a row: the cache keeps at most its
 * bin's cap of them and passes the rest on in bundles. */
static uint64_t cached_after_burst(shmheap_t *h, unsigned n)
{
    void **v = calloc(n, sizeof(*v));
    uint64_t c;

    for (unsigned i = 0; i < n; i++)
        v[i] = shmheap_malloc(h, 64);
    for (unsigned i = 0; i < n; i++)
        shmheap_free(h, v[i]);
    free(v);
    c = cached_of(h, 64);
    shmheap_thread_flush(h);
    return c;
}

START_TEST(client_config_reaches_clients)
{
    shmheap_t *h;
    uint64_t c;
    cJSON *r;

    start(NULL);
    h = attach_ok();
    c = cached_after_burst(h, 1000);
    ck_assert_uint_gt(c, 16); /* defaults: bundles of 64, bins of 128 */

    r = fixture_op(&fx, "{\"op\":\"config.set\",\"key\":\"bundle_objects\",\"value\":8}");
    ck_assert_msg(reply_is_ok(r), "config.set bundle_objects refused");
    cJSON_Delete(r);
    r = fixture_op(&fx, "{\"op\":\"config.set\",\"key\":\"thread_cache_bytes\",\"value\":16384}");
    ck_assert_msg(reply_is_ok(r), "config.set thread_cache_bytes refused");
    ck_assert_uint_eq(ju64(cJSON_GetObjectItemCaseSensitive(r, "config"), "thread_cache_bytes"),
                      16384);
    cJSON_Delete(r);

    /* Threads re-read the config at a coarse cadence (every few thousand
     * operations), never on the fast path. */
    for (unsigned i = 0; i < 10000; i++)
        shmheap_free(h, shmheap_malloc(h, 32));
    c = cached_after_burst(h, 1000);
    ck_assert_msg(c <= 16,
                  "cache holds %" PRIu64 " objects of 64 bytes; bundle_objects 8 "
                  "allows 16",
                  c);

    r = fixture_op(&fx, "{\"op\":\"config.get\",\"key\":\"bundle_objects\"}");
    ck_assert(reply_is_ok(r));
    ck_assert_uint_eq(ju64(cJSON_GetObjectItemCaseSensitive(r, "config"), "bundle_objects"), 8);
    cJSON_Delete(r);
    /* Out of bounds: refused, nothing changes. */
    r = fixture_op(&fx, "{\"op\":\"config.set\",\"key\":\"bundle_objects\",\"value\":100000}");
    ck_assert(!reply_is_ok(r));
    cJSON_Delete(r);
    shmheap_detach(h);
    finish();
}
END_TEST

Suite *client_suite(void)
{
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("api");

    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, client_attach_basic);
    tcase_add_test(tc, client_attach_no_daemon);
    tcase_add_test(tc, client_daemon_goes_away);
    tcase_add_test(tc, client_attach_bad_daemon);
    tcase_add_test(tc, client_attach_denied);
    tcase_add_test(tc, client_roots);
    tcase_add_test(tc, client_arenas);
    tcase_add_test(tc, client_pools);
    tcase_add_test(tc, client_fork_child_uses_parent_handle);
    tcase_add_test(tc, client_thread_exit_flushes_cache);
    suite_add_tcase(s, tc);

    tc = tcase_create("processes");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, client_four_processes_cross_free);
    tcase_add_test(tc, client_heap_full);
    tcase_add_test(tc, client_heap_grows);
    suite_add_tcase(s, tc);

    tc = tcase_create("death");
    tcase_set_timeout(tc, storm_rounds() > 100 ? 1800 : 300);
    tcase_add_test(tc, client_killed_mid_storm);
    suite_add_tcase(s, tc);

    tc = tcase_create("trim");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, client_trim_idle);
    tcase_add_test(tc, client_trim_busy);
    tcase_add_test(tc, client_trim_sleeper);
    suite_add_tcase(s, tc);

    tc = tcase_create("config");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, client_config_reaches_clients);
    suite_add_tcase(s, tc);
    return s;
}
