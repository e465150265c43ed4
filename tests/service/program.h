/* Running the built programs (shmheapd, shmheapctl, tests/static_user) from
 * the service tests: where each one is, and one run with its output kept.
 *
 * Usage:
 *     static struct program_run r;
 *     const char *argv[] = {"shmheapctl", "--socket", f.socket_path, "stats", NULL};
 *     program_run(program_path("shmheapctl", "SHMHEAPCTL"), argv, &r);
 *     ck_assert_int_eq(r.status, 0);  ... strstr(r.out, ...) ... */
#ifndef TESTS_SERVICE_PROGRAM_H
#define TESTS_SERVICE_PROGRAM_H

/* What one run printed and how it ended. Large: keep it static. */
struct program_run {
    int status; /* exit status, or 128 + signal; 127: could not be run */
    char out[256 * 1024];
    char err[64 * 1024];
};

/* The program `name` (a path relative to the build directory): $env if that
 * variable is set (env may be NULL), else $SHMHEAP_BUILD_DIR/name, else
 * build/name. The result lives until the next call with the same name. */
const char *program_path(const char *name, const char *env);

/* Runs path with argv (argv[0] included, NULL-terminated), its stdout and
 * stderr kept in *ret (NUL-terminated, cut to fit). Fails the test if the
 * program cannot be run or keeps its output open for 30 s (scaled by
 * CK_TIMEOUT_MULTIPLIER). */
void program_run(const char *path, const char *const *argv, struct program_run *ret);

#endif
