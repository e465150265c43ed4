/* The Prometheus endpoint: GET (or HEAD) /metrics on metrics_listen
 * (--metrics-listen or the config key), served by libmicrohttpd.
 *
 * Threads. MHD runs one thread of its own (internal polling with epoll)
 * that accepts, reads requests and calls metrics_request() for each; the
 * libuv loop never waits on a scraper, and a scraper never waits on the
 * loop. The scrape builds the stats object with stats_json_build(), the
 * same function the stats op uses, and renders it with prom/ (the
 * generator `shmheapctl stats --prometheus` uses): the heap's figures
 * come from shared memory (heap_stats and heap_client_usage are safe on
 * any thread: relaxed loads, and segment mapping under the heap's and
 * seg_lock's locks); the one thing the loop thread owns that a scrape
 * needs, the client list, is copied by the loop into `views` whenever it
 * changes (metrics_clients_changed), under `lock`, which the scrape holds
 * only to copy it back out; the quota tick's refused count is one word
 * read with a relaxed atomic load.
 *
 * Hostile scrapers. At most METRICS_CONN_LIMIT connections in all and
 * METRICS_PER_IP_LIMIT per client address (Prometheus keeps one
 * keep-alive connection per target); a connection idle for
 * METRICS_TIMEOUT_S seconds, such as one that sent half a request, is
 * closed. Extra connections are refused at accept, so a slow scraper
 * cannot starve other addresses, and never reaches the control socket,
 * which the loop serves.
 *
 * Changing metrics_listen (config.set, SIGHUP) restarts the endpoint on
 * the new address; if the new address cannot be bound the old endpoint is
 * started again and the change is refused. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "daemon/daemon.h"
#include "prom/prom.h"
#include "shm/atomic.h"

#define METRICS_CONN_LIMIT   64u
#define METRICS_PER_IP_LIMIT 8u
#define METRICS_TIMEOUT_S    10u
#define METRICS_PATH         "/metrics"

struct metrics {
    struct daemon *d;
    struct MHD_Daemon *mhd;
    char addr[CONFIG_LISTEN_MAX]; /* the metrics_listen value it serves */
    struct heap *heap;            /* d->heap: fixed while the endpoint runs */
    pthread_mutex_t lock;         /* views, nviews, decay */
    struct client_view *views;
    size_t nviews;
    cJSON *decay; /* the automatic trim's figures as of its last tick (decay.c) */
};

/* MHD's format strings are its own, checked by its compiler, not ours. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];

    (void) cls;
    (void) vsnprintf(buf, sizeof(buf), fmt, ap);
    /* MHD's messages end with a newline of their own. */
    buf[strcspn(buf, "\n")] = 0;
    log_warning("metrics endpoint: %s", buf);
}

