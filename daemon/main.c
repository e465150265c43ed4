/* shmheapd: the daemon that owns a shmheap heap.
 *
 * Start: options, the config (defaults, then the file), the control
 * segment and the first heap segment, the daemon's own attachment, the
 * control socket (or systemd's), then READY=1 and the libuv loop. Stop
 * (SIGTERM, SIGINT): STOPPING=1, close the socket and every connection,
 * let running jobs finish, detach, exit 0. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "daemon/daemon.h"

static const char *arg_config_path;
static const char *arg_socket;
static const char *arg_metrics_listen;

static void help(void)
{
    printf("Usage: shmheapd [OPTIONS]\n"
           "\n"
           "Owns a shared-memory heap and serves it to clients over a Unix socket.\n"
           "\n"
           "  --socket PATH             control socket (default: $SHMHEAP_SOCKET, else\n"
           "                            /run/shmheap/shmheap.sock as root, else\n"
           "                            $XDG_RUNTIME_DIR/shmheap.sock or /tmp/shmheap-$UID.sock)\n"
           "  --config PATH             JSON config file (default %s;\n"
           "                            a missing default file means built-in defaults)\n"
           "  --metrics-listen ADDR:PORT  Prometheus endpoint (accepted; not served yet)\n"
           "  --foreground              run in the foreground (the default and only mode)\n"
           "  --help                    show this help\n"
           "  --version                 show the version\n"
           "\n"
           "Config keys (file, `shmheapctl config set`, reloaded on SIGHUP):\n",
           CONFIG_DEFAULT_PATH);
    for (size_t i = 0; i < config_key_count(); i++) {
        const struct config_key *k = config_key_at(i);

        printf("  %-21s %s\n", config_key_name(k), config_key_help(k));
    }
}

/* ADDR:PORT with ADDR an IPv4 address, [IPv6] or localhost. */
static int check_listen_address(const char *s)
{
    char host[64];
    unsigned char addr[16];
    const char *colon = strrchr(s, ':'), *port;
    size_t hl;
    char *end;
    unsigned long p;

    if (!colon || colon == s)
        return -EINVAL;
    port = colon + 1;
    hl = (size_t) (colon - s);
    if (hl >= sizeof(host))
        return -EINVAL;
    memcpy(host, s, hl);
    host[hl] = 0;
    errno = 0;
    p = strtoul(port, &end, 10);
    if (!*port || *end || errno || p == 0 || p > 65535)
        return -EINVAL;
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']')
            return -EINVAL;
        host[hl - 1] = 0;
        return inet_pton(AF_INET6, host + 1, addr) == 1 ? 0 : -EINVAL;
    }
    if (strcmp(host, "localhost") == 0)
        return 0;
    return inet_pton(AF_INET, host, addr) == 1 ? 0 : -EINVAL;
}

/* 0 to run, 1 to exit 0 (help, version), or -2 for a usage error. */
static int parse_argv(int argc, char **argv)
{
    enum { ARG_SOCKET = 0x100, ARG_CONFIG, ARG_METRICS, ARG_FOREGROUND, ARG_VERSION };
    static const struct option options[] = {
            {"socket", required_argument, NULL, ARG_SOCKET},
            {"config", required_argument, NULL, ARG_CONFIG},
            {"metrics-listen", required_argument, NULL, ARG_METRICS},
            {"foreground", no_argument, NULL, ARG_FOREGROUND},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, ARG_VERSION},
            {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
        switch (c) {
        case 'h':
            help();
            return 1;
        case ARG_VERSION:
            printf("shmheapd %s (protocol %d, layout %u)\n", SHMHEAP_VERSION, WIRE_VERSION,
                   SHM_LAYOUT_VERSION);
            return 1;
        case ARG_SOCKET:
            arg_socket = optarg;
            break;
        case ARG_CONFIG:
            arg_config_path = optarg;
            break;
        case ARG_METRICS:
            if (check_listen_address(optarg) < 0) {
                fprintf(stderr,
                        "shmheapd: --metrics-listen wants ADDR:PORT (such as "
                        "127.0.0.1:9464 or [::1]:9464), got \"%s\"\n",
                        optarg);
                return -2;
            }
            arg_metrics_listen = optarg;
            break;
        case ARG_FOREGROUND:
            break;
        default:
            fprintf(stderr, "Try 'shmheapd --help'.\n");
            return -2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "shmheapd: unexpected argument \"%s\"; try 'shmheapd --help'.\n",
                argv[optind]);
        return -2;
    }
    return 0;
}

