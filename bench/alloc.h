/* The allocator under test, chosen at compile time. Included by
 * bench/workloads.c only, which is built once per allocator with
 * -DBENCH_ALLOC_ID=BENCH_ID_<name> ("shmheap-api": BENCH_ID_shmheap_api).
 *
 * Hot path (inline, called from the timed loops):
 *   ba_malloc(c, n), ba_free(c, p)         the allocator's own entry points
 *   ba_to_handle(c, p), ba_from_handle(c, v) what W4 puts on the ring
 * Cold path:
 *   ba_shared_create/_destroy   before forking (shmheap: heap_local_create;
 *                               shmheap-api: nothing, the daemon owns the heap;
 *                               boost: the managed_shared_memory segment)
 *   ba_attach/ba_detach         in each process that allocates (shmheap-api:
 *                               shmheap_attach to the daemon's socket)
 *   ba_info                     version and "does this allocator serve us"
 *   ba_verify                   BENCH_VERIFY=1: shmheap heap_verify, shmheap-api
 *                               the daemon's verify op, boost check_sanity;
 *                               others: nothing
 *   BA_W4_PROCESSES             1: W4 runs producer and consumer as two
 *                               processes, W6 its stages as four; 0: as
 *                               threads of one process
 *   ba_verify_shared            ba_verify from the parent of a run that forked
 * W5b (memory held after a release):
 *   BA_HAS_RELEASE              0: the allocator has no release call (boost)
 *   BA_HELD_IS_RSS              1: ba_held is this process's RssAnon (the
 *                               per-process allocators), 0: the heap's
 *                               shared memory, which no RSS figure shows
 *   ba_release(c)               gives free memory back: shmheap flushes the
 *                               thread's cache and trims (heap_trim,
 *                               shmheap_trim); glibc malloc_trim(0),
 *                               mimalloc mi_collect(true), jemalloc its
 *                               tcache flush and arena.<all>.purge, tcmalloc
 *                               MallocExtension_ReleaseFreeMemory
 *   ba_held(s, c, &bytes)       the memory held, as BA_HELD_IS_RSS says
 *
 * `ba_ctx_t c` is the attachment for shmheap and shmheap-api, the segment
 * for boost, and unused (NULL) for the per-process allocators, whose state
 * is global. */
#ifndef BENCH_ALLOC_H
#define BENCH_ALLOC_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/workloads.h"

#define BENCH_ID_glibc       1
#define BENCH_ID_mimalloc    2
#define BENCH_ID_jemalloc    3
#define BENCH_ID_tcmalloc    4
#define BENCH_ID_shmheap     5
#define BENCH_ID_shmheap_api 6 /* "shmheap-api": the public API against a running shmheapd */
#define BENCH_ID_boost       7 /* Boost.Interprocess managed_shared_memory (bench_boost.cpp) */

#ifndef BENCH_ALLOC_ID
#    error "build with -DBENCH_ALLOC_ID=BENCH_ID_<allocator>"
#endif

#if BENCH_ALLOC_ID == BENCH_ID_shmheap

#    include <sys/stat.h>

#    include "shm/heap.h"
#    include "shm/local.h"

#    define BA_NAME         "shmheap"
#    define BA_W4_PROCESSES 1

typedef struct heap *ba_ctx_t;
typedef struct heap_local ba_shared_t;

static inline void *ba_malloc(ba_ctx_t c, size_t n)
{
    return heap_malloc(c, n);
}

static inline void ba_free(ba_ctx_t c, void *p)
{
    heap_free(c, p);
}

static inline uint64_t ba_to_handle(ba_ctx_t c, void *p)
{
    return heap_to_off(c, p);
}

static inline void *ba_from_handle(ba_ctx_t c, uint64_t v)
{
    return heap_from_off(c, v);
}

/* Default config; pages as BENCH_HUGE_PAGES says: "off" (4 KiB, the
 * default), "2M", "1G" or "auto" (1G, then 2M, then 4K). The driver pins
 * it because on a shared machine the huge page pool changes under a run:
 * with auto, a segment made while someone's test holds eight 2 MiB pages
 * is a 2M segment whose commits fail once those are used (the creator
 * then grows a 4K segment, a forked child cannot and gets ENOMEM), and
 * the page size, which every figure depends on, changes from run to run. */
