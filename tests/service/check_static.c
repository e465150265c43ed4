/* libshmheap.a for a static user: the archive exports only shmheap_*
 * (issue 7), so tests/static/static_user, which defines globals named like
 * the library's internals (conn_open, os_commit, heap_malloc, wire_read_line,
 * tl_last), links, and then attaches, allocates and frees through the real
 * daemon with the library's own internals and its own globals intact. That
 * it links at all is the first half of the test (the build); this runs it.
 * `make check-exports` compares the archive's symbols with the .so's. */
#include "tests/service/fixture.h"
#include "tests/service/program.h"
#include "tests/service/suites.h"
#include <check.h>

START_TEST(static_user_links_and_runs)
{
    static struct program_run r;
    struct daemon_fixture f;
    const char *argv[] = {"static_user", f.socket_path, NULL};

    fixture_start(&f, NULL);
    program_run(program_path("tests/static_user", NULL), argv, &r);
    ck_assert_msg(r.status == 0, "static_user: exit %d\nstdout: %s\nstderr: %s", r.status, r.out,
                  r.err);
    ck_assert_str_eq(r.out, "static user: ok\n");
    fixture_finish(&f);
}
END_TEST

Suite *static_suite(void)
{
    Suite *s = suite_create("static");
    TCase *tc = tcase_create("archive");

    tcase_add_test(tc, static_user_links_and_runs);
    suite_add_tcase(s, tc);
    return s;
}
