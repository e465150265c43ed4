/* Helpers for the multi-process suites; see mptest.h. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/internal.h"
#include "tests/common/mptest.h"
#include "tests/common/testheap.h"

void *mp_shared_alloc(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    ck_assert_msg(p != MAP_FAILED, "mmap shared %zu bytes: %s", size, strerror(errno));
    return p;
}

void mp_shared_free(void *p, size_t size)
{
    if (p)
        (void) munmap(p, size);
}

void mp_fail(const char *file, int line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    (void) vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s:%d: child %d: %s\n", file, line, (int) getpid(), msg);
    _exit(MP_EXIT_FAIL);
}

pid_t mp_fork(int (*fn)(void *arg, unsigned idx), void *arg, unsigned idx)
{
    pid_t pid;

    fflush(NULL);
    pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0)
        _exit(fn(arg, idx));
    return pid;
}

int mp_wait(pid_t pid)
{
    int status = 0;
    pid_t r;

    do
        r = waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    ck_assert_msg(r == pid, "waitpid(%d): %s", (int) pid, strerror(errno));
    return status;
}

const char *mp_status_str(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        (void) snprintf(buf, len, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        (void) snprintf(buf, len, "signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        (void) snprintf(buf, len, "status %#x", (unsigned) status);
    return buf;
}

void mp_wait_ok(pid_t pid, const char *what)
{
    int status = mp_wait(pid);
    char buf[64];

    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s (pid %d): %s", what, (int) pid,
                  mp_status_str(status, buf, sizeof(buf)));
}

static void print_threads(pid_t pid)
{
    char path[320], line[256];
    DIR *d;
    struct dirent *e;

    (void) snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
    d = opendir(path);
    if (!d)
        return;
    while ((e = readdir(d)) != NULL) {
        FILE *f;

        if (e->d_name[0] == '.')
            continue;
        (void) snprintf(path, sizeof(path), "/proc/%d/task/%s/syscall", (int) pid, e->d_name);
        f = fopen(path, "r");
        if (f && fgets(line, sizeof(line), f))
            fprintf(stderr, "  thread %s: syscall %s", e->d_name, line);
        if (f)
            (void) fclose(f);
    }
    (void) closedir(d);
}

void mp_wait_ok_bounded(pid_t pid, unsigned seconds, const char *what)
{
    char buf[64];
    int status = 0;

    for (unsigned ms = 0; ms < seconds * 1000u; ms += 10) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        ck_assert_msg(r >= 0, "waitpid(%d): %s", (int) pid, strerror(errno));
        if (r == pid) {
            ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s (pid %d): %s", what,
                          (int) pid, mp_status_str(status, buf, sizeof(buf)));
            return;
        }
        mp_sleep_ms(10);
    }
    fprintf(stderr, "%s (pid %d) still running after %u s; its threads:\n", what, (int) pid,
            seconds);
    print_threads(pid);
    (void) kill(pid, SIGKILL);
    (void) waitpid(pid, NULL, 0);
    ck_abort_msg("%s (pid %d) deadlocked: still running %u s after it was told to stop (see "
                 "stderr)",
                 what, (int) pid, seconds);
}

void mp_wait_all_ok(const pid_t *pids, unsigned n, const char *what)
{
    bool *done = calloc(n, sizeof(*done));
    char buf[64];

    ck_assert_ptr_nonnull(done);
    for (unsigned left = n; left > 0; left--) {
        int status = 0;
        unsigned i;
        pid_t r;

        do
            r = waitpid(-1, &status, 0);
        while (r < 0 && errno == EINTR);
        ck_assert_msg(r > 0, "waitpid: %s", strerror(errno));
        for (i = 0; i < n && pids[i] != r; i++)
            ;
        if (i == n)
            continue; /* not one of these */
        done[i] = true;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            continue;
        for (unsigned k = 0; k < n; k++)
            if (!done[k]) {
                (void) kill(pids[k], SIGKILL);
                (void) waitpid(pids[k], NULL, 0);
            }
        free(done);
        ck_abort_msg("%s %u (pid %d): %s", what, i, (int) r,
                     mp_status_str(status, buf, sizeof(buf)));
    }
    free(done);
}

void mp_wait_signaled(pid_t pid, int sig, const char *what)
{
    int status = mp_wait(pid);
    char buf[64];

    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == sig,
                  "%s (pid %d): expected signal %d, got %s", what, (int) pid, sig,
                  mp_status_str(status, buf, sizeof(buf)));
}

