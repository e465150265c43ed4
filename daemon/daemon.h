/* shmheapd's state and the functions its files share, grouped by file.
 *
 * One thread runs the libuv loop and owns everything here. The heap calls
 * that take long (trim, verify, reclamation) run in libuv's thread pool
 * (work.c), one at a time under work_lock; they touch only the heap and
 * their own job, and hand results back to the loop in their after_work
 * callback. The segment fd table is also read by the daemon's own heap
 * attachment (owner.c hooks), so it has a lock of its own.
 *
 * Lifetimes: a struct conn lives from accept to conn_close() plus the
 * closing of its libuv handles, and longer while a job it started is in
 * the pool (conn->jobs). A struct client lives from hello until its
 * process exits and its reclamation job is done; the connection may go
 * before that (a detach). */
#ifndef DAEMON_DAEMON_H
#define DAEMON_DAEMON_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <syslog.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "config/config.h"
#include "shm/heap.h"
#include "shm/layout.h"
#include "wire/wire.h"

#ifndef SHMHEAP_VERSION
#    define SHMHEAP_VERSION "0.1.0" /* keep in step with VERSION in the Makefile */
#endif

struct daemon;
struct conn;
struct client;
struct proc;
struct metrics;

/* Doubly linked list links, kept by hand (no list library). */
struct link {
    struct link *prev, *next;
};

static inline void link_init(struct link *l)
{
    l->prev = l->next = l;
}

static inline void link_insert(struct link *head, struct link *l)
{
    l->next = head->next;
    l->prev = head;
    head->next->prev = l;
    head->next = l;
}

static inline void link_remove(struct link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    link_init(l);
}

#define container_of(p, type, member) ((type *) (void *) ((char *) (p) -offsetof(type, member)))

struct peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

struct outbuf {
    struct outbuf *next;
    size_t len, off;
    int nfds;
    int fds[SHM_MAX_SEGMENTS]; /* our dups; sent with the first byte, then closed */
    char data[];
};

enum conn_timer_mode {
    CONN_TIMER_OFF,
    CONN_TIMER_IDLE,    /* no hello and nothing sent: idle_timeout_ms */
    CONN_TIMER_REQUEST, /* a request half-sent: request_timeout_ms from its first byte */
    CONN_TIMER_SEND,    /* a reply the peer does not read: request_timeout_ms */
};

struct conn {
    struct daemon *d;
    struct link link; /* in d->conns */
    int fd;
    uv_poll_t poll;
    uv_timer_t timer;
    int poll_events;        /* what poll is started with (0: stopped) */
    unsigned handles;       /* libuv handles not yet closed */
    unsigned jobs;          /* work.c jobs in flight for this connection */
    bool closing;           /* conn_close() was called */
    bool close_after_flush; /* close once the output queue is empty */
    bool eof;               /* the peer shut its side */
    bool denied;            /* answer permission_denied to the first request */
    uint8_t timer_mode;     /* enum conn_timer_mode: what the timer runs for */
    struct peer peer;
    uint64_t serial; /* connection number, for logs */
    uint64_t connected_ns;
    struct client *client; /* after hello */
    struct outbuf *out_head, *out_tail;
    /* The request bytes read so far: allocated on the first byte, grown
     * by doubling up to WIRE_LINE_MAX, freed once every line in it has
     * been handled, so an idle connection costs no buffer (conn.c). */
    char *in;
    size_t incap, inlen;
};

struct client {
    struct daemon *d;
    struct link link; /* in d->clients */
    uint64_t id;
    struct peer peer;
    uint64_t attached_ns;
    struct conn *conn; /* NULL after a detach */
    struct proc *proc; /* its process's watch (procs.c), NULL if none */
    bool held;         /* detached, but still holds owner entries or caches */
    bool exited;       /* reclamation started */
    bool exit_seen;    /* its pidfd said so (else only its hang-up did) */
};

