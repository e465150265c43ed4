/* See prog.h. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/service/prog.h"

const char *prog_find(const char *name)
{
    static char path[4096];
    const char *env = getenv("PATH");
    char dirs[4096];

    (void) snprintf(dirs, sizeof(dirs), "%s:/usr/sbin:/sbin:/usr/bin:/bin",
                    env ? env : "/usr/local/bin");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        (void) snprintf(path, sizeof(path), "%s/%s", d, name);
        if (access(path, X_OK) == 0)
            return path;
    }
    return NULL;
}

const char *prog_build_path(const char *env_var, const char *name, char *buf, size_t len)
{
    const char *env = env_var ? getenv(env_var) : NULL, *dir = getenv("SHMHEAP_BUILD_DIR");

    if (env && *env)
        return env;
    (void) snprintf(buf, len, "%s/%s", dir && *dir ? dir : "build", name);
    return buf;
}

static long long now_ms(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool prog_wait(pid_t pid, int timeout_ms, int *ret_status)
{
    long long deadline = now_ms() + timeout_ms;
    int st;

    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);

        if (r == pid) {
            if (ret_status)
                *ret_status = st;
            return true;
        }
        if (r < 0 && errno != EINTR)
            return false;
        if (now_ms() >= deadline)
            return false;
        (void) usleep(10000);
    }
}

int prog_stop(pid_t pid, int timeout_ms)
{
    int st = 0;

    (void) kill(pid, SIGTERM);
    if (!prog_wait(pid, timeout_ms, &st)) {
        (void) kill(pid, SIGKILL);
        (void) prog_wait(pid, 10000, &st);
    }
    return st;
}

static int exit_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* Appends what fd has to *buf (grown as needed); false at EOF. */
static bool drain_one(int fd, char **buf, size_t *len, size_t *cap)
{
    ssize_t got;

    if (*len + 4096 + 1 > *cap) {
        size_t nc = *cap ? *cap * 2 : 65536;
        char *nb = realloc(*buf, nc);

        if (!nb)
            return false;
        *buf = nb;
        *cap = nc;
        (*buf)[*len] = 0;
    }
    got = read(fd, *buf + *len, *cap - *len - 1);
    if (got < 0 && errno == EINTR)
        return true;
    if (got <= 0)
        return false;
    *len += (size_t) got;
    (*buf)[*len] = 0;
    return true;
}

int prog_run(const char *const argv[],
             const char *stdin_text,
             int timeout_ms,
             char **ret_out,
             char **ret_err)
{
    int in[2], out[2], err[2], st = 0, open_fds = 2;
    char *bufs[2] = {NULL, NULL};
    size_t lens[2] = {0, 0}, caps[2] = {0, 0}, in_off = 0,
           in_len = stdin_text ? strlen(stdin_text) : 0;
    long long deadline = now_ms() + timeout_ms;
    struct pollfd p[3];
    pid_t pid;

    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
        return -1;
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        (void) dup2(in[0], 0);
        (void) dup2(out[1], 1);
        (void) dup2(err[1], 2);
        execv(argv[0], (char *const *) argv);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    (void) close(in[0]);
    (void) close(out[1]);
    (void) close(err[1]);
    (void) fcntl(in[1], F_SETFL, O_NONBLOCK);
    if (in_len == 0) {
        (void) close(in[1]);
        in[1] = -1;
    }
    p[0] = (struct pollfd){.fd = out[0], .events = POLLIN};
    p[1] = (struct pollfd){.fd = err[0], .events = POLLIN};
    p[2] = (struct pollfd){.fd = in[1], .events = POLLOUT};
    while (open_fds) {
        long long left = deadline - now_ms();

        if (left <= 0 || poll(p, 3, (int) left) < 0) {
            if (left > 0 && errno == EINTR)
                continue;
            (void) kill(pid, SIGKILL);
            break;
        }
        for (int i = 0; i < 2; i++)
            if (p[i].fd >= 0 && p[i].revents && !drain_one(p[i].fd, &bufs[i], &lens[i], &caps[i])) {
                (void) close(p[i].fd);
                p[i].fd = -1;
                open_fds--;
            }
        if (p[2].fd >= 0 && p[2].revents) {
            ssize_t w = write(p[2].fd, stdin_text + in_off, in_len - in_off);

            if (w > 0)
                in_off += (size_t) w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || in_off == in_len) {
                (void) close(p[2].fd);
                p[2].fd = -1;
            }
        }
    }
    for (int i = 0; i < 3; i++)
        if (p[i].fd >= 0)
            (void) close(p[i].fd);
    if (!prog_wait(pid, 10000, &st)) {
        (void) kill(pid, SIGKILL);
        (void) prog_wait(pid, 10000, &st);
        st = -1;
    }
    for (int i = 0; i < 2; i++)
        if (!bufs[i])
            bufs[i] = strdup("");
    if (ret_out)
        *ret_out = bufs[0];
    else
        free(bufs[0]);
    if (ret_err)
        *ret_err = bufs[1];
    else
        free(bufs[1]);
    return st == -1 || open_fds ? -1 : exit_code(st);
}

pid_t prog_spawn(const char *const argv[], const char *const env[], const char *log_path)
{
    pid_t parent = getpid(), pid = fork();

    if (pid < 0)
        return -errno;
    if (pid == 0) {
        int fd = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
        int nul = open("/dev/null", O_RDONLY);

        (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        if (fd >= 0) {
            (void) dup2(fd, 1);
            (void) dup2(fd, 2);
        }
        if (nul >= 0)
            (void) dup2(nul, 0);
        for (size_t i = 0; env && env[i]; i++)
            (void) putenv((char *) env[i]);
        execv(argv[0], (char *const *) argv);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}
