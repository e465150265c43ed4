/* The Prometheus text exposition format (version 0.0.4) of shmheap's
 * figures: the one generator behind both shmheapd's GET /metrics and
 * `shmheapctl stats --prometheus`.
 *
 * Its input is the "stats" object of the stats op's reply
 * (docs/PROTOCOL.md), as the daemon builds it (u64 fields are raw cJSON
 * numbers) or as shmheapctl parses it from the wire (plain numbers): both
 * are read. Names are prefixed shmheap_, bytes end in _bytes, counters in
 * _total; each family has one HELP and one TYPE line before its samples.
 * Size classes are labelled class="<object size>", segments
 * segment="<index>",page_size="2M", clients client_id="<id>",pid="<pid>".
 * Fields the object lacks are left out. Library code: it never logs. */
#ifndef PROM_PROM_H
#define PROM_PROM_H

#include <stddef.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Writes the exposition of `stats` to f. Returns 0, -EINVAL when stats is
 * not a JSON object, or -EIO when writing to f failed. */
int prom_render(FILE *f, const cJSON *stats);

/* The same into a malloc'd, NUL-terminated buffer (*ret_len bytes without
 * the NUL). Returns 0, -EINVAL or -ENOMEM; *ret_text and *ret_len are
 * written only on success. */
int prom_render_text(const cJSON *stats, char **ret_text, size_t *ret_len);

#endif
