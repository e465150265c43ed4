# shmheap: plain GNU make (4.x). See README.md for what each target does.
#
#   make                 build everything that has sources, then check-atomics
#   make test            deps, build, reserve huge pages, run the suites plain,
#                        under ASan+UBSan (build-asan/) and under TSan (build-tsan/)
#   make test-run        run the suites of $(B) only (no deps, no huge pages)
#   make SAN=thread B=build-tsan test-run-mp
#   make run ARGS=...    run build/shmheapd in the foreground with these arguments
#   make V=1             show full command lines
#
# Sources are picked up by wildcard, one directory per component; objects go to
# $(B)/obj/<dir>/<name>.o with generated dependency files next to them.

.DEFAULT_GOAL := all
SHELL         := /bin/bash
.SUFFIXES:
.DELETE_ON_ERROR:

VERSION    := 0.1.0
SOVERSION  := 0
B          ?= build
PKG_CONFIG ?= pkg-config
AR         ?= ar
LD         ?= ld
OBJCOPY    ?= objcopy
comma      := ,

# ---------------------------------------------------------------------------
# Flags (STYLE.md section 7)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wold-style-definition -Wformat=2 -Wundef -Wpointer-arith -Wwrite-strings \
        -Wlogical-op -Wredundant-decls -Wcast-align -Wimplicit-fallthrough=5 \
        -Werror=implicit-function-declaration -Werror
BASE := -std=c17 -D_GNU_SOURCE -mcx16 -fno-common -fstack-protector-strong -MMD -MP
CFLAGS ?= -O2 -g

# make SAN=address,undefined | SAN=thread. "override" so that this also holds when
# CFLAGS or LDFLAGS are given on the command line.
ifdef SAN
override CFLAGS  += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
override LDFLAGS += -fsanitize=$(SAN)
endif

# make PERCPU=1 (best in its own B=, e.g. build-percpu): the per-CPU caches of
# shm/percpu.h on malloc's and free's fast paths, a prototype (docs/ARCHITECTURE.md,
# "Per-CPU caches"). Without it they are built but entered only by tests.
ifdef PERCPU
override CPPFLAGS += -DSHMHEAP_PERCPU
endif

# Every object is position-independent (the client shared library takes in the shm
# objects) and everything is built and linked with -pthread.
COMPILE = $(CC) $(BASE) $(WARN) -fPIC -pthread $(DIR_CPPFLAGS) $(CPPFLAGS) $(CFLAGS) $(DIR_CFLAGS)
LINK    = $(CC) -pthread $(CFLAGS) $(LDFLAGS)

# pkg-config, asked lazily and once per variable: nothing runs at parse time, so
# `make clean` needs no packages and `make test` can run `deps` before the first use.
# A package that pkg-config cannot find stops the build with a clear message.
pkg = $(if $(shell $(PKG_CONFIG) --exists $(2) 2>/dev/null || echo no),$(error \
        pkg-config cannot find "$(2)"; run `make deps` (scripts/install-deps.sh)),$(shell \
        $(PKG_CONFIG) $(1) $(2)))
# Headers found through pkg-config are system headers: our warnings do not apply to them.
pkg_cflags = $(patsubst -I%,-isystem %,$(call pkg,--cflags,$(1)))
define lazy
$(1) = $$(eval $(1) := $(2))$$($(1))
endef
$(eval $(call lazy,CJSON_CFLAGS,$$(call pkg_cflags,libcjson)))
$(eval $(call lazy,CJSON_LIBS,$$(call pkg,--libs,libcjson)))
$(eval $(call lazy,CHECK_CFLAGS,$$(call pkg_cflags,check)))
$(eval $(call lazy,CHECK_LIBS,$$(call pkg,--libs,check)))
DAEMON_PKGS := libuv libcjson libsystemd libmicrohttpd
$(eval $(call lazy,DAEMON_CFLAGS,$$(call pkg_cflags,$(DAEMON_PKGS))))
$(eval $(call lazy,DAEMON_LIBS,$$(call pkg,--libs,$(DAEMON_PKGS))))

