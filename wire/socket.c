/* Where the control socket is (INTERFACE.md's rule, the same for shmheapd,
 * shmheapctl and libshmheap) and connecting to it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "wire/wire.h"

_Static_assert(sizeof(((struct sockaddr_un *) 0)->sun_path) == WIRE_PATH_MAX,
               "WIRE_PATH_MAX is the size of sun_path");

int wire_socket_path(const char *arg, char *buf, size_t len)
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
    if (n < 0 || (size_t) n >= len || (size_t) n >= WIRE_PATH_MAX)
        return -ENAMETOOLONG;
    return 0;
}

int wire_connect(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    int fd, r;

    if (n >= sizeof(addr.sun_path))
        return -ENAMETOOLONG;
    memcpy(addr.sun_path, path, n + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    do {
        r = connect(fd, (struct sockaddr *) &addr, sizeof(addr));
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        r = -errno;
        (void) close(fd);
        return r;
    }
    return fd;
}