static inline int ba_shared_create(ba_shared_t **ret)
{
    const char *v = getenv("BENCH_HUGE_PAGES");
    int policy = SHM_PAGES_OFF;

    if (v && strcmp(v, "auto") == 0)
        policy = SHM_PAGES_AUTO;
    else if (v && strcmp(v, "2M") == 0)
        policy = SHM_PAGES_2M;
    else if (v && strcmp(v, "1G") == 0)
        policy = SHM_PAGES_1G;
    else if (v && *v && strcmp(v, "off") != 0) {
        fprintf(stderr, "bench: BENCH_HUGE_PAGES=%s: want off, 2M, 1G or auto\n", v);
        return -EINVAL;
    }
    return heap_local_create(NULL, policy, ret);
}

static inline void ba_shared_destroy(ba_shared_t *s)
{
    heap_local_destroy(s);
}

static inline int ba_attach(ba_shared_t *s, uint64_t client_id, ba_ctx_t *ret)
{
    return heap_local_attach(s, client_id, ret);
}

static inline void ba_detach(ba_ctx_t c)
{
    heap_detach(c);
}

/* Walks the whole heap (heap_verify) and reports what it found on stderr.
 * Called untimed, while nothing allocates. */
static inline int ba_verify(ba_ctx_t c)
{
    struct verify_report rep;
    uint32_t i;
    int r;

    r = heap_verify(c, &rep);
    if (r < 0) {
        fprintf(stderr, "bench: shmheap: heap_verify: %s\n", strerror(-r));
        return r;
    }
    if (rep.consistent)
        return 0;
    fprintf(stderr, "bench: shmheap: heap_verify found %u problems:\n", rep.nproblems);
    for (i = 0; i < rep.nproblems && i < 16; i++)
        fprintf(stderr, "bench: shmheap:   %s\n", rep.problems[i]);
    return -EIO;
}

#    define BA_HAS_RELEASE 1
#    define BA_HELD_IS_RSS 0

/* The thread's cache goes back, then a trim: the recyclers empty into the
 * blocks and free blocks beyond retain_empty_blocks are decommitted. */
static inline int ba_release(ba_ctx_t c)
{
    struct trim_result tr;

    heap_thread_flush(c);
    return heap_trim(c, 1000, &tr);
}

/* The shared memory the heap holds as the kernel counts it: the allocated
 * blocks (st_blocks) of the control segment's and every heap segment's
 * memfd. */
static inline int ba_held(ba_shared_t *s, ba_ctx_t c, uint64_t *ret_bytes)
{
    uint64_t sum = 0;
    struct stat st;
    int fd;

    (void) c;
    for (uint32_t i = 0; i <= SHM_MAX_SEGMENTS; i++) {
        fd = i == SHM_MAX_SEGMENTS ? heap_local_ctl_fd(s) : heap_local_segment_fd(s, i);
        if (fd < 0)
            continue;
        if (fstat(fd, &st) < 0)
            return -errno;
        sum += (uint64_t) st.st_blocks * 512;
    }
    *ret_bytes = sum;
    return 0;
}

/* Checks the heap really hands out its own memory and converts offsets. */
static inline int ba_info(char *buf, size_t len)
{
    ba_shared_t *s;
    ba_ctx_t c;
    void *p;
    int r;

    r = ba_shared_create(&s);
    if (r < 0) {
        (void) snprintf(buf, len, "heap_local_create:%d", r);
        return r;
    }
    r = ba_attach(s, 1, &c);
    if (r < 0) {
        (void) snprintf(buf, len, "heap_local_attach:%d", r);
        ba_shared_destroy(s);
        return r;
    }
    p = heap_malloc(c, 64);
    if (!p || !heap_contains(c, p) || heap_from_off(c, heap_to_off(c, p)) != p) {
        (void) snprintf(buf, len, "heap_malloc-not-in-heap");
        r = -ENOTSUP;
    } else {
        /* Segment 1 is the heap segment heap_local_create made; which
         * page size SHM_PAGES_AUTO got matters to every figure. */
        uint32_t page = __atomic_load_n(&heap_ctl(c)->segs[1].page_size, __ATOMIC_RELAXED);

        (void) snprintf(buf, len, "layout-v%u,%s-pages", (unsigned) SHM_LAYOUT_VERSION,
                        page >= (1u << 30)   ? "1G"
                        : page >= (1u << 21) ? "2M"
                                             : "4K");
    }
    if (p)
        heap_free(c, p);
    ba_detach(c);
    ba_shared_destroy(s);
    return r;
}

