/* Who is on the other end of a connection, and whether they may use us.
 *
 * Allowed: root, the daemon's own uid, allowed_uids, and anyone whose
 * primary or supplementary group is the daemon's own gid (under systemd
 * the group shmheap, which also owns the socket: SocketGroup=; not when
 * that is group 0, which grants nothing more than it did) or in
 * allowed_gids. Credentials come from
 * the socket (SO_PEERCRED, SO_PEERGROUPS): what the peer was when it
 * connected, with no race against pid reuse, unlike reading /proc. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "daemon/daemon.h"

#ifndef SO_PEERGROUPS
#    define SO_PEERGROUPS 59
#endif
#ifndef SO_PEERPIDFD
#    define SO_PEERPIDFD 77 /* Linux 6.5 */
#endif
#ifndef SYS_pidfd_open
#    define SYS_pidfd_open 434
#endif

#define PEER_MAX_GROUPS 1024

int peer_credentials(int fd, struct peer *ret)
{
    struct ucred uc;
    socklen_t len = sizeof(uc);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0)
        return -errno;
    ret->pid = uc.pid;
    ret->uid = uc.uid;
    ret->gid = uc.gid;
    return 0;
}

static bool id_listed(const uint32_t *ids, uint32_t n, uint32_t id)
{
    for (uint32_t i = 0; i < n && i < CONFIG_MAX_IDS; i++)
        if (ids[i] == id)
            return true;
    return false;
}

/* The peer's supplementary groups into groups[]; returns how many, or a
 * negative errno. SO_PEERGROUPS first; else the user database. */
static int peer_groups(int fd, const struct peer *p, gid_t *groups, int max)
{
    socklen_t len = (socklen_t) (sizeof(gid_t) * (size_t) max);
    struct passwd pw, *res = NULL;
    char buf[4096];
    int n = max;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
        return (int) (len / sizeof(gid_t));
    if (getpwuid_r(p->uid, &pw, buf, sizeof(buf), &res) != 0 || !res)
        return -ENOENT;
    if (getgrouplist(pw.pw_name, p->gid, groups, &n) < 0)
        return -ERANGE;
    return n;
}

/* The daemon's own group, if it admits its members (not group 0). */
static bool own_group(gid_t g)
{
    return g != 0 && g == getegid();
}

bool peer_allowed(const struct daemon *d, int fd, const struct peer *p, const char **ret_why)
{
    const struct config *c = &d->cfg;
    gid_t *groups;
    int n;

    if (p->uid == 0 || p->uid == geteuid())
        return true;
    if (id_listed(c->allowed_uids, c->n_allowed_uids, p->uid))
        return true;
    if (own_group(p->gid) || id_listed(c->allowed_gids, c->n_allowed_gids, p->gid))
        return true;
    *ret_why = "its uid is not root, the daemon's or in allowed_uids, and no group of it is the "
               "daemon's or in allowed_gids";
    if (c->n_allowed_gids == 0 && !own_group(getegid()))
        return false;
    groups = calloc(PEER_MAX_GROUPS, sizeof(*groups));
    if (!groups) {
        *ret_why = "out of memory while reading its groups";
        return false;
    }
    n = peer_groups(fd, p, groups, PEER_MAX_GROUPS);
    for (int i = 0; i < n; i++)
        if (own_group(groups[i]) || id_listed(c->allowed_gids, c->n_allowed_gids, groups[i])) {
            free(groups);
            return true;
        }
    free(groups);
    return false;
}

bool peer_is_admin(const struct peer *p)
{
    return p->uid == 0 || p->uid == geteuid();
}

int peer_pidfd(int fd, pid_t pid)
{
    socklen_t len = sizeof(int);
    int pidfd = -1;

    /* SO_PEERPIDFD names the very process that connected, even if its pid
     * has been reused since; pidfd_open(pid) is the fallback. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0 || pidfd < 0) {
        pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0)
            return -errno;
    }
    (void) fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    return pidfd;
}
