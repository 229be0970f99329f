"""Silence the kernel's TCP RSTs for a Trickles port while IP protocol 6 is in use.

With protocol 6 the kernel's own TCP sees our segments, finds no socket, and answers with RSTs.
This installs one iptables rule (tagged with a comment) that drops those RSTs in the current
network namespace, prints the command, and always removes the rule on exit.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class RstRuleError(RuntimeError):
    pass


def _rule(port: int, side: str) -> list[str]:
    match = "--sport" if side == "server" else "--dport"
    return ["OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", match, str(port),
            "-m", "comment", "--comment", f"trickles-kit {side} {port}", "-j", "DROP"]


@contextmanager
def suppress_rsts(port: int, side: str, verbose: bool = True) -> Iterator[None]:
    """Drop outgoing RSTs from (`side="server"`) or to (`side="client"`) `port`, then undo."""
    if side not in ("server", "client"):
        raise ValueError("side must be 'server' or 'client'")
    iptables = shutil.which("iptables")
    if iptables is None:
        raise RstRuleError("IP protocol 6 needs iptables to silence the kernel's RSTs "
                           "(run `make sysdeps`), or use the default --ip-proto 253")
    add = [iptables, "-I", *_rule(port, side)]
    if verbose:
        print("+ " + shlex.join(add), file=sys.stderr)
    p = subprocess.run(add, capture_output=True, text=True)
    if p.returncode != 0:
        raise RstRuleError(f"could not install the RST rule: {p.stderr.strip()}")
    try:
        yield
    finally:
        delete = [iptables, "-D", *_rule(port, side)]
        if verbose:
            print("+ " + shlex.join(delete), file=sys.stderr)
        subprocess.run(delete, capture_output=True, text=True)
