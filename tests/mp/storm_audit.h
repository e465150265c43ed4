/* The storm's diagnostic: a snapshot of what a killed process left in
 * shared memory, taken before its reclaim (storm_audit.c). */
#ifndef TESTS_MP_STORM_AUDIT_H
#define TESTS_MP_STORM_AUDIT_H

#include <stddef.h>
#include <stdint.h>

struct heap;

/* Writes the snapshot of process pid's slots, the journals and the
 * recyclers into buf (at most cap bytes, NUL-terminated); returns its
 * length, and in *ret_anomalies how many objects were reachable twice or
 * while their slab counted them free. Reads only. */
size_t storm_audit(struct heap *h, uint32_t pid, char *buf, size_t cap, uint32_t *ret_anomalies);

#endif
