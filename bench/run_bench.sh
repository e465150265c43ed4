#!/usr/bin/env bash
# Runs every workload for every allocator, each run in a fresh process,
# BENCH_REPS (5) times; prints a table of medians and writes JSON.
#
# Environment:
#   B                 build directory (build); binaries in $B/bench
#   BENCH_ALLOCS      allocators (shmheap shmheap-api glibc mimalloc jemalloc tcmalloc boost)
#   BENCH_WORKLOADS   workloads (W1 W1c W2 W3 W4 W5b W6); boost has no W5b
#                     (a managed_shared_memory gives nothing back while mapped)
#   BENCH_REPS        repetitions per figure (5)
#   BENCH_TIMEOUT     seconds one run may take before it counts as hung (300)
#   BENCH_JSON        output ($B/bench.json); every run's line goes to $B/bench/runs.txt
#   BENCH_HUGE_PAGES  shmheap's pages, core and daemon: off (default), 2M, 1G, auto
#   BENCH_QUICK=1 and the sizes (BENCH_W1_OPS, ...) reach the binaries as they are.
#
# When BENCH_ALLOCS has shmheap-api, a shmheapd is started first in a fresh
# temporary directory (--socket DIR/shmheap.sock, --config DIR/shmheapd.json
# holding {"huge_pages": BENCH_HUGE_PAGES}, every other key at its
# default; {} with auto), and the shmheap-api runs attach to
# it through the public API (BENCH_SHMHEAP_SOCKET). After the workloads,
# examples/attach_latency measures, BENCH_REPS times against the same daemon,
# the attach latency (BENCH_ATTACHES, 100 attaches) and the stats op's round
# trip, with no other client and with two busy clients (BENCH_STATS_REQUESTS,
# 2000 each; 500 with BENCH_QUICK); then `shmheapctl verify` checks the heap and the daemon is
# stopped (SIGTERM, SIGKILL after 10 s), also when this script fails or is
# interrupted, and dies with it (setpriv --pdeathsig) if it is killed. Its
# log is kept in $B/bench/shmheapd.log. A daemon that does not start within
# BENCH_DAEMON_WAIT (20) seconds makes every shmheap-api figure "fail".
#   BENCH_SHMHEAPD, BENCH_SHMHEAPCTL, BENCH_ATTACH_LATENCY   the programs
#                     ($B/shmheapd, $B/shmheapctl, $B/examples/attach_latency)
#
# Repetitions are interleaved (rep 1 of every allocator, then rep 2, ...)
# and the allocator order rotates each time, so that a slow spell on the
# shared machine does not land on one allocator. A run that crashes, fails
# or hangs marks that (workload, allocator) "fail" (null in the JSON) and
# its remaining repetitions are skipped; the other figures are unaffected.
#
# Only bash, coreutils (timeout) and awk; no python.
set -u -o pipefail

B=${B:-build}
BIN_DIR=$B/bench
JSON=${BENCH_JSON:-$B/bench.json}
RUNS=$B/bench/runs.txt
REPS=${BENCH_REPS:-5}
TIMEOUT=${BENCH_TIMEOUT:-300}
read -r -a ALLOCS <<<"${BENCH_ALLOCS:-shmheap shmheap-api glibc mimalloc jemalloc tcmalloc boost}"
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-W1 W1c W2 W3 W4 W5b W6}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/callgrind.sh
. "$HERE/callgrind.sh"
SHMHEAPD=${BENCH_SHMHEAPD:-$B/shmheapd}
SHMHEAPCTL=${BENCH_SHMHEAPCTL:-$B/shmheapctl}
ATTACH_LATENCY=${BENCH_ATTACH_LATENCY:-$B/examples/attach_latency}
DAEMON_WAIT=${BENCH_DAEMON_WAIT:-20}
# shmheap's pages, core and daemon alike: off (4 KiB), 2M, 1G or auto.
HUGE=${BENCH_HUGE_PAGES:-off}
case $HUGE in
off | 2M | 1G | auto) export BENCH_HUGE_PAGES=$HUGE ;;
*) echo "run_bench.sh: BENCH_HUGE_PAGES=$HUGE: want off, 2M, 1G or auto" >&2; exit 2 ;;
esac
ATTACHES=${BENCH_ATTACHES:-100}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    STATS_REQS=${BENCH_STATS_REQUESTS:-500}
else
    STATS_REQS=${BENCH_STATS_REQUESTS:-2000}
