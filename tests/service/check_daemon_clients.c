/* Clients that attach (raw protocol + heap_attach from shm/, as libshmheap
 * will), die, detach, or scribble on the heap's metadata. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/atomic.h"
#include "shm/heap.h"
#include "shm/layout.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/fixture.h"
#include "tests/service/suites.h"

/* ---- a minimal client: hello, then heap_attach with hooks that ask the
 * daemon (segment, grow) on the same connection ---- */

struct raw_client {
    int sock;
    int fds[SHM_MAX_SEGMENTS];
    uint64_t client_id;
    struct heap *h;
    pthread_mutex_t lock; /* the connection: one request at a time */
};

static int rc_fd_for(struct raw_client *rc, uint32_t index, const char *line)
{
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, fd = -EPROTO;
    cJSON *r;

    pthread_mutex_lock(&rc->lock);
    if (!line) {
        /* Only what we hold already. */
        fd = index < SHM_MAX_SEGMENTS && rc->fds[index] >= 0
                     ? fcntl(rc->fds[index], F_DUPFD_CLOEXEC, 3)
                     : -ENOENT;
        pthread_mutex_unlock(&rc->lock);
        return fd;
    }
    r = daemon_call(rc->sock, line, fds, &nfds);
    if (r && reply_is_ok(r) && nfds == 1) {
        const cJSON *seg = cJSON_GetObjectItemCaseSensitive(r, "segment");
        int i = cJSON_GetObjectItemCaseSensitive(seg, "index")->valueint;

        if (i >= 0 && i < (int) SHM_MAX_SEGMENTS && rc->fds[i] < 0)
            rc->fds[i] = fds[0];
        else
            (void) close(fds[0]);
        fd = 0;
    } else if (r && !reply_is_ok(r)) {
        fd = strcmp(reply_error_code(r), "heap_full") == 0 ? -ENOSPC : -ENOENT;
    }
    cJSON_Delete(r);
    pthread_mutex_unlock(&rc->lock);
    return fd;
}

static int rc_open_segment(void *ctx, uint32_t index)
{
    struct raw_client *rc = ctx;
    char line[64];
    int r;

    r = rc_fd_for(rc, index, NULL);
    if (r >= 0 || index >= SHM_MAX_SEGMENTS)
        return r;
    (void) snprintf(line, sizeof(line), "{\"op\":\"segment\",\"index\":%u}", index);
    r = rc_fd_for(rc, index, line);
    return r < 0 ? r : rc_fd_for(rc, index, NULL);
}

static int rc_grow(void *ctx, uint64_t min_bytes)
{
    struct raw_client *rc = ctx;
    char line[128];

    (void) snprintf(line, sizeof(line), "{\"op\":\"grow\",\"min_bytes\":%llu,\"seen\":%u}",
                    (unsigned long long) min_bytes, load_acquire(&heap_ctl(rc->h)->nsegments));
    return rc_fd_for(rc, 0, line) < 0 ? -ENOSPC : 0;
}

/* Attaches; returns 0 or a negative errno. */
static int rc_attach(const char *sock, struct raw_client *rc)
{
    struct heap_hooks hooks = {.ctx = rc, .open_segment = rc_open_segment, .grow = rc_grow};
    int fds[DAEMON_FIXTURE_MAX_FDS], nfds = 0, i = 0;
    const cJSON *seg;
    cJSON *r;

    memset(rc, 0, sizeof(*rc));
    pthread_mutex_init(&rc->lock, NULL);
    for (unsigned k = 0; k < SHM_MAX_SEGMENTS; k++)
        rc->fds[k] = -1;
    rc->sock = daemon_connect(sock);
    if (rc->sock < 0)
        return rc->sock;
    r = fixture_hello(rc->sock, fds, &nfds);
    if (!r || !reply_is_ok(r)) {
        cJSON_Delete(r);
        return -EPROTO;
    }
    rc->client_id = (uint64_t) cJSON_GetObjectItemCaseSensitive(r, "client_id")->valuedouble;
    cJSON_ArrayForEach(seg, cJSON_GetObjectItemCaseSensitive(r, "segments"))
    {
        int index = cJSON_GetObjectItemCaseSensitive(seg, "index")->valueint;

        if (i < nfds && index >= 0 && index < (int) SHM_MAX_SEGMENTS)
            rc->fds[index] = fds[i];
        i++;
    }
    cJSON_Delete(r);
    if (rc->fds[0] < 0)
        return -EPROTO;
    return heap_attach(rc->fds[0], &hooks, rc->client_id, &rc->h);
}

