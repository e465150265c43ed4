/* producer: allocates messages in the shared heap and hands them to a
 * consumer process through a queue found by name (queue.h). The consumer
 * frees them: memory allocated in one process, freed in another.
 *
 *   build/examples/consumer &          # waits for the queue to appear
 *   build/examples/producer 100000     # sends 100000 messages
 *
 * Usage: producer [-s SOCKET] [COUNT]    (COUNT defaults to 100000) */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shmheap.h"

#include "examples/queue.h"

int main(int argc, char **argv)
{
    const char *socket_path = NULL;
    unsigned long count = 100000;
    shmheap_off_t qoff;
    struct queue *q;
    shmheap_t *h;
    int opt, r;

    while ((opt = getopt(argc, argv, "s:h")) != -1) {
        if (opt == 's') {
            socket_path = optarg;
        } else {
            fprintf(stderr, "usage: %s [-s SOCKET] [COUNT]\n", argv[0]);
            return opt == 'h' ? 0 : 2;
        }
    }
    if (optind < argc)
        count = strtoul(argv[optind], NULL, 10);

    r = shmheap_attach(socket_path, &h);
    if (r < 0) {
        fprintf(stderr, "producer: attach: %s: %s\n", shmheap_strerror(r), shmheap_last_error());
        return 1;
    }

    /* The queue lives in the heap; its offset is published under a name. */
    q = shmheap_calloc(h, 1, sizeof(*q));
    if (!q) {
        fprintf(stderr, "producer: cannot allocate the queue: %s\n", strerror(errno));
        return 1;
    }
    q->magic = QUEUE_MAGIC;
    qoff = shmheap_to_off(h, q);
    r = shmheap_root_set(h, QUEUE_ROOT, qoff);
    if (r < 0) {
        fprintf(stderr, "producer: root_set: %s\n", shmheap_strerror(r));
        return 1;
    }

    for (unsigned long seq = 0; seq < count; seq++) {
        char text[64];
        int len = snprintf(text, sizeof(text), "message %lu from %d", seq, (int) getpid());
        struct message *m = shmheap_malloc(h, sizeof(*m) + (size_t) len + 1);
        uint64_t tail = q->tail; /* only we write it */

        if (!m) {
            fprintf(stderr, "producer: out of shared memory at message %lu\n", seq);
            break;
        }
        m->seq = seq;
        m->producer_pid = (uint32_t) getpid();
        m->len = (uint32_t) len;
        memcpy(m->text, text, (size_t) len + 1);

        /* Wait for a free slot: acquire pairs with the consumer's release of head. */
        while (tail - __atomic_load_n(&q->head, __ATOMIC_ACQUIRE) >= QUEUE_SLOTS)
            sched_yield();
        q->slots[tail % QUEUE_SLOTS] = shmheap_to_off(h, m);
        /* release: the consumer that sees the new tail sees the slot and message. */
        __atomic_store_n(&q->tail, tail + 1, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&q->closed, 1, __ATOMIC_RELEASE);
    printf("producer %d: sent %lu messages through root \"%s\" (offset %#llx)\n", (int) getpid(),
           count, QUEUE_ROOT, (unsigned long long) qoff);

    /* The consumer frees the messages and the queue; detaching gives this
     * process's thread caches back to the heap. */
    shmheap_detach(h);
    return 0;
}
