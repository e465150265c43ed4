/* Unit tests for wire/: the socket path rule, connect, the framing rule,
 * sending a line, and the one reader of replies (libshmheap's and
 * shmheapctl's), over real socket pairs with real descriptors. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/unit/suites.h"
#include "wire/wire.h"

/* ---- helpers ---- */

static void pair(int sv[2])
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static void put(int fd, const char *s)
{
    ck_assert_int_eq(write(fd, s, strlen(s)), (ssize_t) strlen(s));
}

/* Sends s with fd attached (SCM_RIGHTS), as the daemon does on a reply's
 * first byte. */
static void put_with_fd(int sock, const char *s, int fd)
{
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = (void *) s, .iov_len = strlen(s)};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = u.buf,
                         .msg_controllen = sizeof(u.buf)};
    struct cmsghdr *cm;

    memset(&u, 0, sizeof(u));
    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    ck_assert_int_eq(sendmsg(sock, &msg, 0), (ssize_t) strlen(s));
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    ck_assert_ptr_nonnull(d);
    while (readdir(d))
        n++;
    (void) closedir(d);
    return n;
}

static char *line_buf(void)
{
    char *buf = malloc(WIRE_LINE_MAX);

    ck_assert_ptr_nonnull(buf);
    return buf;
}

/* ---- the socket path rule ---- */

