/* shmheapd: the daemon that owns a shmheap heap.
 *
 * Start: options, the config (defaults, then the file), the fds systemd
 * passed (stored segments, the socket), the heap (adopted from the fd
 * store or the state directory, else a new control segment and first heap
 * segment), the daemon's own attachment, the control socket (or
 * systemd's), the metrics endpoint if metrics_listen asks for one (a
 * failure there stops the daemon), then READY=1 and the libuv loop. Stop
 * (SIGTERM, SIGINT): STOPPING=1, stop the metrics endpoint, stop
 * accepting, answer the requests in hand, close every connection (without
 * reclaiming anyone: the clients live on and attach again to the next
 * daemon), let running jobs finish, detach, exit 0. The segments stay in
 * systemd's fd store or the state directory. */
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
static const char *arg_state_dir;
static bool arg_discard_bad_heap;
static const char *arg_pressure_file;

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
           "  --metrics-listen ADDR:PORT  serve GET /metrics (Prometheus) there; a port alone\n"
           "                            means loopback; overrides metrics_listen\n"
           "  --state-dir DIR           keep the heap's segments as files in DIR (tmpfs or\n"
           "                            hugetlbfs) and adopt the heap found there at start\n"
           "                            (config key state_dir; \"\" for none, the default)\n"
           "  --discard-bad-heap        a stored heap that fails its checks is set aside and\n"
           "                            a new one started (default: exit non-zero); never\n"
           "                            applies to a heap of another layout version\n"
           "  --pressure-file PATH      memory pressure (PSI) the automatic trim watches\n"
           "                            (default /proc/pressure/memory; a cgroup's\n"
           "                            memory.pressure watches that cgroup)\n"
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

