"""The packet table as columns: numpy arrays per field, list columns for SACK blocks and ranges.

Why columns: a table built row by row costs a Python object per value; a researcher's pandas
table (`to_pandas`), a Parquet file (`capture.parquet`) and an engine that reads it want arrays.
`PacketColumns` holds one array per `rows.ROW_FIELDS` field — fixed-width integers, a null mask
where the field may be None, category codes for the few strings (direction, carrier, request
type, error; IPv4 addresses as uint32), the MAC as 16 bytes a row — and the variable parts (SACK
blocks, byte ranges) as offset-indexed list columns: row i's blocks are
``values[offsets[i]:offsets[i+1]]``. `PacketRow` objects are built only on demand (`rows`).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import numpy as np

from trickles_kit.capture.rows import NF, ROW_FIELDS, PacketRow, ragged

__all__ = ["CATS", "KINDS", "PacketColumns", "arrow_or_none"]

# field -> numpy dtype of its values; "?" marks a field that may be None (a null mask)
KINDS: dict[str, str] = {
    "index": "i8", "t": "f8", "direction": "cat", "src": "addr", "dst": "addr",
    "sport": "u2", "dport": "u2", "carrier": "cat", "length": "i8", "seq": "u4", "ack": "u4",
    "flags": "u1", "window": "u2", "trickles_len": "u2", "req_type": "cat?",
    "cont_type": "u1?", "cont_seq": "u4?", "first_child": "u1?", "client_state": "u4?",
    "parent": "u4?", "client_timestamp": "u4?", "timestamp": "u4?", "mrtt": "u4?",
    "state": "u1?", "first_loss": "u4?", "first_bootstrap_seq": "u4?", "start_cwnd": "u4?",
    "ssthresh": "u4?", "tcp_base": "u4?", "conn_id": "u8?", "key_epoch": "u4?", "mac": "mac?",
    "nonce": "u4?", "siblings": "u1?", "position": "u1?", "ucont_len": "u2?",
    "sacks": "list3?", "ranges": "list2?", "app_len": "i8?", "data_start": "u4?",
    "data_len": "i8", "fin": "b1", "finhint": "u4?", "mac_ok": "b1?", "nonce_ok": "b1?",
    "error": "cat?",
}
assert tuple(KINDS) == ROW_FIELDS
# the fixed vocabularies (codes are indexes); `error` grows its own per table
CATS: dict[str, list[str]] = {
    "direction": ["request", "response", ""], "carrier": ["ip253", "tcp", "udp"],
    "req_type": ["NORMAL", "SLOWSTART", "SYN", "FIN"],
}
_WIDTH = {"list3": 3, "list2": 2}


def arrow_or_none():
    """pyarrow, or None when it is not installed (the pandas path works without it)."""
    try:
        import pyarrow
    except ImportError:
        return None
    return pyarrow


class PacketColumns:
    """A packet table, one array per field (see the module docstring).

    ``data[f]``: the values (codes for categories, -1 = None; uint32 for addresses; (n, 16)
    uint8 for the MAC; offsets (n + 1) for the list columns, whose values are ``lists[f]``,
    an (m, width) int64 array); ``mask[f]``: True where the value is None (only fields that
    may be None); ``cats[f]``: the category names of a category field.
    """

    __slots__ = ("n", "data", "mask", "cats", "lists")

    def __init__(self, n: int, data: dict, mask: dict, cats: dict | None = None,
                 lists: dict | None = None) -> None:
        self.n = n
        self.data = data
        self.mask = mask
        self.cats = cats if cats is not None else {f: list(v) for f, v in CATS.items()}
        self.cats.setdefault("error", [])
        self.lists = lists if lists is not None else {}

    def __len__(self) -> int:
        return self.n

    @classmethod
    def empty(cls) -> PacketColumns:
        return cls.from_flat([], [], [])

    @classmethod
    def from_flat(cls, flat: list, svals: list, rvals: list) -> PacketColumns:
        """The columns of a row decoder's flat table (`rows.Capture`'s storage): per value in
        Python, for the rows the vectorised decode leaves to the row decoder."""
        n = len(flat) // NF
        data: dict = {}
        mask: dict = {}
        cats = {f: list(v) for f, v in CATS.items()} | {"error": []}
        lists: dict = {}
        for i, f in enumerate(ROW_FIELDS):
            vals = flat[i::NF]
            kind = KINDS[f].rstrip("?")
            if kind in _WIDTH:
                width = _WIDTH[kind]
                vals = [ragged(c, svals if f == "sacks" else rvals, width) for c in vals]
                data[f], lists[f], mask[f] = _ragged_of(vals, width)
                continue
            nulls = np.fromiter((v is None for v in vals), bool, n)
            if KINDS[f].endswith("?"):
                mask[f] = nulls
            data[f] = _array_of(kind, vals, nulls, cats.get(f))
        return cls(n, data, mask, cats, lists)

    def value(self, f: str, i: int):
        """Field `f` of row `i` as the row decoder holds it (None, int, str, bytes, list)."""
        m = self.mask.get(f)
        if m is not None and m[i]:
            return None
        kind = KINDS[f].rstrip("?")
        v = self.data[f]
        if kind == "cat":
            return self.cats[f][v[i]]
        if kind == "addr":
            return socket.inet_ntoa(int(v[i]).to_bytes(4, "big"))
        if kind == "mac":
            return v[i].tobytes()
        if kind in _WIDTH:
            vals = self.lists[f]
            return [tuple(x) for x in vals[v[i]:v[i + 1]].tolist()]
        if kind == "b1":
            return bool(v[i])
        return v[i].item()

    def to_lists(self) -> dict[str, list]:
        """{field: list of values} in `ROW_FIELDS` order, each value as the row decoder's."""
        out: dict[str, list] = {}
        for f in ROW_FIELDS:
            out[f] = _py_values(self, f)
        return out

    def rows(self) -> list[PacketRow]:
        """`PacketRow` objects (on demand: teaching, and the event derivation)."""
        cols = self.to_lists()
        return [PacketRow(*vals) for vals in zip(*cols.values(), strict=True)]

    def take(self, order: np.ndarray) -> PacketColumns:
        """The rows at `order` (a permutation or selection), lists included."""
        data: dict = {}
        lists: dict = {}
        for f, kind in KINDS.items():
            if kind.rstrip("?") in _WIDTH:
                data[f], lists[f] = _take_ragged(self.data[f], self.lists[f], order)
            else:
                data[f] = self.data[f][order]
        mask = {f: m[order] for f, m in self.mask.items()}
        return PacketColumns(len(order), data, mask, self.cats, lists)

    @classmethod
    def concat(cls, parts: Sequence[PacketColumns]) -> PacketColumns:
        """The tables one after the other (one copy; the error vocabularies merged)."""
        parts = [p for p in parts if p.n]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.empty()
        vocab = _vocab(p.cats["error"] for p in parts)
        data: dict = {}
        mask: dict = {}
        lists: dict = {}
        for f, kind in KINDS.items():
            if kind.rstrip("?") in _WIDTH:
                shift = np.cumsum([0] + [len(p.lists[f]) for p in parts])
                data[f] = np.concatenate([p.data[f][:-1] + sh for p, sh in zip(
                    parts, shift.tolist(), strict=False)] + [shift[-1:]])
                lists[f] = np.concatenate([p.lists[f] for p in parts])
            elif f == "error":
                data[f] = np.concatenate([_recode(p.data[f], p.cats[f], vocab) for p in parts])
            else:
                data[f] = np.concatenate([p.data[f] for p in parts])
            if kind.endswith("?"):
                mask[f] = np.concatenate([p.mask[f] for p in parts])
        cats = {fld: list(v) for fld, v in CATS.items()} | {"error": vocab}
        return cls(sum(p.n for p in parts), data, mask, cats, lists)

    def overlay(self, pos: np.ndarray, part: PacketColumns) -> None:
        """Rows `pos` (ascending) become `part`'s rows, in place: how the row decoder's rows
        join a batch's vector table. Rows `pos` must have empty lists here."""
        if not part.n:
            return
        vocab = _vocab([self.cats["error"], part.cats["error"]])
        for f, kind in KINDS.items():
            if kind.rstrip("?") in _WIDTH:
                self.data[f], self.lists[f] = _overlay_ragged(
                    self.data[f], self.lists[f], pos, part.data[f], part.lists[f])
            else:
                self.data[f][pos] = (_recode(part.data[f], part.cats[f], vocab)
                                     if f == "error" else part.data[f])
            if kind.endswith("?"):
                self.mask[f][pos] = part.mask[f]
        self.cats["error"] = vocab

    def to_pandas(self):
        """A pandas DataFrame, `ROW_FIELDS` columns, built from the arrays (see `frames`)."""
        from trickles_kit.capture.frames import packets_frame  # lazy: frames imports this module

        return packets_frame(self)