# The client library links libcjson only if its sources use cJSON.
CLIENT_PKGS := $(if $(shell grep -ls cJSON client/*.c client/*.h 2>/dev/null),libcjson)
$(eval $(call lazy,CLIENT_CFLAGS,$$(if $$(CLIENT_PKGS),$$(call pkg_cflags,$$(CLIENT_PKGS)))))
$(eval $(call lazy,CLIENT_LIBS,$$(if $$(CLIENT_PKGS),$$(call pkg,--libs,$$(CLIENT_PKGS)))))

ifeq ($(V),1)
Q   :=
msg  =
else
Q   := @
msg  = @printf '  %-7s %s\n' '$(1)' '$(2)';
endif

# ---------------------------------------------------------------------------
# Sources and artifacts

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))

SHM_SRCS     := $(wildcard shm/*.c)
CONFIG_SRCS  := $(wildcard config/*.c)
WIRE_SRCS    := $(wildcard wire/*.c)
CLIENT_SRCS  := $(wildcard client/*.c)
DAEMON_SRCS  := $(wildcard daemon/*.c)
CTL_SRCS     := $(wildcard ctl/*.c)
PROM_SRCS    := $(wildcard prom/*.c)
TEST_COMMON  := $(wildcard tests/common/*.c)
UNIT_SRCS    := $(if $(wildcard tests/run_unit.c),tests/run_unit.c $(wildcard tests/unit/*.c))
MP_SRCS      := $(if $(wildcard tests/run_mp.c),tests/run_mp.c $(wildcard tests/mp/*.c))
SERVICE_SRCS := $(if $(wildcard tests/run_service.c),tests/run_service.c $(wildcard tests/service/*.c))
STATIC_SRCS  := $(wildcard tests/static/*.c)
TRACK_SRCS   := $(wildcard tests/track/*.c)

SHM_OBJS     := $(call obj,$(SHM_SRCS))
CONFIG_OBJS  := $(call obj,$(CONFIG_SRCS))
WIRE_OBJS    := $(call obj,$(WIRE_SRCS))
CLIENT_OBJS  := $(call obj,$(CLIENT_SRCS))
DAEMON_OBJS  := $(call obj,$(DAEMON_SRCS))
CTL_OBJS     := $(call obj,$(CTL_SRCS))
PROM_OBJS    := $(call obj,$(PROM_SRCS))
COMMON_OBJS  := $(call obj,$(TEST_COMMON))
UNIT_OBJS    := $(call obj,$(UNIT_SRCS))
MP_OBJS      := $(call obj,$(MP_SRCS))
SERVICE_OBJS := $(call obj,$(SERVICE_SRCS))
STATIC_OBJS  := $(call obj,$(STATIC_SRCS))
TRACK_OBJS   := $(call obj,$(TRACK_SRCS))

# Each artifact is empty when its sources do not exist (yet).
SHMCORE     := $(if $(SHM_SRCS),$(B)/libshmcore.a)
SHMCONFIG   := $(if $(CONFIG_SRCS),$(B)/libshmconfig.a)
SHMPROM     := $(if $(PROM_SRCS),$(B)/libshmprom.a)
SHMWIRE     := $(if $(WIRE_SRCS),$(B)/libshmwire.a)
CLIENT_SO   := $(if $(CLIENT_SRCS),$(B)/libshmheap.so)
CLIENT_A    := $(if $(CLIENT_SRCS),$(B)/libshmheap.a)
CLIENT_PC   := $(if $(CLIENT_SRCS),$(B)/shmheap.pc)
DAEMON      := $(if $(DAEMON_SRCS),$(B)/shmheapd)
CTL         := $(if $(CTL_SRCS),$(B)/shmheapctl)
RUN_UNIT    := $(if $(UNIT_SRCS),$(B)/tests/run_unit)
RUN_MP      := $(if $(MP_SRCS),$(B)/tests/run_mp)
RUN_SERVICE := $(if $(SERVICE_SRCS),$(B)/tests/run_service)
STATIC_USER := $(if $(CLIENT_A),$(if $(STATIC_SRCS),$(B)/tests/static_user))
TRACK_USER  := $(if $(CLIENT_A),$(if $(TRACK_SRCS),$(B)/tests/track_user))
TESTS       := $(RUN_UNIT) $(RUN_MP) $(RUN_SERVICE)
# The installed units: systemd/*.in with the install paths filled in. The
# committed systemd/shmheapd.service is the same for the default PREFIX
# (tests/service/check_systemd.c checks that they agree).
UNIT_TEMPLATES := $(wildcard systemd/*.in)
UNITS          := $(patsubst systemd/%.in,$(B)/systemd/%,$(UNIT_TEMPLATES))

ALL_OBJS := $(sort $(SHM_OBJS) $(CONFIG_OBJS) $(WIRE_OBJS) $(PROM_OBJS) $(CLIENT_OBJS) $(DAEMON_OBJS) \
              $(CTL_OBJS) $(COMMON_OBJS) $(UNIT_OBJS) $(MP_OBJS) $(SERVICE_OBJS) $(STATIC_OBJS) $(TRACK_OBJS))

# ---------------------------------------------------------------------------
# Build

.PHONY: all deps check-atomics check-exports test test-run test-run-mp run run-clean soak format install clean bench

all: $(SHMCORE) $(SHMCONFIG) $(SHMWIRE) $(SHMPROM) $(CLIENT_SO) $(CLIENT_A) $(CLIENT_PC) $(DAEMON) \
     $(CTL) $(TESTS) $(UNITS) check-atomics check-exports

# `make test` and `make run` install missing packages before compiling anything.
ifneq ($(filter deps test run,$(MAKECMDGOALS)),)
$(ALL_OBJS): | deps
endif

# $(call stamp,FILE,TEXT) rewrites FILE, while the makefile is read, only when TEXT
# differs from what FILE holds; targets that depend on FILE are then out of date.
stamp = $(if $(subst $(file <$(1)),,$(2))$(subst $(2),,$(file <$(1))),$(shell \
          mkdir -p $(dir $(1)))$(file >$(1),$(2)))

# Rebuild everything when the compiler or flags change (e.g. `make SAN=thread` in $(B)).
$(call stamp,$(B)/.flags,$(CC) $(BASE) $(WARN) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) $(LDLIBS))

# Per-directory include paths and package flags. shm/ and wire/ are libc only
# and see no client header; everything else also gets client/include (the
# public header).
DIR_CPPFLAGS = -I. -Iclient/include
$(B)/obj/shm/%.o:    DIR_CPPFLAGS = -I.
$(B)/obj/wire/%.o:   DIR_CPPFLAGS = -I.
$(B)/obj/client/%.o: DIR_CFLAGS = -fvisibility=hidden $(CLIENT_CFLAGS)
$(B)/obj/config/%.o: DIR_CFLAGS = $(CJSON_CFLAGS)
$(B)/obj/daemon/%.o: DIR_CFLAGS = $(DAEMON_CFLAGS)
$(B)/obj/ctl/%.o:    DIR_CFLAGS = $(CJSON_CFLAGS)
$(B)/obj/prom/%.o:   DIR_CFLAGS = $(CJSON_CFLAGS)
$(B)/obj/tests/%.o:  DIR_CFLAGS = $(CHECK_CFLAGS) $(CJSON_CFLAGS)

$(B)/obj/%.o: %.c $(B)/.flags
	@mkdir -p $(@D)
	$(call msg,CC,$<)$(COMPILE) -c $< -o $@

-include $(ALL_OBJS:.o=.d)

# Each archive, library and program also depends on a stamp holding the list of its
# inputs, so that it is rebuilt when a source file is deleted, not only when one is
# added or changed. $(call inputs_of,TARGET,INPUTS) writes the stamp and makes
# TARGET depend on it; in recipes, $(inputs) is $^ without the stamp.
define inputs_of
$$(call stamp,$(B)/.inputs/$(1),$(2))
$(B)/$(1): $(B)/.inputs/$(1)
endef
inputs = $(filter-out $(B)/.inputs/%,$^)
$(if $(SHMCORE),$(eval $(call inputs_of,libshmcore.a,$(SHM_OBJS))))
$(if $(SHMCONFIG),$(eval $(call inputs_of,libshmconfig.a,$(CONFIG_OBJS))))
$(if $(SHMWIRE),$(eval $(call inputs_of,libshmwire.a,$(WIRE_OBJS))))
$(if $(SHMPROM),$(eval $(call inputs_of,libshmprom.a,$(PROM_OBJS))))
# "ld-r": the archive's recipe changed (one object, symbols localised); the
# word in its stamp rebuilds archives made by the old recipe.
$(if $(CLIENT_A),$(eval $(call inputs_of,libshmheap.a,ld-r $(CLIENT_OBJS) $(WIRE_OBJS) $(SHM_OBJS))))
$(if $(CLIENT_SO),$(eval $(call inputs_of,libshmheap.so,$(CLIENT_OBJS) $(SHMWIRE) $(SHMCORE))))
$(if $(DAEMON),$(eval $(call inputs_of,shmheapd,$(DAEMON_OBJS) $(SHMPROM) $(SHMCONFIG) $(SHMWIRE) $(SHMCORE))))
$(if $(CTL),$(eval $(call inputs_of,shmheapctl,$(CTL_OBJS) $(SHMPROM) $(SHMCONFIG) $(SHMWIRE) $(SHMCORE))))
$(if $(RUN_UNIT),$(eval $(call inputs_of,tests/run_unit,\
    $(UNIT_OBJS) $(COMMON_OBJS) $(SHMCONFIG) $(SHMWIRE) $(SHMCORE))))
$(if $(RUN_MP),$(eval $(call inputs_of,tests/run_mp,$(MP_OBJS) $(COMMON_OBJS) $(SHMCONFIG) $(SHMCORE))))
$(if $(RUN_SERVICE),$(eval $(call inputs_of,tests/run_service,\
    $(SERVICE_OBJS) $(COMMON_OBJS) $(CLIENT_A) $(SHMCONFIG) $(SHMCORE))))

# Static archives are rebuilt from scratch so that deleted sources leave no members.
define archive
@mkdir -p $(@D)
$(call msg,AR,$@)rm -f $@ && $(AR) rcs $@ $(inputs)
endef

$(B)/libshmcore.a: $(SHM_OBJS)
	$(archive)

$(B)/libshmconfig.a: $(CONFIG_OBJS)
	$(archive)

# The Prometheus text generator (prom/), shared by shmheapd and shmheapctl.
$(B)/libshmprom.a: $(PROM_OBJS)
	$(archive)

$(B)/libshmwire.a: $(WIRE_OBJS)
	$(archive)

# The client library: client objects plus the wire and shm objects. In the
# shared library only SHMHEAP_EXPORT symbols are visible: client objects are
# built with -fvisibility=hidden and the symbols taken from libshmwire.a and
# libshmcore.a are not exported.
#
# The static library holds the same code as one relocatable object (ld -r) in
# which only the SHMHEAP_EXPORT shmheap_* symbols stay global: objcopy makes
# local every hidden symbol (--localize-hidden) and every other one not named
# shmheap_* (-G, the shm and wire objects are not built hidden). So a static
# user's own conn_open or os_commit cannot clash with (or silently replace)
# the library's, and the archive exports what the .so exports; check-exports
# holds the two together. Undefined symbols (libc, cJSON) stay global.
$(B)/libshmheap.a: $(CLIENT_OBJS) $(WIRE_OBJS) $(SHM_OBJS)
	@mkdir -p $(@D)
	$(call msg,LD,$@)rm -f $@ $(B)/obj/libshmheap.o && \
	    $(LD) -r -o $(B)/obj/libshmheap.o $(inputs) && \
	    $(OBJCOPY) --localize-hidden --wildcard --keep-global-symbol='shmheap_*' \
	        $(B)/obj/libshmheap.o && \
	    $(AR) rcs $@ $(B)/obj/libshmheap.o

$(B)/libshmheap.so: $(CLIENT_OBJS) $(SHMWIRE) $(SHMCORE)
	$(call msg,LD,$@)$(LINK) -shared -Wl,-soname,libshmheap.so.$(SOVERSION) -Wl,-z,defs \
	    -Wl,--exclude-libs,libshmwire.a:libshmcore.a -o $@ $(CLIENT_OBJS) $(SHMWIRE) $(SHMCORE) \
	    $(CLIENT_LIBS) $(LDLIBS)
	$(Q)ln -sf libshmheap.so $@.$(SOVERSION)

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DOCDIR     ?= $(PREFIX)/share/doc/shmheap
# The daemon reads /etc/shmheap/shmheapd.json whatever the prefix (CONFIG_DEFAULT_PATH).
CONFDIR    ?= /etc/shmheap

define PC_TEMPLATE
prefix=$(PREFIX)
libdir=$(LIBDIR)
includedir=$(INCLUDEDIR)

Name: shmheap
Description: Client library of the shmheap shared-memory allocator (needs shmheapd)
Version: $(VERSION)
Requires.private: $(CLIENT_PKGS)
Libs: -L$${libdir} -lshmheap
Libs.private: -pthread
Cflags: -I$${includedir}
endef

$(B)/shmheap.pc: Makefile
	@mkdir -p $(@D)
	$(call msg,GEN,$@)$(file >$@,$(PC_TEMPLATE))

# The installed units (see UNITS above).
$(call stamp,$(B)/.install-paths,$(BINDIR) $(DOCDIR))
# `make units` rewrites the committed units from their templates for the
# default PREFIX (after editing a template).
.PHONY: units
units:
	$(Q)for t in $(UNIT_TEMPLATES); do \
	    sed -e 's|@BINDIR@|/usr/local/bin|g' -e 's|@DOCDIR@|/usr/local/share/doc/shmheap|g' \
	        "$$t" >"$${t%.in}"; echo "  GEN     $${t%.in}"; done

$(B)/systemd/%: systemd/%.in $(B)/.install-paths
	@mkdir -p $(@D)
	$(call msg,GEN,$@)sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' $< >$@

$(B)/shmheapd: $(DAEMON_OBJS) $(SHMPROM) $(SHMCONFIG) $(SHMWIRE) $(SHMCORE)
	$(call msg,LD,$@)$(LINK) -o $@ $(inputs) $(DAEMON_LIBS) $(LDLIBS)

$(B)/shmheapctl: $(CTL_OBJS) $(SHMPROM) $(SHMCONFIG) $(SHMWIRE) $(SHMCORE)
	$(call msg,LD,$@)$(LINK) -o $@ $(inputs) $(CJSON_LIBS) $(LDLIBS)

TEST_LIBS = $(if $(SHMCONFIG),$(CJSON_LIBS)) $(CHECK_LIBS) $(LDLIBS)

$(B)/tests/run_unit: $(UNIT_OBJS) $(COMMON_OBJS) $(SHMCONFIG) $(SHMWIRE) $(SHMCORE)
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(LINK) -o $@ $(inputs) $(TEST_LIBS)

$(B)/tests/run_mp: $(MP_OBJS) $(COMMON_OBJS) $(SHMCONFIG) $(SHMCORE)
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(LINK) -o $@ $(inputs) $(TEST_LIBS)

# A static user of libshmheap.a whose own globals carry the library's internal
# names (tests/static/static_user.c): it links only if the archive hides them.
$(B)/tests/static_user: $(STATIC_OBJS) $(CLIENT_A)
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(LINK) -o $@ $(STATIC_OBJS) $(CLIENT_A) $(CLIENT_LIBS) $(LDLIBS)

# A user of libshmheap run under valgrind or ASan by the debugger tests
# (tests/track/track_user.c).
$(B)/tests/track_user: $(TRACK_OBJS) $(CLIENT_A)
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(LINK) -o $@ $(TRACK_OBJS) $(CLIENT_A) $(CLIENT_LIBS) $(LDLIBS)

# The service suite drives the real programs, so they must be built first.
$(B)/tests/run_service: $(SERVICE_OBJS) $(COMMON_OBJS) $(CLIENT_A) $(SHMCONFIG) $(SHMCORE) \
                        | $(DAEMON) $(CTL) $(STATIC_USER) $(TRACK_USER)
	@mkdir -p $(@D)
	$(call msg,LD,$@)$(LINK) -o $@ $(inputs) $(CLIENT_LIBS) $(CJSON_LIBS) $(CHECK_LIBS) $(LDLIBS)

# No 16-byte atomic may go through libatomic: its fallback is a lock table private
# to each process, so it is not atomic between processes (DESIGN.md, pitfalls).
ATOMIC_LIBS := $(SHMCORE) $(CLIENT_A)
check-atomics: $(B)/.atomics-ok
$(B)/.atomics-ok: $(ATOMIC_LIBS)
	@mkdir -p $(@D)
	@if [ -n '$^' ] && nm -A $^ | grep -E '__atomic_[a-z_]+_16'; then \
	    echo 'check-atomics: error: the symbols above are 16-byte atomics that go through' >&2; \
	    echo '  libatomic, whose lock-based fallback is not atomic between processes.' >&2; \
	    echo '  Use cmpxchg16b itself (-mcx16 with the __sync builtins, or inline asm).' >&2; \
	    exit 1; \
	fi
	@touch $@

# libshmheap.a must export exactly what libshmheap.so exports, and that only
# shmheap_* names: any other global name in the archive can clash with a static
# user's own (issue 7). Run by `make` (so in every build and stage of `make test`).
check-exports: $(if $(CLIENT_A),$(B)/.exports-ok)
$(B)/.exports-ok: $(CLIENT_A) $(CLIENT_SO)
	@mkdir -p $(@D)
	@a=$$(nm -g --defined-only $(CLIENT_A) | awk 'NF == 3 { print $$3 }' | sort); \
	so=$$(nm -D --defined-only $(CLIENT_SO) | awk 'NF == 3 { print $$3 }' | sort); \
	other=$$(printf '%s\n' "$$a" | grep -v '^shmheap_' | grep .); \
	if [ -z "$$a" ] || [ -n "$$other" ] || [ "$$a" != "$$so" ]; then \
	    echo 'check-exports: error: libshmheap.a must export exactly the shmheap_* symbols' >&2; \
	    echo '  that libshmheap.so exports. Other globals in the archive:' >&2; \
	    printf '    %s\n' $$other >&2; \
	    echo '  Only in the archive (<) or only in the shared library (>):' >&2; \
	    diff <(printf '%s\n' "$$a") <(printf '%s\n' "$$so") | grep '^[<>]' | sed 's/^/    /' >&2; \
	    exit 1; \
	fi
	@touch $@

# ---------------------------------------------------------------------------
# Tests

deps:
	@bash scripts/install-deps.sh

# Environment of the suites. Sanitizer runs use smaller sizes and longer timeouts;
# options already in the environment are appended, so they win.
ifneq ($(filter thread,$(subst $(comma), ,$(SAN))),)
SAN_ENV := SHMHEAP_TEST_SCALE=$${SHMHEAP_TEST_SCALE:-small} CK_TIMEOUT_MULTIPLIER=8 \
           TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1$${TSAN_OPTIONS:+:$$TSAN_OPTIONS}
else ifdef SAN
SAN_ENV := SHMHEAP_TEST_SCALE=$${SHMHEAP_TEST_SCALE:-small} CK_TIMEOUT_MULTIPLIER=4 \
           ASAN_OPTIONS=detect_leaks=1:abort_on_error=1$${ASAN_OPTIONS:+:$$ASAN_OPTIONS} \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1$${UBSAN_OPTIONS:+:$$UBSAN_OPTIONS}
endif
TEST_ENV = SHMHEAP_BUILD_DIR=$(abspath $(B)) \
           $(if $(DAEMON),SHMHEAPD=$(abspath $(DAEMON))) $(if $(CTL),SHMHEAPCTL=$(abspath $(CTL))) \
           $(SAN_ENV)
RUN_LABEL := $(B)$(if $(SAN), (SAN=$(SAN)))

# Shell code: run_tests BINARY... runs each suite with a TAP log in $(B)/<suite>.tap,
# carries on after a failure and fails at the end if any suite failed.
RUN_TESTS_SH = run_tests() { \
    local t failed=; \
    if [ $$\# -eq 0 ]; then echo "== $(RUN_LABEL): no test suites yet"; return 0; fi; \
    for t in "$$@"; do \
        echo "== $(RUN_LABEL): $$t"; \
        env $(TEST_ENV) CK_TAP_LOG_FILE_NAME=$(B)/$${t\#\#*/}.tap "$$t" || failed="$$failed $${t\#\#*/}"; \
    done; \
    if [ -n "$$failed" ]; then echo "== $(RUN_LABEL): FAILED:$$failed" >&2; return 1; fi; \
}