fi
SERVICE_FIGS=(attach stats_rtt_idle stats_rtt)

mkdir -p "$B/bench"
errf=$(mktemp)
outf=$(mktemp)
child=
svc_dir=
daemon_pid=
daemon_err=

# run_timed CMD...: runs CMD under timeout (BENCH_TIMEOUT), stdout into
# $outf and stderr into $errf; returns its status. It runs in the
# background and is waited for, so that a signal to this script is handled
# at once: the trap's exit then stops it (cleanup).
run_timed() {
    local rc
    timeout -k 10 "$TIMEOUT" "$@" >"$outf" 2>"$errf" &
    child=$!
    wait "$child"
    rc=$?
    child=
    return "$rc"
}

# ---- the daemon for shmheap-api ----

want_api=
for a in "${ALLOCS[@]}"; do
    [ "$a" = shmheap-api ] && want_api=1
done

daemon_alive() {
    [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null
}

# Starts shmheapd in a fresh directory and waits until it answers; on
# failure sets daemon_err and returns 1 (the daemon, if any, is stopped).
start_daemon() {
    local deadline pdeath=() st d o
    # Directories left by a driver that was killed outright (SIGKILL: no
    # cleanup; its daemon died with it): each names its driver in "owner".
    for d in "${TMPDIR:-/tmp}"/shmheap-bench.*; do
        [ -f "$d/owner" ] || continue
        read -r o <"$d/owner" 2>/dev/null || continue
        [[ "$o" =~ ^[0-9]+$ ]] && ! kill -0 "$o" 2>/dev/null && rm -rf "$d"
    done
    svc_dir=$(mktemp -d "${TMPDIR:-/tmp}/shmheap-bench.XXXXXX") || {
        daemon_err="mktemp -d failed"
        return 1
    }
    echo "$$" >"$svc_dir/owner"
    SOCK=$svc_dir/shmheap.sock
    # Pages as for the core's runs (BENCH_HUGE_PAGES, alloc.h): pinned, so
    # that the huge page pool of a shared machine cannot change them.
    case $HUGE in
    auto) printf '{}\n' ;;
    *) printf '{"huge_pages": "%s"}\n' "$HUGE" ;;
    esac >"$svc_dir/shmheapd.json"
    if [ ! -x "$SHMHEAPD" ]; then
        daemon_err="$SHMHEAPD is not built"
        return 1
    fi
    # The daemon dies with this script even if it is killed (SIGKILL).
    if command -v setpriv >/dev/null 2>&1 && setpriv --help 2>&1 | grep -q pdeathsig; then
        pdeath=(setpriv --pdeathsig TERM)
    fi
    env -u NOTIFY_SOCKET -u LISTEN_FDS -u LISTEN_PID -u LISTEN_FDNAMES -u WATCHDOG_USEC \
        -u WATCHDOG_PID -u SHMHEAP_SOCKET "${pdeath[@]}" \
        "$SHMHEAPD" --socket "$SOCK" --config "$svc_dir/shmheapd.json" \
        </dev/null >"$svc_dir/daemon.log" 2>&1 &
    daemon_pid=$!
    deadline=$((SECONDS + DAEMON_WAIT))
    while :; do
        if ! daemon_alive; then
            wait "$daemon_pid" 2>/dev/null
            st=$?
            daemon_pid=
            daemon_err="shmheapd exited (status $st) before it was ready"
            return 1
        fi
        if [ -S "$SOCK" ]; then
            if [ -x "$SHMHEAPCTL" ]; then
                timeout -k 2 10 "$SHMHEAPCTL" --socket "$SOCK" stats --json >/dev/null 2>&1 && return 0
            else
                return 0 # bench-shmheap-api --info below tries it for real
            fi
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            daemon_err="shmheapd not ready after ${DAEMON_WAIT}s"
            stop_daemon
            return 1
        fi
        sleep 0.1
    done
}

