/* The Prometheus endpoint against a real shmheapd: what GET /metrics
 * serves (promtool-clean, the same text as `shmheapctl stats
 * --prometheus`), the paths and methods it refuses, a real Prometheus
 * scraping it while clients allocate, slow scrapers that must not stop
 * anybody else, and moving the endpoint with config.set and SIGHUP.
 *
 * promtool and prometheus come from Debian's prometheus package
 * (scripts/install-deps.sh); a test that needs one skips with a message
 * when it cannot be found. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "shmheap.h"
#include "tests/service/daemon_fixture.h"
#include "tests/service/http_client.h"
#include "tests/service/prog.h"
#include "tests/service/suites.h"

#define SMALL    "\"segment_size\": 67108864, \"huge_pages\": \"off\""
#define NWORKERS 4

static char listen_addr[64];
static int metrics_port;

/* A daemon with the endpoint on a free loopback port. */
static void start_with_metrics(struct daemon_fixture *f, const char *config_json)
{
    const char *args[] = {"--metrics-listen", listen_addr, NULL};

    metrics_port = http_free_port(0);
    ck_assert_int_gt(metrics_port, 0);
    (void) snprintf(listen_addr, sizeof(listen_addr), "127.0.0.1:%d", metrics_port);
    ck_assert_int_eq(daemon_start_args(f, config_json, args), 0);
}

static struct http_reply get(const char *method, const char *path)
{
    struct http_reply r;
    int rc = http_request("127.0.0.1", metrics_port, NULL, method, path, daemon_test_ms(10000), &r);

    ck_assert_msg(rc == 0, "%s %s: %s", method, path, strerror(-rc));
    return r;
}

static char *ctl_prometheus(const char *sock)
{
    char buf[512];
    const char *argv[] = {prog_build_path("SHMHEAPCTL", "shmheapctl", buf, sizeof(buf)),
                          "--socket",
                          sock,
                          "stats",
                          "--prometheus",
                          NULL};
    char *out = NULL, *err = NULL;
    int st = prog_run(argv, NULL, daemon_test_ms(30000), &out, &err);

    ck_assert_msg(st == 0, "shmheapctl stats --prometheus: exit %d: %s", st, err);
    free(err);
    return out;
}

/* promtool check metrics on text: clean means exit 0 and nothing said. */
static void promtool_clean(const char *what, const char *text)
{
    const char *promtool = prog_find("promtool");
    const char *argv[] = {promtool, "check", "metrics", NULL};
    char *out = NULL, *err = NULL;
    int st;

    if (!promtool) {
        fprintf(stderr,
                "SKIP promtool check of %s: promtool not found (Debian package "
                "prometheus; make deps)\n",
                what);
        return;
    }
    st = prog_run(argv, text, daemon_test_ms(30000), &out, &err);
    ck_assert_msg(st == 0 && !out[0] && !err[0], "promtool check metrics on %s: exit %d: %s%s",
                  what, st, out, err);
    free(out);
    free(err);
}

static void has(const char *text, const char *needle)
{
    ck_assert_msg(strstr(text, needle), "\"%s\" not found in:\n%s", needle, text);
}

/* Reads one reply to a GET on fd: headers, then Content-Length bytes. */
static void read_one_reply(int fd, char *head, size_t len)
{
    size_t got = 0;
    long body = -1;
    char *sep = NULL;

    while (!sep || (long) (got - (size_t) (sep + 4 - head)) < body) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t n;

        ck_assert_msg(poll(&p, 1, daemon_test_ms(10000)) == 1, "no reply");
        ck_assert_uint_lt(got, len - 1);
        n = recv(fd, head + got, len - 1 - got, 0);
        ck_assert_msg(n > 0, "the daemon closed a kept-alive connection");
        got += (size_t) n;
        head[got] = 0;
        sep = strstr(head, "\r\n\r\n");
        if (sep && body < 0) {
            const char *cl = strcasestr(head, "\r\nContent-Length:");

            ck_assert_ptr_nonnull(cl);
            body = strtol(cl + 17, NULL, 10);
        }
    }
    ck_assert_msg(strncmp(head, "HTTP/1.1 200 ", 13) == 0, "reply: %.80s", head);
    *sep = 0;
    ck_assert_msg(!strcasestr(head, "Connection: close"), "headers: %s", head);
}

