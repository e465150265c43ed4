# The allocator benchmark; included at the end of the top-level Makefile.
#
#   make bench          every workload x allocator, 5 fresh processes each,
#                       plus the service figures (attach latency, stats round
#                       trip) against a shmheapd the driver starts; prints the
#                       table and writes $(B)/bench.json
#   make bench-quick    the same with BENCH_QUICK=1 (a tenth of the work)
#   make bench-bins     only builds $(B)/bench/bench-<allocator>
#   make bench-breakdown  where the fast paths' time goes (bench/breakdown.sh)
#
# Knobs (make variables or environment): BENCH_ALLOCS (which allocators,
# e.g. BENCH_ALLOCS="glibc mimalloc"), BENCH_WORKLOADS, BENCH_REPS,
# BENCH_TIMEOUT, and the sizes listed in bench/main.c (BENCH_W1_OPS, ...).
# BENCH_HAVE_BOOST= (empty) leaves the Boost.Interprocess column out.
#
# Uses from the top-level Makefile: B, CC, BASE, WARN, CPPFLAGS, CFLAGS,
# LDFLAGS, LDLIBS and the rule for $(B)/libshmcore.a; for shmheap-api also
# CLIENT_A (libshmheap.a), CLIENT_LIBS, DAEMON (shmheapd), CTL (shmheapctl)
# and examples/examples.mk's $(B)/examples/attach_latency; and, when
# defined, FLAGS_SIG with its $(B)/.flags stamp, msg and Q (quiet output).
#
# bench/workloads.c, bench/memory.c and bench/pipeline.c are compiled once
# per allocator (-DBENCH_ALLOC_ID) so that every allocator is called
# directly from the timed loops; bench/main.c is compiled once. The boost column adds bench/bench_boost.cpp
# (C++, header-only Boost.Interprocess) and is linked with $(CXX).

BENCH_PEERS    := glibc mimalloc jemalloc tcmalloc
# shmheap-api: the same workloads through libshmheap.a's public API, attached
# to a real shmheapd; only when the client library and the daemon have sources.
BENCH_API      := $(if $(CLIENT_A),$(if $(DAEMON),shmheap-api))
BENCH_HAVE_BOOST ?= $(if $(wildcard /usr/include/boost/interprocess/managed_shared_memory.hpp),yes)
BENCH_BOOST    := $(if $(BENCH_HAVE_BOOST),boost)
BENCH_ALL      := shmheap $(BENCH_API) $(BENCH_PEERS) $(BENCH_BOOST)
BENCH_ALLOCS   ?= $(BENCH_ALL)
BENCH_BINS     := $(addprefix $(B)/bench/bench-,$(BENCH_ALLOCS))
BENCH_OBJDIR   := $(B)/obj/bench
# Static pattern rules over these lists only: a plain pattern rule would
# also offer to "build" the included .d files (workloads-x.d from
# workloads-x.d.o through make's built-in %: %.o rule).
BENCH_C_BINS   := $(addprefix $(B)/bench/bench-,$(filter-out boost,$(BENCH_ALL)))
# The sources built once per allocator: W1-W4, W5b (memory), W6 (pipeline).
BENCH_WL_SRCS  := workloads memory pipeline

# The per-process allocators interpose malloc/free from their shared
# libraries; tcmalloc is gperftools' minimal build (no profiler hooks).
BENCH_LIBS_glibc    :=
BENCH_LIBS_mimalloc := -lmimalloc
BENCH_LIBS_jemalloc := -ljemalloc
BENCH_LIBS_tcmalloc := -ltcmalloc_minimal
BENCH_LIBS_shmheap  := $(B)/libshmcore.a
BENCH_LIBS_shmheap-api = $(CLIENT_A) $(CLIENT_LIBS)

# Rebuild when the compiler or flags change, where the top-level Makefile
# keeps that stamp; quiet output through its msg/Q when it has them.
BENCH_FLAGS_DEP := $(if $(FLAGS_SIG),$(B)/.flags)
BENCH_COMPILE    = $(CC) $(BASE) $(WARN) -pthread -I. $(CPPFLAGS) $(CFLAGS)

$(BENCH_OBJDIR)/main.o: bench/main.c $(BENCH_FLAGS_DEP)
	@mkdir -p $(@D)
	$(call msg,CC,$<)$(BENCH_COMPILE) -c $< -o $@

# $(1): one of BENCH_WL_SRCS; makes $(BENCH_OBJDIR)/$(1)-<allocator>.o.
define BENCH_WL_RULE
$(patsubst %,$(BENCH_OBJDIR)/$(1)-%.o,$(BENCH_ALL)): $(BENCH_OBJDIR)/$(1)-%.o: bench/$(1).c $$(BENCH_FLAGS_DEP)
	@mkdir -p $$(@D)
	$$(call msg,CC,$$< [$$*])$$(BENCH_COMPILE) -DBENCH_ALLOC_ID=BENCH_ID_$$(subst -,_,$$*) -c $$< -o $$@
endef
$(foreach s,$(BENCH_WL_SRCS),$(eval $(call BENCH_WL_RULE,$(s))))

$(B)/bench/bench-shmheap: $(B)/libshmcore.a
$(B)/bench/bench-shmheap-api: $(CLIENT_A)

