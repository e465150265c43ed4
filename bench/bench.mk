# The allocator benchmark; included at the end of the top-level Makefile.
#
#   make bench          every workload x allocator, 5 fresh processes each;
#                       prints the table and writes $(B)/bench.json
#   make bench-quick    the same with BENCH_QUICK=1 (a tenth of the work)
#   make bench-bins     only builds $(B)/bench/bench-<allocator>
#
# Knobs (make variables or environment): BENCH_ALLOCS (which allocators,
# e.g. BENCH_ALLOCS="glibc mimalloc"), BENCH_WORKLOADS, BENCH_REPS,
# BENCH_TIMEOUT, and the sizes listed in bench/main.c (BENCH_W1_OPS, ...).
#
# Uses from the top-level Makefile: B, CC, BASE, WARN, CPPFLAGS, CFLAGS,
# LDFLAGS, LDLIBS and the rule for $(B)/libshmcore.a; and, when defined,
# FLAGS_SIG with its $(B)/.flags stamp, msg and Q (quiet output).
#
# bench/workloads.c is compiled once per allocator (-DBENCH_ALLOC_ID) so
# that every allocator is called directly from the timed loops;
# bench/main.c is compiled once.

BENCH_PEERS    := glibc mimalloc jemalloc tcmalloc
BENCH_ALL      := shmheap $(BENCH_PEERS)
BENCH_ALLOCS   ?= $(BENCH_ALL)
BENCH_BINS     := $(addprefix $(B)/bench/bench-,$(BENCH_ALLOCS))
BENCH_OBJDIR   := $(B)/obj/bench
# Static pattern rules over these lists only: a plain pattern rule would
# also offer to "build" the included .d files (workloads-x.d from
# workloads-x.d.o through make's built-in %: %.o rule).
BENCH_ALL_BINS := $(addprefix $(B)/bench/bench-,$(BENCH_ALL))
BENCH_WL_OBJS  := $(patsubst %,$(BENCH_OBJDIR)/workloads-%.o,$(BENCH_ALL))

# The per-process allocators interpose malloc/free from their shared
# libraries; tcmalloc is gperftools' minimal build (no profiler hooks).
BENCH_LIBS_glibc    :=
BENCH_LIBS_mimalloc := -lmimalloc
BENCH_LIBS_jemalloc := -ljemalloc
BENCH_LIBS_tcmalloc := -ltcmalloc_minimal
BENCH_LIBS_shmheap  := $(B)/libshmcore.a

# Rebuild when the compiler or flags change, where the top-level Makefile
# keeps that stamp; quiet output through its msg/Q when it has them.
BENCH_FLAGS_DEP := $(if $(FLAGS_SIG),$(B)/.flags)
BENCH_COMPILE    = $(CC) $(BASE) $(WARN) -pthread -I. $(CPPFLAGS) $(CFLAGS)

$(BENCH_OBJDIR)/main.o: bench/main.c $(BENCH_FLAGS_DEP)
	@mkdir -p $(@D)
	$(call msg,CC,$<)$(BENCH_COMPILE) -c $< -o $@

$(BENCH_WL_OBJS): $(BENCH_OBJDIR)/workloads-%.o: bench/workloads.c $(BENCH_FLAGS_DEP)
	@mkdir -p $(@D)
	$(call msg,CC,$< [$*])$(BENCH_COMPILE) -DBENCH_ALLOC_ID=BENCH_ID_$* -c $< -o $@

$(B)/bench/bench-shmheap: $(B)/libshmcore.a

$(BENCH_ALL_BINS): $(B)/bench/bench-%: $(BENCH_OBJDIR)/main.o $(BENCH_OBJDIR)/workloads-%.o
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(CC) -pthread $(CFLAGS) $(LDFLAGS) -o $@ $(filter %.o,$^) \
	    $(BENCH_LIBS_$*) $(LDLIBS)

.PHONY: bench bench-quick bench-bins
bench-bins: $(BENCH_BINS)

bench: $(if $(filter shmheap,$(BENCH_ALLOCS)),$(B)/libshmcore.a) $(BENCH_BINS)
	$(Q)B='$(B)' BENCH_ALLOCS='$(BENCH_ALLOCS)' bash bench/run_bench.sh

bench-quick: $(if $(filter shmheap,$(BENCH_ALLOCS)),$(B)/libshmcore.a) $(BENCH_BINS)
	$(Q)B='$(B)' BENCH_ALLOCS='$(BENCH_ALLOCS)' BENCH_QUICK=1 bash bench/run_bench.sh

-include $(wildcard $(BENCH_OBJDIR)/*.d)
