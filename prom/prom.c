/* The stats object -> Prometheus text exposition format (see prom.h).
 *
 * One table per part of the object: the heap's scalars, the recycler
 * totals, and the labelled series of size classes, segments and clients.
 * A row names the JSON field, the metric (after shmheap_), its type and
 * its help; a row with `times` multiplies the field by another field of
 * the same element (objects of a class times its object size = bytes). */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "prom/prom.h"

struct family {
    const char *field; /* in the JSON object */
    const char *name;  /* after shmheap_ */
    const char *type;  /* "gauge" or "counter" */
    const char *help;
    const char *times; /* if not NULL: the value is field * times */
};

#define NROWS(a) (sizeof(a) / sizeof((a)[0]))

static const struct family heap_families[] = {
        {"bytes_reserved", "reserved_bytes", "gauge", "Bytes of heap segments (address space).",
         NULL},
        {"bytes_committed", "committed_bytes", "gauge",
         "Bytes backed by memory: committed units of the segments plus the control segment.", NULL},
        {"bytes_in_use", "in_use_bytes", "gauge", "Bytes of allocated objects.", NULL},
        {"peak_bytes_in_use", "peak_in_use_bytes", "gauge", "Highest bytes in use seen.", NULL},
        {"allocs", "allocations_total", "counter", "Objects allocated.", NULL},
        {"frees", "frees_total", "counter", "Objects freed.", NULL},
        {"bad_frees", "bad_frees_total", "counter",
         "Frees of pointers that were not objects of the heap (ignored).", NULL},
        {"double_frees", "double_frees_total", "counter",
         "Frees of objects already free (ignored).", NULL},
        {"lost_objects", "lost_objects_total", "counter",
         "Objects a dead process held in flight, given up by the reclaimer.", NULL},
        {"reclaimed_objects", "reclaimed_objects_total", "counter",
         "Private objects of exited or detached clients, freed by the daemon.", NULL},
        {"reclaimed_bytes", "reclaimed_bytes_total", "counter", "Bytes of those objects.", NULL},
        {"clients", "clients", "gauge", "Attached client processes.", NULL},
        {"clients_refused_uid_quota", "clients_refused_uid_quota", "gauge",
         "Clients refused memory because their uid is over max_uid_bytes.", NULL},
        {"thread_caches", "thread_caches", "gauge", "Thread caches in use, all processes.", NULL},
        {"reclaims_pending", "reclaims_pending", "gauge",
         "Reclaims of exited or detached clients that failed and wait for a retry.", NULL},
        {"reclaim_retries", "reclaim_retries_total", "counter",
         "Retries of failed reclaims (a segment lock held too long).", NULL},
        {"trim_gen", "trim_generation", "gauge", "Current trim generation.", NULL},
        {"trims", "trims_total", "counter", "Trims run.", NULL},
        {"trim_bytes_released", "trim_released_bytes_total", "counter",
         "Bytes given back to the system by trims.", NULL},
};

/* The automatic trim (the stats reply's "decay" object). */
static const struct family decay_families[] = {
        {"floor_bytes", "decay_floor_bytes", "gauge",
         "Committed bytes the automatic trim keeps: overhead plus the recent peak need with its "
         "margin.",
         NULL},
        {"window_peak_bytes", "decay_window_peak_bytes", "gauge",
         "Highest need (bytes in use, or committed when the heap grew) over the last decay_ms.",
         NULL},
        {"excess_bytes", "decay_excess_bytes", "gauge",
         "Committed bytes above the floor, to be released.", NULL},
        {"held_bytes", "decay_held_bytes", "gauge",
         "Committed bytes beyond the live bytes and overhead kept by the floor (hysteresis).",
         NULL},
        {"releases", "decay_releases_total", "counter", "Releases by the automatic trim.", NULL},
        {"released_bytes", "decay_released_bytes_total", "counter",
         "Bytes given back to the system by the automatic trim.", NULL},
        {"caches_flushed", "decay_caches_flushed_total", "counter",
         "Caches of idle threads drained by the automatic trim.", NULL},
        {"idle_caches", "decay_idle_caches", "gauge",
         "Thread caches unused for longer than decay_ms.", NULL},
        {"last_release_unix_s", "decay_last_release_timestamp_seconds", "gauge",
         "When the automatic trim last released memory (Unix time).", NULL},
        {"under_pressure", "decay_under_pressure", "gauge",
         "1 while memory pressure (PSI) makes the automatic trim release down to the live "
         "bytes.",
         NULL},
        {"pressure_ticks", "decay_pressure_ticks_total", "counter",
         "Ticks of the automatic trim under memory pressure.", NULL},
};

