/* The bytes shared between processes: a versioned ABI.
 *
 * Glossary
 *   heap       one control segment (index 0) plus heap segments 1..N, each a
 *              memfd. Every attached process maps them all.
 *   offset     shmheap_off_t = segment index << SHM_SEG_SHIFT | byte offset.
 *              The same value names the same byte in every process; 0 is
 *              null (it is the control segment's magic, never an object).
 *   block      SHM_BLOCK_SIZE bytes of a heap segment; block i starts at
 *              byte i << SHM_BLOCK_SHIFT. One u64 of metadata per block,
 *              in a dense array apart from the data (meta.h).
 *   unit       the commit unit: max(backing page size, block size). Memory
 *              is committed and decommitted in whole units.
 *   slab       1..5 blocks dedicated to one size class; objects from its
 *              start, then one owner tag (u16) per object, then a bitmap
 *              of free objects at its end.
 *   owner      an attachment whose private objects are tracked: an object
 *              is private from malloc until heap_to_off() shares it, and
 *              carries its owner's tag (owned.c) meanwhile, so that the
 *              objects of an owner that dies or detaches can be freed.
 *   run        consecutive blocks for one large object, arena or pool chunk.
 *   cache slot a thread cache's shared state: per class a list of free
 *              objects and the owner's counters (slot.c, tcache.c).
 *   recycler   per class, a Treiber stack of bundles of free objects.
 *
 * Nothing here holds a pointer. Every field another process may write is
 * accessed with the helpers in atomic.h; which order each access needs is
 * said where it is done. Changing anything here means bumping
 * SHM_LAYOUT_VERSION. */
#ifndef SHM_LAYOUT_H
#define SHM_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "shm/atomic.h"

#define SHM_CTL_MAGIC UINT64_C(0x4c54434850414548) /* "HEAPHCTL" */
#define SHM_SEG_MAGIC UINT64_C(0x4745534850414548) /* "HEAPHSEG" */
/* 4: shm_config.reconnect_wait_ms, ctl_header.client_id_next (restart).
 * 5: the header page (ctl_header's first page, sealed under a daemon).
 * 6: cache_slot.transit and transit_info; a recycler head's tag is
 *    {sequence, actor} (recycler.c).
 * 7: struct shlock (lock.c) in place of glibc's pthread_mutex_t. */
#define SHM_LAYOUT_VERSION 7u

/* Offsets: 5 bits of segment index over 34 bits of byte offset. A process
 * reserves SHM_MAX_SEGMENTS << SHM_SEG_SHIFT bytes of address space per
 * attachment (512 GiB, PROT_NONE) and maps segment i at i << SHM_SEG_SHIFT,
 * so pointer <-> offset is one add or subtract. */
#define SHM_SEG_SHIFT    34u
#define SHM_SEG_SPAN     (UINT64_C(1) << SHM_SEG_SHIFT)
#define SHM_OFF_MASK     (SHM_SEG_SPAN - 1)
#define SHM_MAX_SEGMENTS 32u
#define SHM_VA_SPAN      ((uint64_t) SHM_MAX_SEGMENTS << SHM_SEG_SHIFT)

/* Every heap segment's metadata array starts here, so free's fast path
 * computes a block's metadata address from the offset alone. */
#define SHM_META_OFF 4096u

/* A lock in shared memory (lock.c): the kernel's PI futex word, 0 free,
 * else the holder's TID | FUTEX_WAITERS | FUTEX_OWNER_DIED; and the
 * holder's TID as it wrote it down after taking the word (0 when free),
 * which only tells a dead holder from a written word in reports. Nothing
 * in it is a pointer or an index. */
struct shlock {
    union {
        struct {
            uint32_t word;
            uint32_t holder;
        };
        uint64_t pair; /* both, for the CASes that take and let go of both at once */
    };
} __attribute__((aligned(8)));

#define SHM_BLOCK_SHIFT 16u
#define SHM_BLOCK_SIZE  (UINT64_C(1) << SHM_BLOCK_SHIFT)