static void keep_alive_twice(void)
{
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    static char buf[1 << 20];
    int fd = http_connect("127.0.0.1", metrics_port, NULL);

    ck_assert_int_ge(fd, 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL), (ssize_t) sizeof(req) - 1);
        read_one_reply(fd, buf, sizeof(buf));
    }
    (void) close(fd);
}

START_TEST(metrics_endpoint)
{
    struct daemon_fixture f;
    struct http_reply r;
    char *ctl, *ct, *allow, *cl, want[128];
    shmheap_t *h;
    void *p[40];

    start_with_metrics(&f, "{" SMALL "}");
    ck_assert_int_eq(shmheap_attach(f.socket_path, &h), 0);
    /* 40 classes in use, one object each. */
    for (int i = 0; i < 40; i++)
        ck_assert_ptr_nonnull(p[i] = shmheap_malloc(h, (size_t) (i + 1) * 48));

    r = get("GET", "/metrics");
    ck_assert_int_eq(r.status, 200);
    ct = http_header(&r, "Content-Type");
    ck_assert_str_eq(ct, "text/plain; version=0.0.4; charset=utf-8");
    free(ct);
    has(r.body, "# HELP shmheap_in_use_bytes ");
    has(r.body, "# TYPE shmheap_in_use_bytes gauge\nshmheap_in_use_bytes ");
    has(r.body, "# TYPE shmheap_allocations_total counter\n");
    has(r.body, "shmheap_clients 1\n");
    has(r.body, "shmheap_class_in_use_objects{class=\"48\"} 1\n");
    has(r.body, "shmheap_class_in_use_bytes{class=\"48\"} 48\n");
    has(r.body, "shmheap_segment_size_bytes{segment=\"1\",page_size=\"4K\"} 67108864\n");
    (void) snprintf(want, sizeof(want),
                    "shmheap_client_allocated_bytes{client_id=\"1\",pid=\"%d\"} ", (int) getpid());
    has(r.body, want);
    promtool_clean("GET /metrics", r.body);

    /* The same generator: a quiet heap gives the same text both ways. */
    ctl = ctl_prometheus(f.socket_path);
    promtool_clean("shmheapctl stats --prometheus", ctl);
    ck_assert_str_eq(ctl, r.body);
    free(ctl);
    cl = http_header(&r, "Content-Length");
    http_reply_free(&r);

    /* HEAD: the headers of GET, no body. */
    r = get("HEAD", "/metrics");
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, 0);
    ct = http_header(&r, "Content-Length");
    ck_assert_str_eq(ct, cl);
    free(ct);
    free(cl);
    http_reply_free(&r);

    static const char *const not_found[] = {"/", "/metrics/", "/metricsx", "/stats", "/../metrics"};
    for (size_t i = 0; i < sizeof(not_found) / sizeof(not_found[0]); i++) {
        r = get("GET", not_found[i]);
        ck_assert_msg(r.status == 404, "GET %s: %d", not_found[i], r.status);
        has(r.body, "/metrics");
        http_reply_free(&r);
    }
    static const char *const methods[] = {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        r = get(methods[i], "/metrics");
        ck_assert_msg(r.status == 405, "%s /metrics: %d", methods[i], r.status);
        allow = http_header(&r, "Allow");
        ck_assert_str_eq(allow, "GET, HEAD");
        free(allow);
        http_reply_free(&r);
    }
    /* The daemon is still well, and keeps a connection alive for the
     * next scrape, as Prometheus expects. */
    keep_alive_twice();

    for (int i = 0; i < 40; i++)
        shmheap_free(h, p[i]);
    shmheap_detach(h);
    daemon_stop(&f);
    ck_assert(f.clean_exit);
}
END_TEST

