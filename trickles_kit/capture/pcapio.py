"""A fast, dependency-free pcap / pcapng reader that yields IPv4 datagrams.

`read_pcap(path)` returns a `PcapReader`: iterate it for `Record(ts, linktype, data)` where `data`
is always an IPv4 datagram (the link-layer header already stripped) and `ts` is seconds since the
epoch as a float.

Formats:

* classic pcap, both byte orders, microsecond (0xA1B2C3D4) and nanosecond (0xA1B23C4D) magic;
* pcapng: Section Header, Interface Description (if_tsresol and if_tsoffset honoured), Enhanced
  Packet and Simple Packet blocks, and the obsolete Packet block; every other block type is
  skipped. A Simple Packet block has no timestamp: it gets the previous packet's.

Link types: RAW (101, and the BSD values 12 / 14), IPV4 (228), EN10MB (1: Ethernet, 802.1Q /
802.1ad VLAN tags removed), LINUX_SLL (113), LINUX_SLL2 (276), NULL (0, BSD loopback, either
byte order) and LOOP (108). Frames that do not carry IPv4 (ARP, IPv6, ...) are not yielded; they
are counted in `reader.skipped` by reason (``"arp"``, ``"ipv6"``, ``"ethertype_0x88cc"``...).

Errors — the choice made here:

* a file that is not a capture (random bytes, empty, text) raises
  ``PcapError("not a pcap or pcapng file")``; an unsupported link type in a classic pcap, a
  truncated file header and a corrupt record or block (a captured length larger than any snapshot
  length, pcapng block lengths that disagree) raise `PcapError` naming the offset;
* a **truncated last record** (the capture was cut while being written, e.g. tcpdump killed) is
  not an error: every complete record is yielded, then `reader.truncated` is set,
  `reader.warning` says where, and a `TruncatedCaptureWarning` is issued.

`PcapError` is a `ValueError`, so callers that already catch ValueError for bad input keep working.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

LINKTYPE_NULL = 0
LINKTYPE_EN10MB = 1
LINKTYPE_RAW_BSD12 = 12
LINKTYPE_RAW_BSD14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "NULL",
    LINKTYPE_EN10MB: "EN10MB",
    LINKTYPE_RAW_BSD12: "RAW",
    LINKTYPE_RAW_BSD14: "RAW",
    LINKTYPE_RAW: "RAW",
    LINKTYPE_LOOP: "LOOP",
    LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4",
    LINKTYPE_LINUX_SLL2: "LINUX_SLL2",
}
_RAW_TYPES = frozenset((LINKTYPE_RAW, LINKTYPE_RAW_BSD12, LINKTYPE_RAW_BSD14, LINKTYPE_IPV4))

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
PCAPNG_IDB, PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB = 1, 2, 3, 6

MAX_RECORD = 0x40000  # 256 KiB: larger than any real snapshot length (tcpdump -s 0 = 262144)

_ETHERTYPES = {0x0806: "arp", 0x86DD: "ipv6", 0x8035: "rarp", 0x88CC: "lldp", 0x8847: "mpls"}
_VLAN = (0x8100, 0x88A8, 0x9100)


class PcapError(ValueError):
    """The file is not a readable capture (or is corrupt); the message says why and where."""


class TruncatedCaptureWarning(UserWarning):
    """The capture's last record is incomplete; the complete records before it were read."""


class Record(NamedTuple):
    ts: float  # seconds since the epoch
    linktype: int  # the link type the frame was captured with
    data: bytes  # the IPv4 datagram, link-layer header removed


def _skip_reason_ethertype(et: int) -> str:
    if et < 0x0600:
        return "llc"
    return _ETHERTYPES.get(et, f"ethertype_0x{et:04x}")


