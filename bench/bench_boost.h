/* The Boost.Interprocess column: C entry points that bench/alloc.h calls,
 * implemented in bench/bench_boost.cpp (C++, header-only Boost). */
#ifndef BENCH_BENCH_BOOST_H
#define BENCH_BENCH_BOOST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct bb_seg; /* one managed_shared_memory segment */

/* Creates a managed_shared_memory of BENCH_BOOST_SEGMENT bytes (256 MiB)
 * under a fresh name, which is removed at once: the mapping stays, and
 * children forked later share it. 0 or a negative errno. */
int bb_create(struct bb_seg **ret);
/* Unmaps it (in the process that created it). */
void bb_destroy(struct bb_seg *s);

/* managed_shared_memory::allocate(n, std::nothrow) and deallocate(p). */
void *bb_malloc(struct bb_seg *s, size_t n);
void bb_free(struct bb_seg *s, void *p);

/* get_handle_from_address / get_address_from_handle: offsets from the
 * segment's start, as shmheap's heap_to_off; never 0 for an object. */
uint64_t bb_to_handle(struct bb_seg *s, void *p);
void *bb_from_handle(struct bb_seg *s, uint64_t v);

/* check_sanity() and all_memory_deallocated(): 0, else -EIO (on stderr). */
int bb_verify(struct bb_seg *s);
/* Version, after checking that allocations land in the segment. */
int bb_info(char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