/* A worker: allocates and frees for `rounds`, then keeps `keep` objects
 * of varied sizes, flushes its cache, says so on `ready` and waits for
 * `go` to close. Exits 0 if every call worked. */
static void worker(const char *sock, int id, int ready, int go)
{
    shmheap_t *h;
    void *keep[64];
    char c = 1;

    if (shmheap_attach(sock, &h) != 0)
        _exit(2);
    for (int round = 0; round < 200; round++) {
        void *tmp[64];

        for (int i = 0; i < 64; i++)
            if (!(tmp[i] = shmheap_malloc(h, (size_t) (16 + (i * 37 + id * 11 + round) % 4000))))
                _exit(3);
        for (int i = 0; i < 64; i++)
            shmheap_free(h, tmp[i]);
        (void) usleep(5000); /* let the scrapes see it busy */
    }
    for (int i = 0; i < 64; i++)
        if (!(keep[i] = shmheap_malloc(h, (size_t) (32 + i * 100 + id))))
            _exit(4);
    shmheap_thread_flush(h);
    if (write(ready, &c, 1) != 1)
        _exit(5);
    while (read(go, &c, 1) > 0)
        ;
    for (int i = 0; i < 64; i++)
        shmheap_free(h, keep[i]);
    shmheap_detach(h);
    _exit(0);
}

static uint64_t ctl_in_use(const char *sock)
{
    char buf[512];
    const char *argv[] = {prog_build_path("SHMHEAPCTL", "shmheapctl", buf, sizeof(buf)),
                          "--socket",
                          sock,
                          "stats",
                          "--json",
                          NULL};
    char *out = NULL;
    cJSON *j, *v;
    uint64_t n;

    ck_assert_int_eq(prog_run(argv, NULL, daemon_test_ms(30000), &out, NULL), 0);
    j = cJSON_Parse(out);
    v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "stats"),
                                         "bytes_in_use");
    ck_assert(cJSON_IsNumber(v));
    n = (uint64_t) v->valuedouble;
    cJSON_Delete(j);
    free(out);
    return n;
}

/* The single value of an instant query, or -1 if none (yet). */
static double prom_query(int port, const char *query)
{
    struct http_reply r;
    char path[256];
    double v = -1;
    cJSON *j, *res, *val;

    (void) snprintf(path, sizeof(path), "/api/v1/query?query=%s", query);
    if (http_request("127.0.0.1", port, NULL, "GET", path, daemon_test_ms(10000), &r) != 0)
        return -1;
    j = r.status == 200 ? cJSON_Parse(r.body) : NULL;
    res = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "data"), "result");
    if (cJSON_GetArraySize(res) == 1) {
        val = cJSON_GetArrayItem(
                cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(res, 0), "value"), 1);
        if (cJSON_IsString(val))
            v = strtod(val->valuestring, NULL);
    }
    cJSON_Delete(j);
    http_reply_free(&r);
    return v;
}

