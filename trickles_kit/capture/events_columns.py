"""The server's events from a columnar capture: the common case for all requests at once.

Why: deriving events request by request (`capture.events`) cost ~10 us a packet, most of it
`PacketRow`s, `Event` objects and one `plan_of` call per request. Most requests of a transfer
are alike — a NORMAL request whose one SACK block covers [TCPBase, k], answered by exactly its
one or two planned packets at the positions they claim — and for those the engine's outcome
follows from their fields alone: admitted, one event per answer, a `nonce_ok` for the block.
Those are computed here with numpy; every other request (SYNs, FINs, SLOWSTARTs, recoveries,
replays, duplicates, unanswered or MAC-failed requests, and every request sharing a pairing key
with one of those) goes through the row derivation (`capture.events.Derivation`) unchanged.

The rules stay single: the plan is `core.cc.cwnd`'s closed form, vectorised here and held
equal to `core.admission.plan_of` (with `bad_cont` and `check_sacks`) on every request it
takes by tests/capture/test_events_columns.py; pairing is `core.pairing`'s rule restricted to
the key groups where it has one answer (each response fills the slot at the position it claims
of the latest request before it); verdicts of unanswered requests stay `admit` calls.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from trickles_kit.capture.columns import PacketColumns
from trickles_kit.capture.events import ADMITTED, Derivation
from trickles_kit.capture.event_table import EventTable
from trickles_kit.capture.parse import Verifier
from trickles_kit.core import events as ev
from trickles_kit.core.admission import SACK_REACH, SEQ_LIMIT
from trickles_kit.core.cc import MAX_CWND
from trickles_kit.core.pairing import Pending
from trickles_kit.core.plan import CONTINUE, SPLIT
from trickles_kit.wire.continuation import FULL2, NORMAL, RECOVERY
from trickles_kit.wire.segment import SYN

__all__ = ["derive_columns", "normal_plans", "vec_cwnd"]

_REQUEST, _NORMAL_T, _SYN_T = 0, 0, 2  # codes of columns.CATS (direction, req_type)
_SS_MAX = 1 << 20  # larger ssthresh values go the row way (int64 room for the closed form)


def vec_cwnd(n: np.ndarray, base: np.ndarray, c0: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """`core.cc.cwnd` for arrays (int64; callers ensure n >= base - 1, 1 <= c0 <= ss <
    2**20): the same closed form, the integer root by a float root corrected to exact."""
    a = base + ss - c0
    kk = np.maximum(n - a, 0)
    x = 1 + 4 * (ss * ss - ss + 2 * kk)
    r = np.sqrt(x.astype(np.float64)).astype(np.int64)
    r -= r * r > x
    r += (r + 1) * (r + 1) <= x
    w = np.where(n < a, c0 + np.maximum(n - base, 0), (1 + r) // 2)
    return np.minimum(w, MAX_CWND)


def normal_plans(k: np.ndarray, base: np.ndarray, c0: np.ndarray, ss: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first packet, slots, cwnd) of `plan_request`'s normal step for requests whose blocks
    cover [base, k] (k >= base): a CONTINUE at k + cwnd(k - 1), a SPLIT after it when the
    window grew."""
    prev = vec_cwnd(k - 1, base, c0, ss)
    cur = vec_cwnd(k, base, c0, ss)
    return k + prev, 1 + cur - prev, cur


def _i64(cols: PacketColumns, f: str) -> np.ndarray:
    return cols.data[f].astype(np.int64)


def eligible(cols: PacketColumns, max_sacks: int) -> np.ndarray:
    """Requests the vector path may plan: NORMAL, not SYN, MAC and nonce not failed, a FULL1
    or MINIMAL continuation not in recovery whose fields `bad_cont` accepts, and one SACK
    block [left, k] with left <= TCPBase within reach (`check_sacks` accepts it)."""
    d, m = cols.data, cols.mask
    ok = (d["direction"] == _REQUEST) & (d["error"] < 0) & (d["req_type"] == _NORMAL_T)
    ok &= (d["flags"] & SYN) == 0
    ok &= (m["mac_ok"] | d["mac_ok"]) & (m["nonce_ok"] | d["nonce_ok"])
    for f in ("cont_type", "cont_seq", "state", "start_cwnd", "ssthresh", "tcp_base",
              "client_state", "parent", "client_timestamp", "mac", "sacks"):
        ok &= ~m[f]
    ok &= (d["cont_type"] != FULL2) & (d["state"] != RECOVERY)
    k, base, c0, ss = (_i64(cols, f) for f in ("cont_seq", "tcp_base", "start_cwnd",
                                                "ssthresh"))
    ok &= (c0 >= 1) & (c0 <= ss) & (c0 <= MAX_CWND) & (ss < _SS_MAX)
    ok &= (k >= base) & (k <= SEQ_LIMIT)
    off = d["sacks"]
    ok &= (off[1:] - off[:-1] == 1) & (max_sacks >= 1)
    vals = cols.lists["sacks"]
    first = np.minimum(off[:-1], max(len(vals) - 1, 0))
    left = vals[first, 0] if len(vals) else np.zeros(cols.n, np.int64)
    right = vals[first, 1] if len(vals) else np.zeros(cols.n, np.int64)
    ok &= (left >= 0) & (left <= base) & (left >= base - SACK_REACH) & (right == k)
    return ok


