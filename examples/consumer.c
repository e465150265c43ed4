/* consumer: waits for the queue the producer publishes under the root
 * "example.queue" (queue.h), reads every message, checks its sequence
 * number and frees it: objects allocated by another process, freed here.
 * When the producer is done it frees the queue and removes the root.
 *
 * Usage: consumer [-s SOCKET] [-v]     (-v prints every message) */
#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shmheap.h"

#include "examples/queue.h"

static struct queue *wait_for_queue(shmheap_t *h)
{
    const struct timespec pause = {.tv_nsec = 10 * 1000 * 1000};

    for (;;) {
        shmheap_off_t off;
        struct queue *q;

        if (shmheap_root_get(h, QUEUE_ROOT, &off) == 0 && (q = shmheap_from_off(h, off)) &&
            q->magic == QUEUE_MAGIC)
            return q;
        nanosleep(&pause, NULL);
    }
}

int main(int argc, char **argv)
{
    const char *socket_path = NULL;
    unsigned long received = 0, bad = 0;
    uint64_t expect = 0;
    struct shmheap_stats st;
    bool verbose = false;
    struct queue *q;
    shmheap_t *h;
    int opt, r;

    while ((opt = getopt(argc, argv, "s:vh")) != -1) {
        if (opt == 's') {
            socket_path = optarg;
        } else if (opt == 'v') {
            verbose = true;
        } else {
            fprintf(stderr, "usage: %s [-s SOCKET] [-v]\n", argv[0]);
            return opt == 'h' ? 0 : 2;
        }
    }

    r = shmheap_attach(socket_path, &h);
    if (r < 0) {
        fprintf(stderr, "consumer: attach: %s: %s\n", shmheap_strerror(r), shmheap_last_error());
        return 1;
    }
    q = wait_for_queue(h);

    for (;;) {
        uint64_t head = q->head; /* only we write it */
        /* acquire: pairs with the producer's release of tail. */
        uint64_t tail = __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE);

        if (head == tail) {
            /* acquire: pairs with the release of closed, after the last push. */
            if (__atomic_load_n(&q->closed, __ATOMIC_ACQUIRE) &&
                __atomic_load_n(&q->tail, __ATOMIC_ACQUIRE) == head)
                break;
            sched_yield();
            continue;
        }
        for (; head != tail; head++) {
            struct message *m = shmheap_from_off(h, q->slots[head % QUEUE_SLOTS]);

            if (!m || m->seq != expect) {
                fprintf(stderr, "consumer: bad message at %llu\n", (unsigned long long) head);
                bad++;
            } else if (verbose) {
                printf("%.*s\n", (int) m->len, m->text);
            }
            expect++;
            received++;
            shmheap_free(h, m); /* allocated by the producer, freed here */
        }
        /* release: the producer may reuse the slots we have read. */
        __atomic_store_n(&q->head, head, __ATOMIC_RELEASE);
    }

    /* Done: take the queue down. */
    (void) shmheap_root_set(h, QUEUE_ROOT, SHMHEAP_OFF_NULL);
    shmheap_free(h, q);
    if (shmheap_stats(h, &st) == 0)
        printf("consumer %d: received %lu messages (%lu bad); heap: %llu bytes in use, "
               "%llu committed\n",
               (int) getpid(), received, bad, (unsigned long long) st.bytes_in_use,
               (unsigned long long) st.bytes_committed);
    shmheap_detach(h);
    return bad ? 1 : 0;
}
