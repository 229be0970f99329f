#!/usr/bin/env bash
# Install Debian's chromium for the browser test of the lab (tests/labs/test_browser.py: JupyterLab
# driven by Playwright). Playwright's own browser download (`playwright install`) is never used:
# the test launches /usr/bin/chromium. Idempotent: nothing happens when chromium is there, and
# `apt-get update` runs only when something must be installed.
#
#   scripts/install-browser-deps.sh       # as root (CI, or: sudo scripts/install-browser-deps.sh)
#   make sysdeps                          # the same, through make
#
# Recommends are installed on purpose (fonts-liberation among them: readable screenshots); that
# is the combination measured to work (about 30 s, ~115 packages on a fresh Debian 12).
# Not root: prints what is missing and the command to run, changes nothing, exits 0.
set -euo pipefail

PACKAGES=(chromium fonts-liberation)
BROWSER=/usr/bin/chromium

say() { echo "install-browser-deps: $*"; }

installed() {  # installed PACKAGE
    command -v dpkg-query >/dev/null 2>&1 &&
        [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ] && [ -x "$BROWSER" ]; then
    say "all present (${PACKAGES[*]}); nothing to do"
    exit 0
fi
if [ ${#missing[@]} -eq 0 ]; then
    missing=(chromium)  # the package is registered but the browser is gone: reinstall it
fi

say "missing: ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
    say "not root: nothing installed. To install them run:"
    echo "    sudo $0"
    echo "  or: sudo apt-get install -y ${missing[*]}"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get on this machine: install ${missing[*]} with your package manager and"
    say "point TRICKLES_CHROMIUM at the browser binary"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
say "apt-get update"
apt-get -q -o DPkg::Lock::Timeout=300 update
say "apt-get install -y ${missing[*]}"
apt-get -q -y -o DPkg::Lock::Timeout=300 install --reinstall "${missing[@]}"

if [ ! -x "$BROWSER" ]; then
    say "error: $BROWSER is still missing after the install" >&2
    exit 1
fi
# The Debian wrapper may print "[: ...: unexpected operator" when /dev/shm is mounted twice;
# it is harmless (see the browser-check notes), so only the version line is shown.
version=$("$BROWSER" --version 2>/dev/null || true)
say "installed ${missing[*]} in $(($(date +%s) - start)) s: ${version:-$BROWSER}"
