/* The queue the producer and consumer examples share: a single-producer,
 * single-consumer ring of object offsets, itself allocated in the heap and
 * found by the root name "example.queue".
 *
 * Offsets (shmheap_off_t), never pointers, go into shared memory: each
 * process maps the heap at its own address and turns an offset into a
 * pointer with shmheap_from_off().
 *
 * Memory order: the producer writes a message and its slot, then advances
 * `tail` with release; the consumer loads `tail` with acquire, so it sees
 * the slot and the message. The consumer advances `head` with release after
 * it has read the slot; the producer loads `head` with acquire before it
 * reuses the slot. */
#ifndef EXAMPLES_QUEUE_H
#define EXAMPLES_QUEUE_H

#include <stdint.h>

#include "shmheap.h"

#define QUEUE_ROOT  "example.queue"
#define QUEUE_MAGIC UINT64_C(0x4555455551584d45) /* "EMXQUEUE" */
#define QUEUE_SLOTS 1024u                        /* a power of two */

struct queue {
    uint64_t magic;
    uint64_t closed; /* the producer is done: set with release after its last push */
    uint64_t head __attribute__((aligned(64))); /* next slot to read: consumer's */
    uint64_t tail __attribute__((aligned(64))); /* next slot to write: producer's */
    shmheap_off_t slots[QUEUE_SLOTS] __attribute__((aligned(64)));
};

/* One message: allocated by the producer, freed by the consumer. */
struct message {
    uint64_t seq;
    uint32_t producer_pid;
    uint32_t len; /* of text, without the NUL */
    char text[];
};

#endif
