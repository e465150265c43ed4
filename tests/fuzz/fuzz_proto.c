/* libFuzzer target: the control protocol, from the bytes on the socket to
 * the reply line, through the daemon's own code (daemon/conn.c reads and
 * splits lines, daemon/proto.c checks and parses them and finds the op,
 * daemon/op_*.c and work.c run it).
 *
 * The seam: a real struct daemon with its libuv loop and a real heap in a
 * memfd (owner_init, as shmheapd's main does), but no listening socket:
 * each input gets fresh connections made with socketpair() and handed to
 * conn_accept(), as listen.c does after accept(). The input is cut at
 * '\n' into request lines (see LLVMFuzzerTestOneInput for its format);
 * each is written to our end of the pair, the loop runs until its reply
 * line comes back, and the reply is checked (fuzz_check.c). Replies that
 * carry segment fds (hello, segment, grow) are read with recvmsg and their
 * fds closed. Every op runs, none is stubbed: trim and verify go to
 * libuv's thread pool as in the daemon, and the loop runs until they
 * reply.
 *
 * Between inputs the state is put back so that each input starts alike:
 * the connection is closed (its client detached, the detach job run), the
 * clients are dropped (this process never exits, so their pidfds would
 * never fire), the config is reset to the start-up one, and a heap that
 * grew is rebuilt. Two requests are kept out (line_excluded): config.set of
 * huge_pages and grows of more than 256 MiB. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "tests/fuzz/fuzz_check.h"

#define MAX_LINES 16u /* lines of one input that are used */
#define MAX_CONNS 4u  /* connections of one input */

const char fuzz_target_name[] = "proto";

static struct daemon dm;
static uv_loop_t loop;
static struct config base;
static bool quiet; /* the daemon's log off (SHMHEAP_FUZZ_LOG=1: on) */
static bool show;  /* SHMHEAP_FUZZ_SHOW=1: print each request and reply */

static void fuzz_setup(void)
{
    struct daemon *d = &dm;
    char err[CONFIG_ERR_MAX];
    int r;

    log_init();
    quiet = !getenv("SHMHEAP_FUZZ_LOG");
    show = getenv("SHMHEAP_FUZZ_SHOW") != NULL;
    d->listen_fd = -1;
    d->ctl_fd = -1;
    d->state_dir_fd = -1; /* no state directory, no fd store: memfds only */
    d->state_lock_fd = -1;
    d->passed_listen_fd = -1;
    for (uint32_t i = 0; i < SHM_MAX_SEGMENTS; i++)
        d->stored_fds[i] = -1; /* nothing from systemd's fd store */
    d->stored_hdr_fd = -1;
    link_init(&d->conns);
    link_init(&d->clients);
    link_init(&d->procs);
    pthread_mutex_init(&d->work_lock, NULL);
    /* A small heap on 4K pages, no periodic trim: what a test daemon runs. */
    r = config_parse_text("{\"segment_size\":\"64M\",\"huge_pages\":\"off\",\"max_segments\":4,"
                          "\"trim_interval_ms\":0,\"decay_ms\":0,\"log_level\":\"error\"}",
                          strlen("{\"segment_size\":\"64M\",\"huge_pages\":\"off\",\"max_"
                                 "segments\":4,\"trim_interval_ms\":0,\"decay_ms\":0,"
                                 "\"log_level\":\"error\"}"),
                          "fuzz", &d->cfg, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "fuzz_proto: the harness config is refused: %s\n", err);
        abort();
    }
    base = d->cfg;
    log_set_level(quiet ? LOG_CRIT : d->cfg.log_level);
    if (uv_loop_init(&loop) < 0)
        abort();
    d->loop = &loop;
    if (owner_init(d) < 0) {
        fprintf(stderr, "fuzz_proto: cannot create the heap\n");
        abort();
    }
    (void) uv_timer_init(&loop, &d->trim_timer);
    d->trim_timer.data = d;
    work_trim_timer_update(d);
    /* Not quota_start(): its tick runs after each request instead (see
     * request()), so that an input does the same whenever it runs. */
}

/* Reads what is there from our end; closes the fds that came with it.
 * Returns false at EOF. */
