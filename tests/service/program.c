/* Running the built programs from the service tests (program.h). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/service/daemon_fixture.h"
#include "tests/service/program.h"

const char *program_path(const char *name, const char *env)
{
    static struct {
        const char *name;
        char path[512];
    } cache[8];
    const char *e = env ? getenv(env) : NULL, *dir = getenv("SHMHEAP_BUILD_DIR");
    size_t i;

    if (e && *e)
        return e;
    for (i = 0; i < sizeof(cache) / sizeof(cache[0]); i++)
        if (!cache[i].name || strcmp(cache[i].name, name) == 0)
            break;
    ck_assert_msg(i < sizeof(cache) / sizeof(cache[0]), "program_path: too many programs");
    cache[i].name = name;
    (void) snprintf(cache[i].path, sizeof(cache[i].path), "%s/%s", dir && *dir ? dir : "build",
                    name);
    return cache[i].path;
}

/* Reads both pipes to the end into r (NUL-terminated, cut to fit). */
static void drain(const char *path, int out_fd, int err_fd, struct program_run *r)
{
    struct pollfd p[2] = {{.fd = out_fd, .events = POLLIN}, {.fd = err_fd, .events = POLLIN}};
    size_t lens[2] = {0, 0}, caps[2] = {sizeof(r->out) - 1, sizeof(r->err) - 1};
    char *bufs[2] = {r->out, r->err}, sink[4096];
    int open_fds = 2;

    while (open_fds) {
        int n = poll(p, 2, daemon_test_ms(30000));

        ck_assert_msg(n > 0, "%s hangs", path);
        for (int i = 0; i < 2; i++) {
            ssize_t got;

            if (p[i].fd < 0 || !p[i].revents)
                continue;
            if (lens[i] < caps[i])
                got = read(p[i].fd, bufs[i] + lens[i], caps[i] - lens[i]);
            else
                got = read(p[i].fd, sink, sizeof(sink));
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                (void) close(p[i].fd);
                p[i].fd = -1;
                open_fds--;
                continue;
            }
            if (lens[i] < caps[i])
                lens[i] += (size_t) got;
        }
    }
    r->out[lens[0]] = 0;
    r->err[lens[1]] = 0;
}

void program_run(const char *path, const char *const *argv, struct program_run *ret)
{
    int out[2], err[2], status;
    pid_t pid;

    ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
    ck_assert_int_eq(pipe2(err, O_CLOEXEC), 0);
    fflush(NULL);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        (void) dup2(out[1], 1);
        (void) dup2(err[1], 2);
        execv(path, (char *const *) argv);
        fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    (void) close(out[1]);
    (void) close(err[1]);
    memset(ret, 0, sizeof(*ret));
    drain(path, out[0], err[0], ret);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ret->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    ck_assert_msg(ret->status != 127, "cannot run %s: %s", path, ret->err);
}
