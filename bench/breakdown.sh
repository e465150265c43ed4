#!/usr/bin/env bash
# Where shmheap's local path spends its time against tcmalloc: what each
# part of the fast paths costs, what sharing one heap costs, and which
# lines miss. Issue 10's breakdown, reproducible with one command:
#
#   make bench-breakdown        (B=build, BENCH_REPS=5)
#
# 1. Ablation. Each bench/breakdown/no-*.patch removes a part of heap_malloc
#    and heap_free that the heap's sharing makes necessary (the busy/steal
#    protocol, the tick's counter, the owner tag, the checks of a freed
#    pointer); they are applied alone, all together (strip-all) and all but
#    one (strip-but-<part>). Any other patch changes a part and is applied
#    alone (tag-store: free stores the tag instead of loading it first).
#    They are measurement builds, NOT SAFE: without busy/steal a trimmer can
#    take a cache under its owner, without the tag a dead process's objects
#    leak, without the checks a bad free corrupts a cache. Each is built
#    from a copy of this tree in $B/breakdown/<name> and timed alternately
#    with the unpatched copy ("base") and tcmalloc: W1, W1c, W2 (ns per
#    pair), W3 with 1 and 2 processes (Mops/s) and W4 (M objects/s,
#    allocated in one process and freed in the other);
#    callgrind counts each build's instructions per W1 pair and W2 op.
# 2. Sharing. W3 with both processes on one heap against each on a heap of
#    its own (BENCH_W3_PRIVATE=1), with 4 KiB pages and, when the hugetlb
#    pool has room, 2 MiB pages (BENCH_HUGE_PAGES=2M).
# 3. Lines. cachegrind's L1 data read misses per W2 op, per function,
#    for the base build and tcmalloc.
#
# The machine is shared and noisy: the runs alternate, the table gives
# medians and each figure's spread (max/min over its runs). Output:
# stdout and $B/breakdown/breakdown.txt; single runs in runs.txt there.
set -u

B=${B:-build}
REPS=${BENCH_REPS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/$B/breakdown
# shellcheck source=bench/callgrind.sh
. "$ROOT/bench/callgrind.sh"
PEER=$ROOT/$B/bench/bench-tcmalloc
JOBS=${JOBS:-2}
RUNS=$OUT/runs.txt
REPORT=$OUT/breakdown.txt

die() {
    echo "breakdown.sh: $*" >&2
    exit 1
}

[ -x "$PEER" ] || die "$PEER is missing: make bench-bins BENCH_ALLOCS=tcmalloc first"
command -v valgrind >/dev/null || die "valgrind is missing (scripts/install-deps.sh)"
mkdir -p "$OUT"
: >"$RUNS"

# build NAME [PATCH...]: a copy of the tree's files as they are now (tracked
# and not ignored, uncommitted changes included, deleted ones left out), the
# patches applied in order, its bench-shmheap built.
build() {
    local name=$1 dir=$OUT/$1 p
    shift
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        xargs -0 cp --parents -t "$dir") || return 1
    for p in "$@"; do
        if ! patch -s -p1 -d "$dir" <"$ROOT/bench/breakdown/$p.patch"; then
            echo "breakdown.sh: $p.patch does not apply to this tree ($name): left out" >&2
            return 1
        fi
    done
    make -s -C "$dir" -j"$JOBS" B=build build/bench/bench-shmheap >"$dir/build.log" 2>&1 || {
        echo "breakdown.sh: $name does not build: $dir/build.log" >&2
        return 1
    }
}

