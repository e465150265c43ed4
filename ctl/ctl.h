/* shmheapctl: a thin command-line client of the control protocol
 * (docs/PROTOCOL.md). One file per job:
 *   args.c        the command line -> struct ctl_args (usage errors: exit 2)
 *   conn.c        the socket: connect (exit 3 on failure), one request/reply
 *   render.c      replies -> human-readable tables
 *   prometheus.c  the stats reply -> Prometheus text exposition format
 *   main.c        ties them together, builds requests, picks the exit status */
#ifndef CTL_CTL_H
#define CTL_CTL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

/* Exit statuses (INTERFACE.md). */
enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_REFUSED = 1, /* the daemon said no (or the heap is inconsistent) */
    CTL_EXIT_USAGE = 2,
    CTL_EXIT_CONNECT = 3, /* cannot connect, or the connection failed */
};

enum ctl_command {
    CMD_NONE = 0,
    CMD_STATS,
    CMD_TRIM,
    CMD_CONFIG_GET,
    CMD_CONFIG_SET,
    CMD_CLIENTS,
    CMD_SEGMENTS,
    CMD_VERIFY,
    _CMD_MAX,
};

enum ctl_format {
    FMT_TABLE = 0,
    FMT_JSON,       /* the daemon's reply line as is */
    FMT_PROMETHEUS, /* stats only */
};

struct ctl_args {
    const char *socket_path; /* NULL: the default rule */
    enum ctl_command command;
    enum ctl_format format;
    bool help, version;
    bool has_wait;
    unsigned wait_ms;
    const char *key;   /* config get/set */
    const char *value; /* config set */
};

/* ---- args.c ---- */
/* Parses argv. Returns 0, or -1 after printing a message and the usage to
 * stderr (exit CTL_EXIT_USAGE). --help and --version set their flags. */
int args_parse(int argc, char **argv, struct ctl_args *ret);
void args_usage(FILE *f);

/* ---- conn.c ---- */
struct ctl_conn {
    int fd;
    char path[108]; /* WIRE_PATH_MAX */
};

/* The socket path rule of INTERFACE.md. Returns -1 (message printed) when
 * the path is too long for a Unix socket. */
int conn_resolve_path(const char *arg, char *buf, size_t len);
/* Connects; on failure prints "shmheapctl: cannot connect to shmheapd at
 * PATH: ..." and returns -1. */
int conn_connect(struct ctl_conn *c, const char *path);
/* Sends req, reads the reply line (without its \n) into *ret_line (malloc'd,
 * NUL-terminated) and parses it into *ret_reply. Returns 0, -1 when the
 * connection failed (message printed; exit 3) or -2 when the reply is not a
 * JSON object with "ok" (message printed; exit 1). */
int conn_exchange(struct ctl_conn *c,
                  const cJSON *req,
                  unsigned timeout_ms,
                  char **ret_line,
                  cJSON **ret_reply);
void conn_disconnect(struct ctl_conn *c);

/* ---- render.c ---- */
/* Each prints the reply of its op to f as a table; false if the reply lacks
 * what the table needs (a message goes to stderr). */
bool render_stats(FILE *f, const cJSON *reply);
bool render_trim(FILE *f, const cJSON *reply);
bool render_config(FILE *f, const cJSON *reply);
bool render_clients(FILE *f, const cJSON *reply);
bool render_segments(FILE *f, const cJSON *reply);
/* Returns false also when the heap is not consistent. */
bool render_verify(FILE *f, const cJSON *reply);
/* Bytes as "1.5 GiB" (exact below 1 KiB). Returns buf. */
char *render_bytes(uint64_t n, char *buf, size_t len);
/* A reply member as an unsigned integer; 0 when missing. */
uint64_t json_u64(const cJSON *obj, const char *name);
/* A reply member as a string, or "-" when missing. */
const char *json_str(const cJSON *obj, const char *name);

/* ---- prometheus.c ---- */
/* Converts the stats reply to the text exposition format (version 0.0.4). */
bool prometheus_render(FILE *f, const cJSON *reply);

#endif
