#!/usr/bin/env bash
# The automatic trim's figures (make bench-decay):
#  1. memory over time for two workloads (bench/decay_trace.c), one process
#     each, shmheap beside jemalloc and tcmalloc, all three releasing after
#     about DECAY_MS (1000) ms:
#       shmheap   a fresh shmheapd with {"decay_ms": DECAY_MS} per run
#       jemalloc  MALLOC_CONF=background_thread:true,dirty_decay_ms:DECAY_MS,
#                 muzzy_decay_ms:0 (its decay, purged by its background thread)
#       tcmalloc  gperftools, TCMALLOC_RELEASE_RATE=1 (its default) and a
#                 background thread releasing TCMALLOC_BG_RATE (1 GiB) per
#                 second, as Google tcmalloc's background release does
#  2. the policy's cost to a client's throughput: bench-shmheap-api W1 and
#     W2 against a daemon with decay_ms 0 (off), 10000 (the default) and 10
#     (a tick every 10 ms), BENCH_REPS (5) runs each, interleaved; medians,
#     with the releases the policy made during the run.
# Output: $B/bench/decay/<alloc>-<workload>.txt (the traces),
# $B/bench/decay/summary.txt (printed too).
set -u -o pipefail

B=${B:-build}
OUT=$B/bench/decay
DECAY_MS=${DECAY_MS:-1000}
REPS=${BENCH_REPS:-5}
SHMHEAPD=${BENCH_SHMHEAPD:-$B/shmheapd}
SHMHEAPCTL=${BENCH_SHMHEAPCTL:-$B/shmheapctl}
mkdir -p "$OUT"
tmp=$(mktemp -d)
daemon_pid=
trap 'stop_daemon; rm -rf "$tmp"' EXIT

start_daemon() { # config-json
    printf '%s\n' "$1" >"$tmp/shmheapd.json"
    rm -f "$tmp/sock"
    "$SHMHEAPD" --socket "$tmp/sock" --config "$tmp/shmheapd.json" 2>>"$OUT/shmheapd.log" &
    daemon_pid=$!
    for _ in $(seq 100); do
        "$SHMHEAPCTL" --socket "$tmp/sock" stats --json >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "decay.sh: shmheapd did not start (see $OUT/shmheapd.log)" >&2
    exit 1
}

stop_daemon() {
    [ -n "$daemon_pid" ] || return 0
    kill "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
    daemon_pid=
}

: >"$OUT/shmheapd.log"
for w in peak breathe; do
    for a in shmheap jemalloc tcmalloc; do
        f=$OUT/$a-$w.txt
        case $a in
        shmheap)
            start_daemon "{\"decay_ms\": $DECAY_MS}"
            SHMHEAP_SOCKET=$tmp/sock "$B/bench/decay-trace-shmheap" "$w" >"$f"
            stop_daemon
            ;;
        jemalloc)
            MALLOC_CONF="background_thread:true,dirty_decay_ms:$DECAY_MS,muzzy_decay_ms:0" \
                "$B/bench/decay-trace-jemalloc" "$w" >"$f"
            ;;
        tcmalloc)
            TCMALLOC_RELEASE_RATE=1 TCMALLOC_BG_RATE=${TCMALLOC_BG_RATE:-1073741824} \
                "$B/bench/decay-trace-tcmalloc" "$w" >"$f"
            ;;
        esac || echo "decay.sh: $a $w failed" >&2
    done
done

# Throughput with the policy off, at its default and at its most eager.
tput() { # decay_ms workload -> "per_s releases"
    local per_s rel
    start_daemon "{\"decay_ms\": $1}"
    per_s=$(BENCH_SHMHEAP_SOCKET=$tmp/sock "$B/bench/bench-shmheap-api" "$2" |
        awk '/^BENCH/ { for (i = 1; i <= NF; i++) if ($i ~ /^per_s=/) print substr($i, 7) }')
    rel=$("$SHMHEAPCTL" --socket "$tmp/sock" stats --json |
        grep -o '"decay":{[^}]*}' | grep -o '"releases":[0-9]*' | cut -d: -f2)
    stop_daemon
    echo "$per_s ${rel:-?}"
}
: >"$tmp/tput"
for r in $(seq "$REPS"); do
    for wl in W1 W2; do
        for d in 0 10000 10; do
            echo "$wl $d $(tput "$d" "$wl")" >>"$tmp/tput"
        done
    done
done

{
    echo "== automatic trim figures: decay_ms $DECAY_MS (jemalloc dirty_decay_ms $DECAY_MS, tcmalloc background release)"
    echo
    echo "-- summaries (bytes; settle_ms: after the free / after the last breath, until committed"
    echo "   fell to live + 25% + 4 MiB (peak) or to the start + 4 MiB (breathe))"
    cat "$OUT"/*-peak.txt "$OUT"/*-breathe.txt | grep '^S '
    for w in peak breathe; do
        echo
        echo "-- $w: committed MiB over time (shmheap: heap-wide committed; others: RSS)"
        printf '%8s %10s %10s %10s\n' t_ms shmheap jemalloc tcmalloc
        awk -v step=500 '
            /^T / {
                for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                slot = int(v["t_ms"] / step) * step
                if (!((v["alloc"], slot) in seen)) {
                    seen[v["alloc"], slot] = 1
                    c[v["alloc"], slot] = v["committed"] / 1048576
                    if (slot > max) max = slot
                }
            }
            END {
                for (s = 0; s <= max; s += step) {
                    printf "%8d", s
                    n = split("shmheap jemalloc tcmalloc", names, " ")
                    for (k = 1; k <= n; k++)
                        if ((names[k], s) in seen)
                            printf " %10.1f", c[names[k], s]
                        else
                            printf " %10s", "-"
                    printf "\n"
                }
            }' "$OUT/shmheap-$w.txt" "$OUT/jemalloc-$w.txt" "$OUT/tcmalloc-$w.txt"
    done
    echo
    echo "-- client throughput (bench-shmheap-api), ops/s, median of $REPS"
    printf '%4s %14s %14s %14s\n' wl "decay off" "decay 10000" "decay 10"
    for wl in W1 W2; do
        row=
        for d in 0 10000 10; do
            m=$(awk -v w="$wl" -v d="$d" '$1 == w && $2 == d && $3 != "" { print $3 }' "$tmp/tput" |
                sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "fail" }')
            row="$row $(printf '%14s' "$m")"
        done
        printf '%4s%s\n' "$wl" "$row"
    done
    echo "   all runs (workload decay_ms ops/s policy-releases): $(tr '\n' ';' <"$tmp/tput")"
} | tee "$OUT/summary.txt"