/* Sends the child's findings to the parent: a line of numbers. */
static void tell(int fd, unsigned long long a, unsigned long long b, unsigned long long c)
{
    char buf[128];
    int n = snprintf(buf, sizeof(buf), "%llu %llu %llu\n", a, b, c);

    if (write(fd, buf, (size_t) n) != n)
        _exit(80);
}

static void hear(int fd, unsigned long long *a, unsigned long long *b, unsigned long long *c)
{
    char buf[128] = {0};
    ssize_t n = 0;

    while (n < (ssize_t) sizeof(buf) - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t k;

        ck_assert_msg(poll(&p, 1, daemon_test_ms(10000)) == 1, "no word from the child");
        k = read(fd, buf + n, 1);

        ck_assert_msg(k == 1, "the child died before it reported");
        if (buf[n] == '\n')
            break;
        n++;
    }
    ck_assert_int_eq(sscanf(buf, "%llu %llu %llu", a, b, c), 3);
}

static int blocker[2];

static void *second_thread(void *arg)
{
    struct heap *h = arg;
    char c;

    for (int i = 0; i < 100; i++)
        (void) heap_malloc(h, 48);
    /* Stay alive with our cache until the process is killed. */
    while (read(blocker[0], &c, 1) < 0 && errno == EINTR)
        ;
    return NULL;
}

/* In the child: attach, allocate from two threads (two slots), keep some
 * objects in the caches, make a SESSION and a plain arena, report them. */
static void child_work(const char *sock, int report, bool close_socket)
{
    struct raw_client rc;
    uint64_t session, plain;
    pthread_t t;
    void *p[500];

    if (rc_attach(sock, &rc) < 0)
        _exit(70);
    for (int i = 0; i < 500; i++)
        p[i] = heap_malloc(rc.h, (size_t) (16 + (i % 40) * 24));
    for (int i = 0; i < 500; i += 2)
        heap_free(rc.h, p[i]); /* into this thread's cache */
    if (heap_arena_create(rc.h, 1 << 20, HEAP_ARENA_SESSION, &session) < 0 ||
        heap_arena_create(rc.h, 1 << 20, 0, &plain) < 0)
        _exit(71);
    if (!heap_arena_alloc(rc.h, session, 1000, 16))
        _exit(72);
    if (pipe(blocker) < 0 || pthread_create(&t, NULL, second_thread, rc.h) != 0)
        _exit(73);
    (void) usleep(100000); /* let the thread take its slot */
    if (close_socket)
        (void) close(rc.sock); /* a hang-up without detach or exit */
    tell(report, session, plain, rc.client_id);
    for (;;)
        pause();
}

static const cJSON *clients_of(cJSON *r)
{
    ck_assert(r && reply_is_ok(r));
    return cJSON_GetObjectItemCaseSensitive(r, "clients");
}

/* Slots still tagged with client_id in the control segment (through an
 * attachment of the test's own). */
static int slots_of(struct heap *h, uint64_t client_id)
{
    struct ctl_header *c = heap_ctl(h);
    int n = 0;

    for (unsigned i = 0; i < SHM_MAX_SLOTS; i++)
        if (load_acquire(&c->slots[i].state) == SLOT_OWNED &&
            load_relaxed(&c->slots[i].client_id) == client_id)
            n++;
    return n;
}

