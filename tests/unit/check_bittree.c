/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for shm/bittree.c: edge positions at every level boundary, find_next around those
 * boundaries, ranges across trees, bittree_check() against hand-made corruption, readers that
 * meet inconsistent summaries, and a random model check against a plain bitmap.
 *
 * Passing ck_assert_*() calls are not free in fork mode (each one records a mark point), so the
 * long loops compare by hand and call ck_abort_msg() only on a mismatch.
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/bittree.h"

Suite *bittree_suite(void);

#define NBITS_MODEL 40000u /* 3 trees, the last one partial */

/* Every level boundary in a chain, as the first bit of the new unit. */
static const uint32_t boundaries[] = {
        64,    128,   4032,  4096,  8192,  12288,  16320,   16384,
        16448, 20480, 32768, 49152, 65536, 524288, 1032192, 1048512,
};

static struct bittree_chain *chain_new(uint32_t nbits, bool all_set)
{
    size_t size = bittree_chain_size(nbits);
    struct bittree_chain *c;

    ck_assert_uint_gt(size, 0);
    c = aligned_alloc(64, (size + 63) & ~(size_t) 63);
    ck_assert_ptr_nonnull(c);
    memset(c, 0xa5, size); /* init must not rely on zeroed memory */
    bittree_chain_init(c, nbits, all_set);
    return c;
}

static void assert_check_ok(const struct bittree_chain *c)
{
    char buf[160] = "";
    int r = bittree_check(c, buf, sizeof(buf));

    ck_assert_msg(r == 0, "bittree_check: %d: %s", r, buf);
}

/* bittree_check() must fail with -EUCLEAN and a NUL-terminated description containing what. */
static void assert_check_fails(const struct bittree_chain *c, const char *what)
{
    char buf[160];
    int r;

    memset(buf, 'x', sizeof(buf));
    r = bittree_check(c, buf, sizeof(buf));
    ck_assert_int_eq(r, -EUCLEAN);
    ck_assert_ptr_nonnull(memchr(buf, '\0', sizeof(buf)));
    ck_assert_msg(strstr(buf, what) != NULL, "description \"%s\" lacks \"%s\"", buf, what);
    ck_assert_int_eq(bittree_check(c, NULL, 0), -EUCLEAN);
}

/* A plain bitmap: the model the tree must agree with. */
struct model {
    uint32_t nbits;
    uint64_t *w;
};

static void model_init(struct model *m, uint32_t nbits)
{
    m->nbits = nbits;
    m->w = calloc((nbits + 63) / 64, sizeof(uint64_t));
    ck_assert_ptr_nonnull(m->w);
}

static void model_set(struct model *m, uint32_t b)
{
    m->w[b / 64] |= UINT64_C(1) << (b % 64);
}

static void model_clear(struct model *m, uint32_t b)
{
    m->w[b / 64] &= ~(UINT64_C(1) << (b % 64));
}

static bool model_test(const struct model *m, uint32_t b)
{
    return (m->w[b / 64] >> (b % 64)) & 1;
}

static int64_t model_next(const struct model *m, uint32_t from)
{
    uint32_t nwords = (m->nbits + 63) / 64;
    uint64_t word;

    if (from >= m->nbits)
        return -1;
    word = m->w[from / 64] & (~UINT64_C(0) << (from % 64));
    for (uint32_t i = from / 64;;) {
        if (word)
            return (int64_t) i * 64 + __builtin_ctzll(word);
        if (++i == nwords)
            return -1;
        word = m->w[i];
    }
}

static uint32_t model_count(const struct model *m)
{
    uint32_t n = 0;

    for (uint32_t i = 0; i < (m->nbits + 63) / 64; i++)
        n += (uint32_t) __builtin_popcountll(m->w[i]);
    return n;
}

