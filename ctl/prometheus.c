/* The stats reply in the Prometheus text exposition format (0.0.4): names
 * prefixed shmheap_, bytes in _bytes, counters in _total, one HELP and one
 * TYPE line per family; size classes labelled by `size`, segments by
 * `index` and `page_size`. Fields the reply lacks are left out. */
#include <inttypes.h>
#include <string.h>

#include "ctl/ctl.h"

struct family {
    const char *field; /* in the reply object */
    const char *name;  /* after shmheap_ */
    const char *type;  /* "gauge" or "counter" */
    const char *help;
};

static const struct family heap_families[] = {
        {"bytes_reserved", "reserved_bytes", "gauge", "Bytes of heap segments (address space)."},
        {"bytes_committed", "committed_bytes", "gauge",
         "Bytes backed by memory: committed units of the segments plus the control segment."},
        {"bytes_in_use", "in_use_bytes", "gauge", "Bytes of allocated objects."},
        {"peak_bytes_in_use", "peak_in_use_bytes", "gauge", "Highest bytes in use seen."},
        {"allocs", "allocations_total", "counter", "Objects allocated."},
        {"frees", "frees_total", "counter", "Objects freed."},
        {"bad_frees", "bad_frees_total", "counter",
         "Frees of pointers that were not objects of the heap (ignored)."},
        {"double_frees", "double_frees_total", "counter",
         "Frees of objects already free (ignored)."},
        {"lost_objects", "lost_objects_total", "counter",
         "Objects a dead process held in flight, given up by the reclaimer."},
        {"reclaimed_objects", "reclaimed_objects_total", "counter",
         "Private objects of exited or detached clients, freed by the daemon."},
        {"reclaimed_bytes", "reclaimed_bytes_total", "counter", "Bytes of those objects."},
        {"clients", "clients", "gauge", "Attached client processes."},
        {"clients_refused_uid_quota", "clients_refused_uid_quota", "gauge",
         "Clients refused memory because their uid is over max_uid_bytes."},
        {"thread_caches", "thread_caches", "gauge", "Thread caches in use, all processes."},
        {"trim_gen", "trim_generation", "gauge", "Current trim generation."},
        {"trims", "trims_total", "counter", "Trims run."},
        {"trim_bytes_released", "trim_released_bytes_total", "counter",
         "Bytes given back to the system by trims."},
};

static const struct family recycler_families[] = {
        {"pushes", "recycler_pushes_total", "counter", "Bundles pushed onto the recyclers."},
        {"pops", "recycler_pops_total", "counter", "Bundles popped from the recyclers."},
        {"cas_retries", "recycler_cas_retries_total", "counter",
         "Failed compare-and-swap attempts on the recyclers."},
};

static const struct family class_families[] = {
        {"in_use", "class_in_use_objects", "gauge", "Objects of the size class in use."},
        {"cached", "class_cached_objects", "gauge",
         "Free objects of the size class held in thread caches."},
        {"in_recycler", "class_recycler_objects", "gauge",
         "Free objects of the size class held in its recycler."},
        {"recycler_pushes", "class_recycler_pushes_total", "counter",
         "Bundles pushed onto the size class's recycler."},
        {"recycler_pops", "class_recycler_pops_total", "counter",
         "Bundles popped from the size class's recycler."},
        {"recycler_cas_retries", "class_recycler_cas_retries_total", "counter",
         "Failed compare-and-swap attempts on the size class's recycler."},
};

static const struct family segment_families[] = {
        {"size", "segment_size_bytes", "gauge", "Size of the heap segment."},
        {"committed_bytes", "segment_committed_bytes", "gauge",
         "Bytes of the heap segment backed by memory."},
        {"free_blocks", "segment_free_blocks", "gauge", "Free 64 KiB blocks of the heap segment."},
};

static void header(FILE *f, const struct family *fam)
{
    fprintf(f, "# HELP shmheap_%s %s\n# TYPE shmheap_%s %s\n", fam->name, fam->help, fam->name,
            fam->type);
}

static bool has_number(const cJSON *obj, const char *field)
{
    return cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(obj, field));
}

static void scalars(FILE *f, const cJSON *obj, const struct family *fams, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!has_number(obj, fams[i].field))
            continue;
        header(f, &fams[i]);
        fprintf(f, "shmheap_%s %" PRIu64 "\n", fams[i].name, json_u64(obj, fams[i].field));
    }
}

/* Label values here are numbers and page-size names, but escape anyway. */
static void label_value(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fputc('\\', f);
        if (*s == '\n') {
            fputs("\\n", f);
            continue;
        }
        fputc(*s, f);
    }
}

static const char *page_label(const cJSON *seg, char *buf, size_t len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(seg, "page_size");
    uint64_t n = json_u64(seg, "page_size");

    if (cJSON_IsString(v))
        return v->valuestring;
    if (n >= (UINT64_C(1) << 30))
        snprintf(buf, len, "%" PRIu64 "G", n >> 30);
    else if (n >= (UINT64_C(1) << 20))
        snprintf(buf, len, "%" PRIu64 "M", n >> 20);
    else
        snprintf(buf, len, "%" PRIu64 "K", n >> 10);
    return buf;
}

static void class_series(FILE *f, const cJSON *classes)
{
    for (size_t i = 0; i < sizeof(class_families) / sizeof(class_families[0]); i++) {
        const struct family *fam = &class_families[i];
        bool any = false;
        const cJSON *c;

        cJSON_ArrayForEach(c, classes)
        {
            if (!has_number(c, fam->field))
                continue;
            if (!any)
                header(f, fam);
            any = true;
            fprintf(f, "shmheap_%s{size=\"%" PRIu64 "\"} %" PRIu64 "\n", fam->name,
                    json_u64(c, "object_size"), json_u64(c, fam->field));
        }
    }
}

static void segment_series(FILE *f, const cJSON *segs)
{
    for (size_t i = 0; i < sizeof(segment_families) / sizeof(segment_families[0]); i++) {
        const struct family *fam = &segment_families[i];
        bool any = false;
        const cJSON *s;

        cJSON_ArrayForEach(s, segs)
        {
            char page[24];

            if (!has_number(s, fam->field))
                continue;
            if (!any)
                header(f, fam);
            any = true;
            fprintf(f, "shmheap_%s{index=\"%" PRIu64 "\",page_size=\"", fam->name,
                    json_u64(s, "index"));
            label_value(f, page_label(s, page, sizeof(page)));
            fprintf(f, "\"} %" PRIu64 "\n", json_u64(s, fam->field));
        }
    }
}

bool prometheus_render(FILE *f, const cJSON *reply)
{
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(reply, "stats"), *v;

    if (!cJSON_IsObject(st)) {
        fputs("shmheapctl: the reply has no \"stats\" object\n", stderr);
        return false;
    }
    scalars(f, st, heap_families, sizeof(heap_families) / sizeof(heap_families[0]));
    v = cJSON_GetObjectItemCaseSensitive(st, "recycler");
    if (cJSON_IsObject(v))
        scalars(f, v, recycler_families, sizeof(recycler_families) / sizeof(recycler_families[0]));
    v = cJSON_GetObjectItemCaseSensitive(st, "classes");
    if (cJSON_IsArray(v))
        class_series(f, v);
    v = cJSON_GetObjectItemCaseSensitive(st, "segments");
    if (cJSON_IsArray(v))
        segment_series(f, v);
    return true;
}