START_TEST(clients_sigkill_reclaim)
{
    unsigned long long session, plain, id;
    struct daemon_fixture f;
    struct raw_client me;
    struct arena_stats as;
    const cJSON *list, *c;
    char want[128];
    int pfd[2], st;
    pid_t pid;
    cJSON *r;

    fixture_start(&f, NULL);
    ck_assert_int_eq(pipe(pfd), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        (void) close(pfd[0]);
        child_work(f.socket_path, pfd[1], false);
    }
    (void) close(pfd[1]);
    hear(pfd[0], &session, &plain, &id);
    (void) close(pfd[0]);
    /* The client is listed with its two threads and what they allocated. */
    r = daemon_call_once(f.socket_path, "{\"op\":\"clients\"}");
    list = clients_of(r);
    ck_assert_int_eq(cJSON_GetArraySize(list), 1);
    c = cJSON_GetArrayItem(list, 0);
    ck_assert_uint_eq((uint64_t) cJSON_GetObjectItemCaseSensitive(c, "client_id")->valuedouble, id);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(c, "pid")->valueint, pid);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(c, "threads")->valueint, 2);
    ck_assert(cJSON_GetObjectItemCaseSensitive(c, "bytes_allocated")->valuedouble > 1000);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "attached")));
    cJSON_Delete(r);

    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    (void) snprintf(want, sizeof(want),
                    "client %llu (pid %d) exited: reclaimed 2 thread caches, destroyed 1 session "
                    "arenas",
                    id, (int) pid);
    ck_assert_msg(daemon_log_wait(&f, want, daemon_test_ms(5000)), "log lacks \"%s\"", want);
    r = daemon_call_once(f.socket_path, "{\"op\":\"clients\"}");
    ck_assert_int_eq(cJSON_GetArraySize(clients_of(r)), 0);
    cJSON_Delete(r);
    r = daemon_call_once(f.socket_path, "{\"op\":\"stats\"}");
    ck_assert(reply_is_ok(r));
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "stats"),
                                                      "clients")
                             ->valueint,
                     0);
    cJSON_Delete(r);
    /* Through an attachment of our own: no slot is left with its id, the
     * SESSION arena is gone, the plain one is not, the heap verifies. */
    ck_assert_int_eq(rc_attach(f.socket_path, &me), 0);
    ck_assert_int_eq(slots_of(me.h, id), 0);
    ck_assert_int_lt(heap_arena_stats(me.h, session, &as), 0);
    ck_assert_int_eq(heap_arena_stats(me.h, plain, &as), 0);
    r = daemon_call_once(f.socket_path, "{\"op\":\"verify\"}");
    ck_assert(reply_is_ok(r));
    ck_assert_msg(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "consistent")), "%s",
                  cJSON_PrintUnformatted(r));
    cJSON_Delete(r);
    heap_detach(me.h);
    (void) close(me.sock);
    fixture_stop(&f);
}
END_TEST

/* A hang-up while the process lives is a detach: the client stays listed
 * (not attached) with what it left; its exit reclaims it. */
START_TEST(clients_detach_then_exit)
{
    unsigned long long session, plain, id;
    struct daemon_fixture f;
    const cJSON *list, *c;
    char want[128];
    int pfd[2], st;
    pid_t pid;
    cJSON *r;

    fixture_start(&f, NULL);
    ck_assert_int_eq(pipe(pfd), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        (void) close(pfd[0]);
        child_work(f.socket_path, pfd[1], true);
    }
    (void) close(pfd[1]);
    hear(pfd[0], &session, &plain, &id);
    (void) close(pfd[0]);
    (void) snprintf(want, sizeof(want), "client %llu (pid %d) detached", id, (int) pid);
    ck_assert_msg(daemon_log_wait(&f, want, daemon_test_ms(3000)), "log lacks \"%s\"", want);
    r = daemon_call_once(f.socket_path, "{\"op\":\"clients\"}");
    list = clients_of(r);
    ck_assert_int_eq(cJSON_GetArraySize(list), 1);
    c = cJSON_GetArrayItem(list, 0);
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "attached")));
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(c, "threads")->valueint, 2);
    cJSON_Delete(r);
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    (void) snprintf(want, sizeof(want),
                    "client %llu (pid %d) exited: reclaimed 2 thread caches, destroyed 1 session",
                    id, (int) pid);
    ck_assert_msg(daemon_log_wait(&f, want, daemon_test_ms(5000)), "log lacks \"%s\"", want);
    r = daemon_call_once(f.socket_path, "{\"op\":\"clients\"}");
    ck_assert_int_eq(cJSON_GetArraySize(clients_of(r)), 0);
    cJSON_Delete(r);
    fixture_stop(&f);
}
END_TEST

