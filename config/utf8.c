/* UTF-8 checks and character-boundary cuts for messages (see utf8.h). */
#include <stdint.h>
#include <string.h>

#include "config/utf8.h"

/* The length of the valid sequence at s[0..len), or 0 if there is none. */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
    unsigned char b = s[0];
    size_t n;
    uint32_t cp;

    if (b < 0x80)
        return 1;
    if ((b & 0xe0) == 0xc0)
        n = 1, cp = b & 0x1f;
    else if ((b & 0xf0) == 0xe0)
        n = 2, cp = b & 0x0f;
    else if ((b & 0xf8) == 0xf0)
        n = 3, cp = b & 0x07;
    else
        return 0;
    if (n >= len)
        return 0;
    for (size_t k = 1; k <= n; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3f);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n + 1;
}

size_t utf8_valid_prefix(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *) s;
    size_t i = 0;

    while (i < len) {
        size_t n = utf8_seq(u + i, len - i);

        if (n == 0)
            return i;
        i += n;
    }
    return len;
}

bool utf8_valid(const char *s, size_t len)
{
    return utf8_valid_prefix(s, len) == len;
}

size_t utf8_prefix(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);

    if (n <= max)
        return n;
    /* s[max] is the first byte left out: back up while it continues a
     * character, so that the cut falls before that character's lead. */
    n = max;
    while (n > 0 && ((unsigned char) s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

void utf8_sanitize(char *buf, size_t size, size_t wanted)
{
    unsigned char *u = (unsigned char *) buf;
    size_t len, i = 0;

    if (!buf || size == 0)
        return;
    len = strnlen(buf, size - 1);
    buf[len] = 0;
    if (wanted > len && size > 4) {
        /* Cut: end on a character boundary with room for "...". */
        size_t keep = len < size - 4 ? len : size - 4;

        while (keep > 0 && (u[keep] & 0xc0) == 0x80)
            keep--;
        memcpy(buf + keep, "...", 4);
        len = keep + 3;
    }
    while (i < len) {
        size_t n = utf8_seq(u + i, len - i);

        if (n == 0) {
            u[i++] = '?';
            continue;
        }
        i += n;
    }
}
