#!/usr/bin/env bash
# Make sure wrk (the HTTP load generator benchmarks/web.py drives) is installed; installs Debian's `wrk`
# package with apt-get when it is missing.
set -euo pipefail

if command -v wrk >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "wrk is missing and apt-get is not available to install it: install wrk, then re-run." >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "wrk is missing; installing it needs root: run 'sudo apt-get install wrk'." >&2
  exit 1
fi
echo "installing Debian's wrk package"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q wrk >/dev/null; then
  # The package lists may be missing or stale on a fresh machine.
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q wrk >/dev/null
fi
