/* The shared checked fixture of the unit suites (heap_fixture.h). */
#include "tests/unit/heap_fixture.h"

struct test_heap th;

void heap_setup(void)
{
    th_create(&th, NULL, SHM_PAGES_OFF);
}

void heap_teardown(void)
{
    th_destroy(&th);
}
