/* The one table of tunables, shared by shmheapd and shmheapctl.
 *
 * Every key has a type, a default, a lower and an upper bound, a parser from
 * a cJSON value, a validator and a formatter back to cJSON. The result is a
 * plain struct config: the heap's part (struct shm_config, copied into the
 * control segment) plus the daemon-only keys. Nothing here touches an event
 * loop or logs; errors come back as a negative errno and a message in a
 * caller's buffer that names the key and, for a value out of bounds, the
 * bounds ("bundle_objects must be between 2 and 4096, got 9000").
 *
 * Error codes used throughout:
 *   -ENOENT  unknown key
 *   -EINVAL  ill-typed value (the message names the expected type)
 *   -ERANGE  out of bounds (the message names the bounds), or a value that
 *            conflicts with another key (segment_size vs huge_pages)
 *   -EBADMSG malformed JSON (the message gives line and column)
 *   -ENOMEM, or the -errno of open()/read() for files. */
#ifndef CONFIG_CONFIG_H
#define CONFIG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <cjson/cJSON.h>

#include "shm/layout.h"

#define CONFIG_DEFAULT_PATH "/etc/shmheap/shmheapd.json"
#define CONFIG_MAX_IDS      64u        /* entries in allowed_uids / allowed_gids */
#define CONFIG_MAX_FILE     (1u << 20) /* bytes of a config file */
#define CONFIG_MAX_DEPTH    16u        /* nesting of a config file or a request */
#define CONFIG_ERR_MAX      256u       /* a good size for error buffers */
#define CONFIG_LISTEN_MAX   64u        /* bytes of metrics_listen, NUL included */
#define CONFIG_PATH_MAX     256u       /* bytes of a path value, the NUL included */

struct config {
    struct shm_config shm;       /* what clients read from the control segment */
    uint32_t log_level;          /* syslog level: 3 err .. 7 debug */
    uint32_t request_timeout_ms; /* a request left half-sent is answered `timeout` */
    uint32_t idle_timeout_ms;    /* a connection without hello idle this long; 0 never */
    uint32_t max_connections_per_uid; /* connections of one uid at once; 0: max_clients only */
    /* The automatic trim policy (daemon/decay.c). */
    uint32_t decay_ms;               /* memory unused this long goes back; 0: off */
    uint32_t decay_retain_percent;   /* margin kept above the recent peak of bytes in use */
    uint32_t decay_pressure_percent; /* PSI "some avg10" that counts as pressure; 0: ignore */
    uint64_t decay_release_rate;     /* bytes per second the policy may release at most */
    uint32_t n_allowed_uids;
    uint32_t n_allowed_gids;
    uint32_t allowed_uids[CONFIG_MAX_IDS];
    uint32_t allowed_gids[CONFIG_MAX_IDS];
    char metrics_listen[CONFIG_LISTEN_MAX]; /* "ADDR:PORT" of GET /metrics; "" off */
    char state_dir[CONFIG_PATH_MAX]; /* "" : none (daemon/statedir.c) */
};

enum config_type {
    CONFIG_BYTES,   /* u64 byte count: a number, or a string such as "256M" */
    CONFIG_COUNT,   /* u32 count */
    CONFIG_MS,      /* u32 milliseconds */
    CONFIG_ENUM,    /* one of a few strings */
    CONFIG_ID_LIST, /* an array of uids or gids (numbers) */
    CONFIG_STRING,  /* a string that fits its char array, checked by the key */
    CONFIG_PATH,    /* an absolute path string, or "" for none */
    _CONFIG_TYPE_MAX,
};

/* Which part of the running system a key affects (for whoever applies a
 * change): the control segment's struct shm_config, or the daemon only. */
enum config_scope {
    CONFIG_SCOPE_HEAP,   /* written into the control segment, clients re-read it */
    CONFIG_SCOPE_DAEMON, /* the daemon's own behaviour */
};

struct config_key;

/* ---- the table (config.c) ---- */