#elif BENCH_ALLOC_ID == BENCH_ID_shmheap_api

/* The public API (client/include/shmheap.h) from libshmheap.a, against a
 * shmheapd the driver started: every process that allocates attaches with
 * shmheap_attach() on BENCH_SHMHEAP_SOCKET (else the library's default
 * socket). shmheap_malloc/shmheap_free are the library's tail calls into
 * the core; the handle is never inherited through fork (the parent of a
 * W3/W4 run does not attach before forking). */

#    include <poll.h>
#    include <sys/socket.h>
#    include <sys/un.h>
#    include <time.h>
#    include <unistd.h>

#    include "client/include/shmheap.h"

#    define BA_NAME         "shmheap-api"
#    define BA_W4_PROCESSES 1

typedef shmheap_t *ba_ctx_t;
typedef struct ba_api_shared {
    const char *socket; /* NULL: the library's default path */
} ba_shared_t;

static inline void *ba_malloc(ba_ctx_t c, size_t n)
{
    return shmheap_malloc(c, n);
}

static inline void ba_free(ba_ctx_t c, void *p)
{
    shmheap_free(c, p);
}

static inline uint64_t ba_to_handle(ba_ctx_t c, void *p)
{
    return shmheap_to_off(c, p);
}

static inline void *ba_from_handle(ba_ctx_t c, uint64_t v)
{
    return shmheap_from_off(c, v);
}

/* Each file that includes this has its own copy, set by its ba_shared_create. */
static ba_shared_t ba_api_shared;

/* Nothing to create: the daemon owns the heap. */
static inline int ba_shared_create(ba_shared_t **ret)
{
    const char *s = getenv("BENCH_SHMHEAP_SOCKET");

    ba_api_shared.socket = s && *s ? s : NULL;
    *ret = &ba_api_shared;
    return 0;
}

static inline void ba_shared_destroy(ba_shared_t *s)
{
    (void) s;
}

/* SHMHEAP_E* codes as negative errnos, for the workloads' messages. */
static inline int ba_api_errno(int r)
{
    switch (-r) {
    case SHMHEAP_EINVAL:
    case SHMHEAP_ENAMETOOLONG:
        return -EINVAL;
    case SHMHEAP_ENOMEM:
        return -ENOMEM;
    case SHMHEAP_ECONNECT:
        return -ECONNREFUSED;
    case SHMHEAP_EPROTO:
        return -EPROTO;
    case SHMHEAP_EDENIED:
        return -EACCES;
    case SHMHEAP_ENOSPC:
        return -ENOSPC;
    default:
        return -EIO;
    }
}

static inline int ba_attach(ba_shared_t *s, uint64_t client_id, ba_ctx_t *ret)
{
    int r;

    (void) client_id; /* the daemon hands out client ids */
    r = shmheap_attach(s->socket, ret);
    if (r < 0) {
        fprintf(stderr, "bench: shmheap-api: attach to %s failed: %s: %s\n",
                s->socket ? s->socket : "(default socket)", shmheap_strerror(r),
                shmheap_last_error());
        return ba_api_errno(r);
    }
    return 0;
}

static inline void ba_detach(ba_ctx_t c)
{
    shmheap_detach(c);
}

/* BENCH_VERIFY=1: the daemon's `verify` op (heap_verify over the whole
 * heap) on a connection of its own; the reply must say consistent. */
