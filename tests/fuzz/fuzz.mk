# Fuzzing (tests/fuzz/): libFuzzer targets on the control protocol and on the
# config loader, and the replay of their inputs. Included from the Makefile.
#
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="proto config"]
#       builds the targets with clang -fsanitize=fuzzer,address,undefined in
#       build-fuzz/ and runs each for FUZZ_SECONDS under nice, starting from
#       tests/fuzz/corpus/<t> and tests/fuzz/crashes/<t> (new inputs go to
#       build-fuzz/corpus/<t>); a crash is written to tests/fuzz/crashes/<t>/,
#       where `make test` replays it from then on; the log is
#       build-fuzz/fuzz_<t>.log. libFuzzer stops at the first crash.
#   make fuzz-coverage
#       replays both corpora with a clang -fprofile-instr-generate build and
#       prints llvm-cov's line coverage of daemon/proto.c and config/load.c.
#   $(B)/tests/fuzz_replay_<t> [FILE|DIR]...
#       runs the target on each input without the fuzzing engine; part of
#       $(TESTS), so `make test` replays the corpus and every crash plainly
#       and under ASan+UBSan.

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= proto config
FUZZ_B       ?= build-fuzz
FUZZ_CC      ?= clang
FUZZ_NICE    ?= 19
LLVM_PROFDATA ?= llvm-profdata-14
LLVM_COV      ?= llvm-cov-14

# The protocol target links every daemon object; main.c is built a second
# time with its main() renamed, so that the harness can own main (replay)
# or leave it to libFuzzer, whatever main.c comes to hold.
FUZZ_DAEMON_OBJS := $(filter-out $(B)/obj/daemon/main.o,$(DAEMON_OBJS)) \
                    $(B)/obj/tests/fuzz/shmheapd_main.o
FUZZ_CHECK_OBJ   := $(B)/obj/tests/fuzz/fuzz_check.o
FUZZ_OBJS_proto  := $(B)/obj/tests/fuzz/fuzz_proto.o $(FUZZ_CHECK_OBJ) $(FUZZ_DAEMON_OBJS)
FUZZ_OBJS_config := $(B)/obj/tests/fuzz/fuzz_config.o $(FUZZ_CHECK_OBJ)
FUZZ_LIBS_proto   = $(DAEMON_LIBS) -lm
FUZZ_LIBS_config  = $(CJSON_LIBS) -lm
FUZZ_REPLAYS     := $(if $(DAEMON_SRCS),$(B)/tests/fuzz_replay_proto) \
                    $(if $(CONFIG_SRCS),$(B)/tests/fuzz_replay_config)

$(B)/obj/tests/fuzz/%.o: DIR_CFLAGS = $(DAEMON_CFLAGS)
$(B)/obj/tests/fuzz/replay.o: DIR_CPPFLAGS = -I. -Iclient/include -DFUZZ_DIR='"$(abspath tests/fuzz)"'

$(B)/obj/tests/fuzz/shmheapd_main.o: daemon/main.c $(B)/.flags
	@mkdir -p $(@D)
	$(call msg,CC,$< (main renamed))$(COMPILE) -Dmain=shmheapd_main -Wno-missing-prototypes \
	    -c $< -o $@

-include $(patsubst %.o,%.d,$(sort $(FUZZ_OBJS_proto) $(FUZZ_OBJS_config) \
    $(B)/obj/tests/fuzz/replay.o))

# The replay programs: built and run with everything else.
all: $(FUZZ_REPLAYS)
TESTS += $(FUZZ_REPLAYS)

define fuzz_programs
$(B)/tests/fuzz_replay_$(1): $(B)/obj/tests/fuzz/replay.o $(FUZZ_OBJS_$(1)) $(SHMPROM) $(SHMCONFIG) $(SHMWIRE) $(SHMCORE)
	@mkdir -p $$(@D)
	$$(call msg,LD,$$@)$$(LINK) -o $$@ $$^ $$(FUZZ_LIBS_$(1)) $$(LDLIBS)

