/* A real shmheapd for the service tests; see daemon_fixture.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/service/daemon_fixture.h"

/* Daemons this process started and has not stopped: stopped at exit. */
#define MAX_RUNNING 16
static struct {
    pid_t pid;
    char dir[64];
} running[MAX_RUNNING];
static bool atexit_done;

static uint64_t now_ms(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

int daemon_test_ms(int ms)
{
    const char *m = getenv("CK_TIMEOUT_MULTIPLIER");
    double k = m ? atof(m) : 1.0;

    if (k < 1.0)
        k = 1.0;
    return (int) (ms * k);
}

static void remove_dir(const char *dir)
{
    DIR *dp;
    struct dirent *e;

    if (!dir[0] || getenv("SHMHEAP_TEST_KEEP"))
        return;
    dp = opendir(dir);
    if (dp) {
        while ((e = readdir(dp))) {
            char p[512];

            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            (void) snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            (void) unlink(p);
        }
        closedir(dp);
    }
    (void) rmdir(dir);
}

/* Waits up to ms for pid; returns true and the status if it exited. */
static bool wait_exit(pid_t pid, int ms, int *ret_status)
{
    uint64_t end = now_ms() + (uint64_t) ms;

    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);

        if (r == pid || (r < 0 && errno == ECHILD)) {
            *ret_status = r == pid ? st : 0;
            return true;
        }
        if (now_ms() >= end)
            return false;
        (void) usleep(5000);
    }
}

static void stop_pid(pid_t pid, int *ret_status)
{
    int st = 0;

    (void) kill(pid, SIGTERM);
    if (!wait_exit(pid, daemon_test_ms(10000), &st)) {
        (void) kill(pid, SIGKILL);
        (void) wait_exit(pid, 5000, &st);
        st = -1;
    }
    *ret_status = st;
}

/* Check ends a failed test with _exit(), so neither atexit handlers nor
 * daemon_stop run: the daemon goes (PR_SET_PDEATHSIG), its directory
 * stays. Each directory names its test process in "owner"; directories
 * whose owner is gone are swept here, at the next start. */
static void sweep_stale_dirs(void)
{
    DIR *dp = opendir("/tmp");
    struct dirent *e;

    if (!dp)
        return;
    while ((e = readdir(dp))) {
        char dir[300], owner[320];
        FILE *fp;
        int pid = 0;

        if (strncmp(e->d_name, "shmheapd-test-", 14) != 0)
            continue;
        (void) snprintf(dir, sizeof(dir), "/tmp/%s", e->d_name);
        (void) snprintf(owner, sizeof(owner), "%s/owner", dir);
        fp = fopen(owner, "re");
        if (!fp)
            continue;
        if (fscanf(fp, "%d", &pid) != 1)
            pid = 0;
        fclose(fp);
        if (pid > 0 && kill(pid, 0) < 0 && errno == ESRCH)
            remove_dir(dir);
    }
    closedir(dp);
}

static void stop_all_at_exit(void)
{
    for (int i = 0; i < MAX_RUNNING; i++)
        if (running[i].pid > 0) {
            int st;

            stop_pid(running[i].pid, &st);
            remove_dir(running[i].dir);
            running[i].pid = 0;
        }
}

static void track(const struct daemon_fixture *f, bool add)
{
    if (!atexit_done) {
        (void) atexit(stop_all_at_exit);
        atexit_done = true;
    }
    for (int i = 0; i < MAX_RUNNING; i++) {
        if (add && running[i].pid == 0) {
            running[i].pid = f->pid;
            memcpy(running[i].dir, f->dir, sizeof(running[i].dir));
            return;
        }
        if (!add && running[i].pid == f->pid) {
            running[i].pid = 0;
            return;
        }
    }
}

static const char *daemon_path(char *buf, size_t len)
{
    const char *p = getenv("SHMHEAPD"), *b = getenv("SHMHEAP_BUILD_DIR");

    if (p && *p)
        return p;
    (void) snprintf(buf, len, "%s/shmheapd", b && *b ? b : "build");
    return buf;
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(text), off = 0;

    if (fd < 0)
        return -errno;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);

        if (n < 0) {
            int r = -errno;

            (void) close(fd);
            return r;
        }
        off += (size_t) n;
    }
    return close(fd) < 0 ? -errno : 0;
}

