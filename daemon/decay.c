/* The automatic trim policy ("decay"): memory that no one needed for
 * decay_ms goes back to the system, gradually, with no request and at no
 * cost to the clients' fast paths (everything here runs in the daemon:
 * a timer on the loop, reads of the heap's relaxed counters, and releases
 * in the thread pool).
 *
 * Every tick (decay_ms / 10, within 10..1000 ms, jittered by +-10% so that
 * a workload with the tick's period cannot hide its peaks from it) the
 * policy looks at the heap (heap_stats):
 *   C  committed bytes (the kernel's count on normal pages);
 *   U  bytes in use (live objects);
 *   O  overhead: the control segment and the segments' metadata, which
 *      no trim can give back.
 * It records a need for the tick: U, or C - O if the heap committed more
 * since the last tick (the heap needed all of it at some moment between
 * two looks, even if U, sampled now, is lower). The needs of the last
 * decay_ms are kept as maxima in 32 buckets of decay_ms / 32 each, so the
 * window spans decay_ms to decay_ms * 33/32.
 *
 * The floor it keeps committed is
 *     O + peak need over the window * (100 + decay_retain_percent) / 100
 *       + retain_empty_blocks * 64 KiB,
 * and it releases the excess C - floor, at most decay_release_rate bytes
 * per second (a token bucket of one second's worth; a huge-page segment's
 * unit is the least it can take). That is the hysteresis: memory reused
 * within decay_ms raises the need, so a workload that breathes with a
 * shorter period keeps its working set committed, and memory idle longer
 * than decay_ms falls out of the window and goes back, at a bounded rate.
 * jemalloc's dirty_decay_ms and tcmalloc's background release rate are the
 * models: the time bound of the one, the rate bound of the other.
 *
 * A release (heap_release in shm/release.c, run as a job in the pool)
 * drains the caches of threads idle longer than decay_ms (a slot whose
 * counters and bin heads have not moved: heap_slot_activity), empties the
 * recyclers into the blocks, then decommits free blocks beyond
 * retain_empty_blocks and free pages inside slabs, up to its budget. It
 * bumps no trim generation, so running threads keep their caches, and it
 * touches no object in use. A release that finds nothing to give back
 * (the excess is in busy threads' caches or in slabs with live objects
 * here and there) holds the policy off for decay_ms.
 *
 * Memory pressure: if the PSI file (/proc/pressure/memory, or the file
 * given by --pressure-file, e.g. the service cgroup's memory.pressure)
 * says "some avg10" >= decay_pressure_percent, the floor drops to O + U
 * (no window, no margin, no retained blocks) and caches idle for a tick
 * are drained: the policy releases down to the live bytes, still at the
 * rate bound. Where the kernel has no PSI (no file, or psi=0) it says so
 * once in the log and in stats, and the policy works on time alone.
 *
 * The explicit trims are unchanged: `trim` (op, shmheapctl, shmheap_trim)
 * and trim_interval_ms flush every thread's cache and release everything
 * beyond retain_empty_blocks at once; decay_ms = 0 leaves only them. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/daemon.h"

#define DECAY_DEFAULT_PSI  "/proc/pressure/memory"
#define DECAY_WINDOW_SPANS (DECAY_BUCKETS - 1u)
#define DECAY_MIN_BYTES    SHM_BLOCK_SIZE /* less than a block is not worth a job */
#define NO_BUCKET          UINT64_MAX

