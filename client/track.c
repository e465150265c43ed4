/* Memory debuggers: shmheap objects reported like malloc's under valgrind's
 * memcheck and AddressSanitizer.
 *
 * At attach, an attachment is tracked when the process runs under valgrind's
 * memcheck (RUNNING_ON_VALGRIND, and memcheck's preload in LD_PRELOAD) or was built with ASan (the
 * weak
 * __asan_poison_memory_region resolves) and libshmheap itself is not (the
 * project's own ASan builds test the fast paths; SHMHEAP_TRACK=1 tracks
 * there too); SHMHEAP_TRACK=0 turns tracking off. A tracked attachment
 * takes the core's slow paths, which call the hooks below (shm/heap.h,
 * struct heap_track): an untracked one runs the very same fast paths as
 * before, at no cost.
 *
 * What the tools are told, as mimalloc does under MI_TRACK_VALGRIND and
 * MI_TRACK_ASAN:
 * - an object handed out: VALGRIND_MALLOCLIKE_BLOCK with the size asked
 *   and the rest of its usable size no-access, or under ASan its bytes
 *   unpoisoned and the rest poisoned: an overrun is found;
 * - an object this process frees: VALGRIND_FREELIKE_BLOCK, or all its
 *   bytes poisoned, and it is kept in a quarantine (a FIFO of at most
 *   TRACK_QUARANTINE_BYTES and TRACK_QUARANTINE_N objects, as memcheck and
 *   ASan keep freed blocks): an access meanwhile is a use after free, a
 *   second free is memcheck's "invalid free". Leaving the quarantine the
 *   object is made accessible again and only then freed to the heap, so
 *   the heap never touches memory a tool forbids (its links, tags and
 *   slab bitmaps may lie there later), and nothing this process forbade
 *   outlives the object;
 * - memcheck's leak check finds objects allocated here and neither freed
 *   nor shared. An object passed to shmheap_to_off() is shared: another
 *   process may free it, so it is forgotten (accessible, no leak and no
 *   use-after-free report). ASan has no leak report for memory it did not
 *   allocate (LeakSanitizer knows only its own heap).
 * Only the malloc family's objects are tracked, not arenas' or pools'; a
 * free of another process's object goes to the heap untold.
 *
 * The tracked objects (pointer -> size asked, state) are kept in an
 * open-addressing table under a mutex: the tools slow every access by far
 * more. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"

#if defined(__has_include)
#    if __has_include(<valgrind/memcheck.h>)
#        include <valgrind/memcheck.h>
#        include <valgrind/valgrind.h>
#        define TRACK_VALGRIND 1
#    endif
#endif
#ifndef TRACK_VALGRIND
#    define TRACK_VALGRIND 0
#endif

/* ASan's interface, weak: NULL unless the program was built with ASan. */
void __asan_poison_memory_region(void const volatile *addr, size_t size) __attribute__((weak));
void __asan_unpoison_memory_region(void const volatile *addr, size_t size) __attribute__((weak));

#if defined(__SANITIZE_ADDRESS__)
#    define TRACK_LIB_INSTRUMENTED 1
#else
#    define TRACK_LIB_INSTRUMENTED 0
#endif

#define TRACK_QUARANTINE_BYTES (UINT64_C(4) << 20)
#define TRACK_QUARANTINE_N     4096u

enum track_tool { TRACK_NONE, TRACK_MEMCHECK, TRACK_ASAN };

enum entry_state { ENTRY_LIVE = 1, ENTRY_QUARANTINED };

struct track_entry {
    uintptr_t p; /* 0: empty; TRACK_TOMB: deleted */
    size_t size; /* asked */
    size_t usable;
    uint32_t state; /* enum entry_state */
};
#define TRACK_TOMB ((uintptr_t) 1)

struct track {
    struct heap_track hooks;
    struct heap *h;
    enum track_tool tool;
    pthread_mutex_t lock;
    struct track_entry *tab;
    size_t cap, used; /* used counts tombstones too */
    /* The quarantine: a ring of object pointers, oldest at head. */
    uintptr_t ring[TRACK_QUARANTINE_N];
    uint32_t head, n;
    uint64_t bytes;
};

/* Set while this thread frees objects that leave the quarantine: the free
 * hook lets them through. */
static __thread bool tl_releasing;

static size_t slot_of(uintptr_t p, size_t cap)
{
    return (size_t) ((p >> 4) * UINT64_C(0x9e3779b97f4a7c15) >> 17) & (cap - 1);
}

/* The entry of p, or NULL (under lock). */
static struct track_entry *tab_find(struct track *t, uintptr_t p)
{
    if (!t->tab)
        return NULL;
    for (size_t i = slot_of(p, t->cap);; i = (i + 1) & (t->cap - 1)) {
        if (t->tab[i].p == p)
            return &t->tab[i];
        if (t->tab[i].p == 0)
            return NULL;
    }
}

