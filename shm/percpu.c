/* Per-CPU caches: the area, the slow paths (refill and flush through the
 * calling thread's cache), the drain by pinning, and the sums. The fast
 * paths are in percpu.h, the sequences in rseq.h; the design, its windows
 * and the figures are in docs/ARCHITECTURE.md, "Per-CPU caches".
 *
 * Who writes what: a cache's word and slots are written only inside
 * restartable sequences (any process, on that CPU); the area's header
 * only by its maker, before it publishes the root under the control lock.
 *
 * Refill and flush move objects between a CPU cache and the calling
 * thread's bin of the same class, inside the thread cache's busy section
 * (tcache_enter), so that the bin side keeps every rule of tcache.c
 * (refills from recyclers and slabs, quotas, overflow to the recycler,
 * the reclaimer of a dead thread, deaths_mid_op). Between the bin's store
 * and the CPU cache's commit, up to PCPU_BATCH objects are in the thread's
 * local array: a death there loses them, as a bundle between a recycler
 * and a bin is lost today (the reclaimer counts the death). */
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "shm/os.h"
#include "shm/percpu.h"

/* Publishes the area at off as the root PCPU_ROOT unless another process
 * did first: 0 and *ret_off, the area that is published. Under the control
 * lock, as heap_root_set() writes roots; the lock also orders our header's
 * stores before a reader's loads (heap_root_get takes it too). */
static int pcpu_publish(struct heap *h, uint64_t off, uint64_t *ret_off)
{
    struct ctl_header *c = h->ctl;
    struct root_entry *free_e = NULL;
    int r = ctl_lock(c);

    if (r < 0)
        return r;
    for (unsigned i = 0; i < SHM_MAX_ROOTS; i++) {
        struct root_entry *e = &c->roots[i];

        if (e->name[0] == 0) {
            if (!free_e)
                free_e = e;
            continue;
        }
        if (strncmp(e->name, PCPU_ROOT, SHM_ROOT_NAME) == 0) {
            *ret_off = load_relaxed(&e->off);
            ctl_unlock(c);
            return 0;
        }
    }
    if (!free_e) {
        ctl_unlock(c);
        return -ENOSPC;
    }
    store_relaxed(&free_e->off, off);
    memcpy(free_e->name, PCPU_ROOT, sizeof(PCPU_ROOT));
    ctl_unlock(c);
    *ret_off = off;
    return 0;
}

/* Blocks of the area for ncpus CPUs. */
static uint64_t pcpu_area_blocks(uint32_t ncpus)
{
    uint64_t bytes = PCPU_HDR + ((uint64_t) ncpus << PCPU_CPU_SHIFT);

    return (bytes + SHM_BLOCK_SIZE - 1) >> SHM_BLOCK_SHIFT;
}

/* Makes an area for this machine's CPUs and publishes it (or finds the one
 * another process published meanwhile): 0 and *ret_off. */
static int pcpu_create(struct heap *h, uint64_t *ret_off)
{
    long n = sysconf(_SC_NPROCESSORS_CONF);
    uint32_t ncpus = n < 1 ? 1 : n > (long) PCPU_MAX_CPUS ? PCPU_MAX_CPUS : (uint32_t) n;
    uint64_t bytes = PCPU_HDR + ((uint64_t) ncpus << PCPU_CPU_SHIFT), mine, off;
    struct pcpu_header *hd;
    int r;

    /* No owner tag: the area belongs to no process and no sweep frees it. */
    r = run_create(h, bytes, 1, RUN_LARGE, 0, &mine);
    if (r < 0)
        return r;
    hd = off_ptr(h, mine);
    /* A run's blocks may hold an earlier object's bytes. */
    memset(hd, 0, bytes);
    hd->magic = PCPU_MAGIC;
    hd->ncpus = ncpus;
    hd->nclasses = PCPU_NCLASSES;
    hd->cap = PCPU_CAP;
    hd->bytes = bytes;
    r = pcpu_publish(h, mine, &off);
    if (r < 0 || off != mine) {
        (void) run_destroy(h, mine, RUN_LARGE);
    } else {
        /* The published area is the allocator's, not this thread's:
         * run_create counted it in the calling thread's slot (its owner
         * writes it), so the client's figures and quota do not carry it. */
        struct cache_slot *s = tcache_get(h)->slot;

        bump_relaxed(&s->large_allocs, (uint64_t) -1);
        bump_relaxed(&s->large_bytes_alloc, -(pcpu_area_blocks(ncpus) << SHM_BLOCK_SHIFT));
    }
    if (r < 0)
        return r;
    *ret_off = off;
    return 0;
}

