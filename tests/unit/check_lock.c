/* Unit tests for the lock of shared memory (shm/lock.c), in a shared
 * anonymous mapping between real forked processes: a holder that exits
 * holding it with nobody waiting and with the parent waiting, every word a
 * client can write (a thread that does not exist, the locker's own TID,
 * garbage under the waiters bit, the owner-died bit alone), the deadline on a live holder, the TID
 * cache across fork, and an unlock of a word written meanwhile. */
#include <check.h>
#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/lock.h"
#include "tests/unit/suites.h"

/* A TID beyond any pid_max (the kernel's PID_MAX_LIMIT is 4 M). */
#define NO_SUCH_TID 0x3ffffffeu

static struct shlock *shared_lock(void)
{
    struct shlock *l = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    ck_assert_ptr_ne(l, MAP_FAILED);
    shlock_init(l);
    return l;
}

static uint32_t self_tid(void)
{
    return (uint32_t) syscall(SYS_gettid);
}

static void wait_exit_ok(pid_t p)
{
    int st;

    ck_assert_int_eq(waitpid(p, &st, 0), p);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 0);
}

START_TEST(lock_lock_unlock)
{
    struct shlock *l = shared_lock();

    ck_assert_int_eq(shlock_lock(l), 0);
    ck_assert_uint_eq(shlock_word(l), self_tid());
    ck_assert_int_eq(shlock_unlock(l), 0);
    ck_assert_uint_eq(shlock_word(l), 0);
    ck_assert_int_eq(shlock_lock(l), 0); /* a clean unlock leaves nothing to repair */
    ck_assert_int_eq(shlock_unlock(l), 0);
}
END_TEST

/* A child takes the lock and exits holding it, nobody waiting: its TID
 * stays in the word; the next lock is told the holder died, and owns it.
 * A holder that wrote itself down is not reported as a written word. */
START_TEST(lock_dead_holder_uncontended)
{
    struct shlock *l = shared_lock();
    struct shlock_note n;
    pid_t p;

    ck_assert_int_eq(shlock_lock(l), 0); /* the parent caches its TID first */
    ck_assert_int_eq(shlock_unlock(l), 0);
    p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0)
        _exit(shlock_lock(l) == 0 && shlock_word(l) == self_tid() ? 0 : 1);
    wait_exit_ok(p); /* also: the child's TID was its own, not the parent's cached one */
    ck_assert_uint_eq(shlock_word(l), (uint32_t) p);
    ck_assert_uint_eq(l->holder, (uint32_t) p);
    ck_assert_int_eq(shlock_lock_until(l, 10000, &n), EOWNERDEAD);
    ck_assert_uint_eq(n.dead_tid, 0);
    ck_assert(!n.own_word);
    ck_assert_uint_eq(shlock_word(l) & FUTEX_TID_MASK, self_tid());
    ck_assert_uint_eq(l->holder, self_tid());
    ck_assert_int_eq(shlock_unlock(l), 0);
    ck_assert_uint_eq(shlock_word(l), 0);
    ck_assert_uint_eq(l->holder, 0);
    ck_assert_int_eq(shlock_lock(l), 0);
    ck_assert_int_eq(shlock_unlock(l), 0);
}
END_TEST

/* The holder exits while the parent waits in the kernel: the kernel hands
 * the lock over marked owner-died. */
START_TEST(lock_dead_holder_contended)
{
    struct shlock *l = shared_lock();
    int up[2];
    pid_t p;
    char c;

    ck_assert_int_eq(pipe(up), 0);
    p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0) {
        if (shlock_lock(l) != 0 || write(up[1], "l", 1) != 1)
            _exit(1);
        /* The parent is queued once the kernel set the waiters bit. */
        while (!(__atomic_load_n(&l->word, __ATOMIC_RELAXED) & FUTEX_WAITERS))
            (void) usleep(1000);
        _exit(0);
    }
    ck_assert_int_eq(read(up[0], &c, 1), 1);
    ck_assert_int_eq(shlock_lock(l), EOWNERDEAD);
    ck_assert_uint_eq(shlock_word(l) & FUTEX_TID_MASK, self_tid());
    ck_assert_int_eq(shlock_unlock(l), 0);
    ck_assert_uint_eq(shlock_word(l), 0);
    wait_exit_ok(p);
    ck_assert_int_eq(shlock_lock(l), 0);
    ck_assert_int_eq(shlock_unlock(l), 0);
}
END_TEST

/* What lock.c relies on: the kernel hands a dead holder's PI futex to its
 * waiter with FUTEX_OWNER_DIED though the word was on no robust list.
 * Raw futex calls, no shlock. */
START_TEST(lock_kernel_marks_dead_holder)
{
    uint32_t *w = &shared_lock()->word;
    int up[2];
    pid_t p;
    char c;

    ck_assert_int_eq(pipe(up), 0);
    p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0) {
        uint32_t zero = 0;

        if (!__atomic_compare_exchange_n(w, &zero, self_tid(), false, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED) ||
            write(up[1], "l", 1) != 1)
            _exit(1);
        while (!(__atomic_load_n(w, __ATOMIC_RELAXED) & FUTEX_WAITERS))
            (void) usleep(1000);
        _exit(0);
    }
    ck_assert_int_eq(read(up[0], &c, 1), 1);
    ck_assert_int_eq(syscall(SYS_futex, w, FUTEX_LOCK_PI, 0, NULL, NULL, 0), 0);
    ck_assert_uint_eq(*w & FUTEX_TID_MASK, self_tid());
    ck_assert_uint_eq(*w & FUTEX_OWNER_DIED, FUTEX_OWNER_DIED);
    wait_exit_ok(p);
}
END_TEST

