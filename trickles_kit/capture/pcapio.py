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

import array
import mmap
import os
import stat
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from operator import length_hint
from typing import NamedTuple, TypeVar

# the formats' constants, errors and link layers (pcapformat), the file window (pcapwindow), the
# pcapng block parser (pcapng) and the writers (pcapwrite) are importable from here as before
from trickles_kit import native
from trickles_kit.capture.pcapformat import (
    BATCH,
    LINKTYPE_EN10MB,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_RAW_BSD12,
    LINKTYPE_RAW_BSD14,
    MAGIC_NS,
    MAGIC_US,
    MAX_BLOCK,
    MAX_INTERFACES,
    MAX_RECORD,
    PCAPNG_BOM,
    PCAPNG_EPB,
    PCAPNG_IDB,
    PCAPNG_PB,
    PCAPNG_SHB,
    PCAPNG_SPB,
    RAW_LINKTYPES,
    SUPPORTED_LINKTYPES,
    WINDOW,
    PcapError,
    TruncatedCaptureWarning,
    strip_link,
)
from trickles_kit.capture.pcapng import PcapngSection
from trickles_kit.capture.pcapwindow import FileWindow, pread
from trickles_kit.capture.pcapwrite import write_pcap, write_pcapng

__all__ = [
    "BATCH", "LINKTYPE_EN10MB", "LINKTYPE_IPV4", "LINKTYPE_LINUX_SLL", "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP", "LINKTYPE_NULL", "LINKTYPE_RAW", "LINKTYPE_RAW_BSD12", "LINKTYPE_RAW_BSD14",
    "MAGIC_NS", "MAGIC_US", "MAX_BLOCK", "MAX_INTERFACES", "MAX_RECORD", "PCAPNG_BOM",
    "PCAPNG_EPB", "PCAPNG_IDB", "PCAPNG_PB", "PCAPNG_SHB", "PCAPNG_SPB", "SUPPORTED_LINKTYPES",
    "BIG_WINDOW", "WINDOW", "PcapError", "PcapReader", "Record", "TruncatedCaptureWarning",
    "read_pcap", "strip_link", "write_pcap", "write_pcapng",
]
_PACKET_BLOCKS = (PCAPNG_EPB, PCAPNG_SPB, PCAPNG_PB)
# records per batch of `mapped_batches` at most: a window of empty records would otherwise be
# a million offsets (and the columnar decoder's arrays of them) at once
MAX_BATCH_RECORDS = 1 << 16
BIG_WINDOW = 1 << 24  # bytes per window of `offset_batches` (16 MiB: ~20k records of a bulk run)
T = TypeVar("T")
_Span = tuple[bytes, list[float], list[int], list[int]]  # (buf, ts, starts, ends): `spans`
# a classic-pcap walk's scan of one window: (batch or None, offset, records, need, incl)
_Scanned = tuple[T | None, int, int, int, int]


