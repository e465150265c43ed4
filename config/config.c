/* The table of tunables: one row per key (see config.h).
 *
 * A row names the field of struct config it fills (offset and width), its
 * type, default and bounds. Parsing is by type; a row may add a check of its
 * own (multiples, a hole in the range), and config_check() holds the rules
 * between keys. Every value is checked in full before anything is stored,
 * so a refused value leaves the struct as it was. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "config/internal.h"
#include "config/utf8.h"
#include "shm/heap.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

struct config_enum {
    const char *name;
    uint32_t value;
};

struct config_key {
    const char *name;
    enum config_type type;
    enum config_scope scope;
    size_t offset;       /* of the field in struct config */
    size_t width;        /* 4 or 8 bytes (numbers and enums) */
    size_t count_offset; /* ID lists: offset of the uint32_t count */
    uint64_t def, min, max;
    uint64_t min_nonzero;                 /* if not 0: values 1..min_nonzero-1 are refused */
    uint64_t multiple;                    /* if not 0: values must be multiples of it */
    const struct config_enum *enum_names; /* CONFIG_ENUM: NULL-terminated */
    /* CONFIG_STRING: the default, and a check of a value that fits (0 or
     * a negative errno with a message). */
    const char *def_str;
    int (*check_str)(const char *s, char *err, size_t errlen);
    const char *help;
};

static int check_metrics_listen(const char *s, char *err, size_t errlen)
{
    struct sockaddr_storage ss;

    return config_listen_parse(s, &ss, err, errlen);
}

static const struct config_enum huge_pages_names[] = {
        {"auto", SHM_PAGES_AUTO},
        {"1G", SHM_PAGES_1G},
        {"2M", SHM_PAGES_2M},
        {"off", SHM_PAGES_OFF},
        {NULL, 0},
};

static const struct config_enum log_level_names[] = {
        {"error", 3}, {"warning", 4}, {"notice", 5}, {"info", 6}, {"debug", 7}, {NULL, 0},
};

