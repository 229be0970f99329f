"""The derived events as columns: kind and side codes, times, the integer fields, the details.

Why: a million-packet capture has half a million events; an `Event` object each and a
DataFrame read back from them cost more than deriving them (`capture.events_columns`).
`events_df()` is built from these arrays, and `Event` objects only on demand (`events()`),
as `PacketRow`s are from `columns.PacketColumns`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from trickles_kit.capture.rows import EVENT_FIELDS, Capture, _pandas
from trickles_kit.core.events import Event

__all__ = ["ColumnCapture", "EventTable", "INT_FIELDS", "objects"]

INT_FIELDS = ("pkt", "ack", "cwnd", "ssthresh", "tcp_base", "state")


class EventTable:
    """Events in capture order: ``kinds[kind[i]]``, ``sides[side[i]]``, ``data[f][i]`` for
    ``t``, ``conn_id`` (uint64) and `INT_FIELDS` (int64), ``detail[i]`` (a dict)."""

    __slots__ = ("kinds", "kind", "sides", "side", "data", "detail", "key")

    def __init__(self, kinds: list, kind: np.ndarray, sides: list, side: np.ndarray,
                 data: dict[str, np.ndarray], detail: np.ndarray,
                 key: tuple[np.ndarray, np.ndarray]) -> None:
        self.kinds, self.kind, self.sides, self.side = kinds, kind, sides, side
        self.data, self.detail = data, detail
        self.key = key  # (capture index, order within it): the sort key of `merge`

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def build(cls, kinds: list, kind: np.ndarray, index: np.ndarray, order: np.ndarray,
              data: dict[str, np.ndarray], detail: np.ndarray) -> EventTable:
        """Server events of the given kinds (codes into `kinds`)."""
        n = len(kind)
        full = {"t": np.asarray(data["t"], np.float64),
                "conn_id": np.asarray(data["conn_id"]).astype(np.uint64)}
        full |= {f: np.asarray(data[f]).astype(np.int64) for f in INT_FIELDS}
        return cls(list(kinds), np.asarray(kind, np.int64), ["server"], np.zeros(n, np.int64),
                   full, detail,
                   (np.asarray(index, np.int64), np.asarray(order, np.int64)))

    @classmethod
    def of_events(cls, out: list[tuple[int, int, Event]]) -> EventTable:
        """The table of (capture index, order, event) triples (the row derivation's)."""
        kinds: dict = {}
        sides: dict = {}
        evs = [e for _, _, e in out]
        kind = np.array([kinds.setdefault(e.kind, len(kinds)) for e in evs], np.int64)
        side = np.array([sides.setdefault(e.side, len(sides)) for e in evs], np.int64)
        data = {"t": np.array([e.t for e in evs], np.float64),
                "conn_id": np.array([e.conn_id for e in evs], np.uint64)}
        data |= {f: np.array([getattr(e, f) for e in evs], np.int64) for f in INT_FIELDS}
        key = (np.array([i for i, _, _ in out], np.int64),
               np.array([o for _, o, _ in out], np.int64))
        return cls(list(kinds), kind, list(sides), side, data, objects([e.detail for e in evs]),
                   key)

    @classmethod
    def merge(cls, a: EventTable, b: EventTable) -> EventTable:
        """Both tables' events in (capture index, order) order (unique keys)."""
        key = np.r_[a.key[0], b.key[0]] * 8 + np.r_[a.key[1], b.key[1]]
        order = np.argsort(key, kind="stable")
        kinds = list(a.kinds)
        kmap = np.array([_code(kinds, k) for k in b.kinds] or [0], np.int64)
        sides = list(a.sides)
        smap = np.array([_code(sides, s) for s in b.sides] or [0], np.int64)
        kind = np.r_[a.kind, kmap[b.kind]][order]
        side = np.r_[a.side, smap[b.side]][order]
        data = {f: np.r_[a.data[f], b.data[f]][order] for f in a.data}
        detail = np.concatenate([a.detail, b.detail])[order]
        key = key[order]
        return cls(kinds, kind, sides, side, data, detail, (key >> 3, key & 7))

    def events(self) -> list[Event]:
        """`Event` objects (on demand)."""
        kinds = np.array(self.kinds + [None], object)[self.kind].tolist()
        sides = np.array(self.sides + [None], object)[self.side].tolist()
        d = self.data
        cols = [d[f].tolist() for f in ("t", "conn_id", *INT_FIELDS)]
        new, init = object.__new__, Event.__init__
        out = []
        for kd, t, sd, c, p, a, w, s, b, st, det in zip(kinds, cols[0], sides, *cols[1:],
                                                        self.detail.tolist(), strict=True):
            e = new(Event)
            init(e, kd, t, sd, conn_id=c, pkt=p, ack=a, cwnd=w, ssthresh=s, tcp_base=b,
                 state=st, detail=det)
            out.append(e)
        return out

    def columns(self, pd) -> dict:
        """{field: array} in `Event` field order for `pd.DataFrame`: the strings as pandas
        would infer them from the vocabulary, taken by code (no per-event inference)."""
        d = self.data
        cid = d["conn_id"]
        if not len(cid) or int(cid.max()) < 1 << 63:
            cid = cid.astype(np.int64)  # (what pandas makes of Python ints that fit)
        return {"kind": pd.Series([str(k) for k in self.kinds]).array.take(self.kind),
                "t": d["t"], "side": pd.Series(list(self.sides)).array.take(self.side),
                "conn_id": cid, **{f: d[f] for f in INT_FIELDS}, "detail": self.detail}


def objects(items: list) -> np.ndarray:
    """A 1-d object array of `items` (dicts stay objects, never unpacked)."""
    out = np.empty(len(items), object)
    out[:] = items
    return out


def _code(vocab: list, v) -> int:
    """The code of `v` in `vocab` (appended when new)."""
    for i, x in enumerate(vocab):
        if x == v and type(x) is type(v):
            return i
    vocab.append(v)
    return len(vocab) - 1


class ColumnCapture(Capture):
    """A `Capture` whose events are an `EventTable` (`capture.columnar`): ``events`` builds
    the `Event` objects on first access (and from then on they are the events: edits show in
    `events_df()`); ``events_df()`` before that is made from the arrays."""

    _evtable: EventTable | None = None
    _evlist: list[Event] | None = None

    @property  # type: ignore[override]
    def events(self) -> list[Event]:
        if self._evlist is None:
            self._evlist = self._evtable.events() if self._evtable is not None else []
        return self._evlist

    @events.setter
    def events(self, evs: list[Event]) -> None:
        self._evlist, self._evtable = evs, None

    @property
    def n_events(self) -> int:
        t = self._evtable
        return len(t) if t is not None and self._evlist is None else len(self.events)

    def set_event_table(self, table: EventTable) -> None:
        self._evlist, self._evtable = None, table

    def event_counts(self) -> Counter:
        t = self._evtable
        if t is None or self._evlist is not None:
            return super().event_counts()
        return Counter({t.kinds[c]: int(n) for c, n in enumerate(np.bincount(
            t.kind, minlength=len(t.kinds))) if n})

    def events_df(self):
        t = self._evtable
        if t is None or self._evlist is not None or not len(t):
            return super().events_df()
        pd = _pandas()
        return pd.DataFrame(t.columns(pd), columns=list(EVENT_FIELDS))
