/* Declarations shared between the heap core's files, grouped by file.
 * Process-local state (struct heap, struct seg_map, struct tcache) lives
 * here and never in shared memory; shared bytes are in layout.h. */
#ifndef SHM_INTERNAL_H
#define SHM_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm/bittree.h"
#include "shm/heap.h"
#include "shm/layout.h"
#include "shm/meta.h"
#include "shm/sizeclass.h"

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* One process's view of one heap segment. `meta` is published last with
 * release (heap.c) and read with acquire, so a thread that sees it sees the
 * whole mapping. */
struct seg_map {
    struct seg_header *hdr; /* == base */
    char *base;
    uint64_t *meta;
    uint64_t size;
    uint32_t nblocks;
    uint32_t index;
    uint32_t page_size;
    uint32_t unit_shift;
    int fd;
    bool needs_commit; /* hugetlb: units must be fallocated before use */
};

struct tcache;

struct heap {
    char *base; /* the reservation; segment i at base + (i << SHM_SEG_SHIFT) */
    struct ctl_header *ctl;
    int ctl_fd;
    pid_t pid;       /* the process that attached; a fork's copy is refused */
    uint64_t serial; /* unique per attachment in this process (tcache.c) */
    uint64_t client_id;
    uint32_t owner_index; /* entry in ctl->owners; owner_tag 0: none (untracked) */
    uint16_t owner_tag;
    uint32_t nmapped;  /* segments 0..nmapped-1 are mapped; release/acquire */
    uint32_t seg_hint; /* the segment to try first for fresh blocks */
    uint32_t va_slots; /* segment slots the reservation covers (heap.c) */
    struct heap_hooks hooks;
    pthread_mutex_t local_lock; /* mapping new segments, the tcache list */
    pthread_key_t key;          /* flushes a thread's cache when it exits */
    struct tcache *caches;      /* every live tcache of this attachment */
    /* Config as this process uses it, re-read when config_gen moves. */
    uint64_t cfg_gen;
    uint32_t bundle_objects;
    uint32_t recycler_cap;
    uint32_t retain_empty_blocks;
    uint32_t bin_cap[SHM_NCLASSES]; /* objects a bin holds before it gives a bundle away */
    /* Per class, for the fast paths' owner tags (heap.c): the tags' offset
     * in a slab, and 2^32 / size + 1, so that an object's index is
     * (bytes into its block * mul) >> 32 (exact: a block is 2^16 bytes and
     * such a class is at most 2^13); mul is 0 for classes whose slabs span
     * blocks, which take the slow path. Here, not in a global, so the fast
     * path reaches them from h without a GOT load. */
    struct {
        uint32_t mul;
        uint32_t off;
    } tag_geo[SHM_NCLASSES];
    uint32_t bundle_n[SHM_NCLASSES]; /* objects per bundle */
    struct seg_map segs[SHM_MAX_SEGMENTS];
};

/* A thread's cache for one attachment. Lives in thread-local storage; its
 * objects live in the shared slot so others can take them back. */
struct tcache {
    struct heap *h;
    uint64_t serial; /* == h->serial while valid */
    struct cache_slot *slot;
    uint32_t slot_index;
    uint32_t free_tick; /* slow-path frees until the next tick of a thread that only frees */
    uint16_t owner_tag; /* == h->owner_tag: what malloc writes into an object's tag */
    uint64_t trim_gen_seen;
    uint64_t cfg_gen_seen;
    struct tcache *next; /* in h->caches, under h->local_lock */
};

#define TCACHE_TLS_MAX 16u /* attachments one thread can use at once */
extern __thread struct tcache *tl_last __attribute__((tls_model("initial-exec")));

/* Operations between looks at the trim and config generations. */
#define TCACHE_TICK 4096u

static inline struct seg_map *heap_seg(struct heap *h, uint64_t off)
{
    uint32_t i = (uint32_t) (off >> SHM_SEG_SHIFT);

    if (i == 0 || i >= load_acquire(&h->nmapped))
        return NULL;
    return &h->segs[i];
}

static inline void *off_ptr(struct heap *h, uint64_t off)
{
    return h->base + off;
}

static inline uint64_t ptr_off(struct heap *h, const void *p)
{
    return (uint64_t) ((const char *) p - h->base);
}

/* Link words inside free objects: word 0 links objects of one list or
 * bundle; word 1 of a bundle's first object links bundles in a recycler
 * and carries the bundle's object count and highest segment index. */
static inline uint64_t *obj_words(struct heap *h, uint64_t off)
{
    return (uint64_t *) off_ptr(h, off);
}

