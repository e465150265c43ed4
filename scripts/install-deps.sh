#!/usr/bin/env bash
# Install the Debian 12 packages shmheap needs to build, test and benchmark.
#
# Does nothing (and says nothing) when everything is already installed, so
# `make test` and `make run` can call it every time. Installing needs root: run
# it as root, or as a user with sudo (it re-runs itself under sudo only when a
# package is actually missing).
set -euo pipefail

PACKAGES=(
    build-essential pkg-config
    libuv1-dev libcjson-dev libsystemd-dev libmicrohttpd-dev
    check libsubunit-dev
    clang-format
    prometheus
    # make fuzz: clang with libFuzzer and its sanitizer runtimes; llvm-14 for
    # llvm-profdata and llvm-cov (make fuzz-coverage).
    clang-14 libfuzzer-14-dev libclang-rt-14-dev llvm-14
    libmimalloc-dev libjemalloc-dev libgoogle-perftools-dev libboost-dev
    # callgrind: make bench's instructions per W1 pair and W2 op (and the
    # debuggers suite's memcheck runs)
    valgrind
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: this script expects Debian (dpkg and apt-get); install these by hand:" >&2
    echo "  ${PACKAGES[*]}" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        echo "install-deps: missing ${missing[*]}; installing with sudo" >&2
        exec sudo -- bash "$0" "$@"
    fi
    echo "install-deps: missing packages: ${missing[*]}" >&2
    echo "install-deps: run this script as root (sudo is not installed)" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt or dpkg run (e.g. unattended-upgrades) instead of failing at once.
APT=(apt-get -o DPkg::Lock::Timeout=600 -y -q)
# A fresh image may have empty package lists, so refresh them first.
"${APT[@]}" update
"${APT[@]}" install --no-install-recommends "${missing[@]}"