void mp_sleep_us(unsigned us)
{
    struct timespec ts = {.tv_sec = us / 1000000u, .tv_nsec = (long) (us % 1000000u) * 1000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

void mp_sleep_ms(unsigned ms)
{
    mp_sleep_us(ms * 1000u);
}

/* ---- patterns ---- */

static inline uint64_t pat_word(uint64_t tag, uint64_t i)
{
    uint64_t x = (tag + 1) * UINT64_C(0x9e3779b97f4a7c15) ^ (i * UINT64_C(0xbf58476d1ce4e5b9));

    return x ^ (x >> 29);
}

void mp_fill(void *p, size_t size, uint64_t tag)
{
    uint64_t *w = p;
    size_t nw = size / 8;
    unsigned char *tail = (unsigned char *) p + nw * 8;

    for (size_t i = 0; i < nw; i++)
        w[i] = pat_word(tag, i);
    for (size_t i = 0; i < size % 8; i++)
        tail[i] = (unsigned char) (pat_word(tag, nw) >> (8 * i));
}

size_t mp_check(const void *p, size_t size, uint64_t tag)
{
    const uint64_t *w = p;
    size_t nw = size / 8;
    const unsigned char *tail = (const unsigned char *) p + nw * 8;

    for (size_t i = 0; i < nw; i++)
        if (w[i] != pat_word(tag, i))
            return i * 8;
    for (size_t i = 0; i < size % 8; i++)
        if (tail[i] != (unsigned char) (pat_word(tag, nw) >> (8 * i)))
            return nw * 8 + i;
    return SIZE_MAX;
}

void mp_fill_sparse(void *p, size_t size, uint64_t tag)
{
    uint64_t *w = p;
    size_t nw = size / 8;

    w[0] = pat_word(tag, 0);
    w[nw / 2] = pat_word(tag, nw / 2);
    w[nw - 1] = pat_word(tag, nw - 1);
}

bool mp_check_sparse(const void *p, size_t size, uint64_t tag)
{
    const uint64_t *w = p;
    size_t nw = size / 8;

    return w[0] == pat_word(tag, 0) && w[nw / 2] == pat_word(tag, nw / 2) &&
           w[nw - 1] == pat_word(tag, nw - 1);
}

size_t mp_rand_size(uint64_t *rng, unsigned large_one_in)
{
    uint64_t r = test_rand(rng);

    if (large_one_in && r % large_one_in == 0)
        return 32768 + 1 + (size_t) ((r >> 16) % (256 * 1024 - 32768));
    switch ((r >> 8) & 3) {
    case 0:
    case 1:
        return 16 + (size_t) ((r >> 16) % 241); /* 16..256 */
    case 2:
        return 16 + (size_t) ((r >> 16) % 1009); /* ..1024 */
    default:
        return 16 + (size_t) ((r >> 16) % 4081); /* ..4096 */
    }
}

/* ---- inbox ---- */

size_t mp_inbox_bytes(uint32_t cap)
{
    return sizeof(struct mp_inbox) + (size_t) cap * sizeof(struct mp_obj);
}

void mp_inbox_init(struct mp_inbox *b, uint32_t cap)
{
    pthread_mutexattr_t attr;

    memset(b, 0, sizeof(*b));
    b->cap = cap;
    ck_assert_int_eq(pthread_mutexattr_init(&attr), 0);
    ck_assert_int_eq(pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED), 0);
    ck_assert_int_eq(pthread_mutex_init(&b->lock, &attr), 0);
    (void) pthread_mutexattr_destroy(&attr);
}

bool mp_inbox_send(struct mp_inbox *b, const struct mp_obj *m)
{
    bool ok = false;

    MP_REQUIRE(pthread_mutex_lock(&b->lock) == 0, "inbox lock");
    if (b->count < b->cap) {
        b->msgs[(b->head + b->count) % b->cap] = *m;
        b->count++;
        b->sent++;
        ok = true;
    }
    (void) pthread_mutex_unlock(&b->lock);
    return ok;
}

uint32_t mp_inbox_recv(struct mp_inbox *b, struct mp_obj *out, uint32_t max)
{
    uint32_t n = 0;

    MP_REQUIRE(pthread_mutex_lock(&b->lock) == 0, "inbox lock");
    while (n < max && b->count > 0) {
        out[n++] = b->msgs[b->head];
        b->head = (b->head + 1) % b->cap;
        b->count--;
        b->received++;
    }
    (void) pthread_mutex_unlock(&b->lock);
    return n;
}

void mp_inbox_destroy(struct mp_inbox *b)
{
    (void) pthread_mutex_destroy(&b->lock);
}

/* ---- TSan ---- */

#if defined(__SANITIZE_THREAD__)
static void tsan_heap_sync(struct heap *h, const void *obj, void (*op)(void *))
{
    op((void *) obj);
    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        op(&h->ctl->rec[c].head);
    for (uint32_t i = 1; i < load_acquire(&h->nmapped); i++)
        if (load_acquire(&h->segs[i].meta))
            op(&h->segs[i].hdr->lock);
}
#endif

void mp_tsan_send(struct heap *h, const void *obj)
{
#if defined(__SANITIZE_THREAD__)
    tsan_heap_sync(h, obj, __tsan_release);
#else
    (void) h;
    (void) obj;
#endif
}

void mp_tsan_receive(struct heap *h, const void *obj)
{
#if defined(__SANITIZE_THREAD__)
    tsan_heap_sync(h, obj, __tsan_acquire);
#else
    (void) h;
    (void) obj;
#endif
}

/* ---- verification ---- */

bool mp_verify(struct heap *h, bool *ret_counts_checked)
{
    struct verify_report rep;
    int r = heap_verify(h, &rep);

    if (r < 0) {
        fprintf(stderr, "heap_verify: %s\n", strerror(-r));
        return false;
    }
    for (uint32_t i = 0; i < rep.nproblems && i < 16; i++)
        fprintf(stderr, "verify: %s\n", rep.problems[i]);
    if (rep.nproblems > 16)
        fprintf(stderr, "verify: ... %u problems in all\n", rep.nproblems);
    if (ret_counts_checked)
        *ret_counts_checked = rep.counts_checked;
    return rep.consistent;
}

uint64_t mp_blocks_not_free(struct heap *h)
{
    struct heap_stats st;
    uint64_t n = 0;

    ck_assert_int_eq(heap_stats(h, &st), 0);
    for (uint32_t i = 0; i < st.nsegments; i++) {
        uint64_t header = (st.segs[i].metadata_bytes + SHM_BLOCK_SIZE - 1) >> SHM_BLOCK_SHIFT;

        n += (st.segs[i].size >> SHM_BLOCK_SHIFT) - header - st.segs[i].free_blocks;
    }
    return n;
}

/* ---- checker ---- */

static int obj_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct mp_obj *) a)->off, y = ((const struct mp_obj *) b)->off;

    return x < y ? -1 : x > y;
}