# The libFuzzer program, only built in the fuzz build (see `fuzz` below).
$(B)/fuzz/fuzz_$(1): $(FUZZ_OBJS_$(1)) $(SHMPROM) $(SHMCONFIG) $(SHMWIRE) $(SHMCORE)
	@mkdir -p $$(@D)
	$$(call msg,LD,$$@)$$(LINK) -fsanitize=fuzzer -o $$@ $$^ $$(FUZZ_LIBS_$(1)) $$(LDLIBS)
endef
$(foreach t,proto config,$(eval $(call fuzz_programs,$(t))))

.PHONY: fuzz fuzz-build fuzz-coverage fuzz-clean
clean: fuzz-clean
fuzz-clean:
	rm -rf $(FUZZ_B) $(FUZZ_B)-cov
fuzz-build: $(foreach t,$(FUZZ_TARGETS),$(B)/fuzz/fuzz_$(t))

# clang warns of gcc-only warning options (-Wlogical-op, ...), and its -Wcast-align
# also flags casts that are fine on x86-64 (gcc warns only for strict-alignment
# targets): neither is an error in the fuzz build.
FUZZ_MAKE = $(MAKE) --no-print-directory CC=$(FUZZ_CC) CPPFLAGS="-Wno-unknown-warning-option -Wno-cast-align"

fuzz:
	+@$(FUZZ_MAKE) B=$(FUZZ_B) SAN=address,undefined CFLAGS='-O1 -g -fsanitize=fuzzer-no-link' \
	    fuzz-build
	@status=0; for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(FUZZ_B)/corpus/$$t tests/fuzz/crashes/$$t; \
	    echo "== fuzz $$t for $(FUZZ_SECONDS) s (log: $(FUZZ_B)/fuzz_$$t.log)"; \
	    ASAN_OPTIONS=detect_leaks=1$${ASAN_OPTIONS:+:$$ASAN_OPTIONS} \
	    nice -n $(FUZZ_NICE) $(FUZZ_B)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
	        -timeout=30 -print_final_stats=1 -dict=tests/fuzz/$$t.dict \
	        -artifact_prefix=tests/fuzz/crashes/$$t/ \
	        $(FUZZ_B)/corpus/$$t tests/fuzz/corpus/$$t tests/fuzz/crashes/$$t \
	        >$(FUZZ_B)/fuzz_$$t.log 2>&1 \
	        || { status=1; echo "== fuzz $$t: FAILED, see $(FUZZ_B)/fuzz_$$t.log" >&2; }; \
	    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::' $(FUZZ_B)/fuzz_$$t.log || tail -n 20 $(FUZZ_B)/fuzz_$$t.log; \
	done; exit $$status

fuzz-coverage:
	+@$(FUZZ_MAKE) B=$(FUZZ_B)-cov CFLAGS='-O1 -g -fprofile-instr-generate -fcoverage-mapping' \
	    $(foreach t,$(FUZZ_TARGETS),$(FUZZ_B)-cov/tests/fuzz_replay_$(t))
	@for t in $(FUZZ_TARGETS); do \
	    LLVM_PROFILE_FILE=$(FUZZ_B)-cov/$$t.profraw $(FUZZ_B)-cov/tests/fuzz_replay_$$t \
	        tests/fuzz/corpus/$$t $$(ls -d $(FUZZ_B)/corpus/$$t tests/fuzz/crashes/$$t 2>/dev/null) \
	        && $(LLVM_PROFDATA) merge -o $(FUZZ_B)-cov/$$t.profdata $(FUZZ_B)-cov/$$t.profraw \
	        || exit 1; \
	done; \
	$(LLVM_COV) report $(FUZZ_B)-cov/tests/fuzz_replay_proto -instr-profile=$(FUZZ_B)-cov/proto.profdata \
	    daemon/proto.c daemon/conn.c daemon/op_admin.c daemon/op_attach.c daemon/op_info.c \
	    daemon/work.c config/utf8.c; \
	$(LLVM_COV) report $(FUZZ_B)-cov/tests/fuzz_replay_config -instr-profile=$(FUZZ_B)-cov/config.profdata \
	    config/load.c config/config.c config/utf8.c