#define FIELD(f) .offset = offsetof(struct config, f), .width = sizeof(((struct config *) 0)->f)
#define IDLIST(f) \
    .offset = offsetof(struct config, f), .count_offset = offsetof(struct config, n_##f)

/* segment_size's lower bound: this table is its one home (the daemon
 * refuses anything below it). shm's SHM_SEG_MIN_SIZE is the layout's
 * floor under it, which heap_ctl_create() enforces for local heaps and
 * tests. */
#define SEGMENT_SIZE_MIN (64 * MiB)
_Static_assert(SEGMENT_SIZE_MIN >= SHM_SEG_MIN_SIZE,
               "segment_size's bound is above the layout's floor");

/* The defaults of the heap's keys are those of heap_config_default()
 * (shm/create.c); check_config.c holds the two together. */
static const struct config_key keys[] = {
        {.name = "segment_size",
         .type = CONFIG_BYTES,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.segment_size),
         .def = GiB,
         .min = SEGMENT_SIZE_MIN,
         .max = 16 * GiB,
         .multiple = 64 * KiB,
         .help = "bytes of each new heap segment: 64M..16G, a multiple of 64K and of the huge "
                 "page size (default 1G)"},
        {.name = "huge_pages",
         .type = CONFIG_ENUM,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.huge_pages),
         .def = SHM_PAGES_AUTO,
         .min = 0,
         .max = _SHM_PAGES_MAX - 1,
         .enum_names = huge_pages_names,
         .help = "pages of new segments: \"1G\", \"2M\", \"off\" (4K) or \"auto\" (1G, then 2M, "
                 "then 4K; default)"},
        {.name = "thread_cache_bytes",
         .type = CONFIG_BYTES,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.thread_cache_bytes),
         .def = 1 * MiB,
         .min = 16 * KiB,
         .max = 64 * MiB,
         .help = "bytes a thread cache holds before it gives a bundle back: 16K..64M (default "
                 "1M)"},
        {.name = "bundle_objects",
         .type = CONFIG_COUNT,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.bundle_objects),
         .def = 64,
         .min = 2,
         .max = 4096,
         .help = "objects moved between a thread cache and a recycler at once: 2..4096 (default "
                 "64)"},
        {.name = "recycler_cap_bundles",
         .type = CONFIG_COUNT,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.recycler_cap_bundles),
         .def = 64,
         .min = 1,
         .max = 65536,
         .help = "bundles a size class's recycler keeps before objects go back to their "
                 "blocks: 1..65536 (default 64)"},
        {.name = "retain_empty_blocks",
         .type = CONFIG_COUNT,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.retain_empty_blocks),
         .def = 16,
         .min = 0,
         .max = 1u << 20,
         .help = "empty 64K blocks a trim, periodic or automatic (decay_ms), keeps committed: "
                 "0..1048576 (default 16)"},
        {.name = "trim_interval_ms",
         .type = CONFIG_MS,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.trim_interval_ms),
         .def = 0,
         .min = 0,
         .max = 86400000,
         .min_nonzero = 100,
         .help = "milliseconds between periodic full trims, besides the gradual automatic "
                 "trim of decay_ms: 0 (none; default) or 100..86400000"},
        {.name = "decay_ms",
         .type = CONFIG_MS,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(decay_ms),
         .def = 10000,
         .min = 0,
         .max = 3600000,
         .min_nonzero = 10,
         .help = "the automatic trim: memory no one needed for this many milliseconds goes "
                 "back to the system, gradually: 0 (off: only trims) or 10..3600000 (default "
                 "10000)"},
        {.name = "decay_retain_percent",
         .type = CONFIG_COUNT,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(decay_retain_percent),
         .def = 25,
         .min = 0,
         .max = 1000,
         .help = "the automatic trim keeps the peak of bytes in use over the last decay_ms plus "
                 "this percent (and retain_empty_blocks) committed: 0..1000 (default 25)"},
        {.name = "decay_release_rate",
         .type = CONFIG_BYTES,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(decay_release_rate),
         .def = 1 * GiB,
         .min = 64 * KiB,
         .max = 1024 * GiB,
         .help = "bytes per second the automatic trim releases at most: 64K..1T (default 1G)"},
        {.name = "decay_pressure_percent",
         .type = CONFIG_COUNT,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(decay_pressure_percent),
         .def = 10,
         .min = 0,
         .max = 100,
         .help = "memory pressure (PSI \"some avg10\", percent) at which the automatic trim "
                 "releases down to the bytes in use at once: 0 (ignore PSI) or 1..100 (default "
                 "10)"},
        {.name = "max_clients",
         .type = CONFIG_COUNT,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.max_clients),
         .def = 64,
         .min = 1,
         .max = 4096,
         .help = "connections the daemon serves at once: 1..4096 (default 64)"},
        {.name = "max_connections_per_uid",
         .type = CONFIG_COUNT,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(max_connections_per_uid),
         .def = 0,
         .min = 0,
         .max = 4096,
         .help = "connections one uid may hold at once: 0 (only max_clients bounds them) or "
                 "1..4096 (default 0)"},
        {.name = "max_segments",
         .type = CONFIG_COUNT,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.max_segments),
         .def = 16,
         .min = 1,
         .max = SHM_MAX_SEGMENTS - 1,
         .help = "heap segments the heap may grow to: 1..31 (default 16)"},
        {.name = "max_client_bytes",
         .type = CONFIG_BYTES,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.max_client_bytes),
         .def = 0,
         .min = 0,
         .min_nonzero = 1 * MiB,
         .max = 512 * GiB,
         .help = "bytes one client may have allocated at once: 0 (unlimited; default) or "
                 "1M..512G; checked when it takes memory from the shared heap"},
        {.name = "max_uid_bytes",
         .type = CONFIG_BYTES,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.max_uid_bytes),
         .def = 0,
         .min = 0,
         .min_nonzero = 1 * MiB,
         .max = 512 * GiB,
         .help = "bytes the clients of one uid may have allocated at once: 0 (unlimited; "
                 "default) or 1M..512G; summed by the daemon every 100 ms"},
        /* ---- restart (daemon/adopt.c, client/reconnect.c) ---- */
        {.name = "reconnect_wait_ms",
         .type = CONFIG_MS,
         .scope = CONFIG_SCOPE_HEAP,
         FIELD(shm.reconnect_wait_ms),
         .def = 5000,
         .min = 0,
         .max = 600000,
         .help = "milliseconds a client whose daemon is gone waits for a new one when it needs "
                 "it (a new segment) before failing with ENOMEM: 0..600000 (default 5000)"},
        {.name = "state_dir",
         .type = CONFIG_PATH,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(state_dir),
         .help = "directory (tmpfs or hugetlbfs) that keeps the heap's segments as files, so "
                 "that a restarted daemon adopts them; \"\" for none (default); read at start"},
        /* ---- end of restart ---- */
        {.name = "allowed_uids",
         .type = CONFIG_ID_LIST,
         .scope = CONFIG_SCOPE_DAEMON,
         IDLIST(allowed_uids),
         .max = UINT32_MAX - 1,
         .help = "uids allowed to connect besides root and the daemon's own (default [])"},
        {.name = "allowed_gids",
         .type = CONFIG_ID_LIST,
         .scope = CONFIG_SCOPE_DAEMON,
         IDLIST(allowed_gids),
         .max = UINT32_MAX - 1,
         .help = "gids (primary or supplementary) allowed to connect (default [])"},
        {.name = "log_level",
         .type = CONFIG_ENUM,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(log_level),
         .def = 6,
         .min = 3,
         .max = 7,
         .enum_names = log_level_names,
         .help = "the daemon's log threshold: \"error\", \"warning\", \"notice\", \"info\" "
                 "(default) or \"debug\""},
        {.name = "request_timeout_ms",
         .type = CONFIG_MS,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(request_timeout_ms),
         .def = 10000,
         .min = 100,
         .max = 600000,
         .help = "milliseconds a request may take to arrive in full: 100..600000 (default "
                 "10000)"},
        {.name = "idle_timeout_ms",
         .type = CONFIG_MS,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(idle_timeout_ms),
         .def = 300000,
         .min = 0,
         .max = 86400000,
         .min_nonzero = 100,
         .help = "milliseconds a connection without hello may stay idle: 0 (forever) or "
                 "100..86400000 (default 300000)"},
        {.name = "metrics_listen",
         .type = CONFIG_STRING,
         .scope = CONFIG_SCOPE_DAEMON,
         FIELD(metrics_listen),
         .def_str = "",
         .check_str = check_metrics_listen,
         .help = "ADDR:PORT of the Prometheus endpoint GET /metrics (a port alone: loopback); "
                 "\"\" is off (default); a change restarts the endpoint"},
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* ---- small helpers ---- */

