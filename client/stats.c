/* Figures and trim: shmheap_stats() reads the counters in shared memory
 * (heap_stats, no daemon round trip) and adds this process's own figures,
 * summed over the cache slots its threads hold; shmheap_trim() is the
 * daemon's `trim` op. */
#include <stdlib.h>
#include <string.h>

#include "shmheap.h"

#include "client/client.h"
#include "shm/heap.h"

/* This process's figures: its live threads' caches, since each thread
 * took its cache (the core subtracts what the slot had counted before). */
static void process_figures(shmheap_t *h, struct shmheap_stats *out)
{
    struct heap_client_usage u;

    if (heap_client_usage(handle_heap(h), client_of(h)->client_id, (uint32_t) client_of(h)->pid,
                          &u) < 0)
        return;
    out->process_allocs = u.allocs;
    out->process_frees = u.frees;
    out->process_bytes_in_use = u.bytes_in_use;
}

SHMHEAP_EXPORT int shmheap_stats(shmheap_t *h, struct shmheap_stats *out)
{
    struct heap_stats *st;
    int r;

    if (!h || !out)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    st = malloc(sizeof(*st)); /* ~12 KiB: not on the caller's stack */
    if (!st)
        return -SHMHEAP_ENOMEM;
    r = heap_stats(handle_heap(h), st);
    if (r < 0) {
        free(st);
        return client_errno_code(r);
    }
    memset(out, 0, sizeof(*out));
    process_figures(h, out);
    out->bytes_reserved = st->bytes_reserved;
    out->bytes_committed = st->bytes_committed;
    out->bytes_in_use = st->bytes_in_use;
    out->peak_bytes_in_use = st->peak_bytes_in_use;
    out->allocs = st->allocs;
    out->frees = st->frees;
    out->trim_gen = st->trim_gen;
    out->trims = st->trims;
    out->trim_bytes_released = st->trim_bytes_released;
    out->bad_frees = st->bad_frees;
    out->double_frees = st->double_frees;
    out->reclaimed_objects = st->reclaimed_objects;
    out->reclaimed_bytes = st->reclaimed_bytes;
    out->thread_caches = st->slots_in_use;
    out->nclasses = SHM_NCLASSES;
    for (unsigned cls = 0; cls < SHM_NCLASSES; cls++) {
        const struct heap_class_stats *a = &st->classes[cls];
        struct shmheap_class_stats *b = &out->classes[cls];

        b->object_size = a->object_size;
        b->in_use = a->in_use;
        b->cached = a->cached;
        b->in_recycler = a->in_recycler;
        b->recycler_pushes = a->rec_pushes;
        b->recycler_pops = a->rec_pops;
        b->recycler_cas_retries = a->rec_retries;
    }
    for (uint32_t i = 0; i < st->nsegments && i < SHMHEAP_STATS_SEGMENTS; i++) {
        const struct heap_seg_stats *a = &st->segs[i];
        struct shmheap_segment_stats *b = &out->segments[i];

        b->index = a->index;
        b->page_size = a->page_size;
        b->size = a->size;
        b->committed_bytes = a->committed_bytes;
        b->free_blocks = a->free_blocks;
        out->nsegments++;
    }
    free(st);
    return 0;
}

SHMHEAP_EXPORT int shmheap_trim(shmheap_t *h, unsigned wait_ms)
{
    struct reply rep;
    cJSON *req;
    int r;

    client_clear_error();
    if (!h || wait_ms > 60000)
        return -SHMHEAP_EINVAL;
    if (client_forked(h))
        return -SHMHEAP_EFORKED;
    req = cJSON_CreateObject();
    if (!req || !cJSON_AddStringToObject(req, "op", "trim") ||
        !cJSON_AddNumberToObject(req, "wait_ms", wait_ms)) {
        cJSON_Delete(req);
        return -SHMHEAP_ENOMEM;
    }
    r = client_call(client_of(h), req, wait_ms + CONN_TIMEOUT_MS, &rep);
    cJSON_Delete(req);
    if (r < 0)
        return r;
    r = rep.ok ? 0 : reply_error(&rep, "trim");
    reply_free(&rep);
    return r;
}