int percpu_attach(struct heap *h, bool create)
{
    struct pcpu_header *hd;
    uint64_t off;
    uint32_t ncpus;
    int r;

    if (load_acquire(&h->pcpu_caches))
        return 0;
    r = heap_root_get(h, PCPU_ROOT, &off);
    if (r == -ENOENT && create)
        r = pcpu_create(h, &off);
    if (r < 0)
        return r;
    /* Shared memory is untrusted: the header and the whole area must be
     * inside a mapped segment, and the geometry the one compiled here. */
    hd = heap_at(h, off, PCPU_HDR, SHM_BLOCK_SIZE);
    if (!hd)
        return -EBADMSG;
    ncpus = load_relaxed(&hd->ncpus);
    if (load_relaxed(&hd->magic) != PCPU_MAGIC || ncpus == 0 || ncpus > PCPU_MAX_CPUS ||
        load_relaxed(&hd->nclasses) != PCPU_NCLASSES || load_relaxed(&hd->cap) != PCPU_CAP ||
        !heap_at(h, off, PCPU_HDR + ((uint64_t) ncpus << PCPU_CPU_SHIFT), SHM_BLOCK_SIZE))
        return -EBADMSG;
    /* Every per-CPU class tags on the fast path (slabs of one block). */
    for (unsigned cls = 0; cls < PCPU_NCLASSES; cls++)
        if (!h->cls_geo[cls].tag_mul)
            return -EINVAL;
    store_relaxed(&h->pcpu_ncpus, ncpus);
    /* release: ncpus before the pointer (pairs with the fast paths'
     * acquire of pcpu_caches). Threads racing here store the same values. */
    store_release(&h->pcpu_caches, (char *) hd + PCPU_HDR);
    return 0;
}

/* The area, attaching on this process's first use; NULL when it has none
 * (no rseq, or the area could not be made: then the thread caches serve). */
static char *pcpu_caches_or_attach(struct heap *h)
{
    char *caches = load_acquire(&h->pcpu_caches);

    if (caches)
        return caches;
    if (load_relaxed(&h->pcpu_tried) || !rseq_available())
        return NULL;
    store_relaxed(&h->pcpu_tried, 1);
    if (percpu_attach(h, true) < 0)
        return NULL;
    return load_acquire(&h->pcpu_caches);
}

/* Moves up to PCPU_BATCH objects from the thread's bin of cls (refilled
 * first if empty) into this CPU's cache. Returns the objects moved (0: the
 * CPU has no cache, or it filled meanwhile), or a negative errno from the
 * thread cache's refill. */
static int pcpu_refill(struct heap *h, struct tcache *tc, char *caches, unsigned cls)
{
    struct cache_bin *bin = &tc->slot->bins[cls];
    uint64_t buf[PCPU_BATCH], w, next, k = 0, pushed;
    int r;

    tcache_enter(tc);
    w = load_relaxed(&bin->head);
    if (!bin_off(w)) {
        r = tcache_refill(h, tc, cls);
        w = load_relaxed(&bin->head);
        if (r < 0 || !bin_off(w)) {
            tcache_leave(tc);
            return r < 0 ? r : -ENOMEM;
        }
    }
    next = bin_off(w);
    while (k < PCPU_BATCH && k < bin_count(w) && next && heap_obj_at(h, next)) {
        buf[k++] = next;
        next = obj_words(h, next)[0];
    }
    /* From here until the commit below the k objects are only in buf. */
    store_relaxed(&bin->head, bin_word(next, bin_count(w) - (uint32_t) k));
    bin_net_add(bin, -(int64_t) k);
    pushed = rseq_pcpu_push_batch(rseq_self(), &h->pcpu_ncpus, pcpu_cbase(caches, cls), buf, k,
                                  PCPU_CAP);
    if (pushed < k) {
        /* The rest back onto the bin, in their order. */
        uint64_t head;

        w = load_relaxed(&bin->head);
        head = bin_off(w);
        for (uint64_t i = k; i-- > pushed;) {
            obj_words(h, buf[i])[0] = head;
            head = buf[i];
        }
        store_relaxed(&bin->head, bin_word(head, bin_count(w) + (uint32_t) (k - pushed)));
        bin_net_add(bin, (int64_t) (k - pushed));
    }
    tcache_leave(tc);
    return (int) pushed;
}

/* Moves up to PCPU_BATCH objects from the top of this CPU's cache of cls
 * into the thread's bin, tagging them ours (every object on a bin's list
 * above its refill's `untagged` ones carries its owner's tag: see "Owners"
 * in docs/ARCHITECTURE.md), and lets the bin overflow to the recycler.
 * Returns the objects moved. */
