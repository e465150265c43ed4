/* Replays fuzz inputs without the fuzzing engine: calls a target's
 * LLVMFuzzerTestOneInput once on each file. Built with the project's own
 * compiler and flags, so `make test` runs the seed corpus and every crash
 * found so far plainly and under ASan+UBSan (build-asan), in seconds.
 *
 *   fuzz_replay_<target> [FILE|DIR]...
 * Without arguments: tests/fuzz/corpus/<target> and tests/fuzz/crashes/<target>
 * of the source tree (FUZZ_DIR, set by tests/fuzz/fuzz.mk). Exits 0 once
 * every input ran (a broken rule aborts on the spot, naming the input on
 * stderr); 1 if no input was found or one could not be read. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/fuzz/fuzz_check.h"

#ifndef FUZZ_DIR
#    define FUZZ_DIR "tests/fuzz"
#endif

static unsigned ran;
static const char *current; /* the input running now */

/* A broken rule or a sanitizer report ends in abort(): name the input. */
static void abort_cb(int sig)
{
    static const char pre[] = "replay: the input that failed: ";

    if (current) {
        (void) !write(STDERR_FILENO, pre, sizeof(pre) - 1);
        (void) !write(STDERR_FILENO, current, strlen(current));
        (void) !write(STDERR_FILENO, "\n", 1);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static int run_file(const char *path)
{
    struct stat st;
    uint8_t *data;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            (void) close(fd);
        return -1;
    }
    data = malloc((size_t) st.st_size + 1);
    if (!data) {
        (void) close(fd);
        return -1;
    }
    while (got < (size_t) st.st_size) {
        ssize_t n = read(fd, data + got, (size_t) st.st_size - got);

        if (n <= 0)
            break;
        got += (size_t) n;
    }
    (void) close(fd);
    current = path;
    (void) LLVMFuzzerTestOneInput(data, got);
    current = NULL;
    free(data);
    ran++;
    return 0;
}

static int compare(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

/* A file, or every regular file of a directory in name order. */
static int run_path(const char *path, bool must_exist)
{
    struct dirent *e;
    struct stat st;
    char **names = NULL;
    size_t n = 0;
    int r = 0;
    DIR *dir;

    if (stat(path, &st) < 0) {
        if (errno == ENOENT && !must_exist)
            return 0;
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return run_file(path);
    dir = opendir(path);
    if (!dir)
        return -1;
    while ((e = readdir(dir))) {
        char *full;

        if (e->d_name[0] == '.')
            continue;
        if (asprintf(&full, "%s/%s", path, e->d_name) < 0 ||
            !(names = realloc(names, (n + 1) * sizeof(*names)))) {
            r = -1;
            break;
        }
        names[n++] = full;
    }
    (void) closedir(dir);
    if (n)
        qsort(names, n, sizeof(*names), compare);
    for (size_t i = 0; i < n; i++) {
        if (r == 0 && run_file(names[i]) < 0)
            r = -1;
        free(names[i]);
    }
    free(names);
    return r;
}

int main(int argc, char **argv)
{
    char corpus[512], crashes[512];
    int r = 0;

    (void) signal(SIGABRT, abort_cb);
    if (argc > 1) {
        for (int i = 1; i < argc && r == 0; i++)
            r = run_path(argv[i], true);
    } else {
        (void) snprintf(corpus, sizeof(corpus), "%s/corpus/%s", FUZZ_DIR, fuzz_target_name);
        (void) snprintf(crashes, sizeof(crashes), "%s/crashes/%s", FUZZ_DIR, fuzz_target_name);
        r = run_path(corpus, true);
        if (r == 0)
            r = run_path(crashes, false);
    }
    printf("replay %s: %u inputs, %s\n", fuzz_target_name, ran,
           r == 0 && ran ? "all passed" : "FAILED");
    return r == 0 && ran ? EXIT_SUCCESS : EXIT_FAILURE;
}