/* The automatic trim policy's state (decay.c), on the loop thread only. */
#define DECAY_BUCKETS 33u /* the window in 32 buckets, plus the current one */
struct decay_slot_seen {
    uint64_t signature; /* heap_slot_activity() at the last change */
    uint64_t since_ns;  /* when it last changed */
    uint32_t pid;
    bool valid;   /* the slot was in use at the last tick */
    bool drained; /* we drained it since it last changed */
};
/* Figures for the stats op (all since the daemon started). */
struct decay_figures {
    uint64_t ticks;
    uint64_t releases;       /* release jobs that gave back memory */
    uint64_t released_bytes; /* what they gave back */
    uint64_t caches_flushed; /* idle threads' caches drained */
    uint64_t pressure_ticks; /* ticks under memory pressure */
    uint64_t last_release_bytes;
    uint64_t last_release_ns;      /* CLOCK_MONOTONIC, 0: never */
    uint64_t last_release_unix_ms; /* the same moment, wall clock */
    /* The last tick's look: */
    uint64_t committed_bytes;   /* the heap's committed bytes */
    uint64_t in_use_bytes;      /* live bytes */
    uint64_t overhead_bytes;    /* control segment and segment metadata */
    uint64_t window_peak_bytes; /* highest need over the last decay_ms */
    uint64_t floor_bytes;       /* committed bytes the policy keeps */
    uint64_t excess_bytes;      /* committed above the floor */
    uint64_t idle_caches;       /* caches of threads idle longer than decay_ms */
    const char *state;          /* what it did or why it held back (decay.c) */
    bool psi_available;
    bool under_pressure;
    double psi_some_avg10;
};
struct decay {
    uv_timer_t timer;
    bool timer_open;
    bool running; /* a release job is in the pool */
    uint32_t tick_ms;
    uint64_t rng;
    uint64_t bucket_ns; /* decay_ms / 32 */
    struct {
        uint64_t id, need;
    } buckets[DECAY_BUCKETS];
    uint64_t last_committed; /* committed bytes at the last tick, less what we released since */
    uint64_t last_tick_ns;
    uint64_t credit;        /* bytes the rate bound allows now */
    uint64_t hold_until_ns; /* after a release that found nothing it could give back */
    uint64_t attempt_bytes; /* the budget of the release in flight */
    bool released_since;    /* a release ended since the last tick */
    const char *pressure_path;
    bool psi_warned;
    struct heap_stats *st;        /* scratch for the tick */
    struct decay_slot_seen *seen; /* SHM_MAX_SLOTS entries */
    struct decay_figures fig;
};

/* The per-uid quota's tick (quota.c): what it summed last time. */
struct quota_tick {
    uv_timer_t timer;
    struct uid_sum *uids; /* one per uid with clients, or still refused */
    size_t nuids, uids_cap;
    struct client_over *clients; /* sorted by client id for the owner-table walk */
    size_t nclients, clients_cap;
    /* Owner entries refused at the last tick. Stored with a relaxed atomic
     * store: the metrics thread reads it (relaxed load in metrics.c) for
     * clients_refused_uid_quota; no other data is published with it. */
    uint32_t refused;
};

struct daemon {
    uv_loop_t *loop;
    struct config cfg;       /* the truth; the control segment holds a copy of cfg.shm */
    const char *config_path; /* NULL: the default path, which may be absent */
    char socket_path[WIRE_PATH_MAX];
    bool socket_activated;
    bool socket_created; /* we bound it and unlink it at exit */
    dev_t socket_dev;
    ino_t socket_ino;
    int listen_fd;
    uv_poll_t listen_poll;
    uv_timer_t listen_retry; /* restarts accepting after EMFILE */
    bool listening;
    uv_timer_t trim_timer;
    struct quota_tick quota;
    uv_timer_t watchdog_timer;
    uv_signal_t sig_hup, sig_term, sig_int;
    bool stopping;
    int exit_status;
    uv_timer_t status_timer;        /* refreshes STATUS= for systemd */
    const char *metrics_listen_arg; /* --metrics-listen: wins over the file on reload */
    struct metrics *metrics;        /* the /metrics endpoint (metrics.c), NULL until started */

