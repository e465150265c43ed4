/* Fault injection for the death tests (tests/mp/check_death.c and others):
 * a test sets shm_fault_at to a point's number (enum shm_fault_point in
 * fault.h) in a child, and the child is killed there, so that the
 * recovery of exactly that half-done state is what the test checks. The
 * points sit on cold paths only; with shm_fault_at 0 each costs a load and
 * a branch. */
#include <signal.h>

#include "shm/fault.h"

int shm_fault_at;

void shm_fault(enum shm_fault_point p)
{
    if (__builtin_expect(shm_fault_at == (int) p, 0))
        (void) raise(SIGKILL);
}