_KEYS = (("src", "dst"), ("sport", "dport"), ("dst", "src"), ("dport", "sport"),
         ("cont_seq", "ack"), ("client_state", "client_state"), ("parent", "parent"),
         ("client_timestamp", "client_timestamp"))


def _key_fields(cols: PacketColumns, isreq: np.ndarray) -> list[np.ndarray]:
    """`core.pairing.request_key` of each row (a request's own, a response's `response_key`):
    eight uint64 arrays."""
    d = cols.data
    return [np.where(isreq, d[q].astype(np.uint64), d[r].astype(np.uint64)) for q, r in _KEYS]


def _hash(keys: list[np.ndarray]) -> np.ndarray:
    """A 64-bit mix of the key fields (groups are then checked field by field)."""
    h = np.zeros(len(keys[0]), np.uint64)
    for i, k in enumerate(keys):
        h ^= k + np.uint64(0x9E3779B97F4A7C15 + i)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


class _Groups:
    """The pairing key groups: requests and responses with one key, in capture order."""

    def __init__(self, cols: PacketColumns, elig: np.ndarray) -> None:
        d, m = cols.data, cols.mask
        noerr = (d["error"] < 0) & ((d["flags"] & SYN) == 0)
        isreq = d["direction"] == _REQUEST
        pair = noerr & np.where(isreq, d["req_type"] != _SYN_T, True)
        for f in ("cont_seq", "client_state", "parent", "client_timestamp"):
            pair &= ~m[f] if f != "cont_seq" else (~m[f] | ~isreq)
        e = np.flatnonzero(pair)  # rows that register or answer, in capture order
        keys = [k[e] for k in _key_fields(cols, isreq)]
        order = np.argsort(_hash(keys), kind="stable")
        self.pos = e[order]
        self.isreq = isreq[self.pos]
        keys = [k[order] for k in keys]
        h = _hash(keys)
        start = np.r_[True, h[1:] != h[:-1]] if len(h) else np.zeros(0, bool)
        self.gid = np.cumsum(start) - 1
        head = np.flatnonzero(start)
        bad = ~self.isreq[head]  # a response before any request of its key: the row way
        for k in keys:
            bad |= np.bincount(self.gid, k != k[head][self.gid], len(head)) > 0
        bad |= np.bincount(self.gid, self.isreq & ~elig[self.pos], len(head)) > 0
        self.bad = bad

    def pair(self, cols: PacketColumns, first: np.ndarray, nslots: np.ndarray) -> None:
        """Each response fills the slot it claims of its segment's request (the latest one
        before it): groups where any slot is missing, doubled or misplaced are marked bad."""
        d, m = cols.data, cols.mask
        seg = np.cumsum(self.isreq) - 1
        segreq = self.pos[self.isreq]
        resp = ~self.isreq
        rq = segreq[seg[resp]]
        rpos = self.pos[resp]
        p = d["position"][rpos].astype(np.int64)
        ok = ~m["position"][rpos] & (p < nslots[rq])
        ok &= d["seq"][rpos].astype(np.int64) == first[rq] + p
        self.bad |= np.bincount(self.gid[resp], ~ok, len(self.bad)) > 0
        nseg = len(segreq)
        cnt = np.bincount(seg[resp], minlength=nseg)
        bits = np.bincount(seg[resp], np.where(ok, 1 << np.minimum(p, 62), 0), nseg)
        want = nslots[segreq]
        segbad = (cnt != want) | (bits != (1 << want) - 1)
        self.bad |= np.bincount(self.gid[self.isreq], segbad, len(self.bad)) > 0
        self.rq, self.rpos, self.slot = rq, rpos, p

    def drop(self, rows: np.ndarray) -> np.ndarray:
        """Mark the groups of (simple) rows `rows` bad; their rows."""
        g = np.unique(self.gid[np.isin(self.pos, rows)])
        self.bad[g] = True
        return np.sort(self.pos[np.isin(self.gid, g)])

    def simple_rows(self, n: int) -> np.ndarray:
        out = np.zeros(n, bool)
        out[self.pos[~self.bad[self.gid]]] = True
        return out


def _mac_low(mac: np.ndarray) -> np.ndarray:
    """Bytes 4..7 of each MAC (big-endian): the low half of `replay_key`'s 64 bits, which the
    request type's tag never touches — a replay key can equal another only if these do."""
    b = mac[:, 4:8].astype(np.uint64)
    return (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3]


