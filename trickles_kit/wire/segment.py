"""TCP-format segment: 20-byte TCP header + the Trickles option, with a real TCP checksum.

Every Trickles packet (raw IP 253, IP 6 or UDP-encapsulated) carries this segment, so tcpdump,
tshark and scapy parse it as TCP. The checksum always uses protocol 6 in the pseudo-header —
the value a TCP dissector expects — whatever IP protocol number carries the segment.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from trickles_kit.native import speedups
from trickles_kit.wire.errors import DecodeError

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

OPT_KIND = 253  # RFC 6994 experimental option
OPT_EXID = 0x544B  # "TK"
HEADER_LEN = 28  # 20 + option (6) + 2 NOPs
# The layout, named once: the engines' fast paths (core/server_fast, core/client_fast) build and
# read segments with these directly instead of through encode_segment/decode_segment.
OFFSET_BYTE = (HEADER_LEN // 4) << 4  # the data-offset byte of our 28-byte header
HEADER = struct.Struct("!HHIIBBHHHBBHHBB")  # the 28-byte header, option and NOPs included
PORTS_FLAGS = struct.Struct("!HHxxxxxxxxBB")  # ports, data-offset byte, flags
# what a receiver checks of it: ports, data-offset byte, flags, the option's first word (20-23)
HEADER_CHECKED = struct.Struct("!HH8xBB6xI4x")
OPT_PREFIX = bytes((OPT_KIND, 6)) + OPT_EXID.to_bytes(2, "big")  # bytes 20-23 of a header
PSEUDO = struct.Struct("!4s4sBBH")  # the TCP checksum's pseudo-header
# Layouts a capture reader applies to a whole datagram (the decoder's hot loop reads these):
_TCP_FORMAT = "HHIIBBHxxxxBBHH"  # ports, seq, ack, offset, flags, window; first option's kind,
#                                  length, ExID and value (the Trickles option in our layout)
IPV4_HEAD = struct.Struct("!BxHxxHxBxxQ")  # version/IHL, total, frag, protocol, both addresses
TCP_HEAD = struct.Struct("!" + _TCP_FORMAT)
IPV4_TCP_HEAD = struct.Struct("!xxHxxHxBxxQ" + _TCP_FORMAT)  # both, for IPv4 without options
IPV4_LEN = 20
UDP_LEN = 8
_MAX_U32 = 0xFFFFFFFF


class Segment(NamedTuple):
    """A decoded segment header; `payload` is everything after the 28-byte header."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    trickles_len: int
    payload: bytes


def py_ones_sum(data: bytes) -> int:
    """Internet ones'-complement sum of `data` (even length), folded to 16 bits.

    2^16 ≡ 1 (mod 2^16 - 1), so the folded sum of 16-bit words is the big-endian integer mod 65535:
    one C-level bignum operation instead of a Python loop over words. The remainder costs more
    than the conversion, and it grows with the number's size: a full segment is cut into four
    even-length pieces (each piece's weight is a power of 2^16, ≡ 1) whose sum is a quarter of
    the size — 1.5 KB: about 20 % less than one `%` (benchmarks/results/native_build.json).
    """
    n = len(data)
    if n < 256:
        return int.from_bytes(data, "big") % 0xFFFF
    q = ((n >> 2) + 1) & ~1  # the last three pieces have an even length
    a = n - 3 * q
    b = a + q
    c = b + q
    fb = int.from_bytes
    return (fb(data[:a], "big") + fb(data[a:b], "big") + fb(data[b:c], "big")
            + fb(data[c:], "big")) % 0xFFFF


def py_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes) -> int:
    """TCP checksum of `segment` (checksum field zeroed) for the given IPv4 addresses."""
    n = len(segment)
    pseudo = PSEUDO.pack(src_ip, dst_ip, 0, 6, n)
    body = segment + b"\0" if n & 1 else segment
    s = (py_ones_sum(pseudo) + py_ones_sum(body)) % 0xFFFF
    # a zero sum of non-zero data is 0xFFFF in ones' complement; the pseudo-header is never zero
    return (~(s or 0xFFFF)) & 0xFFFF


# The pure-Python definitions above are what the notebooks read; a compiled build (see
# trickles_kit/native) has C twins with the same results, and these names are those.
ones_sum: Callable[[bytes], int] = py_ones_sum if speedups is None else speedups.ones_sum
checksum: Callable[[bytes, bytes, bytes], int] = (
    py_checksum if speedups is None else speedups.checksum)


def encode_segment(
    src_ip: bytes,
    dst_ip: bytes,
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes,
    trickles_len: int = 0,
    window: int = 0,
) -> bytes:
    """Build a checksummed segment. Field ranges are the caller's contract (engines pass u32s)."""
    seq &= _MAX_U32
    ack &= _MAX_U32
    n = HEADER_LEN + len(payload)
    pseudo_hdr = PSEUDO.pack(src_ip, dst_ip, 0, 6, n) + HEADER.pack(
        src_port, dst_port, seq, ack, OFFSET_BYTE, flags, window, 0,
        0, OPT_KIND, 6, OPT_EXID, trickles_len, 1, 1,
    )
    body = payload + b"\0" if len(payload) & 1 else payload
    # pseudo-header (12) + header (28) are a whole number of 16-bit words: sum the parts apart
    s = (ones_sum(pseudo_hdr) + ones_sum(body)) % 0xFFFF
    csum = (~(s or 0xFFFF)) & 0xFFFF
    return HEADER.pack(
        src_port, dst_port, seq, ack, OFFSET_BYTE, flags, window, csum,
        0, OPT_KIND, 6, OPT_EXID, trickles_len, 1, 1,
    ) + payload


def decode_segment(
    data: bytes, src_ip: bytes | None = None, dst_ip: bytes | None = None
) -> Segment:
    """Parse a segment; verify the checksum when both addresses are given.

    Raises DecodeError('short' | 'offset' | 'option' | 'checksum').
    """
    n = len(data)
    if n < 20:
        raise DecodeError("short", f"{n} bytes, a TCP header needs 20")
    src_port, dst_port, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", data, 0)
    hlen = (off >> 4) * 4
    if hlen < 20 or hlen > n:
        raise DecodeError("offset", f"data offset {hlen} with {n} bytes")
    tlen = _find_option(data, hlen)
    if src_ip is not None and dst_ip is not None:
        pseudo = PSEUDO.pack(src_ip, dst_ip, 0, 6, n)
        body = data + b"\0" if n & 1 else data
        if (ones_sum(pseudo) + ones_sum(body)) % 0xFFFF != 0:
            raise DecodeError("checksum", "TCP checksum mismatch")
    return Segment(src_port, dst_port, seq, ack, flags, window, tlen, bytes(data[hlen:]))


def _find_option(data: bytes, hlen: int) -> int:
    """Value of the Trickles option; the common layout is checked first, then a full scan."""
    if hlen >= HEADER_LEN and data[20:24] == OPT_PREFIX:
        return int.from_bytes(data[24:26], "big")
    i = 20
    while i < hlen:
        kind = data[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= hlen:
            break
        olen = data[i + 1]
        if olen < 2 or i + olen > hlen:
            raise DecodeError("option", f"option {kind} with bad length {olen}")
        if kind == OPT_KIND and olen == 6 and data[i + 2 : i + 4] == OPT_PREFIX[2:]:
            return int.from_bytes(data[i + 4 : i + 6], "big")
        i += olen
    raise DecodeError("option", "no Trickles option in the TCP header")