static uint64_t pcpu_flush(struct heap *h, struct tcache *tc, char *caches, unsigned cls)
{
    struct cache_bin *bin = &tc->slot->bins[cls];
    uint64_t buf[PCPU_BATCH], w, head, k;

    tcache_enter(tc);
    k = rseq_pcpu_pop_batch(rseq_self(), &h->pcpu_ncpus, pcpu_cbase(caches, cls), buf, PCPU_BATCH);
    if (k) {
        uint64_t n = 0;

        w = load_relaxed(&bin->head);
        head = bin_off(w);
        for (uint64_t i = k; i-- > 0;) {
            /* Another process may have freed it in a segment we have not
             * mapped yet: heap_obj_at maps it (and refuses a bad offset,
             * which is then lost, and counted). */
            if (!heap_obj_at(h, buf[i])) {
                heap_count_bad_free(h);
                (void) fetch_add_relaxed(&h->ctl->lost_objects, 1);
                continue;
            }
            store_relaxed(obj_tag(h, buf[i], cls), tc->owner_tag);
            obj_words(h, buf[i])[0] = head;
            head = buf[i];
            n++;
        }
        store_relaxed(&bin->head, bin_word(head, bin_count(w) + (uint32_t) n));
        bin_net_add(bin, (int64_t) n);
        while (bin_count(load_relaxed(&bin->head)) >= load_relaxed(&h->bin_cap[cls])) {
            uint32_t before = bin_count(load_relaxed(&bin->head));

            tcache_overflow(h, tc, cls);
            if (bin_count(load_relaxed(&bin->head)) >= before)
                break; /* a broken link: the slow paths report it */
        }
    }
    tcache_leave(tc);
    return k;
}

void *percpu_malloc_slow(struct heap *h, struct tcache *tc, unsigned cls)
{
    char *caches = pcpu_caches_or_attach(h);
    uint64_t off;

    if (!caches)
        return NULL;
    /* The top object may lie in a segment another process made and we
     * have not mapped yet (it was published before that process could
     * allocate there, so mapping what is published now covers it). */
    (void) heap_sync_segments(h);
    /* The first try takes what the cache has (this process may just have
     * attached the area); then a refill before each. */
    for (unsigned tries = 0; tries < 3; tries++) {
        if (tries > 0 && pcpu_refill(h, tc, caches, cls) <= 0)
            return NULL; /* the thread cache's path sets errno */
        off = rseq_pcpu_pop(rseq_self(), &h->pcpu_ncpus, &h->nmapped, pcpu_cbase(caches, cls),
                            h->base, h->cls_geo[cls].tags_off, h->cls_geo[cls].tag_mul,
                            tc->owner_tag);
        if (off) {
            struct cache_slot *s = tc->slot;
            uint32_t ops = load_relaxed(&s->ops) + 1;

            store_relaxed(&s->ops, ops);
            if (ops >= TCACHE_TICK)
                tcache_tick(h, tc);
            return off_ptr(h, off);
        }
        /* Another thread on this CPU took them all, or we moved to a CPU
         * past the area: once more, then the thread cache. */
    }
    return NULL;
}

bool percpu_free_slow(struct heap *h, struct tcache *tc, uint64_t off, unsigned cls)
{
    char *caches = pcpu_caches_or_attach(h);

    if (!caches)
        return false;
    for (unsigned tries = 0; tries < 2; tries++) {
        switch (rseq_pcpu_push(rseq_self(), &h->pcpu_ncpus, pcpu_cbase(caches, cls), off,
                               PCPU_CAP)) {
        case RSEQ_PUSHED:
            return true;
        case RSEQ_PUSH_DOUBLE:
            (void) fetch_add_relaxed(&h->ctl->double_frees, 1);
            return true;
        case RSEQ_PUSH_FULL:
            break;
        }
        if (pcpu_flush(h, tc, caches, cls) == 0)
            return false; /* no cache for this CPU */
    }
    return false;
}

void *percpu_malloc(struct heap *h, size_t size)
{
    struct tcache *tc;
    void *p;

    if (!h || size == 0 || size > PCPU_MAX_SIZE)
        return heap_malloc(h, size);
    tc = tcache_get(h);
    if (!tc)
        return NULL;
    p = percpu_malloc_fast(h, tc, sizeclass_of_inline(size));
    return p ? p : heap_malloc(h, size);
}

void percpu_free(struct heap *h, void *p)
{
    struct tcache *tc;
    struct seg_map *m;
    uint64_t off, w, rel;
    uint32_t b, head;
    unsigned cls;

    if (!h || !p || !(tc = tcache_get(h)))
        goto heap;
    off = ptr_off(h, p);
    m = off < SHM_VA_SPAN ? heap_seg(h, off) : NULL;
    if (!m || !heap_mapped(h, m->index))
        goto heap;
    b = (uint32_t) ((off & SHM_OFF_MASK) >> SHM_BLOCK_SHIFT);
    if (b >= m->nblocks)
        goto heap;
    w = seg_meta_get(m, b);
    if (meta_state(w) != BLK_SLAB && meta_state(w) != BLK_SLAB_TAIL)
        goto heap;
    cls = meta_class(w);
    head = meta_state(w) == BLK_SLAB_TAIL ? b - (uint32_t) meta_len(w) : b;
    rel = (off & SHM_OFF_MASK) - ((uint64_t) head << SHM_BLOCK_SHIFT);
    if (cls >= PCPU_NCLASSES || !sizeclass_is_object(cls, rel))
        goto heap;
    if (percpu_free_fast(h, tc, off, cls))
        return;
heap:
    heap_free(h, p); /* checks, counts and frees what is not ours here */
}