def derive_columns(cols: PacketColumns, cfg, verifier: Verifier | None, errors: Counter,
                   verdicts: dict[int, str]) -> EventTable:
    """`capture.events.derive_events` of the rows of `cols`, as an `EventTable`; `verdicts`
    and `errors` are filled as there."""
    n = cols.n
    elig = eligible(cols, cfg.max_sacks)
    k, base, c0, ss = (np.where(elig, _i64(cols, f), dflt) for f, dflt in (
        ("cont_seq", 1), ("tcp_base", 1), ("start_cwnd", 1), ("ssthresh", 1)))
    first, nslots, cur = normal_plans(k, base, c0, ss)
    g = _Groups(cols, elig)
    g.pair(cols, first, nslots)
    simple = g.simple_rows(n)
    d = Derivation(cfg, verifier, errors)
    d.walk(_rows(cols, np.flatnonzero(~simple)))
    judged = [e.item for e in d.reqs if type(e) is Pending and not e.answered]
    low = {int.from_bytes(r.mac[4:8], "big") for r in judged if r.mac is not None}
    if low:  # answered requests whose replay-table entry an unanswered one may look up
        sreq = np.flatnonzero(simple & (cols.data["direction"] == _REQUEST))
        hit = sreq[np.isin(_mac_low(cols.data["mac"][sreq]), np.array(sorted(low), np.uint64))]
        if len(hit):
            moved = g.drop(hit)
            simple[moved] = False
            d.walk(_rows(cols, moved))
            d.reqs.sort(key=lambda e: e.index)
    _server_state(cols, d, judged)
    out = d.finish()
    d.verdicts.update(dict.fromkeys(cols.data["index"][simple & elig].tolist(), ADMITTED))
    verdicts.update(d.verdicts)
    return _table(cols, g, simple, elig, first, cur, out)


def _rows(cols: PacketColumns, pos: np.ndarray) -> list:
    return cols.take(pos).rows() if len(pos) else []


def _server_state(cols: PacketColumns, d: Derivation, judged: list) -> None:
    """What the row walk would have learnt from every response, not only from its own: the
    newest key epoch sealed, and (without the secret) the last sealed row of each MAC an
    unanswered request carries."""
    dd, m = cols.data, cols.mask
    sealed = (dd["direction"] != _REQUEST) & (dd["error"] < 0) & ~m["key_epoch"]
    if sealed.any():
        d.cv.max_epoch = max(d.cv.max_epoch, int(dd["key_epoch"][sealed].max()))
    if d.verifier is not None or not judged:
        return
    macs = {r.mac for r in judged if r.mac is not None}
    pos = np.flatnonzero(sealed)
    lo = np.array(sorted({int.from_bytes(x[4:8], "big") for x in macs}), np.uint64)
    cand = pos[np.isin(_mac_low(dd["mac"][pos]), lo)]
    last: dict[bytes, int] = {}
    for p, mac in zip(cand.tolist(), (dd["mac"][cand]).tolist(), strict=True):
        b = bytes(mac)
        if b in macs:
            last[b] = p
    if last:
        rows = _rows(cols, np.array(sorted(last.values()), np.int64))
        for r in rows:
            d.cv.genuine[r.mac] = r


def _table(cols: PacketColumns, g: _Groups, simple: np.ndarray, elig: np.ndarray,
           first: np.ndarray, cur: np.ndarray, out: list) -> EventTable:
    """The events of the vector path (one per answer, a `nonce_ok` per request) and of the
    row path, in capture order (capture index, order within it)."""
    d, m = cols.data, cols.mask
    sel = simple[g.rpos]
    rpos, rq, slot = g.rpos[sel], g.rq[sel], g.slot[sel]
    q = np.flatnonzero(simple & elig)
    cid = np.where(m["conn_id"], 0, d["conn_id"]).astype(np.uint64)
    state = np.where(m["state"], 0, d["state"]).astype(np.int64)
    ack = d["cont_seq"].astype(np.int64)
    ssth, tb = _i64(cols, "ssthresh"), _i64(cols, "tcp_base")
    vals = cols.lists["sacks"]
    lr = vals[d["sacks"][q]][:, :2].tolist() if len(q) else []
    t = EventTable.build(
        [CONTINUE, SPLIT, ev.NONCE_OK],
        np.r_[np.minimum(slot, 1), np.full(len(q), 2)],
        np.r_[d["index"][rpos], d["index"][q]], np.r_[np.zeros(len(rpos), np.int8),
                                                      np.ones(len(q), np.int8)],
        {"t": np.r_[d["t"][rpos], d["t"][q]], "conn_id": np.r_[cid[rq], cid[q]],
         "pkt": np.r_[first[rq] + slot, np.full(len(q), -1)],
         "ack": np.r_[ack[rq], ack[q]], "cwnd": np.r_[cur[rq], np.zeros(len(q), np.int64)],
         "ssthresh": np.r_[ssth[rq], ssth[q]], "tcp_base": np.r_[tb[rq], tb[q]],
         "state": np.r_[np.full(len(rq), NORMAL), state[q]]},
        [{} for _ in range(len(rpos))] + [{"blocks": [b]} for b in lr])
    return EventTable.merge(t, EventTable.of_events(out))