/* Each connection and each client takes an fd; take what the hard limit
 * allows (select() is never used, so a high limit is safe). */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            log_debug("cannot raise the fd limit, ignoring: %m");
    }
}

void daemon_shutdown(struct daemon *d, int status)
{
    if (d->stopping)
        return;
    d->stopping = true;
    d->exit_status = status;
    service_stopping(d);
    listen_close(d);
    conn_close_all(d);
    clients_close_all(d);
    (void) uv_timer_stop(&d->trim_timer);
    uv_close((uv_handle_t *) &d->trim_timer, NULL);
    quota_stop(d);
    service_close(d);
    if (d->jobs)
        log_info("waiting for %u running jobs", d->jobs);
}

int main(int argc, char **argv)
{
    static struct daemon dm;
    struct daemon *d = &dm;
    char err[CONFIG_ERR_MAX], b1[32], b2[32];
    uv_loop_t loop;
    uint64_t size;
    uint32_t page;
    int r;

    r = parse_argv(argc, argv);
    if (r != 0)
        return r > 0 ? EXIT_SUCCESS : 2;
    log_init();
    d->listen_fd = -1;
    d->ctl_fd = -1;
    d->config_path = arg_config_path;
    link_init(&d->conns);
    link_init(&d->clients);
    pthread_mutex_init(&d->work_lock, NULL);

    r = config_load_file(arg_config_path ? arg_config_path : CONFIG_DEFAULT_PATH,
                         arg_config_path != NULL, &d->cfg, err, sizeof(err));
    if (r < 0) {
        log_error("bad config: %s", err);
        return EXIT_FAILURE;
    }
    log_set_level(d->cfg.log_level);
    r = wire_socket_path(arg_socket, d->socket_path, sizeof(d->socket_path));
    if (r < 0) {
        log_error("the socket path is longer than a Unix socket address allows (107 bytes)");
        return EXIT_FAILURE;
    }
    raise_fd_limit();
    r = uv_loop_init(&loop);
    if (r < 0) {
        log_error("cannot start the event loop: %s", uv_strerror(r));
        return EXIT_FAILURE;
    }
    d->loop = &loop;
    r = owner_init(d);
    if (r < 0)
        goto out_heap;
    r = listen_open(d);
    if (r < 0)
        goto out_listen;
    (void) uv_timer_init(&loop, &d->trim_timer);
    d->trim_timer.data = d;
    work_trim_timer_update(d);
    quota_start(d);
    r = service_init(d);
    if (r < 0) {
        daemon_shutdown(d, EXIT_FAILURE);
        goto run;
    }
    (void) owner_segment(d, 1, &size, &page);
    log_info("shmheapd %s started: socket %s%s, segment 1 of %s bytes on %s pages, "
             "max_segments %" PRIu32,
             SHMHEAP_VERSION, d->socket_path, d->socket_activated ? " (from systemd)" : "",
             bytes_name(size, b1, sizeof(b1)), page_size_name(page, b2, sizeof(b2)),
             d->cfg.shm.max_segments);
    if (arg_metrics_listen)
        log_notice("--metrics-listen %s: the metrics endpoint is not served yet; ignoring it",
                   arg_metrics_listen);
    service_ready(d);
run:
    (void) uv_run(&loop, UV_RUN_DEFAULT);
    owner_fini(d);
    r = uv_loop_close(&loop);
    if (r < 0)
        log_warning("the event loop did not close cleanly: %s", uv_strerror(r));
    pthread_mutex_destroy(&d->work_lock);
    log_info("stopped");
    return d->exit_status;

out_listen:
    listen_close(d);
    (void) uv_run(&loop, UV_RUN_NOWAIT);
out_heap:
    owner_fini(d);
    (void) uv_loop_close(&loop);
    return EXIT_FAILURE;
}
