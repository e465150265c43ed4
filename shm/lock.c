/* The lock of shared memory; see lock.h.
 *
 * The word is the kernel's PI futex word (futex(2), "Priority-inheritance
 * futexes"): 0 is free, else the holder's TID, with FUTEX_WAITERS (threads
 * are queued in the kernel: unlocking must ask it) and FUTEX_OWNER_DIED.
 * Priority inheritance, as before with glibc's PI mutex, because the kernel
 * then tracks the owner: a plain futex stranded a sleeping waiter when the
 * thread an unlock woke was killed before taking the lock while another
 * took it on the fast path (death_random_kill_trimmer). Uncontended, a
 * lock and an unlock are one CAS each and no system call.
 *
 * Take: CAS {0, 0} -> {tid, tid} (word, holder: below). Else FUTEX_LOCK_PI, which takes a free
 * word, or queues us behind a live holder (boosting it), or says the word is nobody's: ESRCH    it
 * names a thread that does not exist: a holder that died with nobody waiting (no robust list:
 * nobody marked it), or a word a client wrote; EPERM    it names a kernel thread (written); EDEADLK
 * it names us, and no thread takes a shared lock twice: a dead holder whose TID we were given, or
 * written. Such a word is taken by one CAS from the word seen before the call (or that word with
 * the WAITERS bit the kernel sets before it looks the owner up), keeping WAITERS (the unlock then
 * asks the kernel, which knows whether anyone waits): EOWNERDEAD. A word that changed meanwhile is
 * asked about again, so a live holder is never robbed. EAGAIN (the holder
 * is exiting) and EINTR: again.
 *
 * A holder that dies with threads waiting needs no robust list: its exit
 * hands each PI futex it owns to the first waiter (exit_pi_state_list
 * clears the owner) and the waiter, finding no owner, sets
 * FUTEX_OWNER_DIED as it writes its TID (fixup_pi_state_owner;
 * lock_kernel_marks_dead_holder checks it). So a 0 from the kernel with
 * that bit is EOWNERDEAD, the bit cleared; a client that writes the bit
 * only causes a repair, which must be safe anyway (it can write a dead
 * TID too). A waiter that had not yet attached when the holder died gets
 * ESRCH instead: above.
 *
 * A holder that dies with nobody waiting leaves its TID in the word until
 * someone locks. Had a new thread been given that TID meanwhile, lockers
 * would wait on an innocent thread: the daemon's locks have a deadline, and
 * the daemon takes every lock once when it reclaims a dead client
 * (seg_recover_all), so the window is from the death to the reclaim, while
 * a TID comes back only after pid_max others are used.
 *
 * `holder` is the holder's TID, taken and let go of with the word in one
 * 64-bit CAS (or stored right after the kernel's handover, right before
 * the kernel's unlock). It decides nothing about the lock:
 * it only tells, when a word is taken over, a holder that died (it wrote
 * itself down: an ordinary repair) from a word a client wrote (reported in
 * lock.h's shlock_note). Without a robust list the kernel no longer tells
 * them apart.
 *
 * Unlock: CAS {tid, tid} -> {0, 0}. With WAITERS, FUTEX_UNLOCK_PI hands
 * the lock to the first waiter. A word that is not ours (written while we
 * held it) is left alone: -EPERM. */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <time.h>

#include "shm/atomic.h"
#include "shm/lock.h"
#include "shm/os.h"

/* gettid is a system call: cached per thread, forgotten in a fork's child
 * (whose thread has another TID). */
/* No TID reaches this (the kernel's PID_MAX_LIMIT on 64-bit). */
#define LOCK_PID_MAX_LIMIT (UINT32_C(4) << 20)

static __thread uint32_t lock_tid;
static pthread_once_t lock_once = PTHREAD_ONCE_INIT;

static void lock_forget_tid(void)
{
    lock_tid = 0;
}