static bool tab_grow(struct track *t)
{
    size_t cap = t->cap ? t->cap * 2 : 1024;
    struct track_entry *tab = calloc(cap, sizeof(*tab));

    if (!tab)
        return false;
    t->used = 0;
    for (size_t k = 0; k < t->cap; k++) {
        size_t i;

        if (t->tab[k].p <= TRACK_TOMB)
            continue;
        for (i = slot_of(t->tab[k].p, cap); tab[i].p; i = (i + 1) & (cap - 1))
            ;
        tab[i] = t->tab[k];
        t->used++;
    }
    free(t->tab);
    t->tab = tab;
    t->cap = cap;
    return true;
}

/* Records p (under lock); NULL when out of memory: p is then untracked. */
static struct track_entry *tab_put(struct track *t, uintptr_t p)
{
    size_t i;

    if ((t->used + 1) * 4 > t->cap * 3 && !tab_grow(t))
        return NULL;
    for (i = slot_of(p, t->cap); t->tab[i].p > TRACK_TOMB && t->tab[i].p != p;
         i = (i + 1) & (t->cap - 1))
        ;
    t->used += t->tab[i].p == 0;
    t->tab[i].p = p;
    return &t->tab[i];
}

static void tab_remove(struct track_entry *e)
{
    e->p = TRACK_TOMB;
    e->size = e->usable = 0;
    e->state = 0;
}

/* ---- what each tool is told ---- */

static void tool_alloc(struct track *t, void *p, size_t size, size_t usable)
{
    if (t->tool == TRACK_ASAN) {
        __asan_unpoison_memory_region(p, size);
        if (usable > size)
            __asan_poison_memory_region((char *) p + size, usable - size);
        return;
    }
#if TRACK_VALGRIND
    VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, 0);
    if (usable > size)
        VALGRIND_MAKE_MEM_NOACCESS((char *) p + size, usable - size);
#else
    (void) p;
    (void) size;
    (void) usable;
#endif
}

/* Into the quarantine: nothing may touch it. */
static void tool_free(struct track *t, void *p, size_t usable)
{
    if (t->tool == TRACK_ASAN) {
        __asan_poison_memory_region(p, usable);
        return;
    }
#if TRACK_VALGRIND
    VALGRIND_FREELIKE_BLOCK(p, 0);
    VALGRIND_MAKE_MEM_NOACCESS(p, usable);
#else
    (void) p;
    (void) usable;
#endif
}

/* Back to the heap (out of the quarantine, or shared): accessible again,
 * as all memory the heap holds is. */
static void tool_restore(struct track *t, const void *p, size_t usable)
{
    if (t->tool == TRACK_ASAN) {
        __asan_unpoison_memory_region(p, usable);
        return;
    }
#if TRACK_VALGRIND
    VALGRIND_MAKE_MEM_DEFINED(p, usable);
#else
    (void) p;
    (void) usable;
#endif
}

/* Takes the oldest objects out of the quarantine until it is within its
 * bounds (all of them with all), into out[] (under lock); how many. */
static unsigned quarantine_cut(struct track *t, bool all, uintptr_t *out, unsigned max)
{
    unsigned k = 0;

    while (t->n && k < max &&
           (all || t->n >= TRACK_QUARANTINE_N || t->bytes > TRACK_QUARANTINE_BYTES)) {
        uintptr_t p = t->ring[t->head];
        struct track_entry *e = tab_find(t, p);

        t->head = (t->head + 1) % TRACK_QUARANTINE_N;
        t->n--;
        if (!e)
            continue;
        t->bytes -= e->usable;
        tool_restore(t, (void *) p, e->usable);
        tab_remove(e);
        out[k++] = p;
    }
    return k;
}

/* Frees what quarantine_cut took, outside the lock (the heap's free comes
 * back to hook_free, which lets these through). */
static void quarantine_release(struct track *t, const uintptr_t *ps, unsigned n)
{
    tl_releasing = true;
    for (unsigned i = 0; i < n; i++)
        heap_free(t->h, (void *) ps[i]);
    tl_releasing = false;
}

/* ---- the hooks (shm/alloc.c's slow paths) ---- */

static void hook_alloc(void *ctx, void *p, size_t size)
{
    struct track *t = ctx;
    size_t usable = heap_usable_size(t->h, p);
    struct track_entry *e;

    pthread_mutex_lock(&t->lock);
    e = tab_put(t, (uintptr_t) p);
    if (e) {
        e->size = size;
        e->usable = usable;
        e->state = ENTRY_LIVE;
        tool_alloc(t, p, size, usable);
    }
    pthread_mutex_unlock(&t->lock);
}