test-run: all
	@$(RUN_TESTS_SH); run_tests $(TESTS)

test-run-mp: $(RUN_MP) check-atomics check-exports
	@$(RUN_TESTS_SH); run_tests $(RUN_MP)

# The whole gate: plain build, then ASan+UBSan, then TSan on the concurrency
# suites. Each stage runs even if an earlier one failed; the huge pages are
# released whatever happens, and the exit status says whether all stages passed.
# Under `make -n` the recipe below would still run (it calls $(MAKE)), so only say what it does.
ifneq ($(findstring n,$(firstword -$(MAKEFLAGS))),)
test: deps all
	@echo 'test: reserve huge pages; run $(TESTS); $(MAKE) B=build-asan SAN=address,undefined test-run;'
	@echo 'test: $(MAKE) B=build-tsan SAN=thread test-run-mp; release huge pages'
else
test: deps all
	@status=0; failed=; \
	trap 'bash scripts/hugepages.sh release' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	bash scripts/hugepages.sh reserve 8; \
	$(RUN_TESTS_SH); \
	run_tests $(TESTS) || { status=1; failed="$$failed $(B)"; }; \
	$(MAKE) --no-print-directory B=build-asan SAN=address,undefined test-run \
	    || { status=1; failed="$$failed build-asan"; }; \
	$(MAKE) --no-print-directory B=build-tsan SAN=thread test-run-mp \
	    || { status=1; failed="$$failed build-tsan"; }; \
	if [ $$status -eq 0 ]; then echo "== test: all stages passed"; \
	else echo "== test: FAILED in:$$failed" >&2; fi; \
	exit $$status