/* SHMHEAP_TEST_DECAY_MS=N runs every daemon whose config object does not
 * set decay_ms with decay_ms N (e.g. 20: an eager automatic trim under the
 * other suites' workloads). Returns a malloc'ed text, or NULL: use as is. */
static char *with_test_decay(const char *json)
{
    const char *ms = getenv("SHMHEAP_TEST_DECAY_MS"), *p = json;
    char *out;

    cJSON *parsed;

    if (!ms || !*ms || strstr(json, "\"decay_ms\""))
        return NULL;
    /* A broken file stays as the test wrote it (its errors are the test). */
    parsed = cJSON_Parse(json);
    if (!cJSON_IsObject(parsed)) {
        cJSON_Delete(parsed);
        return NULL;
    }
    cJSON_Delete(parsed);
    while (*p == ' ' || *p == '\n' || *p == '\t')
        p++;
    if (*p != '{')
        return NULL;
    p++;
    /* On the opening brace's line, so that line numbers stay. */
    if (asprintf(&out, "{\"decay_ms\": %s%s%s", ms, p[strspn(p, " \n\t")] == '}' ? "" : ",", p) < 0)
        return NULL;
    return out;
}

int daemon_write_config(struct daemon_fixture *f, const char *config_json)
{
    char tmp[160], *eager = with_test_decay(config_json);
    int r;

    if (!f->config_path[0])
        (void) snprintf(f->config_path, sizeof(f->config_path), "%s/shmheapd.json", f->dir);
    /* Write then rename, so that a reload never reads half a file. */
    (void) snprintf(tmp, sizeof(tmp), "%s.tmp", f->config_path);
    r = write_file(tmp, eager ? eager : config_json);
    free(eager);
    if (r == 0 && rename(tmp, f->config_path) < 0)
        r = -errno;
    return r;
}

static void dump_log(const struct daemon_fixture *f)
{
    char *log = daemon_log(f);

    fprintf(stderr, "---- %s ----\n%s---- end of log ----\n", f->log_path, log);
    free(log);
}

