#!/usr/bin/env bash
# Runs every workload for every allocator, each run in a fresh process,
# BENCH_REPS (5) times; prints a table of medians and writes JSON.
#
# Environment:
#   B                 build directory (build); binaries in $B/bench
#   BENCH_ALLOCS      allocators (shmheap glibc mimalloc jemalloc tcmalloc)
#   BENCH_WORKLOADS   workloads (W1 W1c W2 W3 W4)
#   BENCH_REPS        repetitions per figure (5)
#   BENCH_TIMEOUT     seconds one run may take before it counts as hung (300)
#   BENCH_JSON        output ($B/bench.json); every run's line goes to $B/bench/runs.txt
#   BENCH_QUICK=1 and the sizes (BENCH_W1_OPS, ...) reach the binaries as they are.
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
read -r -a ALLOCS <<<"${BENCH_ALLOCS:-shmheap glibc mimalloc jemalloc tcmalloc}"
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-W1 W1c W2 W3 W4}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

mkdir -p "$B/bench"
errf=$(mktemp)
trap 'rm -f "$errf"' EXIT

{
    echo "# shmheap bench $(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(uname -n) cpus=$(nproc)" \
        "kernel=$(uname -r) quick=${BENCH_QUICK:-0} reps=$REPS"
} >"$RUNS"

declare -A failed=()

# record_fail ALLOC WORKLOAD REASON: one FAIL line, and stderr shown indented.
record_fail() {
    echo "FAIL alloc=$1 workload=$2 reason=$3" >>"$RUNS"
    failed["$2/$1"]=1
    printf '\n  %s %s failed: %s\n' "$1" "$2" "$3" >&2
    if [ -s "$errf" ]; then
        head -n 20 "$errf" | sed 's/^/    | /' >&2
    fi
}

# Versions, and the check that each allocator really serves malloc.
for a in "${ALLOCS[@]}"; do
    : >"$errf"
    if [ ! -x "$BIN_DIR/bench-$a" ]; then
        echo "INFO alloc=$a error=not-built" >>"$RUNS"
    elif line=$(timeout -k 5 60 "$BIN_DIR/bench-$a" --info 2>"$errf"); then
        echo "$line" >>"$RUNS"
        continue
    else
        echo "${line:-INFO alloc=$a error=crashed}" >>"$RUNS"
    fi
    for w in "${WORKLOADS[@]}"; do
        record_fail "$a" "$w" "allocator-check-failed"
    done
done

# run_one ALLOC WORKLOAD: one fresh process; appends its BENCH line or a FAIL line.
run_one() {
    local a=$1 w=$2 out rc reason
    : >"$errf"
    out=$(timeout -k 10 "$TIMEOUT" "$BIN_DIR/bench-$a" "$w" 2>"$errf")
    rc=$?
    out=$(grep '^BENCH ' <<<"$out" | tail -n 1)
    if [ "$rc" -eq 0 ] && [ -n "$out" ]; then
        echo "$out" >>"$RUNS"
        return 0
    fi
    case $rc in
    0) reason="no result line" ;;
    124 | 137) reason="hung: killed after ${TIMEOUT}s" ;;
    1) reason=$(grep -m 1 -E 'signal|heap_verify|overwritten|maps to|failed' "$errf" || echo "exit 1") ;;
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
            if run_one "$a" "$w"; then
                if [ "$w" = W3 ]; then
                    v=$(tail -n 1 "$RUNS" | grep -o 'scaling=[0-9.]*')
                else
                    v=$(tail -n 1 "$RUNS" | grep -o 'ns_per_op=[0-9.]*')
                fi
                printf ' %s %s' "$a" "${v#*=}" >&2
            fi
        done
        printf '\n' >&2
    done
done

awk -v allocs="${ALLOCS[*]}" -v workloads="${WORKLOADS[*]}" -v json="$JSON" \
    -f "$HERE/report.awk" "$RUNS"
