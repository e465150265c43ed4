/* Quotas: one runaway client must not take the whole heap from the others.
 *
 * What is counted is what the `clients` op reports as a client's bytes
 * allocated: per cache slot, the bytes of the objects that came into its
 * bins from the shared heap minus those that left them and those in the
 * bins (the bins' `net - count`), plus its large runs, arenas and pool
 * chunks, less what the slot had counted when the client's thread claimed
 * it (heap_client_usage). Objects freed by another process enter that
 * process's cache, so they keep counting against the client that
 * allocated them, and lower the freer's figure.
 *
 * Where it is enforced: on the slow paths only, before anything is taken
 * from the shared heap: a cache refill (one bundle) and a run (a large
 * object, an arena, a pool chunk). The fast path costs nothing and a
 * client may go over its quota by what its caches hold (at most
 * thread_cache_bytes per thread).
 *
 * Per client, the client checks itself against max_client_bytes from the
 * control segment's config. Per uid, the daemon, which knows each client's
 * uid (SO_PEERCRED), sums the clients of each uid at its quota tick and
 * sets OWNER_REFUSE_UID in their owner entries; a client reads the bit
 * here. A uid's clients can therefore go over max_uid_bytes by what they
 * allocate within one tick.
 *
 * What a quota cannot bound: everything here lives in memory the client
 * can write (its slots, its owner entry, the config's copy), so a quota
 * stops a runaway or buggy client, not a hostile one. */
#include <errno.h>

#include "shm/internal.h"

int quota_admit(struct heap *h, uint64_t bytes)
{
    /* relaxed: a config change is seen at the next refill; no other field
     * is read through it. */
    uint64_t limit = load_relaxed(&h->ctl->config.max_client_bytes);
    struct heap_client_usage u;

    /* relaxed: a tick's decision, published without ordering; a refill
     * that misses the newest bit sees it at the next one. */
    if (h->owner_tag && (load_relaxed(&h->ctl->owners[h->owner_index].refuse) & OWNER_REFUSE_UID))
        return -ENOMEM;
    if (limit == 0)
        return 0;
    if (heap_client_usage(h, h->client_id, (uint32_t) h->pid, &u) < 0)
        return 0;
    if (u.bytes_in_use > 0 && (uint64_t) u.bytes_in_use + bytes > limit)
        return -ENOMEM;
    return 0;
}

uint32_t
heap_quota_refuse_uid(struct heap *h, bool (*over)(void *ctx, uint64_t client_id), void *ctx)
{
    struct ctl_header *c = h->ctl;
    uint32_t refused = 0, high = load_acquire(&c->owners_high);

    /* acquire on owners_high pairs with owned_attach's release: entries
     * claimed before it are seen. A freed entry is zeroed (refuse too). */
    if (high > SHM_MAX_OWNERS)
        high = SHM_MAX_OWNERS;
    for (uint32_t i = 0; i < high; i++) {
        struct owner_entry *e = &c->owners[i];
        uint32_t want, had;

        /* Read once: a client may write anything here; a wrong client id
         * only refuses or admits that entry's own attachment. */
        if (load_relaxed(&e->state) != OWNER_LIVE)
            continue;
        want = over(ctx, load_relaxed(&e->client_id)) ? OWNER_REFUSE_UID : 0;
        had = load_relaxed(&e->refuse);
        if (had != want)
            store_relaxed(&e->refuse, want);
        refused += want != 0;
    }
    return refused;
}