static uint64_t mono_ns(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static uint64_t unix_ms(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static uint32_t tick_ms_for(uint32_t decay_ms)
{
    uint32_t t = decay_ms / 10;

    return t < 10 ? 10 : t > 1000 ? 1000 : t;
}

/* The next tick in tick_ms +- 10% (xorshift64: no need for better). */
static uint64_t next_delay_ms(struct decay *dc)
{
    uint64_t x = dc->rng, span = dc->tick_ms / 5;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    dc->rng = x;
    return dc->tick_ms - dc->tick_ms / 10 + (span ? x % (span + 1) : 0);
}

static void window_reset(struct decay *dc)
{
    for (unsigned k = 0; k < DECAY_BUCKETS; k++)
        dc->buckets[k].id = NO_BUCKET;
}

static void window_add(struct decay *dc, uint64_t now, uint64_t need)
{
    uint64_t id = now / dc->bucket_ns;
    unsigned k = (unsigned) (id % DECAY_BUCKETS);

    if (dc->buckets[k].id != id) {
        dc->buckets[k].id = id;
        dc->buckets[k].need = need;
    } else if (need > dc->buckets[k].need) {
        dc->buckets[k].need = need;
    }
}

/* The highest need of the buckets cur - 32 .. cur. */
static uint64_t window_peak(const struct decay *dc, uint64_t now)
{
    uint64_t cur = now / dc->bucket_ns, peak = 0;

    for (unsigned k = 0; k < DECAY_BUCKETS; k++) {
        uint64_t id = dc->buckets[k].id;

        if (id != NO_BUCKET && id <= cur && cur - id <= DECAY_WINDOW_SPANS &&
            dc->buckets[k].need > peak)
            peak = dc->buckets[k].need;
    }
    return peak;
}

static void tick_cb(uv_timer_t *t);

static void arm(struct daemon *d)
{
    struct decay *dc = &d->decay;

    if (d->stopping || !dc->timer_open || !d->cfg.decay_ms)
        return;
    (void) uv_timer_start(&dc->timer, tick_cb, next_delay_ms(dc), 0);
}

/* Looks at every thread cache; fills idle[] with the slots whose owner
 * has not used them for idle_ns and whose cache holds objects. Returns
 * how many. */
static uint32_t scan_slots(struct daemon *d, uint64_t now, uint64_t idle_ns, uint32_t *idle)
{
    struct decay *dc = &d->decay;
    uint32_t n = 0, high = heap_slots_high(d->heap), self = (uint32_t) getpid();
    uint64_t idle_long = 0;

    for (uint32_t i = 0; i < high && i < SHM_MAX_SLOTS; i++) {
        struct decay_slot_seen *s = &dc->seen[i];
        struct slot_activity a;

        if (!heap_slot_activity(d->heap, i, &a)) {
            s->valid = false;
            continue;
        }
        if (a.pid == self)
            continue; /* the daemon's own threads (heap_release skips them too) */
        if (!s->valid || s->pid != a.pid || s->signature != a.signature) {
            *s = (struct decay_slot_seen){
                    .signature = a.signature, .since_ns = now, .pid = a.pid, .valid = true};
            continue;
        }
        if (now - s->since_ns >= (uint64_t) d->cfg.decay_ms * 1000000u)
            idle_long++;
        if (!s->drained && a.cached_objects && now - s->since_ns >= idle_ns)
            idle[n++] = i;
    }
    dc->fig.idle_caches = idle_long;
    return n;
}

static void read_pressure(struct daemon *d)
{
    struct decay *dc = &d->decay;
    double v = 0;
    int r;

    dc->fig.under_pressure = false;
    if (!d->cfg.decay_pressure_percent)
        return;
    r = pressure_some_avg10(dc->pressure_path, &v);
    dc->fig.psi_available = r == 0;
    if (r < 0) {
        if (!dc->psi_warned)
            log_notice("decay: no memory pressure information in %s (%s): the automatic trim "
                       "works on time alone",
                       dc->pressure_path, strerror(-r));
        dc->psi_warned = true;
        return;
    }
    dc->psi_warned = false;
    dc->fig.psi_some_avg10 = v;
    dc->fig.under_pressure = v >= (double) d->cfg.decay_pressure_percent;
    if (dc->fig.under_pressure)
        dc->fig.pressure_ticks++;
}

/* Reads the heap's figures: the committed bytes (c), the live bytes (u),
 * the overhead (o: what is committed outside the segments' data, plus
 * their metadata) and the largest page size in use. */
static int sample_heap(struct daemon *d, uint64_t *c, uint64_t *u, uint64_t *o, uint64_t *max_unit)
{
    struct heap_stats *st = d->decay.st;
    uint64_t segs = 0, meta = 0;
    int r;

    r = heap_stats(d->heap, st);
    if (r < 0)
        return r;
    *max_unit = SHM_BLOCK_SIZE;
    for (uint32_t i = 0; i < st->nsegments && i < SHM_MAX_SEGMENTS; i++) {
        segs += st->segs[i].committed_bytes;
        meta += st->segs[i].metadata_bytes < st->segs[i].committed_bytes
                        ? st->segs[i].metadata_bytes
                        : st->segs[i].committed_bytes;
        if (st->segs[i].page_size > *max_unit)
            *max_unit = st->segs[i].page_size;
    }
    *c = st->bytes_committed;
    *u = st->bytes_in_use;
    *o = (*c > segs ? *c - segs : 0) + meta;
    return 0;
}

/* Adds this tick's need to the window and sets the floor and the excess
 * above it. */
static void compute_floor(struct daemon *d, uint64_t now, uint64_t c, uint64_t u, uint64_t o)
{
    struct decay *dc = &d->decay;
    struct decay_figures *fig = &dc->fig;
    uint64_t need, peak, floor;

    /* The need of this tick (see the top of the file). After a release the
     * kernel's count fell by less than the bytes punched (pages never
     * touched), so growth is only judged between two looks without one. */
    need = u;
    if (!dc->released_since && c > dc->last_committed + DECAY_MIN_BYTES && c - o > need)
        need = c - o;
    dc->released_since = false;
    dc->last_committed = c;
    window_add(dc, now, need);
    peak = window_peak(dc, now);
    if (fig->under_pressure)
        floor = o + u;
    else
        floor = o + peak / 100 * (100u + d->cfg.decay_retain_percent) +
                peak % 100 * (100u + d->cfg.decay_retain_percent) / 100 +
                (uint64_t) d->cfg.shm.retain_empty_blocks * SHM_BLOCK_SIZE;
    fig->committed_bytes = c;
    fig->in_use_bytes = u;
    fig->overhead_bytes = o;
    fig->window_peak_bytes = peak;
    fig->floor_bytes = floor;
    fig->excess_bytes = c > floor ? c - floor : 0;
}

/* The rate bound: one second's worth at most, and at least a unit of the
 * largest pages, so that a 1G-page segment can be released at all. */
static void add_credit(struct daemon *d, uint64_t now, uint64_t max_unit)
{
    struct decay *dc = &d->decay;
    uint64_t rate = d->cfg.decay_release_rate, dt, cap;

    dt = dc->last_tick_ns ? now - dc->last_tick_ns : (uint64_t) dc->tick_ms * 1000000u;
    dc->last_tick_ns = now;
    if (dt > 1000000000u)
        dt = 1000000000u;
    cap = rate > max_unit ? rate : max_unit;
    dc->credit += (uint64_t) ((double) rate * (double) dt / 1e9);
    if (dc->credit > cap)
        dc->credit = cap;
}

/* Decides what this tick releases: sets the state and *budget (0: only
 * drain the idle caches). Returns false when there is nothing to start. */
static bool decide_release(struct daemon *d,
                           uint64_t now,
                           uint64_t c,
                           uint64_t u,
                           uint64_t o,
                           uint32_t nidle,
                           uint64_t *budget)
{
    struct decay *dc = &d->decay;
    struct decay_figures *fig = &dc->fig;

    if (dc->running) {
        if (dc->attempt_bytes)
            fig->state = "releasing"; /* the last release is still going */
        return false;
    }
    *budget = fig->excess_bytes < dc->credit ? fig->excess_bytes : dc->credit;
    if (fig->excess_bytes < DECAY_MIN_BYTES) {
        /* Nothing above the floor: what is committed beyond the live bytes
         * is held for the hysteresis (or is the overhead). Idle caches
         * still go back to the slabs (a cheap job that releases nothing
         * unless blocks empty beyond the floor). */
        fig->state = c > o + u + DECAY_MIN_BYTES ? "holding" : "nothing_to_release";
        if (!nidle)
            return false;
        *budget = 0;
    } else if (now < dc->hold_until_ns) {
        fig->state = "unreleasable";
        if (!nidle)
            return false;
        *budget = 0;
    } else if (*budget < DECAY_MIN_BYTES) {
        fig->state = "rate_limited";
        if (!nidle)
            return false;
        *budget = 0;
    }
    return true;
}

static void start_release(struct daemon *d, uint64_t budget, uint32_t *idle, uint32_t nidle)
{
    struct decay *dc = &d->decay;
    struct decay_figures *fig = &dc->fig;
    struct release_req req;
    int r;

    req = (struct release_req){
            .max_bytes = budget,
            .retain_blocks = fig->under_pressure ? 0 : d->cfg.shm.retain_empty_blocks,
            .drain_recyclers = budget > 0,
            .nidle = nidle,
            .idle_slots = idle,
    };
    r = work_release(d, &req);
    if (r < 0) {
        log_warning("decay: cannot start a release, trying at the next tick: %s", strerror(-r));
        return;
    }
    dc->running = true;
    dc->attempt_bytes = budget;
    if (budget)
        fig->state = fig->under_pressure ? "releasing_under_pressure" : "releasing";
}

static void tick(struct daemon *d)
{
    struct decay *dc = &d->decay;
    struct decay_figures *fig = &dc->fig;
    uint64_t now = mono_ns(), c, u, o, max_unit, budget;
    uint32_t idle[SHM_MAX_SLOTS], nidle;
    int r;

    fig->ticks++;
    r = sample_heap(d, &c, &u, &o, &max_unit);
    if (r < 0) {
        log_error("decay: cannot read the heap's figures, skipping a tick: %s", strerror(-r));
        return;
    }
    read_pressure(d);
    compute_floor(d, now, c, u, o);
    add_credit(d, now, max_unit);
    nidle = scan_slots(d, now,
                       fig->under_pressure ? (uint64_t) dc->tick_ms * 1000000u
                                           : (uint64_t) d->cfg.decay_ms * 1000000u,
                       idle);
    if (!decide_release(d, now, c, u, o, nidle, &budget))
        return;
    start_release(d, budget, idle, nidle);
}

static void tick_cb(uv_timer_t *t)
{
    struct daemon *d = t->data;

    if (d->stopping || !d->cfg.decay_ms)
        return;
    tick(d);
    metrics_decay_changed(d);
    arm(d);
}

void decay_released(struct daemon *d,
                    int r,
                    const struct release_result *res,
                    const uint32_t *slots,
                    uint32_t nslots)
{
    struct decay *dc = &d->decay;
    struct decay_figures *fig = &dc->fig;
    uint64_t now = mono_ns();

    dc->running = false;
    if (r < 0) {
        if (r == -EAGAIN)
            log_warning("decay: the recyclers were not drained: no cache slot free");
        else if (r != -ECANCELED)
            log_warning("decay: a release failed: %s", strerror(-r));
        return;
    }
    dc->released_since = true;
    fig->caches_flushed += res->caches_flushed;
    /* The drained caches changed (their bins are empty now): take their
     * new look as the one to compare with, and leave them be until their
     * owners use them again. */
    for (uint32_t k = 0; k < nslots && dc->seen; k++) {
        struct decay_slot_seen *s = &dc->seen[slots[k]];
        struct slot_activity a;

        if (slots[k] < SHM_MAX_SLOTS && heap_slot_activity(d->heap, slots[k], &a) &&
            a.pid == s->pid) {
            s->signature = a.signature;
            s->drained = true;
        }
    }
    if (res->bytes_released) {
        fig->releases++;
        fig->released_bytes += res->bytes_released;
        fig->last_release_bytes = res->bytes_released;
        fig->last_release_ns = now;
        fig->last_release_unix_ms = unix_ms();
        dc->credit -= res->bytes_released < dc->credit ? res->bytes_released : dc->credit;
        log_debug("decay: released %" PRIu64 " bytes, drained %" PRIu32 " idle caches",
                  res->bytes_released, res->caches_flushed);
    }
    if (res->bytes_released < DECAY_MIN_BYTES && dc->attempt_bytes >= DECAY_MIN_BYTES) {
        /* The excess is in busy caches or in slabs that hold live objects:
         * try again after a while, sooner under pressure. */
        dc->hold_until_ns = now + (fig->under_pressure ? (uint64_t) dc->tick_ms * 10u
                                                       : (uint64_t) d->cfg.decay_ms) *
                                          1000000u;
        fig->state = "unreleasable";
    }
}

void decay_reconfigure(struct daemon *d)
{
    struct decay *dc = &d->decay;
    uint32_t ms = d->cfg.decay_ms;

    if (!dc->timer_open)
        return;
    (void) uv_timer_stop(&dc->timer);
    if (!ms || d->stopping) {
        dc->fig.state = "off";
        return;
    }
    /* A new decay_ms starts a new window: the old buckets measured other
     * spans. It takes effect at the next tick. */
    if (dc->tick_ms != tick_ms_for(ms) || dc->bucket_ns != (uint64_t) ms * 1000000u / 32u) {
        dc->tick_ms = tick_ms_for(ms);
        dc->bucket_ns = (uint64_t) ms * 1000000u / 32u;
        window_reset(dc);
    }
    dc->hold_until_ns = 0;
    dc->last_tick_ns = 0;
    if (!dc->fig.state || strcmp(dc->fig.state, "off") == 0)
        dc->fig.state = "starting";
    arm(d);
}

int decay_init(struct daemon *d, const char *pressure_path)
{
    struct decay *dc = &d->decay;
    double v;
    int r;

    dc->pressure_path = pressure_path ? pressure_path : DECAY_DEFAULT_PSI;
    dc->st = malloc(sizeof(*dc->st));
    dc->seen = calloc(SHM_MAX_SLOTS, sizeof(*dc->seen));
    if (!dc->st || !dc->seen)
        return -ENOMEM;
    dc->rng = mono_ns() | 1;
    dc->fig.state = "off";
    r = pressure_some_avg10(dc->pressure_path, &v);
    dc->fig.psi_available = r == 0;
    if (r == 0)
        log_debug("decay: watching memory pressure in %s", dc->pressure_path);
    r = uv_timer_init(d->loop, &dc->timer);
    if (r < 0)
        return -ENOMEM;
    dc->timer.data = d;
    dc->timer_open = true;
    decay_reconfigure(d);
    return 0;
}

void decay_close(struct daemon *d)
{
    struct decay *dc = &d->decay;

    if (!dc->timer_open)
        return;
    (void) uv_timer_stop(&dc->timer);
    uv_close((uv_handle_t *) &dc->timer, NULL);
    dc->timer_open = false;
}

void decay_fini(struct daemon *d)
{
    free(d->decay.st);
    free(d->decay.seen);
    d->decay.st = NULL;
    d->decay.seen = NULL;
}

cJSON *decay_json(struct daemon *d)
{
    const struct decay *dc = &d->decay;
    const struct decay_figures *fig = &dc->fig;
    uint64_t held = 0, kept = fig->committed_bytes < fig->floor_bytes ? fig->committed_bytes
                                                                      : fig->floor_bytes;
    cJSON *o = cJSON_CreateObject();

    if (kept > fig->overhead_bytes + fig->in_use_bytes)
        held = kept - fig->overhead_bytes - fig->in_use_bytes;
    if (!o || !cJSON_AddBoolToObject(o, "enabled", d->cfg.decay_ms != 0) ||
        !cJSON_AddNumberToObject(o, "decay_ms", d->cfg.decay_ms) ||
        !cJSON_AddNumberToObject(o, "tick_ms", d->cfg.decay_ms ? dc->tick_ms : 0) ||
        !cJSON_AddStringToObject(o, "state", d->cfg.decay_ms ? fig->state : "off") ||
        !json_add_u64(o, "ticks", fig->ticks) ||
        !json_add_u64(o, "committed_bytes", fig->committed_bytes) ||
        !json_add_u64(o, "in_use_bytes", fig->in_use_bytes) ||
        !json_add_u64(o, "overhead_bytes", fig->overhead_bytes) ||
        !json_add_u64(o, "window_peak_bytes", fig->window_peak_bytes) ||
        !json_add_u64(o, "floor_bytes", fig->floor_bytes) ||
        !json_add_u64(o, "excess_bytes", fig->excess_bytes) ||
        !json_add_u64(o, "held_bytes", held) || !json_add_u64(o, "releases", fig->releases) ||
        !json_add_u64(o, "released_bytes", fig->released_bytes) ||
        !json_add_u64(o, "last_release_bytes", fig->last_release_bytes) ||
        !json_add_u64(o, "caches_flushed", fig->caches_flushed) ||
        !json_add_u64(o, "idle_caches", fig->idle_caches) ||
        !cJSON_AddBoolToObject(o, "psi_available", fig->psi_available) ||
        !cJSON_AddNumberToObject(o, "psi_some_avg10", fig->psi_some_avg10) ||
        !cJSON_AddNumberToObject(o, "under_pressure", fig->under_pressure ? 1 : 0) ||
        !json_add_u64(o, "pressure_ticks", fig->pressure_ticks))
        goto fail;
    if (fig->last_release_ns &&
        (!json_add_u64(o, "last_release_ago_ms", (mono_ns() - fig->last_release_ns) / 1000000u) ||
         !json_add_u64(o, "last_release_unix_s", fig->last_release_unix_ms / 1000u)))
        goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}