/* The smallest heap segment the layout allows. free's fast path reads a
 * block's metadata word before it compares the block index with nblocks,
 * at up to SHM_META_OFF + 8 * 2^18 bytes into the segment: that read must
 * stay inside the mapping. The config's bound on segment_size
 * (config/config.c) is a policy above this floor, checked against it
 * there at compile time. */
#define SHM_SEG_MIN_SIZE (UINT64_C(4) << 20)
_Static_assert(SHM_SEG_MIN_SIZE >= SHM_META_OFF + 8 * (SHM_SEG_SPAN >> SHM_BLOCK_SHIFT),
               "free's fast path reads up to 2 MiB + 4 KiB of metadata");

/* Size classes: 16..128 in steps of 16, then 8 classes per doubling up to
 * 32 KiB, so a class is at most 12.5% larger than any request above 128
 * bytes it serves. Every class is a multiple of 16, so every small object
 * is 16-byte aligned (max_align_t), and each free object has room for the
 * two links a bundle needs. */
#define SHM_NCLASSES         72u
#define SHM_SMALL_MAX        32768u
#define SHM_MIN_OBJECT       16u
#define SHM_SLAB_MAX_BLOCKS  5u
#define SHM_SLAB_MAX_OBJECTS 4096u /* no slab holds more (sizeclass.c checks) */

#define SHM_MAX_SLOTS  1024u /* thread caches across all processes */
#define SHM_MAX_OWNERS 8192u /* tracked attachments at once; tags 1..SHM_MAX_OWNERS */
#define SHM_MAX_ROOTS  256u
#define SHM_ROOT_NAME  56u /* bytes, including the terminating NUL */

enum shm_page_policy {
    SHM_PAGES_AUTO = 0, /* 1 GiB, then 2 MiB, then 4 KiB with MADV_HUGEPAGE */
    SHM_PAGES_1G,
    SHM_PAGES_2M,
    SHM_PAGES_OFF,
    _SHM_PAGES_MAX,
};

/* The tunables clients read. The daemon (or a test) writes them and then
 * bumps ctl_header.config_gen with release; clients load config_gen with
 * acquire at a coarse cadence and only then re-read these. */
struct shm_config {
    uint64_t segment_size;
    uint32_t huge_pages; /* enum shm_page_policy */
    uint32_t thread_cache_bytes;
    uint32_t bundle_objects;
    uint32_t recycler_cap_bundles;
    uint32_t retain_empty_blocks;
    uint32_t trim_interval_ms;
    uint32_t max_clients;
    uint32_t max_segments;
    /* Quotas (quota.c); 0 = unlimited. A client checks its own against
     * max_client_bytes; the daemon checks each uid's and sets the owner
     * entries' `refuse` word. */
    uint64_t max_client_bytes;
    uint64_t max_uid_bytes;
    /* How long a client whose daemon is gone waits for a new one when it
     * needs it (a new segment) before failing with ENOMEM. */
    uint32_t reconnect_wait_ms;
    uint32_t pad0;
};

struct seg_entry {
    uint64_t size;      /* bytes; 0 while not yet published */
    uint32_t page_size; /* bytes of the backing page: 4096, 2 MiB or 1 GiB */
    uint32_t state;     /* enum seg_state */
};

enum punch_phase {
    PUNCH_OUTSIDE = 0, /* no punch, or its puncher is outside the lock */
    PUNCH_RESERVING,   /* reserving objects under the lock */
    PUNCH_RESTORING,   /* restoring them under the lock */
};

enum seg_state {
    SEG_ABSENT = 0,
    SEG_LIVE,
    SEG_RETIRED, /* released by the daemon; its index is not reused */
};

/* A thread cache's per-class state. Only the owning thread writes it while
 * it owns the slot; a trimmer that has taken the slot (see the busy/steal
 * protocol in tcache.c) or the reclaimer of a dead process writes it
 * otherwise. 64 bytes, so classes never share a cache line. */