/* Compares every leaf word of c with the model, then runs bittree_check(). */
static void model_compare(const struct bittree_chain *c, const struct model *m, uint64_t op)
{
    char buf[160] = "";

    for (uint32_t i = 0; i < (m->nbits + 63) / 64; i++) {
        uint64_t leaf = c->trees[i / 256].leaf[i % 256];

        if (leaf != m->w[i])
            ck_abort_msg("op %" PRIu64 ": leaf word %" PRIu32 " is %#" PRIx64 ", model %#" PRIx64,
                         op, i, leaf, m->w[i]);
    }
    if (bittree_check(c, buf, sizeof(buf)) != 0)
        ck_abort_msg("op %" PRIu64 ": bittree_check: %s", op, buf);
}

/* Deterministic xorshift64 (Marsaglia). */
static uint64_t rng_state;

static uint64_t rng(void)
{
    uint64_t x = rng_state;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static uint32_t rng_below(uint32_t n)
{
    return (uint32_t) (rng() % n);
}

static void assert_empty(const struct bittree_chain *c)
{
    ck_assert_int_eq(bittree_find_first(c), -1);
    ck_assert_int_eq(bittree_find_next(c, 0), -1);
    ck_assert_uint_eq(bittree_count(c), 0);
    ck_assert_uint_eq(c->summary, 0);
    for (uint32_t t = 0; t < c->ntrees; t++)
        ck_assert_uint_eq(c->trees[t].top, 0);
    assert_check_ok(c);
}

static const uint32_t sizes[] = {
        1, 2, 63, 64, 65, 4095, 4096, 4097, 16383, 16384, 16385, 40000, 40003, BITTREE_MAX_BITS,
};

START_TEST(bittree_sizes)
{
    const size_t tree = sizeof(struct bittree);

    ck_assert_uint_eq(tree, 2088);
    ck_assert_uint_eq(bittree_chain_size(0), 0);
    ck_assert_uint_eq(bittree_chain_size(1), 16 + tree);
    ck_assert_uint_eq(bittree_chain_size(16384), 16 + tree);
    ck_assert_uint_eq(bittree_chain_size(16385), 16 + 2 * tree);
    ck_assert_uint_eq(bittree_chain_size(NBITS_MODEL), 16 + 3 * tree);
    ck_assert_uint_eq(bittree_chain_size(BITTREE_MAX_BITS), 16 + 64 * tree);
    ck_assert_uint_eq(bittree_chain_size(BITTREE_MAX_BITS + 1), 0);
}
END_TEST

START_TEST(bittree_empty)
{
    uint32_t nbits = sizes[_i];
    struct bittree_chain *c = chain_new(nbits, false);

    ck_assert_uint_eq(c->nbits, nbits);
    ck_assert_uint_eq(c->ntrees, (nbits + 16383) / 16384);
    assert_empty(c);
    ck_assert_int_eq(bittree_find_next(c, nbits - 1), -1);
    ck_assert_int_eq(bittree_find_next(c, nbits), -1);
    ck_assert_int_eq(bittree_find_next(c, UINT32_MAX), -1);
    ck_assert(!bittree_test(c, 0));
    ck_assert(!bittree_test(c, nbits - 1));
    free(c);
}
END_TEST

START_TEST(bittree_full)
{
    uint32_t nbits = sizes[_i];
    struct bittree_chain *c = chain_new(nbits, true);
    uint64_t want_sum = c->ntrees == 64 ? ~UINT64_C(0) : (UINT64_C(1) << c->ntrees) - 1;

    assert_check_ok(c);
    ck_assert_uint_eq(c->summary, want_sum);
    ck_assert_int_eq(bittree_find_first(c), 0);
    ck_assert_uint_eq(bittree_count(c), nbits);
    ck_assert(bittree_test(c, nbits - 1));
    ck_assert_int_eq(bittree_find_next(c, nbits - 1), nbits - 1);
    ck_assert_int_eq(bittree_find_next(c, nbits), -1);
    for (uint32_t b = 0; b < nbits; b++)
        if (bittree_find_next(c, b) != b)
            ck_abort_msg("find_next(%" PRIu32 ") = %" PRId64, b, bittree_find_next(c, b));

    /* Clearing the first bit repeatedly walks every level boundary in order. */
    for (uint32_t b = 0; b < nbits; b++) {
        if (bittree_find_first(c) != b)
            ck_abort_msg("find_first = %" PRId64 ", want %" PRIu32, bittree_find_first(c), b);
        bittree_clear(c, b);
    }
    assert_empty(c);
    free(c);
}
END_TEST

/* One set bit at b in a chain of nbits: every query agrees, and clearing it empties all. */
static void single_bit(uint32_t nbits, uint32_t b)
{
    struct bittree_chain *c = chain_new(nbits, false);
    const uint32_t froms[] = {0, b / 2, b > 0 ? b - 1 : 0, b, b > 64 ? b - 64 : 0};

    bittree_set(c, b);
    assert_check_ok(c);
    ck_assert_int_eq(bittree_find_first(c), b);
    for (size_t i = 0; i < sizeof(froms) / sizeof(froms[0]); i++)
        ck_assert_int_eq(bittree_find_next(c, froms[i]), b);
    ck_assert_int_eq(bittree_find_next(c, b + 1), -1);
    ck_assert(bittree_test(c, b));
    if (b > 0)
        ck_assert(!bittree_test(c, b - 1));
    if (b + 1 < nbits)
        ck_assert(!bittree_test(c, b + 1));
    ck_assert_uint_eq(bittree_count(c), 1);
    ck_assert_uint_eq(c->summary, UINT64_C(1) << (b / 16384));

    bittree_set(c, b); /* setting a set bit changes nothing */
    ck_assert_uint_eq(bittree_count(c), 1);
    assert_check_ok(c);

    bittree_clear(c, b);
    assert_empty(c);
    bittree_clear(c, b); /* clearing a clear bit changes nothing */
    assert_empty(c);
    free(c);
}

START_TEST(bittree_single_bit)
{
    static const uint32_t bits[] = {0, 63, 64, 4095, 4096, 16383, 16384, NBITS_MODEL - 1};

    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        single_bit(NBITS_MODEL, bits[i]);
        single_bit(BITTREE_MAX_BITS, bits[i]);
    }
    /* The last bit of multi-tree chains, full and partial. */
    single_bit(2 * 16384, 2 * 16384 - 1);
    single_bit(3 * 16384 + 5, 3 * 16384 + 4);
    single_bit(BITTREE_MAX_BITS, BITTREE_MAX_BITS - 1);
    /* Both sides of every level boundary. */
    for (size_t i = 0; i < sizeof(boundaries) / sizeof(boundaries[0]); i++) {
        single_bit(BITTREE_MAX_BITS, boundaries[i] - 1);
        single_bit(BITTREE_MAX_BITS, boundaries[i]);
        single_bit(BITTREE_MAX_BITS, boundaries[i] + 1);
    }
}
END_TEST