# SIGTERM, then SIGKILL after 10 s; keeps its log as $B/bench/shmheapd.log.
stop_daemon() {
    local i st
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null
        for ((i = 0; i < 100; i++)); do
            daemon_alive || break
            sleep 0.1
        done
        if daemon_alive; then
            kill -KILL "$daemon_pid" 2>/dev/null
            echo "shmheapd did not stop within 10 s of SIGTERM: killed" >&2
        fi
        wait "$daemon_pid" 2>/dev/null
        st=$?
        [ "$st" -ne 0 ] && echo "shmheapd exited with status $st (log: $B/bench/shmheapd.log)" >&2
        daemon_pid=
    fi
    if [ -n "$svc_dir" ] && [ -f "$svc_dir/daemon.log" ]; then
        cp "$svc_dir/daemon.log" "$B/bench/shmheapd.log" 2>/dev/null
    fi
}

cleanup() {
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null # timeout passes it on
        wait "$child" 2>/dev/null
    fi
    stop_daemon
    [ -n "$svc_dir" ] && rm -rf "$svc_dir"
    rm -f "$errf" "$outf"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

{
    echo "# shmheap bench $(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(uname -n) cpus=$(nproc)" \
        "kernel=$(uname -r) quick=${BENCH_QUICK:-0} reps=$REPS huge_pages=$HUGE"
} >"$RUNS"

declare -A failed=()

# The last lines of the daemon's log, for a failure's message.
daemon_log_into_errf() {
    if [ -n "$svc_dir" ] && [ -s "$svc_dir/daemon.log" ]; then
        { echo "shmheapd log ($svc_dir/daemon.log):"; tail -n 8 "$svc_dir/daemon.log"; } >>"$errf"
    fi
}

# record_fail ALLOC WORKLOAD REASON: one FAIL line, and stderr shown indented.
record_fail() {
    echo "FAIL alloc=$1 workload=$2 reason=$3" >>"$RUNS"
    failed["$2/$1"]=1
    printf '\n  %s %s failed: %s\n' "$1" "$2" "$3" >&2
    if [ -s "$errf" ]; then
        head -n 20 "$errf" | sed 's/^/    | /' >&2
    fi
}

if [ -n "$want_api" ]; then
    printf '[starting shmheapd]' >&2
    if start_daemon; then
        export BENCH_SHMHEAP_SOCKET=$SOCK
        echo "DAEMON pid=$daemon_pid socket=$SOCK" >>"$RUNS"
        printf ' pid %s, %s\n' "$daemon_pid" "$SOCK" >&2
    else
        printf ' failed: %s\n' "$daemon_err" >&2
        echo "INFO alloc=shmheap-api error=daemon-not-started" >>"$RUNS"
        : >"$errf"
        daemon_log_into_errf
        for w in "${WORKLOADS[@]}" "${SERVICE_FIGS[@]}"; do
            record_fail shmheap-api "$w" "$daemon_err"
            : >"$errf"
        done
    fi
fi

# Versions, and the check that each allocator really serves malloc.
for a in "${ALLOCS[@]}"; do
    : >"$errf"
    if [ "$a" = shmheap-api ] && [ -z "$daemon_pid" ]; then
        continue # failed above
    elif [ ! -x "$BIN_DIR/bench-$a" ]; then
        echo "INFO alloc=$a error=not-built" >>"$RUNS"
    elif line=$(timeout -k 5 60 "$BIN_DIR/bench-$a" --info 2>"$errf"); then
        echo "$line" >>"$RUNS"
        continue
    else
        echo "${line:-INFO alloc=$a error=crashed}" >>"$RUNS"
    fi
    [ "$a" = shmheap-api ] && daemon_log_into_errf
    for w in "${WORKLOADS[@]}"; do
        record_fail "$a" "$w" "allocator-check-failed"
    done
    if [ "$a" = shmheap-api ]; then
        for w in "${SERVICE_FIGS[@]}"; do
            record_fail "$a" "$w" "allocator-check-failed"
        done
    fi
done

# run_one ALLOC WORKLOAD: one fresh process; appends its BENCH line or a FAIL line.
run_one() {
    local a=$1 w=$2 out rc reason
    : >"$errf"
    if [ "$a" = shmheap-api ] && ! daemon_alive; then
        daemon_log_into_errf
        record_fail "$a" "$w" "shmheapd is no longer running"
        return 1
    fi
    run_timed "$BIN_DIR/bench-$a" "$w"
    rc=$?
    out=$(grep '^BENCH ' "$outf" | tail -n 1)
    if [ "$rc" -eq 0 ] && [ -n "$out" ]; then
        echo "$out" >>"$RUNS"
        # A point of W3's curve beyond 2 processes can fail on its own
        # (tputN=fail): that point is "fail", the rest of the run stands.
        for p in $(grep -o 'tput[0-9]*=fail' <<<"$out"); do
            p=${p%=fail}
            [ -n "${failed["W3_${p#tput}p/$a"]:-}" ] ||
                record_fail "$a" "W3_${p#tput}p" \
                    "$(grep -m 1 -E 'signal|overwritten|failed|process [0-9]+ of|Cannot' "$errf" ||
                        echo "a process failed")"
        done
        return 0
    fi
    case $rc in
    0) reason="no result line" ;;
    124 | 137) reason="hung: killed after ${TIMEOUT}s" ;;
    1) reason=$(grep -m 1 -E 'signal|heap_verify|check_sanity|overwritten|maps to|failed' "$errf" || echo "exit 1") ;;
    *) if [ "$rc" -gt 128 ]; then
           reason="killed by signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null))"
       else
           reason="exit $rc"
       fi ;;
    esac
    record_fail "$a" "$w" "$reason"
    return 1
}

