#!/usr/bin/env bash
# Usage: ensure-package.sh PROGRAM PACKAGE
# Make sure PROGRAM (an absolute path, or a command on PATH) exists; installs Debian's PACKAGE with apt-get
# when it is missing. Used for what the tests and benchmarks drive for real (Chromium, wrk, docker-compose).
set -euo pipefail

PROGRAM=$1
PACKAGE=$2

present() {
  if [[ "$PROGRAM" == /* ]]; then [ -x "$PROGRAM" ]; else command -v "$PROGRAM" >/dev/null; fi
}

if present; then
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "$PROGRAM is missing and apt-get is not available to install it: install $PACKAGE, then re-run." >&2
  exit 1
fi

if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "$PROGRAM is missing; installing it needs root: run 'sudo apt-get install $PACKAGE'." >&2
  exit 1
fi

echo "installing Debian's $PACKAGE package"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q "$PACKAGE" >/dev/null; then
  # The package lists may be missing or stale on a fresh machine.
  $SUDO apt-get update -q >/dev/null || true
  if ! $SUDO apt-get install -y -q "$PACKAGE" >/dev/null; then
    echo "apt-get could not install $PACKAGE; install it by hand so that $PROGRAM exists." >&2
    exit 1
  fi
fi

if ! present; then
  echo "the $PACKAGE package installed, but $PROGRAM is still missing." >&2
  exit 1
fi
