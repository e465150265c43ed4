/* Human-readable tables of the daemon's replies. Missing fields print as 0
 * or "-" (an older or newer daemon may send fewer or more); only a reply
 * without the object a table is built from is refused. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"

uint64_t json_u64(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

    if (!cJSON_IsNumber(v) || v->valuedouble < 0)
        return 0;
    if (v->valuedouble >= 18446744073709551616.0)
        return UINT64_MAX;
    return (uint64_t) v->valuedouble;
}

const char *json_str(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

    return cJSON_IsString(v) ? v->valuestring : "-";
}

char *render_bytes(uint64_t n, char *buf, size_t len)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double) n;
    unsigned u = 0;

    if (n < 1024) {
        snprintf(buf, len, "%" PRIu64 " B", n);
        return buf;
    }
    v /= 1024;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v, units[u]);
    return buf;
}

/* page_size as the protocol sends it: "2M" in stats, bytes elsewhere. */
static const char *page_name(const cJSON *obj, char *buf, size_t len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "page_size");
    uint64_t n;

    if (cJSON_IsString(v))
        return v->valuestring;
    n = json_u64(obj, "page_size");
    if (n >= (UINT64_C(1) << 30) && n % (UINT64_C(1) << 30) == 0)
        snprintf(buf, len, "%" PRIu64 "G", n >> 30);
    else if (n >= (UINT64_C(1) << 20) && n % (UINT64_C(1) << 20) == 0)
        snprintf(buf, len, "%" PRIu64 "M", n >> 20);
    else if (n >= 1024 && n % 1024 == 0)
        snprintf(buf, len, "%" PRIu64 "K", n >> 10);
    else
        snprintf(buf, len, "%" PRIu64, n);
    return buf;
}

static const cJSON *member(const cJSON *reply, const char *name, bool array)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(reply, name);

    if (array ? !cJSON_IsArray(v) : !cJSON_IsObject(v)) {
        fprintf(stderr, "shmheapctl: the reply has no \"%s\" %s\n", name,
                array ? "array" : "object");
        return NULL;
    }
    return v;
}

static void line_bytes(FILE *f, const char *label, const cJSON *obj, const char *name)
{
    char b[32];

    fprintf(f, "  %-22s %s\n", label, render_bytes(json_u64(obj, name), b, sizeof(b)));
}

static void line_count(FILE *f, const char *label, const cJSON *obj, const char *name)
{
    fprintf(f, "  %-22s %" PRIu64 "\n", label, json_u64(obj, name));
}

static void segments_table(FILE *f, const cJSON *segs)
{
    const cJSON *s;
    char b1[32], b2[32], b3[24];

    fprintf(f, "  %5s %12s %6s %12s %12s\n", "INDEX", "SIZE", "PAGE", "COMMITTED", "FREE_BLOCKS");
    cJSON_ArrayForEach(s, segs)
    {
        fprintf(f, "  %5" PRIu64 " %12s %6s %12s %12" PRIu64 "\n", json_u64(s, "index"),
                render_bytes(json_u64(s, "size"), b1, sizeof(b1)), page_name(s, b3, sizeof(b3)),
                render_bytes(json_u64(s, "committed_bytes"), b2, sizeof(b2)),
                json_u64(s, "free_blocks"));
    }
}

bool render_stats(FILE *f, const cJSON *reply)
{
    const cJSON *st = member(reply, "stats", false), *rec, *classes, *segs, *c;

    if (!st)
        return false;
    rec = cJSON_GetObjectItemCaseSensitive(st, "recycler");
    fputs("heap\n", f);
    line_bytes(f, "bytes reserved", st, "bytes_reserved");
    line_bytes(f, "bytes committed", st, "bytes_committed");
    line_bytes(f, "bytes in use", st, "bytes_in_use");
    line_bytes(f, "peak bytes in use", st, "peak_bytes_in_use");
    line_count(f, "allocations", st, "allocs");
    line_count(f, "frees", st, "frees");
    line_count(f, "bad frees", st, "bad_frees");
    line_count(f, "double frees", st, "double_frees");
    line_count(f, "lost objects", st, "lost_objects");
    line_count(f, "reclaimed objects", st, "reclaimed_objects");
    line_bytes(f, "reclaimed bytes", st, "reclaimed_bytes");
    line_count(f, "clients", st, "clients");
    line_count(f, "clients refused (uid quota)", st, "clients_refused_uid_quota");
    line_count(f, "thread caches", st, "thread_caches");
    line_count(f, "trim generation", st, "trim_gen");
    line_count(f, "trims", st, "trims");
    line_bytes(f, "trim bytes released", st, "trim_bytes_released");
    line_count(f, "recycler pushes", rec, "pushes");
    line_count(f, "recycler pops", rec, "pops");
    line_count(f, "recycler CAS retries", rec, "cas_retries");
    classes = cJSON_GetObjectItemCaseSensitive(st, "classes");
    if (cJSON_IsArray(classes) && cJSON_GetArraySize(classes) > 0) {
        fputs("\nsize classes\n", f);
        fprintf(f, "  %7s %10s %10s %10s %10s %10s %10s\n", "SIZE", "IN_USE", "CACHED", "RECYCLER",
                "PUSHES", "POPS", "RETRIES");
        cJSON_ArrayForEach(c, classes)
        {
            fprintf(f,
                    "  %7" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %10" PRIu64
                    " %10" PRIu64 " %10" PRIu64 "\n",
                    json_u64(c, "object_size"), json_u64(c, "in_use"), json_u64(c, "cached"),
                    json_u64(c, "in_recycler"), json_u64(c, "recycler_pushes"),
                    json_u64(c, "recycler_pops"), json_u64(c, "recycler_cas_retries"));
        }
    }
    segs = cJSON_GetObjectItemCaseSensitive(st, "segments");
    if (cJSON_IsArray(segs)) {
        fputs("\nsegments\n", f);
        segments_table(f, segs);
    }
    return true;
}

