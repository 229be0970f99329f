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

Memory: the file is read a window at a time (`WINDOW`, 2 MiB; positioned reads for a regular
file, so walks are independent), never mapped or read whole: what the reader holds does not grow
with the file. A record (or pcapng packet block) larger than `MAX_RECORD` (256 KiB) — no IPv4
datagram is that large; only a corrupt or crafted capture has one, e.g. a sparse file with a
huge snapshot length — is skipped unread and counted as ``skipped["oversized"]``; a classic
record larger than both that and the snapshot length is still a corrupt file (`PcapError`).
A pipe is read in order and can be walked once.
"""

from __future__ import annotations

import contextlib
import os
import stat
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
MAX_BLOCK = MAX_RECORD + 4096  # a pcapng block: such a frame, its headers and options
WINDOW = 1 << 21  # bytes read at a time (2 MiB): with a record, all the reader holds
BATCH = 1 << 13  # records per batch of a walk
MAX_INTERFACES = 1 << 16  # interfaces a pcapng section may describe (kept in memory)

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
        return None, ("ipv6" if fam in (10, 24, 28, 30) else f"family_{fam}" if fam < 256
                      else "family_other")  # (a bounded set of reasons whatever the input)
    return None, f"linktype_{linktype}"


def _seek_read(fd: int, n: int, pos: int) -> bytes:
    os.lseek(fd, pos, os.SEEK_SET)
    return os.read(fd, n)


_pread = getattr(os, "pread", None) or _seek_read  # (positioned reads where there are none)


class _Window:
    """One walk's bounded view of the file: ``buf`` holds the file bytes [base, end).

    A regular file is read with positioned reads (`os.pread`), so walks are independent and a
    jump forward reads nothing in between; anything else (a pipe) is read in order, once.
    `fill` drops the bytes before an offset and reads a window (`WINDOW` bytes, or a record that
    needs more); `skip_to` jumps past bytes nobody will look at (an oversized record).
    """

    __slots__ = ("buf", "base", "end", "_fd", "_f", "_size", "_path")

    def __init__(self, reader: PcapReader, first: bytes) -> None:
        self._f = reader._f
        self._size = reader.size
        self._fd = reader._f.fileno() if reader.size is not None else -1
        self._path = reader.path
        self.buf = first
        self.base = 0
        self.end = len(first)

    def _read(self, n: int) -> bytes:
        try:
            if self._fd < 0:
                return self._f.read(n)
            out = _pread(self._fd, n, self.end)
            if 0 < len(out) < n:  # a short read before the end of the file: go on
                parts = [out]
                got = len(out)
                while got < n:
                    more = _pread(self._fd, n - got, self.end + got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                out = b"".join(parts)
            return out
        except OSError as e:
            raise PcapError(f"{self._path}: {e.strerror or e}") from None

    def fill(self, off: int, need: int) -> bytes:
        """Drop buf[:off] and read on: the new buf holds at least `need` bytes unless the file
        ends first. Reads `WINDOW` bytes (more only for a record that needs more)."""
        self.base += off
        if self._fd >= 0:  # a regular file: read the unfinished record again, copy nothing
            self.buf = b""  # (the old window is freed as soon as the caller lets go of it)
            self.end = self.base
            self.buf = self._read(max(WINDOW, need))
            self.end += len(self.buf)
            return self.buf
        tail = self.buf[off:]
        self.buf = b""
        chunk = self._read(max(WINDOW, need) - len(tail))
        self.end += len(chunk)
        self.buf = tail + chunk if tail else chunk
        return self.buf

    def skip_to(self, target: int) -> tuple[bytes, int] | None:
        """Move to file offset `target`: (buf, offset of `target` in it), or None when the file
        ends before it (then `end` is where it ends)."""
        if target <= self.end:
            return self.buf, target - self.base
        self.buf = b""
        if self._fd >= 0:
            if target > self._size:
                with contextlib.suppress(OSError):  # a capture still being written grows
                    self._size = os.fstat(self._fd).st_size
            if target > self._size:
                self.base = self.end = max(self._size, self.end)
                return None
        else:
            left = target - self.end
            while left > 0:
                chunk = self._read(min(left, WINDOW))
                if not chunk:
                    self.base = self.end
                    return None
                self.end += len(chunk)
                left -= len(chunk)
        self.base = self.end = target
        return self.buf, 0


class PcapReader:
    """Iterator over the IPv4 datagrams of one capture file. Also a context manager.

    The file is read a window at a time (`WINDOW` bytes): memory does not grow with the file,
    and a record larger than `MAX_RECORD` (no IPv4 datagram is; only a corrupt or crafted
    capture has one) is skipped unread and counted as ``skipped["oversized"]``.

    After (or during) iteration: `format` ("pcap" | "pcapng"), `linktypes` (set of link types
    seen), `frames` (records read), `records` (datagrams yielded), `skipped` (Counter of frames not
    yielded, by reason), `truncated` and `warning` (see the module docstring). `size` is the
    file's size (None for a pipe, which can be walked only once).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.truncated = False
        self.warning: str | None = None
        self.skipped: Counter[str] = Counter()
        self.linktypes: set[int] = set()
        self.frames = 0
        self.records = 0
        self._head: bytes | None = None
        try:
            self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise PcapError(f"{self.path}: {e.strerror or e}") from None
        try:
            try:
                st = os.fstat(self._f.fileno())
                regular = stat.S_ISREG(st.st_mode)
                self.size: int | None = st.st_size if regular else None
                head = (_pread(self._f.fileno(), WINDOW, 0) if regular
                        else self._f.read(WINDOW))
            except OSError as e:
                raise PcapError(f"{self.path}: {e.strerror or e}") from None
            if not head:
                raise PcapError("empty file: not a pcap or pcapng file")
            self._head = head
            self._detect(head)
        except BaseException:
            self.close()
            raise
        self._it: Iterator[Record] | None = None

    # ------------------------------------------------------------------ header
    def _detect(self, head: bytes) -> None:
        n = len(head)
        if n < 4:
            raise PcapError("not a pcap or pcapng file")
        le = int.from_bytes(head[:4], "little")
        be = int.from_bytes(head[:4], "big")
        if le in (MAGIC_US, MAGIC_NS) or be in (MAGIC_US, MAGIC_NS):
            self.format = "pcap"
            self._endian = "<" if le in (MAGIC_US, MAGIC_NS) else ">"
            self._scale = 1e-9 if (le if self._endian == "<" else be) == MAGIC_NS else 1e-6
            if n < 24:
                raise PcapError("truncated pcap file header (24 bytes needed)")
            _, major, _minor, _, _, snaplen, network = struct.unpack_from(
                self._endian + "IHHiIII", head, 0)
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
            if n < 28:
                raise PcapError("truncated pcapng section header")
        else:
            raise PcapError("not a pcap or pcapng file")

    def _window(self) -> _Window:
        """A window at the start of the file, for a new walk."""
        head, self._head = self._head, None
        if head is None:
            if self.size is None:
                raise PcapError(f"{self.path}: not a regular file: it can be read only once")
            try:
                head = _pread(self._f.fileno(), WINDOW, 0)
            except OSError as e:
                raise PcapError(f"{self.path}: {e.strerror or e}") from None
        return _Window(self, head)

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

    def spans(self, batch: int = BATCH) -> Iterator[tuple[bytes, list[float], list[int],
                                                          list[int]]]:
        """The datagrams of `datagrams()` in batches of up to `batch`: ``(buf, ts, starts,
        ends)``, datagram i being ``buf[starts[i]:ends[i]]``.

        For a classic pcap of raw IP frames `buf` is the reader's window of the file itself: no
        per-datagram bytes object or tuple — what a decoder reading fields with
        ``Struct.unpack_from(buf, offset)`` wants, and one buffer for vectorised work over a
        batch. Any other capture yields each batch of datagrams joined into one bytes object
        (of about `WINDOW` bytes at most). Either way a batch holds at most a window's bytes.
        """
        if self.format == "pcap" and self.linktype in _RAW_TYPES:
            y = 0
            try:
                for item in self._pcap_walk(batch, True):
                    y += len(item[1])
                    yield item
            finally:
                self.records = y
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
                if len(tss) >= batch or off >= WINDOW:
                    break
            if not tss:
                return
            yield b"".join(parts), tss, starts, ends

    def _pcap_walk(self, batch: int, ip_only: bool) -> Iterator[tuple[bytes, list[float],
                                                                      list[int], list[int]]]:
        """The records of a classic pcap in batches of up to `batch`: ``(buf, ts, starts,
        ends)``, record i's frame being ``buf[starts[i]:ends[i]]`` (only frames that start like
        IPv4 when `ip_only`; the others are counted in `skipped`). `buf` is the window: the
        walk reads the file a window at a time and never holds more than a window and a record.
        """
        win = self._window()
        buf = win.buf
        unpack = struct.Struct(self._endian + "IIII").unpack_from
        scale = self._scale
        limit = max(self.snaplen, MAX_RECORD)
        skipped = self.skipped
        off = 24
        n = 0
        try:
            while True:
                size = len(buf)
                tss: list[float] = []
                starts: list[int] = []
                ends: list[int] = []
                t_add, s_add, e_add = tss.append, starts.append, ends.append
                stop = n + batch
                need = incl = 0
                while n < stop:
                    if off + 16 > size:
                        need, incl = 16, -1
                        break
                    sec, frac, incl, _ = unpack(buf, off)
                    if incl > limit:
                        raise PcapError(
                            f"corrupt pcap: record {n} at offset {win.base + off} claims {incl} "
                            f"captured bytes (snapshot length {self.snaplen})")
                    start = off + 16
                    end = start + incl
                    if end > size or incl > MAX_RECORD:
                        need = 16 + incl
                        break
                    off = end
                    n += 1
                    if not ip_only or (incl and buf[start] >> 4 == 4):
                        t_add(sec + frac * scale)
                        s_add(start)
                        e_add(end)
                    else:
                        skipped["ipv6" if incl and buf[start] >> 4 == 6 else "not_ip"] += 1
                if tss:
                    self.frames = n
                    yield buf, tss, starts, ends
                if not need:
                    continue  # a full batch: the same window goes on
                more = self._past_window(win, off, n, need, incl)
                if more is None:
                    return
                buf, off, n = more
        finally:
            self.frames = n

    def _past_window(self, win: _Window, off: int, n: int, need: int, incl: int
                     ) -> tuple[bytes, int, int] | None:
        """A classic-pcap walk met the end of its window (`need` bytes wanted at `off`: a
        record header when `incl` < 0, else a record of `incl` bytes), or a record over
        `MAX_RECORD`, skipped unread: (window, offset, records so far) to go on, or None at
        the end of the file (a truncated record noted)."""
        at = win.base + off  # the file offset of the record (or of its header)
        if incl > MAX_RECORD:  # no datagram is this large
            moved = win.skip_to(at + need)
            if moved is None:
                self._truncate(f"record {n} at offset {at} needs {incl} bytes, "
                               f"{max(win.end - at - 16, 0)} remain")
                return None
            self.skipped["oversized"] += 1
            return moved[0], moved[1], n + 1
        buf = win.fill(off, need)
        if len(buf) < need:
            if buf:  # (empty: the end of the file, between two records)
                if incl < 0 or len(buf) < 16:
                    self._truncate(f"record {n} header at offset {at} is cut short")
                else:
                    self._truncate(f"record {n} at offset {at} needs {incl} bytes, "
                                   f"{len(buf) - 16} remain")
            return None
        return buf, 0, n

    def _pcap_raw(self) -> Iterator[tuple[float, bytes]]:
        """The hot path: classic pcap with raw IP frames, no per-record objects (the record
        walk of `_pcap_walk`, yielding as it goes)."""
        win = self._window()
        buf = win.buf
        unpack = struct.Struct(self._endian + "IIII").unpack_from
        scale = self._scale
        limit = max(self.snaplen, MAX_RECORD)
        skipped = self.skipped
        off = 24
        n = y = 0
        try:
            while True:
                size = len(buf)
                while True:
                    if off + 16 > size:
                        need, incl = 16, -1
                        break
                    sec, frac, incl, _ = unpack(buf, off)
                    if incl > limit:
                        raise PcapError(
                            f"corrupt pcap: record {n} at offset {win.base + off} claims {incl} "
                            f"captured bytes (snapshot length {self.snaplen})")
                    start = off + 16
                    end = start + incl
                    if end > size or incl > MAX_RECORD:
                        need = 16 + incl
                        break
                    off = end
                    n += 1
                    if incl and buf[start] >> 4 == 4:
                        y += 1
                        yield sec + frac * scale, buf[start:end]
                    else:
                        skipped["ipv6" if incl and buf[start] >> 4 == 6 else "not_ip"] += 1
                more = self._past_window(win, off, n, need, incl)
                if more is None:
                    return
                buf, off, n = more
        finally:
            self.frames = n
            self.records = y

    def _truncate(self, where: str) -> None:
        self.truncated = True
        self.warning = f"{self.path}: truncated capture: {where}; the records before it were read"
        warnings.warn(self.warning, TruncatedCaptureWarning, stacklevel=3)

    def _pcap(self) -> Iterator[Record]:
        lt = self.linktype
        raw = lt in _RAW_TYPES
        skipped = self.skipped
        y = 0
        try:
            for buf, tss, starts, ends in self._pcap_walk(BATCH, raw):
                for ts, b, e in zip(tss, starts, ends, strict=True):
                    if raw:
                        y += 1
                        yield Record(ts, lt, buf[b:e])
                        continue
                    data, why = strip_link(lt, buf[b:e])
                    if data is None:
                        skipped[why] += 1
                    else:
                        y += 1
                        yield Record(ts, lt, data)
        finally:
            self.records = y

    def _pcapng(self) -> Iterator[Record]:
        win = self._window()
        buf = win.buf
        skipped = self.skipped
        off = 0
        n = 0
        y = 0
        e = "<"
        ifaces: list[tuple[int, float, float, int]] = []  # (linktype, scale, offset s, snaplen)
        last_ts = 0.0
        epb = spb = pb = u32 = None
        try:
            while True:
                if off + 12 > len(buf):
                    buf = win.fill(off, 12)
                    off = 0
                    if len(buf) < 12:
                        if buf:
                            self._truncate(f"block header at offset {win.base} is cut short")
                        break
                at = win.base + off  # the block's file offset
                btype_be = int.from_bytes(buf[off : off + 4], "big")
                if btype_be == PCAPNG_SHB:
                    bom = buf[off + 8 : off + 12]
                    if int.from_bytes(bom, "little") == PCAPNG_BOM:
                        e = "<"
                    elif int.from_bytes(bom, "big") == PCAPNG_BOM:
                        e = ">"
                    else:
                        raise PcapError(f"corrupt pcapng: bad byte-order magic at offset {at}")
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
                    raise PcapError(f"corrupt pcapng: block at offset {at} has length {blen}")
                oversized = blen > MAX_BLOCK
                head = MAX_BLOCK if oversized else blen  # what is read of the block
                if off + head > len(buf):
                    buf = win.fill(off, head)
                    off = 0
                    if len(buf) < head:
                        self._truncate(f"block at offset {at} needs {blen} bytes, "
                                       f"{len(buf)} remain")
                        break
                if oversized:
                    end = off + head  # (the trailing length is checked below, unread so far)
                else:
                    end = off + blen
                    if u32.unpack_from(buf, end - 4)[0] != blen:
                        raise PcapError(
                            f"corrupt pcapng: block at offset {at}: trailing length differs")
                body = off + 8
                if btype == PCAPNG_IDB:
                    if blen < 20:
                        raise PcapError(f"corrupt pcapng: short interface block at {at}")
                    if len(ifaces) >= MAX_INTERFACES:
                        raise PcapError(f"corrupt pcapng: interface block at {at} is one more "
                                        f"than {MAX_INTERFACES} in a section")
                    lt, _, snap = struct.unpack_from(e + "HHI", buf, body)
                    scale, tsoff = self._idb_options(buf, body + 8, end - 4, e)
                    ifaces.append((lt, scale, tsoff, snap))
                    self.linktypes.add(lt)
                elif btype in (PCAPNG_EPB, PCAPNG_SPB, PCAPNG_PB):
                    n += 1
                    if oversized:  # no datagram is this large: skipped unread
                        skipped["oversized"] += 1
                    else:
                        if btype == PCAPNG_EPB:
                            if blen < 32:
                                raise PcapError(f"corrupt pcapng: short packet block at {at}")
                            iface, hi, lo, incl, _orig = epb.unpack_from(buf, body)
                            start = body + 20
                        elif btype == PCAPNG_PB:
                            if blen < 32:
                                raise PcapError(f"corrupt pcapng: short packet block at {at}")
                            iface, _drops, hi, lo, incl, _orig = pb.unpack_from(buf, body)
                            start = body + 20
                        else:
                            if blen < 16:
                                raise PcapError(f"corrupt pcapng: short packet block at {at}")
                            iface, hi, lo = 0, -1, 0
                            (orig,) = spb.unpack_from(buf, body)
                            start = body + 4
                            incl = min(orig, end - 4 - start)
                            if ifaces and ifaces[0][3]:
                                incl = min(incl, ifaces[0][3])
                        if iface >= len(ifaces):
                            raise PcapError(
                                f"corrupt pcapng: packet block at offset {at} names interface "
                                f"{iface}, {len(ifaces)} described")
                        if start + incl > end - 4:
                            raise PcapError(
                                f"corrupt pcapng: packet block at offset {at}: captured length "
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
                if not oversized:
                    off = end
                    continue
                # the rest of an oversized block is not read, only its trailing length
                moved = win.skip_to(at + blen - 4)
                if moved is not None:
                    buf, off = moved
                    if off + 4 > len(buf):
                        buf = win.fill(off, 4)
                        off = 0
                if moved is None or len(buf) < off + 4:
                    self._truncate(f"block at offset {at} needs {blen} bytes, "
                                   f"{max(win.end - at, 0)} remain")
                    break
                if u32.unpack_from(buf, off)[0] != blen:
                    raise PcapError(
                        f"corrupt pcapng: block at offset {at}: trailing length differs")
                off += 4
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
        self._head = None
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
