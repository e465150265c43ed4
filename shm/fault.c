/* Fault injection for the death tests (tests/mp/check_death.c and others):
 * a test sets shm_fault_at to a point's number (enum shm_fault_point in
 * fault.h) in a child, and the child is killed there, so that the
 * recovery of exactly that half-done state is what the test checks. With
 * shm_fault_action FAULT_ACTION_STOP it stops there instead (a process that
 * holds a lock and does not run: what the daemon's bounded lock waits are
 * for), once: a SIGCONT lets it go on. SHMHEAP_FAULT sets both in a
 * program at its start (below). The points sit on cold paths only;
 * with shm_fault_at 0 each costs a load and a branch. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "shm/fault.h"

int shm_fault_at;
int shm_fault_action;

/* SHMHEAP_FAULT=<point>[:stop] in the environment of a program that
 * starts (the daemon, a test's helper program: they cannot be reached by a
 * test's store to shm_fault_at): read once, at load, while the process has
 * one thread. Unset or not a point: nothing changes. */
__attribute__((constructor)) static void shm_fault_from_env(void)
{
    const char *v = getenv("SHMHEAP_FAULT");
    char *end;
    long n;

    if (!v || !*v)
        return;
    n = strtol(v, &end, 10);
    if (n <= FAULT_NONE || n >= FAULT_COUNT || (*end && strcmp(end, ":stop") != 0))
        return;
    shm_fault_action = *end ? FAULT_ACTION_STOP : FAULT_ACTION_KILL;
    shm_fault_at = (int) n;
}

void shm_fault(enum shm_fault_point p)
{
    if (__builtin_expect(shm_fault_at == (int) p, 0)) {
        if (shm_fault_action == FAULT_ACTION_STOP) {
            shm_fault_at = 0; /* once: continued, it goes on */
            (void) raise(SIGSTOP);
            return;
        }
        (void) raise(SIGKILL);
    }
}
