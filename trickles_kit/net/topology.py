"""Namespaces, veth links, routes, qdiscs, rules and processes — every one undone on exit.

The testbed (client, router, server) and the replica sets of the services demos are all built
from the same few moves, so they live here once. Everything made is recorded; `close()` kills the
processes started in the namespaces and deletes the namespaces, which takes the veth pairs, the
addresses, routes, qdiscs and netfilter rules with them. `close()` runs on normal exit, on an
exception, on Ctrl-C (KeyboardInterrupt) and on SIGTERM (turned into SystemExit while a
topology is open in the main thread). Each command is printed at verbose level.

Names carry a per-run tag (`tk<tag>…`), so `stale_namespaces()` can find what a killed run left
and `remove_stale()` can delete it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from trickles_kit.net import sysdeps

PREFIX = "tk"


class TopologyError(RuntimeError):
    """A system command failed; the message holds the command and its error output."""


def _run(cmd: Sequence[str], verbose: bool, check: bool = True,
         timeout: float = 30.0) -> subprocess.CompletedProcess:
    if verbose:
        print("+ " + shlex.join(cmd), file=sys.stderr)
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise TopologyError(f"{cmd[0]}: not found — install it (scripts/install-system-deps.sh)"
                            ) from e
    if check and p.returncode != 0:
        raise TopologyError(f"{shlex.join(cmd)} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def list_namespaces() -> list[str]:
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def stale_namespaces(prefix: str = PREFIX) -> list[str]:
    """Namespaces whose names start with the toolkit's prefix (left by a killed run)."""
    return [n for n in list_namespaces() if n.startswith(prefix)]


def remove_stale(prefix: str = PREFIX, verbose: bool = False) -> list[str]:
    gone = stale_namespaces(prefix)
    for n in gone:
        _run(["ip", "netns", "del", n], verbose, check=False)
    return gone


@dataclass
class Link:
    """One veth pair: `dev_a` in `ns_a` with `addr_a`, `dev_b` in `ns_b` with `addr_b`."""

    ns_a: str
    dev_a: str
    addr_a: str
    ns_b: str
    dev_b: str
    addr_b: str


@dataclass
class Topology:
    """A set of namespaces built step by step; a context manager that always tears down."""

    tag: str = field(default_factory=lambda: str(os.getpid()))
    verbose: bool = False
    suppress_rst: bool = True
    offloads_off: bool = True
    namespaces: dict[str, str] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    _old_term: object = None
    _closed: bool = False

    # -- lifecycle -------------------------------------------------------------------------
    def tools(self) -> list[str]:
        """The system tools building this topology runs (checked before anything is made)."""
        return (["ip", "sysctl"] + (["iptables"] if self.suppress_rst else [])
                + (["ethtool"] if self.offloads_off else []))

    def __enter__(self) -> Topology:
        # a missing tool found halfway would leave a half-built topology and a cryptic error
        sysdeps.require(self.tools(), "a namespace topology")
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.getsignal(signal.SIGTERM)

            def _term(signum: int, frame: object) -> None:
                raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, _term)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop processes, delete namespaces. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        for p in self.procs:
            with contextlib.suppress(Exception):
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=2)
        for full in reversed(list(self.namespaces.values())):
            _run(["ip", "netns", "del", full], self.verbose, check=False)
        self.namespaces.clear()
        if self._old_term is not None:
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGTERM, self._old_term)  # type: ignore[arg-type]
            self._old_term = None

    # -- building --------------------------------------------------------------------------
    def ns(self, name: str) -> str:
        """Full name of namespace `name` (created on first use)."""
        if name not in self.namespaces:
            full = f"{PREFIX}{self.tag}{name}"[:30]
            if full in list_namespaces():
                raise TopologyError(f"namespace {full} already exists (a killed run?): "
                                    f"ip netns del {full}")
            _run(["ip", "netns", "add", full], self.verbose)
            self.namespaces[name] = full
            self.sh(name, ["ip", "link", "set", "lo", "up"])
            if self.suppress_rst:
                # Trickles over protocol 6 has no kernel socket, so the kernel answers each
                # segment with a RST; drop them. A Linux TCP run whose story needs RSTs (a
                # failover demo) builds its topology with suppress_rst=False.
                self.sh(name, ["iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST",
                               "RST", "-j", "DROP"])
        return self.namespaces[name]

    def argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """argv that runs `argv` inside namespace `name`."""
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def sh(self, name: str, argv: Sequence[str], check: bool = True,
           timeout: float = 30.0) -> subprocess.CompletedProcess:
        return _run(self.argv(name, argv), self.verbose, check=check, timeout=timeout)

    def link(self, a: str, b: str, addr_a: str, addr_b: str, mtu: int = 1500) -> Link:
        """A veth pair between namespaces `a` and `b`; addresses in CIDR form ("10.1.0.1/24")."""
        i = len(self.links)
        dev_a, dev_b = f"v{self.tag}{a}{i}"[:15], f"v{self.tag}{b}{i}"[:15]
        if dev_a == dev_b:
            dev_b = dev_b[:-1] + "z"
        _run(["ip", "link", "add", dev_a, "netns", self.ns(a), "type", "veth", "peer", "name",
              dev_b, "netns", self.ns(b)], self.verbose)
        for ns, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
            self.sh(ns, ["ip", "addr", "add", addr, "dev", dev])
            self.sh(ns, ["ip", "link", "set", dev, "mtu", str(mtu), "up"])
            if self.offloads_off:
                if shutil.which("ethtool") is None:
                    raise TopologyError("ethtool not found (needed to turn offloads off): apt-get "
                                        "install ethtool, or scripts/install-system-deps.sh")
                self.sh(ns, ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"],
                        check=False)
        lk = Link(a, dev_a, addr_a.split("/")[0], b, dev_b, addr_b.split("/")[0])
        self.links.append(lk)
        return lk

    def forward(self, name: str) -> None:
        """Make namespace `name` a router (IPv4 forwarding on)."""
        self.sh(name, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def route(self, name: str, dest: str, via: str, *extra: str) -> None:
        self.sh(name, ["ip", "route", "replace", dest, "via", via, *extra])

    def add_address(self, name: str, addr: str, dev: str = "lo") -> None:
        self.sh(name, ["ip", "addr", "add", addr, "dev", dev])

    def iptables(self, name: str, *rule: str) -> None:
        self.sh(name, ["iptables", *rule])

    def tc(self, name: str, *args: str) -> None:
        self.sh(name, ["tc", *args])

    def popen(self, name: str, argv: Sequence[str], **kw: object) -> subprocess.Popen:
        """Start a process in namespace `name`, in its own process group; stopped by close()."""
        full = self.argv(name, argv)
        if self.verbose:
            print("+ " + shlex.join(full) + " &", file=sys.stderr)
        p = subprocess.Popen(full, start_new_session=True, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p