static void errf(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (!err || len == 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(err, len, fmt, ap);
    va_end(ap);
    /* Messages name untrusted text and may be cut: keep them UTF-8. */
    utf8_sanitize(err, len, n > 0 ? (size_t) n : 0);
}

static uint64_t field_get(const struct config *c, const struct config_key *k)
{
    const char *p = (const char *) c + k->offset;

    if (k->width == 8) {
        uint64_t v;

        memcpy(&v, p, 8);
        return v;
    } else {
        uint32_t v;

        memcpy(&v, p, 4);
        return v;
    }
}

static void field_set(struct config *c, const struct config_key *k, uint64_t v)
{
    char *p = (char *) c + k->offset;

    if (k->width == 8) {
        memcpy(p, &v, 8);
    } else {
        uint32_t v32 = (uint32_t) v;

        memcpy(p, &v32, 4);
    }
}

static uint32_t *list_items(struct config *c, const struct config_key *k)
{
    return (uint32_t *) (void *) ((char *) c + k->offset);
}

static const uint32_t *list_items_const(const struct config *c, const struct config_key *k)
{
    return (const uint32_t *) (const void *) ((const char *) c + k->offset);
}

static uint32_t *list_count(struct config *c, const struct config_key *k)
{
    return (uint32_t *) (void *) ((char *) c + k->count_offset);
}

static uint32_t list_count_get(const struct config *c, const struct config_key *k)
{
    uint32_t n;

    memcpy(&n, (const char *) c + k->count_offset, sizeof(n));
    return n;
}

/* "64M" for exact binary multiples, else "" (the number says it all). */
static const char *human_bytes(uint64_t v, char *buf, size_t len)
{
    static const char units[] = "KMGT";

    buf[0] = 0;
    for (int i = 3; i >= 0; i--) {
        uint64_t u = UINT64_C(1) << (10 * (i + 1));

        if (v >= u && v % u == 0) {
            (void) snprintf(buf, len, " (%" PRIu64 "%c)", v / u, units[i]);
            break;
        }
    }
    return buf;
}

/* A short description of a JSON value for "got ..." in messages. */
static const char *describe_json(const cJSON *v, char *buf, size_t len)
{
    if (!v)
        (void) snprintf(buf, len, "nothing");
    else if (cJSON_IsBool(v))
        (void) snprintf(buf, len, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v))
        (void) snprintf(buf, len, "null");
    else if (cJSON_IsNumber(v))
        (void) snprintf(buf, len, "%.17g", v->valuedouble);
    else if (cJSON_IsString(v)) {
        /* Cut only before a character's first byte (never inside one): at
         * most 3 continuation bytes follow the cap, then "...", the quote
         * and the NUL. */
        size_t o = 0, cap = len >= 52 ? 40 : len > 12 ? len - 12 : 0;

        buf[o++] = '"';
        for (const char *s = v->valuestring; *s; s++) {
            unsigned char ch = (unsigned char) *s;

            if (o > cap && (ch & 0xc0) != 0x80) {
                o += (size_t) snprintf(buf + o, len - o, "...");
                break;
            }
            buf[o++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char) ch;
        }
        if (o + 2 <= len) {
            buf[o++] = '"';
            buf[o] = 0;
        } else {
            buf[len - 1] = 0;
        }
    } else if (cJSON_IsArray(v))
        (void) snprintf(buf, len, "an array");
    else if (cJSON_IsObject(v))
        (void) snprintf(buf, len, "an object");
    else
        (void) snprintf(buf, len, "an unknown value");
    return buf;
}