    /* The heap (owner.c). */
    int ctl_fd;
    struct heap_header hdr;   /* the header page: ours to write, clients map it read-only */
    pthread_mutex_t seg_lock; /* seg_fds and segment creation */
    int seg_fds[SHM_MAX_SEGMENTS];
    uint64_t seg_size[SHM_MAX_SEGMENTS]; /* as created: the daemon's own record */
    uint32_t seg_page[SHM_MAX_SEGMENTS];
    uint32_t nsegs;                         /* entries in seg_fds, the control segment included */
    struct heap *heap;                      /* the daemon's own attachment (client id 0) */
    struct heap_lock_report locks_logged;   /* what owner_lock_report has logged so far */
    struct heap_lock_report locks_verified; /* and what verify has reported */

    /* Restart (fdstore.c, statedir.c, adopt.c). */
    int stored_fds[SHM_MAX_SEGMENTS]; /* passed back by systemd's fd store, by index; -1 */
    int stored_hdr_fd;                /* the newest header page passed back, or -1 */
    uint64_t stored_hdr_gen;          /* its generation (FDNAME header-page-<gen>) */
    int passed_listen_fd;             /* the listening socket systemd passed, or -1 */
    bool use_fdstore;                 /* NOTIFY_SOCKET set and no state dir */
    bool discard_bad_heap;            /* --discard-bad-heap */
    int state_dir_fd;                 /* -1: no state dir */
    char state_dir[CONFIG_PATH_MAX];  /* the one opened at start (cfg.state_dir may change) */
    int state_lock_fd;                /* flock'ed: one daemon per state dir */
    bool adopted;                     /* the heap came from an earlier daemon */

    /* Connections and clients (conn.c, clients.c). */
    struct link conns;
    unsigned nconns;
    uint64_t next_conn_serial;
    struct link clients;
    unsigned nclients; /* attached (connection open) */
    struct link procs; /* procs.c: one pidfd per watched process */
    unsigned nprocs;
    uint64_t next_client_id;

    /* The pool (work.c). */
    pthread_mutex_t work_lock; /* one heap-wide job at a time */
    unsigned jobs;             /* in flight */
    bool periodic_trim_running;
    /* Reclaims that failed and wait for their retry (retry.c). The two
     * figures are stored relaxed by the loop and read by the metrics
     * thread (loop_figures_read): numbers, nothing published with them. */
    struct link reclaims;
    uint32_t reclaims_pending;
    uint64_t reclaim_retries;
    struct decay decay; /* decay.c */
};

/* ---- log.c ---- */
/* Levels are syslog's (LOG_ERR .. LOG_DEBUG from <syslog.h>). */
/* The longest the daemon waits for a segment's lock (owner.c,
 * heap_guard_locks): a holder keeps it for microseconds; a word a client
 * wrote, or a client stopped holding it, fails the operation instead. */
#define DAEMON_LOCK_WAIT_MS 2000u

void log_init(void);
void log_set_level(uint32_t level);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...)   log_msg(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)  log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)    log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)   log_msg(LOG_DEBUG, __VA_ARGS__)
/* "4K", "2M", "1G" (or the byte count) for a page size. */
const char *page_size_name(uint64_t page_size, char *buf, size_t len);
/* "64M", "1G", or the byte count. */
const char *bytes_name(uint64_t bytes, char *buf, size_t len);

/* ---- owner.c: the heap the daemon owns ---- */
int owner_init(struct daemon *d);
void owner_fini(struct daemon *d);
/* Creates a heap segment of at least min_bytes (0: segment_size); returns
 * its index. -ENOSPC at max_segments, -ENOMEM when no memory. Logs. */
int owner_grow(struct daemon *d, uint64_t min_bytes, uint32_t *ret_index);
/* A borrowed fd of segment index (0: control), or -1; size and page size
 * from the control segment's table, which the daemon wrote. */
int owner_segment(struct daemon *d, uint32_t index, uint64_t *ret_size, uint32_t *ret_page);
uint32_t owner_nsegments(struct daemon *d);
/* Writes cfg.shm into the control segment and bumps config_gen. */
void owner_publish_config(struct daemon *d);
/* Adds to rep what of the header page and the segment table disagrees with
 * the daemon's own records (config, segment fds and sizes). */
