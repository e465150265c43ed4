#!/bin/bash
# Restart figures: with 4 busy clients (build/examples/restart_load), stop
# shmheapd with SIGTERM (then, separately, SIGKILL), start a new one on
# the same state directory at once, and measure
#   - the time from the signal to the new daemon answering `stats`,
#   - the time from the signal until every client has reattached,
#   - the allocations that failed meanwhile (small ones always fit the
#     mapped segments: the goal is 0; large ones may need a new segment).
#
#   scripts/restart-bench.sh [REPS]        (default 5 of each signal)
#
# Environment: B (build directory, default build). Times come from
# `date +%s%N` around the kill and a poll of shmheapctl every 2 ms, so they
# include starting the new process, as a supervisor would.
set -eu
B=${B:-build}
REPS=${1:-5}
DAEMON=$B/shmheapd
CTL=$B/shmheapctl
LOAD=$B/examples/restart_load
for f in "$DAEMON" "$CTL" "$LOAD"; do
    [ -x "$f" ] || { echo "restart-bench: $f is missing; run make first" >&2; exit 1; }
done
# The state directory on tmpfs, as it should be (/tmp may be a disk).
dir=$(mktemp -d /dev/shm/shmheap-restart-bench-XXXXXX)
sock=$dir/shmheap.sock
cat >"$dir/shmheapd.json" <<'EOF'
{"huge_pages": "off", "segment_size": "64M", "max_segments": 8, "reconnect_wait_ms": 10000}
EOF
dpid=
lpid=
cleanup() {
    [ -n "$lpid" ] && kill "$lpid" 2>/dev/null || true
    [ -n "$dpid" ] && kill "$dpid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

start_daemon() {
    "$DAEMON" --socket "$sock" --config "$dir/shmheapd.json" --state-dir "$dir/state" \
        2>>"$dir/daemon.log" &
    dpid=$!
}
now_ns() { date +%s%N; }
attached() { "$CTL" --socket "$sock" --json clients 2>/dev/null | grep -o '"attached":true' | wc -l; }

start_daemon
until "$CTL" --socket "$sock" stats >/dev/null 2>&1; do sleep 0.01; done
"$LOAD" -s "$sock" -n 4 >"$dir/load.out" &
lpid=$!
until grep -q attached "$dir/load.out" 2>/dev/null; do sleep 0.01; done
sleep 1

printf '%-8s %4s %14s %18s\n' signal rep "to stats (ms)" "to reattach (ms)"
for sig in TERM KILL; do
    for rep in $(seq 1 "$REPS"); do
        t0=$(now_ns)
        kill -"$sig" "$dpid"
        { wait "$dpid"; } 2>/dev/null || true
        start_daemon
        until "$CTL" --socket "$sock" stats >/dev/null 2>&1; do sleep 0.002; done
        t1=$(now_ns)
        until [ "$(attached)" -ge 4 ]; do sleep 0.002; done
        t2=$(now_ns)
        awk -v s="SIG$sig" -v r="$rep" -v a="$((t1 - t0))" -v b="$((t2 - t0))" \
            'BEGIN { printf "%-8s %4d %14.1f %18.1f\n", s, r, a / 1e6, b / 1e6 }' |
            tee -a "$dir/times"
        sleep 1
    done
done
# Median and maximum per signal.
for sig in TERM KILL; do
    for col in 3 4; do
        grep "^SIG$sig " "$dir/times" | awk -v c="$col" '{ print $c }' | sort -n |
            awk -v s="SIG$sig" -v c="$col" '{ v[NR] = $1 } END {
                printf "%-8s %s: median %.1f ms, max %.1f ms\n", s,
                    c == 3 ? "to stats   " : "to reattach", v[int((NR + 1) / 2)], v[NR] }'
    done
done
kill -INT "$lpid"
wait "$lpid" || true
lpid=
echo "clients: $(tail -n 1 "$dir/load.out")"
"$CTL" --socket "$sock" verify