START_TEST(metrics_prometheus_scrapes)
{
    const char *prometheus = prog_find("prometheus");
    struct daemon_fixture f;
    char dir[] = "/tmp/shmheap-prom-XXXXXX", cfg[128], data[128], web[64], log[128], q[64];
    int ready[2], go[2], prom_port, n;
    pid_t workers[NWORKERS], prom;
    uint64_t in_use = 0;
    double seen = -1, per_client = -1;
    FILE *fp;

    if (!prometheus) {
        fprintf(stderr, "SKIP metrics_prometheus_scrapes: prometheus not found (Debian package "
                        "prometheus; make deps)\n");
        return;
    }
    start_with_metrics(&f, "{" SMALL "}");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    (void) snprintf(cfg, sizeof(cfg), "%s/prometheus.yml", dir);
    (void) snprintf(data, sizeof(data), "--storage.tsdb.path=%s/data", dir);
    (void) snprintf(log, sizeof(log), "%s/prometheus.log", dir);
    prom_port = http_free_port(0);
    (void) snprintf(web, sizeof(web), "--web.listen-address=127.0.0.1:%d", prom_port);
    fp = fopen(cfg, "w");
    ck_assert_ptr_nonnull(fp);
    fprintf(fp,
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: shmheap\n    static_configs:\n"
            "      - targets: ['%s']\n",
            listen_addr);
    ck_assert_int_eq(fclose(fp), 0);
    {
        char cfgarg[160];
        const char *argv[] = {prometheus, cfgarg, data, web, "--log.level=warn", NULL};

        (void) snprintf(cfgarg, sizeof(cfgarg), "--config.file=%s", cfg);
        prom = prog_spawn(argv, NULL, log);
        ck_assert_int_gt(prom, 0);
    }

    /* Clients allocate and free while Prometheus scrapes, then hold. */
    ck_assert_int_eq(pipe(ready), 0);
    ck_assert_int_eq(pipe(go), 0);
    for (int i = 0; i < NWORKERS; i++) {
        workers[i] = fork();
        ck_assert_int_ge(workers[i], 0);
        if (workers[i] == 0) {
            (void) close(ready[0]);
            (void) close(go[1]);
            worker(f.socket_path, i, ready[1], go[0]);
        }
    }
    (void) close(ready[1]);
    (void) close(go[0]);
    for (int i = 0; i < NWORKERS; i++) {
        char c;

        ck_assert_int_eq(read(ready[0], &c, 1), 1);
    }

    /* Now the heap is still: Prometheus's latest scrape must agree with
     * shmheapctl. Scrapes come every second; wait (boundedly) for one. */
    in_use = ctl_in_use(f.socket_path);
    ck_assert_uint_gt(in_use, 0);
    for (n = 0; n < daemon_test_ms(60000) / 250; n++) {
        seen = prom_query(prom_port, "shmheap_in_use_bytes");
        (void) snprintf(q, sizeof(q), "count(shmheap_client_allocated_bytes)");
        per_client = prom_query(prom_port, q);
        if (seen == (double) in_use && per_client == NWORKERS)
            break;
        (void) usleep(250000);
    }
    ck_assert_msg(seen == (double) in_use,
                  "Prometheus says shmheap_in_use_bytes %.0f, shmheapctl stats %" PRIu64
                  " (log in %s)",
                  seen, in_use, log);
    ck_assert_msg(per_client == NWORKERS, "Prometheus sees %.0f client series, want %d", per_client,
                  NWORKERS);
    ck_assert_uint_eq(ctl_in_use(f.socket_path), in_use);

    (void) close(go[1]);
    for (int i = 0; i < NWORKERS; i++) {
        int st;

        ck_assert(prog_wait(workers[i], daemon_test_ms(30000), &st));
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d: status %d", i, st);
    }
    (void) close(ready[0]);
    (void) prog_stop(prom, daemon_test_ms(10000));
    {
        char cmd[256];

        (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        ck_assert_int_eq(system(cmd), 0);
    }
    daemon_stop(&f);
    ck_assert(f.clean_exit);
}
END_TEST

/* True once the server closed fd (EOF or reset) within timeout_ms. */
static bool closed_by_server(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char buf[256];

    while (poll(&p, 1, timeout_ms) > 0) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);

        if (n <= 0)
            return true;
    }
    return false;
}