void owner_verify(struct daemon *d, struct verify_report *rep);
/* Logs what the daemon's guarded segment locks found since the last call
 * (a lock word naming a thread that does not exist, a written kind, a lock
 * held past DAEMON_LOCK_WAIT_MS), and with rep, reports it there too. */
void owner_lock_report(struct daemon *d, struct verify_report *rep);

/* ---- fdstore.c: systemd's file descriptor store ---- */
/* Takes every fd systemd passed (sd_listen_fds_with_names): stored
 * segments by name into d->stored_fds, the listening socket into
 * d->passed_listen_fd; closes anything else. */
void fdstore_collect(struct daemon *d);
/* Hands segment index's fd to systemd (FDSTORE=1) when d->use_fdstore. */
void fdstore_put(struct daemon *d, uint32_t index, int fd);
/* The same for the header page of generation gen, and its removal. */
void fdstore_put_header(struct daemon *d, uint64_t gen, int fd);
void fdstore_remove_header(struct daemon *d, uint64_t gen);
/* Asks systemd to drop the stored fd of segment index (FDSTOREREMOVE=1). */
void fdstore_remove(struct daemon *d, uint32_t index);
/* Closes the stored fds not taken by adoption. */
void fdstore_close_unused(struct daemon *d);

/* ---- statedir.c: segments as files in a state directory ---- */
/* Creates (0700) and locks cfg.state_dir; sets d->state_dir_fd. */
int statedir_open(struct daemon *d);
/* Opens the segment files present into fds[] (-1 where absent); returns
 * how many, or a negative errno. */
int statedir_load(struct daemon *d, int fds[SHM_MAX_SEGMENTS]);
/* Renames the segment files aside (NAME.discarded) for --discard-bad-heap. */
void statedir_discard(struct daemon *d);
/* Removes heap-segment-N files for N >= from: leftovers never published. */
void statedir_remove_from(struct daemon *d, uint32_t from);
void statedir_close(struct daemon *d);

/* ---- adopt.c: taking over the heap an earlier daemon left ---- */
/* Checks the segments in fds[] (index 0 the control segment; taken over
 * on success, left open otherwise) and makes them the daemon's: records,
 * its own attachment, recovery, the clients it finds. `source` names
 * where they came from for the logs. -EPROTO: another layout version;
 * -ENODATA: nothing to adopt (a creation cut short before its header page). */
int adopt_heap(struct daemon *d, int fds[SHM_MAX_SEGMENTS], int hdr_fd, const char *source);
/* After the daemon's attachment mapped the adopted heap: recovery, and the
 * clients of the earlier daemon watched until they say hello again. */
int adopt_recover(struct daemon *d, const char *source);

/* ---- listen.c ---- */
int listen_open(struct daemon *d);
void listen_close(struct daemon *d);

/* ---- peer.c ---- */
int peer_credentials(int fd, struct peer *ret);
/* Whether this peer may use the daemon; *why names the reason if not. */
bool peer_allowed(const struct daemon *d, int fd, const struct peer *p, const char **ret_why);
/* Root or the daemon's own uid: may change the config. */
bool peer_is_admin(const struct peer *p);
/* A pidfd for the peer of socket fd (SO_PEERPIDFD, else pidfd_open). */
int peer_pidfd(int fd, pid_t pid);

/* ---- conn.c ---- */
void conn_accept(struct daemon *d, int fd, const struct peer *p);
/* Queues a reply line ('\n' added) with fds (dup'ed) and tries to send. */
int conn_send(struct conn *c, const char *line, size_t len, const int *fds, int nfds);
void conn_close(struct conn *c, const char *why);
/* Stops reading while a job runs for c; conn_resume carries on. */
void conn_pause(struct conn *c);
void conn_resume(struct conn *c);
void conn_timers_reconfigure(struct daemon *d);
void conn_close_all(struct daemon *d);
/* Shutdown: reads no further requests; connections close once the reply
 * to the request in hand (a job, a queued reply) has gone out. */