static bool read_some(int fd, char **buf, size_t *len, size_t *cap)
{
    for (;;) {
        union {
            char b[CMSG_SPACE(sizeof(int) * SHM_MAX_SEGMENTS)];
            struct cmsghdr align;
        } u;
        char chunk[65536];
        struct iovec iov = {.iov_base = chunk, .iov_len = sizeof(chunk)};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = u.b,
                             .msg_controllen = sizeof(u.b)};
        ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return true;
        if (n <= 0)
            return false;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int got;

                memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                (void) close(got);
            }
        }
        if (msg.msg_flags & MSG_CTRUNC)
            fuzz_fail("a reply carried more fds than a heap has segments", chunk, (size_t) n);
        if (*len + (size_t) n + 1 > *cap) {
            *cap = (*len + (size_t) n + 1) * 2;
            *buf = realloc(*buf, *cap);
            if (!*buf)
                abort();
        }
        memcpy(*buf + *len, chunk, (size_t) n);
        *len += (size_t) n;
    }
}

/* Checks and drops each whole reply line in buf; returns how many. */
static unsigned take_replies(char *buf, size_t *len)
{
    unsigned n = 0;
    char *nl;

    if (!buf)
        return 0;
    while ((nl = memchr(buf, '\n', *len))) {
        size_t l = (size_t) (nl - buf);

        cJSON_Delete(fuzz_check_reply(buf, l));
        if (show)
            fprintf(stderr, "<- %.*s\n", (int) l, buf);
        memmove(buf, nl + 1, *len - l - 1);
        *len -= l + 1;
        n++;
    }
    return n;
}

/* Lines the harness does not send (the parsed request decides, however
 * it is spelt): config.set of huge_pages, so that the fuzzer never takes
 * the huge pages of test runs on the same machine (the key's parsing is
 * the config target's), and a grow of more than 256 MiB that the daemon
 * would accept (up to 15 GiB): it works, but verifying such segments takes
 * seconds and would slow the fuzzer to a crawl. A min_bytes out of bounds
 * is still sent (bad_value). */
static bool line_excluded(const char *line, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(line, len);
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(j, "op");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(j, "key");
    const cJSON *min = cJSON_GetObjectItemCaseSensitive(j, "min_bytes");
    bool out = false;

    if (cJSON_IsString(op) && strcmp(op->valuestring, "config.set") == 0)
        out = cJSON_IsString(key) && strcmp(key->valuestring, "huge_pages") == 0;
    else if (cJSON_IsString(op) && strcmp(op->valuestring, "grow") == 0)
        out = cJSON_IsNumber(min) && min->valuedouble > 256.0 * 1024 * 1024 &&
              min->valuedouble < 16.0 * 1024 * 1024 * 1024;
    cJSON_Delete(j);
    return out;
}

static void reset_state(void)
{
    struct daemon *d = &dm;

    clients_close_all(d);
    while (uv_run(&loop, UV_RUN_NOWAIT))
        if (!d->jobs && d->conns.next == &d->conns)
            break;
    if (memcmp(&d->cfg, &base, sizeof(base)) != 0) {
        char err[CONFIG_ERR_MAX];

        (void) settings_apply(d, &base, "fuzz: the next input", err, sizeof(err));
        log_set_level(quiet ? LOG_CRIT : d->cfg.log_level);
    }
    if (owner_nsegments(d) > 2) {
        /* A grow: start again from one heap segment, so that memory and
         * fds stay bounded however many inputs grow the heap. */
        owner_fini(d);
        if (owner_init(d) < 0) {
            fprintf(stderr, "fuzz_proto: cannot create the heap again\n");
            abort();
        }
    }
}

/* Our end of one connection, and the reply bytes read from it. */
struct peer_end {
    int fd;
    bool open; /* the daemon has not closed its side */
    char *buf;
    size_t len, cap;
};

/* Reads what came on e and checks each whole reply; returns how many. */
static unsigned collect(struct peer_end *e)
{
    if (e->open)
        e->open = read_some(e->fd, &e->buf, &e->len, &e->cap);
    return take_replies(e->buf, &e->len);
}

/* A new connection, handed to the daemon as listen.c hands an accepted
 * one; `nobody` makes its peer uid 65534 (not root, not the daemon's). */