static bool hook_free(void *ctx, void *p)
{
    struct track *t = ctx;
    struct track_entry *e;
    uintptr_t out[16];
    unsigned n = 0;

    if (tl_releasing)
        return false;
    pthread_mutex_lock(&t->lock);
    e = tab_find(t, (uintptr_t) p);
    if (!e) {
        pthread_mutex_unlock(&t->lock);
        return false; /* not ours: another process's object, or a bad free */
    }
    if (e->state == ENTRY_QUARANTINED) {
        /* Freed twice: memcheck reports this free as invalid; the heap
         * must not see it (the object sits in the quarantine). */
#if TRACK_VALGRIND
        if (t->tool == TRACK_MEMCHECK)
            VALGRIND_FREELIKE_BLOCK(p, 0);
#endif
        pthread_mutex_unlock(&t->lock);
        return true;
    }
    if (e->usable > TRACK_QUARANTINE_BYTES / 4 ||
        t->n == TRACK_QUARANTINE_N) { /* too big to hold, or the ring full */
        tool_free(t, p, e->usable);
        tool_restore(t, p, e->usable);
        tab_remove(e);
        pthread_mutex_unlock(&t->lock);
        return false;
    }
    tool_free(t, p, e->usable);
    e->state = ENTRY_QUARANTINED;
    t->ring[(t->head + t->n) % TRACK_QUARANTINE_N] = (uintptr_t) p;
    t->n++;
    t->bytes += e->usable;
    n = quarantine_cut(t, false, out, 16);
    pthread_mutex_unlock(&t->lock);
    quarantine_release(t, out, n);
    return true;
}

/* ---- attach and detach (attach.c) ---- */

static enum track_tool track_tool_here(void)
{
    const char *env = getenv("SHMHEAP_TRACK");
    bool force = env && strcmp(env, "1") == 0;

    if (env && strcmp(env, "0") == 0)
        return TRACK_NONE;
#if TRACK_VALGRIND
    /* memcheck only: callgrind (instruction counts, bench/README.md) and
     * the other tools must see the fast paths. valgrind preloads each
     * tool's own library. */
    if (RUNNING_ON_VALGRIND) {
        const char *pre = getenv("LD_PRELOAD");

        return pre && strstr(pre, "vgpreload_memcheck") ? TRACK_MEMCHECK : TRACK_NONE;
    }
#endif
    if (__asan_poison_memory_region && __asan_unpoison_memory_region &&
        (!TRACK_LIB_INSTRUMENTED || force))
        return TRACK_ASAN;
    return TRACK_NONE;
}

int client_track_start(struct client *c, struct heap *h)
{
    enum track_tool tool = track_tool_here();
    struct track *t;

    if (tool == TRACK_NONE)
        return 0;
    t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->tool = tool;
    t->h = h;
    pthread_mutex_init(&t->lock, NULL);
    t->hooks.ctx = t;
    t->hooks.alloc = hook_alloc;
    t->hooks.free = hook_free;
    c->track = t;
    heap_set_track(h, &t->hooks);
    return 0;
}

void client_track_flush(struct client *c)
{
    struct track *t = c->track;
    uintptr_t out[64];
    unsigned n;

    if (!t)
        return;
    do {
        pthread_mutex_lock(&t->lock);
        n = quarantine_cut(t, true, out, 64);
        pthread_mutex_unlock(&t->lock);
        quarantine_release(t, out, n);
    } while (n);
}

void client_track_stop(struct client *c)
{
    struct track *t = c->track;

    if (!t)
        return;
    /* Objects still live stay known to memcheck: its leak check reports
     * those never freed (the daemon frees them for the heap). */
    free(t->tab);
    pthread_mutex_destroy(&t->lock);
    free(t);
    c->track = NULL;
}

/* ---- the public calls that need more than the hooks (alloc.c) ---- */

size_t client_track_size(struct client *c, const void *p)
{
    struct track *t = c->track;
    struct track_entry *e;
    size_t size = 0;

    pthread_mutex_lock(&t->lock);
    e = tab_find(t, (uintptr_t) p);
    if (e && e->state == ENTRY_LIVE)
        size = e->size;
    pthread_mutex_unlock(&t->lock);
    return size;
}

void *client_track_realloc(struct client *c, void *p, size_t size)
{
    struct heap *h = c->heap;
    size_t old;
    void *q;

    if (!p)
        return heap_malloc(h, size);
    if (size == 0) {
        heap_free(h, p);
        return NULL;
    }
    /* Always moves, so that each object keeps the size the tool knows;
     * copies only the bytes the caller may read (the size asked for a
     * tracked object, the usable size of any other). */
    old = client_track_size(c, p);
    if (!old)
        old = heap_usable_size(h, p);
    if (!old) {
        heap_count_bad_free(h);
        errno = EINVAL;
        return NULL;
    }
    q = heap_malloc(h, size);
    if (!q)
        return NULL;
    memcpy(q, p, size < old ? size : old);
    heap_free(h, p);
    return q;
}

void client_track_share(struct client *c, const void *p)
{
    struct track *t = c->track;
    struct track_entry *e;

    pthread_mutex_lock(&t->lock);
    e = tab_find(t, (uintptr_t) p);
    if (e && e->state == ENTRY_LIVE) {
#if TRACK_VALGRIND
        /* Forgotten by memcheck (another process may free it). */
        if (t->tool == TRACK_MEMCHECK)
            VALGRIND_FREELIKE_BLOCK(p, 0);
#endif
        tool_restore(t, p, e->usable);
        tab_remove(e);
    }
    pthread_mutex_unlock(&t->lock);
}