$(BENCH_C_BINS): $(B)/bench/bench-%: $(BENCH_OBJDIR)/main.o $(BENCH_OBJDIR)/workloads-%.o \
                                      $(BENCH_OBJDIR)/memory-%.o $(BENCH_OBJDIR)/pipeline-%.o
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(CC) -pthread $(CFLAGS) $(LDFLAGS) -o $@ $(filter %.o,$^) \
	    $(BENCH_LIBS_$*) $(LDLIBS)

# Boost.Interprocess is header-only: no library to link but libstdc++.
$(BENCH_OBJDIR)/bench_boost.o: bench/bench_boost.cpp $(BENCH_FLAGS_DEP)
	@mkdir -p $(@D)
	$(call msg,CXX,$<)$(CXX) -std=c++17 -MMD -MP -Wall -Wextra -pthread -I. $(CPPFLAGS) \
	    $(CFLAGS) -c $< -o $@

$(B)/bench/bench-boost: $(BENCH_OBJDIR)/main.o $(BENCH_OBJDIR)/workloads-boost.o \
                        $(BENCH_OBJDIR)/memory-boost.o $(BENCH_OBJDIR)/pipeline-boost.o \
                        $(BENCH_OBJDIR)/bench_boost.o
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(CXX) -pthread $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

.PHONY: bench bench-quick bench-bins bench-breakdown
bench-bins: $(BENCH_BINS)

# Where the local path's time goes against tcmalloc (bench/breakdown.sh):
# the fast paths' parts removed one by one in measurement builds, one heap
# against a heap per process, and the L1 misses per function.
bench-breakdown: $(B)/bench/bench-tcmalloc
	B=$(B) bench/breakdown.sh

# shmheap-api runs against the daemon, and the service figures need
# shmheapctl (verify) and examples/attach_latency.
BENCH_NEEDS = $(if $(filter shmheap,$(BENCH_ALLOCS)),$(B)/libshmcore.a) $(BENCH_BINS) \
              $(if $(filter shmheap-api,$(BENCH_ALLOCS)),$(DAEMON) $(CTL) $(B)/examples/attach_latency)
BENCH_ENV   = B='$(B)' BENCH_ALLOCS='$(BENCH_ALLOCS)' \
              BENCH_SHMHEAPD='$(DAEMON)' BENCH_SHMHEAPCTL='$(CTL)' \
              BENCH_ATTACH_LATENCY='$(B)/examples/attach_latency'

bench: $(BENCH_NEEDS)
	$(Q)$(BENCH_ENV) bash bench/run_bench.sh

bench-quick: $(BENCH_NEEDS)
	$(Q)$(BENCH_ENV) BENCH_QUICK=1 bash bench/run_bench.sh

-include $(wildcard $(BENCH_OBJDIR)/*.d)

# The /metrics figures (scripts/metrics-bench.sh): scrape latency with busy
# clients, body size, and the service's systemd-analyze security exposure.
.PHONY: bench-metrics
$(B)/bench/scrape-bench: bench/scrape_bench.c $(CLIENT_A)
	@mkdir -p $(@D)
	$(call msg,CC,$@)$(CC) $(BASE) $(WARN) -pthread -Iclient/include $(CPPFLAGS) $(CFLAGS) \
	    -o $@ $< $(CLIENT_A) $(CLIENT_LIBS) $(LDFLAGS) $(LDLIBS)

bench-metrics: $(B)/bench/scrape-bench $(DAEMON)
	$(Q)B='$(B)' bash scripts/metrics-bench.sh
# ---- the automatic trim's figures (bench/decay.sh) ----
#   make bench-decay   committed bytes over time for the peak-then-idle and
#                      breathing workloads, shmheap (decay_ms) beside jemalloc
#                      (dirty_decay_ms) and tcmalloc (background release), and
#                      the policy's cost to a client's throughput; writes
#                      $(B)/bench/decay/ (traces and summary.txt)
DECAY_TRACES := $(addprefix $(B)/bench/decay-trace-,shmheap jemalloc tcmalloc)
DECAY_LIBS_shmheap  = $(CLIENT_A) $(CLIENT_LIBS)
DECAY_LIBS_jemalloc := -ljemalloc
DECAY_LIBS_tcmalloc := -ltcmalloc_minimal
DECAY_DEF_shmheap   := -DTRACE_SHMHEAP -Iclient/include
DECAY_DEF_jemalloc  := -DTRACE_JEMALLOC
DECAY_DEF_tcmalloc  := -DTRACE_TCMALLOC

$(B)/bench/decay-trace-shmheap: $(CLIENT_A)
$(DECAY_TRACES): $(B)/bench/decay-trace-%: bench/decay_trace.c $(BENCH_FLAGS_DEP)
	@mkdir -p $(@D)
	$(call msg,CC,$< [$*])$(BENCH_COMPILE) $(DECAY_DEF_$*) $(LDFLAGS) -o $@ $< \
	    $(DECAY_LIBS_$*) $(LDLIBS)

.PHONY: bench-decay
bench-decay: $(DECAY_TRACES) $(DAEMON) $(CTL) $(B)/bench/bench-shmheap-api
	$(Q)B='$(B)' BENCH_SHMHEAPD='$(DAEMON)' BENCH_SHMHEAPCTL='$(CTL)' bash bench/decay.sh