static void connect_peer(struct peer_end *e, bool nobody)
{
    struct peer who = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
    int sv[2];

    if (nobody)
        who.uid = who.gid = 65534;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0)
        abort();
    *e = (struct peer_end){.fd = sv[1], .open = true};
    conn_accept(&dm, sv[0], &who);
    /* A refusal (too_many_clients) was sent at once, then the close. */
    (void) collect(e);
}

/* Sends `lines` request lines (data[0..len), each with its '\n') on e in
 * one go and waits for their replies, one each, in order: the daemon
 * handles one line at a time and reads no further while a reply waits
 * (conn.c), so the harness keeps reading while it sends. Fewer replies
 * only if the daemon closed the connection (line_too_long, a denied
 * peer). */
static void request(struct peer_end *e, const char *data, size_t len, unsigned lines)
{
    unsigned got = 0;
    size_t off = 0;

    while (e->open && off < len) {
        ssize_t n = send(e->fd, data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n < 0 && errno == EAGAIN) {
            (void) uv_run(&loop, UV_RUN_ONCE);
            got += collect(e);
            continue;
        }
        if (n < 0) {
            e->open = false; /* the daemon closed the connection */
            break;
        }
        off += (size_t) n;
    }
    while (e->open && got < lines) {
        (void) uv_run(&loop, UV_RUN_ONCE);
        got += collect(e);
    }
    if (got > lines)
        fuzz_fail("request lines got more replies than lines", data, len);
    /* The uid quota's tick, which the daemon runs every 100 ms. */
    quota_tick(&dm);
}

/* The input: request lines cut at '\n', sent on a connection, each after
 * the reply to the one before. A line that starts with byte 0x01 or 0x02
 * is the harness's, not a request:
 *   0x01 opens another connection (at most MAX_CONNS at once, the earlier
 *        ones stay open) on which the next lines go; its second byte, if
 *        odd, makes the peer uid 65534. So one input can reach
 *        too_many_clients, permission_denied and what one connection does
 *        to another.
 *   0x02 sends all the lines after it at once (pipelined, as a client
 *        that does not wait may), then reads their replies. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    struct daemon *d = &dm;
    const char *p = (const char *) data, *end = p + size;
    struct peer_end ends[MAX_CONNS];
    unsigned lines = 0, n = 1;
    size_t plen = 0;
    unsigned piped = 0;
    bool pipelined = false;
    char *line, *pipe_buf;

    if (!ready) {
        fuzz_setup();
        ready = true;
    }
    line = malloc(size + 1);
    pipe_buf = malloc(size + 1);
    if (!line || !pipe_buf)
        abort();
    connect_peer(&ends[0], false);
    while (p < end && lines < MAX_LINES) {
        const char *nl = memchr(p, '\n', (size_t) (end - p));
        size_t l = nl ? (size_t) (nl - p) : (size_t) (end - p);

        memcpy(line, p, l);
        line[l] = '\n';
        p += l + (nl ? 1 : 0);
        lines++;
        if (!pipelined && l > 0 && line[0] == '\x01') {
            if (n < MAX_CONNS)
                connect_peer(&ends[n++], l > 1 && (line[1] & 1));
            continue;
        }
        if (!pipelined && l > 0 && line[0] == '\x02') {
            pipelined = true;
            continue;
        }
        if (line_excluded(line, l))
            continue;
        if (show)
            fprintf(stderr, "-> %.*s\n", (int) l, line);
        if (pipelined) {
            memcpy(pipe_buf + plen, line, l + 1);
            plen += l + 1;
            piped++;
            continue;
        }
        request(&ends[n - 1], line, l + 1, 1);
        /* A config.set of log_level turns the daemon's log on: off again. */
        log_set_level(quiet ? LOG_CRIT : d->cfg.log_level);
    }
    if (piped)
        request(&ends[n - 1], pipe_buf, plen, piped);
    /* Hang up, as a client that exits does, and let the daemon settle. */
    for (unsigned i = 0; i < n; i++)
        (void) close(ends[i].fd);
    while (d->conns.next != &d->conns || d->jobs)
        (void) uv_run(&loop, UV_RUN_ONCE);
    for (unsigned i = 0; i < n; i++) {
        if (ends[i].len)
            fuzz_fail("a reply line has no '\\n' at its end", ends[i].buf, ends[i].len);
        free(ends[i].buf);
    }
    free(line);
    free(pipe_buf);
    reset_state();
    return 0;
}
