"""Columnar decode of a capture: `decode_columns` (a `Capture` backed by `PacketColumns`) and
`column_batches` (the same table chunk by chunk, in bounded memory).

Why: the researcher's table (`packets_df`), Parquet output and a capture larger than memory all
want columns, and the fixed offsets of the Trickles header make whole batches decodable with
numpy (`capture.colscan`). The rules stay where they are: the direction rule's inputs (the
service port, or the ports learned from SYNs so far) are computed here per batch, every
datagram the vector pass does not take goes through the row decoder (`capture.batches`) with
the port set it would have seen there, and events are derived from the columns
(`capture.events_columns`: the common requests at once, the rest by the row path's
`capture.events`). Every column, event and verdict equals the row decoder's
(tests/capture/test_columnar.py, test_events_columns.py).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager

import numpy as np

from trickles_kit.capture.batches import MIN_NUMPY, decode_batches
from trickles_kit.capture.colscan import Scratch, scan_batch, verify
from trickles_kit.capture.columns import PacketColumns
from trickles_kit.capture.decode import (
    _finish,
    _make_verifier,
    _note_wrong_secret,
    _promote_all,
)
from trickles_kit.capture.event_table import ColumnCapture
from trickles_kit.capture.events_columns import derive_columns
from trickles_kit.capture.parse import default_config
from trickles_kit.capture.pcapformat import RAW_LINKTYPES
from trickles_kit.capture.pcapio import BIG_WINDOW, read_pcap
from trickles_kit.capture.rows import no_gc

__all__ = ["ColumnDecoder", "column_batches", "decode_columns"]

_BATCH = 1 << 15  # datagrams per batch of a joined (non-raw or pcapng) capture


def decode_columns(path: str | os.PathLike[str], secret: bytes | None = None,
                   service_port: int | None = None, *, config=None, events: bool = True,
                   checksums: bool = True) -> ColumnCapture:
    """`decode.decode_pcap` with a columnar packet table: same arguments, same `Capture`
    (rows, events, errors, verdicts), built from columns; ``packets_df()`` and
    ``events_df()`` are made from the arrays, `PacketRow`s and `Event`s only on first use of
    ``packets`` / ``events``."""
    cfg = config if config is not None else default_config()
    dec = ColumnDecoder(path, secret, service_port, cfg, checksums)
    with dec:
        tables = list(dec)
    cap = dec.capture
    cap._set_columns(PacketColumns.concat(tables))
    if dec.wrong_secret():
        _note_wrong_secret(cap)
        dec.verifier = None
    if events:
        with no_gc():
            cap.set_event_table(derive_columns(cap.table, cfg, dec.verifier, cap.errors,
                                               cap.verdicts))
            _promote_all()
        cap.events_derived = True
    return cap


def column_batches(path: str | os.PathLike[str], secret: bytes | None = None,
                   service_port: int | None = None, *, config=None,
                   checksums: bool = True) -> ColumnDecoder:
    """The packet table of `path` as `PacketColumns` chunks (iterate the result), keeping
    none: memory is one window of the file and one chunk's columns. ``.capture`` has the
    errors, ports and warning once the iteration has ended."""
    cfg = config if config is not None else default_config()
    return ColumnDecoder(path, secret, service_port, cfg, checksums)


class ColumnDecoder(AbstractContextManager["ColumnDecoder"]):
    """Iterate for `PacketColumns` chunks in capture order (a context manager)."""

    def __init__(self, path, secret: bytes | None, service_port: int | None, cfg,
                 checksums: bool) -> None:
        self.service_port, self.checksums = service_port, checksums
        self.verifier = _make_verifier(secret, cfg)
        self.reader = read_pcap(path)
        self.capture = ColumnCapture(str(path), format=self.reader.format,
                                     secret_used=self.verifier is not None)
        self.ports: set[int] = set()
        self.index = 0  # datagrams so far (the row `index` of the next one)
        self.mac_seen = self.mac_verified = False
        self.scratch = Scratch()

    def __iter__(self) -> Iterator[PacketColumns]:
        """The table of each batch in capture order (`index`: the record numbers)."""
        r = self.reader
        raw = r.format == "pcap" and r.linktype in RAW_LINKTYPES
        for buf, ts, starts, ends in (_raw_batches(r) if raw else _joined_batches(r)):
            cols = self.batch(buf, ts, starts, ends)
            if cols.n:
                yield cols
        cap = self.capture
        cap.service_ports = ({self.service_port} if self.service_port is not None
                             else set(self.ports))
        _finish(cap, r)

    def batch(self, buf, ts: np.ndarray, starts: np.ndarray, ends: np.ndarray
              ) -> PacketColumns:
        """The rows of one batch (datagram i = buf[starts[i]:ends[i]]) as one table."""
        k = len(starts)
        base = self.index
        self.index += k
        if k < MIN_NUMPY:
            cols = self._rows(buf, ts, starts, ends, np.arange(k), self.ports, True)
        else:
            cols = self._vector(buf, ts, starts, ends)
        if cols.n:
            cols.data["index"] += base
            self._note_macs(cols)
        return cols

    def _vector(self, buf, ts, starts, ends) -> PacketColumns:
        """The vector pass's table of the batch, the row decoder's rows laid over the rows it
        left (`overlay`), the datagrams neither made a row of dropped."""
        u8 = np.frombuffer(buf, np.uint8)
        new: list[tuple[int, int]] = []
        scan = scan_batch(u8, starts, ends, ts, self.checksums,
                          lambda head, ok, syns: self._directions(head, ok, syns, new),
                          strict=self.service_port is None, scratch=self.scratch)
        if scan is None:  # a datagram whose layout the vector pass cannot place: all rows
            return self._rows(buf, ts, starts, ends, np.arange(len(starts)), self.ports, True)
        cols = scan.cols
        if self.verifier is not None:
            verify(cols, scan.cont, np.flatnonzero(scan.taken), self.verifier)
        keep = scan.taken
        if len(scan.rest):
            before = set(self.ports)
            at = np.array([i for i, _ in new], np.int64)
            g = np.searchsorted(at, scan.rest, side="right")
            parts = []
            for j in np.unique(g).tolist():
                ports = before | {p for _, p in new[:j]}
                parts.append(self._rows(buf, ts, starts, ends, scan.rest[g == j], ports, False))
            rest = PacketColumns.concat(parts)  # (groups in order: so are their rows)
            pos = rest.data["index"]
            cols.overlay(pos, rest)
            keep = keep.copy()
            keep[pos] = True
        self.ports |= {p for _, p in new}
        return cols if keep.all() else cols.take(np.flatnonzero(keep))

    def _directions(self, head, ok, syns, new: list) -> tuple[np.ndarray, np.ndarray]:
        """(request?, decided by port?) per datagram: `capture.decode`'s direction rule, the
        learned ports taking effect from the SYN that taught them (`new` receives those)."""
        dport = head["dport"].astype(np.int64)
        sport = head["sport"].astype(np.int64)
        shape_req = head["tlen"] == 0
        if self.service_port is not None:
            sp = self.service_port
            by = (dport == sp) | (sport == sp)
            return np.where(by, dport == sp, shape_req), by
        known = sorted(self.ports)
        dreq = np.isin(dport, known)
        by = dreq | np.isin(sport, known)
        seen = set(known)
        for i, p in syns:
            if p not in seen:
                seen.add(p)
                new.append((i, p))
        pos = np.arange(len(dport))
        for i, p in new:
            after = pos >= i
            d = after & (dport == p)
            dreq |= d
            by |= d | (after & (sport == p))
        return np.where(by, dreq, shape_req), by

    def _rows(self, buf, ts, starts, ends, sub: np.ndarray, ports: set, learn: bool
              ) -> PacketColumns:
        """Datagrams `sub` of the batch through the row decoder (`ports`: the learned service
        ports they are judged with; kept and grown when `learn`)."""
        if not len(sub):
            return PacketColumns.empty()
        flat: list = []
        svals: list = []
        rvals: list = []
        pset = ports if learn else set(ports)
        spans = [(buf, ts[sub].tolist(), starts[sub].tolist(), ends[sub].tolist())]
        with no_gc():
            for _ in decode_batches(spans, self.service_port, self.verifier,
                                    self.capture.errors, self.checksums, False, flat, svals,
                                    rvals, pset):
                pass
        cols = PacketColumns.from_flat(flat, svals, rvals)
        cols.data["index"] = sub[cols.data["index"]]
        return cols

    def _note_macs(self, cols: PacketColumns) -> None:
        """Server-sent continuations judged / one verified (the wrong-secret rule)."""
        if self.verifier is None or self.mac_verified or not cols.n:
            return
        resp = (cols.data["direction"] == 1) & ~cols.mask["mac_ok"]
        if resp.any():
            self.mac_seen = True
            self.mac_verified = bool(cols.data["mac_ok"][resp].any())

    def wrong_secret(self) -> bool:
        return self.mac_seen and not self.mac_verified

    def close(self) -> None:
        self.reader.close()

    def __exit__(self, *exc: object) -> None:  # (__enter__: AbstractContextManager's)
        self.close()


def _raw_batches(reader) -> Iterator[tuple[bytes, np.ndarray, np.ndarray, np.ndarray]]:
    """A classic pcap of raw IP: (window, times, starts, ends) of its IPv4 datagrams per window,
    the record headers read with numpy (`PcapReader.mapped_batches`)."""
    e = reader._endian
    dt = np.dtype({"names": ["sec", "frac", "incl"], "formats": [e + "u4"] * 3,
                   "offsets": [0, 4, 8], "itemsize": 16})
    scale = reader._scale
    skipped: Counter = reader.skipped
    y = 0
    try:
        for buf, offs in reader.mapped_batches(BIG_WINDOW):
            u8 = np.frombuffer(buf, np.uint8)
            o = np.asarray(offs, np.int64)  # (an array('q') of mapped_batches: no copy)
            h = np.lib.stride_tricks.sliding_window_view(u8, 16)[o].view(dt)[:, 0]
            incl = h["incl"].astype(np.int64)
            starts = o + 16
            first = u8[np.minimum(starts, len(u8) - 1)] >> 4
            ip = (incl > 0) & (first == 4)
            if not ip.all():
                v6 = int(((incl > 0) & (first == 6)).sum())
                if v6:
                    skipped["ipv6"] += v6
                other = int((~ip).sum()) - v6
                if other:
                    skipped["not_ip"] += other
                h, starts, incl = h[ip], starts[ip], incl[ip]
            ts = h["sec"].astype(np.float64)
            ts += h["frac"] * scale
            y += len(starts)
            yield buf, ts, starts, starts + incl
    finally:
        reader.records = y


def _joined_batches(reader) -> Iterator[tuple[bytes, np.ndarray, np.ndarray, np.ndarray]]:
    """Any other capture: the reader's joined batches (`PcapReader.spans`)."""
    for buf, tss, starts, ends in reader.spans(_BATCH):
        yield (buf, np.array(tss, np.float64), np.array(starts, np.int64),
               np.array(ends, np.int64))
