/* Error codes and messages: shmheap_strerror(), the thread-local detail
 * message behind shmheap_last_error(), and errno -> SHMHEAP_E* mapping. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "shmheap.h"

#include "client/client.h"

static __thread char last_error[512];

void client_set_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    (void) vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
}

void client_clear_error(void)
{
    last_error[0] = 0;
}

int client_errno_code(int neg_errno)
{
    switch (-neg_errno) {
    case 0:
        return 0;
    case EINVAL:
    case EFAULT:
    case EBADMSG: /* a bad offset or a corrupt structure named by the caller */
        return -SHMHEAP_EINVAL;
    case ENOMEM:
        return -SHMHEAP_ENOMEM;
    case ENOENT:
        return -SHMHEAP_ENOENT;
    case EEXIST:
        return -SHMHEAP_EEXIST;
    case ENOSPC:
    case EMFILE: /* no free thread-cache slot */
        return -SHMHEAP_ENOSPC;
    case ENAMETOOLONG:
        return -SHMHEAP_ENAMETOOLONG;
    case EPROTO:
    case EBADF: /* heap_attach: the fd is not a heap this library knows */
        return -SHMHEAP_EPROTO;
    case ESTALE:
        return -SHMHEAP_EFORKED;
    case EACCES:
    case EPERM:
        return -SHMHEAP_EDENIED;
    default:
        return -SHMHEAP_EIO;
    }
}

SHMHEAP_EXPORT const char *shmheap_strerror(int code)
{
    static const char *const names[_SHMHEAP_EMAX] = {
            [SHMHEAP_OK] = "success",
            [SHMHEAP_EINVAL] = "invalid argument",
            [SHMHEAP_ENOMEM] = "out of memory",
            [SHMHEAP_ECONNECT] = "cannot connect to shmheapd",
            [SHMHEAP_EPROTO] = "protocol or layout version mismatch with shmheapd",
            [SHMHEAP_EDENIED] = "permission denied by shmheapd",
            [SHMHEAP_EFORKED] = "handle used in a forked child; attach again",
            [SHMHEAP_ENOENT] = "no such root, arena or pool",
            [SHMHEAP_EEXIST] = "already exists",
            [SHMHEAP_ENOSPC] = "a fixed-size table is full",
            [SHMHEAP_ENAMETOOLONG] = "root name too long (55 bytes at most)",
            [SHMHEAP_EDAEMON] = "shmheapd refused the request",
            [SHMHEAP_EIO] = "connection to shmheapd failed",
    };

    long c = code < 0 ? -(long) code : code;

    if (c >= _SHMHEAP_EMAX || !names[c])
        return "unknown error";
    return names[c];
}

SHMHEAP_EXPORT const char *shmheap_last_error(void)
{
    return last_error;
}
