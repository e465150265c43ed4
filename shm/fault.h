/* Fault points for the death tests (fault.c): when shm_fault_at equals a
 * point's number, that point raises SIGKILL (or SIGSTOP: shm_fault_action).
 * Only on cold paths. */
#ifndef SHM_FAULT_H
#define SHM_FAULT_H

extern int shm_fault_at;
/* What the point does: die there (the default), or stop there, holding
 * whatever it holds (a lock), until a SIGCONT or a SIGKILL. */
enum shm_fault_action {
    FAULT_ACTION_KILL = 0,
    FAULT_ACTION_STOP,
};
extern int shm_fault_action;
enum shm_fault_point {
    FAULT_NONE = 0,
    FAULT_TAKE_MID,   /* inside slab_take, objects half moved */
    FAULT_RETURN_MID, /* inside a slab return, objects half returned */
    FAULT_CARVE_MID,  /* inside a carve, block half formatted */
    FAULT_DECOMMIT_MID,
    FAULT_PUNCH_MID,         /* in a trim, objects reserved for a punch inside a slab */
    FAULT_PUNCH_RESERVE_MID, /* a punch's reservation, lock held: a bit cleared, not recorded */
    FAULT_PUNCH_RESTORE_MID, /* a punch's restore, lock held: a bit set, still recorded */
    FAULT_COMMIT_COUNT_MID,  /* a unit's commit bit changed, committed_units not yet */
    /* Runs, arenas, pools (run.c, arena.c, pool.c) */
    FAULT_RUN_CLAIM_MID,      /* a run's blocks claimed, journal open, lock held */
    FAULT_RUN_FREE_JOURNALED, /* a run free named in the journal, not committed, lock held */
    FAULT_RUN_FREE_MID,       /* a run free committed, blocks not released, lock held */
    FAULT_ARENA_CLAIMED,      /* an arena's run claimed (tagged), header not written */
    FAULT_ARENA_HEADER,       /* an arena's header live, its creator's tag still on */
    FAULT_POOL_CLAIMED,       /* a pool's first chunk claimed (tagged), header not written */
    FAULT_POOL_HEADER,        /* a pool's header live, its creator's tag still on */
    FAULT_POOL_GROW_CLAIMED,  /* a new chunk claimed (tagged), not linked */
    FAULT_POOL_GROW_LINKED,   /* a new chunk linked, still tagged, bump not moved */
    FAULT_POOL_DESTROY_MID,   /* a pool marked dying, one chunk freed, the rest not */
    /* The cache layer's transfers (tcache.c, recycler.c, slab.c) */
    FAULT_REFILL_POPPED,     /* a recycler pop's CAS done, the bundle not in the bin */
    FAULT_REFILL_DELIVERED,  /* the bundle in the bin, the transit record not cleared */
    FAULT_FLUSH_CUT,         /* a bundle cut from its bin, not pushed */
    FAULT_FLUSH_PUSHED,      /* the bundle pushed, the transit record not cleared */
    FAULT_GIVE_BACK_CUT,     /* a flush: a bundle past the handoff word, not pushed */
    FAULT_TAKE_DELIVERED,    /* a take's chain in the bin, journal open, lock held */
    FAULT_DRAIN_POPPED,      /* a full heap: a recycler's bundle popped, not yet handed off */
    FAULT_POP_NOTED,         /* a pop's transit record written, its CAS not yet tried */
    FAULT_PUSH_NOTED,        /* a push's transit record and link written, its CAS not yet tried */
    FAULT_FREE_TAGGED,       /* free's slow path: the object tagged ours, not pushed */
    FAULT_MALLOC_TAGGED,     /* malloc's slow path: a refill's object tagged, not popped */
    FAULT_MALLOC_POPPED,     /* malloc's slow path: popped, the bin's untagged count not lowered */
    FAULT_RETURN_LAST_NOTED, /* a slab return: the journal past the chain's last object, its
                              * handoff word not yet */
    /* A drain of the recyclers by a caller with no cache (the daemon's
     * trim and release), through a slot claimed for it (tcache.c) */
    FAULT_TRIM_DRAIN_NOTED,    /* its pop's transit record written, the CAS not yet tried */
    FAULT_TRIM_DRAIN_POPPED,   /* the pop's CAS done, the bundle not in the handoff word */
    FAULT_TRIM_DRAIN_HANDED,   /* the bundle in the handoff word, none of it returned */
    FAULT_TRIM_DRAIN_RETURNED, /* the bundle back in its slabs, the next pop not begun */
    /* verify's hold of the recyclers' bundles, in a slot claimed for it
     * (tcache.c: tcache_hold_*) */
    FAULT_VERIFY_NOTED,      /* its pop's transit record written, the CAS not yet tried */
    FAULT_VERIFY_POPPED,     /* the pop's CAS done, the bundle walked, not in the slot's bin */
    FAULT_VERIFY_HELD,       /* the bundle in the bin, the transit record not cleared */
    FAULT_VERIFY_CUT,        /* put back: the bundle cut from the bin, not pushed */
    FAULT_VERIFY_PUSH_NOTED, /* its push's record and link written, the CAS not yet tried */
    FAULT_VERIFY_PUSHED,     /* the bundle back in its recycler, the record not cleared */
    FAULT_COUNT,             /* one past the last point */
};
void shm_fault(enum shm_fault_point p);

#endif
