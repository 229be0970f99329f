"""Is a packet capture running on this host? (`/proc/net/packet`: Linux packet sockets.)

Why: a segmented UDP send (net/gso.py) is one large datagram until the receiving stack cuts it,
so tcpdump, Wireshark or scapy capturing on the sending host records each run of answers as one
datagram that no decoder cuts back apart. UDP offload is therefore on by default only while
nobody captures: `UdpTransport` asks this module a few times a second and sends datagram by
datagram whenever a capture could see it.

What counts as a capture: a packet socket that takes every protocol (ETH_P_ALL, as tcpdump,
dumpcap and scapy open) on all interfaces or on one of `ifindexes`. A DHCP client's socket on
another interface does not. The file lists the reader's own network namespace only: a capture in
another namespace sees what reaches it over a veth, which the testbeds already segment (offloads
off on their veths).
"""

from __future__ import annotations

import socket
import time

PACKET_FILE = "/proc/net/packet"
ETH_P_ALL = 0x0003
RECHECK_S = 0.1  # how often a sender looks again: a capture that starts mid-transfer records
#                   at most this long of segmented runs (the decoder flags them: decode.udp_run)


def loopback_ifindexes() -> frozenset[int]:
    """The interfaces a loopback sender's packets pass: `lo` (and 0, a capture on all)."""
    try:
        return frozenset((0, socket.if_nametoindex("lo")))
    except OSError:
        return frozenset((0, 1))


def capturing(ifindexes: frozenset[int] | None, path: str = PACKET_FILE) -> bool | None:
    """True if a capture runs on one of `ifindexes` (None: on any interface), False if not,
    None if this host cannot tell (no such file: not Linux, or /proc hidden)."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        if len(cols) < 5:
            continue
        try:
            proto, iface = int(cols[3], 16), int(cols[4])
        except ValueError:
            continue
        if proto == ETH_P_ALL and (ifindexes is None or iface in ifindexes):
            return True
    return False


class CaptureWatch:
    """Answers `seen()` from a reading at most RECHECK_S old, so a sender may ask per batch.
    A host that cannot tell counts as capturing: offload stays off there unless asked for."""

    def __init__(self, local_ip: str, recheck_s: float = RECHECK_S, path: str = PACKET_FILE,
                 clock=time.monotonic) -> None:
        self._ifaces = loopback_ifindexes() if local_ip.startswith("127.") else None
        self._recheck = recheck_s
        self._path = path
        self._clock = clock
        self._next = 0.0
        self._seen = True
        self.readings = 0

    def seen(self) -> bool:
        now = self._clock()
        if now >= self._next:
            self._next = now + self._recheck
            got = capturing(self._ifaces, self._path)
            self._seen = True if got is None else got
            self.readings += 1
        return self._seen