/* A cache bin's head word: the first object's offset and the number of
 * objects on the list, so a pop or a push is one store (offsets fit in
 * 39 bits). */
#define BIN_COUNT_SHIFT 48
#define BIN_OFF_MASK    ((UINT64_C(1) << BIN_COUNT_SHIFT) - 1)
static inline uint64_t bin_word(uint64_t off, uint32_t count)
{
    return off | (uint64_t) count << BIN_COUNT_SHIFT;
}

static inline uint64_t bin_off(uint64_t w)
{
    return w & BIN_OFF_MASK;
}

static inline uint32_t bin_count(uint64_t w)
{
    return (uint32_t) (w >> BIN_COUNT_SHIFT);
}

/* Moves objects into (n > 0) or out of (n < 0) a bin's accounting: in use
 * = net - count, so only objects crossing the bin's edge are counted. */
static inline void bin_net_add(struct cache_bin *b, int64_t n)
{
    bump_relaxed(&b->net, (uint64_t) n);
}

#define BUNDLE_COUNT_SHIFT 48
#define BUNDLE_SEG_SHIFT   40
static inline uint64_t bundle_link(uint64_t next, uint32_t count, uint32_t maxseg)
{
    return next | (uint64_t) count << BUNDLE_COUNT_SHIFT | (uint64_t) maxseg << BUNDLE_SEG_SHIFT;
}

/* ---- owner tags (owned.c) ----
 * An object carries owner X's tag while X's malloc has handed it out and
 * it has not been shared (heap_to_off), and while it sits in one of X's
 * caches after X freed it; anywhere else (recyclers, slabs) it carries 0.
 * So free does not touch the tag: a bundle leaving a cache for the
 * recycler has its tags cleared (tcache.c), and a return to a slab clears
 * them (segment.c). Malloc writes the tag before the pop, so a thread
 * killed between the two leaves the object in its cache (drained to the
 * slabs before a sweep) or out of it and tagged (the sweep frees it):
 * never lost, never freed twice. */
uint16_t *obj_tag_multi(struct heap *h, uint64_t off, unsigned cls);

/* The tag of the object at p, of class cls with h->tag_geo[cls].mul != 0
 * (slabs of one block). The reservation is 1 GiB-aligned, so p's block
 * starts at p rounded down to the block size. */
static inline uint16_t *obj_tag_at(struct heap *h, const void *p, unsigned cls)
{
    uintptr_t a = (uintptr_t) p, rel = a & (SHM_BLOCK_SIZE - 1);

    return (uint16_t *) (a - rel + h->tag_geo[cls].off) + ((rel * h->tag_geo[cls].mul) >> 32);
}

/* The tag of the small object at offset off, of class cls. */
static inline uint16_t *obj_tag(struct heap *h, uint64_t off, unsigned cls)
{
    if (likely(h->tag_geo[cls].mul))
        return obj_tag_at(h, off_ptr(h, off), cls);
    return obj_tag_multi(h, off, cls);
}

/* The tag array of the slab whose first byte is at `slab`. */
static inline uint16_t *slab_tags(char *slab, const struct slab_geometry *g)
{
    return (uint16_t *) (slab + g->tags_off);
}

/* Same, knowing the slab's start (slab_off) and rel = off - slab_off. */
static inline uint16_t *slab_obj_tag(struct heap *h, uint64_t slab_off, uint64_t rel, unsigned cls)
{
    return (uint16_t *) (h->base + slab_off + sizeclass_checks[cls].tags_off) +
           sizeclass_index(cls, rel);
}

/* Clears the owner of the object containing off (a small object's or a
 * large one's): it is shared now. */
void owned_share(struct heap *h, uint64_t off);
/* Claims this attachment's owner entry (none if the table is full). */
void owned_attach(struct heap *h);
/* Marks it detached: its private objects are unreachable from now on. */
void owned_detach(struct heap *h);
/* Reclaims the cache slots of client_id held by process pid, which is
 * gone (trim.c). Returns how many it could not take (held meanwhile by a
 * trimmer or verify). */
int tcache_reclaim_process(struct heap *h, uint64_t client_id, uint32_t pid);

/* ---- segment.c ---- */
int seg_format(void *base, int fd, uint32_t index, uint64_t size, uint32_t page_size);
/* Bytes at the start of a segment of this geometry taken by its header and
 * metadata (they are committed when the segment is made). */
