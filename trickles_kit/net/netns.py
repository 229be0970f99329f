"""A pair of network namespaces joined by a veth pair — the smallest testbed, always undone.

Used to run Trickles over IP protocol 6 as real TCP-format segments on a real (virtual) link
without touching the host: inside the namespaces the toolkit drops the RSTs the kernel's TCP
would send for segments it has no socket for. Deleting the namespaces removes the veth pair and
every rule with them, so cleanup is one command per namespace, run on exit, error or Ctrl-C.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

from trickles_kit.net import sysdeps


class NetnsError(RuntimeError):
    pass


def _run(cmd: Sequence[str], verbose: bool, check: bool = True) -> subprocess.CompletedProcess:
    if verbose:
        print("+ " + shlex.join(cmd), file=sys.stderr)
    p = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise NetnsError(f"{shlex.join(cmd)} failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


class NetnsPair:
    """Namespaces `a` (10.X.0.1) and `b` (10.X.0.2) on one veth link, MTU 1500.

    `suppress_rst=True` adds, in each namespace, an OUTPUT rule that drops the kernel's TCP RSTs
    (our segments use IP protocol 6 but no kernel socket owns them).
    """

    def __init__(self, tag: str | None = None, subnet: int = 77, suppress_rst: bool = True,
                 verbose: bool = False) -> None:
        tag = tag or str(os.getpid())
        self.a, self.b = f"tk{tag}a", f"tk{tag}b"
        self.addr_a, self.addr_b = f"10.{subnet}.0.1", f"10.{subnet}.0.2"
        self.veth_a, self.veth_b = f"tkv{tag}a"[:15], f"tkv{tag}b"[:15]
        self.suppress_rst = suppress_rst
        self.verbose = verbose
        self._made: list[str] = []

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """argv that runs `argv` inside namespace `ns`."""
        return ["ip", "netns", "exec", ns, *argv]

    def __enter__(self) -> NetnsPair:
        v = self.verbose

        # before the first namespace: a missing tool is one line, not a half-made pair
        sysdeps.require(["ip", *(["iptables"] if self.suppress_rst else [])], "a namespace pair")
        try:
            for ns in (self.a, self.b):
                _run(["ip", "netns", "add", ns], v)
                self._made.append(ns)
            _run(["ip", "link", "add", self.veth_a, "netns", self.a, "type", "veth", "peer",
                  "name", self.veth_b, "netns", self.b], v)
            for ns, dev, addr in ((self.a, self.veth_a, self.addr_a),
                                  (self.b, self.veth_b, self.addr_b)):
                ex = ["ip", "netns", "exec", ns]
                _run([*ex, "ip", "link", "set", "lo", "up"], v)
                _run([*ex, "ip", "addr", "add", f"{addr}/24", "dev", dev], v)
                _run([*ex, "ip", "link", "set", dev, "mtu", "1500", "up"], v)
                if self.suppress_rst:
                    _run([*ex, "iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST",
                          "RST", "-j", "DROP"], v)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        while self._made:
            _run(["ip", "netns", "del", self._made.pop()], self.verbose, check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()