int daemon_start_args(struct daemon_fixture *f,
                      const char *config_json,
                      const char *const *extra_args)
{
    const char *argv[32];
    char exe[256], notify_path[128], buf[256];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int nfd, argc = 0, r;
    uint64_t deadline;

    memset(f, 0, sizeof(*f));
    sweep_stale_dirs();
    (void) snprintf(f->dir, sizeof(f->dir), "/tmp/shmheapd-test-XXXXXX");
    if (!mkdtemp(f->dir))
        return -errno;
    (void) snprintf(buf, sizeof(buf), "%s/owner", f->dir);
    {
        char pidtext[16];

        (void) snprintf(pidtext, sizeof(pidtext), "%d\n", (int) getpid());
        r = write_file(buf, pidtext);
        if (r < 0)
            return r;
    }
    (void) snprintf(f->socket_path, sizeof(f->socket_path), "%s/shmheap.sock", f->dir);
    (void) snprintf(f->log_path, sizeof(f->log_path), "%s/daemon.log", f->dir);
    (void) snprintf(notify_path, sizeof(notify_path), "%s/notify", f->dir);
    if (config_json) {
        r = daemon_write_config(f, config_json);
        if (r < 0)
            return r;
    }
    nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (nfd < 0)
        return -errno;
    memcpy(sa.sun_path, notify_path, strlen(notify_path) + 1);
    if (bind(nfd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
        r = -errno;
        (void) close(nfd);
        return r;
    }
    argv[argc++] = daemon_path(exe, sizeof(exe));
    argv[argc++] = "--socket";
    argv[argc++] = f->socket_path;
    if (config_json) {
        argv[argc++] = "--config";
        argv[argc++] = f->config_path;
    }
    for (int i = 0; extra_args && extra_args[i] && argc < 30; i++)
        argv[argc++] = extra_args[i];
    argv[argc] = NULL;

    f->pid = fork();
    if (f->pid < 0) {
        r = -errno;
        (void) close(nfd);
        f->pid = 0;
        return r;
    }
    if (f->pid == 0) {
        int log = open(f->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);

        (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (log < 0 || dup2(log, STDERR_FILENO) < 0 || dup2(log, STDOUT_FILENO) < 0)
            _exit(127);
        (void) setenv("NOTIFY_SOCKET", notify_path, 1);
        (void) unsetenv("LISTEN_FDS");
        (void) unsetenv("LISTEN_PID");
        (void) unsetenv("WATCHDOG_USEC");
        (void) unsetenv("SHMHEAP_SOCKET");
        (void) unsetenv("JOURNAL_STREAM");
        execv(argv[0], (char *const *) argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    track(f, true);
    deadline = now_ms() + (uint64_t) daemon_test_ms(20000);
    r = -ETIMEDOUT;
    while (now_ms() < deadline) {
        struct pollfd p = {.fd = nfd, .events = POLLIN};
        int st;

        if (poll(&p, 1, 20) > 0) {
            ssize_t n = recv(nfd, buf, sizeof(buf) - 1, MSG_DONTWAIT);

            if (n > 0) {
                buf[n] = 0;
                if (strstr(buf, "READY=1")) {
                    r = 0;
                    break;
                }
            }
        }
        if (wait_exit(f->pid, 0, &st)) {
            track(f, false);
            f->status = st;
            f->clean_exit = WIFEXITED(st) && WEXITSTATUS(st) == 0;
            f->pid = 0;
            r = -ECHILD;
            break;
        }
    }
    (void) close(nfd);
    (void) unlink(notify_path);
    if (r == -ETIMEDOUT)
        dump_log(f);
    return r;
}

int daemon_start(struct daemon_fixture *f, const char *config_json)
{
    return daemon_start_args(f, config_json, NULL);
}

void daemon_stop(struct daemon_fixture *f)
{
    if (f->pid > 0) {
        stop_pid(f->pid, &f->status);
        track(f, false);
        f->clean_exit = f->status != -1 && WIFEXITED(f->status) && WEXITSTATUS(f->status) == 0;
        f->pid = 0;
        if (!f->clean_exit)
            dump_log(f);
    }
    remove_dir(f->dir);
}

/* ---- talking to it ---- */

int daemon_connect(const char *socket_path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd, r;

    if (strlen(socket_path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, socket_path, strlen(socket_path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
        r = -errno;
        (void) close(fd);
        return r;
    }
    return fd;
}

int daemon_send(int fd, const char *data, size_t len)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = send(fd, data + off, len - off, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        off += (size_t) n;
    }
    return 0;
}

int daemon_recv(int fd, char **ret_reply, int *ret_fds, int *ret_nfds, int timeout_ms)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int nfds = 0, r = 0;

    if (!buf)
        return -ENOMEM;
    /* Byte by byte would lose nothing but time; read what is there, but
     * never past the first '\n' (peek, then take exactly up to it). */
    for (;;) {
        union {
            char b[CMSG_SPACE(sizeof(int) * DAEMON_FIXTURE_MAX_FDS)];
            struct cmsghdr align;
        } u;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        struct iovec iov;
        struct msghdr msg = {0};
        char peek[4096], *nl;
        ssize_t n, want;

        if (poll(&p, 1, timeout_ms) == 0) {
            r = -ETIMEDOUT;
            break;
        }
        n = recv(fd, peek, sizeof(peek), MSG_PEEK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = n == 0 ? -ECONNRESET : -errno;
            break;
        }
        nl = memchr(peek, '\n', (size_t) n);
        want = nl ? nl - peek + 1 : n;
        if (len + (size_t) want + 1 > cap) {
            char *nb;

            while (len + (size_t) want + 1 > cap)
                cap *= 2;
            nb = realloc(buf, cap);
            if (!nb) {
                r = -ENOMEM;
                break;
            }
            buf = nb;
        }
        iov.iov_base = buf + len;
        iov.iov_len = (size_t) want;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = u.b;
        msg.msg_controllen = sizeof(u.b);
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n <= 0) {
            r = n == 0 ? -ECONNRESET : -errno;
            break;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            int k;

            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            k = (int) ((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int got;

                memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (ret_fds && nfds < DAEMON_FIXTURE_MAX_FDS)
                    ret_fds[nfds++] = got;
                else
                    (void) close(got);
            }
        }
        len += (size_t) n;
        if (len && buf[len - 1] == '\n')
            break;
    }
    if (r < 0) {
        for (int i = 0; i < nfds; i++)
            (void) close(ret_fds[i]);
        free(buf);
        return r;
    }
    buf[len - 1] = 0;
    *ret_reply = buf;
    if (ret_nfds)
        *ret_nfds = nfds;
    return 0;
}

bool daemon_wait_eof(int fd, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t) timeout_ms;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        char b[4096];
        int left = (int) (end - now_ms());
        ssize_t n;

        if (left < 0 || poll(&p, 1, left) == 0)
            return false;
        n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
            return true;
        if (now_ms() >= end)
            return false;
    }
}

int daemon_request(
        const char *socket_path, const char *line, char **ret_reply, int *ret_fds, int *ret_nfds)
{
    size_t len = strlen(line);
    int fd = daemon_connect(socket_path), r;

    if (fd < 0)
        return fd;
    r = daemon_send(fd, line, len);
    if (r == 0 && (len == 0 || line[len - 1] != '\n'))
        r = daemon_send(fd, "\n", 1);
    if (r == 0)
        r = daemon_recv(fd, ret_reply, ret_fds, ret_nfds, daemon_test_ms(30000));
    (void) close(fd);
    return r;
}

cJSON *daemon_call(int fd, const char *line, int *ret_fds, int *ret_nfds)
{
    size_t len = strlen(line);
    char *reply = NULL;
    cJSON *j;
    int r;

    r = daemon_send(fd, line, len);
    if (r == 0 && (len == 0 || line[len - 1] != '\n'))
        r = daemon_send(fd, "\n", 1);
    if (r == 0)
        r = daemon_recv(fd, &reply, ret_fds, ret_nfds, daemon_test_ms(30000));
    if (r < 0)
        return NULL;
    j = cJSON_Parse(reply);
    if (!j)
        fprintf(stderr, "daemon_call: unparsable reply: %s\n", reply);
    free(reply);
    return j;
}

cJSON *daemon_callf(int fd, const char *fmt, ...)
{
    char line[8192];
    va_list ap;

    va_start(ap, fmt);
    (void) vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    return daemon_call(fd, line, NULL, NULL);
}

cJSON *daemon_call_once(const char *socket_path, const char *line)
{
    int fd = daemon_connect(socket_path);
    cJSON *j;

    if (fd < 0)
        return NULL;
    j = daemon_call(fd, line, NULL, NULL);
    (void) close(fd);
    return j;
}

bool reply_is_ok(const cJSON *reply)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"));
}

const char *reply_error_code(const cJSON *reply)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(reply, "error");

    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "code"));
}

const char *reply_error_message(const cJSON *reply)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(reply, "error");

    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "message"));
}

char *daemon_log(const struct daemon_fixture *f)
{
    FILE *fp = fopen(f->log_path, "re");
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);

    if (!buf)
        abort();
    if (fp) {
        size_t n;

        while ((n = fread(buf + len, 1, cap - len - 1, fp)) > 0) {
            len += n;
            if (cap - len - 1 == 0) {
                cap *= 2;
                buf = realloc(buf, cap);
                if (!buf)
                    abort();
            }
        }
        fclose(fp);
    }
    buf[len] = 0;
    return buf;
}

bool daemon_log_wait(const struct daemon_fixture *f, const char *needle, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t) timeout_ms;

    for (;;) {
        char *log = daemon_log(f);
        bool found = strstr(log, needle) != NULL;

        free(log);
        if (found)
            return true;
        if (now_ms() >= end)
            return false;
        (void) usleep(10000);
    }
}
