"""Accumulators: each figure's traces grown event by event exactly as its builder draws them.

Why: redrawing every figure from the whole event list costs about 1 s for a 10 MB transfer
(~27,000 events), far too slow for 10 updates a second. Each accumulator appends the new events
to its traces as the static builder in `viz.figures` would compute them from the full list (same
points, same order); `tests/viz/test_live.py` checks that the page ends with the builder's data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import plotly.graph_objects as go

from trickles_kit.core.events import Event
from trickles_kit.viz import figures as F

__all__ = ["FIGURE_KINDS", "Accumulator", "as_event", "make_accumulator", "prototype_events",
           "static_figure"]

FIGURE_KINDS = ("cwnd", "tree", "timeseq", "goodput")
_EVENT_FIELDS = frozenset(f.name for f in fields(Event))


def as_event(e: Event | Mapping[str, Any]) -> Event:
    """An Event from an Event or a JSON-lines dict (unknown keys ignored)."""
    if isinstance(e, Event):
        return e
    return Event(**{k: v for k, v in e.items() if k in _EVENT_FIELDS})


def static_figure(kind: str, events: Iterable[Event | Mapping[str, Any]],
                  bin_s: float = 0.1) -> go.Figure:
    """The static figure a dashboard panel mirrors: cwnd | tree | timeseq | goodput."""
    if kind == "cwnd":
        return F.cwnd_figure(events)
    if kind == "tree":
        return F.trickle_tree_figure(events)
    if kind == "timeseq":
        return F.time_sequence_figure(events)
    if kind == "goodput":
        return F.goodput_figure(events, bin_s=bin_s)
    raise ValueError(f"unknown figure kind {kind!r}; choose from {FIGURE_KINDS}")


def prototype_events() -> list[Event]:
    """A tiny run that makes every builder draw every trace it can (for styles only)."""
    evs = [Event(k, 0.0, "server", conn_id=1, pkt=i + 1, ack=0 if i == 0 else i, cwnd=2,
                 ssthresh=10) for i, k in enumerate(F.SLOT_KINDS)]
    evs += [Event("terminate", 1.0, "server", conn_id=1, ack=1, cwnd=2, ssthresh=10),
            Event("request", 0.0, "client", conn_id=1, ack=1),
            Event("timeout", 0.0, "client", conn_id=1),
            Event("data", 0.0, "client", conn_id=1, detail={"bytes": 1})]
    return evs


class Accumulator:
    """Traces of one figure, grown event by event exactly as the builder computes them."""

    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.dirty: set[str] = set()
        self.reset()

    def reset(self) -> None:
        self.x: dict[str, list] = {n: [] for n in self.names}
        self.y: dict[str, list] = {n: [] for n in self.names}
        self.dirty = set(self.names)

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        raise NotImplementedError

    def series(self, name: str) -> tuple[list, list, list | None]:
        """(x, y, hover text or None) of one trace: the lists themselves, not copies."""
        return self.x[name], self.y[name], None

    def size(self, name: str) -> int:
        return len(self.x[name])


class _CwndAcc(Accumulator):
    _WIN = frozenset(("initial", "continue", "split", "bootstrap"))
    _MARK = ("bootstrap", "retransmit", "terminate")
    names = ("cwnd", "ssthresh", *_MARK)

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        x, y, d, win, mark = self.x, self.y, self.dirty, self._WIN, self._MARK
        for e in events:
            if e.side != "server":
                continue
            k = e.kind
            if k in win:
                x["cwnd"].append(e.t)
                y["cwnd"].append(e.cwnd)
                d.add("cwnd")
                if 0 < e.ssthresh < 4096:
                    x["ssthresh"].append(e.t)
                    y["ssthresh"].append(e.ssthresh)
                    d.add("ssthresh")
            if k in mark:
                x[k].append(e.t)
                y[k].append(e.cwnd)
                d.add(k)


class _TreeAcc(Accumulator):
    """`figures.trickle_lanes` + `trickle_tree_figure`, one row at a time.

    The builder sorts rows by (t, pkt); events normally arrive in that order. One that arrives
    earlier than the last row drawn makes the accumulator start again from the sorted list.
    """

    _KINDS = frozenset((*F.SLOT_KINDS, "terminate"))
    _SEG = "request → packet"
    names = (_SEG, *F.SLOT_KINDS, "terminate")

    def reset(self) -> None:
        super().reset()
        self.text: dict[str, list] = {n: [] for n in self.names}
        self.lane_of: dict[int, int] = {}
        self.lanes = 0
        self.last_t: dict[int, float] = {}
        self.last_key: tuple[float, int] | None = None
        self.rebuilds = 0

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        kinds = self._KINDS
        for i, e in enumerate(events):
            if e.kind not in kinds or e.side != "server":
                continue
            key = (e.t, e.pkt)
            if self.last_key is not None and key < self.last_key:
                # out of order: start again from everything so far, as the builder would sort it
                rebuilds = self.rebuilds + 1
                self.reset()
                self.rebuilds = rebuilds
                n_before = len(everything) - len(events) + i
                prior = [r for r in everything[:n_before]
                         if r.kind in kinds and r.side == "server"]
                rest = [r for r in events[i:] if r.kind in kinds and r.side == "server"]
                for r in sorted(prior + rest, key=lambda r: (r.t, r.pkt)):
                    self._row(r)
                return
            self._row(e)

    def _row(self, e: Event) -> None:
        self.last_key = (e.t, e.pkt)
        kind = e.kind
        parent = self.lane_of.get(e.ack)
        if kind == "terminate":
            if parent is None:
                return
            lane = parent
        elif kind == "continue" and parent is not None:
            lane = parent
        elif kind == "retransmit":
            lane = parent if parent is not None else -1
        else:
            lane = self.lanes
            self.lanes += 1
        if kind not in ("retransmit", "terminate"):
            self.lane_of[e.pkt] = lane
        # the figure: a segment from the parent's last point, then the marker
        if parent is not None and parent in self.last_t:
            sx, sy = self.x[self._SEG], self.y[self._SEG]
            sx += (self.last_t[parent], e.t, None)
            sy += (parent, lane, None)
            self.dirty.add(self._SEG)
        if kind != "terminate":
            self.last_t[lane] = e.t
        self.x[kind].append(e.t)
        self.y[kind].append(lane)
        self.text[kind].append(f"pkt {e.pkt} ← ack {e.ack}<br>cwnd {e.cwnd} "
                               f"{F.STATE_NAMES.get(e.state, e.state)}")
        self.dirty.add(kind)

    def series(self, name: str) -> tuple[list, list, list | None]:
        x, y, _ = super().series(name)  # None in the segments: a gap between them
        return x, y, (None if name == self._SEG else self.text[name])


class _TimeSeqAcc(Accumulator):
    _SENT = {k: f"sent: {k}" for k in F.SLOT_KINDS}
    _ACK = "acknowledged (request)"
    names = (*_SENT.values(), _ACK, "timeout")

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        x, y, d, sent = self.x, self.y, self.dirty, self._SENT
        for e in events:
            k = e.kind
            name = sent.get(k)
            if name is not None:
                if e.side != "server":
                    continue
                x[name].append(e.t)
                y[name].append(e.pkt)
            elif k == "request" and e.side == "client":
                name = self._ACK
                x[name].append(e.t)
                y[name].append(e.ack)
            elif k == "timeout":
                name = "timeout"
                x[name].append(e.t)
                y[name].append(e.pkt)
            else:
                continue
            d.add(name)


class _GoodputAcc(Accumulator):
    names = ("goodput",)

    def __init__(self, bin_s: float = 0.1) -> None:
        if bin_s <= 0:
            raise ValueError("bin_s must be positive")
        self.bin_s = bin_s
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.bins: dict[int, int] = {}

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        bins, bin_s = self.bins, self.bin_s
        for e in events:
            if e.kind == "data":
                b = int(e.t // bin_s)
                bins[b] = bins.get(b, 0) + int(e.detail.get("bytes", 0))
                self.dirty.add("goodput")

    def series(self, name: str) -> tuple[list, list, list | None]:
        xs = sorted(self.bins)
        bin_s, bins = self.bin_s, self.bins
        return [b * bin_s for b in xs], [bins[b] * 8 / bin_s / 1e6 for b in xs], None

    def size(self, name: str) -> int:
        return len(self.bins)


def make_accumulator(kind: str, bin_s: float = 0.1) -> Accumulator:
    if kind == "cwnd":
        return _CwndAcc()
    if kind == "tree":
        return _TreeAcc()
    if kind == "timeseq":
        return _TimeSeqAcc()
    if kind == "goodput":
        return _GoodputAcc(bin_s)
    raise ValueError(f"unknown figure kind {kind!r}; choose from {FIGURE_KINDS}")
