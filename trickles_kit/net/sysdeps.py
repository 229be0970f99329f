"""System tools the live paths need: checked before anything starts, missing ones named in one line.

A live run (a namespace testbed, a services demo, a capture, the RST rule of IP protocol 6) that
meets a missing tool halfway fails with something like "tcpdump on v14902r1 exited: 1" after it
has built half a topology. `require()` runs first instead and raises `MissingToolError`, one line
naming each missing tool and the command that installs it (the Debian packages that
`scripts/install-system-deps.sh` installs). Only the standard library is used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

from trickles_kit.net import privileges

# tool -> the Debian package that provides it (the names scripts/install-system-deps.sh uses)
PACKAGES: dict[str, str] = {
    "ip": "iproute2", "tc": "iproute2", "tcpdump": "tcpdump", "tshark": "tshark",
    "iptables": "iptables", "nft": "nftables", "ethtool": "ethtool", "sysctl": "procps",
    "pgrep": "procps", "setpriv": "util-linux", "unshare": "util-linux", "curl": "curl",
    "node": "nodejs",
}
SYSDEPS = "sudo make sysdeps"


class MissingToolError(RuntimeError):
    """A system tool a live run needs is not installed; str() is one line saying how to get it."""


def missing(tools: Iterable[str]) -> list[str]:
    """The tools of `tools` this process cannot run by name (in order, without repeats)."""
    return [t for t in dict.fromkeys(tools) if shutil.which(t) is None]


def install_command(tools: Iterable[str]) -> str:
    """`sudo apt-get install -y PKG...` for `tools` (each package once)."""
    pkgs = dict.fromkeys(PACKAGES.get(t, t) for t in tools)
    return "sudo apt-get install -y " + " ".join(pkgs)


def problem(tools: Iterable[str], what: str) -> str | None:
    """One line saying which of `tools` `what` lacks and how to get them; None if all are there.

    A tool that exists in an sbin directory missing from PATH (a user's PATH on Debian) is
    reported as such: installing it again would not help.
    """
    gone = missing(tools)
    if not gone:
        return None
    off_path = {t: d for t in gone for d in privileges._SBIN
                if os.access(os.path.join(d, t), os.X_OK)}
    if off_path:
        dirs = sorted(set(off_path.values()))
        return (f"{what}: {', '.join(off_path)} installed in {':'.join(dirs)}, which is not on "
                f"PATH: export PATH=$PATH:{':'.join(dirs)}")
    return (f"{what}: {', '.join(gone)} not installed; install with {install_command(gone)} "
            f"(or {SYSDEPS} in a checkout)")


def require(tools: Iterable[str], what: str) -> None:
    """Raise MissingToolError (one line) unless every tool of `tools` can be run."""
    msg = problem(tools, what)
    if msg:
        raise MissingToolError(msg)
