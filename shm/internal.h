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
#include "shm/fault.h"
#include "shm/heap.h"
#include "shm/layout.h"
#include "shm/lock.h"
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
    bool needs_commit;        /* hugetlb: units must be fallocated before use */
    uint32_t release_cursor;  /* where heap_release's next punch starts (release.c) */
    uint32_t stuck_word;      /* guarded locks: the lock word a wait timed out on (segment.c) */
    uint32_t foreign_unlocks; /* unlocks that found the word not ours (relaxed, segment.c) */
};

struct tcache;

struct heap {
    char *base; /* the reservation; segment i at base + (i << SHM_SEG_SHIFT) */
    struct ctl_header *ctl;
    int ctl_fd;
    pid_t pid;       /* the process that attached; a fork's copy is refused */
    uint64_t serial; /* unique per attachment in this process (attach.c) */
    uint64_t client_id;
    uint32_t owner_index; /* entry in ctl->owners; owner_tag 0: none (untracked) */
    uint16_t owner_tag;
    uint32_t nmapped;  /* segments 0..nmapped-1 are mapped; release/acquire */
    uint32_t seg_hint; /* the segment to try first for fresh blocks */
    uint32_t va_slots; /* segment slots the reservation covers (attach.c) */
    struct heap_hooks hooks;
    const struct heap_track *track; /* NULL unless tracked (alloc.c, heap_set_track) */
    pthread_mutex_t local_lock;     /* mapping new segments, the tcache list */
    pthread_key_t key;              /* flushes a thread's cache when it exits */
    struct tcache *caches;          /* every live tcache of this attachment */
    /* Config as this process uses it, re-read when config_gen moves. */
    uint64_t cfg_gen;
    uint32_t bundle_objects;
    uint32_t recycler_cap;
    uint32_t retain_empty_blocks;
    uint32_t bin_cap[SHM_NCLASSES]; /* objects a bin holds before it gives a bundle away */
    /* Per class, copied from sizeclass_info at attach: here, not only in
     * the table, so the fast paths reach them from h without a GOT load.
     * Free's object check and tag: an object's index is (rel * div_mul)
     * >> 40 for rel bytes into its slab; rel is an object's start iff
     * index * size == rel and index < capacity; its tag is the u16 at the
     * slab's tags_off plus the index. tag_mul: the same index in 32 bits
     * from the bytes into a block, for slabs of one block (0 for classes
     * whose slabs span blocks; obj_tag_at()). */
    struct cls_geo {
        uint64_t div_mul;
        uint32_t size;
        uint32_t capacity;
        uint32_t tags_off;
        uint32_t tag_mul;
    } cls_geo[SHM_NCLASSES];
    /* The class of n bytes, 0 < n <= 1024, at [(n + 15) / 16]: every
     * class boundary there is a multiple of 16 (malloc's fast path). */
    uint8_t class_by_16[65];
    uint32_t bundle_n[SHM_NCLASSES]; /* objects per bundle */
    /* The per-CPU caches (percpu.h): their first cache in this mapping,
     * NULL until percpu_attach() found the area (release/acquire); the
     * CPUs they cover; whether this process looked for the area yet. */
    char *pcpu_caches;
    uint32_t pcpu_ncpus;
    uint32_t pcpu_tried;
    uint64_t pcpu_missed_ns; /* when the figures last found no area (percpu_counts) */
    struct seg_map segs[SHM_MAX_SEGMENTS];
    /* Segment locks taken with a deadline (shlock_lock_until,
     * heap_guard_locks): the daemon's attachment. 0: shlock_lock (a
     * client's). */
    uint32_t lock_wait_ms;
    struct heap_lock_report lock_report; /* relaxed counters (segment.c) */
    /* The cache slot a drain of the recyclers by a caller with none (the
     * daemon's trim and release) claims, so that its transit record and
     * handoff word carry each bundle (tcache_drain_recyclers): index + 1,
     * 0 none. Kept between drains only while a lock held too long left a
     * chain in its handoff word. Under drain_lock. */
    pthread_mutex_t drain_lock;
    uint32_t drain_slot;
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

/* How many segment slots this process has been through (mapped, or
 * skipped as retired). acquire: pairs with heap_map_segment's release of
 * nmapped (heap.c), so every seg_map below the count is complete. */
static inline uint32_t heap_nmapped(struct heap *h)
{
    return load_acquire(&h->nmapped);
}

/* Segment i's map if this process has mapped it, else NULL. acquire: pairs
 * with heap_map_segment's release of segs[i].meta, stored after the rest of
 * the seg_map. */
static inline struct seg_map *heap_mapped(struct heap *h, uint32_t i)
{
    return load_acquire(&h->segs[i].meta) ? &h->segs[i] : NULL;
}

/* Segments the owner has published. acquire: pairs with
 * heap_segment_create's release of nsegments (create.c): the table entry
 * and the formatted segment come with it. */
static inline uint32_t ctl_nsegments(const struct ctl_header *c)
{
    return load_acquire(&c->nsegments);
}

static inline struct seg_map *heap_seg(struct heap *h, uint64_t off)
{
    uint32_t i = (uint32_t) (off >> SHM_SEG_SHIFT);

    if (i == 0 || i >= heap_nmapped(h))
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

/* A block's metadata word (meta.h), read or written under the segment's
 * lock. relaxed: writers hold the lock; the lock-free reader (free's fast
 * path) only reads blocks that hold its live object, whose class cannot
 * change. */
static inline uint64_t seg_meta_get(struct seg_map *m, uint32_t b)
{
    return load_relaxed(&m->meta[b]);
}

static inline void seg_meta_put(struct seg_map *m, uint32_t b, uint64_t w)
{
    store_relaxed(&m->meta[b], w);
}

/* The free bitmap of the slab whose head block is b. */
static inline uint64_t *slab_bitmap(struct seg_map *m, uint32_t b, const struct slab_geometry *g)
{
    return (uint64_t *) (m->base + ((uint64_t) b << SHM_BLOCK_SHIFT) + g->bitmap_off);
}

/* The one check of an offset read from shared memory or given by a caller:
 * the address of the len bytes at off if they lie inside segment m and off
 * is a multiple of align (a power of two); NULL otherwise. Callers treat
 * NULL from a non-zero offset as a broken link or a bad argument.
 * heap_at() (heap.c) finds and maps the segment first. */
static inline void *seg_at(const struct seg_map *m, uint64_t off, uint64_t len, uint64_t align)
{
    uint64_t rel = off & SHM_OFF_MASK;

    if ((off >> SHM_SEG_SHIFT) != m->index || len > m->size || rel > m->size - len ||
        (off & (align - 1)))
        return NULL;
    return m->base + rel;
}

/* An object's offset (a link in a free object, a list's head): 16 bytes,
 * 16-aligned, past the segment's header page (no object lies there). */
static inline void *seg_obj_at(const struct seg_map *m, uint64_t off)
{
    if ((off & SHM_OFF_MASK) < SHM_META_OFF)
        return NULL;
    return seg_at(m, off, SHM_MIN_OBJECT, SHM_MIN_OBJECT);
}

/* A free the heap refused (not an object, or not ours): counted in the
 * control segment, for stats and the daemon's reports. */
static inline void ctl_count_bad_free(struct ctl_header *c)
{
    (void) fetch_add_relaxed(&c->bad_frees, 1);
}

/* Link words inside free objects: word 0 links objects of one list or
 * bundle; word 1 of a bundle's first object links bundles in a recycler
 * and carries the bundle's object count and highest segment index. */
static inline uint64_t *obj_words(struct heap *h, uint64_t off)
{
    return (uint64_t *) off_ptr(h, off);
}

/* ---- segment.c ---- */
int seg_format(void *base, int fd, uint32_t index, uint64_t size, uint32_t page_size);
/* Bytes at the start of a segment of this geometry taken by its header and
 * metadata (they are committed when the segment is made). */
int seg_metadata_bytes(uint64_t size, uint32_t page_size, uint64_t *ret_bytes);
int seg_check_header(const struct seg_header *hdr, uint32_t index, uint64_t size);
void seg_map_init(struct seg_map *m, void *base, int fd, uint32_t index);
/* Takes the segment's lock, finishing a dead holder's work first: 0, or a
 * negative errno (the lock is then not held). */
int seg_lock(struct seg_map *m, struct heap *h);
void seg_unlock(struct seg_map *m);
/* Takes and drops every segment's lock: whatever a dead holder left half
 * done is finished now, while its cache is as it left it (tcache.c).
 * Returns 0, or the first lock's error (-ETIMEDOUT: a guarded lock held
 * by a live or stopped process; the other segments were still visited). */
int seg_recover_all(struct heap *h);
struct bittree_chain *seg_free_tree(struct seg_map *m);
struct bittree_chain *seg_class_tree(struct seg_map *m, unsigned cls);
uint64_t *seg_commit_map(struct seg_map *m);
/* Block states, lock held. The first of n consecutive FREE blocks whose
 * index is a multiple of align, or -1. */
int64_t seg_find_run(struct seg_map *m, uint32_t n, uint32_t align);
/* Takes the blocks of head (a meta_make_slab() or meta_make_run() word,
 * meta_len(head) blocks from b) out of the free tree and writes their
 * words; journal.block/n name the blocks until the caller clears
 * journal.n. */
void seg_blocks_claim(struct seg_map *m, uint32_t b, uint64_t head);
/* Marks [b, b+n) FREE and puts them back in the free tree. */
void seg_blocks_release(struct seg_map *m, uint32_t b, uint32_t n);
/* Rebuilds nfree and trees from the metadata and slab bitmaps. Lock held. */
void seg_repair(struct seg_map *m);

/* ---- slab.c ---- */
/* Takes up to n objects of class cls from this segment's slabs and links
 * them (word 0) into a chain, carving a fresh slab if needed. Delivers the
 * chain into *bin (a cache bin) if bin is not NULL, else into *ret_chain.
 * Returns the number taken (0: the segment is full), or -ENOMEM when the
 * backing pages could not be committed. */
int slab_take(struct heap *h,
              struct seg_map *m,
              unsigned cls,
              uint32_t n,
              struct cache_bin *bin,
              uint64_t *ret_chain);
/* Returns one object to its slab; the segment's lock is held. False (and
 * counted) if it is not an object of m or is already free. */
bool slab_return_object_locked(struct heap *h, struct seg_map *m, uint64_t off);
/* Returns the objects of *handoff's chain that lie in m, journaled as
 * JOP_RETURN (shared: *handoff is a cache slot's word, which the journal
 * names for a recovery); lock held. Stops at another segment's object. */
void slab_return_handoff_locked(struct heap *h, struct seg_map *m, uint64_t *handoff, bool shared);
/* The same without the journal's set-up: the replay of a JOP_RETURN or of
 * an undelivered JOP_TAKE (recovering: nothing counted as a bad free). */
void slab_return_chain_locked(struct heap *h,
                              struct seg_map *m,
                              uint64_t *handoff,
                              bool recovering);

/* Where an object's owner tag is (owned.c says what it means): the u16 at
 * the slab's g.tags_off plus the object's index. slab_tag_multi: for a
 * class whose slabs span blocks (found through the head block's word). */
uint16_t *slab_tag_multi(struct heap *h, uint64_t off, unsigned cls);

/* The tag of the object at p, of class cls with h->cls_geo[cls].tag_mul != 0
 * (slabs of one block). The reservation is 1 GiB-aligned, so p's block
 * starts at p rounded down to the block size. */
static inline uint16_t *obj_tag_at(struct heap *h, const void *p, unsigned cls)
{
    uintptr_t a = (uintptr_t) p, rel = a & (SHM_BLOCK_SIZE - 1);

    return (uint16_t *) (a - rel + h->cls_geo[cls].tags_off) +
           ((rel * h->cls_geo[cls].tag_mul) >> 32);
}

/* The tag of the small object at offset off, of class cls. */
static inline uint16_t *obj_tag(struct heap *h, uint64_t off, unsigned cls)
{
    if (likely(h->cls_geo[cls].tag_mul))
        return obj_tag_at(h, off_ptr(h, off), cls);
    return slab_tag_multi(h, off, cls);
}

/* The tag array of the slab whose first byte is at `slab`. */
static inline uint16_t *slab_tags(char *slab, const struct slab_geometry *g)
{
    return (uint16_t *) (slab + g->tags_off);
}

/* Same, knowing the slab's start (slab_off) and rel = off - slab_off. */
static inline uint16_t *slab_obj_tag(struct heap *h, uint64_t slab_off, uint64_t rel, unsigned cls)
{
    return (uint16_t *) (h->base + slab_off + sizeclass_info[cls].geo.tags_off) +
           sizeclass_index(cls, rel);
}

/* ---- punch.c ---- */
/* Gives back the 4K pages inside slabs that hold only free objects (normal
 * pages only); returns the bytes punched. */
uint64_t punch_slabs(struct heap *h, struct seg_map *m);
/* Same, stopping once max_bytes are released (the last slab may pass it),
 * starting at block *cursor (if not NULL) and leaving there the block to
 * start from next time: pages punched before are asked for again (they
 * hold free objects still), so calls with a small budget must move on. */
uint64_t punch_slabs_max(struct heap *h, struct seg_map *m, uint64_t max_bytes, uint32_t *cursor);
/* Objects reserved by a punch in flight (their class in *ret_cls); lock
 * held. */
uint32_t punch_reserved(struct seg_map *m, unsigned *ret_cls);
/* Puts back the objects of a punch whose puncher is gone; lock held. */
void punch_restore(struct seg_map *m);
/* Undoes a punch's reservation or restore cut short under the lock (from
 * seg_recover); lock held. */
void punch_recover(struct seg_map *m);

/* ---- commit.c ---- */
/* True if blocks [b, b+n) are backed. On segments whose pages come on first
 * touch (normal memfd) that is always so: the units are simply marked
 * committed. Lock held. */
bool commit_ready(struct seg_map *m, uint32_t b, uint32_t n);
/* Called with the lock held and blocks [b, b+n) not backed: drops the lock,
 * reserves the backing pages, retakes the lock. The pages count as
 * committed only if no decommit ran in between (it could have punched them
 * again). Returns 0 with the lock held (the caller searches again), or a
 * negative errno (-ENOMEM: no pages; or the lock could not be retaken)
 * with the lock NOT held. */
int commit_unlocked(struct heap *h, struct seg_map *m, uint32_t b, uint32_t n);
/* Sets or clears unit u's commit bit, keeping committed_units. Lock held. */
void commit_mark_unit(struct seg_map *m, uint64_t u, bool on);
/* True if unit u is marked committed in the map. */
bool commit_unit_is_set(struct seg_map *m, uint64_t u);
/* Decommits free units beyond `retain` free blocks; returns bytes released. */
uint64_t commit_decommit_free(struct heap *h, struct seg_map *m, uint64_t *retain);
/* Same, decommitting at most max_bytes (whole units). */
uint64_t
commit_decommit_free_max(struct heap *h, struct seg_map *m, uint64_t *retain, uint64_t max_bytes);
uint64_t commit_bytes(struct seg_map *m);

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
/* Inside segment m (each takes its lock). owner: the tag the run starts
 * with (meta_owner): a RUN_LARGE run's owner, or the creator of an arena or
 * pool chunk until its creation is committed (run.c). count: the slot whose large-object
 * counters count the run (NULL: none); they move under the lock, so that a
 * death cannot part the run from its count by more than a couple of
 * stores. */
int run_alloc_in(struct heap *h,
                 struct seg_map *m,
                 uint32_t nblocks,
                 uint32_t align_blocks,
                 enum run_kind kind,
                 uint16_t owner,
                 struct cache_slot *count,
                 uint32_t *ret_block);
/* Clears the owner of the RUN_LARGE run whose head block is b. */
int run_share_in(struct heap *h, struct seg_map *m, uint32_t b);
/* Sets the owner tag of the run of kind whose head block is b (or at off). */
int run_retag_in(struct heap *h, struct seg_map *m, uint32_t b, enum run_kind kind, uint16_t owner);
int run_retag(struct heap *h, uint64_t off, enum run_kind kind, uint16_t owner);
/* Frees the run of kind at block. magic: if not NULL, the word whose
 * change from expect to 0 commits the free, under the lock (-EINVAL, and
 * nothing freed, if it is not expect). */
int run_free_in(struct heap *h,
                struct seg_map *m,
                uint32_t block,
                enum run_kind kind,
                struct cache_slot *count,
                uint64_t *magic,
                uint64_t expect);
/* With m's lock held, from a dead holder's journal: keeps the heap's large
 * allocation and free counts equal across a run claim or free cut short. */
void run_recover(struct heap *h, struct seg_map *m);
/* With m's lock held: frees the n blocks of the run at block, journaled. */
void run_free_locked(struct seg_map *m, uint32_t block, uint32_t n);

/* ---- arenas and pools (arena.c, pool.c): what a sweep finds ---- */
/* An arena claimed by a gone owner (its head word carries the tag): freed
 * (0), or untagged if a live SESSION header names its client (1, left to
 * heap_arena_destroy_session); -EAGAIN/-EINVAL if neither could be done. */
int arena_reap(struct heap *h, uint64_t off);
/* A pool chunk claimed by a gone owner: untagged if its pool links it (0),
 * else freed (1); -EAGAIN if the lock failed. */
int pool_reap(struct heap *h, uint64_t off);
/* Finishes the destroys the owner tagged `tag` left midway; returns the
 * chunks freed. */
int pool_finish_destroys(struct heap *h, uint16_t tag);

/* ---- owner tags (owned.c) ----
 * An object carries owner X's tag while X's malloc has handed it out and
 * it has not been shared (heap_to_off), and while it sits in one of X's
 * caches; anywhere else (recyclers, slabs) it carries 0. Every object in
 * X's cache carries X's tag, except the last refill's objects not handed
 * out yet (the bin's `untagged` count, at the bottom of its list), which
 * malloc tags before their pop; free makes the tag X's before the push
 * (writing only if it is not: the object was shared, or another owner's),
 * and so malloc's pop of a freed object touches no tag. A bundle leaving
 * a cache for the recycler has its tags cleared (tcache.c), and a return
 * to a slab clears them (slab.c). A thread killed between a tag and a pop
 * leaves the object in its cache (drained to the slabs before a sweep);
 * between free's tag and its push, out of its cache and tagged (the sweep
 * frees it, as its caller asked): never lost, never freed twice. */
/* Claims this attachment's owner entry (none if the table is full). */
void owned_attach(struct heap *h);
/* Marks it detached: its private objects are unreachable from now on. */
void owned_detach(struct heap *h);

/* ---- reclaim.c ---- */
/* Takes back a slot whose owner is gone: drain, then free the slot. 1 done,
 * 0 if someone else holds it (a trimmer, verify) or it is not OWNED, or a
 * negative errno when a segment lock could not be taken (-ETIMEDOUT: a
 * guarded lock, the daemon's): the slot then stays OWNED by its dead pid,
 * with what it still holds in its bins or handoff word, for a later try. */
int reclaim_slot(struct heap *h, struct cache_slot *s);
/* Frees the blocks left BUSY, and puts back the objects a punch reserved,
 * by processes that are gone: in segment m, or in every mapped segment. */
void reclaim_busy(struct heap *h, struct seg_map *m);
void reclaim_busy_all(struct heap *h);

/* ---- slot.c ---- */
/* Whether slot s is OWNED. acquire: pairs with slot_claim()'s CAS and with
 * the release of FREE (slot_release, reclaim_slot), which publishes the
 * drained bins. */
/* A state word a slot can have; any other was scribbled (slot.c). */
static inline bool slot_state_valid(uint32_t state)
{
    return state <= SLOT_ORPHAN;
}

static inline bool slot_is_owned(const struct cache_slot *s)
{
    return load_acquire(&s->state) == SLOT_OWNED;
}
/* Claims a free cache slot for h's calling thread: 0 and *ret_index, or
 * -EMFILE when every slot is taken. */
int slot_claim(struct heap *h, uint32_t *ret_index);
/* Frees the caller's slot, its bins drained. */
void slot_release(struct heap *h, uint32_t index);
/* Slots at or past slot_high() have never been claimed: loops over the
 * slots stop there (the bound only grows). */
void slot_raise_high(struct ctl_header *c, uint32_t n);
uint32_t slot_high(const struct ctl_header *c);
/* Bytes this slot allocated minus bytes it freed (may be negative), and
 * its allocation and free counts, over the slot's whole life. */
int64_t slot_bytes_in_use(const struct cache_slot *s);
uint64_t slot_allocs(const struct cache_slot *s);
uint64_t slot_frees(const struct cache_slot *s);
/* Adds what the slot's in-use bytes moved since its last report to the
 * heap-wide sample, and raises the heap's peak if it passed it. */
void slot_sample_peak(struct heap *h, struct cache_slot *s);

/* ---- quota.c ---- */
/* 0 if this attachment may take `bytes` more from the shared heap, else
 * -ENOMEM (over max_client_bytes, or the daemon refuses its uid). */
int quota_admit(struct heap *h, uint64_t bytes);

/* ---- tcache.c ---- */
int tcache_attach(struct heap *h);
void tcache_detach(struct heap *h);
void tcache_reload_config(struct heap *h);
void tcache_flush_all(struct heap *h);
/* Pops every bundle of every recycler and returns its objects to the
 * blocks. s: the caller's own slot, inside its busy section, whose transit
 * record and handoff word carry each bundle; NULL for a caller with no
 * slot (the daemon's trim and release): a slot is claimed for the drain
 * (h->drain_slot) and carries them the same way, so a kill at any point
 * loses nothing: whoever reclaims the dead pid's slots settles it
 * (reclaim.c; for the daemon, the next daemon's adoption). 0, or -EAGAIN
 * when no slot is free (or -ESTALE: a fork's copy of the handle): nothing
 * is popped then, the recyclers keep their bundles (never held in process
 * memory only). */
int tcache_drain_recyclers(struct heap *h, struct cache_slot *s);
/* verify's hold of the recyclers' bundles (tcache.c): a slot claimed for
 * the walk (0, or -EMFILE: none free, -ESTALE: a fork's copy of the
 * handle), busy until tcache_hold_end; each bundle popped through its
 * transit record (tcache_hold_pop: 0 when the recycler is empty), then kept
 * at the head of its class's bin (tcache_hold_keep: the objects kept); put
 * back from that head, count objects, newest first (tcache_hold_put_back).
 * tcache_hold_end returns what is left to the blocks and frees the slot:
 * 0, or -ETIMEDOUT (a held lock: the slot stays, for the reclaimer of this
 * process). A kill anywhere leaves every bundle in shared memory. Their
 * fault points are the FAULT_VERIFY_* ones. */
int tcache_hold_begin(struct heap *h, uint32_t *ret_index);
uint64_t tcache_hold_pop(struct heap *h, struct cache_slot *s, unsigned cls, uint32_t *ret_count);
uint32_t tcache_hold_keep(struct heap *h, struct cache_slot *s, unsigned cls, uint64_t first);
void tcache_hold_put_back(struct heap *h, struct cache_slot *s, unsigned cls, uint32_t count);
int tcache_hold_end(struct heap *h, uint32_t index);
/* Returns the chain of objects starting at *handoff (word 0 links, 0
 * ends) to their slabs, whatever their segments, moving *handoff past each
 * object as it goes. *handoff is a cache slot's handoff word (so that the
 * reclaimer of a dead process can finish the job) or the caller's own
 * variable. Counts double and bad frees into the control segment. Returns
 * 0, or -ETIMEDOUT when a guarded segment lock (the daemon's) was held too
 * long: *handoff then still has the rest of the chain, for a later call. */
int tcache_return_handoff(struct heap *h, uint64_t *handoff);
/* Settles a slot's handoff word left by a thread that stopped midway: the
 * chain goes back to the blocks unless it is still a bin's list. The caller
 * owns the slot (steal held, or the owner itself). 0, or the error of
 * tcache_return_handoff (the word keeps what is left). */
int tcache_settle_handoff(struct heap *h, struct cache_slot *s);
/* Drains a slot's bins back into the heap (to blocks). The caller owns the
 * slot: its owner is gone, or steal is held. Returns 0, or -ETIMEDOUT when
 * a guarded segment lock stayed held: the drain stops there, what is left
 * is in the bins and the handoff word (finished by the next drain, or by
 * the owner before it uses the word again). */
int tcache_drain_slot(struct heap *h, struct cache_slot *s);
/* Takes slot s for a trimmer, reclaimer or verify (steal = our pid): 0, or
 * -EBUSY. A holder that died is replaced, and what it left half done is
 * settled. owner_dead: a segment lock that cannot be taken (-ETIMEDOUT)
 * fails it, with the slot untouched and given back. */
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
/* Leaves a cache operation begun with tcache_enter(). */
static inline void tcache_leave(struct tcache *tc)
{
    compiler_barrier();
    /* release: publishes our bin updates to a trimmer that sees busy == 0
     * (pairs with tcache_steal_begin's acquire of busy). */
    store_release(&tc->slot->busy, 0);
}

/* Moves a bin's head from head_was to head and its net by dnet in one
 * cas128 of the pair {head, net} (layout.h pins them together): a refill's
 * or a cut's commit, so no kill parts objects from their count. Only the
 * bin's holder (its owner while busy, or the holder of a dead slot) calls
 * it, so it never fails but on a corrupt bin (false). */
static inline bool bin_commit(struct cache_bin *b, uint64_t head_was, uint64_t head, int64_t dnet)
{
    tagged_head_t old, nw;

    old.s.off = head_was;
    old.s.tag = load_relaxed(&b->net);
    nw.s.off = head;
    nw.s.tag = old.s.tag + (uint64_t) dnet;
    return cas128((tagged_head_t *) (void *) b, &old, nw);
}

/* ---- recycler.c ---- */
/* actor: the slot whose transit record covers the bundle (NULL: none, the
 * caller keeps the bundle reachable itself or accepts losing it); noted:
 * the fault point between its record and the CAS (the caller's kind of
 * transfer, for the death tests). */
bool recycler_push(struct heap *h,
                   struct cache_slot *actor,
                   enum shm_fault_point noted,
                   struct cache_bin *stats_bin,
                   unsigned cls,
                   uint64_t first,
                   uint32_t count,
                   uint32_t maxseg,
                   bool force);
/* Pops a bundle; returns its first object's offset (0: empty). */
uint64_t recycler_pop(struct heap *h,
                      struct cache_slot *actor,
                      enum shm_fault_point noted,
                      struct cache_bin *stats_bin,
                      unsigned cls,
                      uint32_t *ret_count);

/* ---- heap.c ---- */
int heap_map_segment(struct heap *h, uint32_t index);
struct seg_map *heap_seg_for(struct heap *h, uint64_t off); /* maps on demand */
/* seg_at() and seg_obj_at() (above) in the heap segment off names, mapped
 * on demand; NULL for the control segment's offsets (0 among them). */
void *heap_at(struct heap *h, uint64_t off, uint64_t len, uint64_t align);
void *heap_obj_at(struct heap *h, uint64_t off);
void heap_count_bad_free(struct heap *h);
/* Maps the header page behind fd read-only at base (the control segment's
 * first page) and closes fd; fd < 0 is returned as the error. */
int heap_map_header(void *base, int fd);

/* ---- ctl.c ---- */
/* The header page's magic, layout version, header size and max_segments. */
int ctl_check_page(const struct ctl_header *c);
/* ctl_check_page, and the control segment's size (fstat) against ctl_size. */
int ctl_check_header(const struct ctl_header *c, uint64_t size);
/* Sizes fd and writes a fresh control segment with cfg into it. */
/* The bytes of a new segment: segment_size, or more for a large request. */
uint64_t create_segment_bytes(const struct shm_config *cfg, uint64_t min_bytes);
/* Makes the memfd of a segment of at least `size` bytes by `policy`: the
 * first page size that works (hugetlb: the metadata's pages reserved now;
 * then sealed against shrinking and growing), the size rounded up to whole
 * pages and blocks. */
int create_segment_memfd(
        uint64_t size, int policy, int *ret_fd, uint64_t *ret_size, uint64_t *ret_page);
int ctl_format(int fd, const struct shm_config *cfg);
int ctl_lock(struct ctl_header *c);
/* ctl_lock for h: guarded like its segment locks when heap_guard_locks
 * was called (the daemon's adoption takes it), else ctl_lock. */
int ctl_lock_for(struct heap *h);
/* Counts what a guarded lock of segment seg (0: the control segment)
 * found, for heap_lock_report (segment.c). */
void heap_lock_note(struct heap *h, uint32_t seg, const struct shlock_note *n, int r);
void ctl_unlock(struct ctl_header *c);
/* Raises the heap's peak of bytes in use to `bytes` if it is higher;
 * returns the peak. */
uint64_t ctl_raise_peak(struct ctl_header *c, uint64_t bytes);

#endif