#define CHECK_REPORT_MAX 20

unsigned mp_check_live(struct heap *h, struct mp_obj *objs, size_t n, uint64_t *ret_usable)
{
    unsigned problems = 0;
    uint64_t usable_total = 0, prev_end = 0, prev_off = 0;

#define PROBLEM(...)                                  \
    do {                                              \
        if (problems++ < CHECK_REPORT_MAX)            \
            fprintf(stderr, "checker: " __VA_ARGS__); \
    } while (0)

    if (n > 1)
        qsort(objs, n, sizeof(*objs), obj_cmp);
    for (size_t i = 0; i < n; i++) {
        const struct mp_obj *o = &objs[i];
        void *p = heap_from_off(h, o->off);
        size_t usable, bad;

        if (!p) {
            PROBLEM("object %#" PRIx64 " (tag %#" PRIx64 "): offset outside the heap\n", o->off,
                    o->tag);
            continue;
        }
        usable = heap_usable_size(h, p);
        if (usable < o->size)
            PROBLEM("object %#" PRIx64 " (tag %#" PRIx64 "): usable size %zu < requested %" PRIu64
                    "\n",
                    o->off, o->tag, usable, o->size);
        if (i > 0 && o->off < prev_end)
            PROBLEM("object %#" PRIx64 " (tag %#" PRIx64 ") overlaps the object at %#" PRIx64
                    " which ends at %#" PRIx64 "\n",
                    o->off, o->tag, prev_off, prev_end);
        bad = mp_check(p, o->size, o->tag);
        if (bad != SIZE_MAX)
            PROBLEM("object %#" PRIx64 " (tag %#" PRIx64 ", %" PRIu64
                    " bytes): pattern broken at byte %zu\n",
                    o->off, o->tag, o->size, bad);
        usable_total += usable;
        prev_off = o->off;
        prev_end = o->off + (usable > o->size ? usable : o->size);
    }
#undef PROBLEM
    if (problems > CHECK_REPORT_MAX)
        fprintf(stderr, "checker: ... %u problems in all\n", problems);
    if (ret_usable)
        *ret_usable = usable_total;
    return problems;
}

uint64_t mp_stats_cached(const struct heap_stats *st)
{
    uint64_t n = 0;

    for (unsigned c = 0; c < SHM_NCLASSES; c++)
        n += st->classes[c].cached;
    return n;
}
