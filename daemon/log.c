/* The daemon's log: one line per event on stderr.
 *
 * Under systemd (stderr is the journal stream named by $JOURNAL_STREAM) each
 * line starts with an sd-daemon level prefix such as "<6>", which journald
 * turns into the priority; elsewhere with a word ("info: "). Each line is
 * formatted first and written with one write(2), so lines from the loop
 * and from elsewhere never interleave. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/daemon.h"

static int log_threshold = LOG_INFO;
static bool log_journal;

void log_init(void)
{
    const char *e = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;

    if (e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
        (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino)
        log_journal = true;
}

void log_set_level(uint32_t level)
{
    log_threshold = (int) level;
}

void log_msg(int level, const char *fmt, ...)
{
    static const char *const words[] = {"emerg",   "alert",  "crit", "error",
                                        "warning", "notice", "info", "debug"};
    char buf[2048];
    int saved = errno, n;
    size_t o;
    va_list ap;

    if (level > log_threshold)
        return;
    if (level < 0 || level > 7)
        level = LOG_ERR;
    if (log_journal)
        n = snprintf(buf, sizeof(buf), "<%d>", level);
    else
        n = snprintf(buf, sizeof(buf), "%s: ", words[level]);
    o = n > 0 ? (size_t) n : 0;
    va_start(ap, fmt);
    errno = saved; /* so that %m works */
    n = vsnprintf(buf + o, sizeof(buf) - o - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    o += (size_t) n < sizeof(buf) - o - 1 ? (size_t) n : sizeof(buf) - o - 2;
    /* One event, one line: no message may break the line structure. */
    for (size_t i = 0; i < o; i++)
        if (buf[i] == '\n')
            buf[i] = ' ';
    buf[o++] = '\n';
    while (write(STDERR_FILENO, buf, o) < 0 && errno == EINTR)
        ;
    errno = saved;
}

const char *page_size_name(uint64_t page_size, char *buf, size_t len)
{
    if (page_size == (UINT64_C(1) << 30))
        return "1G";
    if (page_size == (UINT64_C(1) << 21))
        return "2M";
    if (page_size == 4096)
        return "4K";
    (void) snprintf(buf, len, "%" PRIu64, page_size);
    return buf;
}

const char *bytes_name(uint64_t bytes, char *buf, size_t len)
{
    static const char units[] = "KMGT";

    for (int i = 3; i >= 0; i--) {
        uint64_t u = UINT64_C(1) << (10 * (i + 1));

        if (bytes >= u && bytes % u == 0) {
            (void) snprintf(buf, len, "%" PRIu64 "%c", bytes / u, units[i]);
            return buf;
        }
    }
    (void) snprintf(buf, len, "%" PRIu64, bytes);
    return buf;
}