/* A JSON number that is a whole number in 0..2^64-1, as a u64. Returns 0,
 * -EINVAL (not a whole number) or -ERANGE (negative or too big; *ret gets
 * a clamped value for the message). */
static int json_whole(const cJSON *v, uint64_t *ret, bool *ret_negative)
{
    double d = v->valuedouble;

    *ret_negative = false;
    if (!isfinite(d) || floor(d) != d)
        return -EINVAL;
    if (d < 0) {
        *ret_negative = true;
        return -ERANGE;
    }
    if (d >= 18446744073709551616.0)
        return -ERANGE;
    *ret = (uint64_t) d;
    return 0;
}

/* Parses "256M", "1G", "64KiB", "1024", "2 GB": a whole number and an
 * optional binary unit. Returns 0, -EINVAL (not a size) or -ERANGE. */
static int parse_size_text(const char *s, uint64_t *ret)
{
    uint64_t v = 0, mul = 1;
    const char *p = s;

    while (*p == ' ')
        p++;
    if (*p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - (uint64_t) (*p - '0')) / 10)
            return -ERANGE;
        v = v * 10 + (uint64_t) (*p - '0');
    }
    while (*p == ' ')
        p++;
    switch (*p) {
    case 'k':
    case 'K':
        mul = KiB;
        break;
    case 'm':
    case 'M':
        mul = MiB;
        break;
    case 'g':
    case 'G':
        mul = GiB;
        break;
    case 't':
    case 'T':
        mul = GiB * KiB;
        break;
    case 0:
        break;
    default:
        return -EINVAL;
    }
    if (mul > 1) {
        p++;
        if (*p == 'i' && p[1] == 'B')
            p += 2;
        else if (*p == 'B')
            p++;
    } else if (*p == 'B') {
        p++;
    }
    while (*p == ' ')
        p++;
    if (*p)
        return -EINVAL;
    if (v > UINT64_MAX / mul)
        return -ERANGE;
    *ret = v * mul;
    return 0;
}

static const char *type_expected(const struct config_key *k, char *buf, size_t len)
{
    size_t o;

    switch (k->type) {
    case CONFIG_BYTES:
        return "a number of bytes or a size string such as \"256M\"";
    case CONFIG_COUNT:
        return "a whole number";
    case CONFIG_MS:
        return "a whole number of milliseconds";
    case CONFIG_PATH:
        return "an absolute path (a string) or \"\" for none";
    case CONFIG_ID_LIST:
        return strstr(k->name, "gid") ? "an array of gids (whole numbers)"
                                      : "an array of uids (whole numbers)";
    case CONFIG_STRING:
        return "a string";
    case CONFIG_ENUM:
        o = (size_t) snprintf(buf, len, "one of");
        for (const struct config_enum *e = k->enum_names; e->name && o < len; e++)
            o += (size_t) snprintf(buf + o, len - o, "%s \"%s\"", e == k->enum_names ? "" : ",",
                                   e->name);
        return buf;
    default:
        return "a value";
    }
}