/* A clean detach (caches flushed, slots released) and exit: nothing left. */
START_TEST(clients_clean_detach)
{
    struct daemon_fixture f;
    char detached[64];
    int st;
    pid_t pid;
    cJSON *r;

    fixture_start(&f, NULL);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct raw_client rc;
        void *p[100];

        if (rc_attach(f.socket_path, &rc) < 0)
            _exit(70);
        for (int i = 0; i < 100; i++)
            p[i] = heap_malloc(rc.h, 100);
        for (int i = 0; i < 100; i++)
            heap_free(rc.h, p[i]);
        heap_detach(rc.h);
        (void) close(rc.sock);
        _exit(0);
    }
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* The daemon saw the exit first (nothing to reclaim), or the hang-up
     * first: then the detach left nothing, and the record went at once. */
    (void) snprintf(detached, sizeof(detached), "(pid %d) detached\n", (int) pid);
    for (int i = 0;; i++) {
        char *log = daemon_log(&f);
        bool seen = strstr(log, "exited: reclaimed 0 thread caches, destroyed 0 session") ||
                    strstr(log, detached);

        free(log);
        if (seen)
            break;
        ck_assert_msg(i < daemon_test_ms(5000) / 10, "neither exit nor detach logged");
        (void) usleep(10000);
    }
    r = daemon_call_once(f.socket_path, "{\"op\":\"clients\"}");
    ck_assert_int_eq(cJSON_GetArraySize(clients_of(r)), 0);
    ck_assert_int_eq(cJSON_GetObjectItemCaseSensitive(r, "processes_watched")->valueint, 0);
    cJSON_Delete(r);
    r = daemon_call_once(f.socket_path, "{\"op\":\"verify\"}");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "consistent")));
    cJSON_Delete(r);
    fixture_stop(&f);
}
END_TEST

/* Several clients die at once; each is reclaimed. A client that grows the
 * heap by allocating more than a segment holds gets the new segment. */
START_TEST(clients_many_and_grow)
{
    enum { N = 6 };
    struct daemon_fixture f;
    pid_t pids[N];
    int pfd[2];
    cJSON *r;

    fixture_start(&f, NULL);
    ck_assert_int_eq(pipe(pfd), 0);
    for (int k = 0; k < N; k++) {
        pids[k] = fork();
        ck_assert_int_ge(pids[k], 0);
        if (pids[k] == 0) {
            struct raw_client rc;

            if (rc_attach(f.socket_path, &rc) < 0)
                _exit(70);
            if (k == 0) {
                /* 80 MiB in one piece: more than the 64 MiB segment. */
                if (!heap_malloc(rc.h, 80u << 20))
                    _exit(74);
            }
            for (int i = 0; i < 200; i++)
                (void) heap_malloc(rc.h, 64);
            tell(pfd[1], (unsigned long long) k, 0, 0);
            for (;;)
                pause();
        }
    }
    (void) close(pfd[1]);
    for (int k = 0; k < N; k++) {
        unsigned long long a, b, c;
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};

        if (poll(&p, 1, daemon_test_ms(10000)) != 1)
            for (int i = 0; i < N; i++) {
                int st;

                if (waitpid(pids[i], &st, WNOHANG) == pids[i])
                    ck_abort_msg("child %d ended early: status 0x%x", i, st);
            }
        hear(pfd[0], &a, &b, &c);
    }
    (void) close(pfd[0]);
    r = daemon_call_once(f.socket_path, "{\"op\":\"segments\"}");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "segments")), 2);
    cJSON_Delete(r);
    r = daemon_call_once(f.socket_path, "{\"op\":\"clients\"}");
    ck_assert_int_eq(cJSON_GetArraySize(clients_of(r)), N);
    cJSON_Delete(r);
    for (int k = 0; k < N; k++) {
        int st;

        (void) kill(pids[k], SIGKILL);
        (void) waitpid(pids[k], &st, 0);
    }
    for (int tries = 0;; tries++) {
        bool empty;

        r = daemon_call_once(f.socket_path, "{\"op\":\"clients\"}");
        empty = cJSON_GetArraySize(clients_of(r)) == 0;
        cJSON_Delete(r);
        if (empty)
            break;
        ck_assert_int_lt(tries, daemon_test_ms(5000) / 10);
        (void) usleep(10000);
    }
    r = daemon_call_once(f.socket_path, "{\"op\":\"verify\"}");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "consistent")));
    cJSON_Delete(r);
    fixture_stop(&f);
}
END_TEST