static const struct family recycler_families[] = {
        {"pushes", "recycler_pushes_total", "counter", "Bundles pushed onto the recyclers.", NULL},
        {"pops", "recycler_pops_total", "counter", "Bundles popped from the recyclers.", NULL},
        {"cas_retries", "recycler_cas_retries_total", "counter",
         "Failed compare-and-swap attempts on the recyclers.", NULL},
};

static const struct family class_families[] = {
        {"in_use", "class_in_use_objects", "gauge", "Objects of the size class in use.", NULL},
        {"in_use", "class_in_use_bytes", "gauge", "Bytes of the size class's objects in use.",
         "object_size"},
        {"cached", "class_cached_objects", "gauge",
         "Free objects of the size class held in thread caches.", NULL},
        {"in_recycler", "class_recycler_objects", "gauge",
         "Free objects of the size class held in its recycler.", NULL},
        {"recycler_pushes", "class_recycler_pushes_total", "counter",
         "Bundles pushed onto the size class's recycler.", NULL},
        {"recycler_pops", "class_recycler_pops_total", "counter",
         "Bundles popped from the size class's recycler.", NULL},
        {"recycler_cas_retries", "class_recycler_cas_retries_total", "counter",
         "Failed compare-and-swap attempts on the size class's recycler.", NULL},
};

static const struct family segment_families[] = {
        {"size", "segment_size_bytes", "gauge", "Size of the heap segment.", NULL},
        {"committed_bytes", "segment_committed_bytes", "gauge",
         "Bytes of the heap segment backed by memory.", NULL},
        {"free_blocks", "segment_free_blocks", "gauge", "Free 64 KiB blocks of the heap segment.",
         NULL},
        {"metadata_bytes", "segment_metadata_bytes", "gauge",
         "Bytes of the heap segment taken by block metadata and bit-trees.", NULL},
};

static const struct family client_families[] = {
        {"bytes_allocated", "client_allocated_bytes", "gauge",
         "Net bytes a client's live threads allocated (0 if it freed more than it allocated).",
         NULL},
        {"threads", "client_thread_caches", "gauge", "Thread caches a client's threads hold.",
         NULL},
};

/* A member as a u64: the daemon's raw numbers (exact digits) or parsed
 * JSON numbers. False when missing or not a non-negative number. */
static bool get_u64(const cJSON *obj, const char *field, uint64_t *ret)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);

    if (cJSON_IsRaw(v) && v->valuestring) {
        char *end;
        unsigned long long n;

        if (v->valuestring[0] < '0' || v->valuestring[0] > '9')
            return false;
        errno = 0;
        n = strtoull(v->valuestring, &end, 10);
        if (errno || *end)
            return false;
        *ret = n;
        return true;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0))
        return false;
    *ret = v->valuedouble >= 18446744073709551616.0 ? UINT64_MAX : (uint64_t) v->valuedouble;
    return true;
}

static bool family_value(const cJSON *obj, const struct family *fam, uint64_t *ret)
{
    uint64_t v, m;

    if (!get_u64(obj, fam->field, &v))
        return false;
    if (fam->times) {
        if (!get_u64(obj, fam->times, &m))
            return false;
        v = m && v > UINT64_MAX / m ? UINT64_MAX : v * m;
    }
    *ret = v;
    return true;
}

static void header(FILE *f, const struct family *fam)
{
    fprintf(f, "# HELP shmheap_%s %s\n# TYPE shmheap_%s %s\n", fam->name, fam->help, fam->name,
            fam->type);
}

static void scalars(FILE *f, const cJSON *obj, const struct family *fams, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t v;

        if (!family_value(obj, &fams[i], &v))
            continue;
        header(f, &fams[i]);
        fprintf(f, "shmheap_%s %" PRIu64 "\n", fams[i].name, v);
    }
}

/* Label values are escaped as the format asks: \\, \" and \n. */
static void label_value(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\n') {
            fputs("\\n", f);
            continue;
        }
        if (*s == '\\' || *s == '"')
            fputc('\\', f);
        fputc(*s, f);
    }
}

/* A label value from a member: a string as is, a number in decimal. */
static bool label_text(const cJSON *obj, const char *field, char *buf, size_t len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
    uint64_t n;

    if (cJSON_IsString(v) && v->valuestring) {
        (void) snprintf(buf, len, "%s", v->valuestring);
        return true;
    }
    if (!get_u64(obj, field, &n))
        return false;
    (void) snprintf(buf, len, "%" PRIu64, n);
    return true;
}

/* A segment's page size as "4K", "2M", "1G": the daemon sends the name,
 * but a byte count is turned into one too. */