static int type_error(const struct config_key *k, const cJSON *v, char *err, size_t errlen)
{
    char exp[96], got[64];

    errf(err, errlen, "%s must be %s, got %s", k->name, type_expected(k, exp, sizeof(exp)),
         describe_json(v, got, sizeof(got)));
    return -EINVAL;
}

static int range_error(
        const struct config_key *k, uint64_t v, bool negative, bool huge, char *err, size_t errlen)
{
    char got[40], hmin[24], hmax[24];

    if (negative)
        (void) snprintf(got, sizeof(got), "a negative number");
    else if (huge)
        (void) snprintf(got, sizeof(got), "a number beyond 2^64");
    else
        (void) snprintf(got, sizeof(got), "%" PRIu64, v);
    if (k->type == CONFIG_BYTES) {
        (void) human_bytes(k->min, hmin, sizeof(hmin));
        (void) human_bytes(k->max, hmax, sizeof(hmax));
    } else {
        hmin[0] = hmax[0] = 0;
    }
    if (k->min_nonzero)
        errf(err, errlen, "%s must be 0 (off) or between %" PRIu64 " and %" PRIu64 ", got %s",
             k->name, k->min_nonzero, k->max, got);
    else
        errf(err, errlen, "%s must be between %" PRIu64 "%s and %" PRIu64 "%s, got %s", k->name,
             k->min, hmin, k->max, hmax, got);
    return -ERANGE;
}

static int check_range(const struct config_key *k, uint64_t v, char *err, size_t errlen)
{
    if (v < k->min || v > k->max || (k->min_nonzero && v != 0 && v < k->min_nonzero))
        return range_error(k, v, false, false, err, errlen);
    return 0;
}

/* Parses a number-like value of key k. */
static int
parse_number(const struct config_key *k, const cJSON *v, uint64_t *ret, char *err, size_t errlen)
{
    bool negative;
    uint64_t n = 0;
    int r;

    if (cJSON_IsNumber(v)) {
        r = json_whole(v, &n, &negative);
        if (r == -EINVAL)
            return type_error(k, v, err, errlen);
        if (r == -ERANGE)
            return range_error(k, 0, negative, !negative, err, errlen);
    } else if (k->type == CONFIG_BYTES && cJSON_IsString(v)) {
        r = parse_size_text(v->valuestring, &n);
        if (r == -EINVAL)
            return type_error(k, v, err, errlen);
        if (r == -ERANGE)
            return range_error(k, 0, false, true, err, errlen);
    } else {
        return type_error(k, v, err, errlen);
    }
    r = check_range(k, n, err, errlen);
    if (r < 0)
        return r;
    if (k->multiple && n % k->multiple) {
        char h[24];

        errf(err, errlen, "%s must be a multiple of %" PRIu64 "%s, got %" PRIu64, k->name,
             k->multiple, human_bytes(k->multiple, h, sizeof(h)), n);
        return -ERANGE;
    }
    *ret = n;
    return 0;
}

static int
parse_enum(const struct config_key *k, const cJSON *v, uint64_t *ret, char *err, size_t errlen)
{
    if (!cJSON_IsString(v))
        return type_error(k, v, err, errlen);
    for (const struct config_enum *e = k->enum_names; e->name; e++)
        if (strcasecmp(e->name, v->valuestring) == 0) {
            *ret = e->value;
            return 0;
        }
    return type_error(k, v, err, errlen);
}

/* A path value: "" (none) or an absolute path without control characters
 * that fits the field. */
static int parse_path(const struct config_key *k, const cJSON *v, char *err, size_t errlen)
{
    const char *s;

    if (!cJSON_IsString(v))
        return type_error(k, v, err, errlen);
    s = v->valuestring;
    if (!*s)
        return 0;
    if (s[0] != '/')
        return type_error(k, v, err, errlen);
    if (strlen(s) >= k->width) {
        errf(err, errlen, "%s must be at most %zu bytes long, got %zu", k->name, k->width - 1,
             strlen(s));
        return -ERANGE;
    }
    for (const char *p = s; *p; p++)
        if ((unsigned char) *p < 0x20 || *p == 0x7f)
            return type_error(k, v, err, errlen);
    return 0;
}

