#!/usr/bin/env bash
# Set up bilens on a fresh Debian machine: system datasets, a virtual environment in .venv,
# the CPU build of torch, and bilens itself.   ./setup.sh        (to run bilens)
#                                              ./setup.sh --dev  (to run the tests too)
set -euo pipefail
cd "$(dirname "$0")"
dev=0; [ "${1:-}" = "--dev" ] && dev=1

apt_pkgs="dataset-fashion-mnist bible-kjv"
[ "$dev" = 1 ] && apt_pkgs="$apt_pkgs chromium"
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# Another apt-get (or unattended-upgrades) may hold a package lock: wait for it, saying who
# holds it, instead of failing at once. `apt-get install` waits for the dpkg lock itself
# (apt's DPkg::Lock::Timeout); `apt-get update`'s lists lock has no such option, so both
# are also polled here. (The two BILENS_* lock paths exist for the tests.)
lock_wait=${BILENS_APT_LOCK_TIMEOUT:-600}
dpkg_lock=${BILENS_DPKG_LOCK:-/var/lib/dpkg/lock-frontend}
lists_lock=${BILENS_APT_LISTS_LOCK:-/var/lib/apt/lists/lock}
lock_holder() {   # "PID (NAME)" of the process holding file $1's POSIX lock, or nothing
  local ino pid
  ino=$(stat -c %i "$1" 2>/dev/null) || return 0
  pid=$(awk -v ino="$ino" '$2 != "->" { n = split($6, a, ":"); if (a[n] == ino) { print $5; exit } }' \
        /proc/locks 2>/dev/null) || true
  [ -z "$pid" ] || echo "$pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo unknown))"
}
wait_for_lock() {   # FILE WHAT: wait up to $lock_wait s while another process holds FILE
  local holder waited=0
  holder=$(lock_holder "$1")
  [ -z "$holder" ] && return 0
  echo "setup.sh: waiting up to ${lock_wait} s for $2 ($1), held by process $holder;" \
       "setup.sh goes on when it is released" >&2
  while [ -n "$holder" ] && [ "$waited" -lt "$lock_wait" ]; do
    sleep 2; waited=$((waited + 2)); holder=$(lock_holder "$1")
  done
  [ -z "$holder" ] || echo "setup.sh: $2 is still held after ${lock_wait} s; trying anyway" >&2
}
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    wait_for_lock "$lists_lock" "the apt package-lists lock"
    apt-get -o DPkg::Lock::Timeout="$lock_wait" update -qq
    wait_for_lock "$dpkg_lock" "the dpkg lock"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$lock_wait" \
      install -y -qq $missing >/dev/null
  else
    echo "setup.sh: run as root (or: sudo apt-get install -y$missing) for the optional datasets/browser" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
if [ "$dev" = 1 ]; then
  # Triton beside the CPU torch (no dependencies: torch stays as it is), so the tests run the
  # Triton kernels under its CPU interpreter (tests/test_triton_ops.py); ~290 MB, ~11 s.
  # Where no wheel exists (not Linux, Python < 3.11) those tests skip.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "triton==3.9.0" \
    || echo "setup.sh: no Triton 3.9.0 for this machine; the Triton kernel tests will skip" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[mnist,dev]"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[mnist]"
fi