START_TEST(path_rule_order)
{
    char buf[WIRE_PATH_MAX], want[64];

    ck_assert_int_eq(setenv("SHMHEAP_SOCKET", "/env/s.sock", 1), 0);
    ck_assert_int_eq(setenv("XDG_RUNTIME_DIR", "/run/user/4242", 1), 0);
    ck_assert_int_eq(wire_socket_path("/arg/s.sock", buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "/arg/s.sock");
    /* NULL and "" both mean: no argument. */
    ck_assert_int_eq(wire_socket_path(NULL, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "/env/s.sock");
    ck_assert_int_eq(wire_socket_path("", buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "/env/s.sock");
    ck_assert_int_eq(unsetenv("SHMHEAP_SOCKET"), 0);
    ck_assert_int_eq(wire_socket_path(NULL, buf, sizeof(buf)), 0);
    if (geteuid() == 0) {
        ck_assert_str_eq(buf, "/run/shmheap/shmheap.sock");
        return;
    }
    ck_assert_str_eq(buf, "/run/user/4242/shmheap.sock");
    ck_assert_int_eq(unsetenv("XDG_RUNTIME_DIR"), 0);
    ck_assert_int_eq(wire_socket_path(NULL, buf, sizeof(buf)), 0);
    (void) snprintf(want, sizeof(want), "/tmp/shmheap-%u.sock", (unsigned) getuid());
    ck_assert_str_eq(buf, want);
}
END_TEST

START_TEST(path_too_long)
{
    char big[PATH_MAX], buf[PATH_MAX], small[8];

    /* Fits buf but not a sockaddr_un. */
    memset(big, 'a', WIRE_PATH_MAX);
    big[0] = '/';
    big[WIRE_PATH_MAX] = 0;
    ck_assert_int_eq(wire_socket_path(big, buf, sizeof(buf)), -ENAMETOOLONG);
    big[WIRE_PATH_MAX - 1] = 0; /* 107 bytes: the longest sun_path takes */
    ck_assert_int_eq(wire_socket_path(big, buf, sizeof(buf)), 0);
    /* Fits a sockaddr_un but not buf. */
    ck_assert_int_eq(wire_socket_path("/a/b/c/d.sock", small, sizeof(small)), -ENAMETOOLONG);
    ck_assert_int_eq(wire_connect(big), -ENOENT);
    big[WIRE_PATH_MAX - 1] = 'a';
    ck_assert_int_eq(wire_connect(big), -ENAMETOOLONG);
}
END_TEST

START_TEST(connect_listening_and_absent)
{
    char dir[] = "/tmp/check_wire.XXXXXX", path[WIRE_PATH_MAX];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int l, fd, peer;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    (void) snprintf(path, sizeof(path), "%s/s.sock", dir);
    ck_assert_int_eq(wire_connect(path), -ENOENT);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(l, 0);
    ck_assert_int_eq(bind(l, (struct sockaddr *) &sa, sizeof(sa)), 0);
    /* Bound but not listening: refused. */
    ck_assert_int_eq(wire_connect(path), -ECONNREFUSED);
    ck_assert_int_eq(listen(l, 1), 0);
    fd = wire_connect(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    peer = accept(l, NULL, NULL);
    ck_assert_int_ge(peer, 0);
    ck_assert_int_eq(wire_send_line(fd, "{}", 2), 0);
    {
        char got[4] = {0};

        ck_assert_int_eq(read(peer, got, 3), 3);
        ck_assert_str_eq(got, "{}\n");
    }
    (void) close(fd);
    (void) close(peer);
    (void) close(l);
    (void) unlink(path);
    (void) rmdir(dir);
}
END_TEST

/* ---- framing ---- */

START_TEST(line_end_rule)
{
    char *big = malloc(WIRE_LINE_MAX + 1);

    ck_assert_ptr_nonnull(big);
    ck_assert_int_eq(wire_line_end("", 0), -EAGAIN);
    ck_assert_int_eq(wire_line_end("{\"op\"", 5), -EAGAIN);
    ck_assert_int_eq(wire_line_end("\n", 1), 0);
    ck_assert_int_eq(wire_line_end("{}\n{}\n", 6), 2); /* the first line only */
    /* The longest line: WIRE_LINE_MAX bytes with its '\n'. */
    memset(big, 'x', WIRE_LINE_MAX + 1);
    big[WIRE_LINE_MAX - 1] = '\n';
    ck_assert_int_eq(wire_line_end(big, WIRE_LINE_MAX), WIRE_LINE_MAX - 1);
    ck_assert_int_eq(wire_line_end(big, WIRE_LINE_MAX - 1), -EAGAIN);
    /* One byte more and the '\n' comes too late. */
    big[WIRE_LINE_MAX - 1] = 'x';
    big[WIRE_LINE_MAX] = '\n';
    ck_assert_int_eq(wire_line_end(big, WIRE_LINE_MAX + 1), -EMSGSIZE);
    ck_assert_int_eq(wire_line_end(big, WIRE_LINE_MAX), -EMSGSIZE);
    free(big);
}
END_TEST

START_TEST(send_line_limits)
{
    char *big = malloc(WIRE_LINE_MAX);
    char got[8] = {0};
    int sv[2];

    ck_assert_ptr_nonnull(big);
    pair(sv);
    memset(big, 'x', WIRE_LINE_MAX);
    /* With its '\n', a line of WIRE_LINE_MAX bytes is one byte too long. */
    ck_assert_int_eq(wire_send_line(sv[0], big, WIRE_LINE_MAX), -EMSGSIZE);
    ck_assert_int_eq(wire_send_line(sv[0], "ab", 2), 0);
    ck_assert_int_eq(read(sv[1], got, sizeof(got)), 3); /* nothing of the refused line */
    ck_assert_str_eq(got, "ab\n");
    /* A peer that went away is -EPIPE, not SIGPIPE (which would kill us). */
    (void) close(sv[1]);
    ck_assert_int_eq(wire_send_line(sv[0], "ab", 2), -EPIPE);
    (void) close(sv[0]);
    free(big);
}
END_TEST

/* ---- the reader ---- */

START_TEST(read_line_in_pieces)
{
    struct wire_read rd = {.timeout_ms = 10000};
    char *buf = line_buf();
    int sv[2];

    pair(sv);
    put(sv[1], "{\"ok\":");
    put(sv[1], "true}\n");
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), 0);
    ck_assert_uint_eq(rd.len, strlen("{\"ok\":true}"));
    ck_assert_str_eq(buf, "{\"ok\":true}");
    ck_assert_uint_eq(rd.nfds, 0);
    (void) close(sv[0]);
    (void) close(sv[1]);
    free(buf);
}
END_TEST

START_TEST(read_line_keeps_fds)
{
    int fds[4] = {-1, -1, -1, -1}, sv[2], mfd;
    struct wire_read rd = {.timeout_ms = 10000, .fds = fds, .fds_max = 4};
    char *buf = line_buf();
    struct stat a, b;

    pair(sv);
    mfd = memfd_create("check_wire", MFD_CLOEXEC);
    ck_assert_int_ge(mfd, 0);
    put_with_fd(sv[1], "{\"ok\":true,", mfd);
    put_with_fd(sv[1], "\"n\":2}\n", mfd);
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), 0);
    ck_assert_str_eq(buf, "{\"ok\":true,\"n\":2}");
    ck_assert_uint_eq(rd.nfds, 2);
    /* The same memfd, received as new descriptors that do not leak into exec. */
    ck_assert_int_eq(fstat(mfd, &a), 0);
    for (unsigned i = 0; i < 2; i++) {
        ck_assert_int_ne(fds[i], mfd);
        ck_assert_int_eq(fstat(fds[i], &b), 0);
        ck_assert_uint_eq(a.st_ino, b.st_ino);
        ck_assert_int_ne(fcntl(fds[i], F_GETFD) & FD_CLOEXEC, 0);
        (void) close(fds[i]);
    }
    (void) close(mfd);
    (void) close(sv[0]);
    (void) close(sv[1]);
    free(buf);
}
END_TEST