def _array_of(kind: str, vals: list, nulls: np.ndarray, cats: list | None) -> np.ndarray:
    n = len(vals)
    if kind == "cat":
        assert cats is not None
        for v in vals:
            if v is not None and v not in cats:
                cats.append(v)
        pos = {c: i for i, c in enumerate(cats)}
        return np.fromiter((-1 if v is None else pos[v] for v in vals), np.int16, n)
    if kind == "addr":
        return np.fromiter((int.from_bytes(socket.inet_aton(v), "big") for v in vals),
                           np.uint32, n)
    if kind == "mac":
        out = np.zeros((n, 16), np.uint8)
        for i, v in enumerate(vals):
            if v is not None:
                out[i] = np.frombuffer(v, np.uint8)
        return out
    dt = np.bool_ if kind == "b1" else np.dtype(kind)
    return np.fromiter((0 if v is None else v for v in vals), dt, n)


def _ragged_of(vals: list, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, values (m, width), null mask) of a list of lists of tuples (None = null)."""
    counts = np.fromiter((len(v) if v else 0 for v in vals), np.int64, len(vals))
    offsets = np.zeros(len(vals) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = [x for v in vals if v for t in v for x in t]
    values = np.array(flat, np.int64).reshape(-1, width)
    nulls = np.fromiter((v is None for v in vals), bool, len(vals))
    return offsets, values, nulls


def _vocab(lists) -> list[str]:
    out: list[str] = []
    for names in lists:
        out += [e for e in names if e not in out]
    return out


def _overlay_ragged(off: np.ndarray, vals: np.ndarray, pos: np.ndarray, poff: np.ndarray,
                    pvals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.diff(off)
    assert not counts[pos].any()
    pc = np.diff(poff)
    counts[pos] = pc
    new = np.zeros(len(off), np.int64)
    np.cumsum(counts, out=new[1:])
    out = np.empty((int(new[-1]), vals.shape[1]), np.int64)
    m = int(off[-1] - off[0])
    out[np.repeat(new[:-1] - off[:-1], np.diff(off)) + np.arange(m) + off[0]] = vals[
        off[0]:off[-1]]
    pm = int(poff[-1] - poff[0])
    out[np.repeat(new[pos] - poff[:-1], pc) + np.arange(pm) + poff[0]] = pvals[poff[0]:poff[-1]]
    return new, out


def _take_ragged(off: np.ndarray, vals: np.ndarray, order: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    starts = off[:-1][order]
    counts = off[1:][order] - starts
    new = np.zeros(len(order) + 1, np.int64)
    np.cumsum(counts, out=new[1:])
    idx = np.repeat(starts - new[:-1], counts) + np.arange(int(new[-1]))
    return new, vals[idx]


def _recode(codes: np.ndarray, cats: list, vocab: list) -> np.ndarray:
    if cats == vocab[:len(cats)]:
        return codes
    table = np.array([vocab.index(c) for c in cats] + [-1], np.int16)
    return table[codes]  # (-1 indexes the table's last entry: -1)


def _py_values(pc: PacketColumns, f: str) -> list:
    """Column `f` as the row decoder's Python values, built through object arrays (the nulls
    set in one masked assignment, not one Python store each)."""
    kind = KINDS[f].rstrip("?")
    v = pc.data[f]
    m = pc.mask.get(f)
    if m is not None and not m.any():
        m = None
    if kind == "cat":
        out = np.array(pc.cats[f] + [None], object)[v]
    elif kind == "addr":
        uniq, inv = np.unique(v, return_inverse=True)
        out = np.array([socket.inet_ntoa(int(a).to_bytes(4, "big")) for a in uniq.tolist()]
                       + [None], object)[inv]
    elif kind == "mac":
        raw = v.tobytes()
        if m is None:
            return [raw[i:i + 16] for i in range(0, len(raw), 16)]
        return [None if null else raw[i:i + 16]
                for i, null in zip(range(0, len(raw), 16), m.tolist(), strict=True)]
    elif kind in _WIDTH:
        return _py_lists(pc, f, m)
    else:
        out = v.astype(object)
    if m is not None:
        out[m] = None
    return out.tolist()


def _py_lists(pc: PacketColumns, f: str, m: np.ndarray | None) -> list:
    """A list column as lists of tuples (None where null), a Python step per row."""
    lv = list(map(tuple, pc.lists[f].tolist()))
    o = pc.data[f].tolist()
    if m is None:  # (a fresh list a row)
        return [lv[a:b] for a, b in zip(o, o[1:], strict=False)]
    return [None if null else lv[a:b] for a, b, null in zip(o, o[1:], m.tolist(), strict=False)]
