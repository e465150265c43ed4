#!/usr/bin/env bash
# The figures of the metrics and systemd work (make bench-metrics):
#   - GET /metrics latency, median and 99th percentile over 1,000 scrapes
#     with 4 clients busy, and the body's size with 4 clients and 40 size
#     classes in use (build/bench/scrape-bench against a fresh shmheapd);
#   - the systemd-analyze security --offline=true exposure of the service,
#     without and with the metrics drop-in.
# Prints the figures and writes them to $B/metrics-bench.txt.
set -euo pipefail

B=${B:-build}
SCRAPES=${SCRAPES:-1000}
dir=$(mktemp -d /tmp/shmheap-metrics-bench-XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo '{"segment_size": "256M", "huge_pages": "off"}' >"$dir/shmheapd.json"
"$B/shmheapd" --socket "$dir/shmheap.sock" --config "$dir/shmheapd.json" \
    --metrics-listen "127.0.0.1:$port" 2>"$dir/daemon.log" &
pid=$!
for _ in $(seq 100); do
    [ -S "$dir/shmheap.sock" ] && grep -q 'metrics: serving' "$dir/daemon.log" && break
    sleep 0.05
done

{
    echo "== /metrics ($(date -u +%FT%TZ), $(nproc) CPUs)"
    "$B/bench/scrape-bench" "$dir/shmheap.sock" "$port" "$SCRAPES"
    echo "== systemd-analyze security --offline=true"
    if command -v systemd-analyze >/dev/null; then
        units="$dir/units"
        mkdir -p "$units/shmheapd.service.d"
        sed -e "s|@BINDIR@|$(realpath "$B")|g" -e 's|@DOCDIR@|/usr/local/share/doc/shmheap|g' \
            systemd/shmheapd.service.in >"$units/shmheapd.service"
        echo -n "service: "
        systemd-analyze security --offline=true --no-pager "$units/shmheapd.service" |
            grep 'Overall exposure' | sed 's/.*: //'
        cp systemd/metrics.conf "$units/shmheapd.service.d/"
        echo -n "service with metrics.conf: "
        systemd-analyze security --offline=true --no-pager "$units/shmheapd.service" |
            grep 'Overall exposure' | sed 's/.*: //'
    else
        echo "systemd-analyze not found"
    fi
} | tee "$B/metrics-bench.txt"