# The builds: each part alone out (no-*.patch), all of them out (strip-all),
# all but one (strip-but-<part>), and any other patch alone (a variant of a
# part, as tag-store).
parts=()
others=()
for p in "$ROOT"/bench/breakdown/*.patch; do
    n=$(basename "$p" .patch)
    case $n in
    no-*) parts+=("$n") ;;
    *) others+=("$n") ;;
    esac
done
builds=()
for n in "${parts[@]}"; do
    builds+=("$n:$n")
done
builds+=("strip-all:${parts[*]}")
for keep in "${parts[@]}"; do
    rest=()
    for n in "${parts[@]}"; do
        [ "$n" = "$keep" ] || rest+=("$n")
    done
    builds+=("strip-but-${keep#no-}:${rest[*]}")
done
for n in "${others[@]}"; do
    builds+=("$n:$n")
done

names=(base)
bins=("$OUT/base/build/bench/bench-shmheap")
printf '[building base' >&2
build base || die "the unpatched tree does not build"
for b in "${builds[@]}"; do
    n=${b%%:*}
    read -r -a patches <<<"${b#*:}"
    printf ' %s' "$n" >&2
    if build "$n" "${patches[@]}"; then
        names+=("$n")
        bins+=("$OUT/$n/build/bench/bench-shmheap")
    fi
done
names+=(tcmalloc)
bins+=("$PEER")
printf ']\n' >&2

# One line per run: "RUN name figure value".
run() {
    local name=$1 bin=$2 w=$3 line
    shift 3
    line=$(env "$@" BENCH_W3_PROCS=2 timeout -k 5 300 "$bin" "$w" 2>>"$RUNS.err" | grep '^BENCH ')
    [ -n "$line" ] || {
        echo "FAIL $name $w" >>"$RUNS"
        return
    }
    case $w in
    W3) awk -v n="$name" '{for (i = 1; i <= NF; i++) {split($i, kv, "=");
            if (kv[1] == "tput1" || kv[1] == "tput2")
                printf "RUN %s W3_%sp %.2f\n", n, substr(kv[1], 5), kv[2] / 1e6}}' \
            <<<"$line" >>"$RUNS" ;;
    W4) awk -v n="$name" '{for (i = 1; i <= NF; i++) {split($i, kv, "=");
            if (kv[1] == "per_s") printf "RUN %s W4 %.2f\n", n, kv[2] / 1e6}}' \
            <<<"$line" >>"$RUNS" ;;
    *) awk -v n="$name" -v w="$w" '{for (i = 1; i <= NF; i++) {split($i, kv, "=");
            if (kv[1] == "ns_per_op") printf "RUN %s %s %s\n", n, w, kv[2]}}' \
            <<<"$line" >>"$RUNS" ;;
    esac
}

for ((i = 0; i < ${#names[@]}; i++)); do
    printf '[instructions %s]' "${names[$i]}" >&2
    for w in W1 W2; do
        if v=$(insns_per_op "${bins[$i]}" "$w" 200000 "$RUNS.err.callgrind"); then
            echo "RUN ${names[$i]} insns_$w $v" >>"$RUNS"
        else
            echo "FAIL ${names[$i]} insns_$w" >>"$RUNS"
        fi
    done
done
printf '\n' >&2

# Part 1: alternate the builds, a different one first each round.
n=${#names[@]}
for ((r = 0; r < REPS; r++)); do
    printf '[ablation %d/%d]' $((r + 1)) "$REPS" >&2
    for ((k = 0; k < n; k++)); do
        i=$(((k + r) % n))
        for w in W1 W1c W2 W3 W4; do
            run "${names[$i]}" "${bins[$i]}" "$w"
        done
    done
    printf '\n' >&2
done

# Part 2: W3 on one heap against a heap per process.
huge_free=$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)
pages=(off)
[ "${huge_free:-0}" -ge 256 ] && pages+=(2M)
for ((r = 0; r < REPS; r++)); do
    printf '[sharing %d/%d]' $((r + 1)) "$REPS" >&2
    for pg in "${pages[@]}"; do
        run "shared-$pg" "${bins[0]}" W3 BENCH_HUGE_PAGES="$pg"
        run "private-$pg" "${bins[0]}" W3 BENCH_HUGE_PAGES="$pg" BENCH_W3_PRIVATE=1
    done
    run tcmalloc-w3 "$PEER" W3
    printf '\n' >&2
done

# Part 3: L1 data read misses per W2 op, per function.
lines_of() {
    local name=$1 bin=$2 n=1000000 f=$OUT/cachegrind.$1
    BENCH_W2_OPS=$n valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file="$f" \
        "$bin" W2 >/dev/null 2>&1 || return
    # Summed by function (inlined code is listed under the file it came
    # from): the allocator's entry points and the benchmark's own loop.
    cg_annotate --show=Ir,D1mr "$f" 2>/dev/null |
        awk -v n="$name" -v ops="$n" '
            $0 ~ /PROGRAM TOTALS/ { gsub(",", "", $1); gsub(",", "", $3);
                printf "LINES %s total %.1f %.2f\n", n, $1 / ops, $3 / ops }
            $NF ~ /:/ && $1 ~ /^[0-9,]+$/ {
                fn = $NF; sub(/^.*:/, "", fn); sub(/\..*$/, "", fn)
                if (fn !~ /^(heap_malloc|heap_free|malloc|free|churn_run)$/)
                    next
                gsub(",", "", $1); gsub(",", "", $3)
                ir[fn] += $1; mr[fn] += $3 }
            END { for (fn in ir) printf "LINES %s %s %.1f %.2f\n", n, fn, ir[fn] / ops, mr[fn] / ops }'
}
printf '[cachegrind]\n' >&2
{
    lines_of base "${bins[0]}"
    lines_of tcmalloc "$PEER"
} >>"$RUNS"

{
    echo "# shmheap fast-path breakdown $(date -u +%Y-%m-%dT%H:%M:%SZ) host=$(uname -n)" \
        "cpus=$(nproc) reps=$REPS load=$(cut -d' ' -f1-3 /proc/loadavg)"
    awk -f "$ROOT/bench/runs.awk" -f "$ROOT/bench/breakdown.awk" "$RUNS"
} | tee "$REPORT"