void conn_drain_all(struct daemon *d);
/* Sends a one-line failure reply on a socket not (yet) a struct conn. */
void conn_refuse_raw(int fd, const char *code, const char *message);

/* ---- proto.c ---- */
/* Handles one request line of c. */
void proto_handle_line(struct conn *c, char *line, size_t len);
/* A reply object that starts {"ok": true}, or NULL (out of memory). */
cJSON *reply_new(void);
/* Sends obj (from reply_new; NULL answers internal) and deletes it. */
void reply_ok(struct conn *c, cJSON *obj, const int *fds, int nfds);
void reply_error(struct conn *c, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* A failure reply as a line, for sockets that are not a conn. */
char *reply_error_line(const char *code, const char *message);
/* u64 values as exact JSON numbers (cJSON numbers are doubles). */
bool json_add_u64(cJSON *obj, const char *name, uint64_t v);
/* Field access; each sets a bad_request reply and returns false when the
 * field is missing or of the wrong type. */
bool req_u64(struct conn *c,
             const cJSON *req,
             const char *name,
             bool required,
             uint64_t max,
             uint64_t *ret);
bool req_string(
        struct conn *c, const cJSON *req, const char *name, bool required, const char **ret);

/* ---- ops: op_attach.c, op_info.c, op_admin.c ---- */
void op_hello(struct conn *c, const cJSON *req);
void op_segment(struct conn *c, const cJSON *req);
void op_header_page(struct conn *c, const cJSON *req);
void op_grow(struct conn *c, const cJSON *req);
void op_stats(struct conn *c, const cJSON *req);
void op_clients(struct conn *c, const cJSON *req);
void op_segments(struct conn *c, const cJSON *req);
void op_trim(struct conn *c, const cJSON *req);
void op_verify(struct conn *c, const cJSON *req);
void op_config_get(struct conn *c, const cJSON *req);
void op_config_set(struct conn *c, const cJSON *req);
/* op_admin.c: a trim or verify job that c asked for is done (r: its
 * result, 0 or a negative errno); logs it and replies on c. */
void op_trim_done(struct conn *c, int r, const struct trim_result *t);
void op_verify_done(struct conn *c, int r, const struct verify_report *rep);
/* A "segment" object {index, size, page_size}; page_size in bytes. */
cJSON *segment_json(struct daemon *d, uint32_t index);
/* What the stats report of one client: a copy of the loop thread's
 * struct client that another thread may read. */
struct client_view {
    uint64_t id;
    pid_t pid;
    bool attached; /* its connection is open */
    bool held;     /* detached, still holding owner entries or caches */
};
/* A copy of the client list (loop thread). Returns 0 or -ENOMEM; *ret_views
 * is malloc'd. */
int client_views(struct daemon *d, struct client_view **ret_views, size_t *ret_n);
/* The loop's own figures in the stats object, copied by the caller. */
struct loop_figures {
    uint32_t quota_refused;    /* d->quota.refused */
    uint32_t reclaims_pending; /* d->reclaims_pending */
    uint64_t reclaim_retries;  /* d->reclaim_retries */
};
/* Reads them (relaxed loads: the loop stores them): any thread. */
void loop_figures_read(struct daemon *d, struct loop_figures *ret);
/* The stats object from the heap, a client list and the loop's other
 * figures: safe on any thread. NULL when out of memory or the heap cannot
 * be read. */
cJSON *stats_json_build(struct heap *heap,
                        const struct client_view *views,
                        size_t nviews,
                        const struct loop_figures *fig);
/* The same on the loop thread, from d's own client list. */
cJSON *stats_json(struct daemon *d);
cJSON *segments_json(const struct heap_stats *st);

/* ---- clients.c ---- */
/* Registers c's peer as a client; returns its id or a negative errno.
 * resume_id 0: a new client; else the id it had (a re-hello after a
 * restart or a dropped connection), already checked by op_hello. */
int clients_attach(struct daemon *d, struct conn *c, uint64_t resume_id, struct client **ret);
/* The client with this id, or NULL. */
struct client *clients_find(struct daemon *d, uint64_t id);
/* Adoption: watches the process of a client of the earlier daemon until
 * it says hello again (or exits: then it is reclaimed as usual). */
int clients_adopt(struct daemon *d, uint64_t id, pid_t pid);
/* c's connection closed. */
void clients_detach(struct client *cl);
/* Shutdown: stops watching every client (no reclamation). */
void clients_close_all(struct daemon *d);
/* The first error of a reclaim's three parts (caches, arenas, private
 * objects), or 0. */
static inline int reclaim_error(int slots, int arenas, int owned_r)
{
    return slots < 0 ? slots : arenas < 0 ? arenas : owned_r < 0 ? owned_r : 0;
}
/* Logs what the reclaim of exited client `id` freed. */
void clients_log_reclaimed(
        uint64_t id, pid_t pid, int slots, int arenas, const struct heap_owned_reclaim *owned);
/* work.c: the reclamation of an exited client is done; logs, frees cl. */
void clients_reclaimed(struct client *cl,
                       int slots,
                       int arenas,
                       int owned_r,
                       const struct heap_owned_reclaim *owned);
/* procs.c: cl's process (a struct proc) has exited: reclaims every client
 * that watches it. */
void clients_process_exited(struct daemon *d, struct proc *p);
/* work.c: the detach job of client_id is done; held: it still owns owner
 * entries or caches (its record stays until its process exits); arenas:
 * SESSION arenas destroyed (only when nothing was held). */
void clients_detach_swept(struct daemon *d, uint64_t client_id, bool held, int arenas);

/* ---- procs.c: one pidfd per client process ---- */
/* A watch of pid's process, shared with the other clients of that process
 * (conn_fd: a connection of the process, for SO_PEERPIDFD, or -1).
 * Returns 0 or a negative errno. */
int procs_watch(struct daemon *d, pid_t pid, int conn_fd, struct proc **ret);
/* Drops a reference; the last one closes the pidfd. */
void procs_unwatch(struct proc *p);
/* Whether the watched process has exited (its pidfd readable now). */
bool procs_exited(struct proc *p);
pid_t procs_pid(const struct proc *p);

/* ---- quota.c ---- */
void quota_start(struct daemon *d);
/* One tick: what the timer runs every QUOTA_TICK_MS (the fuzz harness
 * runs it after each request instead). */
void quota_tick(struct daemon *d);
void quota_stop(struct daemon *d);
/* True if uid was over max_uid_bytes at the last tick; *ret_bytes: its sum then. */
bool quota_uid_over(struct daemon *d, uid_t uid, uint64_t *ret_bytes);

/* Slots owned by a client id and their bytes in use. */
void clients_slot_usage(struct daemon *d,
                        uint64_t client_id,
                        uint32_t *ret_threads,
                        uint64_t *ret_bytes);

/* ---- work.c ---- */
struct job;
enum job_kind { JOB_TRIM, JOB_VERIFY, JOB_RECLAIM, JOB_RECLAIM_DETACHED, JOB_DECAY };
struct reclaim_pending;
/* Runs a trim for c (c NULL: periodic) in the pool; replies when done. */
int work_trim(struct daemon *d, struct conn *c, unsigned wait_ms);
int work_verify(struct daemon *d, struct conn *c);
/* Reclaims a client's slots and SESSION arenas; frees cl when done. */
int work_reclaim(struct daemon *d, struct client *cl);
/* Frees the private objects of client_id's detached attachments (its
 * process lives on; their mappings are gone). */
int work_reclaim_detached(struct daemon *d, uint64_t client_id, pid_t pid);
/* The retry of a reclaim that failed (retry.c): the job of its kind, whose
 * result goes back to retry_done. */
int work_reclaim_retry(struct daemon *d, struct reclaim_pending *p);

/* ---- retry.c ---- */
/* A reclaim failed (a segment lock held past DAEMON_LOCK_WAIT_MS): keeps a
 * record of it and retries it on a timer, 100 ms doubling to 10 s, until it
 * succeeds. exited: the process is gone (the exit's reclaim), else the
 * sweep of a detach. err: why it failed (logged). */
void retry_start(
        struct daemon *d, uint64_t client_id, pid_t pid, bool exited, bool exit_seen, int err);
/* The retry job of p is done: r < 0 failed again (re-armed), else p goes. */
void retry_done(struct reclaim_pending *p, int r);
/* The pending record of p: what the retry job needs. */
void retry_job_args(const struct reclaim_pending *p,
                    uint64_t *ret_client_id,
                    uint32_t *ret_pid,
                    bool *ret_exited,
                    bool *ret_exit_seen);
/* client_id's process exited: its exit's reclaim covers a pending detach
 * sweep, which is dropped. */
void retry_drop_detached(struct daemon *d, uint64_t client_id);
/* Shutdown: stops every timer (what is pending is found again by the next
 * daemon's adoption: heap_reclaim_dead). */
void retry_close_all(struct daemon *d);
/* (Re)arms the periodic trim by cfg.shm.trim_interval_ms. */
void work_trim_timer_update(struct daemon *d);
/* Runs heap_release(req) in the pool (req and its slot list are copied);
 * decay_released() gets the result on the loop thread. */
int work_release(struct daemon *d, const struct release_req *req);

/* ---- decay.c: the automatic trim policy ---- */
/* pressure_path: the PSI file to watch (NULL: /proc/pressure/memory). */
int decay_init(struct daemon *d, const char *pressure_path);
/* Re-arms the tick by cfg.decay_ms (0 stops it); from settings.c. */
void decay_reconfigure(struct daemon *d);
void decay_close(struct daemon *d);
/* After the loop ended: frees what decay_init allocated. */
void decay_fini(struct daemon *d);
/* work.c: a release job ended (r < 0: it failed or never ran). */
void decay_released(struct daemon *d,
                    int r,
                    const struct release_result *res,
                    const uint32_t *slots,
                    uint32_t nslots);
/* The "decay" object of the stats reply, or NULL (out of memory). */
cJSON *decay_json(struct daemon *d);

/* ---- pressure.c ---- */
/* Reads "some avg10" (percent) from a PSI file such as
 * /proc/pressure/memory or a cgroup's memory.pressure. 0, or -errno:
 * -ENOENT (no PSI here), -EOPNOTSUPP (PSI disabled), -EBADMSG (no such
 * line). */
int pressure_some_avg10(const char *path, double *ret);

/* ---- settings.c ---- */
/* Makes *next the running config: writes the heap's keys to the control
 * segment, re-arms timers, restarts the metrics endpoint, logs each change
 * with `why`. Returns 0, or a negative errno with a message in err when
 * the metrics endpoint cannot move to the new metrics_listen: that key then
 * keeps the address still served (the other keys are applied). */
int settings_apply(
        struct daemon *d, const struct config *next, const char *why, char *err, size_t errlen);
/* SIGHUP: reloads the config file (a broken file keeps the old config). */
void settings_reload(struct daemon *d);

/* ---- metrics.c: GET /metrics ---- */
/* Starts, moves or stops the endpoint to match d->cfg.metrics_listen
 * (loop thread). Returns 0 or a negative errno with a message in err; on
 * failure the previous endpoint (if any) is serving again. */
int metrics_apply(struct daemon *d, char *err, size_t errlen);
/* The loop's client list changed (attach, detach, exit, reclaim): the
 * scrapes' copy is refreshed. Cheap when the endpoint is off. */
void metrics_clients_changed(struct daemon *d);
/* The automatic trim's figures moved (decay.c): the scrape's copy is refreshed. */
void metrics_decay_changed(struct daemon *d);
/* The metrics_listen value served now, "" when off. */
const char *metrics_address(struct daemon *d);
/* Stops the endpoint (joins its thread) and frees it. */
void metrics_fini(struct daemon *d);

/* ---- service.c: systemd and signals ---- */
int service_init(struct daemon *d);
void service_ready(struct daemon *d);
void service_stopping(struct daemon *d);
void service_close(struct daemon *d);

/* ---- main.c ---- */
/* Stops the daemon: closes the socket and connections, lets jobs finish,
 * then the loop ends and main() exits with `status`. */
void daemon_shutdown(struct daemon *d, int status);

#endif