/* Sets the bits of pattern in a chain of nbits, then checks find_next from every position
 * against the model. */
static void next_everywhere(uint32_t nbits, const uint32_t *pattern, size_t n)
{
    struct bittree_chain *c = chain_new(nbits, false);
    struct model m;
    int64_t want;

    model_init(&m, nbits);
    for (size_t i = 0; i < n; i++) {
        if (pattern[i] >= nbits)
            continue;
        bittree_set(c, pattern[i]);
        model_set(&m, pattern[i]);
    }
    model_compare(c, &m, 0);
    ck_assert_int_eq(bittree_find_first(c), model_next(&m, 0));
    /* Walk down from nbits so the expected answer costs O(1) per position. */
    want = -1;
    for (uint32_t from = nbits + 1; from-- > 0;) {
        int64_t got = bittree_find_next(c, from);

        if (from < nbits && model_test(&m, from))
            want = from;
        if (got != want)
            ck_abort_msg("nbits %" PRIu32 ": find_next(%" PRIu32 ") = %" PRId64 ", want %" PRId64,
                         nbits, from, got, want);
    }
    free(m.w);
    free(c);
}

START_TEST(bittree_find_next_boundaries)
{
    uint32_t before[64], at[64], around[3 * 64];
    size_t n = sizeof(boundaries) / sizeof(boundaries[0]);

    for (size_t i = 0; i < n; i++) {
        before[i] = boundaries[i] - 1;
        at[i] = boundaries[i];
        around[3 * i] = boundaries[i] - 1;
        around[3 * i + 1] = boundaries[i];
        around[3 * i + 2] = boundaries[i] + 63;
    }
    before[n] = NBITS_MODEL - 1;
    at[n] = 0;

    next_everywhere(NBITS_MODEL, before, n + 1);
    next_everywhere(NBITS_MODEL, at, n + 1);
    next_everywhere(NBITS_MODEL, around, 3 * n);
    next_everywhere(BITTREE_MAX_BITS, before, n);
    next_everywhere(BITTREE_MAX_BITS, at, n + 1);
    next_everywhere(BITTREE_MAX_BITS, around, 3 * n);
}
END_TEST