static bool page_label(const cJSON *seg, char *buf, size_t len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(seg, "page_size");
    uint64_t n;

    if (cJSON_IsString(v))
        return label_text(seg, "page_size", buf, len);
    if (!get_u64(seg, "page_size", &n))
        return false;
    if (n >= (UINT64_C(1) << 30))
        (void) snprintf(buf, len, "%" PRIu64 "G", n >> 30);
    else if (n >= (UINT64_C(1) << 20))
        (void) snprintf(buf, len, "%" PRIu64 "M", n >> 20);
    else
        (void) snprintf(buf, len, "%" PRIu64 "K", n >> 10);
    return true;
}

/* The labels of one element of a labelled array. */
struct labels {
    const char *names[2];  /* label names; names[1] may be NULL */
    const char *fields[2]; /* the members that give their values */
};

static bool element_labels(const cJSON *el, const struct labels *lb, char vals[2][64])
{
    for (unsigned j = 0; j < 2 && lb->names[j]; j++) {
        bool ok = strcmp(lb->fields[j], "page_size") == 0
                          ? page_label(el, vals[j], 64)
                          : label_text(el, lb->fields[j], vals[j], 64);

        if (!ok)
            return false;
    }
    return true;
}

/* Each family of the table, with one sample per element of arr that has
 * both the family's field and its labels. */
static void
series(FILE *f, const cJSON *arr, const struct family *fams, size_t n, const struct labels *lb)
{
    for (size_t i = 0; i < n; i++) {
        bool any = false;
        const cJSON *el;

        cJSON_ArrayForEach(el, arr)
        {
            char vals[2][64];
            uint64_t v;

            if (!family_value(el, &fams[i], &v) || !element_labels(el, lb, vals))
                continue;
            if (!any)
                header(f, &fams[i]);
            any = true;
            fprintf(f, "shmheap_%s{", fams[i].name);
            for (unsigned j = 0; j < 2 && lb->names[j]; j++) {
                fprintf(f, "%s%s=\"", j ? "," : "", lb->names[j]);
                label_value(f, vals[j]);
                fputc('"', f);
            }
            fprintf(f, "} %" PRIu64 "\n", v);
        }
    }
}

int prom_render(FILE *f, const cJSON *stats)
{
    static const struct labels class_labels = {{"class", NULL}, {"object_size", NULL}};
    static const struct labels segment_labels = {{"segment", "page_size"}, {"index", "page_size"}};
    static const struct labels client_labels = {{"client_id", "pid"}, {"client_id", "pid"}};
    static const struct family segments_family = {NULL, "segments", "gauge",
                                                  "Heap segments mapped.", NULL};
    const cJSON *v;

    if (!f || !cJSON_IsObject(stats))
        return -EINVAL;
    scalars(f, stats, heap_families, NROWS(heap_families));
    v = cJSON_GetObjectItemCaseSensitive(stats, "recycler");
    if (cJSON_IsObject(v))
        scalars(f, v, recycler_families, NROWS(recycler_families));
    v = cJSON_GetObjectItemCaseSensitive(stats, "decay");
    if (cJSON_IsObject(v))
        scalars(f, v, decay_families, NROWS(decay_families));
    v = cJSON_GetObjectItemCaseSensitive(stats, "classes");
    if (cJSON_IsArray(v))
        series(f, v, class_families, NROWS(class_families), &class_labels);
    v = cJSON_GetObjectItemCaseSensitive(stats, "segments");
    if (cJSON_IsArray(v)) {
        header(f, &segments_family);
        fprintf(f, "shmheap_segments %d\n", cJSON_GetArraySize(v));
        series(f, v, segment_families, NROWS(segment_families), &segment_labels);
    }
    v = cJSON_GetObjectItemCaseSensitive(stats, "per_client");
    if (cJSON_IsArray(v))
        series(f, v, client_families, NROWS(client_families), &client_labels);
    return ferror(f) ? -EIO : 0;
}

int prom_render_text(const cJSON *stats, char **ret_text, size_t *ret_len)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f;
    int r;

    if (!ret_text || !ret_len)
        return -EINVAL;
    f = open_memstream(&text, &len);
    if (!f)
        return -ENOMEM;
    r = prom_render(f, stats);
    /* fclose writes the final size and the NUL; it fails only when memory ran out. */
    if (fclose(f) != 0 && r == 0)
        r = -ENOMEM;
    if (r < 0) {
        free(text);
        return r == -EIO ? -ENOMEM : r;
    }
    *ret_text = text;
    *ret_len = len;
    return 0;
}