/* Any attached process can write the control segment. The daemon must
 * answer every op and stay up whatever it finds there. */
START_TEST(clients_bad_metadata)
{
    static const char *const ops[] = {
            "{\"op\":\"stats\"}",   "{\"op\":\"segments\"}",
            "{\"op\":\"clients\"}", "{\"op\":\"trim\",\"wait_ms\":0}",
            "{\"op\":\"verify\"}",  "{\"op\":\"config.get\"}",
    };
    struct daemon_fixture f;
    int pfd[2], st;
    pid_t pid;

    fixture_start(&f, NULL);
    ck_assert_int_eq(pipe(pfd), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct raw_client rc;
        struct ctl_header *c;
        struct cache_slot *s = NULL;

        if (rc_attach(f.socket_path, &rc) < 0)
            _exit(70);
        (void) heap_malloc(rc.h, 32);
        c = heap_ctl(rc.h);
        for (unsigned i = 0; i < SHM_MAX_SLOTS && !s; i++)
            if (c->slots[i].state == SLOT_OWNED && c->slots[i].client_id == rc.client_id)
                s = &c->slots[i];
        if (!s)
            _exit(75);
        /* Garbage where the daemon will look. */
        s->bins[3].head = UINT64_C(0x123456789);
        s->bins[3].net = 7;
        s->bins[5].head = (UINT64_C(1) << SHM_SEG_SHIFT) | 0x10;
        s->large_bytes_alloc = UINT64_MAX / 3;
        c->segs[7].size = UINT64_C(1) << 40;
        c->segs[7].page_size = 3;
        c->rec[2].head.s.off = UINT64_C(0xdeadbeef0);
        c->trim_gen = UINT64_MAX - 1;
        store_release(&c->nsegments, 200);
        tell(pfd[1], 0, 0, 0);
        for (;;)
            pause();
    }
    (void) close(pfd[1]);
    {
        unsigned long long a, b, c;

        hear(pfd[0], &a, &b, &c);
    }
    (void) close(pfd[0]);
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
            cJSON *r = daemon_call_once(f.socket_path, ops[i]);

            ck_assert_msg(r != NULL, "no answer to %s", ops[i]);
            cJSON_Delete(r);
        }
        /* The client dies: its garbage slot is reclaimed. */
        if (round == 0) {
            (void) kill(pid, SIGKILL);
            (void) waitpid(pid, &st, 0);
            ck_assert(daemon_log_wait(&f, "exited", daemon_test_ms(5000)));
        }
    }
    ck_assert_int_eq(kill(f.pid, 0), 0);
    fixture_stop(&f);
}
END_TEST

Suite *daemon_clients_suite(void)
{
    Suite *s = suite_create("daemon_clients");
    TCase *tc = tcase_create("clients");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, clients_sigkill_reclaim);
    tcase_add_test(tc, clients_detach_then_exit);
    tcase_add_test(tc, clients_clean_detach);
    tcase_add_test(tc, clients_many_and_grow);
    tcase_add_test(tc, clients_bad_metadata);
    suite_add_tcase(s, tc);
    return s;
}