static void lock_register_fork(void)
{
    /* A failure (ENOMEM) only leaves the cache to a child that locks:
     * nothing to do about it here, and the tests fork after locking. */
    (void) pthread_atfork(NULL, NULL, lock_forget_tid);
}

static uint32_t lock_self(void)
{
    uint32_t t = lock_tid;

    if (!t) {
        (void) pthread_once(&lock_once, lock_register_fork);
        t = (uint32_t) os_tid();
        lock_tid = t;
    }
    return t;
}

void shlock_init(struct shlock *l)
{
    store_relaxed(&l->word, 0);
    store_relaxed(&l->holder, 0);
}

uint32_t shlock_word(const struct shlock *l)
{
    return load_relaxed(&l->word);
}

#if defined(__SANITIZE_THREAD__)
#    define tsan_acquire(p) __tsan_acquire(p)
#    define tsan_release(p) __tsan_release(p)
#else
#    define tsan_acquire(p) ((void) (p))
#    define tsan_release(p) ((void) (p))
#endif

static uint64_t lock_pair(uint32_t word, uint32_t holder)
{
    return word | (uint64_t) holder << 32;
}

/* Takes a word the kernel said is nobody's (seen: the word before the
 * call), and says in *ret_holder who had written himself down. true:
 * ours. */
static bool lock_take_dead(struct shlock *l, uint32_t seen, uint32_t tid, uint32_t *ret_holder)
{
    uint64_t cur = load_relaxed(&l->pair);
    uint32_t w = (uint32_t) cur;

    if (w != seen && w != (seen | FUTEX_WAITERS))
        return false;
    *ret_holder = (uint32_t) (cur >> 32);
    /* acquire: pairs with the release of whoever let go last. */
    return cas_strong_acquire(&l->pair, &cur, lock_pair(tid | (w & FUTEX_WAITERS), tid));
}

/* Whether a word the kernel said is nobody's (r: what it said) was
 * written by a client rather than left by a holder that died, for the
 * report only: both are taken over and repaired alike. A holder wrote
 * itself down in `holder`. A waiter the kernel handed the lock to and that
 * was killed on its way back from the system call did not, but the
 * kernel's handover sets the waiters bit (wake_futex_pi,
 * fixup_pi_state_owner), so a word with that bit is not reported unless
 * it cannot be a thread at all: a kernel thread (EPERM) or a TID of
 * PID_MAX_LIMIT or more. A locker whose FUTEX_LOCK_PI found the word free
 * and took it, killed on its way back before writing itself down, leaves
 * a record of 0: not reported either (below). */
static bool lock_word_written(uint32_t seen, uint32_t holder, int r)
{
    uint32_t tid = seen & FUTEX_TID_MASK;

    if (r == -EPERM || tid >= LOCK_PID_MAX_LIMIT)
        return true;
    /* A record of 0 is what the last unlock left (it clears the record
     * before the word): a locker the kernel gave the free word to, killed
     * before writing itself down, leaves exactly that beside its TID (the
     * decay kill storm met it). So is a dead TID a client wrote over a
     * free lock: the two are taken over and repaired alike, and only a
     * record that names another thread is reported. */
    if (r == -EDEADLK) /* our own TID: we hold nothing, whatever the record */
        return holder != tid && !(seen & FUTEX_WAITERS);
    return holder != tid && holder != 0 && !(seen & FUTEX_WAITERS);
}