struct __attribute__((aligned(64))) cache_bin {
    uint64_t head; /* bin_word(): offset of the first free object and the object
                    * count; each object's first word links on with a plain offset */
    uint64_t net;  /* objects that came into the bin from outside (refills) minus
                    * those that left it (flushes): objects in use = net - count */
    uint64_t rec_pushes;
    uint64_t rec_pops;
    uint64_t rec_retries; /* failed recycler CAS attempts */
    /* The last refill's objects not yet handed out, at the bottom of the
     * list: they carry no owner tag yet (alloc.c tags them at the pop);
     * every other object on the list carries the owner's. Only ever too
     * large (stale after a drain), which costs a look at a tag. */
    uint32_t untagged;
    uint32_t pad0;
    uint64_t pad[2];
};

/* A cache bin's head word: the first object's offset and the number of
 * objects on the list, so a pop or a push is one store (offsets fit in
 * 39 bits). Packed and unpacked only here. */
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

/* A recycler head's tag: a sequence number every push and pop bumps (so no
 * CAS succeeds on a head that moved since it was read: ABA), and the
 * actor, the cache slot (index + 1; 0: none) whose CAS made it. */
#define REC_ACTOR_BITS 16
static inline uint64_t rec_tag(uint64_t seq, uint32_t actor)
{
    return seq << REC_ACTOR_BITS | actor;
}

static inline uint64_t rec_seq(uint64_t tag)
{
    return tag >> REC_ACTOR_BITS;
}

static inline uint32_t rec_actor(uint64_t tag)
{
    return (uint32_t) (tag & ((1u << REC_ACTOR_BITS) - 1));
}

/* A slot's transit word: the recycler sequence number its CAS expects,
 * the class, push or pop, and the state. */
enum transit_state {
    TRANSIT_NONE = 0,
    TRANSIT_PENDING, /* the CAS may or may not have happened */
    TRANSIT_WON,     /* it happened: marked by the next mover of the head */
};
#define TRANSIT_PUSH 4u
static inline uint64_t transit_word(uint64_t seq, unsigned cls, bool push, enum transit_state st)
{
    return seq << 12 | (uint64_t) (cls & 0xff) << 4 | (push ? TRANSIT_PUSH : 0) | st;
}

static inline uint64_t transit_seq(uint64_t w)
{
    return w >> 12;
}

static inline unsigned transit_cls(uint64_t w)
{
    return (unsigned) (w >> 4) & 0xff;
}

static inline bool transit_push(uint64_t w)
{
    return (w & TRANSIT_PUSH) != 0;
}

static inline enum transit_state transit_state(uint64_t w)
{
    return (enum transit_state)(w & 3);
}

enum slot_state {
    SLOT_FREE = 0,
    SLOT_OWNED,  /* a live thread uses it */
    SLOT_ORPHAN, /* its thread exited without a flush, or its process died */
};

struct __attribute__((aligned(64))) cache_slot {
    uint32_t state;     /* enum slot_state; claimed by CAS */
    uint32_t pid;       /* owning process */
    uint64_t client_id; /* the attachment that owns it (the daemon's client id) */
    uint32_t busy;      /* owner is inside a cache operation (tcache.c) */
    uint32_t steal;     /* pid of a trimmer that holds the cache; the owner waits */
    uint32_t ops;       /* small allocations since the owner's last tick */
    uint32_t pad0;
    uint64_t allocs; /* small allocations counted at ticks: the total is allocs + ops */
    uint64_t large_allocs;
    uint64_t large_frees;
    uint64_t large_bytes_alloc;
    uint64_t large_bytes_freed;
    uint64_t peak_bytes;    /* this slot's peak of bytes in use, sampled on slow paths */
    uint64_t trim_gen_seen; /* last trim generation this slot flushed for */
    int64_t reported_bytes; /* this slot's in-use bytes last added to ctl.bytes_sampled */
    uint64_t handoff;       /* a chain of objects on their way back to the blocks (tcache.c) */
    /* The slot's counters when its owner claimed it: the owner's own
     * figures are the counters minus these. */
    int64_t claim_bytes;
    uint64_t claim_allocs;
    uint64_t claim_frees;
    /* A bundle between this slot and a recycler (recycler.c): transit is
     * {first object, transit_word()}, written by the owner before each
     * CAS and marked won by whoever moves the recycler's head next;
     * transit_info is the bundle's object count. Both 0 outside a
     * transfer. */
    uint64_t transit_info;
    uint64_t pad1;
    tagged_head_t transit;
    struct cache_bin bins[SHM_NCLASSES];
};

