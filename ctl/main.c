/* shmheapctl: builds the request for the command, sends it, renders the
 * reply and picks the exit status (ctl.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shmheap.h"

#include "config/config.h"
#include "ctl/ctl.h"
#include "prom/prom.h"

#define CTL_TIMEOUT_MS        30000u
#define CTL_VERIFY_TIMEOUT_MS 300000u /* walks the whole heap */

static const char *const ops[_CMD_MAX] = {
        [CMD_STATS] = "stats",           [CMD_TRIM] = "trim",       [CMD_CONFIG_GET] = "config.get",
        [CMD_CONFIG_SET] = "config.set", [CMD_CLIENTS] = "clients", [CMD_SEGMENTS] = "segments",
        [CMD_VERIFY] = "verify",
};

/* VALUE as JSON if the whole text parses (number, string, array, ...),
 * else as a string: `config set huge_pages 2M` needs no quotes. A key that
 * takes a string takes the text as is unless it is quoted JSON:
 * `config set metrics_listen 9464` means the string "9464". */
static cJSON *config_value(const char *key, const char *text)
{
    const struct config_key *k = config_key_find(key);
    const char *end = NULL;
    cJSON *v;

    if (k && config_key_type(k) == CONFIG_STRING && text[0] != '"')
        return cJSON_CreateString(text);
    v = cJSON_ParseWithOpts(text, &end, 1);

    if (v)
        return v;
    return cJSON_CreateString(text);
}

static cJSON *build_request(const struct ctl_args *a)
{
    cJSON *req = cJSON_CreateObject(), *v;

    if (!req || !cJSON_AddStringToObject(req, "op", ops[a->command]))
        goto fail;
    switch (a->command) {
    case CMD_TRIM:
        if (a->has_wait && !cJSON_AddNumberToObject(req, "wait_ms", a->wait_ms))
            goto fail;
        break;
    case CMD_CONFIG_GET:
        if (a->key && !cJSON_AddStringToObject(req, "key", a->key))
            goto fail;
        break;
    case CMD_CONFIG_SET:
        if (!cJSON_AddStringToObject(req, "key", a->key))
            goto fail;
        v = config_value(a->key, a->value);
        if (!v || !cJSON_AddItemToObject(req, "value", v)) {
            cJSON_Delete(v);
            goto fail;
        }
        break;
    default:
        break;
    }
    return req;
fail:
    cJSON_Delete(req);
    fputs("shmheapctl: out of memory\n", stderr);
    return NULL;
}

static void print_refusal(const cJSON *reply)
{
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(reply, "error");
    const char *code = json_str(err, "code"), *msg = json_str(err, "message");

    if (strcmp(code, "-") != 0)
        fprintf(stderr, "shmheapctl: shmheapd refused: %s (%s)\n", msg, code);
    else
        fprintf(stderr, "shmheapctl: shmheapd refused: %s\n", msg);
}

/* The daemon's own generator (prom/): the same text as its GET /metrics. */
static bool render_prometheus(FILE *f, const cJSON *reply)
{
    int r = prom_render(f, cJSON_GetObjectItemCaseSensitive(reply, "stats"));

    if (r == -EINVAL)
        fputs("shmheapctl: the reply has no \"stats\" object\n", stderr);
    return r == 0;
}

static bool render(const struct ctl_args *a, const cJSON *reply)
{
    switch (a->command) {
    case CMD_STATS:
        return a->format == FMT_PROMETHEUS ? render_prometheus(stdout, reply)
                                           : render_stats(stdout, reply);
    case CMD_TRIM:
        return render_trim(stdout, reply);
    case CMD_CONFIG_GET:
    case CMD_CONFIG_SET:
        return render_config(stdout, reply);
    case CMD_CLIENTS:
        return render_clients(stdout, reply);
    case CMD_SEGMENTS:
        return render_segments(stdout, reply);
    case CMD_VERIFY:
        return render_verify(stdout, reply);
    default:
        return false;
    }
}

int main(int argc, char **argv)
{
    struct ctl_args a;
    struct ctl_conn conn = {.fd = -1};
    char path[sizeof(conn.path)], *line = NULL;
    cJSON *req, *reply = NULL;
    unsigned timeout = CTL_TIMEOUT_MS;
    int status, r;

    if (args_parse(argc, argv, &a) < 0)
        return CTL_EXIT_USAGE;
    if (a.help) {
        args_usage(stdout);
        return CTL_EXIT_OK;
    }
    if (a.version) {
        printf("shmheapctl %s\n", SHMHEAP_VERSION);
        return CTL_EXIT_OK;
    }
    if (conn_resolve_path(a.socket_path, path, sizeof(path)) < 0)
        return CTL_EXIT_USAGE;
    req = build_request(&a);
    if (!req)
        return CTL_EXIT_REFUSED;
    if (a.command == CMD_TRIM)
        timeout += a.has_wait ? a.wait_ms : 100;
    else if (a.command == CMD_VERIFY)
        timeout = CTL_VERIFY_TIMEOUT_MS;
    if (conn_connect(&conn, path) < 0) {
        cJSON_Delete(req);
        return CTL_EXIT_CONNECT;
    }
    r = conn_exchange(&conn, req, timeout, &line, &reply);
    cJSON_Delete(req);
    conn_disconnect(&conn);
    if (r < 0)
        return r == -1 ? CTL_EXIT_CONNECT : CTL_EXIT_REFUSED;
    if (a.format == FMT_JSON)
        printf("%s\n", line);
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
        print_refusal(reply);
        status = CTL_EXIT_REFUSED;
    } else if (a.format == FMT_JSON) {
        /* verify: a broken heap is a failure for scripts too. */
        status =
                a.command == CMD_VERIFY &&
                                !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "consistent"))
                        ? CTL_EXIT_REFUSED
                        : CTL_EXIT_OK;
    } else {
        status = render(&a, reply) ? CTL_EXIT_OK : CTL_EXIT_REFUSED;
    }
    cJSON_Delete(reply);
    free(line);
    if (fflush(stdout) != 0 && status == CTL_EXIT_OK) {
        perror("shmheapctl: stdout");
        status = CTL_EXIT_REFUSED;
    }
    return status;
}