def strip_link(linktype: int, frame: bytes) -> tuple[bytes | None, str]:
    """The IPv4 datagram inside `frame`, or (None, reason) when the frame carries something else."""
    if linktype in _RAW_TYPES:
        if frame and frame[0] >> 4 == 4:
            return frame, ""
        return None, "ipv6" if frame and frame[0] >> 4 == 6 else "not_ip"
    if linktype == LINKTYPE_EN10MB:
        if len(frame) < 14:
            return None, "short_frame"
        off = 12
        et = (frame[12] << 8) | frame[13]
        while et in _VLAN and off + 6 <= len(frame):
            off += 4
            et = (frame[off] << 8) | frame[off + 1]
        if et != 0x0800:
            return None, _skip_reason_ethertype(et)
        return frame[off + 2 :], ""
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None, "short_frame"
        et = (frame[14] << 8) | frame[15]
        return (frame[16:], "") if et == 0x0800 else (None, _skip_reason_ethertype(et))
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None, "short_frame"
        et = (frame[0] << 8) | frame[1]
        return (frame[20:], "") if et == 0x0800 else (None, _skip_reason_ethertype(et))
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return None, "short_frame"
        if linktype == LINKTYPE_LOOP:
            fam = int.from_bytes(frame[:4], "big")
        else:  # host byte order of the machine that captured: accept both
            fam = int.from_bytes(frame[:4], "little")
            if fam > 0xFFFF:
                fam = int.from_bytes(frame[:4], "big")
        if fam == 2:
            return frame[4:], ""
        return None, "ipv6" if fam in (10, 24, 28, 30) else f"family_{fam}"
    return None, f"linktype_{linktype}"