int seg_metadata_bytes(uint64_t size, uint32_t page_size, uint64_t *ret_bytes);
int seg_check_header(const struct seg_header *hdr, uint32_t index, uint64_t size);
void seg_map_init(struct seg_map *m, void *base, int fd, uint32_t index);
int seg_lock(struct seg_map *m, struct heap *h);
void seg_unlock(struct seg_map *m);
struct bittree_chain *seg_free_tree(struct seg_map *m);
struct bittree_chain *seg_class_tree(struct seg_map *m, unsigned cls);
uint64_t *seg_commit_map(struct seg_map *m);
/* Takes up to n objects of class cls from this segment's slabs and links
 * them (word 0) into a chain, carving a fresh slab if needed. Delivers the
 * chain into *bin (a cache bin) if bin is not NULL, else into *ret_chain.
 * Returns the number taken (0: the segment is full), or -ENOMEM when the
 * backing pages could not be committed. */
int seg_take(struct heap *h,
             struct seg_map *m,
             unsigned cls,
             uint32_t n,
             struct cache_bin *bin,
             uint64_t *ret_chain);
/* Returns the chain of objects starting at *handoff (word 0 links, 0
 * ends) to their slabs, whatever their segments, moving *handoff past each
 * object as it goes. *handoff is a cache slot's handoff word (so that the
 * reclaimer of a dead process can finish the job) or the caller's own
 * variable. Counts double and bad frees into the control segment. */
void seg_return_handoff(struct heap *h, uint64_t *handoff);
/* Returns one object to its slab; the segment's lock is held. False (and
 * counted) if it is not an object of m or is already free. */
bool seg_return_object_locked(struct heap *h, struct seg_map *m, uint64_t off);
/* Frees blocks left BUSY by a decommitter that died outside the lock, and
 * puts back the objects a dead puncher had reserved. */
void seg_reap_busy(struct heap *h, struct seg_map *m);
/* Gives back the 4K pages inside slabs that hold only free objects (normal
 * pages only); returns the bytes punched. */
uint64_t seg_punch_slabs(struct heap *h, struct seg_map *m);
/* Objects reserved by a punch in flight (their class in *ret_cls); lock
 * held. */
uint32_t seg_punch_reserved(struct seg_map *m, unsigned *ret_cls);
/* Runs of blocks. */
/* owner: the tag a RUN_LARGE run starts with (meta_owner), else 0.
 * count: the slot whose large-object counters count the run (NULL: none);
 * they move under the lock, so that a death cannot part the run from its
 * count by more than a couple of stores. */
int seg_alloc_run(struct heap *h,
                  struct seg_map *m,
                  uint32_t nblocks,
                  uint32_t align_blocks,
                  enum run_kind kind,
                  uint16_t owner,
                  struct cache_slot *count,
                  uint32_t *ret_block);
/* Clears the owner of the RUN_LARGE run whose head block is b. */
int seg_share_run(struct heap *h, struct seg_map *m, uint32_t b);
int seg_free_run(struct heap *h,
                 struct seg_map *m,
                 uint32_t block,
                 enum run_kind kind,
                 struct cache_slot *count);
/* Decommits free units beyond `retain` free blocks; returns bytes released. */
uint64_t seg_decommit_free(struct heap *h, struct seg_map *m, uint64_t *retain);
/* Rebuilds nfree and trees from the metadata and slab bitmaps. Lock held. */
void seg_repair(struct seg_map *m);
uint64_t seg_committed_bytes(struct seg_map *m);

/* ---- heap.c ---- */
int heap_map_segment(struct heap *h, uint32_t index);
struct seg_map *heap_seg_for(struct heap *h, uint64_t off); /* maps on demand */
void heap_count_bad_free(struct heap *h);

/* ---- recycler.c ---- */
bool recycler_push(struct heap *h,
                   struct cache_bin *stats_bin,
                   unsigned cls,
                   uint64_t first,
                   uint32_t count,
                   uint32_t maxseg,
                   bool force);
/* Pops a bundle; returns its first object's offset (0: empty). */
uint64_t
recycler_pop(struct heap *h, struct cache_bin *stats_bin, unsigned cls, uint32_t *ret_count);
/* Pops every bundle of every class and returns its objects to the blocks. */
void recycler_drain_all(struct heap *h);

/* ---- tcache.c ---- */
int tcache_attach(struct heap *h);
void tcache_detach(struct heap *h);
void tcache_reload_config(struct heap *h);
void tcache_flush_all(struct heap *h);
/* Returns a chain of objects to their blocks, whatever segments they are in. */
void heap_return_chain(struct heap *h, uint64_t chain);
/* Settles a slot's handoff word left by a thread that stopped midway: the
 * chain goes back to the blocks unless it is still a bin's list. The caller
 * owns the slot (steal held, or the owner itself). */
