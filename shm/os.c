/* System calls of the heap core; see os.h. */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/magic.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "shm/atomic.h"
#include "shm/os.h"

#ifndef F_SEAL_FUTURE_WRITE
#    define F_SEAL_FUTURE_WRITE 0x0010 /* Linux 5.1 */
#endif
#ifndef MFD_HUGE_2MB
#    define MFD_HUGE_2MB (21 << 26)
#endif
#ifndef MFD_HUGE_1GB
#    define MFD_HUGE_1GB (30 << 26)
#endif

int os_memfd(const char *name, uint64_t page_size)
{
    unsigned flags = MFD_CLOEXEC;
    int fd;

    /* Sealable whatever the pages (hugetlb memfds are since Linux 4.16). */
    flags |= MFD_ALLOW_SEALING;
    if (page_size == (UINT64_C(1) << 21))
        flags |= MFD_HUGETLB | MFD_HUGE_2MB;
    else if (page_size == (UINT64_C(1) << 30))
        flags |= MFD_HUGETLB | MFD_HUGE_1GB;
    fd = memfd_create(name, flags);
    if (fd < 0)
        return -errno;
    return fd;
}

int os_truncate(int fd, uint64_t size)
{
    if (ftruncate(fd, (off_t) size) < 0)
        return -errno;
    return 0;
}

int os_seal_size(int fd)
{
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        return -errno;
    return 0;
}

int os_seal_read_only(int fd)
{
    /* FUTURE_WRITE, not WRITE: the owner's own writable mapping, made
     * before, stays; every later mmap with PROT_WRITE and MAP_SHARED, and
     * every mprotect to PROT_WRITE of a shared mapping, is refused (the
     * kernel clears VM_MAYWRITE), and so are write(2) and fallocate. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0)
        return -errno;
    return 0;
}

int os_map_read_only_at(void *addr, uint64_t len, int fd)
{
    void *m = mmap(addr, len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);

    return m == MAP_FAILED ? -errno : 0;
}

int os_file_open_read_only(int dir_fd, const char *name)
{
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

    return fd < 0 ? -errno : fd;
}

int os_file_open(int dir_fd, const char *name)
{
    int fd = openat(dir_fd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);

    return fd < 0 ? -errno : fd;
}

int os_fstat_size(int fd, uint64_t *ret_size, uint64_t *ret_allocated)
{
    struct stat st;

    if (fstat(fd, &st) < 0)
        return -errno;
    if (ret_size)
        *ret_size = (uint64_t) st.st_size;
    if (ret_allocated)
        *ret_allocated = (uint64_t) st.st_blocks * 512;
    return 0;
}

int os_commit(int fd, uint64_t off, uint64_t len)
{
    int r;

    do
        r = fallocate(fd, 0, (off_t) off, (off_t) len);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno == ENOSPC ? -ENOMEM : -errno;
    return 0;
}

int os_decommit(int fd, uint64_t off, uint64_t len)
{
    int r;

    do
        r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) off, (off_t) len);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

int os_reserve(uint64_t len, uint64_t align, void **ret_addr)
{
    uintptr_t p, a;
    void *m;

    m = mmap(NULL, len + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -errno;
    p = (uintptr_t) m;
    a = (p + align - 1) & ~(uintptr_t) (align - 1);
    /* Trim the slack on both sides so the reservation is exactly len. */
    if (a > p)
        (void) munmap(m, a - p);
    if (p + align > a)
        (void) munmap((void *) (a + len), p + align - a);
    *ret_addr = (void *) a;
    return 0;
}

void os_unreserve(void *addr, uint64_t len)
{
    (void) munmap(addr, len);
}

int os_map_at(void *addr, uint64_t len, int fd)
{
    /* MAP_NORESERVE: hugetlb pages are reserved block by block with
     * os_commit, not for the whole virtual size at once. */
    void *m =
            mmap(addr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE, fd, 0);

    if (m == MAP_FAILED)
        return -errno;
    return 0;
}

