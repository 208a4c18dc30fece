#!/usr/bin/env bash
# scripts/install-browser.sh — Chromium from Debian's packages, for the report's browser test
# (tests/test_report.py drives it headless over the DevTools protocol; no driver needed).
#
# Idempotent: does nothing when a chromium binary is already on PATH. Installing needs root and
# apt (Debian/Ubuntu); elsewhere it says what to install and exits 1. `make test` runs it.
set -euo pipefail

for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "browser: $(command -v "$name")"
    exit 0
  fi
done
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser.sh: no chromium on PATH; install it as root (Debian: apt-get install -y chromium)" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "browser: $(command -v chromium)"
