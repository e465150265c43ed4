/* UTF-8 for messages and replies: every reply is valid UTF-8 JSON, so any
 * text that goes into one (a message that names an untrusted key, a config
 * file's text) is checked, cut on character boundaries, and never copied
 * raw when it is not UTF-8. Shared by shmheapd and shmheapctl (config/ is
 * the lowest module both link). */
#ifndef CONFIG_UTF8_H
#define CONFIG_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above
 * U+10FFFF, no truncated sequence. Checks len bytes (NUL is a character). */
bool utf8_valid(const char *s, size_t len);
/* The byte offset of the first invalid sequence in s[0..len), or len. */
size_t utf8_valid_prefix(const char *s, size_t len);
/* The length of the longest prefix of the NUL-terminated s that has at
 * most max bytes and does not end inside a multi-byte character; for use
 * as "%.*s". (Only the lead bytes matter: invalid text is cut somewhere,
 * and utf8_sanitize() deals with it.) */
size_t utf8_prefix(const char *s, size_t max);
/* Makes the NUL-terminated message buf valid UTF-8 in place: each byte of
 * an invalid or truncated sequence becomes '?'. If the text was cut (the
 * formatter wanted `wanted` bytes, 0 if unknown, and buf holds size - 1),
 * the end is moved back to a character boundary and "..." appended. */
void utf8_sanitize(char *buf, size_t size, size_t wanted);

#endif
