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
    size_t inlen;
    char in[WIRE_LINE_MAX];
};

struct client {
    struct daemon *d;
    struct link link; /* in d->clients */
    uint64_t id;
    struct peer peer;
    uint64_t attached_ns;
    struct conn *conn; /* NULL after a detach */
    int pidfd;         /* -1 if none could be had */
    uv_poll_t pidfd_poll;
    bool pidfd_polling;
    bool exited;    /* reclamation started */
    bool exit_seen; /* its pidfd said so (else only its hang-up did) */
    unsigned handles;
};

/* The per-uid quota's tick (quota.c): what it summed last time. */
struct quota_tick {
    uv_timer_t timer;
    struct uid_sum *uids; /* one per uid with clients, or still refused */
    size_t nuids, uids_cap;
    struct client_over *clients; /* sorted by client id for the owner-table walk */
    size_t nclients, clients_cap;
    bool refusing;    /* some owner entry has OWNER_REFUSE_UID set */
    uint32_t refused; /* owner entries refused at the last tick */
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

    /* The heap (owner.c). */
    int ctl_fd;
    pthread_mutex_t seg_lock; /* seg_fds and segment creation */
    int seg_fds[SHM_MAX_SEGMENTS];
    uint64_t seg_size[SHM_MAX_SEGMENTS]; /* as created: the daemon's own record */
    uint32_t seg_page[SHM_MAX_SEGMENTS];
    uint32_t nsegs;    /* entries in seg_fds, the control segment included */
    struct heap *heap; /* the daemon's own attachment (client id 0) */

    /* Connections and clients (conn.c, clients.c). */
    struct link conns;
    unsigned nconns;
    uint64_t next_conn_serial;
    struct link clients;
    unsigned nclients; /* attached (connection open) */
    uint64_t next_client_id;

    /* The pool (work.c). */
    pthread_mutex_t work_lock; /* one heap-wide job at a time */
    unsigned jobs;             /* in flight */
    bool periodic_trim_running;
};

/* ---- log.c ---- */
/* Levels are syslog's (LOG_ERR .. LOG_DEBUG from <syslog.h>). */
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
/* The stats and segments objects (also for the metrics endpoint, later). */
cJSON *stats_json(struct daemon *d);
cJSON *segments_json(const struct heap_stats *st);

/* ---- clients.c ---- */
/* Registers c's peer as a client; returns its id or a negative errno. */
int clients_attach(struct daemon *d, struct conn *c, struct client **ret);
/* c's connection closed. */
void clients_detach(struct client *cl);
/* Shutdown: stops watching every client (no reclamation). */
void clients_close_all(struct daemon *d);
/* work.c: the reclamation of an exited client is done; logs, frees cl. */
void clients_reclaimed(struct client *cl,
                       int slots,
                       int arenas,
                       int owned_r,
                       const struct heap_owned_reclaim *owned);
/* ---- quota.c ---- */
void quota_start(struct daemon *d);
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
enum job_kind { JOB_TRIM, JOB_VERIFY, JOB_RECLAIM, JOB_RECLAIM_DETACHED };
/* Runs a trim for c (c NULL: periodic) in the pool; replies when done. */
int work_trim(struct daemon *d, struct conn *c, unsigned wait_ms);
int work_verify(struct daemon *d, struct conn *c);
/* Reclaims a client's slots and SESSION arenas; frees cl when done. */
int work_reclaim(struct daemon *d, struct client *cl);
/* Frees the private objects of client_id's detached attachments (its
 * process lives on; their mappings are gone). */
int work_reclaim_detached(struct daemon *d, uint64_t client_id);
/* (Re)arms the periodic trim by cfg.shm.trim_interval_ms. */
void work_trim_timer_update(struct daemon *d);

/* ---- settings.c ---- */
/* Makes *next the running config: writes the heap's keys to the control
 * segment, re-arms timers, logs each change with `why`. */
void settings_apply(struct daemon *d, const struct config *next, const char *why);
/* SIGHUP: reloads the config file (a broken file keeps the old config). */
void settings_reload(struct daemon *d);

/* ---- service.c: systemd and signals ---- */
int service_init(struct daemon *d);
void service_ready(struct daemon *d);
void service_stopping(struct daemon *d);
void service_close(struct daemon *d);
/* Socket activation: the listening fd passed by systemd, or -1. */
int service_listen_fd(void);

/* ---- main.c ---- */
/* Stops the daemon: closes the socket and connections, lets jobs finish,
 * then the loop ends and main() exits with `status`. */
void daemon_shutdown(struct daemon *d, int status);

#endif