START_TEST(bittree_ranges)
{
    struct bittree_chain *c = chain_new(NBITS_MODEL, false);

    /* A short run across the first tree boundary. */
    bittree_set_range(c, 16380, 10);
    assert_check_ok(c);
    ck_assert_uint_eq(bittree_count(c), 10);
    ck_assert(!bittree_test(c, 16379));
    ck_assert(bittree_test(c, 16380));
    ck_assert(bittree_test(c, 16389));
    ck_assert(!bittree_test(c, 16390));
    ck_assert_int_eq(bittree_find_first(c), 16380);
    ck_assert_int_eq(bittree_find_next(c, 16384), 16384);
    ck_assert_uint_eq(c->summary, 3);

    /* Clearing the tail leaves tree 0's part only. */
    bittree_clear_range(c, 16384, 6);
    assert_check_ok(c);
    ck_assert_uint_eq(c->summary, 1);
    ck_assert_int_eq(bittree_find_next(c, 16384), -1);
    ck_assert_int_eq(bittree_find_next(c, 2 * 16384), -1);

    /* Empty ranges, at the start and the very end. */
    bittree_set_range(c, 0, 0);
    bittree_set_range(c, NBITS_MODEL, 0);
    bittree_clear_range(c, NBITS_MODEL, 0);
    ck_assert_uint_eq(bittree_count(c), 4);

    /* The whole chain, then a hole spanning all three trees. */
    bittree_set_range(c, 0, NBITS_MODEL);
    assert_check_ok(c);
    ck_assert_uint_eq(bittree_count(c), NBITS_MODEL);
    bittree_clear_range(c, 100, NBITS_MODEL - 200);
    assert_check_ok(c);
    ck_assert_uint_eq(bittree_count(c), 200);
    ck_assert_uint_eq(c->summary, 5);
    ck_assert_int_eq(bittree_find_next(c, 99), 99);
    ck_assert_int_eq(bittree_find_next(c, 100), NBITS_MODEL - 100);

    /* Exactly one whole tree. */
    bittree_set_range(c, 16384, 16384);
    assert_check_ok(c);
    ck_assert_uint_eq(c->summary, 7);
    ck_assert_uint_eq(bittree_count(c), 200 + 16384);
    bittree_clear_range(c, 0, NBITS_MODEL);
    assert_empty(c);
    free(c);
}
END_TEST

START_TEST(bittree_ranges_random)
{
    uint32_t nbits = NBITS_MODEL + 3; /* a partial last word too */
    struct bittree_chain *c = chain_new(nbits, false);
    struct model m;

    model_init(&m, nbits);
    rng_state = UINT64_C(0x2545f4914f6cdd1d);
    for (uint64_t op = 0; op < 4000; op++) {
        uint32_t first = rng_below(nbits + 1);
        uint32_t n = rng_below(op % 4 == 0 ? nbits - first + 1 : 300);
        bool set = rng() & 1;

        if (n > nbits - first)
            n = nbits - first;
        if (set)
            bittree_set_range(c, first, n);
        else
            bittree_clear_range(c, first, n);
        for (uint32_t b = first; b < first + n; b++)
            set ? model_set(&m, b) : model_clear(&m, b);
        model_compare(c, &m, op);
        if (bittree_count(c) != model_count(&m))
            ck_abort_msg("op %" PRIu64 ": count %" PRIu32 ", model %" PRIu32, op, bittree_count(c),
                         model_count(&m));
        if (bittree_find_first(c) != model_next(&m, 0))
            ck_abort_msg("op %" PRIu64 ": find_first differs", op);
    }
    free(m.w);
    free(c);
}
END_TEST