static enum MHD_Result
respond_text(struct MHD_Connection *conn, unsigned status, const char *text, const char *allow)
{
    struct MHD_Response *resp =
            MHD_create_response_from_buffer(strlen(text), (void *) text, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result r;

    if (!resp)
        return MHD_NO;
    (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (allow)
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

/* The exposition text of the heap now, malloc'd; NULL when out of memory
 * or the heap cannot be read. */
static char *scrape(struct metrics *m, size_t *ret_len)
{
    struct loop_figures fig;
    struct client_view *views;
    cJSON *decay = NULL;
    size_t n;
    char *text = NULL;
    cJSON *st;

    pthread_mutex_lock(&m->lock);
    n = m->nviews;
    views = malloc((n ? n : 1) * sizeof(*views));
    if (views && n)
        memcpy(views, m->views, n * sizeof(*views));
    if (m->decay)
        decay = cJSON_Duplicate(m->decay, true);
    pthread_mutex_unlock(&m->lock);
    if (!views) {
        cJSON_Delete(decay);
        return NULL;
    }
    loop_figures_read(m->d, &fig);
    st = stats_json_build(m->heap, views, n, &fig);
    free(views);
    if (st && decay && cJSON_AddItemToObject(st, "decay", decay))
        decay = NULL;
    cJSON_Delete(decay);
    if (st && prom_render_text(st, &text, ret_len) < 0)
        text = NULL;
    cJSON_Delete(st);
    return text;
}

static enum MHD_Result metrics_request(void *cls,
                                       struct MHD_Connection *conn,
                                       const char *url,
                                       const char *method,
                                       const char *version,
                                       const char *upload_data,
                                       size_t *upload_data_size,
                                       void **req_cls)
{
    struct metrics *m = cls;
    struct MHD_Response *resp;
    enum MHD_Result r;
    size_t len = 0;
    char *text;

    (void) version;
    (void) upload_data;
    /* A request with a body is refused (405) on the first call, before
     * its body: MHD discards the body and closes. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                            "405 method not allowed: use GET or HEAD\n", "GET, HEAD");
    /* GET and HEAD are answered on the second call, once MHD has the
     * whole request (any body drained): a response queued earlier makes
     * MHD close the connection, and Prometheus keeps it alive. */
    if (!*req_cls) {
        static int seen;

        *req_cls = &seen;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0; /* a GET with a body: ignore the body */
        return MHD_YES;
    }
    if (strcmp(url, METRICS_PATH) != 0)
        return respond_text(conn, MHD_HTTP_NOT_FOUND,
                            "404 not found: the metrics are at " METRICS_PATH "\n", NULL);
    text = scrape(m, &len);
    if (!text)
        return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                            "500 cannot read the heap's figures\n", NULL);
    /* HEAD: MHD sends the headers (Content-Length included) without the body. */
    resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, PROM_CONTENT_TYPE);
    r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return r;
}

/* Binds and listens on addr ourselves, so that a failure says exactly why
 * (MHD_start_daemon only returns NULL). Returns the fd or a negative errno. */
static int metrics_socket(const struct sockaddr_storage *ss)
{
    socklen_t len =
            ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd, one = 1, r;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    /* A restarted daemon must not wait for TIME_WAIT connections of the old one. */
    (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss->ss_family == AF_INET6)
        (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *) ss, len) < 0 || listen(fd, 64) < 0) {
        r = -errno;
        (void) close(fd);
        return r;
    }
    return fd;
}

