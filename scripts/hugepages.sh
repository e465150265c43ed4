#!/usr/bin/env bash
# Reserve and release 2 MiB huge pages for the test suites.
#
#   scripts/hugepages.sh reserve N   raise the 2 MiB pool by N pages, remembering the old size
#   scripts/hugepages.sh release     put the pool back to the size it had before `reserve`
#   scripts/hugepages.sh status      print the pool size and what is remembered
#
# Only root can resize the pool. As any other user, or where /proc/sys is read-only
# (some containers), `reserve` prints a note and exits 0: the tests then exercise the
# fallback to normal pages. `release` is safe to call when nothing was reserved.
#
# The size before the first `reserve` is kept in a state file ($SHMHEAP_HUGEPAGES_STATE,
# by default /run/shmheap-hugepages.state, or build/.hugepages.state when /run is not
# writable). A second `reserve` before `release` adds to the pool but keeps the first
# remembered size, so one `release` restores the original.
set -euo pipefail

prog=$(basename "$0")
repo=$(cd "$(dirname "$0")/.." && pwd)

if [ -e /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages ]; then
    pool=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
else
    pool=/proc/sys/vm/nr_hugepages # Assume the default huge page size is 2 MiB.
fi

if [ -n "${SHMHEAP_HUGEPAGES_STATE:-}" ]; then
    state=$SHMHEAP_HUGEPAGES_STATE
elif [ -d /run ] && [ -w /run ]; then
    state=/run/shmheap-hugepages.state
else
    state=$repo/build/.hugepages.state
fi

usage() {
    echo "usage: $prog reserve N | release | status" >&2
    exit 2
}

note() {
    echo "$prog: $*" >&2
}

can_resize() {
    [ "$(id -u)" -eq 0 ] && [ -r "$pool" ] && [ -w "$pool" ]
}

cmd=${1:-}
case $cmd in
reserve)
    [ $# -eq 2 ] || usage
    n=$2
    case $n in
    '' | *[!0-9]*) usage ;;
    esac
    if ! can_resize; then
        note "not root (or $pool is read-only): no huge pages reserved; tests use the fallback"
        exit 0
    fi
    before=$(cat "$pool")
    if [ ! -s "$state" ]; then
        mkdir -p "$(dirname "$state")"
        echo "$before" >"$state"
    fi
    want=$((before + n))
    if ! echo "$want" >"$pool" 2>/dev/null; then
        note "could not write $pool; tests use the fallback"
        exit 0
    fi
    now=$(cat "$pool")
    got=$((now - before))
    if [ "$got" -lt "$n" ]; then
        note "asked for $n huge pages of 2 MiB, the kernel gave $got (memory is fragmented or short)"
    else
        echo "$prog: reserved $n huge pages of 2 MiB (pool $before -> $now)"
    fi
    ;;
release)
    [ $# -eq 1 ] || usage
    if [ ! -s "$state" ]; then
        exit 0 # Nothing reserved by us.
    fi
    old=$(cat "$state")
    case $old in
    '' | *[!0-9]*)
        note "ignoring bad state file $state"
        rm -f "$state"
        exit 0
        ;;
    esac
    if ! can_resize; then
        note "not restoring the huge page pool to $old: not root or $pool is read-only"
        exit 0
    fi
    now=$(cat "$pool")
    if ! echo "$old" >"$pool" 2>/dev/null; then
        note "could not write $pool to restore it to $old"
        exit 1
    fi
    rm -f "$state"
    echo "$prog: released huge pages (pool $now -> $(cat "$pool"))"
    ;;
status)
    [ $# -eq 1 ] || usage
    echo "pool: $pool = $(cat "$pool")"
    if [ -s "$state" ]; then
        echo "reserved: yes, restores to $(cat "$state") (state $state)"
    else
        echo "reserved: no"
    fi
    ;;
*)
    usage
    ;;
esac