endif

# ---------------------------------------------------------------------------
# Running

# `make run` keeps the heap in a state directory on tmpfs, so that stopping
# it (Ctrl-C) and running it again adopts the same heap; `make run-clean`
# removes the directory first; `make run STATE_DIR=` keeps nothing.
STATE_DIR ?= /dev/shm/shmheap-state-$(shell id -u)
run: deps all
ifneq ($(DAEMON),)
	exec $(DAEMON) $(if $(STATE_DIR),--state-dir $(STATE_DIR)) $(ARGS)
else
	@echo "run: shmheapd is not built yet (daemon/ has no sources); running the unit tests as a demo"
	@$(RUN_TESTS_SH); run_tests $(RUN_UNIT)
endif

run-clean:
	$(if $(STATE_DIR),rm -rf -- '$(STATE_DIR)')
	$(MAKE) run

soak: all
	@$(RUN_TESTS_SH); SHMHEAP_SOAK=1; export SHMHEAP_SOAK; \
	run_tests $(if $(RUN_SERVICE),$(RUN_SERVICE),$(RUN_MP))

# ---------------------------------------------------------------------------
# Housekeeping

format:
	@files=$$(find . \( -path './build*' -o -path ./.git \) -prune -o -type f -name '*.[ch]' -print); \
	if [ -n "$$files" ]; then clang-format -i $$files; fi

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
ifneq ($(DAEMON),)
	install -m 755 $(DAEMON) $(DESTDIR)$(BINDIR)/shmheapd