/* Number of keys, and key i (0 <= i < config_key_count()), in a fixed order. */
size_t config_key_count(void);
const struct config_key *config_key_at(size_t i);
/* The key called `name`, or NULL. */
const struct config_key *config_key_find(const char *name);
const char *config_key_name(const struct config_key *k);
enum config_type config_key_type(const struct config_key *k);
enum config_scope config_key_scope(const struct config_key *k);
/* One line saying what the key is, its bounds and default, for --help and
 * `shmheapctl config`. */
const char *config_key_help(const struct config_key *k);
/* True if a and b hold the same value for k. */
bool config_key_equal(const struct config_key *k, const struct config *a, const struct config *b);

/* Every key at its default. The heap's keys match heap_config_default(). */
void config_default(struct config *ret);

/* Parses `value` for key `name`, checks its type, bounds and its agreement
 * with the other keys of *c, and stores it in *c. *c is changed only on
 * success; on failure err (may be NULL) gets a message. */
int config_set_json(
        struct config *c, const char *name, const cJSON *value, char *err, size_t errlen);
/* The value of one key as cJSON (numbers, strings, arrays), or NULL (out of
 * memory). Byte and count values are plain JSON numbers. */
cJSON *config_get_json(const struct config *c, const struct config_key *k);
/* Adds every key (or only `only`, if not NULL) to object `obj`. Returns 0
 * or -ENOMEM. */
int config_add_to_object(const struct config *c, const struct config_key *only, cJSON *obj);
/* The value as short text for logs and tables ("1073741824", "auto",
 * "[1000, 1001]"); truncated to fit. Returns buf. */
char *config_format_text(const struct config *c, const struct config_key *k, char *buf, size_t len);
/* Turns command-line text into the JSON value config.set expects for key k:
 * "1G" or "1073741824" for bytes, "2M" for huge_pages, "1000,1001" for id
 * lists, "" for an empty list. Checks the type, not the bounds (the daemon
 * does). *ret is a new cJSON the caller deletes. */
int config_value_from_text(
        const struct config_key *k, const char *text, cJSON **ret, char *err, size_t errlen);
/* Checks the rules between keys (segment_size against the huge_pages page
 * size). */
int config_check(const struct config *c, char *err, size_t errlen);

/* ---- the metrics endpoint's address (listen.c) ---- */

/* Parses a metrics_listen value: "ADDR:PORT", "[IPv6]:PORT",
 * "localhost:PORT", "PORT" or ":PORT" (loopback), "" (off: ss_family
 * AF_UNSPEC). Returns 0 or -EINVAL with a message that says what is
 * accepted; *ret is written only on success. */
int config_listen_parse(const char *s, struct sockaddr_storage *ret, char *err, size_t errlen);

/* ---- files (load.c) ---- */

/* Parses a JSON object of keys over the defaults. `name` (a path) prefixes
 * the messages. Malformed JSON: -EBADMSG with "name:LINE:COL: ..."; a bad
 * key: "name:LINE: message". */
int config_parse_text(const char *text,
                      size_t len,
                      const char *name,
                      struct config *ret,
                      char *err,
                      size_t errlen);
/* Loads the file at path over the defaults. A missing file is -ENOENT,
 * unless !must_exist: then *ret is the defaults (the default path may be
 * absent). */
int config_load_file(
        const char *path, bool must_exist, struct config *ret, char *err, size_t errlen);
/* Checks that a JSON text nests no deeper than max_depth arrays/objects
 * (strings are skipped). Use before cJSON_Parse*: cJSON's own cap is 1000. */
bool config_json_depth_ok(const char *text, size_t len, unsigned max_depth);
/* 1-based line and column of byte `pos` of text. */
void config_text_position(
        const char *text, size_t len, size_t pos, unsigned *ret_line, unsigned *ret_col);

/* ---- names of values (config.c) ---- */
/* "1G", "2M", "off", "auto"; NULL if out of range. */
const char *config_huge_pages_name(uint32_t policy);
/* "error", "warning", "notice", "info", "debug" for syslog levels 3..7. */
const char *config_log_level_name(uint32_t level);

#endif