/* 0 to run, 1 to exit 0 (help, version), or -2 for a usage error. */
static int parse_argv(int argc, char **argv)
{
    enum {
        ARG_SOCKET = 0x100,
        ARG_CONFIG,
        ARG_METRICS,
        ARG_FOREGROUND,
        ARG_VERSION,
        ARG_STATE_DIR,
        ARG_DISCARD_BAD_HEAP,
        ARG_PSI,
    };
    static const struct option options[] = {
            {"socket", required_argument, NULL, ARG_SOCKET},
            {"config", required_argument, NULL, ARG_CONFIG},
            {"metrics-listen", required_argument, NULL, ARG_METRICS},
            {"foreground", no_argument, NULL, ARG_FOREGROUND},
            {"state-dir", required_argument, NULL, ARG_STATE_DIR},
            {"discard-bad-heap", no_argument, NULL, ARG_DISCARD_BAD_HEAP},
            {"pressure-file", required_argument, NULL, ARG_PSI},
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
        case ARG_METRICS: {
            struct sockaddr_storage ss;
            char err[CONFIG_ERR_MAX];

            if (strlen(optarg) >= CONFIG_LISTEN_MAX ||
                config_listen_parse(optarg, &ss, err, sizeof(err)) < 0) {
                fprintf(stderr, "shmheapd: --metrics-listen: %s\n",
                        strlen(optarg) >= CONFIG_LISTEN_MAX ? "the address is too long" : err);
                return -2;
            }
            arg_metrics_listen = optarg;
            break;
        }
        case ARG_FOREGROUND:
            break;
        case ARG_STATE_DIR:
            arg_state_dir = optarg;
            break;
        case ARG_DISCARD_BAD_HEAP:
            arg_discard_bad_heap = true;
            break;
        case ARG_PSI:
            arg_pressure_file = optarg;
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
    /* Stop the scrapes first: they read the heap, which owner_fini unmaps
     * after the loop ends. */
    metrics_fini(d);
    listen_close(d);
    /* Clients first: a connection that closes now is not a detach (the
     * client lives on and attaches again to the next daemon). */
    clients_close_all(d);
    retry_close_all(d);
    conn_drain_all(d);
    if (d->state_dir_fd >= 0)
        log_info("the heap stays in the state directory %s", d->state_dir);
    else if (d->use_fdstore)
        log_info("the heap stays in systemd's fd store");
    else
        log_notice("no state directory and no fd store: the heap lasts only while clients map "
                   "it, and the next shmheapd starts a new one");
    (void) uv_timer_stop(&d->trim_timer);
    uv_close((uv_handle_t *) &d->trim_timer, NULL);
    decay_close(d);
    quota_stop(d);
    service_close(d);
    if (d->jobs)
        log_info("waiting for %u running jobs", d->jobs);
}

/* The daemon's fields before anything can fail: no fd open yet. */
static void daemon_defaults(struct daemon *d)
{
    d->listen_fd = -1;
    d->ctl_fd = -1;
    d->state_dir_fd = -1;
    d->state_lock_fd = -1;
    d->discard_bad_heap = arg_discard_bad_heap;
    d->config_path = arg_config_path;
    link_init(&d->conns);
    link_init(&d->clients);
    link_init(&d->procs);
    link_init(&d->reclaims);
    pthread_mutex_init(&d->work_lock, NULL);
}

/* The config file, then the options that override it. Returns 0, or the
 * exit status to stop with. */
static int load_config(struct daemon *d)
{
    char err[CONFIG_ERR_MAX];
    int r;

    r = config_load_file(arg_config_path ? arg_config_path : CONFIG_DEFAULT_PATH,
                         arg_config_path != NULL, &d->cfg, err, sizeof(err));
    if (r < 0) {
        log_error("bad config: %s", err);
        return EXIT_FAILURE;
    }
    log_set_level(d->cfg.log_level);
    if (arg_metrics_listen) {
        d->metrics_listen_arg = arg_metrics_listen;
        (void) snprintf(d->cfg.metrics_listen, sizeof(d->cfg.metrics_listen), "%s",
                        arg_metrics_listen);
    }
    if (arg_state_dir) {
        cJSON *v = cJSON_CreateString(arg_state_dir);

        r = v ? config_set_json(&d->cfg, "state_dir", v, err, sizeof(err)) : -ENOMEM;
        cJSON_Delete(v);
        if (r < 0) {
            log_error("--state-dir: %s", err);
            return 2;
        }
    }
    return 0;
}

/* The heap and the control socket. On failure, undoes what it did (the
 * loop stays open for the caller to close) and returns < 0. */
static int open_heap_and_socket(struct daemon *d)
{
    int r;

    r = owner_init(d);
    if (r < 0)
        goto out_heap;
    r = listen_open(d);
    if (r < 0)
        goto out_listen;
    return 0;

out_listen:
    listen_close(d);
    (void) uv_run(d->loop, UV_RUN_NOWAIT);
out_heap:
    owner_fini(d);
    return r;
}

static void log_started(struct daemon *d)
{
    char b1[32], b2[32];
    uint64_t size;
    uint32_t page;

    (void) owner_segment(d, 1, &size, &page);
    log_info("shmheapd %s started: socket %s%s, %s heap of %" PRIu32 " segments (segment 1: %s "
             "bytes on %s pages), max_segments %" PRIu32 ", kept in %s",
             SHMHEAP_VERSION, d->socket_path, d->socket_activated ? " (from systemd)" : "",
             d->adopted ? "adopted" : "new", owner_nsegments(d) - 1,
             bytes_name(size, b1, sizeof(b1)), page_size_name(page, b2, sizeof(b2)),
             d->cfg.shm.max_segments,
             d->state_dir_fd >= 0 ? d->state_dir
             : d->use_fdstore     ? "systemd's fd store"
                                  : "memory only (no state directory, no fd store)");
}

/* The trim timer, the automatic trim, the quotas, the service manager and
 * the metrics endpoint, then READY=1. A failure here shuts the daemon down
 * through the loop (so that what started is stopped in order). */
static void start_services(struct daemon *d)
{
    char err[CONFIG_ERR_MAX];
    int r;

    (void) uv_timer_init(d->loop, &d->trim_timer);
    d->trim_timer.data = d;
    work_trim_timer_update(d);
    r = decay_init(d, arg_pressure_file);
    if (r < 0) {
        log_error("cannot start the automatic trim: %s", strerror(-r));
        daemon_shutdown(d, EXIT_FAILURE);
        return;
    }
    quota_start(d);
    r = service_init(d);
    if (r < 0) {
        daemon_shutdown(d, EXIT_FAILURE);
        return;
    }
    log_started(d);
    r = metrics_apply(d, err, sizeof(err));
    if (r < 0) {
        /* Asked for metrics and cannot serve them: say so and stop. */
        log_error("%s", err);
        daemon_shutdown(d, EXIT_FAILURE);
        return;
    }
    service_ready(d);
}

/* Runs the loop until the daemon stops, then takes everything down.
 * Returns the exit status. */
static int run_and_stop(struct daemon *d)
{
    int r;

    (void) uv_run(d->loop, UV_RUN_DEFAULT);
    metrics_fini(d);
    decay_fini(d);
    owner_fini(d);
    r = uv_loop_close(d->loop);
    if (r < 0)
        log_warning("the event loop did not close cleanly: %s", uv_strerror(r));
    pthread_mutex_destroy(&d->work_lock);
    log_info("stopped");
    return d->exit_status;
}

int main(int argc, char **argv)
{
    static struct daemon dm;
    struct daemon *d = &dm;
    uv_loop_t loop;
    int r;

    r = parse_argv(argc, argv);
    if (r != 0)
        return r > 0 ? EXIT_SUCCESS : 2;
    log_init();
    daemon_defaults(d);
    r = load_config(d);
    if (r != 0)
        return r;
    /* Before anything else reads LISTEN_FDS (sd_listen_fds unsets it). */
    /* Before the collection, which drops stale header pages from the store. */
    d->use_fdstore = !d->cfg.state_dir[0] && getenv("NOTIFY_SOCKET") != NULL;
    fdstore_collect(d);
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
    if (open_heap_and_socket(d) < 0) {
        (void) uv_loop_close(&loop);
        return EXIT_FAILURE;
    }
    start_services(d);
    return run_and_stop(d);
}
