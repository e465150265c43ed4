/* What every service test file used to repeat around daemon_fixture.h: the
 * small config most tests run with, starting a daemon or failing the test
 * with the reason, finishing (verify, then a clean stop), hello, and
 * checking a reply's error code.
 *
 * Usage:
 *     struct daemon_fixture f;
 *     fixture_start(&f, "\"max_segments\": 3");   // NULL: FIXTURE_SMALL alone
 *     h = fixture_attach(&f);                      // libshmheap, or a raw connection:
 *     fd = daemon_connect(f.socket_path);
 *     expect_reply(fixture_hello(fd, fds, &nfds), NULL);
 *     expect_reply(daemon_call(fd, "{\"op\":\"nope\"}", NULL, NULL), "unknown_op");
 *     fixture_finish(&f);                         // or fixture_stop(&f) */
#ifndef TESTS_SERVICE_FIXTURE_H
#define TESTS_SERVICE_FIXTURE_H

#include <cjson/cJSON.h>

#include "shmheap.h"
#include "tests/service/daemon_fixture.h"

/* Config members for a test daemon: 4K pages (the huge page pool is for the
 * tests of huge pages) and 64 MiB segments. */
#define FIXTURE_SMALL "\"segment_size\": 67108864, \"huge_pages\": \"off\""

/* Starts a daemon with {FIXTURE_SMALL, extra_json} (extra_json: more
 * members, or NULL) and the extra arguments (NULL-terminated, may be NULL);
 * a daemon that does not start fails the test, saying why. */
void fixture_start(struct daemon_fixture *f, const char *extra_json);
void fixture_start_args(struct daemon_fixture *f,
                        const char *extra_json,
                        const char *const *extra_args);
/* Stops the daemon; it must exit cleanly (status 0). */
void fixture_stop(struct daemon_fixture *f);
/* The verify op must find the heap consistent (its problems go to stderr
 * if not). */
void fixture_verify(const struct daemon_fixture *f);
/* fixture_verify, then fixture_stop. */
void fixture_finish(struct daemon_fixture *f);

/* A libshmheap attachment to f's daemon; a failure fails the test with
 * shmheap_last_error(). (In a forked child, use MP_REQUIRE instead.) */
shmheap_t *fixture_attach(const struct daemon_fixture *f);

/* One request, printf-style, on a connection of its own (no hello) to f's
 * daemon: the parsed reply; no reply fails the test. */
cJSON *fixture_op(const struct daemon_fixture *f, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/* Blocks claimed (slabs and runs) in every segment of f's heap, from the
 * `segments` op: 0 when everything is free. */
uint64_t fixture_claimed_blocks(const struct daemon_fixture *f);

/* hello (protocol version 1, this process's pid) on fd: the reply, NULL on
 * a transport failure; fds as daemon_call (NULL: closed). */
cJSON *fixture_hello(int fd, int *ret_fds, int *ret_nfds);

/* The reply must be ok (code NULL) or a failure with this code and a
 * message; deletes it. A NULL reply (no reply) fails the test. */
void expect_reply(cJSON *reply, const char *code);

#endif