/* Parses an array of ids into ids[], *ret_n. Duplicates are dropped. */
static int parse_id_list(const struct config_key *k,
                         const cJSON *v,
                         uint32_t *ids,
                         uint32_t *ret_n,
                         char *err,
                         size_t errlen)
{
    uint32_t n = 0;
    const cJSON *it;

    if (!cJSON_IsArray(v))
        return type_error(k, v, err, errlen);
    cJSON_ArrayForEach(it, v)
    {
        uint64_t id = 0;
        bool negative, dup = false;
        int r;

        if (!cJSON_IsNumber(it))
            return type_error(k, v, err, errlen);
        r = json_whole(it, &id, &negative);
        if (r == -EINVAL)
            return type_error(k, v, err, errlen);
        if (r == -ERANGE || id > k->max) {
            errf(err, errlen, "%s entries must be between 0 and %" PRIu64 ", got %.17g", k->name,
                 k->max, it->valuedouble);
            return -ERANGE;
        }
        for (uint32_t i = 0; i < n; i++)
            dup |= ids[i] == (uint32_t) id;
        if (dup)
            continue;
        if (n == CONFIG_MAX_IDS) {
            errf(err, errlen, "%s must have between 0 and %u entries, got %d", k->name,
                 CONFIG_MAX_IDS, cJSON_GetArraySize(v));
            return -ERANGE;
        }
        ids[n++] = (uint32_t) id;
    }
    *ret_n = n;
    return 0;
}

/* A string that fits the key's char array (NUL included) and passes its
 * check, copied to field. */
static int
parse_string(const struct config_key *k, const cJSON *v, char *field, char *err, size_t errlen)
{
    size_t n;
    int r;

    if (!cJSON_IsString(v) || !v->valuestring)
        return type_error(k, v, err, errlen);
    n = strlen(v->valuestring);
    if (n >= k->width) {
        errf(err, errlen, "%s must be at most %zu bytes long, got %zu", k->name, k->width - 1, n);
        return -ERANGE;
    }
    if (k->check_str) {
        r = k->check_str(v->valuestring, err, errlen);
        if (r < 0)
            return r;
    }
    memset(field, 0, k->width);
    memcpy(field, v->valuestring, n);
    return 0;
}

/* ---- the table's API ---- */

size_t config_key_count(void)
{
    return NKEYS;
}

const struct config_key *config_key_at(size_t i)
{
    return i < NKEYS ? &keys[i] : NULL;
}

const struct config_key *config_key_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

const char *config_key_name(const struct config_key *k)
{
    return k->name;
}

enum config_type config_key_type(const struct config_key *k)
{
    return k->type;
}

enum config_scope config_key_scope(const struct config_key *k)
{
    return k->scope;
}

const char *config_key_help(const struct config_key *k)
{
    return k->help;
}

bool config_key_equal(const struct config_key *k, const struct config *a, const struct config *b)
{
    uint32_t n;

    if (k->type == CONFIG_STRING)
        return strncmp((const char *) a + k->offset, (const char *) b + k->offset, k->width) == 0;
    if (k->type == CONFIG_PATH)
        return strcmp((const char *) a + k->offset, (const char *) b + k->offset) == 0;
    if (k->type != CONFIG_ID_LIST)
        return field_get(a, k) == field_get(b, k);
    n = list_count_get(a, k);
    if (n != list_count_get(b, k))
        return false;
    return memcmp(list_items_const(a, k), list_items_const(b, k), n * sizeof(uint32_t)) == 0;
}

void config_default(struct config *ret)
{
    memset(ret, 0, sizeof(*ret));
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].type == CONFIG_STRING)
            (void) snprintf((char *) ret + keys[i].offset, keys[i].width, "%s", keys[i].def_str);
        else if (keys[i].type != CONFIG_ID_LIST && keys[i].type != CONFIG_PATH)
            field_set(ret, &keys[i], keys[i].def);
}

/* The page size segment_size must be a multiple of under a policy: what a
 * segment of that policy is rounded up to (shm/ctl.c). Under "auto" a
 * segment that gets 1G pages is rounded up to whole 1G pages. */
static uint64_t policy_granule(uint32_t policy)
{
    switch (policy) {
    case SHM_PAGES_1G:
        return GiB;
    case SHM_PAGES_2M:
    case SHM_PAGES_AUTO:
        return 2 * MiB;
    default:
        return 64 * KiB;
    }
}