/* The bound address as text: "127.0.0.1:9464", "[::1]:9464". */
static void address_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN];
    const void *a = ss->ss_family == AF_INET6
                            ? (const void *) &((const struct sockaddr_in6 *) ss)->sin6_addr
                            : (const void *) &((const struct sockaddr_in *) ss)->sin_addr;
    unsigned port = ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *) ss)->sin6_port
                                                    : ((const struct sockaddr_in *) ss)->sin_port);

    if (!inet_ntop(ss->ss_family, a, host, sizeof(host)))
        (void) snprintf(host, sizeof(host), "?");
    (void) snprintf(buf, len, ss->ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

static int metrics_start(struct metrics *m, const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    char bound[INET6_ADDRSTRLEN + 16];
    int fd, r;

    r = config_listen_parse(addr, &ss, err, errlen);
    if (r < 0)
        return r;
    if (ss.ss_family == AF_UNSPEC)
        return 0; /* off */
    fd = metrics_socket(&ss);
    if (fd < 0) {
        /* shmheapd.service allows AF_UNIX only until metrics.conf says otherwise. */
        (void) snprintf(err, errlen, "cannot listen on %s for metrics: %s%s", addr, strerror(-fd),
                        fd == -EAFNOSUPPORT || fd == -EPERM
                                ? " (under systemd, install the drop-in metrics.conf: see README)"
                                : "");
        return fd;
    }
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* The logger goes first: MHD reports options given before it on stderr. */
    m->mhd = MHD_start_daemon(flags, 0, NULL, NULL, metrics_request, m, MHD_OPTION_EXTERNAL_LOGGER,
                              mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET, (MHD_socket) fd,
                              MHD_OPTION_CONNECTION_LIMIT, METRICS_CONN_LIMIT,
                              MHD_OPTION_PER_IP_CONNECTION_LIMIT, METRICS_PER_IP_LIMIT,
                              MHD_OPTION_CONNECTION_TIMEOUT, METRICS_TIMEOUT_S, MHD_OPTION_END);
    if (!m->mhd) {
        (void) close(fd);
        (void) snprintf(err, errlen, "cannot start the metrics endpoint on %s", addr);
        return -EIO;
    }
    (void) snprintf(m->addr, sizeof(m->addr), "%s", addr);
    address_text(&ss, bound, sizeof(bound));
    /* "9464" says less than the address it means: log both. */
    if (strcmp(bound, addr) == 0)
        log_info("metrics: serving GET " METRICS_PATH " on %s", addr);
    else
        log_info("metrics: serving GET " METRICS_PATH " on %s (%s)", addr, bound);
    return 0;
}

/* Joins MHD's thread: a scrape in progress finishes first. */
static void metrics_stop(struct metrics *m)
{
    if (!m->mhd)
        return;
    MHD_stop_daemon(m->mhd); /* closes the listening socket too */
    m->mhd = NULL;
    log_info("metrics: stopped serving on %s", m->addr);
    m->addr[0] = 0;
}

static void refresh_views(struct daemon *d, struct metrics *m)
{
    struct client_view *views;
    size_t n;

    if (client_views(d, &views, &n) < 0) {
        log_warning("metrics: out of memory; the per-client series may be stale");
        return;
    }
    pthread_mutex_lock(&m->lock);
    free(m->views);
    m->views = views;
    m->nviews = n;
    pthread_mutex_unlock(&m->lock);
}

static void refresh_decay(struct daemon *d, struct metrics *m)
{
    cJSON *o = decay_json(d);

    if (!o)
        return; /* out of memory: the scrape shows the last figures */
    pthread_mutex_lock(&m->lock);
    cJSON_Delete(m->decay);
    m->decay = o;
    pthread_mutex_unlock(&m->lock);
}

void metrics_decay_changed(struct daemon *d)
{
    if (d->metrics && d->metrics->mhd)
        refresh_decay(d, d->metrics);
}

void metrics_clients_changed(struct daemon *d)
{
    if (d->metrics && d->metrics->mhd)
        refresh_views(d, d->metrics);
}

int metrics_apply(struct daemon *d, char *err, size_t errlen)
{
    struct metrics *m = d->metrics;
    char old[CONFIG_LISTEN_MAX], ignored[CONFIG_ERR_MAX];
    int r;

    if (!m) {
        m = calloc(1, sizeof(*m));
        if (!m) {
            (void) snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        m->d = d;
        pthread_mutex_init(&m->lock, NULL);
        d->metrics = m;
    }
    if (m->mhd && strcmp(m->addr, d->cfg.metrics_listen) == 0)
        return 0;
    if (!m->mhd && !d->cfg.metrics_listen[0])
        return 0;
    (void) snprintf(old, sizeof(old), "%s", m->addr);
    metrics_stop(m);
    m->heap = d->heap;
    /* The first scrape already sees the clients attached so far. */
    refresh_views(d, m);
    refresh_decay(d, m);
    r = metrics_start(m, d->cfg.metrics_listen, err, errlen);
    if (r < 0 && old[0] && metrics_start(m, old, ignored, sizeof(ignored)) < 0)
        log_error("metrics: cannot serve on %s again either: %s", old, ignored);
    return r;
}

const char *metrics_address(struct daemon *d)
{
    return d->metrics && d->metrics->mhd ? d->metrics->addr : "";
}

void metrics_fini(struct daemon *d)
{
    struct metrics *m = d->metrics;

    if (!m)
        return;
    metrics_stop(m);
    pthread_mutex_destroy(&m->lock);
    free(m->views);
    cJSON_Delete(m->decay);
    free(m);
    d->metrics = NULL;
}