START_TEST(bittree_check_corruption)
{
    struct bittree_chain *c = chain_new(NBITS_MODEL, false);
    char small[8];

    bittree_set(c, 5);
    bittree_set(c, 20000);
    assert_check_ok(c);

    /* A mid bit whose leaf word is empty. */
    c->trees[0].mid[0] |= UINT64_C(1) << 7;
    assert_check_fails(c, "mid[0] bit 7 is 1 but leaf[7]");
    c->trees[0].mid[0] &= ~(UINT64_C(1) << 7);
    assert_check_ok(c);

    /* A leaf word whose mid bit is clear. */
    c->trees[1].leaf[200] = 1;
    assert_check_fails(c, "tree 1 mid[3] bit 8 is 0 but leaf[200]");
    c->trees[1].leaf[200] = 0;

    /* A top word that disagrees with the summary, then with its mid words, each way. */
    c->trees[1].top = 0;
    assert_check_fails(c, "summary bit 1 is 1 but tree 1 top is 0");
    c->trees[1].top = 4;
    assert_check_fails(c, "tree 1 top bit 0 is 0");
    c->trees[1].top = 1 | 4;
    assert_check_fails(c, "tree 1 top bit 2 is 1");
    c->trees[1].top = 1 | 0x100;
    assert_check_fails(c, "past mid word");
    c->trees[1].top = 1;
    assert_check_ok(c);

    /* Chain summary: a non-empty tree missing, an empty tree present, a tree past ntrees. */
    c->summary = 1;
    assert_check_fails(c, "summary bit 1 is 0");
    c->summary = 3 | 4;
    assert_check_fails(c, "summary bit 2 is 1");
    c->summary = 3 | 8;
    assert_check_fails(c, "past tree 3");
    c->summary = 3;
    assert_check_ok(c);

    /* A bit at nbits, with every summary above it made consistent, so only that check sees it:
     * 40000 = 2 * 16384 + 113 * 64, so tree 2 leaf[113] lies wholly past nbits. */
    c->trees[2].leaf[113] = 1;
    c->trees[2].mid[1] = UINT64_C(1) << (113 - 64);
    c->trees[2].top = 2;
    c->summary = 7;
    assert_check_fails(c, "tree 2 leaf[113]");
    /* ... and the readers never hand that bit out. */
    ck_assert_int_eq(bittree_find_next(c, 20001), -1);
    bittree_clear(c, 5);
    bittree_clear(c, 20000);
    ck_assert_int_eq(bittree_find_first(c), -1);

    /* Truncated description, still NUL-terminated. */
    memset(small, 'x', sizeof(small));
    ck_assert_int_eq(bittree_check(c, small, sizeof(small)), -EUCLEAN);
    ck_assert_str_eq(small, "bittree");
    free(c);

    /* A partial last leaf word: bit 40003 of a 40003-bit chain. */
    c = chain_new(40003, false);
    bittree_set(c, 40002);
    c->trees[2].leaf[113] |= UINT64_C(1) << 3;
    assert_check_fails(c, "at or past nbits 40003");
    c->trees[2].leaf[113] &= ~(UINT64_C(1) << 3);
    assert_check_ok(c);

    /* Header fields. */
    c->ntrees = 2;
    assert_check_fails(c, "ntrees 2, expected 3");
    c->ntrees = 3;
    c->nbits = 0;
    assert_check_fails(c, "nbits 0");
    c->nbits = BITTREE_MAX_BITS + 1;
    assert_check_fails(c, "nbits 1048577");
    free(c);
}
END_TEST

/* A chain that ends exactly where an inaccessible region as large as 64 trees starts, so any
 * read of a tree past ntrees faults even without a sanitizer. Free it with munmap(*ret_base,
 * *ret_len). */