n=${#ALLOCS[@]}
for w in "${WORKLOADS[@]}"; do
    for ((r = 0; r < REPS; r++)); do
        printf '[%s %d/%d]' "$w" $((r + 1)) "$REPS" >&2
        for ((i = 0; i < n; i++)); do
            a=${ALLOCS[$(((i + r) % n))]}
            [ -n "${failed["$w/$a"]:-}" ] && continue
            [ "$w/$a" = W5b/boost ] && continue # no release call: not applicable
            if run_one "$a" "$w"; then
                case $w in
                W3) v=$(grep '^BENCH ' "$outf" | tail -n 1 | grep -o 'scaling=[0-9.]*') ;;
                W5b) v=$(grep '^BENCH ' "$outf" | tail -n 1 | grep -o 'ratio=[0-9.]*') ;;
                *) v=$(grep '^BENCH ' "$outf" | tail -n 1 | grep -o 'ns_per_op=[0-9.]*') ;;
                esac
                printf ' %s %s' "$a" "${v#*=}" >&2
            fi
        done
        printf '\n' >&2
    done
done

# ---- instructions per operation, counted by callgrind (callgrind.sh) ----
# BENCH_INSNS=0 skips it; BENCH_INSNS_OPS sets the longer run's operations.
INSNS_OPS=${BENCH_INSNS_OPS:-200000}
if [ "${BENCH_INSNS:-1}" != 0 ] && command -v valgrind >/dev/null 2>&1; then
    printf '[instructions, callgrind]' >&2
    for a in "${ALLOCS[@]}"; do
        case $a in shmheap-api | boost) continue ;; esac
        [ -x "$BIN_DIR/bench-$a" ] || continue
        for w in W1 W2; do
            : >"$errf"
            if per=$(insns_per_op "$BIN_DIR/bench-$a" "$w" "$INSNS_OPS" "$errf"); then
                echo "INSNS alloc=$a workload=$w ops=$INSNS_OPS per_op=$per" >>"$RUNS"
                printf ' %s %s %s' "$a" "$w" "$per" >&2
            else
                echo "INSNS alloc=$a workload=$w error=callgrind-failed" >>"$RUNS"
            fi
        done
    done
    printf '\n' >&2
