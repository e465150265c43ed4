/* The control socket's path rule (INTERFACE.md), shared by shmheapd,
 * shmheapctl and libshmheap: header-only, so the client library needs no
 * more than this file. */
#ifndef CONFIG_SOCKET_PATH_H
#define CONFIG_SOCKET_PATH_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/un.h>
#include <unistd.h>

/* Writes into buf: arg if given, else $SHMHEAP_SOCKET, else
 * /run/shmheap/shmheap.sock as root, else $XDG_RUNTIME_DIR/shmheap.sock,
 * else /tmp/shmheap-$UID.sock. Returns 0, or -ENAMETOOLONG when the path
 * does not fit buf or a sockaddr_un. */
static inline int socket_path_resolve(const char *arg, char *buf, size_t len)
{
    const char *env;
    int n;

    if (arg && *arg)
        n = snprintf(buf, len, "%s", arg);
    else if ((env = getenv("SHMHEAP_SOCKET")) && *env)
        n = snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        n = snprintf(buf, len, "/run/shmheap/shmheap.sock");
    else if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
        n = snprintf(buf, len, "%s/shmheap.sock", env);
    else
        n = snprintf(buf, len, "/tmp/shmheap-%u.sock", (unsigned) getuid());
    if (n < 0 || (size_t) n >= len || (size_t) n >= sizeof(((struct sockaddr_un *) 0)->sun_path))
        return -ENAMETOOLONG;
    return 0;
}

#endif