void tcache_settle_handoff(struct heap *h, struct cache_slot *s);
/* Drains a slot's bins back into the heap (to blocks). The caller owns the
 * slot: its owner is gone, or steal is held. Returns objects drained. */
uint64_t tcache_drain_slot(struct heap *h, struct cache_slot *s);
/* Takes slot s for a trimmer, reclaimer or verify (steal = our pid): 0, or
 * -EBUSY. A holder that died is replaced, and what it left half done is
 * settled. */
int tcache_steal_begin(struct heap *h, struct cache_slot *s, bool owner_dead);
void tcache_steal_end(struct cache_slot *s);
struct tcache *tcache_get(struct heap *h); /* NULL and errno on failure */
void tcache_enter(struct tcache *tc);
int tcache_refill(struct heap *h, struct tcache *tc, unsigned cls);
void tcache_overflow(struct heap *h, struct tcache *tc, unsigned cls);
void tcache_tick(struct heap *h, struct tcache *tc);
/* Before the heap grows or an allocation fails for want of blocks: gives
 * the calling thread's cache and every recycler back to the blocks, so
 * slabs they kept partly full can empty. `entered`: the caller is already
 * inside tcache_enter(). */
void tcache_release_cached(struct heap *h, struct tcache *tc, bool entered);
/* The trimming thread flushes its own cache for generation gen. */
void tcache_trim_self(struct heap *h, uint64_t gen);
/* Bytes this slot allocated minus bytes it freed (may be negative), and
 * its allocation and free counts, over the slot's whole life. */
int64_t slot_bytes_in_use(const struct cache_slot *s);
uint64_t slot_allocs(const struct cache_slot *s);
uint64_t slot_frees(const struct cache_slot *s);

/* ---- quota.c ---- */
/* 0 if this attachment may take `bytes` more from the shared heap, else
 * -ENOMEM (over max_client_bytes, or the daemon refuses its uid). */
int quota_admit(struct heap *h, uint64_t bytes);

/* ---- run.c ---- */
/* Allocates a run of blocks for `bytes` (first block a multiple of
 * align_blocks), growing the heap if need be, and counts it in the calling
 * thread's slot. */
int run_create(struct heap *h,
               uint64_t bytes,
               uint32_t align_blocks,
               enum run_kind kind,
               uint16_t owner,
               uint64_t *ret_off);
/* Frees the run at off if it is a run of `kind`; -EINVAL otherwise. */
int run_destroy(struct heap *h, uint64_t off, enum run_kind kind);

/* ---- alloc.c ---- */
void *large_alloc(struct heap *h, size_t size, size_t align);

static inline void tcache_leave(struct tcache *tc)
{
    compiler_barrier();
    /* release: publishes our bin updates to a trimmer that sees busy == 0. */
    store_release(&tc->slot->busy, 0);
}

/* ---- ctl.c ---- */
/* A process-shared, robust, priority-inheriting mutex for shared memory. */
int shm_mutex_init(pthread_mutex_t *m);
int ctl_check_header(const struct ctl_header *c, uint64_t size);
int ctl_lock(struct ctl_header *c);
void ctl_unlock(struct ctl_header *c);
int ctl_slot_claim(struct heap *h, uint32_t *ret_index);
void ctl_slot_release(struct heap *h, uint32_t index);
/* Slots at or past ctl_slots_high() have never been claimed: loops over the
 * slots stop there (the bound only grows). */
void ctl_raise_slots_high(struct ctl_header *c, uint32_t n);
uint32_t ctl_slots_high(const struct ctl_header *c);
/* Raises the heap's peak of bytes in use to `bytes` if it is higher;
 * returns the peak. */
uint64_t ctl_raise_peak(struct ctl_header *c, uint64_t bytes);

/* Fault injection for the death tests: when shm_fault_at equals a point's
 * number, that point raises SIGKILL. Only on cold paths. */
extern int shm_fault_at;
enum shm_fault_point {
    FAULT_NONE = 0,
    FAULT_TAKE_MID,   /* inside seg_take, objects half moved */
    FAULT_RETURN_MID, /* inside seg_return, objects half returned */
    FAULT_CARVE_MID,  /* inside a carve, block half formatted */
    FAULT_DECOMMIT_MID,
    FAULT_PUNCH_MID,         /* in a trim, objects reserved for a punch inside a slab */
    FAULT_PUNCH_RESERVE_MID, /* a punch's reservation, lock held: a bit cleared, not recorded */
    FAULT_PUNCH_RESTORE_MID, /* a punch's restore, lock held: a bit set, still recorded */
};
void shm_fault(enum shm_fault_point p);

#endif