enum owner_state {
    OWNER_FREE = 0,
    OWNER_LIVE,     /* its attachment may still use its private objects */
    OWNER_DETACHED, /* detached: its private objects are unreachable */
    OWNER_SWEEPING, /* its objects are being freed by `sweeper` */
};

/* Why the daemon refuses an owner new memory (owner_entry.refuse). */
enum owner_refuse {
    OWNER_REFUSE_UID = 1u << 0, /* its uid holds more than max_uid_bytes */
};

/* An attachment's entry in the owner table; its tag is index + 1. Claimed
 * by CAS on state (owned.c), freed by whoever sweeps its objects
 * (reclaim.c). */
struct owner_entry {
    uint32_t state; /* enum owner_state */
    uint32_t pid;
    uint64_t client_id;
    uint32_t sweeper; /* pid of the process sweeping it (CAS from 0 or a dead pid) */
    uint32_t refuse;  /* OWNER_REFUSE_* bits, written by the daemon (quota.c) */
    uint64_t pad1;
};

struct __attribute__((aligned(64))) recycler {
    tagged_head_t head; /* {offset of the first bundle, tag} */
    uint64_t nbundles;  /* approximate: bumped after a push, dropped after a pop */
    uint64_t objects;   /* objects in those bundles, likewise approximate */
    uint64_t refused;   /* frees of this class counted by a cache but refused by the slab */
    uint64_t reclaimed; /* objects a dead or detached owner left, freed by a sweep
                         * (reclaim.c) straight to their slabs */
    uint64_t pad[2];
};

/* A bundle's link: word 1 of its first object, while the bundle is in a
 * recycler (recycler.c). Packed and unpacked only here:
 *   bits  0..39  offset of the next bundle's first object (0: none)
 *   bits 40..47  the highest segment index among the bundle's objects
 *   bits 48..63  the bundle's object count */
#define BUNDLE_SEG_SHIFT   40
#define BUNDLE_COUNT_SHIFT 48
static inline uint64_t bundle_link(uint64_t next, uint32_t count, uint32_t maxseg)
{
    return next | (uint64_t) count << BUNDLE_COUNT_SHIFT |
           (uint64_t) (maxseg & 0xff) << BUNDLE_SEG_SHIFT;
}

static inline uint64_t bundle_next(uint64_t link)
{
    return link & ((UINT64_C(1) << BUNDLE_SEG_SHIFT) - 1);
}

static inline uint32_t bundle_count(uint64_t link)
{
    return (uint32_t) (link >> BUNDLE_COUNT_SHIFT);
}

static inline uint32_t bundle_maxseg(uint64_t link)
{
    return (uint32_t) (link >> BUNDLE_SEG_SHIFT) & 0xff;
}

struct root_entry {
    char name[SHM_ROOT_NAME]; /* written under ctl lock; "" is an empty entry */
    uint64_t off;
};

/* The control segment's first page, the header page, holds what only the
 * heap's owner writes: the header, the config and its generation, the
 * segment table and the client id counter. Under shmheapd it is a memfd of
 * its own (or the file `header-page` of a state directory) that the daemon
 * maps read-write and then seals with F_SEAL_FUTURE_WRITE before it hands
 * it out; every attachment maps it read-only over the first page of the
 * control segment (heap_attach, hooks->open_header), so no client can
 * write it and the control memfd's own first page is never read. A heap
 * whose owner is not a daemon (local heaps, tests) keeps the header page in
 * the control memfd's first page. Everything after it is writable by every
 * attachment, and the daemon trusts none of it. */