static inline int ba_verify(ba_ctx_t c)
{
    static const char req[] = "{\"op\":\"verify\"}\n";
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    const char *path = ba_api_shared.socket;
    char reply[4096];
    size_t len = 0;
    int fd, r = -EIO;

    (void) c;
    if (!path) {
        fprintf(stderr, "bench: shmheap-api: BENCH_VERIFY needs BENCH_SHMHEAP_SOCKET\n");
        return -EINVAL;
    }
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 ||
        write(fd, req, sizeof(req) - 1) != (ssize_t) sizeof(req) - 1) {
        r = -errno;
        goto out;
    }
    while (len < sizeof(reply) - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;

        if (poll(&p, 1, 120000) <= 0) {
            r = -ETIMEDOUT;
            goto out;
        }
        n = read(fd, reply + len, sizeof(reply) - 1 - len);
        if (n <= 0)
            goto out;
        len += (size_t) n;
        if (reply[len - 1] == '\n')
            break;
    }
    reply[len] = 0;
    if (strstr(reply, "\"consistent\":true")) {
        r = 0;
    } else {
        fprintf(stderr, "bench: shmheap-api: heap_verify (daemon) failed: %.300s\n", reply);
        r = -EIO;
    }
out:
    (void) close(fd);
    return r;
}

#    define BA_HAS_RELEASE 1
#    define BA_HELD_IS_RSS 0

/* As a client would: its thread's cache back, then the daemon's trim op. */
static inline int ba_release(ba_ctx_t c)
{
    int r;

    shmheap_thread_flush(c);
    r = shmheap_trim(c, 1000);
    return r < 0 ? ba_api_errno(r) : 0;
}

/* The daemon's heap as its figures count it (no fds here): the committed
 * bytes of every segment and the control segment, from shmheap_stats. */
static inline int ba_held(ba_shared_t *s, ba_ctx_t c, uint64_t *ret_bytes)
{
    struct shmheap_stats *st = calloc(1, sizeof(*st));
    int r;

    (void) s;
    if (!st)
        return -ENOMEM;
    r = shmheap_stats(c, st);
    if (r == 0)
        *ret_bytes = st->bytes_committed;
    free(st);
    return r < 0 ? ba_api_errno(r) : 0;
}

/* Attaches, and checks that shmheap_malloc hands out heap memory whose
 * offsets convert both ways; reports the library version and the page
 * size of the daemon's first heap segment. */
static inline int ba_info(char *buf, size_t len)
{
    struct shmheap_stats *st = NULL;
    ba_shared_t *s;
    ba_ctx_t c;
    void *p;
    int r;

    (void) ba_shared_create(&s);
    r = shmheap_attach(s->socket, &c);
    if (r < 0) {
        (void) snprintf(buf, len, "attach:%s", shmheap_strerror(r));
        fprintf(stderr, "bench: shmheap-api: attach failed: %s\n", shmheap_last_error());
        return ba_api_errno(r);
    }
    p = shmheap_malloc(c, 64);
    st = calloc(1, sizeof(*st));
    if (!p || !st || shmheap_from_off(c, shmheap_to_off(c, p)) != p ||
        shmheap_usable_size(c, p) < 64) {
        (void) snprintf(buf, len, "shmheap_malloc-not-in-heap");
        r = -ENOTSUP;
    } else if (shmheap_stats(c, st) < 0 || st->nsegments == 0) {
        (void) snprintf(buf, len, "shmheap_stats-failed");
        r = -ENOTSUP;
    } else {
        uint32_t page = st->segments[0].page_size;

        (void) snprintf(buf, len, "lib-%s,%s-pages", SHMHEAP_VERSION,
                        page >= (1u << 30)   ? "1G"
                        : page >= (1u << 21) ? "2M"
                                             : "4K");
    }
    free(st);
    shmheap_free(c, p);
    shmheap_detach(c);
    return r;
}

#elif BENCH_ALLOC_ID == BENCH_ID_boost

/* Boost.Interprocess: a managed_shared_memory (rbtree_best_fit, one
 * process-shared pthread mutex per segment) behind the C functions of
 * bench/bench_boost.cpp. These are out-of-line calls (the workloads are
 * C), about a nanosecond against the hundreds a locked best-fit
 * allocation takes. The parent creates the segment before forking (its
 * name is removed at once, so nothing leaks if a run is killed); the
 * children use the inherited MAP_SHARED mapping and pass offsets
 * (get_handle_from_address), as shmheap's do. */

#    include "bench/bench_boost.h"

#    define BA_NAME         "boost"
#    define BA_W4_PROCESSES 1

typedef struct bb_seg *ba_ctx_t;
typedef struct bb_seg ba_shared_t;

static inline void *ba_malloc(ba_ctx_t c, size_t n)
{
    return bb_malloc(c, n);
}