/* deadline NULL: no deadline. */
static int
lock_slow(struct shlock *l, uint32_t tid, const struct timespec *deadline, struct shlock_note *n)
{
    uint32_t nap_us = 20;

    for (;;) {
        uint64_t both = load_relaxed(&l->pair);
        uint32_t seen = (uint32_t) both, holder;
        int r;

        if (seen == 0) {
            /* acquire: pairs with the release of the last holder. */
            if (cas_strong_acquire(&l->pair, &both, lock_pair(tid, tid)))
                return 0;
            continue;
        }
        r = os_futex_lock_pi(&l->word, deadline);
        switch (r) {
        case 0:
            tsan_acquire(&l->word); /* the kernel's handover, unseen by TSan */
            /* Relaxed: holders only. Killed before this store, it leaves
             * the waiters bit the kernel's handover set (lock_word_written). */
            store_relaxed(&l->holder, tid);
            if (load_relaxed(&l->word) & FUTEX_OWNER_DIED) {
                /* Relaxed: ours already (the kernel's handover acquired);
                 * an atomic RMW so that a waiters bit the kernel sets
                 * meanwhile stays. */
                (void) fetch_and_relaxed(&l->word, ~(uint32_t) FUTEX_OWNER_DIED);
                return EOWNERDEAD;
            }
            return 0;
        case -ESRCH:
        case -EPERM:
        case -EDEADLK:
            if (!lock_take_dead(l, seen, tid, &holder))
                continue;
            if (!lock_word_written(seen, holder, r))
                return EOWNERDEAD;
            if (r == -EDEADLK)
                n->own_word = true;
            else
                n->dead_tid = seen & FUTEX_TID_MASK;
            return EOWNERDEAD;
        case -EAGAIN:
        case -EINTR:
            continue;
        case -ETIMEDOUT:
            n->word = load_relaxed(&l->word);
            return ETIMEDOUT;
        case -EINVAL:
            /* The word disagrees with the kernel's record of the holder.
             * For an instant after a holder died with threads waiting
             * (its exit cleared the owner, the waiter it woke has not
             * written its TID yet: death_lock_waiters_killed met it), or
             * for as long as a written word stands while threads wait. A
             * nap, then again: for a deadline, until it passes; without
             * one, as long as a live holder would be waited for. */
            n->word = load_relaxed(&l->word);
            if (deadline && os_realtime_passed(deadline))
                return ETIMEDOUT;
            os_nap_us(nap_us);
            if (nap_us < 1000)
                nap_us *= 2;
            continue;
        default: /* ENOSYS, EFAULT, ENOMEM: no retry helps */
            n->word = load_relaxed(&l->word);
            return -r;
        }
    }
}

static int lock_take(struct shlock *l, const struct timespec *deadline, struct shlock_note *n)
{
    uint32_t tid = lock_self();
    uint64_t free_pair = 0;

    n->dead_tid = 0;
    n->own_word = false;
    n->word = 0;
    /* Word and holder in one CAS, so that no kill leaves one without the
     * other. acquire: pairs with the release in shlock_unlock. */
    if (cas_strong_acquire(&l->pair, &free_pair, lock_pair(tid, tid)))
        return 0;
    return lock_slow(l, tid, deadline, n);
}

int shlock_lock(struct shlock *l)
{
    struct shlock_note n;

    return lock_take(l, NULL, &n);
}

int shlock_lock_until(struct shlock *l, uint32_t wait_ms, struct shlock_note *n)
{
    struct timespec deadline;

    os_realtime_deadline(wait_ms, &deadline);
    return lock_take(l, &deadline, n);
}

int shlock_unlock(struct shlock *l)
{
    uint32_t tid = lock_self(), w = tid;
    uint64_t mine = lock_pair(tid, tid);

    /* Both at once (see lock_take). release: pairs with the acquire of
     * the next holder. */
    if (cas_strong_release(&l->pair, &mine, 0))
        return 0;
    /* The waiters bit (or a holder record a client wrote): the record
     * first, killed after it the word keeps the waiters bit or names a
     * holder that let go of nothing (lock_word_written). */
    store_relaxed(&l->holder, 0);
    if (cas_strong_release(&l->word, &w, 0))
        return 0;
    if ((w & FUTEX_TID_MASK) != tid)
        return -EPERM;
    tsan_release(&l->word); /* the kernel hands over: announce it to TSan */
    return os_futex_unlock_pi(&l->word);
}
