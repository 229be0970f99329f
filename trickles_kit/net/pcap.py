"""Endpoint pcap logs (linktype RAW: each record is an IPv4 datagram).

An endpoint logs what it sends and receives exactly as it would appear on the wire: segments
sent over a raw socket get the IPv4 header the kernel adds; segments over UDP get IPv4 + UDP.
"""

from __future__ import annotations

import struct
import time
from typing import BinaryIO

from trickles_kit.net.ip import PROTO_UDP, build_ipv4, build_udp

LINKTYPE_RAW = 101
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    """Append-only pcap writer; `log` takes the Trickles segment and how it was carried."""

    def __init__(self, path: str, snaplen: int = 65535) -> None:
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._f.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_RAW))
        self._ident = 0
        self.records = 0
        self._last_flush = time.monotonic()

    def write_datagram(self, ts: float, datagram: bytes) -> None:
        usec_total = round(ts * 1e6)
        sec, usec = divmod(usec_total, 1_000_000)
        n = len(datagram)
        self._f.write(_RECORD.pack(sec, usec, n, n))
        self._f.write(datagram)
        self.records += 1
        now = time.monotonic()
        if now - self._last_flush > 0.5:
            self._f.flush()
            self._last_flush = now

    def log(self, ts: float, src: bytes, dst: bytes, segment: bytes, ip_proto: int,
            udp_ports: tuple[int, int] | None = None) -> None:
        """Log one segment; `ip_proto` 253/6 for raw, 17 (with `udp_ports`) for UDP."""
        self._ident = (self._ident + 1) & 0xFFFF
        if ip_proto == PROTO_UDP:
            if udp_ports is None:
                raise ValueError("UDP records need udp_ports")
            payload = build_udp(udp_ports[0], udp_ports[1], segment)
        else:
            payload = segment
        self.write_datagram(ts, build_ipv4(src, dst, ip_proto, payload, self._ident))

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self._f.close()