fi

# ---- the service figures, then the heap check, against the same daemon ----

# reason_of RC: why an attach_latency run gave no line for a figure.
reason_of() {
    case $1 in
    124 | 137) echo "hung: killed after ${TIMEOUT}s" ;;
    *) grep -m 1 -E 'failed|no reply|hung up|busy client|not attached|connect|error' "$errf" ||
           echo "exit $1" ;;
    esac
}

if [ -n "$want_api" ] && [ -n "$daemon_pid" ]; then
    for ((r = 0; r < REPS; r++)); do
        printf '[service %d/%d]' $((r + 1)) "$REPS" >&2
        : >"$errf"
        if ! daemon_alive; then
            daemon_log_into_errf
            for f in "${SERVICE_FIGS[@]}"; do
                [ -n "${failed["$f/shmheap-api"]:-}" ] ||
                    record_fail shmheap-api "$f" "shmheapd is no longer running"
            done
            break
        fi
        if [ ! -x "$ATTACH_LATENCY" ]; then
            for f in "${SERVICE_FIGS[@]}"; do
                record_fail shmheap-api "$f" "$ATTACH_LATENCY is not built"
            done
            break
        fi
        run_timed "$ATTACH_LATENCY" -m -s "$SOCK" -n "$ATTACHES" -r "$STATS_REQS"
        rc=$?
        for f in "${SERVICE_FIGS[@]}"; do
            line=$(grep "^SERVICE what=$f " "$outf" | tail -n 1)
            if [ -n "$line" ]; then
                echo "$line" >>"$RUNS"
                v=$(grep -o 'median_us=[0-9.]*' <<<"$line")
                printf ' %s %s us' "$f" "${v#*=}" >&2
            elif [ -z "${failed["$f/shmheap-api"]:-}" ]; then
                record_fail shmheap-api "$f" "$(reason_of "$rc")"
            fi
        done
        printf '\n' >&2
    done

    # The heap the shmheap-api runs used must still be consistent; if it is
    # not, none of their figures can be trusted.
    : >"$errf"
    if daemon_alive && [ -x "$SHMHEAPCTL" ]; then
        vout=$(timeout -k 5 120 "$SHMHEAPCTL" --socket "$SOCK" verify 2>&1)
        rc=$?
        echo "VERIFY alloc=shmheap-api rc=$rc $(tr '\n' ' ' <<<"$vout")" >>"$RUNS"
        if [ "$rc" -ne 0 ]; then
            echo "$vout" >"$errf"
            for w in "${WORKLOADS[@]}" "${SERVICE_FIGS[@]}"; do
                [ -n "${failed["$w/shmheap-api"]:-}" ] ||
                    record_fail shmheap-api "$w" "shmheapctl verify after the runs: exit $rc"
            done
        fi
    elif ! daemon_alive; then
        echo "VERIFY alloc=shmheap-api skipped: shmheapd is not running" >>"$RUNS"
    fi
    stop_daemon
fi

awk -v allocs="${ALLOCS[*]}" -v workloads="${WORKLOADS[*]}" -v json="$JSON" \
    -f "$HERE/runs.awk" -f "$HERE/report.awk" "$RUNS"
