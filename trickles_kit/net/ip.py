"""IPv4 (and UDP) headers for the raw transport and for endpoint pcaps.

The data path never builds IP headers on send (the kernel does); these helpers parse what a raw
socket receives and synthesize headers so an endpoint's log is a valid pcap.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.segment import ones_sum

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_TRICKLES = 253  # RFC 3692 experimental
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_HEAD = struct.Struct("!BxHxxxxxB2x4s4s").unpack_from  # version/IHL, total, protocol, addresses


class IPv4(NamedTuple):
    src: bytes
    dst: bytes
    proto: int
    payload: bytes


def parse_ipv4(data: bytes | memoryview) -> IPv4:
    """Split an IPv4 datagram (as a raw socket returns it) into addresses and payload.

    `data` may be a memoryview of the receive buffer: the header is read in place (one unpack)
    and the payload is the only copy made (issue 17: it was copied out of the buffer, then
    sliced again)."""
    if len(data) < 20:
        raise DecodeError("ip_short", f"{len(data)} bytes")
    vihl, total, proto, src, dst = _HEAD(data)
    ihl = (vihl & 0xF) * 4
    n = len(data)
    if vihl >> 4 != 4 or ihl < 20 or n < ihl:
        raise DecodeError("ip_header", "not an IPv4 header")
    end = total if ihl <= total <= n else n
    return IPv4(src, dst, proto, bytes(data[ihl:end]))


def build_ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 0,
               ttl: int = 64) -> bytes:
    """A checksummed IPv4 header + payload (DF set, no options)."""
    hdr = _IP.pack(0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, ttl, proto, 0, src, dst)
    s = ones_sum(hdr)
    csum = (~(s or 0xFFFF)) & 0xFFFF
    return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:] + payload


def build_udp(sport: int, dport: int, payload: bytes) -> bytes:
    """UDP header with checksum 0 (allowed for IPv4) + payload."""
    return _UDP.pack(sport, dport, 8 + len(payload), 0) + payload


def aton(addr: str) -> bytes:
    try:
        return socket.inet_aton(addr)
    except OSError:
        raise ValueError(f"not an IPv4 address: {addr!r}") from None


def ntoa(addr: bytes) -> str:
    return socket.inet_ntoa(addr)
