// The Boost.Interprocess column of the benchmark (see bench/bench_boost.h):
// bench/workloads.c's loops, unchanged, allocate through these functions.
//
// managed_shared_memory is basic_managed_shared_memory<char,
// rbtree_best_fit<mutex_family>, iset_index>: one best-fit allocator per
// segment (free blocks in an intrusive red-black tree, split and coalesced),
// every allocate and deallocate under the segment's one interprocess_mutex,
// which on glibc is a PTHREAD_PROCESS_SHARED pthread mutex (not robust). No
// per-process or per-thread caches: every call takes that lock.
#include "bench/bench_boost.h"

#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <boost/version.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <unistd.h>

namespace bip = boost::interprocess;

struct bb_seg {
    bip::managed_shared_memory shm;
};

static size_t segment_bytes()
{
    const char *s = std::getenv("BENCH_BOOST_SEGMENT");
    unsigned long long v = s && *s ? std::strtoull(s, nullptr, 0) : 0;

    return v >= (1u << 20) ? (size_t) v : (size_t) 256 << 20;
}

extern "C" int bb_create(struct bb_seg **ret)
{
    static unsigned seq;
    char name[64];

    std::snprintf(name, sizeof(name), "shmheap-bench-boost-%d-%u", (int) getpid(), seq++);
    bip::shared_memory_object::remove(name);
    try {
        bb_seg *s = new bb_seg{bip::managed_shared_memory(bip::create_only, name, segment_bytes())};

        bip::shared_memory_object::remove(name); // the mapping stays; nothing to leak
        *ret = s;
        return 0;
    } catch (const std::exception &e) {
        bip::shared_memory_object::remove(name);
        std::fprintf(stderr, "bench: boost: managed_shared_memory %s failed: %s\n", name, e.what());
        return -ENOMEM;
    }
}

extern "C" void bb_destroy(struct bb_seg *s)
{
    delete s;
}

extern "C" void *bb_malloc(struct bb_seg *s, size_t n)
{
    return s->shm.allocate(n, std::nothrow);
}

extern "C" void bb_free(struct bb_seg *s, void *p)
{
    s->shm.deallocate(p);
}

extern "C" uint64_t bb_to_handle(struct bb_seg *s, void *p)
{
    return (uint64_t) s->shm.get_handle_from_address(p);
}

extern "C" void *bb_from_handle(struct bb_seg *s, uint64_t v)
{
    return s->shm.get_address_from_handle((bip::managed_shared_memory::handle_t) v);
}

extern "C" int bb_verify(struct bb_seg *s)
{
    if (!s->shm.check_sanity()) {
        std::fprintf(stderr, "bench: boost: check_sanity failed\n");
        return -EIO;
    }
    if (!s->shm.all_memory_deallocated()) {
        std::fprintf(stderr, "bench: boost: verify failed: memory left allocated\n");
        return -EIO;
    }
    return 0;
}

extern "C" int bb_info(char *buf, size_t len)
{
    struct bb_seg *s;
    void *p;
    int r;

    r = bb_create(&s);
    if (r < 0) {
        std::snprintf(buf, len, "managed_shared_memory-failed");
        return r;
    }
    p = bb_malloc(s, 64);
    if (!p || !s->shm.belongs_to_segment(p) || bb_from_handle(s, bb_to_handle(s, p)) != p) {
        std::snprintf(buf, len, "allocate-not-in-segment");
        r = -ENOTSUP;
    } else {
        std::snprintf(buf, len, "%d.%d.%d", BOOST_VERSION / 100000, BOOST_VERSION / 100 % 1000,
                      BOOST_VERSION % 100);
    }
    if (p)
        bb_free(s, p);
    bb_destroy(s);
    return r;
}