/* Objects cached on one CPU. */
static uint64_t pcpu_cpu_cached(char *caches, uint32_t cpu)
{
    uint64_t n = 0;

    for (unsigned cls = 0; cls < PCPU_NCLASSES; cls++) {
        const struct pcpu_cache *pc =
                (const struct pcpu_cache *) (pcpu_cbase(caches, cls) +
                                             ((uint64_t) cpu << PCPU_CPU_SHIFT));

        n += pcpu_count(load_relaxed(&pc->word));
    }
    return n;
}

uint64_t percpu_drain_all(struct heap *h, uint64_t *ret_left)
{
    uint64_t drained = 0, left = 0, k;
    struct tcache *tc;
    bool can_pin;
    cpu_set_t old;
    char *caches;

    if (ret_left)
        *ret_left = 0;
    if (!h || percpu_attach(h, false) < 0)
        return 0;
    caches = load_acquire(&h->pcpu_caches);
    /* The objects go through our own thread cache (pcpu_flush): from the
     * moment they leave a CPU cache they are in our bin a few stores
     * later, reachable by whoever reclaims our slot, and never in our
     * hands across a lock wait (a sweeper killed while it waits for a
     * segment lock loses nothing). */
    tc = tcache_get(h);
    can_pin = tc && rseq_available() && os_affinity_save(&old) == 0;
    for (uint32_t cpu = 0; cpu < load_relaxed(&h->pcpu_ncpus); cpu++) {
        /* Pinned to cpu, every sequence of ours runs on its caches, and
         * any other thread's sequence there was preempted to let us run:
         * it aborts when it resumes. A CPU we may not run on keeps its
         * objects (the caller decides: see reclaim.c's sweep). */
        if (!can_pin || os_pin_cpu(cpu) < 0 || os_current_cpu() != (int) cpu) {
            left += pcpu_cpu_cached(caches, cpu);
            continue;
        }
        for (unsigned cls = 0; cls < PCPU_NCLASSES; cls++)
            while ((k = pcpu_flush(h, tc, caches, cls)) != 0)
                drained += k;
    }
    if (can_pin) {
        (void) os_affinity_restore(&old);
        heap_thread_flush(h); /* our bins on to the recyclers */
    }
    if (ret_left)
        *ret_left = left;
    return drained;
}

uint64_t percpu_counts(struct heap *h, uint64_t in_use[SHM_NCLASSES], uint64_t cached[SHM_NCLASSES])
{
    uint64_t now = 0;
    char *caches;

    /* Where the fast paths do not use the caches (a build without
     * SHMHEAP_PERCPU: only tests enter them), the figures look for an area
     * at most every 100 ms while there is none: the lookup takes the
     * control lock and reads the 256 roots, about twice heap_stats' own
     * time. With SHMHEAP_PERCPU they look every time (the first malloc
     * makes the area, and from then on it is known), so that an area
     * another process just made is never missed: the objects in use
     * through it would be (decay_kill_storm_keeps_live_objects saw it).
     * Drains (trim, sweep, verify) always look. */
    if (!load_acquire(&h->pcpu_caches)) {
        now = os_now_ns();
#ifndef SHMHEAP_PERCPU
        if (now - load_relaxed(&h->pcpu_missed_ns) < 100000000u)
            return 0;
#endif
        if (percpu_attach(h, false) < 0) {
            store_relaxed(&h->pcpu_missed_ns, now);
            return 0;
        }
    }
    caches = load_acquire(&h->pcpu_caches);
    for (uint32_t cpu = 0; cpu < load_relaxed(&h->pcpu_ncpus); cpu++)
        for (unsigned cls = 0; cls < PCPU_NCLASSES; cls++) {
            const struct pcpu_cache *pc =
                    (const struct pcpu_cache *) (pcpu_cbase(caches, cls) +
                                                 ((uint64_t) cpu << PCPU_CPU_SHIFT));
            uint64_t w = load_relaxed(&pc->word);

            /* net - count wraps back to the truth when summed. */
            in_use[cls] += (uint64_t) (pcpu_net(w) - (int64_t) pcpu_count(w));
            cached[cls] += pcpu_count(w);
        }
    return pcpu_area_blocks(load_relaxed(&h->pcpu_ncpus)) << SHM_BLOCK_SHIFT;
}
