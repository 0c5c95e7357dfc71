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
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup.sh: run as root (or: sudo apt-get install -y$missing) for the optional datasets/browser" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
if [ "$dev" = 1 ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[mnist,dev]"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[mnist]"
fi