#define SHM_HEADER_PAGE 4096u

struct ctl_header {
    union {
        struct {
            uint64_t magic;
            uint32_t version;
            uint32_t header_size;
            uint64_t ctl_size;
            uint64_t config_gen; /* bumped after each config change */
            uint64_t created_ns;
            struct shm_config config;
            uint32_t nsegments; /* published count of segment entries, release */
            uint32_t pad0;
            struct seg_entry segs[SHM_MAX_SEGMENTS];
            /* The next client id the daemon hands out: a restarted daemon
             * that adopts the heap goes on from here, so that a new client
             * never takes the id of one that re-attaches (daemon/adopt.c). */
            uint64_t client_id_next;
            /* Bumped each time a restarted daemon copies the header page
             * into a new sealed memfd (a sealed one cannot be written
             * again): the fd store name carries it (daemon/fdstore.c). */
            uint64_t header_gen;
        };
        uint8_t header_page[SHM_HEADER_PAGE];
    };
    /* ---- writable by every attachment from here on ---- */
    uint64_t trim_gen;   /* bumped by each trim (trim.c) */
    uint32_t slots_high; /* 1 + the highest slot index ever claimed: readers stop there */
    uint32_t pad_sh;
    struct shlock lock;     /* roots and segment table (lock.c) */
    uint32_t pad_lock[8];   /* to where glibc's mutex ended: the counters keep their line */
    uint64_t refused_frees; /* refused frees whose class was no longer known */
    uint64_t deaths_mid_op; /* slots reclaimed from a thread that died inside a cache
                             * operation: a few objects may have been in its hands */
    uint64_t pad1[1];
    /* Heap-wide event counters (atomic adds: they are rare). */
    uint64_t bad_frees;    /* pointer outside the heap or not an object */
    uint64_t double_frees; /* object returned to its block twice */
    uint64_t trim_bytes_released;
    uint64_t trims;
    uint64_t caches_reclaimed;
    uint64_t peak_bytes;              /* heap-wide peak bytes in use, sampled */
    uint64_t lost_objects;            /* objects a dead process held in flight */
    uint64_t bytes_sampled;           /* sum of the slots' reported_bytes (atomic adds) */
    uint64_t owned_reclaimed_objects; /* private objects freed after their owner went */
    uint64_t owned_reclaimed_bytes;
    uint64_t untracked_attaches; /* attachments made while the owner table was full */
    uint32_t owners_high;        /* 1 + the highest owner index ever claimed */
    uint32_t pad2;
    uint64_t owned_reclaimed_large; /* large objects among owned_reclaimed_objects */
    uint64_t pad3[3];
    struct recycler rec[SHM_NCLASSES];
    struct root_entry roots[SHM_MAX_ROOTS];
    struct owner_entry owners[SHM_MAX_OWNERS];
    struct cache_slot slots[SHM_MAX_SLOTS];
};

/* A segment lock holder writes down what it is doing here before it does
 * it, so that the next holder, on EOWNERDEAD (lock.c), can finish or undo it. */
enum journal_op {
    JOP_NONE = 0,
    JOP_TAKE,      /* objects leave slabs onto `chain` */
    JOP_RETURN,    /* objects on `chain` go back to their slabs */
    JOP_CARVE,     /* block `block` becomes a slab or run */
    JOP_DECOMMIT,  /* blocks [block, block+n) are being punched out */
    JOP_RUN_CLAIM, /* run [block, block+n) being claimed; slot_word: the slot whose
                    * large_allocs was `chain` before (run.c) */
    JOP_RUN_FREE,  /* run [block, block+n) being freed; slot_word: the slot whose
                    * large_frees was `chain` before */
};

struct seg_journal {
    uint32_t op; /* enum journal_op */
    uint32_t cls;
    uint64_t chain; /* objects in flight (see segment.c) */
    uint32_t block;
    uint32_t n;
    uint64_t slot_word; /* TAKE: the cache bin the chain goes to; RETURN: the handoff word */
};

