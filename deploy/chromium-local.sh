#!/usr/bin/env bash
# Make Debian's chromium answer at /usr/bin/chromium for the browser tests (tests/browser/): Playwright's
# own browser download is not available here, so the tests drive Debian's build. Installs the package when
# it is missing (needs root: apt-get); fails saying so when it cannot. Safe to run again.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"  # overridable only to test the failure messages
if [ -x "$CHROMIUM" ]; then
  echo "chromium ready: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "make browser: $CHROMIUM is missing and installing Debian's chromium needs root;" \
    "run 'apt-get install -y chromium' as root (the browser tests in tests/browser/ drive it)" >&2
  exit 1
fi
echo "installing Debian's chromium ..."
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; then
  echo "make browser: 'apt-get install -y chromium' failed; the browser tests in tests/browser/ need" \
    "Debian's chromium at $CHROMIUM" >&2
  exit 1
fi
if [ ! -x "$CHROMIUM" ]; then
  echo "make browser: Debian's chromium is installed but $CHROMIUM is not there" >&2
  exit 1
fi
echo "chromium ready: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