/* Words a client can write, each taken and reported as a dead holder's,
 * with and without a deadline. */
START_TEST(lock_written_words)
{
    struct shlock *l = shared_lock();
    struct shlock_note n;

    /* A thread that does not exist, alone and under the waiters bit. */
    l->word = NO_SUCH_TID;
    ck_assert_int_eq(shlock_lock_until(l, 10000, &n), EOWNERDEAD);
    ck_assert_uint_eq(n.dead_tid, NO_SUCH_TID);
    ck_assert_int_eq(shlock_unlock(l), 0);
    ck_assert_uint_eq(shlock_word(l), 0);
    l->word = FUTEX_WAITERS | NO_SUCH_TID;
    ck_assert_int_eq(shlock_lock(l), EOWNERDEAD);
    ck_assert_int_eq(shlock_unlock(l), 0); /* the waiters bit: the kernel unlocks */
    ck_assert_uint_eq(shlock_word(l), 0);

    /* Our own TID: we do not hold it. */
    l->word = self_tid();
    ck_assert_int_eq(shlock_lock_until(l, 10000, &n), EOWNERDEAD);
    ck_assert(n.own_word);
    ck_assert_int_eq(shlock_unlock(l), 0);
    l->word = FUTEX_WAITERS | self_tid();
    ck_assert_int_eq(shlock_lock(l), EOWNERDEAD);
    ck_assert_int_eq(shlock_unlock(l), 0);
    ck_assert_uint_eq(shlock_word(l), 0);

    /* The owner-died bit over no holder: the kernel hands it over, the
     * bit is cleared. */
    l->word = FUTEX_OWNER_DIED;
    ck_assert_int_eq(shlock_lock_until(l, 10000, &n), EOWNERDEAD);
    ck_assert_uint_eq(shlock_word(l), self_tid());
    ck_assert_int_eq(shlock_unlock(l), 0);
    l->word = FUTEX_OWNER_DIED | FUTEX_WAITERS | NO_SUCH_TID;
    ck_assert_int_eq(shlock_lock(l), EOWNERDEAD);
    ck_assert_int_eq(shlock_unlock(l), 0);
    ck_assert_uint_eq(shlock_word(l), 0);
    ck_assert_int_eq(shlock_lock(l), 0); /* repaired: nothing more to repair */
    ck_assert_int_eq(shlock_unlock(l), 0);
}
END_TEST

/* A live holder: the deadline passes (ETIMEDOUT, the word seen), and
 * once it lets go the lock is taken. */
START_TEST(lock_deadline_live_holder)
{
    struct shlock *l = shared_lock();
    struct shlock_note n;
    int up[2], go[2];
    pid_t p;
    char c;

    ck_assert_int_eq(pipe(up), 0);
    ck_assert_int_eq(pipe(go), 0);
    p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0) {
        if (shlock_lock(l) != 0 || write(up[1], "l", 1) != 1 || read(go[0], &c, 1) != 1)
            _exit(1);
        _exit(shlock_unlock(l) == 0 ? 0 : 1);
    }
    ck_assert_int_eq(read(up[0], &c, 1), 1);
    ck_assert_int_eq(shlock_lock_until(l, 50, &n), ETIMEDOUT);
    ck_assert_uint_eq(n.word & FUTEX_TID_MASK, (uint32_t) p);
    ck_assert_int_eq(shlock_lock_until(l, 0, &n), ETIMEDOUT); /* one try */
    ck_assert_int_eq(write(go[1], "u", 1), 1);
    ck_assert_int_eq(shlock_lock_until(l, 60000, &n), 0);
    ck_assert_int_eq(shlock_unlock(l), 0);
    wait_exit_ok(p);
}
END_TEST

/* A word written while we hold the lock: the unlock says so and leaves
 * the word alone. */
START_TEST(lock_unlock_written)
{
    struct shlock *l = shared_lock();

    ck_assert_int_eq(shlock_lock(l), 0);
    l->word = NO_SUCH_TID;
    ck_assert_int_eq(shlock_unlock(l), -EPERM);
    ck_assert_uint_eq(shlock_word(l), NO_SUCH_TID);
    ck_assert_int_eq(shlock_lock(l), EOWNERDEAD);
    ck_assert_int_eq(shlock_unlock(l), 0);
}
END_TEST

Suite *lock_suite(void)
{
    Suite *s = suite_create("lock");
    TCase *tc = tcase_create("lock");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, lock_lock_unlock);
    tcase_add_test(tc, lock_dead_holder_uncontended);
    tcase_add_test(tc, lock_dead_holder_contended);
    tcase_add_test(tc, lock_kernel_marks_dead_holder);
    tcase_add_test(tc, lock_written_words);
    tcase_add_test(tc, lock_deadline_live_holder);
    tcase_add_test(tc, lock_unlock_written);
    suite_add_tcase(s, tc);
    return s;
}