bool render_trim(FILE *f, const cJSON *reply)
{
    char b[32];

    fprintf(f,
            "trim generation %" PRIu64 ": released %s, flushed %" PRIu64 " of %" PRIu64
            " thread caches\n",
            json_u64(reply, "trim_gen"),
            render_bytes(json_u64(reply, "bytes_released"), b, sizeof(b)),
            json_u64(reply, "caches_flushed"), json_u64(reply, "caches_total"));
    return true;
}

bool render_config(FILE *f, const cJSON *reply)
{
    const cJSON *cfg = member(reply, "config", false), *kv;
    int width = 0;

    if (!cfg)
        return false;
    cJSON_ArrayForEach(kv, cfg)
    {
        int n = (int) strlen(kv->string);

        if (n > width)
            width = n;
    }
    cJSON_ArrayForEach(kv, cfg)
    {
        char *text;

        if (cJSON_IsString(kv)) {
            fprintf(f, "%-*s  %s\n", width, kv->string, kv->valuestring);
            continue;
        }
        text = cJSON_PrintUnformatted(kv);
        fprintf(f, "%-*s  %s\n", width, kv->string, text ? text : "?");
        cJSON_free(text);
    }
    return true;
}

bool render_clients(FILE *f, const cJSON *reply)
{
    const cJSON *clients = member(reply, "clients", true), *c, *conn;
    char b[32], q[32];

    if (!clients)
        return false;
    fprintf(f, "%10s %8s %6s %8s %12s %12s %10s\n", "CLIENT_ID", "PID", "UID", "THREADS",
            "ALLOCATED", "QUOTA", "CONNECTED");
    cJSON_ArrayForEach(c, clients)
    {
        conn = cJSON_GetObjectItemCaseSensitive(c, "connected_s");
        /* The client's own quota, "-" without one; "!" marks a client
         * refused for its own quota or its uid's. */
        if (json_u64(c, "quota_bytes"))
            (void) render_bytes(json_u64(c, "quota_bytes"), q, sizeof(q));
        else
            (void) snprintf(q, sizeof(q), "-");
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "over_quota")))
            (void) snprintf(q + strlen(q), sizeof(q) - strlen(q), "!");
        fprintf(f, "%10" PRIu64 " %8" PRIu64 " %6" PRIu64 " %8" PRIu64 " %12s %12s %9.0fs\n",
                json_u64(c, "client_id"), json_u64(c, "pid"), json_u64(c, "uid"),
                json_u64(c, "threads"), render_bytes(json_u64(c, "bytes_allocated"), b, sizeof(b)),
                q, cJSON_IsNumber(conn) ? conn->valuedouble : 0.0);
    }
    if (cJSON_GetArraySize(clients) == 0)
        fputs("(no clients attached)\n", f);
    return true;
}

bool render_segments(FILE *f, const cJSON *reply)
{
    const cJSON *segs = member(reply, "segments", true);

    if (!segs)
        return false;
    segments_table(f, segs);
    return true;
}

bool render_verify(FILE *f, const cJSON *reply)
{
    const cJSON *consistent = cJSON_GetObjectItemCaseSensitive(reply, "consistent");
    const cJSON *problems = cJSON_GetObjectItemCaseSensitive(reply, "problems"), *p;

    if (!cJSON_IsBool(consistent)) {
        fputs("shmheapctl: the reply has no \"consistent\" field\n", stderr);
        return false;
    }
    if (cJSON_IsTrue(consistent)) {
        fprintf(f, "heap consistent: %" PRIu64 " blocks checked\n",
                json_u64(reply, "checked_blocks"));
        return true;
    }
    fprintf(f, "heap NOT consistent (%" PRIu64 " blocks checked):\n",
            json_u64(reply, "checked_blocks"));
    cJSON_ArrayForEach(p, problems)
    {
        if (cJSON_IsString(p))
            fprintf(f, "  %s\n", p->valuestring);
    }
    return false;
}