START_TEST(read_line_refuses_extra_fds)
{
    int fds[1] = {-1}, sv[2], mfd, before;
    struct wire_read rd = {.timeout_ms = 10000, .fds = fds, .fds_max = 1};
    char *buf = line_buf();

    pair(sv);
    mfd = memfd_create("check_wire", MFD_CLOEXEC);
    ck_assert_int_ge(mfd, 0);
    before = open_fds();
    put_with_fd(sv[1], "{", mfd);
    put_with_fd(sv[1], "}\n", mfd);
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), -EPROTO);
    ck_assert_ptr_nonnull(strstr(rd.why, "descriptors"));
    /* Every received descriptor was closed, the kept one too. */
    ck_assert_uint_eq(rd.nfds, 0);
    ck_assert_int_eq(open_fds(), before);
    /* A reader that takes none (shmheapctl) refuses any. */
    rd = (struct wire_read){.timeout_ms = 10000};
    put_with_fd(sv[1], "{}\n", mfd);
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), -EPROTO);
    ck_assert_int_eq(open_fds(), before);
    (void) close(mfd);
    (void) close(sv[0]);
    (void) close(sv[1]);
    free(buf);
}
END_TEST

START_TEST(read_line_bytes_after_reply)
{
    struct wire_read rd = {.timeout_ms = 10000};
    char *buf = line_buf();
    int sv[2];

    pair(sv);
    put(sv[1], "{\"ok\":true}\n{\"ok\":true}\n");
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), -EPROTO);
    ck_assert_str_eq(rd.why, "sent bytes after its reply");
    (void) close(sv[0]);
    (void) close(sv[1]);
    free(buf);
}
END_TEST

START_TEST(read_line_peer_closes)
{
    struct wire_read rd = {.timeout_ms = 10000};
    char *buf = line_buf();
    int sv[2];

    pair(sv);
    (void) shutdown(sv[1], SHUT_WR);
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), -ECONNRESET);
    ck_assert_str_eq(rd.why, "closed the connection without a reply");
    (void) close(sv[0]);
    (void) close(sv[1]);
    pair(sv);
    put(sv[1], "{\"ok\":");
    (void) close(sv[1]);
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), -ECONNRESET);
    ck_assert_str_eq(rd.why, "closed the connection in the middle of its reply");
    (void) close(sv[0]);
    free(buf);
}
END_TEST

START_TEST(read_line_times_out)
{
    struct wire_read rd = {.timeout_ms = 20};
    char *buf = line_buf();
    int sv[2];

    pair(sv);
    put(sv[1], "{\"ok\":"); /* half a reply, and then nothing */
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), -ETIMEDOUT);
    ck_assert_str_eq(rd.why, "did not answer within 20 ms");
    (void) close(sv[0]);
    (void) close(sv[1]);
    free(buf);
}
END_TEST

/* A child writes the line, since it may not fit the socket's buffer. */
static void read_line_of(size_t len_with_nl, int want)
{
    struct wire_read rd = {.timeout_ms = 30000};
    char *buf = line_buf();
    int sv[2], status;
    pid_t pid;

    pair(sv);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char *line = malloc(len_with_nl);

        (void) close(sv[0]);
        if (!line)
            _exit(1);
        memset(line, 'x', len_with_nl);
        line[len_with_nl - 1] = '\n';
        /* The reader stops at the limit and closes: EPIPE then is expected. */
        (void) signal(SIGPIPE, SIG_IGN);
        for (size_t off = 0; off < len_with_nl;) {
            ssize_t n = write(sv[1], line + off, len_with_nl - off);

            if (n <= 0)
                _exit(0);
            off += (size_t) n;
        }
        _exit(0);
    }
    (void) close(sv[1]);
    ck_assert_int_eq(wire_read_line(sv[0], buf, &rd), want);
    if (want == 0)
        ck_assert_uint_eq(rd.len, len_with_nl - 1);
    (void) close(sv[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free(buf);
}

START_TEST(read_line_limit)
{
    read_line_of(WIRE_LINE_MAX, 0);
    read_line_of(WIRE_LINE_MAX + 1, -EMSGSIZE);
}
END_TEST

Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("path");

    tcase_add_test(tc, path_rule_order);
    tcase_add_test(tc, path_too_long);
    tcase_add_test(tc, connect_listening_and_absent);
    suite_add_tcase(s, tc);
    tc = tcase_create("line");
    tcase_add_test(tc, line_end_rule);
    tcase_add_test(tc, send_line_limits);
    tcase_add_test(tc, read_line_in_pieces);
    tcase_add_test(tc, read_line_keeps_fds);
    tcase_add_test(tc, read_line_refuses_extra_fds);
    tcase_add_test(tc, read_line_bytes_after_reply);
    tcase_add_test(tc, read_line_peer_closes);
    tcase_add_test(tc, read_line_times_out);
    tcase_add_test(tc, read_line_limit);
    suite_add_tcase(s, tc);
    return s;
}