static inline void ba_free(ba_ctx_t c, void *p)
{
    bb_free(c, p);
}

static inline uint64_t ba_to_handle(ba_ctx_t c, void *p)
{
    return bb_to_handle(c, p);
}

static inline void *ba_from_handle(ba_ctx_t c, uint64_t v)
{
    return bb_from_handle(c, v);
}

static inline int ba_shared_create(ba_shared_t **ret)
{
    return bb_create(ret);
}

static inline void ba_shared_destroy(ba_shared_t *s)
{
    bb_destroy(s);
}

static inline int ba_attach(ba_shared_t *s, uint64_t client_id, ba_ctx_t *ret)
{
    (void) client_id;
    *ret = s;
    return 0;
}

static inline void ba_detach(ba_ctx_t c)
{
    (void) c;
}

static inline int ba_verify(ba_ctx_t c)
{
    return bb_verify(c);
}

/* A managed_shared_memory never gives pages back while it is mapped
 * (shrink_to_fit works only offline): no W5b. */
#    define BA_HAS_RELEASE  0
#    define BA_HELD_IS_RSS  0

static inline int ba_release(ba_ctx_t c)
{
    (void) c;
    return -ENOTSUP;
}

static inline int ba_held(ba_shared_t *s, ba_ctx_t c, uint64_t *ret_bytes)
{
    (void) s;
    (void) c;
    (void) ret_bytes;
    return -ENOTSUP;
}

static inline int ba_info(char *buf, size_t len)
{
    return bb_info(buf, len);
}

#else /* the per-process allocators: plain malloc/free, interposed at link time */

#    define BA_W4_PROCESSES 0

typedef void *ba_ctx_t;
typedef void ba_shared_t;

static inline void *ba_malloc(ba_ctx_t c, size_t n)
{
    (void) c;
    return malloc(n);
}

static inline void ba_free(ba_ctx_t c, void *p)
{
    (void) c;
    free(p);
}

static inline uint64_t ba_to_handle(ba_ctx_t c, void *p)
{
    (void) c;
    return (uint64_t) (uintptr_t) p;
}

static inline void *ba_from_handle(ba_ctx_t c, uint64_t v)
{
    (void) c;
    return (void *) (uintptr_t) v;
}

static inline int ba_shared_create(ba_shared_t **ret)
{
    *ret = NULL;
    return 0;
}

static inline void ba_shared_destroy(ba_shared_t *s)
{
    (void) s;
}

static inline int ba_attach(ba_shared_t *s, uint64_t client_id, ba_ctx_t *ret)
{
    (void) s;
    (void) client_id;
    *ret = NULL;
    return 0;
}

static inline void ba_detach(ba_ctx_t c)
{
    (void) c;
}

static inline int ba_verify(ba_ctx_t c)
{
    (void) c;
    return 0;
}

#    define BA_HAS_RELEASE 1
#    define BA_HELD_IS_RSS 1

/* A per-process heap is private memory: RssAnon, from which the caller
 * subtracts its baseline and its own bookkeeping. */
static inline int ba_held(ba_shared_t *s, ba_ctx_t c, uint64_t *ret_bytes)
{
    int64_t rss = bench_rss_anon();

    (void) s;
    (void) c;
    if (rss < 0)
        return (int) rss;
    *ret_bytes = (uint64_t) rss;
    return 0;
}

#    if BENCH_ALLOC_ID == BENCH_ID_glibc

#        include <gnu/libc-version.h>
#        include <malloc.h>

#        define BA_NAME "glibc"

/* Returns the free memory at the top of the heap and, since glibc 2.8,
 * the free pages inside every arena (MADV_DONTNEED). */
static inline int ba_release(ba_ctx_t c)
{
    (void) c;
    (void) malloc_trim(0);
    return 0;
}

/* glibc's own statistics must see our allocation. */
static inline int ba_info(char *buf, size_t len)
{
    struct mallinfo2 before = mallinfo2(), after;
    void *p = malloc(1000);
    int r = 0;

    after = mallinfo2();
    if (!p || after.uordblks < before.uordblks + 1000) {
        (void) snprintf(buf, len, "malloc-not-glibc");
        r = -ENOTSUP;
    } else {
        (void) snprintf(buf, len, "%s", gnu_get_libc_version());
    }
    free(p);
    return r;
}

