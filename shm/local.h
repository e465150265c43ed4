/* A heap owned by this process, without a daemon: for the tests, the
 * benchmark and embedding. The creating process is the owner; processes it
 * forks afterwards inherit the segment fds and attach for themselves with
 * heap_local_attach. Only the creating process can grow the heap (its
 * children see -ENOSPC once the segments they know are full), so size the
 * first segment for the whole job; it is virtual until touched. */
#ifndef SHM_LOCAL_H
#define SHM_LOCAL_H

#include <stdint.h>

#include "shm/heap.h"

struct heap_local;

/* Creates a control segment and one heap segment of cfg->segment_size
 * bytes backed by pages by `policy` (enum shm_page_policy). cfg NULL: the
 * built-in defaults. */
int heap_local_create(const struct shm_config *cfg, int policy, struct heap_local **ret_local);
/* Attaches this process (call it again in each forked child). */
int heap_local_attach(struct heap_local *l, uint64_t client_id, struct heap **ret_heap);
/* The control segment fd and the fd of heap segment `index` (borrowed). */
int heap_local_ctl_fd(const struct heap_local *l);
int heap_local_segment_fd(const struct heap_local *l, uint32_t index);
/* Closes the fds; attachments stay valid until detached. */
void heap_local_destroy(struct heap_local *l);

#endif
