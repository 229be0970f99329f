"""pcapng blocks: what a walk over a pcapng file carries from one block to the next.

A section fixes the byte order and numbers its interfaces; a packet block names one of them
for its link type and timestamp resolution. `PcapngSection` holds that state and reads the
block headers, Interface Description blocks and the three kinds of packet block; the walk
itself (windows, truncation, oversized blocks) is `PcapReader._pcapng`.
"""

from __future__ import annotations

import struct

from trickles_kit.capture.pcapformat import (
    MAX_INTERFACES,
    PCAPNG_BOM,
    PCAPNG_EPB,
    PCAPNG_PB,
    PCAPNG_SHB,
    PcapError,
)


class PcapngSection:
    """The current section: byte order (`e`, and the structs in it), its interfaces
    (linktype, seconds per timestamp unit, timestamp offset, snaplen) and the last timestamp
    (a Simple Packet block has none: it gets the previous packet's)."""

    __slots__ = ("e", "u32", "epb", "pb", "ifaces", "last_ts")

    def __init__(self) -> None:
        self.e = "<"
        self.u32: struct.Struct | None = None  # None until the first Section Header block
        self.epb = struct.Struct("<IIIII")
        self.pb = struct.Struct("<HHIIII")
        self.ifaces: list[tuple[int, float, float, int]] = []
        self.last_ts = 0.0

    def block_type(self, buf: bytes, off: int, at: int) -> int:
        """The type of the block at `off` (file offset `at`); a Section Header block starts a
        new section: its byte order, no interfaces yet."""
        if int.from_bytes(buf[off : off + 4], "big") == PCAPNG_SHB:
            bom = buf[off + 8 : off + 12]
            if int.from_bytes(bom, "little") == PCAPNG_BOM:
                e = "<"
            elif int.from_bytes(bom, "big") == PCAPNG_BOM:
                e = ">"
            else:
                raise PcapError(f"corrupt pcapng: bad byte-order magic at offset {at}")
            self.e = e
            self.u32 = struct.Struct(e + "I")
            self.epb = struct.Struct(e + "IIIII")
            self.pb = struct.Struct(e + "HHIIII")
            self.ifaces = []
            return PCAPNG_SHB
        if self.u32 is None:
            raise PcapError("not a pcap or pcapng file")
        return self.u32.unpack_from(buf, off)[0]

    def interface(self, buf: bytes, body: int, end: int, blen: int, at: int) -> int:
        """Add the interface an Interface Description block describes; its link type."""
        if blen < 20:
            raise PcapError(f"corrupt pcapng: short interface block at {at}")
        if len(self.ifaces) >= MAX_INTERFACES:
            raise PcapError(f"corrupt pcapng: interface block at {at} is one more "
                            f"than {MAX_INTERFACES} in a section")
        lt, _, snap = struct.unpack_from(self.e + "HHI", buf, body)
        scale, tsoff = idb_options(buf, body + 8, end - 4, self.e)
        self.ifaces.append((lt, scale, tsoff, snap))
        return lt

    def packet(self, btype: int, buf: bytes, body: int, end: int, blen: int,
               at: int) -> tuple[int, int, int]:
        """(link type, start, captured length) of the frame of an Enhanced, Simple or obsolete
        Packet block; `last_ts` becomes its timestamp."""
        if btype == PCAPNG_EPB:
            if blen < 32:
                raise PcapError(f"corrupt pcapng: short packet block at {at}")
            iface, hi, lo, incl, _orig = self.epb.unpack_from(buf, body)
            start = body + 20
        elif btype == PCAPNG_PB:
            if blen < 32:
                raise PcapError(f"corrupt pcapng: short packet block at {at}")
            iface, _drops, hi, lo, incl, _orig = self.pb.unpack_from(buf, body)
            start = body + 20
        else:  # a Simple Packet block
            if blen < 16:
                raise PcapError(f"corrupt pcapng: short packet block at {at}")
            iface, hi, lo = 0, -1, 0
            assert self.u32 is not None
            (orig,) = self.u32.unpack_from(buf, body)
            start = body + 4
            incl = min(orig, end - 4 - start)
            if self.ifaces and self.ifaces[0][3]:
                incl = min(incl, self.ifaces[0][3])
        ifaces = self.ifaces
        if iface >= len(ifaces):
            raise PcapError(f"corrupt pcapng: packet block at offset {at} names interface "
                            f"{iface}, {len(ifaces)} described")
        if start + incl > end - 4:
            raise PcapError(f"corrupt pcapng: packet block at offset {at}: captured length "
                            f"{incl} exceeds the block")
        lt, scale, tsoff, _ = ifaces[iface]
        if hi >= 0:
            self.last_ts = ((hi << 32) | lo) * scale + tsoff
        return lt, start, incl


def idb_options(buf: bytes, off: int, end: int, e: str) -> tuple[float, float]:
    """(seconds per timestamp unit, timestamp offset in seconds) from IDB options."""
    scale, tsoff = 1e-6, 0.0
    while off + 4 <= end:
        code, olen = struct.unpack_from(e + "HH", buf, off)
        if code == 0:
            break
        val = off + 4
        if val + olen > end:
            break
        if code == 9 and olen >= 1:  # if_tsresol
            v = buf[val]
            scale = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        elif code == 14 and olen >= 8:  # if_tsoffset (seconds)
            (tsoff_i,) = struct.unpack_from(e + "q", buf, val)
            tsoff = float(tsoff_i)
        off = val + ((olen + 3) & ~3)
    return scale, tsoff