static struct bittree_chain *chain_new_guarded(uint32_t nbits, void **ret_base, size_t *ret_len)
{
    size_t page = (size_t) sysconf(_SC_PAGESIZE);
    size_t size = bittree_chain_size(nbits);
    size_t head = (size + page - 1) / page * page;
    size_t guard = (BITTREE_MAX_TREES * sizeof(struct bittree) + page - 1) / page * page;
    char *base =
            mmap(NULL, head + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct bittree_chain *c;

    ck_assert_ptr_ne(base, MAP_FAILED);
    ck_assert_int_eq(mprotect(base + head, guard, PROT_NONE), 0);
    c = (struct bittree_chain *) (void *) (base + head - size);
    bittree_chain_init(c, nbits, false);
    *ret_base = base;
    *ret_len = head + guard;
    return c;
}

/* A reader without the lock, or a corrupt chain, can show a summary bit with nothing under it.
 * The readers must skip it (no tzcnt of 0, no access past ntrees) and stay in range. */
START_TEST(bittree_inconsistent_read)
{
    void *base;
    size_t len;
    struct bittree_chain *c = chain_new_guarded(NBITS_MODEL, &base, &len);

    bittree_set(c, 33000);

    /* Tree 0 claimed non-empty at every level, but its leaf is 0. */
    c->summary |= 1;
    c->trees[0].top = 1;
    c->trees[0].mid[0] = 1;
    ck_assert_int_eq(bittree_find_first(c), 33000);
    ck_assert_int_eq(bittree_find_next(c, 0), 33000);

    /* A top bit over an empty mid word. */
    c->trees[0].mid[0] = 0;
    ck_assert_int_eq(bittree_find_first(c), 33000);
    ck_assert_int_eq(bittree_find_next(c, 0), 33000);
    c->trees[0].top = 1 | 2;
    ck_assert_int_eq(bittree_find_next(c, 0), 33000);

    /* A top bit past the mid level is ignored. */
    c->trees[0].top = 0x30;
    ck_assert_int_eq(bittree_find_first(c), 33000);

    /* Summary bits for trees that do not exist. */
    bittree_clear(c, 33000);
    c->summary = UINT64_C(1) << 40;
    ck_assert_int_eq(bittree_find_first(c), -1);
    ck_assert_int_eq(bittree_find_next(c, 100), -1);
    c->summary = UINT64_C(1) << 63;
    ck_assert_int_eq(bittree_find_first(c), -1);
    ck_assert_int_eq(bittree_find_next(c, 0), -1);

    /* Top bit 63 in the last tree: unmasked, it would name mid[63] (really leaf[59], set here)
     * and then a leaf word 32 KiB past the end of the chain. */
    c->summary = 4;
    c->trees[2].top = UINT64_C(1) << 63;
    c->trees[2].leaf[59] = 1;
    ck_assert_int_eq(bittree_find_first(c), -1);
    ck_assert_int_eq(bittree_find_next(c, 16384), -1);
    ck_assert_int_eq(bittree_find_next(c, 2 * 16384), -1);

    /* A corrupt header: nbits claims 64 trees, ntrees says 3. */
    c->summary = 0;
    c->nbits = BITTREE_MAX_BITS;
    ck_assert_int_eq(bittree_find_next(c, 40 * 16384), -1);
    ck_assert_int_eq(munmap(base, len), 0);
}
END_TEST

START_TEST(bittree_model_random)
{
    const char *scale = getenv("SHMHEAP_TEST_SCALE");
    uint64_t nops = scale && strcmp(scale, "small") == 0 ? 100000 : 1000000;
    struct bittree_chain *c = chain_new(NBITS_MODEL, false);
    struct model m;

    model_init(&m, NBITS_MODEL);
    rng_state = UINT64_C(0x9e3779b97f4a7c15);
    for (uint64_t op = 0; op < nops; op++) {
        /* Phases: balanced, draining (mostly clears: sparse trees, deep searches), filling,
         * and bits picked next to level boundaries. */
        unsigned phase = (unsigned) (op / 25000) % 4;
        unsigned set_pct = phase == 1 ? 5 : phase == 2 ? 90 : 50;
        uint32_t b = rng_below(NBITS_MODEL);
        unsigned kind = rng_below(100);
        int64_t got, want;

        if (phase == 3) {
            uint32_t bd = boundaries[rng_below(8)] + (uint32_t) rng_below(5) - 2;

            b = bd < NBITS_MODEL ? bd : NBITS_MODEL - 1 - rng_below(3);
        }

        if (kind < 40) {
            if (rng_below(100) < set_pct) {
                bittree_set(c, b);
                model_set(&m, b);
            } else {
                bittree_clear(c, b);
                model_clear(&m, b);
            }
        } else if (kind < 50) {
            got = bittree_find_first(c);
            want = model_next(&m, 0);
            if (got != want)
                ck_abort_msg("op %" PRIu64 ": find_first = %" PRId64 ", want %" PRId64, op, got,
                             want);
        } else if (kind < 65) {
            uint32_t from = rng_below(NBITS_MODEL + 2);

            got = bittree_find_next(c, from);
            want = model_next(&m, from);
            if (got != want)
                ck_abort_msg("op %" PRIu64 ": find_next(%" PRIu32 ") = %" PRId64 ", want %" PRId64,
                             op, from, got, want);
        } else if (kind < 75) {
            if (bittree_test(c, b) != model_test(&m, b))
                ck_abort_msg("op %" PRIu64 ": test(%" PRIu32 ") differs", op, b);
        } else if (kind < 90) {
            /* Allocate: take the first free bit, as the heap does. */
            got = bittree_find_first(c);
            want = model_next(&m, 0);
            if (got != want)
                ck_abort_msg("op %" PRIu64 ": alloc find_first = %" PRId64 ", want %" PRId64, op,
                             got, want);
            if (got >= 0) {
                bittree_clear(c, (uint32_t) got);
                model_clear(&m, (uint32_t) got);
            }
        } else {
            /* A run of blocks: set or clear [b, b + n). */
            uint32_t n = rng_below(130);

            if (n > NBITS_MODEL - b)
                n = NBITS_MODEL - b;
            if (rng_below(100) < set_pct) {
                bittree_set_range(c, b, n);
                for (uint32_t i = b; i < b + n; i++)
                    model_set(&m, i);
            } else {
                bittree_clear_range(c, b, n);
                for (uint32_t i = b; i < b + n; i++)
                    model_clear(&m, i);
            }
        }
        model_compare(c, &m, op);
    }
    ck_assert_uint_eq(bittree_count(c), model_count(&m));
    free(m.w);
    free(c);
}
END_TEST

#ifndef NDEBUG
/* An out-of-range bit is a caller bug, caught by an assert (so these need assertions on). */
START_TEST(bittree_assert_set_past_end)
{
    struct bittree_chain *c = chain_new(NBITS_MODEL, false);

    bittree_set(c, NBITS_MODEL);
}
END_TEST

START_TEST(bittree_assert_range_past_end)
{
    struct bittree_chain *c = chain_new(NBITS_MODEL, false);

    bittree_clear_range(c, NBITS_MODEL - 10, 11);
}
END_TEST
#endif

Suite *bittree_suite(void)
{
    Suite *s = suite_create("bittree");
    TCase *tc = tcase_create("edges");
    TCase *tm = tcase_create("model");
    int nsizes = (int) (sizeof(sizes) / sizeof(sizes[0]));

    tcase_add_test(tc, bittree_sizes);
    tcase_add_loop_test(tc, bittree_empty, 0, nsizes);
    tcase_add_loop_test(tc, bittree_full, 0, nsizes);
    tcase_add_test(tc, bittree_single_bit);
    tcase_add_test(tc, bittree_find_next_boundaries);
    tcase_add_test(tc, bittree_ranges);
    tcase_add_test(tc, bittree_check_corruption);
    tcase_add_test(tc, bittree_inconsistent_read);
#ifndef NDEBUG
    tcase_add_test_raise_signal(tc, bittree_assert_set_past_end, SIGABRT);
    tcase_add_test_raise_signal(tc, bittree_assert_range_past_end, SIGABRT);
#endif
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);

    tcase_add_test(tm, bittree_ranges_random);
    tcase_add_test(tm, bittree_model_random);
    tcase_set_timeout(tm, 120);
    suite_add_tcase(s, tm);
    return s;
}
