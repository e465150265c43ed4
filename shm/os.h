/* Every system call the heap core makes, behind small functions that
 * return 0 (or a value) or a negative errno (mimalloc's prim.h contract). */
#ifndef SHM_OS_H
#define SHM_OS_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* page_size 0 or 4096: a normal memfd; 2 MiB or 1 GiB: hugetlb. Sealable. */
int os_memfd(const char *name, uint64_t page_size);
int os_truncate(int fd, uint64_t size);
/* Forbids shrinking, growing and further seal changes, so no attached
 * process can pull pages out from under the others or make the owner's
 * fstat disagree with the size it created. */
int os_seal_size(int fd);
/* os_seal_size, and F_SEAL_FUTURE_WRITE: whoever maps fd from now on maps
 * it read-only (the header page, layout.h). Linux 5.1+. */
int os_seal_read_only(int fd);
/* Maps fd's [0, len) shared and read-only at addr (inside a reservation). */
int os_map_read_only_at(void *addr, uint64_t len, int fd);
int os_fstat_size(int fd, uint64_t *ret_size, uint64_t *ret_allocated);
/* Allocates backing pages for [off, off+len): huge pages are taken from the
 * pool now, so running out is -ENOSPC here and never SIGBUS later. */
int os_commit(int fd, uint64_t off, uint64_t len);
/* Gives backing pages back (FALLOC_FL_PUNCH_HOLE): MADV_DONTNEED would free
 * nothing for shared memory. */
int os_decommit(int fd, uint64_t off, uint64_t len);

/* Reserves len bytes of address space aligned to `align` (PROT_NONE). */
int os_reserve(uint64_t len, uint64_t align, void **ret_addr);
void os_unreserve(void *addr, uint64_t len);
/* Maps fd's [0, len) shared at addr (inside a reservation). */
int os_map_at(void *addr, uint64_t len, int fd);
/* Returns addr's range to the reservation (PROT_NONE). */
int os_unmap_at(void *addr, uint64_t len);
void os_advise_hugepage(void *addr, uint64_t len);

/* Asymmetric barrier across processes (see tcache.c). register once per
 * process; barrier returns 0, or -ENOSYS when the kernel has none. */
int os_membarrier_register(void);
int os_membarrier(void);

/* The kernel's PI futex (lock.c): FUTEX_LOCK_PI on word until deadline
 * (absolute, CLOCK_REALTIME as the kernel wants; NULL: none), and
 * FUTEX_UNLOCK_PI. 0 or -errno as the kernel answered. */
int os_futex_lock_pi(uint32_t *word, const struct timespec *deadline);
int os_futex_unlock_pi(uint32_t *word);
/* CLOCK_REALTIME now + ms; whether it has passed; a sleep. */
void os_realtime_deadline(uint32_t ms, struct timespec *ret);
bool os_realtime_passed(const struct timespec *deadline);
void os_nap_us(uint32_t us);

bool os_pid_alive(pid_t pid);

/* Files of a state directory (adopt.c): create `name` afresh (0600,
 * replacing a leftover), rename within the directory, and the page size
 * its filesystem gives (a hugetlbfs mount's, else 4096). */
int os_file_create(int dir_fd, const char *name);
int os_file_rename(int dir_fd, const char *from, const char *to);
/* Opens an existing file of the directory read-write, or read-only (an fd
 * that can be handed to a client: it cannot map it writable). */
int os_file_open(int dir_fd, const char *name);
int os_file_open_read_only(int dir_fd, const char *name);
uint64_t os_dir_page_size(int dir_fd);
uint64_t os_now_ns(void);
int os_tid(void);

/* The calling thread's CPU affinity (the per-CPU caches' drain, percpu.c):
 * save it, pin the thread to one CPU (-EINVAL when its cpuset forbids that
 * CPU), put the saved set back; and the CPU it runs on now (-errno). */
int os_affinity_save(cpu_set_t *ret_set);
int os_pin_cpu(unsigned cpu);
int os_affinity_restore(const cpu_set_t *set);
int os_current_cpu(void);

#endif