class PcapReader:
    """Iterator over the IPv4 datagrams of one capture file. Also a context manager.

    After (or during) iteration: `format` ("pcap" | "pcapng"), `linktypes` (set of link types
    seen), `frames` (records read), `records` (datagrams yielded), `skipped` (Counter of frames not
    yielded, by reason), `truncated` and `warning` (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.truncated = False
        self.warning: str | None = None
        self.skipped: Counter[str] = Counter()
        self.linktypes: set[int] = set()
        self.frames = 0
        self.records = 0
        try:
            self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise PcapError(f"{self.path}: {e.strerror or e}") from None
        try:
            size = os.fstat(self._f.fileno()).st_size
            if size == 0:
                raise PcapError("empty file: not a pcap or pcapng file")
            try:
                self._buf: bytes | mmap.mmap = mmap.mmap(
                    self._f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # not mappable (a pipe, a special file): read it
                self._buf = self._f.read()
            self.size = len(self._buf)
            self._detect()
        except BaseException:
            self.close()
            raise
        self._it: Iterator[Record] | None = None

    # ------------------------------------------------------------------ header
    def _detect(self) -> None:
        buf = self.size
        if buf < 4:
            raise PcapError("not a pcap or pcapng file")
        head = bytes(self._buf[:4])
        le = int.from_bytes(head, "little")
        be = int.from_bytes(head, "big")
        if le in (MAGIC_US, MAGIC_NS) or be in (MAGIC_US, MAGIC_NS):
            self.format = "pcap"
            self._endian = "<" if le in (MAGIC_US, MAGIC_NS) else ">"
            self._scale = 1e-9 if (le if self._endian == "<" else be) == MAGIC_NS else 1e-6
            if self.size < 24:
                raise PcapError("truncated pcap file header (24 bytes needed)")
            _, major, _minor, _, _, snaplen, network = struct.unpack_from(
                self._endian + "IHHiIII", self._buf, 0)
            if major != 2:
                raise PcapError(f"unsupported pcap version {major}")
            self.snaplen = snaplen
            # the FCS-length bits (28..31) may be set in the link-type field
            self.linktype = network & 0x0FFFFFFF
            if self.linktype not in SUPPORTED_LINKTYPES:
                raise PcapError(
                    f"unsupported link type {self.linktype} (supported: "
                    + ", ".join(f"{v} ({k})" for k, v in sorted(SUPPORTED_LINKTYPES.items()))
                    + ")")
            self.linktypes.add(self.linktype)
        elif be == PCAPNG_SHB:
            self.format = "pcapng"
            if self.size < 28:
                raise PcapError("truncated pcapng section header")
        else:
            raise PcapError("not a pcap or pcapng file")

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Record]:
        if self._it is None:
            self._it = self._pcap() if self.format == "pcap" else self._pcapng()
        return self._it

    def __next__(self) -> Record:
        return next(iter(self))

    def datagrams(self) -> Iterator[tuple[float, bytes]]:
        """(ts, IPv4 datagram) pairs: the same stream as iterating, as plain tuples (faster)."""
        if self.format == "pcap" and self.linktype in _RAW_TYPES:
            return self._pcap_raw()
        return ((r[0], r[2]) for r in self)

    def spans(self, batch: int = 1 << 13) -> Iterator[tuple[bytes | mmap.mmap, list[float],
                                                             list[int], list[int]]]:
        """The datagrams of `datagrams()` in batches of up to `batch`: ``(buf, ts, starts,
        ends)``, datagram i being ``buf[starts[i]:ends[i]]``.

        For a classic pcap of raw IP frames `buf` is the mapped file itself: no per-datagram
        bytes object or tuple — what a decoder reading fields with ``Struct.unpack_from(buf,
        offset)`` wants, and one buffer for vectorised work over a batch. Any other capture
        yields each batch of datagrams joined into one bytes object.
        """
        if self.format == "pcap" and self.linktype in _RAW_TYPES:
            yield from self._pcap_raw_spans(batch)
            return
        it = self.datagrams()
        while True:
            tss: list[float] = []
            parts: list[bytes] = []
            starts: list[int] = []
            ends: list[int] = []
            off = 0
            for ts, d in it:
                tss.append(ts)
                parts.append(d)
                starts.append(off)
                off += len(d)
                ends.append(off)
                if len(tss) >= batch:
                    break
            if not tss:
                return
            yield b"".join(parts), tss, starts, ends

    def _pcap_raw_spans(self, batch: int) -> Iterator[tuple[bytes | mmap.mmap, list[float],
                                                            list[int], list[int]]]:
        """`spans` of a classic raw-IP pcap: the record walk of `_pcap_raw`, offsets only."""
        buf = self._buf
        size = self.size
        unpack = struct.Struct(self._endian + "IIII").unpack_from
        scale = self._scale
        limit = max(self.snaplen, MAX_RECORD)
        skipped = self.skipped
        off = 24
        n = y = 0
        try:
            while off < size:
                tss: list[float] = []
                starts: list[int] = []
                ends: list[int] = []
                t_add, s_add, e_add = tss.append, starts.append, ends.append
                stop = n + batch
                while off < size and n < stop:
                    if off + 16 > size:
                        self._truncate(f"record {n} header at offset {off} is cut short")
                        off = size
                        break
                    sec, frac, incl, _ = unpack(buf, off)
                    if incl > limit:
                        raise PcapError(
                            f"corrupt pcap: record {n} at offset {off} claims {incl} captured "
                            f"bytes (snapshot length {self.snaplen})")
                    start = off + 16
                    off = start + incl
                    if off > size:
                        self._truncate(f"record {n} at offset {start - 16} needs {incl} bytes, "
                                       f"{size - start} remain")
                        off = size
                        break
                    n += 1
                    if incl and buf[start] >> 4 == 4:
                        t_add(sec + frac * scale)
                        s_add(start)
                        e_add(off)
                    else:
                        skipped["ipv6" if incl and buf[start] >> 4 == 6 else "not_ip"] += 1
                y += len(tss)
                if tss:
                    yield buf, tss, starts, ends
        finally:
            self.frames = n
            self.records = y

    def _pcap_raw(self) -> Iterator[tuple[float, bytes]]:
        """The hot path: classic pcap with raw IP frames, no per-record objects."""
        buf = self._buf
        size = self.size
        unpack = struct.Struct(self._endian + "IIII").unpack_from
        scale = self._scale
        limit = max(self.snaplen, MAX_RECORD)
        skipped = self.skipped
        off = 24
        n = y = 0
        try:
            while off < size:
                if off + 16 > size:
                    self._truncate(f"record {n} header at offset {off} is cut short")
                    break
                sec, frac, incl, _ = unpack(buf, off)
                if incl > limit:
                    raise PcapError(
                        f"corrupt pcap: record {n} at offset {off} claims {incl} captured bytes "
                        f"(snapshot length {self.snaplen})")
                start = off + 16
                off = start + incl
                if off > size:
                    self._truncate(f"record {n} at offset {start - 16} needs {incl} bytes, "
                                   f"{size - start} remain")
                    break
                n += 1
                frame = buf[start:off]
                if incl and frame[0] >> 4 == 4:
                    y += 1
                    yield sec + frac * scale, frame
                else:
                    skipped["ipv6" if incl and frame[0] >> 4 == 6 else "not_ip"] += 1
        finally:
            self.frames = n
            self.records = y

    def _truncate(self, where: str) -> None:
        self.truncated = True
        self.warning = f"{self.path}: truncated capture: {where}; the records before it were read"
        warnings.warn(self.warning, TruncatedCaptureWarning, stacklevel=3)

    def _pcap(self) -> Iterator[Record]:
        buf = self._buf
        size = self.size
        rec = struct.Struct(self._endian + "IIII")
        unpack = rec.unpack_from
        scale = self._scale
        lt = self.linktype
        limit = max(self.snaplen, MAX_RECORD)
        raw = lt in _RAW_TYPES
        skipped = self.skipped
        off = 24
        n = 0
        y = 0
        try:
            while off < size:
                if off + 16 > size:
                    self._truncate(f"record {n} header at offset {off} is cut short")
                    break
                sec, frac, incl, _orig = unpack(buf, off)
                if incl > limit:
                    raise PcapError(
                        f"corrupt pcap: record {n} at offset {off} claims {incl} captured bytes "
                        f"(snapshot length {self.snaplen})")
                start = off + 16
                off = start + incl
                if off > size:
                    self._truncate(f"record {n} at offset {start - 16} needs {incl} bytes, "
                                   f"{size - start} remain")
                    break
                n += 1
                frame = buf[start:off]
                if raw:
                    if incl and frame[0] >> 4 == 4:
                        y += 1
                        yield Record(sec + frac * scale, lt, frame)
                        continue
                    data, why = None, ("ipv6" if incl and frame[0] >> 4 == 6 else "not_ip")
                else:
                    data, why = strip_link(lt, frame)
                if data is None:
                    skipped[why] += 1
                else:
                    y += 1
                    yield Record(sec + frac * scale, lt, data)
        finally:
            self.frames = n
            self.records = y

    def _pcapng(self) -> Iterator[Record]:
        buf = self._buf
        size = self.size
        skipped = self.skipped
        off = 0
        n = 0
        y = 0
        e = "<"
        ifaces: list[tuple[int, float, float, int]] = []  # (linktype, scale, offset s, snaplen)
        last_ts = 0.0
        epb = spb = pb = u32 = None
        try:
            while off < size:
                if off + 12 > size:
                    self._truncate(f"block header at offset {off} is cut short")
                    break
                btype_be = int.from_bytes(buf[off : off + 4], "big")
                if btype_be == PCAPNG_SHB:
                    bom = buf[off + 8 : off + 12]
                    if len(bom) < 4:
                        self._truncate(f"section header at offset {off} is cut short")
                        break
                    if int.from_bytes(bom, "little") == PCAPNG_BOM:
                        e = "<"
                    elif int.from_bytes(bom, "big") == PCAPNG_BOM:
                        e = ">"
                    else:
                        raise PcapError(f"corrupt pcapng: bad byte-order magic at offset {off}")
                    u32 = struct.Struct(e + "I")
                    epb = struct.Struct(e + "IIIII")
                    pb = struct.Struct(e + "HHIIII")
                    spb = u32
                    ifaces = []
                    btype = PCAPNG_SHB
                else:
                    if u32 is None:
                        raise PcapError("not a pcap or pcapng file")
                    btype = u32.unpack_from(buf, off)[0]
                assert u32 is not None
                blen = u32.unpack_from(buf, off + 4)[0]
                if blen < 12 or blen % 4:
                    raise PcapError(f"corrupt pcapng: block at offset {off} has length {blen}")
                end = off + blen
                if end > size:
                    self._truncate(f"block at offset {off} needs {blen} bytes, "
                                   f"{size - off} remain")
                    break
                if u32.unpack_from(buf, end - 4)[0] != blen:
                    raise PcapError(
                        f"corrupt pcapng: block at offset {off}: trailing length differs")
                body = off + 8
                if btype == PCAPNG_IDB:
                    if blen < 20:
                        raise PcapError(f"corrupt pcapng: short interface block at {off}")
                    lt, _, snap = struct.unpack_from(e + "HHI", buf, body)
                    scale, tsoff = self._idb_options(buf, body + 8, end - 4, e)
                    ifaces.append((lt, scale, tsoff, snap))
                    self.linktypes.add(lt)
                elif btype in (PCAPNG_EPB, PCAPNG_SPB, PCAPNG_PB):
                    n += 1
                    if btype == PCAPNG_EPB:
                        if blen < 32:
                            raise PcapError(f"corrupt pcapng: short packet block at {off}")
                        iface, hi, lo, incl, _orig = epb.unpack_from(buf, body)
                        start = body + 20
                    elif btype == PCAPNG_PB:
                        if blen < 32:
                            raise PcapError(f"corrupt pcapng: short packet block at {off}")
                        iface, _drops, hi, lo, incl, _orig = pb.unpack_from(buf, body)
                        start = body + 20
                    else:
                        if blen < 16:
                            raise PcapError(f"corrupt pcapng: short packet block at {off}")
                        iface, hi, lo = 0, -1, 0
                        (orig,) = spb.unpack_from(buf, body)
                        start = body + 4
                        incl = min(orig, end - 4 - start)
                        if ifaces and ifaces[0][3]:
                            incl = min(incl, ifaces[0][3])
                    if iface >= len(ifaces):
                        raise PcapError(
                            f"corrupt pcapng: packet block at offset {off} names interface "
                            f"{iface}, {len(ifaces)} described")
                    if start + incl > end - 4:
                        raise PcapError(
                            f"corrupt pcapng: packet block at offset {off}: captured length "
                            f"{incl} exceeds the block")
                    lt, scale, tsoff, _ = ifaces[iface]
                    if hi >= 0:
                        last_ts = ((hi << 32) | lo) * scale + tsoff
                    data, why = strip_link(lt, buf[start : start + incl])
                    if data is None:
                        skipped[why] += 1
                    else:
                        y += 1
                        yield Record(last_ts, lt, data)
                # any other block (name resolution, statistics, custom, ...) is skipped
                off = end
        finally:
            self.frames = n
            self.records = y

    @staticmethod
    def _idb_options(buf, off: int, end: int, e: str) -> tuple[float, float]:
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

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        buf = getattr(self, "_buf", None)
        if isinstance(buf, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view still held: the GC unmaps it
                buf.close()
        f = getattr(self, "_f", None)
        if f is not None:
            f.close()

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_pcap(path: str | os.PathLike[str]) -> PcapReader:
    """Open a capture; iterate the result for `Record(ts, linktype, data)` (IPv4 datagrams)."""
    return PcapReader(path)


# ---------------------------------------------------------------------------- writers (tests)
def write_pcap(path: str | Path, frames: list[tuple[float, bytes]], linktype: int = LINKTYPE_RAW,
               byteorder: str = "<", nanos: bool = False, snaplen: int = 65535) -> None:
    """Write a classic pcap of `frames` (ts, link-layer frame): for tests and tools."""
    magic = MAGIC_NS if nanos else MAGIC_US
    scale = 1_000_000_000 if nanos else 1_000_000
    with open(path, "wb") as f:
        f.write(struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        for ts, frame in frames:
            sec = int(ts)
            frac = int(round((ts - sec) * scale))
            if frac >= scale:
                sec, frac = sec + 1, frac - scale
            f.write(struct.pack(byteorder + "IIII", sec, frac, len(frame), len(frame)))
            f.write(frame)


def write_pcapng(path: str | Path, frames: list[tuple[float, bytes]],
                 linktype: int = LINKTYPE_RAW, byteorder: str = "<", tsresol: int = 6,
                 simple: bool = False, extra_blocks: bool = True) -> None:
    """Write a pcapng (SHB, IDB, EPB or SPB per frame, plus an unknown block to be skipped)."""
    e = byteorder

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)

    out = [block(PCAPNG_SHB, struct.pack(e + "IHHq", PCAPNG_BOM, 1, 0, -1))]
    opts = b""
    if tsresol != 6:
        opts = struct.pack(e + "HH", 9, 1) + bytes((tsresol,)) + b"\0\0\0"
        opts += struct.pack(e + "HH", 0, 0)
    out.append(block(PCAPNG_IDB, struct.pack(e + "HHI", linktype, 0, 0) + opts))
    if extra_blocks:  # a Name Resolution block and a custom block: readers must skip them
        out.append(block(4, struct.pack(e + "HH", 0, 0)))
        out.append(block(0x00000BAD, struct.pack(e + "I", 32473) + b"custom"))
    units = 10 ** tsresol
    for ts, frame in frames:
        if simple:
            out.append(block(PCAPNG_SPB, struct.pack(e + "I", len(frame)) + frame))
        else:
            t = int(round(ts * units))
            out.append(block(PCAPNG_EPB, struct.pack(e + "IIIII", 0, t >> 32, t & 0xFFFFFFFF,
                                                     len(frame), len(frame)) + frame))
    Path(path).write_bytes(b"".join(out))
