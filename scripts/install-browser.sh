#!/usr/bin/env bash
# scripts/install-browser.sh — the test tools Debian packages: Chromium for the report's browser test
# (tests/test_report.py drives it headless over the DevTools protocol; no driver needed) and
# libfaketime for the clock test (tests/test_clocks.py steps the wall clock under LD_PRELOAD).
#
# Idempotent: installs only what is missing (a chromium binary on PATH, the faketime command).
# Installing needs root and apt (Debian/Ubuntu); elsewhere it says what to install and exits 1.
# `make test` runs it.
set -euo pipefail

browser=""
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    browser=$(command -v "$name")
    break
  fi
done
packages=()
[[ -n $browser ]] || packages+=(chromium fonts-dejavu-core)
command -v faketime >/dev/null 2>&1 || packages+=(faketime)
if ((${#packages[@]} == 0)); then
  echo "browser: $browser; faketime: $(command -v faketime)"
  exit 0
fi
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser.sh: ${packages[*]} missing; install them as root (Debian: apt-get install -y ${packages[*]})" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "browser: $(command -v chromium || echo "$browser"); faketime: $(command -v faketime)"