endif
ifneq ($(CTL),)
	install -m 755 $(CTL) $(DESTDIR)$(BINDIR)/shmheapctl
endif
ifneq ($(CLIENT_SRCS),)
	install -m 755 $(CLIENT_SO) $(DESTDIR)$(LIBDIR)/libshmheap.so.$(VERSION)
	ln -sf libshmheap.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libshmheap.so.$(SOVERSION)
	ln -sf libshmheap.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libshmheap.so
	install -m 644 $(CLIENT_A) $(DESTDIR)$(LIBDIR)/libshmheap.a
	install -m 644 client/include/shmheap.h $(DESTDIR)$(INCLUDEDIR)/shmheap.h
	sed -e 's|^prefix=.*|prefix=$(PREFIX)|' -e 's|^libdir=.*|libdir=$(LIBDIR)|' \
	    -e 's|^includedir=.*|includedir=$(INCLUDEDIR)|' $(CLIENT_PC) \
	    >$(DESTDIR)$(PKGCONFIGDIR)/shmheap.pc
	@if [ -z '$(DESTDIR)' ] && [ "$$(id -u)" -eq 0 ]; then ldconfig; fi
endif
ifneq ($(UNITS),)
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(CONFDIR)
	install -m 644 $(UNITS) systemd/shmheapd.socket $(DESTDIR)$(UNITDIR)/
	install -m 644 systemd/shmheap.sysusers $(DESTDIR)$(SYSUSERSDIR)/shmheap.conf
	install -m 644 README.md systemd/metrics.conf etc/shmheapd.json.example $(DESTDIR)$(DOCDIR)/
	install -m 644 etc/shmheapd.json.example $(DESTDIR)$(CONFDIR)/shmheapd.json.example
	@# The user and group shmheap: systemd-sysusers if there is one, else the shadow tools.
	@if [ -z '$(DESTDIR)' ] && [ "$$(id -u)" -eq 0 ]; then \
	    if command -v systemd-sysusers >/dev/null 2>&1; then \
	        echo "systemd-sysusers $(SYSUSERSDIR)/shmheap.conf"; \
	        systemd-sysusers $(SYSUSERSDIR)/shmheap.conf; \
	    else \
	        getent group shmheap >/dev/null || groupadd --system shmheap; \
	        getent passwd shmheap >/dev/null || useradd --system -g shmheap -d / \
	            -s /usr/sbin/nologin -c "shmheap shared-memory heap daemon" shmheap; \
	    fi; \
	    if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi
endif

clean:
	rm -rf $(sort build build-asan build-tsan $(B))

# Benchmarks live in bench/bench.mk, which defines `bench` and writes $(B)/bench.json.
ifeq ($(wildcard bench/bench.mk),)
bench:
	@echo "no benchmark yet"
else
-include bench/bench.mk
endif
-include examples/examples.mk
# Fuzzing: tests/fuzz/fuzz.mk defines `fuzz`, `fuzz-coverage` and the replay programs.
-include tests/fuzz/fuzz.mk
