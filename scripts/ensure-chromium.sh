#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests (pytest -m browser);
# installs the `chromium` package with apt-get when it is missing.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "Chromium is missing at $CHROMIUM and apt-get is not available to install it." >&2
  echo "Install Chromium so that $CHROMIUM exists, then re-run." >&2
  exit 1
fi

if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "Chromium is missing at $CHROMIUM; installing it needs root: run 'sudo apt-get install chromium'." >&2
  exit 1
fi

echo "installing Debian's chromium package"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q chromium >/dev/null; then
  # The package lists may be missing or stale on a fresh machine.
  $SUDO apt-get update -q >/dev/null || true
  if ! $SUDO apt-get install -y -q chromium >/dev/null; then
    echo "apt-get could not install chromium; install it by hand so that $CHROMIUM exists." >&2
    exit 1
  fi
fi

if [ ! -x "$CHROMIUM" ]; then
  echo "the chromium package installed, but $CHROMIUM is still missing." >&2
  exit 1
fi
echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo installed)"