int config_check(const struct config *c, char *err, size_t errlen)
{
    uint64_t g = policy_granule(c->shm.huge_pages);

    if (c->shm.segment_size % g) {
        char h[24];

        errf(err, errlen,
             "segment_size must be a multiple of %" PRIu64 "%s with huge_pages \"%s\", got "
             "%" PRIu64,
             g, human_bytes(g, h, sizeof(h)), config_huge_pages_name(c->shm.huge_pages),
             c->shm.segment_size);
        return -ERANGE;
    }
    return 0;
}

int config_set_json(
        struct config *c, const char *name, const cJSON *value, char *err, size_t errlen)
{
    const struct config_key *k = config_key_find(name);

    if (!c || !name)
        return -EINVAL;
    if (!k) {
        errf(err, errlen, "unknown key \"%.*s%s\"", (int) utf8_prefix(name, 64), name,
             strlen(name) > 64 ? "..." : "");
        return -ENOENT;
    }
    return config_set_one(c, k, value, true, err, errlen);
}

int config_set_one(struct config *c,
                   const struct config_key *k,
                   const cJSON *value,
                   bool cross_check,
                   char *err,
                   size_t errlen)
{
    struct config next;
    uint64_t v = 0;
    int r;

    if (!value)
        return type_error(k, value, err, errlen);
    next = *c;
    switch (k->type) {
    case CONFIG_BYTES:
    case CONFIG_COUNT:
    case CONFIG_MS:
        r = parse_number(k, value, &v, err, errlen);
        if (r == 0)
            field_set(&next, k, v);
        break;
    case CONFIG_ENUM:
        r = parse_enum(k, value, &v, err, errlen);
        if (r == 0)
            field_set(&next, k, v);
        break;
    case CONFIG_STRING:
        r = parse_string(k, value, (char *) &next + k->offset, err, errlen);
        break;
    case CONFIG_ID_LIST: {
        uint32_t ids[CONFIG_MAX_IDS], n = 0;

        r = parse_id_list(k, value, ids, &n, err, errlen);
        if (r == 0) {
            memset(list_items(&next, k), 0, CONFIG_MAX_IDS * sizeof(uint32_t));
            memcpy(list_items(&next, k), ids, n * sizeof(uint32_t));
            *list_count(&next, k) = n;
        }
        break;
    }
    case CONFIG_PATH:
        r = parse_path(k, value, err, errlen);
        if (r == 0) {
            memset((char *) &next + k->offset, 0, k->width);
            memcpy((char *) &next + k->offset, value->valuestring, strlen(value->valuestring));
        }
        break;
    default:
        r = -EINVAL;
        break;
    }
    if (r < 0)
        return r;
    if (cross_check) {
        r = config_check(&next, err, errlen);
        if (r < 0)
            return r;
    }
    *c = next;
    return 0;
}

/* u64 values beyond 2^53 would lose digits as a double; none of the keys'
 * bounds comes near, so numbers are plain cJSON numbers. */
cJSON *config_get_json(const struct config *c, const struct config_key *k)
{
    uint64_t v;

    switch (k->type) {
    case CONFIG_STRING:
        return cJSON_CreateString((const char *) c + k->offset);
    case CONFIG_ENUM:
        v = field_get(c, k);
        for (const struct config_enum *e = k->enum_names; e->name; e++)
            if (e->value == v)
                return cJSON_CreateString(e->name);
        return cJSON_CreateNumber((double) v);
    case CONFIG_ID_LIST: {
        cJSON *a = cJSON_CreateArray();
        uint32_t n = list_count_get(c, k);

        for (uint32_t i = 0; a && i < n && i < CONFIG_MAX_IDS; i++) {
            cJSON *num = cJSON_CreateNumber(list_items_const(c, k)[i]);

            if (!num || !cJSON_AddItemToArray(a, num)) {
                cJSON_Delete(num);
                cJSON_Delete(a);
                return NULL;
            }
        }
        return a;
    }
    case CONFIG_PATH:
        return cJSON_CreateString((const char *) c + k->offset);
    default:
        return cJSON_CreateNumber((double) field_get(c, k));
    }
}

int config_add_to_object(const struct config *c, const struct config_key *only, cJSON *obj)
{
    for (size_t i = 0; i < NKEYS; i++) {
        cJSON *v;

        if (only && only != &keys[i])
            continue;
        v = config_get_json(c, &keys[i]);
        if (!v || !cJSON_AddItemToObject(obj, keys[i].name, v)) {
            cJSON_Delete(v);
            return -ENOMEM;
        }
    }
    return 0;
}

