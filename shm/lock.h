/* The lock of shared memory (struct shlock, layout.h): a segment's, the
 * control segment's, a pool's grow lock. Our own, over the kernel's PI
 * futex, because any client can write it: nothing a client writes into it
 * can make the locker store anywhere but the lock itself, crash, abort, or
 * (with a deadline) hang. See lock.c for the protocol.
 *
 * Results, positive like pthread's (callers return -r):
 *   0           taken.
 *   EOWNERDEAD  taken, and the previous holder did not let go (it died
 *               inside, or a client wrote the lock): the caller repairs
 *               what the lock guards before using it. Nothing more to do:
 *               the next unlock is an ordinary one.
 *   ETIMEDOUT   shlock_lock_until only: still held by a live thread at
 *               the deadline (or a word a client wrote while threads
 *               waited in the kernel, which disagrees with its record).
 *   other       what the kernel answered that no retry fixes (ENOSYS,
 *               EFAULT, ENOMEM).
 */
#ifndef SHM_LOCK_H
#define SHM_LOCK_H

#include <stdbool.h>
#include <stdint.h>

#include "shm/layout.h"

/* What a lock found besides its holder, for the daemon's report. */
struct shlock_note {
    /* Taken over from a word no holder wrote down (a client wrote it): */
    uint32_t dead_tid; /* it named this thread, which did not exist */
    bool own_word;     /* it named the locking thread itself, which did not hold it */
    uint32_t word;     /* ETIMEDOUT or a kernel error: the word last seen */
};

void shlock_init(struct shlock *l);
/* Waits as long as it takes (a client's locks). */
int shlock_lock(struct shlock *l);
/* Waits at most wait_ms (0: one try, still recovering a dead holder's
 * word); n gets what it found. The daemon's locks. */
int shlock_lock_until(struct shlock *l, uint32_t wait_ms, struct shlock_note *n);
/* 0, or -EPERM when the word is not the caller's any more (a client wrote
 * it while we held it): it is left as it is, for the kernel's rules and the
 * next locker. */
int shlock_unlock(struct shlock *l);
/* The futex word, as a relaxed snapshot (the daemon's stuck-word check). */
uint32_t shlock_word(const struct shlock *l);

#endif
