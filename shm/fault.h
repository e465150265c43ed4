/* Fault points for the death tests (fault.c): when shm_fault_at equals a
 * point's number, that point raises SIGKILL. Only on cold paths. */
#ifndef SHM_FAULT_H
#define SHM_FAULT_H

extern int shm_fault_at;
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
};
void shm_fault(enum shm_fault_point p);

#endif