char *config_format_text(const struct config *c, const struct config_key *k, char *buf, size_t len)
{
    uint64_t v;
    size_t o = 0;

    if (len == 0)
        return buf;
    buf[0] = 0;
    switch (k->type) {
    case CONFIG_STRING:
        (void) snprintf(buf, len, "\"%s\"", (const char *) c + k->offset);
        return buf;
    case CONFIG_ENUM:
        v = field_get(c, k);
        for (const struct config_enum *e = k->enum_names; e->name; e++)
            if (e->value == v) {
                (void) snprintf(buf, len, "%s", e->name);
                return buf;
            }
        (void) snprintf(buf, len, "%" PRIu64, v);
        return buf;
    case CONFIG_ID_LIST: {
        uint32_t n = list_count_get(c, k);

        o = (size_t) snprintf(buf, len, "[");
        for (uint32_t i = 0; i < n && i < CONFIG_MAX_IDS && o < len; i++)
            o += (size_t) snprintf(buf + o, len - o, "%s%" PRIu32, i ? ", " : "",
                                   list_items_const(c, k)[i]);
        if (o < len)
            (void) snprintf(buf + o, len - o, "]");
        return buf;
    }
    case CONFIG_PATH:
        (void) snprintf(buf, len, "\"%s\"", (const char *) c + k->offset);
        return buf;
    default:
        (void) snprintf(buf, len, "%" PRIu64, field_get(c, k));
        return buf;
    }
}

int config_value_from_text(
        const struct config_key *k, const char *text, cJSON **ret, char *err, size_t errlen)
{
    cJSON *v = NULL;

    if (!k || !text || !ret)
        return -EINVAL;
    switch (k->type) {
    case CONFIG_BYTES:
    case CONFIG_COUNT:
    case CONFIG_MS: {
        uint64_t n;
        int r = parse_size_text(text, &n);

        /* Counts and milliseconds take plain numbers only. */
        if (r == 0 && k->type != CONFIG_BYTES && strspn(text, "0123456789 ") != strlen(text))
            r = -EINVAL;
        if (r == -EINVAL) {
            cJSON s = {.type = cJSON_String, .valuestring = (char *) text};

            return type_error(k, &s, err, errlen);
        }
        if (r == -ERANGE)
            return range_error(k, 0, false, true, err, errlen);
        v = cJSON_CreateNumber((double) n);
        break;
    }
    case CONFIG_ENUM:
    case CONFIG_STRING:
    case CONFIG_PATH:
        v = cJSON_CreateString(text);
        break;
    case CONFIG_ID_LIST: {
        const char *p = text;

        v = cJSON_CreateArray();
        while (v && *p) {
            char *end;
            unsigned long long id;
            cJSON *num;

            while (*p == ' ' || *p == ',')
                p++;
            if (!*p)
                break;
            if (*p < '0' || *p > '9') {
                cJSON s = {.type = cJSON_String, .valuestring = (char *) text};

                cJSON_Delete(v);
                errf(err, errlen, "%s must be a comma-separated list of numbers, got %s", k->name,
                     describe_json(&s, (char[64]){0}, 64));
                return -EINVAL;
            }
            errno = 0;
            id = strtoull(p, &end, 10);
            if (errno || id > k->max) {
                cJSON_Delete(v);
                errf(err, errlen, "%s entries must be between 0 and %" PRIu64, k->name, k->max);
                return -ERANGE;
            }
            num = cJSON_CreateNumber((double) id);
            if (!num || !cJSON_AddItemToArray(v, num)) {
                cJSON_Delete(num);
                cJSON_Delete(v);
                return -ENOMEM;
            }
            p = end;
        }
        break;
    }
    default:
        return -EINVAL;
    }
    if (!v)
        return -ENOMEM;
    *ret = v;
    return 0;
}

const char *config_huge_pages_name(uint32_t policy)
{
    for (const struct config_enum *e = huge_pages_names; e->name; e++)
        if (e->value == policy)
            return e->name;
    return NULL;
}

const char *config_log_level_name(uint32_t level)
{
    for (const struct config_enum *e = log_level_names; e->name; e++)
        if (e->value == level)
            return e->name;
    return NULL;
}
