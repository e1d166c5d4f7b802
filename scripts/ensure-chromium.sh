#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests (pytest -m browser);
# installs the `chromium` package with apt-get when it is missing.
set -euo pipefail
"$(dirname "$0")/ensure-package.sh" /usr/bin/chromium chromium
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
