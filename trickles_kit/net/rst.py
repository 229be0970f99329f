"""Silence the kernel's TCP RSTs for a Trickles port while IP protocol 6 is in use.

With protocol 6 the kernel's own TCP sees our segments, finds no socket, and answers with RSTs.
This installs one iptables rule (tagged with a comment) that drops those RSTs in the current
network namespace, prints the command, and always removes the rule on exit — and, with
iptables-nft, the `ip filter` table (or its OUTPUT chain) when the rule was what created it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from trickles_kit.net import sysdeps


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
                           f"({sysdeps.install_command(['iptables'])}, or {sysdeps.SYSDEPS}), "
                           "or use the default --ip-proto 253")
    before = _nft_filter_state(iptables)
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
        _drop_what_we_made(before, verbose)


def _nft(*args: str) -> subprocess.CompletedProcess | None:
    nft = shutil.which("nft")
    if nft is None:
        return None
    return subprocess.run([nft, *args], capture_output=True, text=True)


def _nft_filter_state(iptables: str) -> tuple[bool, bool] | None:
    """(table `ip filter` exists, its OUTPUT chain exists) for iptables-nft, else None.

    iptables-nft creates the table and the chain on the first rule and never removes them; a
    legacy iptables has them built in (nothing to undo).
    """
    v = subprocess.run([iptables, "--version"], capture_output=True, text=True)
    if "nf_tables" not in v.stdout:
        return None
    table = _nft("list", "table", "ip", "filter")
    if table is None:
        return None
    chain = _nft("list", "chain", "ip", "filter", "OUTPUT")
    return table.returncode == 0, chain is not None and chain.returncode == 0


def _drop_what_we_made(before: tuple[bool, bool] | None, verbose: bool) -> None:
    """Delete the table (or the chain) the rule brought into being, if nothing else is in it."""
    if before is None or all(before):
        return
    listing = _nft("-j", "list", "table", "ip", "filter")
    if listing is None or listing.returncode != 0:
        return
    try:
        items = json.loads(listing.stdout).get("nftables", [])
    except ValueError:
        return
    rules = [i["rule"] for i in items if "rule" in i]
    chains = [i["chain"]["name"] for i in items if "chain" in i]
    if not before[0] and not rules:
        cmd = ["delete", "table", "ip", "filter"]
    elif before[0] and not before[1] and not [r for r in rules if r.get("chain") == "OUTPUT"] \
            and "OUTPUT" in chains:
        cmd = ["delete", "chain", "ip", "filter", "OUTPUT"]
    else:
        return
    if verbose:
        print("+ nft " + shlex.join(cmd), file=sys.stderr)
    _nft(*cmd)
