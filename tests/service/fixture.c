/* The per-test boilerplate of the service suites (fixture.h). */
#include <check.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tests/service/fixture.h"

void fixture_start_args(struct daemon_fixture *f,
                        const char *extra_json,
                        const char *const *extra_args)
{
    char cfg[1024];
    int r;

    r = snprintf(cfg, sizeof(cfg), "{" FIXTURE_SMALL "%s%s}", extra_json ? ", " : "",
                 extra_json ? extra_json : "");
    ck_assert_msg(r > 0 && (size_t) r < sizeof(cfg), "fixture_start: config too long");
    r = daemon_start_args(f, cfg, extra_args);
    ck_assert_msg(r == 0, "daemon_start: %s (config %s, log %s)", strerror(-r), cfg, f->log_path);
}

void fixture_start(struct daemon_fixture *f, const char *extra_json)
{
    fixture_start_args(f, extra_json, NULL);
}

void fixture_stop(struct daemon_fixture *f)
{
    daemon_stop(f);
    ck_assert_msg(f->clean_exit, "shmheapd did not exit cleanly (wait status 0x%x)", f->status);
}

void fixture_verify(const struct daemon_fixture *f)
{
    cJSON *r = daemon_call_once(f->socket_path, "{\"op\":\"verify\"}"), *p;
    const cJSON *consistent = cJSON_GetObjectItemCaseSensitive(r, "consistent");

    ck_assert_msg(r != NULL, "verify: no reply");
    ck_assert_msg(reply_is_ok(r), "verify refused: %s", reply_error_message(r));
    if (!cJSON_IsTrue(consistent)) {
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(r, "problems"))
        {
            fprintf(stderr, "verify: %s\n", cJSON_IsString(p) ? p->valuestring : "?");
        }
    }
    ck_assert_msg(cJSON_IsTrue(consistent), "the daemon's verify found problems (see stderr)");
    cJSON_Delete(r);
}

void fixture_finish(struct daemon_fixture *f)
{
    fixture_verify(f);
    fixture_stop(f);
}

shmheap_t *fixture_attach(const struct daemon_fixture *f)
{
    shmheap_t *h = NULL;
    int r = shmheap_attach(f->socket_path, &h);

    ck_assert_msg(r == 0, "attach: %s: %s", shmheap_strerror(r), shmheap_last_error());
    return h;
}

cJSON *fixture_op(const struct daemon_fixture *f, const char *fmt, ...)
{
    char line[1024];
    cJSON *reply;
    va_list ap;

    va_start(ap, fmt);
    (void) vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    reply = daemon_call_once(f->socket_path, line);
    ck_assert_msg(reply != NULL, "request %s: no reply", line);
    return reply;
}

cJSON *fixture_hello(int fd, int *ret_fds, int *ret_nfds)
{
    char line[64];

    /* The protocol's version, written out: the tests pin what the wire says. */
    (void) snprintf(line, sizeof(line), "{\"op\":\"hello\",\"version\":1,\"pid\":%d}",
                    (int) getpid());
    return daemon_call(fd, line, ret_fds, ret_nfds);
}

void expect_reply(cJSON *reply, const char *code)
{
    ck_assert_msg(reply, "no reply (expected %s)", code ? code : "ok");
    if (!code) {
        ck_assert_msg(reply_is_ok(reply), "expected ok, got %s (%s)", reply_error_code(reply),
                      reply_error_message(reply));
    } else {
        ck_assert_msg(!reply_is_ok(reply) && reply_error_code(reply) &&
                              strcmp(reply_error_code(reply), code) == 0,
                      "expected %s, got %s (%s)", code, reply_error_code(reply),
                      reply_error_message(reply));
        /* A message is a sentence, not a placeholder. */
        ck_assert_msg(reply_error_message(reply) && strlen(reply_error_message(reply)) > 5,
                      "%s without a message", code);
    }
    cJSON_Delete(reply);
}

/* A number of a segment's object in the `segments` reply. */
static uint64_t segment_number(const cJSON *seg, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(seg, name);

    ck_assert_msg(cJSON_IsNumber(v), "no number %s in a segment", name);
    return (uint64_t) v->valuedouble;
}

uint64_t fixture_claimed_blocks(const struct daemon_fixture *f)
{
    cJSON *r = fixture_op(f, "{\"op\":\"segments\"}"), *seg;
    uint64_t n = 0;

    ck_assert(reply_is_ok(r));
    cJSON_ArrayForEach(seg, cJSON_GetObjectItemCaseSensitive(r, "segments"))
    {
        uint64_t blocks = segment_number(seg, "size") >> 16;
        uint64_t reserved = (segment_number(seg, "metadata_bytes") + 65535) >> 16;

        n += blocks - reserved - segment_number(seg, "free_blocks");
    }
    cJSON_Delete(r);
    return n;
}