START_TEST(metrics_slow_scrapers)
{
    enum { NSLOW = 40 };
    struct daemon_fixture f;
    struct http_reply r;
    int slow[NSLOW], closed = 0;
    cJSON *reply;

    start_with_metrics(&f, "{" SMALL "}");
    /* Many connections from 127.0.0.1 that send half a request and wait. */
    for (int i = 0; i < NSLOW; i++) {
        ssize_t n;

        slow[i] = http_connect("127.0.0.1", metrics_port, "127.0.0.1");
        ck_assert_int_ge(slow[i], 0);
        n = send(slow[i], "GET /metr", 9, MSG_NOSIGNAL);
        /* One beyond the per-address limit may be closed by the server
         * before this send: that is the limit at work. */
        if (n < 0 && (errno == ECONNRESET || errno == EPIPE)) {
            (void) close(slow[i]);
            slow[i] = -1;
            closed++;
            continue;
        }
        ck_assert_int_eq(n, 9);
    }
    /* Another scraper (another address) is served meanwhile... */
    ck_assert_int_eq(http_request("127.0.0.1", metrics_port, "127.0.0.2", "GET", "/metrics",
                                  daemon_test_ms(10000), &r),
                     0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "shmheap_in_use_bytes "));
    http_reply_free(&r);
    /* ... and so is the control socket. */
    reply = daemon_call_once(f.socket_path, "{\"op\":\"stats\"}");
    ck_assert(reply && reply_is_ok(reply));
    cJSON_Delete(reply);

    /* Beyond the per-address limit (8) the daemon closes at once: wait
     * for that well within its idle timeout (10 s)... */
    for (int round = 0; round < 50 && closed < NSLOW - 8; round++) {
        for (int i = 0; i < NSLOW; i++)
            if (slow[i] >= 0 && closed_by_server(slow[i], 0)) {
                (void) close(slow[i]);
                slow[i] = -1;
                closed++;
            }
        (void) usleep(100000);
    }
    ck_assert_int_ge(closed, NSLOW - 8);
    /* ... and the rest when they have been idle for that long. */
    for (int i = 0; i < NSLOW; i++) {
        if (slow[i] < 0)
            continue;
        ck_assert_msg(closed_by_server(slow[i], daemon_test_ms(30000)),
                      "slow connection %d is still open", i);
        (void) close(slow[i]);
    }
    /* The first address is served again, once the server has let go of
     * the closed connections (it counts them per address until its own
     * thread has cleaned them up: a connection in that instant is reset). */
    for (int tries = 0;; tries++) {
        int rc = http_request("127.0.0.1", metrics_port, NULL, "GET", "/metrics",
                              daemon_test_ms(10000), &r);

        if ((rc == -ECONNRESET || rc == -EPIPE) && tries < 50) {
            (void) usleep(100000);
            continue;
        }
        ck_assert_msg(rc == 0, "GET /metrics after the slow scrapers: %s", strerror(-rc));
        break;
    }
    ck_assert_int_eq(r.status, 200);
    http_reply_free(&r);
    daemon_stop(&f);
    ck_assert(f.clean_exit);
}
END_TEST

static cJSON *set_listen(const char *sock, const char *value)
{
    char line[256];

    (void) snprintf(line, sizeof(line),
                    "{\"op\":\"config.set\",\"key\":\"metrics_listen\",\"value\":\"%s\"}", value);
    return daemon_call_once(sock, line);
}

static bool serves(int port)
{
    struct http_reply r;
    bool ok = http_request("127.0.0.1", port, NULL, "GET", "/metrics", daemon_test_ms(10000), &r) ==
                      0 &&
              r.status == 200;

    if (ok)
        http_reply_free(&r);
    return ok;
}