#    elif BENCH_ALLOC_ID == BENCH_ID_mimalloc

#        include <mimalloc.h>

#        define BA_NAME "mimalloc"

/* force: collects the abandoned and the thread's pages and purges. */
static inline int ba_release(ba_ctx_t c)
{
    (void) c;
    mi_collect(true);
    return 0;
}

/* libmimalloc.so interposes malloc: a malloc'd block must be in its heap. */
static inline int ba_info(char *buf, size_t len)
{
    void *p = malloc(64);
    int v = mi_version();
    int r = 0;

    if (!p || !mi_is_in_heap_region(p)) {
        (void) snprintf(buf, len, "malloc-not-mimalloc");
        r = -ENOTSUP;
    } else {
        (void) snprintf(buf, len, "%d.%d.%d", v / 100, v / 10 % 10, v % 10);
    }
    free(p);
    return r;
}

#    elif BENCH_ALLOC_ID == BENCH_ID_jemalloc

#        define BA_NAME "jemalloc"

/* Debian's jemalloc has no prefix; jemalloc.h would redeclare malloc and
 * trip -Wredundant-decls, so declare the one control call we need. */
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);

/* The thread's tcache back to its arena, then every arena's dirty and
 * muzzy pages purged (4096 is MALLCTL_ARENAS_ALL). */
static inline int ba_release(ba_ctx_t c)
{
    (void) c;
    if (mallctl("thread.tcache.flush", NULL, NULL, NULL, 0) != 0 ||
        mallctl("arena.4096.purge", NULL, NULL, NULL, 0) != 0)
        return -EIO;
    return 0;
}

/* jemalloc's per-thread byte counter must see our allocation. */
static inline int ba_info(char *buf, size_t len)
{
    uint64_t before = 0, after = 0;
    const char *ver = NULL;
    size_t sz = sizeof(ver);
    size_t n = sizeof(before);
    void *p;
    int r = 0;

    if (mallctl("version", (void *) &ver, &sz, NULL, 0) != 0 || !ver) {
        (void) snprintf(buf, len, "mallctl-version-failed");
        return -ENOTSUP;
    }
    (void) mallctl("thread.allocated", &before, &n, NULL, 0);
    p = malloc(4096);
    n = sizeof(after);
    (void) mallctl("thread.allocated", &after, &n, NULL, 0);
    if (!p || after < before + 4096) {
        (void) snprintf(buf, len, "malloc-not-jemalloc");
        r = -ENOTSUP;
    } else {
        (void) snprintf(buf, len, "%.*s", (int) strcspn(ver, "-"), ver);
    }
    free(p);
    return r;
}

#    elif BENCH_ALLOC_ID == BENCH_ID_tcmalloc

#        include <gperftools/malloc_extension_c.h>
#        include <gperftools/tcmalloc.h>

#        define BA_NAME "tcmalloc"

/* Returns every free span of the page heap to the system. */
static inline int ba_release(ba_ctx_t c)
{
    (void) c;
    MallocExtension_ReleaseFreeMemory();
    return 0;
}

/* tcmalloc must own what malloc returns. */
static inline int ba_info(char *buf, size_t len)
{
    int major = 0, minor = 0;
    const char *patch = NULL;
    void *p = malloc(64);
    int r = 0;

    (void) tc_version(&major, &minor, &patch);
    if (!p || MallocExtension_GetOwnership(p) != MallocExtension_kOwned) {
        (void) snprintf(buf, len, "malloc-not-tcmalloc");
        r = -ENOTSUP;
    } else {
        (void) snprintf(buf, len, "gperftools-%d.%d%s", major, minor, patch ? patch : "");
    }
    free(p);
    return r;
}

#    else
#        error "unknown BENCH_ALLOC_ID"
#    endif

#endif

/* After the children of a multi-process run have detached: attach the
 * parent and check the heap. */
static inline int ba_verify_shared(ba_shared_t *s)
{
    ba_ctx_t c;
    int r;

    r = ba_attach(s, 1000, &c);
    if (r < 0)
        return r;
    r = ba_verify(c);
    ba_detach(c);
    return r;
}

#endif
