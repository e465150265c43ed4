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

int os_mutex_init_robust(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    int r;

    r = pthread_mutexattr_init(&attr);
    if (r)
        return -r;
    r = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (!r)
        r = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    /* Priority inheritance makes the kernel track the owner: a plain
     * robust futex can strand a sleeping waiter when the thread it woke is
     * killed before taking the lock while another takes it on the fast
     * path (found by death_random_kill_trimmer). Uncontended, a PI lock is
     * still one CAS and no system call. */
    if (!r)
        r = pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT);
    if (!r)
        r = pthread_mutex_init(m, &attr);
    (void) pthread_mutexattr_destroy(&attr);
    return -r;
}

/* The kind glibc gives a mutex os_mutex_init_robust made, read from one
 * made here (glibc keeps it in __data.__kind). */
static int robust_kind(void)
{
    static int kind = -1;
    int k = load_relaxed(&kind);
    pthread_mutex_t ref;

    if (k >= 0)
        return k;
    if (os_mutex_init_robust(&ref) < 0)
        return -1;
    k = ref.__data.__kind;
    (void) pthread_mutex_destroy(&ref);
    /* Relaxed: every thread computes the same value. */
    store_relaxed(&kind, k);
    return k;
}

/* Why not pthread_mutex_lock or _timedlock: when the word is taken they
 * ask the kernel (FUTEX_LOCK_PI), and a word naming a thread that does not
 * exist and not marked owner-died (a word a client wrote) makes the kernel
 * answer ESRCH, on which glibc (2.36) fails an assert and aborts: for a
 * robust mutex it "cannot" happen. trylock asks the kernel only when the
 * owner-died bit is set, which it handles (EOWNERDEAD). So: trylock, and
 * while the word is taken, look at it once (a local), and poll until the
 * deadline. */
int os_mutex_lock_guarded(pthread_mutex_t *mx, uint32_t wait_ms, struct os_lock_guard *g)
{
    unsigned *word = (unsigned *) &mx->__data.__lock;
    uint64_t deadline = os_now_ns() + (uint64_t) wait_ms * 1000000u, nap_ns = 20000;
    int want = robust_kind(), kind = load_relaxed(&mx->__data.__kind);

    g->dead_tid = 0;
    g->kind_fixed = false;
    g->word = 0;
    /* Another kind makes glibc take another path (a normal lock, no robust
     * list, or EINVAL): put the kind back (CAS: once, whatever races). */
    if (want >= 0 && kind != want && cas_strong_relaxed(&mx->__data.__kind, &kind, want))
        g->kind_fixed = true;
    for (;;) {
        int r = pthread_mutex_trylock(mx);
        unsigned w;
        pid_t tid;

        if (r != EBUSY)
            return r;
        w = load_relaxed(word);
        tid = (pid_t) (w & FUTEX_TID_MASK);
        /* Held by a thread that does not exist, and the kernel did not mark
         * it owner-died (it would have, had that thread died holding it):
         * a written word. It becomes a dead holder's, so the next trylock
         * gets EOWNERDEAD and the caller recovers as after any dead holder.
         * A live tid is waited for: the word may be true. */
        if (tid && !(w & FUTEX_OWNER_DIED) && !os_pid_alive(tid)) {
            if (cas_strong_relaxed(word, &w, FUTEX_OWNER_DIED))
                g->dead_tid = (uint32_t) tid;
            continue;
        }
        if (os_now_ns() >= deadline) {
            g->word = w;
            return ETIMEDOUT;
        }
        {
            struct timespec ts = {0, (long) nap_ns};

            (void) nanosleep(&ts, NULL);
        }
        if (nap_ns < 1000000)
            nap_ns *= 2;
    }
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
