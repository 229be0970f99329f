#!/usr/bin/env bash
# Install the Debian packages the test suite uses: capture tools, firewalls, iproute2, curl,
# setpriv (util-linux), procps, ethtool (testbed offloads off), nodejs (the live view's
# stream.js is unit-tested in node), npm (fetches plotly.js's basic bundle for the live views) and
# gcc (the optional compiled build, trickles_kit/native/, which CI tests too). Idempotent: only missing packages are installed, and
# `apt-get update` runs only when something must be installed.
#
#   scripts/install-system-deps.sh        # as root (CI, or: sudo scripts/install-system-deps.sh)
#   make sysdeps                          # the same, through make
#
# Not root: prints what is missing and the command to run, changes nothing, exits 0.
# SYSDEPS_SBIN: where else to look for a command (default: the sbin directories, often off a
# user's PATH); tests/net/test_sysdeps.py sets it to run the script against a fresh machine's view.
set -euo pipefail

SBIN=${SYSDEPS_SBIN-/usr/local/sbin:/usr/sbin:/sbin}

# package:command that proves it is there (also looked for in the sbin directories)
WANTED=(
    "tcpdump:tcpdump"
    "tshark:tshark"
    "iptables:iptables"
    "nftables:nft"
    "iproute2:tc"
    "curl:curl"
    "util-linux:setpriv"
    "procps:pgrep"
    "ethtool:ethtool"
    "nodejs:node"
    "npm:npm"
    "gcc:gcc"
)

say() { echo "install-system-deps: $*"; }

installed() {  # installed PACKAGE COMMAND
    local pkg=$1 cmd=$2
    if command -v dpkg-query >/dev/null 2>&1 &&
        [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ]; then
        return 0
    fi
    PATH="$PATH${SBIN:+:$SBIN}" command -v "$cmd" >/dev/null 2>&1
}

missing=()
for item in "${WANTED[@]}"; do
    pkg=${item%%:*}
    cmd=${item#*:}
    installed "$pkg" "$cmd" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    say "all present (${WANTED[*]%%:*}); nothing to do"
    exit 0
fi

say "missing: ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
    say "not root: nothing installed. To install them run:"
    echo "    sudo $0"
    echo "  or: sudo apt-get install -y ${missing[*]}"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get on this machine: install ${missing[*]} with your package manager"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
for pkg in "${missing[@]}"; do
    if [ "$pkg" = tshark ]; then
        # Do not ask whether non-root users may capture: answer no (tests run tshark on files).
        say "preseeding wireshark-common/install-setuid=false"
        echo "wireshark-common wireshark-common/install-setuid boolean false" |
            debconf-set-selections
    fi
done

start=$(date +%s)
say "apt-get update"
apt-get -q -o DPkg::Lock::Timeout=300 update
say "apt-get install -y --no-install-recommends ${missing[*]}"
apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "${missing[@]}"

still=()
for item in "${WANTED[@]}"; do
    installed "${item%%:*}" "${item#*:}" || still+=("${item%%:*}")
done
if [ ${#still[@]} -ne 0 ]; then
    say "error: still missing after install: ${still[*]}" >&2
    exit 1
fi
say "installed ${missing[*]} in $(($(date +%s) - start)) s"