class Record(NamedTuple):
    ts: float  # seconds since the epoch
    linktype: int  # the link type the frame was captured with
    data: bytes  # the IPv4 datagram, link-layer header removed


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
                head = (pread(self._f.fileno(), WINDOW, 0) if regular
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

    def _window(self) -> FileWindow:
        """A window at the start of the file, for a new walk."""
        head, self._head = self._head, None
        if head is None:
            if self.size is None:
                raise PcapError(f"{self.path}: not a regular file: it can be read only once")
            try:
                head = pread(self._f.fileno(), WINDOW, 0)
            except OSError as e:
                raise PcapError(f"{self.path}: {e.strerror or e}") from None
        return FileWindow(self._f, self.size, self.path, head)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Record]:
        if self._it is None:
            self._it = self._pcap() if self.format == "pcap" else self._pcapng()
        return self._it

    def __next__(self) -> Record:
        return next(iter(self))

    def datagrams(self) -> Iterator[tuple[float, bytes]]:
        """(ts, IPv4 datagram) pairs: the same stream as iterating, as plain tuples (faster)."""
        if self.format == "pcap" and self.linktype in RAW_LINKTYPES:
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
        if self.format == "pcap" and self.linktype in RAW_LINKTYPES:
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

    def _pcap_walk(self, batch: int, ip_only: bool) -> Iterator[_Span]:
        """The records of a classic pcap in batches of up to `batch`: ``(buf, ts, starts,
        ends)``, record i's frame being ``buf[starts[i]:ends[i]]`` (only frames that start like
        IPv4 when `ip_only`; the others are counted in `skipped`). `buf` is the window: the
        walk reads the file a window at a time and never holds more than a window and a record.
        """
        unpack = struct.Struct(self._endian + "IIII").unpack_from
        scale = self._scale
        limit = max(self.snaplen, MAX_RECORD)
        skipped = self.skipped

        def scan(buf: bytes, base: int, off: int, n: int) -> _Scanned[_Span]:
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
                    self.frames = n
                    raise PcapError(
                        f"corrupt pcap: record {n} at offset {base + off} claims {incl} "
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
            return ((buf, tss, starts, ends) if tss else None), off, n, need, incl

        yield from self._walk_windows(scan)

    def offset_batches(self, window: int = BIG_WINDOW) -> Iterator[tuple[bytes, list[int]]]:
        """Classic pcap only: ``(buf, offsets)`` per window of about `window` bytes, offsets
        being those of the record headers in `buf` (every record, IPv4 or not).

        The walk of a columnar decoder (`capture.columnar`): one unpack per record here, the
        times, lengths and the IPv4 test read from the buffer for all records at once. Memory
        is one window. Oversized records, truncation and corrupt lengths as `_pcap_walk`."""
        if self.format != "pcap":
            raise PcapError("offset_batches reads classic pcap only")
        u32 = struct.Struct(self._endian + "I").unpack_from
        limit = max(self.snaplen, MAX_RECORD)

        def scan(buf: bytes, base: int, off: int, n: int) -> _Scanned[tuple[bytes, list[int]]]:
            size = len(buf)
            offs: list[int] = []
            add = offs.append
            while True:
                if off + 16 > size:
                    need, incl = 16, -1
                    break
                incl = u32(buf, off + 8)[0]
                end = off + 16 + incl
                if end > size or incl > MAX_RECORD:
                    need = 16 + incl
                    break
                add(off)
                off = end
            if incl > limit:
                self.frames = n
                raise PcapError(
                    f"corrupt pcap: record {n + len(offs)} at offset {base + off} "
                    f"claims {incl} captured bytes (snapshot length {self.snaplen})")
            n += len(offs)
            return ((buf, offs) if offs else None), off, n, need, incl

        yield from self._walk_windows(scan, window)

    def _walk_windows(self, scan: Callable[[bytes, int, int, int], _Scanned[T]],
                      want: int = 0) -> Iterator[T]:
        """The window loop both classic-pcap walks share. `scan(buf, base, off, n)` reads the
        records of the window `buf` (at file offset `base`) from `off`, `n` records read before,
        and returns (what to yield or None, offset, records, need, incl): `need` 0 goes on in the
        same window, else the walk moves past it (`_past_window`, `want` bytes at least). A scan
        that raises sets `frames` first."""
        win = self._window()
        buf, off, n = win.buf, 24, 0
        while True:
            out, off, n, need, incl = scan(buf, win.base, off, n)
            self.frames = n
            if out is not None:
                yield out
            if need:
                more = self._past_window(win, off, n, need, incl, want)
                if more is None:
                    return
                buf, off, n = more

    def mapped_batches(self, span: int = BIG_WINDOW) -> Iterator[tuple[bytes, Sequence[int]]]:
        """`offset_batches` over the file mapped whole (a regular file; otherwise the windows of
        `offset_batches`): no copy of the bytes at all, and the pages behind each batch are
        dropped (`MADV_DONTNEED`), so what stays resident is about `span` bytes."""
        if self.size is None or self.format != "pcap" or not hasattr(mmap, "MADV_DONTNEED"):
            yield from self.offset_batches(span)
            return
        size = self.size
        mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        u32 = struct.Struct(self._endian + "I").unpack_from
        big = self._endian == ">"
        off, n, done = 24, 0, 0
        try:
            while off < size:
                stop = min(off + span, size)
                offs = array.array("q")  # (numpy takes it without a copy; appends as a list's)
                add = offs.append
                safe = min(stop, size - 16 - MAX_RECORD)  # (no record from here can overrun)
                raw, off, full = native.record_offsets(mm, off, safe, MAX_BATCH_RECORDS,
                                                       MAX_RECORD, big)
                offs.frombytes(raw)
                if full:
                    stop = off  # a batch of tiny records is full: the next starts here
                while off < stop and off + 16 <= size:
                    if len(offs) >= MAX_BATCH_RECORDS:
                        stop = off
                        break
                    incl = u32(mm, off + 8)[0]
                    end = off + 16 + incl
                    if end > size or incl > MAX_RECORD:
                        break
                    add(off)
                    off = end
                n += len(offs)
                if offs:
                    self.frames = n
                    yield mm, offs
                cut = off & ~(mmap.PAGESIZE - 1)
                if cut > done:
                    mm.madvise(mmap.MADV_DONTNEED, done, cut - done)
                    done = cut
                if off < stop and off < size:
                    off, n = self._mapped_problem(mm, off, n, size, u32)
        finally:
            self.frames = n

    def _mapped_problem(self, mm, off: int, n: int, size: int, u32) -> tuple[int, int]:
        """A mapped walk met a record that does not fit: skipped (oversized), or the end of
        the walk (a truncation noted; returns an offset at the file's end). The messages are
        `_pcap_walk`'s."""
        left = size - off
        if left < 16:
            self._truncate(f"record {n} header at offset {off} is cut short")
            return size, n
        incl = u32(mm, off + 8)[0]
        if incl > max(self.snaplen, MAX_RECORD):
            raise PcapError(f"corrupt pcap: record {n} at offset {off} claims {incl} captured "
                            f"bytes (snapshot length {self.snaplen})")
        if off + 16 + incl > size:
            self._truncate(f"record {n} at offset {off} needs {incl} bytes, {left - 16} remain")
            return size, n
        self.skipped["oversized"] += 1  # (incl > MAX_RECORD: no datagram is this large)
        return off + 16 + incl, n + 1

    def _past_window(self, win: FileWindow, off: int, n: int, need: int, incl: int,
                     want: int = 0) -> tuple[bytes, int, int] | None:
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
        buf = win.fill(off, max(need, want))  # (`want`: a larger window for a columnar walk)
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
        walk of `_pcap_walk`, one datagram at a time)."""
        y = 0
        try:
            for buf, tss, starts, ends in self._pcap_walk(BATCH, True):
                left = iter(tss)  # (zip takes a timestamp per pair: what is left was not yielded)
                try:
                    yield from zip(left, map(buf.__getitem__, map(slice, starts, ends)),
                                   strict=True)
                finally:
                    y += len(tss) - length_hint(left)
        finally:
            self.records = y

    def _truncate(self, where: str) -> None:
        self.truncated = True
        self.warning = f"{self.path}: truncated capture: {where}; the records before it were read"
        warnings.warn(self.warning, TruncatedCaptureWarning, stacklevel=3)

    def _pcap(self) -> Iterator[Record]:
        lt = self.linktype
        raw = lt in RAW_LINKTYPES
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
        """The block walk: each block's header and trailing length checked, packet blocks
        yielded (`PcapngSection` reads what is inside them), other blocks skipped."""
        win = self._window()
        buf = win.buf
        skipped = self.skipped
        sec = PcapngSection()
        off = n = y = 0
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
                btype = sec.block_type(buf, off, at)
                u32 = sec.u32
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
                if btype == PCAPNG_IDB:
                    self.linktypes.add(sec.interface(buf, off + 8, end, blen, at))
                elif btype in _PACKET_BLOCKS:
                    n += 1
                    if oversized:  # no datagram is this large: skipped unread
                        skipped["oversized"] += 1
                    else:
                        lt, start, incl = sec.packet(btype, buf, off + 8, end, blen, at)
                        data, why = strip_link(lt, buf[start : start + incl])
                        if data is None:
                            skipped[why] += 1
                        else:
                            y += 1
                            yield Record(sec.last_ts, lt, data)
                # any other block (name resolution, statistics, custom, ...) is skipped
                if not oversized:
                    off = end
                    continue
                moved = self._past_block(win, at, blen, u32)
                if moved is None:
                    break
                buf, off = moved
        finally:
            self.frames = n
            self.records = y

    def _past_block(self, win: FileWindow, at: int, blen: int, u32: struct.Struct
                    ) -> tuple[bytes, int] | None:
        """The rest of an oversized block is not read, only its trailing length: (window,
        offset after the block), or None when the file ends first (a truncation noted)."""
        moved = win.skip_to(at + blen - 4)
        if moved is not None:
            buf, off = moved
            if off + 4 > len(buf):
                buf = win.fill(off, 4)
                off = 0
        if moved is None or len(buf) < off + 4:
            self._truncate(f"block at offset {at} needs {blen} bytes, "
                           f"{max(win.end - at, 0)} remain")
            return None
        if u32.unpack_from(buf, off)[0] != blen:
            raise PcapError(f"corrupt pcapng: block at offset {at}: trailing length differs")
        return buf, off + 4

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