struct seg_header {
    uint64_t magic;
    uint32_t version;
    uint32_t index;
    uint64_t size;
    uint32_t page_size;
    uint32_t unit_shift; /* log2 of the commit unit */
    uint32_t nblocks;
    uint32_t first_block;    /* blocks before it hold this header and metadata */
    uint64_t meta_off;       /* u64 per block */
    uint64_t free_tree_off;  /* bittree chain: block is FREE */
    uint64_t class_tree_off; /* SHM_NCLASSES chains: slab head with free objects */
    uint64_t class_tree_stride;
    uint64_t commit_map_off; /* one bit per unit: committed */
    uint64_t meta_end;       /* first byte after all metadata */
    struct shlock lock;      /* lock.c; in the line of the journal it guards */
    struct seg_journal journal;
    uint64_t committed_units; /* under lock; lock-free readers snapshot */
    uint64_t free_blocks;
    uint64_t decommits;
    /* A punch of free pages inside a slab in flight (punch.c): the
     * objects on those pages are reserved until the puncher puts them
     * back; a reaper does it if the puncher (pid) died. Under the lock. */
    uint32_t punch_pid;
    uint32_t punch_block;
    uint64_t punch_mask[2]; /* pages of the slab, 16 per block, up to 5 blocks */
    /* The objects that punch reserved, exactly: a restore frees these and
     * no others (an object of a masked page the puncher had not reached
     * when it died may be allocated since). */
    uint64_t punch_reserved[SHM_SLAB_MAX_OBJECTS / 64];
    /* Bytes in RUN_LARGE runs: under the lock, and recounted from the
     * metadata by recovery, so a death never leaves it wrong. */
    uint64_t large_bytes;
    /* enum punch_phase: what the puncher is doing under the lock, so that
     * a recovering holder can finish it (punch.c). */
    uint32_t punch_phase;
    uint32_t pad;
};

_Static_assert(sizeof(struct cache_bin) == 64, "cache_bin is one cache line");
_Static_assert(offsetof(struct cache_bin, net) == 8, "a bin's {head, net} is one cas128 pair");
_Static_assert(offsetof(struct cache_slot, transit) % 16 == 0, "transit is 16-aligned");
_Static_assert(sizeof(struct recycler) == 64, "recycler is one cache line");
_Static_assert(offsetof(struct recycler, head) % 16 == 0, "recycler head is 16-aligned");
_Static_assert(offsetof(struct cache_slot, bins) % 64 == 0, "bins start on a cache line");
_Static_assert(sizeof(struct cache_slot) % 64 == 0, "slots do not share cache lines");
_Static_assert(offsetof(struct ctl_header, rec) % 64 == 0, "recyclers are line-aligned");
_Static_assert(offsetof(struct ctl_header, slots) % 64 == 0, "slots are line-aligned");
_Static_assert(offsetof(struct ctl_header, header_gen) + 8 <= SHM_HEADER_PAGE,
               "the owner's fields fit the header page");
_Static_assert(offsetof(struct ctl_header, trim_gen) == SHM_HEADER_PAGE,
               "the writable part starts on the page after the header page");
_Static_assert(sizeof(struct root_entry) == 64, "root entry is one line");
_Static_assert(sizeof(struct owner_entry) == 32, "owner entries pack two to a line");
_Static_assert(SHM_MAX_OWNERS < UINT16_MAX, "owner tags are u16");
_Static_assert(sizeof(struct shlock) == 8, "a lock is its futex word and its holder's TID");
_Static_assert(offsetof(struct shlock, word) == 0 && offsetof(struct shlock, holder) == 4,
               "pair is word | holder << 32 (x86-64 is little-endian)");
_Static_assert(offsetof(struct seg_header, lock) / 64 == offsetof(struct seg_header, journal) / 64,
               "a segment's lock shares the journal's cache line");
_Static_assert(sizeof(struct seg_header) <= 4096, "segment header fits its first page");

#endif
