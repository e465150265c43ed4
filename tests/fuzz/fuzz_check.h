/* What every fuzz target asks of a reply, and the pieces the targets share.
 *
 * A reply is one line of valid UTF-8 (checked here by a decoder of its
 * own, not by config/utf8.c, the code under test), that parses as a JSON
 * object with a boolean "ok"; a failure also has "error" with a non-empty
 * snake_case "code" and a non-empty "message". A broken rule prints the
 * reply and aborts, which libFuzzer (or the replay driver) reports as a
 * crash with the input that caused it. */
#ifndef TESTS_FUZZ_FUZZ_CHECK_H
#define TESTS_FUZZ_FUZZ_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* Checks one reply line (without its '\n'); returns the parsed reply, which
 * the caller deletes. Never returns on a broken rule. */
cJSON *fuzz_check_reply(const char *line, size_t len);
/* Checks that s[0..len) is strict UTF-8 (RFC 3629); aborts naming `what`. */
void fuzz_check_utf8(const char *what, const char *s, size_t len);
/* Prints a message and the offending text (escaped), then aborts. */
void fuzz_fail(const char *why, const char *text, size_t len) __attribute__((noreturn));

/* Each target's name ("proto", "config"): the replay driver reads
 * tests/fuzz/corpus/<name> and tests/fuzz/crashes/<name>. */
extern const char fuzz_target_name[];
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
