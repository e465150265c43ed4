/* Pressure stall information (PSI): how much of the last ten seconds some
 * task waited for memory. The kernel writes (Documentation/accounting/
 * psi.rst):
 *     some avg10=0.00 avg60=0.00 avg300=0.00 total=0
 *     full avg10=0.00 avg60=0.00 avg300=0.00 total=0
 * in /proc/pressure/memory, and the same per cgroup in memory.pressure.
 * A kernel without CONFIG_PSI has no file (ENOENT); one booted with psi=0
 * has the file but refuses reads (EOPNOTSUPP). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon/daemon.h"

int pressure_some_avg10(const char *path, double *ret)
{
    char buf[512];
    const char *p;
    ssize_t n;
    double v;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    n = read(fd, buf, sizeof(buf) - 1);
    if (n < 0)
        r = -errno;
    (void) close(fd);
    if (r < 0)
        return r;
    buf[n] = 0;
    p = strstr(buf, "some avg10=");
    if (!p || (p != buf && p[-1] != '\n') || sscanf(p, "some avg10=%lf", &v) != 1 || v < 0 ||
        v > 100)
        return -EBADMSG;
    *ret = v;
    return 0;
}
