# shellcheck shell=bash
# Instructions per operation, counted by callgrind; sourced by
# bench/run_bench.sh and bench/breakdown.sh. Seconds on a shared machine are
# noisy; instruction counts are not: the same binary and inputs give the
# same count whatever else runs. A count is (a run of OPS operations) - (a
# run of 1), divided by OPS, so the set-up of the process and of the
# workload (W2's live set) cancels out: per W1 pair (a malloc and its free)
# or per W2 operation. Needs valgrind (shmheap attaches under it since its
# reservation adapts).

# insns_total BIN WORKLOAD OPS ERRF: callgrind's instruction total of one
# run (stderr into ERRF); fails if the run or callgrind does.
insns_total() {
    local n
    BENCH_QUICK=0 BENCH_W1_OPS=$3 BENCH_W2_OPS=$3 timeout -k 5 "${TIMEOUT:-300}" \
        valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" "$2" >/dev/null 2>"$4" ||
        return 1
    n=$(grep -o 'Collected : [0-9]*' "$4" | grep -o '[0-9]*$') || return 1
    echo "$n"
}

# insns_per_op BIN WORKLOAD OPS ERRF: instructions per W1 pair or W2 op.
insns_per_op() {
    local base full
    base=$(insns_total "$1" "$2" 1 "$4") && full=$(insns_total "$1" "$2" "$3" "$4") || return 1
    awk -v f="$full" -v b="$base" -v n="$3" 'BEGIN { printf "%.1f", (f - b) / n }'
}