START_TEST(metrics_moves)
{
    struct daemon_fixture f;
    char cfg[256], addr[64];
    int p1 = http_free_port(0), p2, busy_fd, busy_port;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    cJSON *r;

    /* From the config file, no command-line option. */
    (void) snprintf(cfg, sizeof(cfg), "{" SMALL ", \"metrics_listen\": \"127.0.0.1:%d\"}", p1);
    ck_assert_int_eq(daemon_start(&f, cfg), 0);
    ck_assert(serves(p1));

    /* config.set moves it: here through shmheapctl, with a port alone
     * (loopback), which shmheapctl passes as the string it is. */
    p2 = http_free_port(0);
    {
        char port[16], buf[512], *out = NULL, *err = NULL;
        const char *argv[] = {prog_build_path("SHMHEAPCTL", "shmheapctl", buf, sizeof(buf)),
                              "--socket",
                              f.socket_path,
                              "config",
                              "set",
                              "metrics_listen",
                              port,
                              NULL};

        (void) snprintf(port, sizeof(port), "%d", p2);
        ck_assert_msg(prog_run(argv, NULL, daemon_test_ms(30000), &out, &err) == 0,
                      "shmheapctl config set metrics_listen %s: %s", port, err);
        free(out);
        free(err);
    }
    ck_assert(serves(p2));
    ck_assert(!serves(p1));

    /* An address in use is refused with the reason; the endpoint stays. */
    busy_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};

        ck_assert_int_eq(bind(busy_fd, (struct sockaddr *) &a, sizeof(a)), 0);
        ck_assert_int_eq(listen(busy_fd, 1), 0);
        ck_assert_int_eq(getsockname(busy_fd, (struct sockaddr *) &ss, &len), 0);
        busy_port = ntohs(((struct sockaddr_in *) &ss)->sin_port);
    }
    (void) snprintf(addr, sizeof(addr), "127.0.0.1:%d", busy_port);
    {
        /* A daemon asked to serve there does not start, and says why. */
        const char *args[] = {"--metrics-listen", addr, NULL};
        struct daemon_fixture g;
        char *log;

        ck_assert_int_eq(daemon_start_args(&g, "{" SMALL "}", args), -ECHILD);
        ck_assert(WIFEXITED(g.status) && WEXITSTATUS(g.status) == 1);
        log = daemon_log(&g);
        ck_assert_msg(strstr(log, "for metrics: Address already in use"), "log:\n%s", log);
        free(log);
        daemon_stop(&g);
    }
    r = set_listen(f.socket_path, addr);
    ck_assert(r && !reply_is_ok(r));
    ck_assert_str_eq(reply_error_code(r), "unavailable");
    ck_assert_ptr_nonnull(strstr(reply_error_message(r), "Address already in use"));
    cJSON_Delete(r);
    (void) close(busy_fd);
    ck_assert(serves(p2));
    r = daemon_call_once(f.socket_path, "{\"op\":\"config.get\",\"key\":\"metrics_listen\"}");
    (void) snprintf(addr, sizeof(addr), "%d", p2);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "config"),
                                                      "metrics_listen")
                             ->valuestring,
                     addr);
    cJSON_Delete(r);

    /* "" turns it off. */
    r = set_listen(f.socket_path, "");
    ck_assert(r && reply_is_ok(r));
    cJSON_Delete(r);
    ck_assert(!serves(p2));

    /* SIGHUP: the file's new address is served. */
    (void) snprintf(cfg, sizeof(cfg), "{" SMALL ", \"metrics_listen\": \"%d\"}", p1);
    ck_assert_int_eq(daemon_write_config(&f, cfg), 0);
    ck_assert_int_eq(kill(f.pid, SIGHUP), 0);
    (void) snprintf(addr, sizeof(addr), "serving GET /metrics on %d", p1);
    ck_assert(daemon_log_wait(&f, addr, daemon_test_ms(10000)));
    ck_assert(serves(p1));
    daemon_stop(&f);
    ck_assert(f.clean_exit);
}
END_TEST

/* --metrics-listen wins over the file, at start and on reload. */
START_TEST(metrics_option_wins)
{
    struct daemon_fixture f;
    char cfg[256];
    int in_file = http_free_port(0);

    (void) snprintf(cfg, sizeof(cfg), "{" SMALL ", \"metrics_listen\": \"127.0.0.1:%d\"}", in_file);
    start_with_metrics(&f, cfg);
    ck_assert(serves(metrics_port));
    ck_assert(!serves(in_file));
    ck_assert_int_eq(kill(f.pid, SIGHUP), 0);
    ck_assert(daemon_log_wait(&f, "config reloaded from", daemon_test_ms(10000)));
    ck_assert(serves(metrics_port));
    ck_assert(!serves(in_file));
    daemon_stop(&f);
    ck_assert(f.clean_exit);
}
END_TEST

Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, metrics_endpoint);
    tcase_add_test(tc, metrics_prometheus_scrapes);
    tcase_add_test(tc, metrics_slow_scrapers);
    tcase_add_test(tc, metrics_moves);
    tcase_add_test(tc, metrics_option_wins);
    suite_add_tcase(s, tc);
    return s;
}