int os_unmap_at(void *addr, uint64_t len)
{
    void *m = mmap(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
                   -1, 0);

    return m == MAP_FAILED ? -errno : 0;
}

void os_advise_hugepage(void *addr, uint64_t len)
{
    /* Best effort: tmpfs honours it only when shmem_enabled allows. */
    (void) madvise(addr, len, MADV_HUGEPAGE);
}

int os_membarrier_register(void)
{
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) < 0)
        return -errno;
    return 0;
}

int os_membarrier(void)
{
    /* Expedited reaches every CPU running a thread of a registered process
     * (every attached client registers); the plain global command is the
     * slower fallback that reaches everyone. */
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0)
        return 0;
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0)
        return 0;
    return -errno;
}

bool os_pid_alive(pid_t pid)
{
    if (pid <= 0)
        return false;
    return kill(pid, 0) == 0 || errno == EPERM;
}

uint64_t os_now_ns(void)
{
    struct timespec ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

int os_tid(void)
{
    return (int) syscall(SYS_gettid);
}

int os_futex_lock_pi(uint32_t *word, const struct timespec *deadline)
{
    return syscall(SYS_futex, word, FUTEX_LOCK_PI, 0, deadline, NULL, 0) < 0 ? -errno : 0;
}

int os_futex_unlock_pi(uint32_t *word)
{
    return syscall(SYS_futex, word, FUTEX_UNLOCK_PI, 0, NULL, NULL, 0) < 0 ? -errno : 0;
}

void os_realtime_deadline(uint32_t ms, struct timespec *ret)
{
    (void) clock_gettime(CLOCK_REALTIME, ret);
    ret->tv_sec += ms / 1000;
    ret->tv_nsec += (long) (ms % 1000) * 1000000;
    if (ret->tv_nsec >= 1000000000) {
        ret->tv_sec++;
        ret->tv_nsec -= 1000000000;
    }
}

bool os_realtime_passed(const struct timespec *deadline)
{
    struct timespec now;

    (void) clock_gettime(CLOCK_REALTIME, &now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

void os_nap_us(uint32_t us)
{
    struct timespec ts = {us / 1000000, (long) (us % 1000000) * 1000};

    (void) nanosleep(&ts, NULL);
}

/* ---- files in a state directory (adopt.c) ---- */

int os_file_create(int dir_fd, const char *name)
{
    int fd;

    /* A leftover of a creation cut short is ours to replace. */
    if (unlinkat(dir_fd, name, 0) < 0 && errno != ENOENT)
        return -errno;
    fd = openat(dir_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    return fd < 0 ? -errno : fd;
}

int os_file_rename(int dir_fd, const char *from, const char *to)
{
    return renameat(dir_fd, from, dir_fd, to) < 0 ? -errno : 0;
}

uint64_t os_dir_page_size(int dir_fd)
{
    struct statfs sf;

    /* hugetlbfs files come in the mount's page size; anything else (tmpfs)
     * in normal pages. */
    if (fstatfs(dir_fd, &sf) == 0 && (uint64_t) sf.f_type == HUGETLBFS_MAGIC)
        return (uint64_t) sf.f_bsize;
    return 4096;
}

int os_affinity_save(cpu_set_t *ret_set)
{
    if (sched_getaffinity(0, sizeof(*ret_set), ret_set) < 0)
        return -errno;
    return 0;
}

int os_pin_cpu(unsigned cpu)
{
    cpu_set_t set;

    if (cpu >= CPU_SETSIZE)
        return -EINVAL;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    /* On return the calling thread runs on cpu: the kernel migrates it
     * before it goes back to user space. */
    if (sched_setaffinity(0, sizeof(set), &set) < 0)
        return -errno;
    return 0;
}

int os_affinity_restore(const cpu_set_t *set)
{
    if (sched_setaffinity(0, sizeof(*set), set) < 0)
        return -errno;
    return 0;
}

int os_current_cpu(void)
{
    int cpu = sched_getcpu();

    return cpu < 0 ? -errno : cpu;
}
