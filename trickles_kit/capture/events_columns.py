"""The server's events from a columnar capture: the common requests all at once.

Why: deriving events request by request (`capture.events`) cost ~10 us a packet, most of it
`PacketRow`s, `Event` objects and one `plan_of` call per request. Most requests of a transfer
are alike — a NORMAL request whose SACK blocks cover [TCPBase, k] (the normal step) or leave
one hole after the first block (a recovery), answered by exactly its planned packets at the
positions they claim — and for those the engine's outcome follows from their fields alone:
admitted, one event per answer, a `nonce_ok` for the blocks, a `recovery_start` when it
retransmits. Those are computed here with numpy; every other request (SYNs, FINs,
SLOWSTARTs, other SACK shapes, replays, duplicates, unanswered or MAC-failed requests, and
every request sharing a pairing key with one of those) goes through the row derivation
(`capture.events.Derivation`) unchanged.

The rules stay single: the plans are `core.cc.cwnd`'s closed form and `core.plan`'s normal
step and recovery written for arrays, held equal to `core.admission.plan_of` (with
`bad_cont` and `check_sacks`) on every request taken by tests/capture/test_events_columns.py;
pairing is `core.pairing`'s rule restricted to the key groups where it has one answer (each
response fills the slot it claims of the latest request before it); verdicts of unanswered
requests stay `admit` calls.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from trickles_kit.capture.columns import PacketColumns
from trickles_kit.capture.event_table import EventTable, objects
from trickles_kit.capture.events import ADMITTED, Derivation
from trickles_kit.capture.parse import Verifier
from trickles_kit.core import events as ev
from trickles_kit.core.admission import SACK_REACH, SEQ_LIMIT
from trickles_kit.core.cc import MAX_CWND
from trickles_kit.core.pairing import Pending
from trickles_kit.core.plan import BOOT, BOOT_LEAD, CONTINUE, RETRANSMIT, SPLIT
from trickles_kit.wire.continuation import BOOTSTRAP, FULL2, NORMAL, RECOVERY
from trickles_kit.wire.segment import SYN

__all__ = ["SLOT_KINDS", "VectorPlans", "derive_columns", "vec_cwnd"]

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


class VectorPlans:
    """The plans of the requests the vector path takes (``ok``), one array entry per row.

    Slot p of row r: with ``starts[r]`` slot 0 retransmits ``loss[r]`` (RETRANSMIT, the old
    epoch's fields, state RECOVERY); every other slot is packet ``pkt0[r] + p - starts[r]``:
    in a recovery (``rec[r]``) a BOOT slot of the new epoch (``bss``, ``bbase``, state
    BOOTSTRAP), else CONTINUE (p = 0) or SPLIT. ``cwnd``: the plan's window."""

    def __init__(self, cols: PacketColumns, max_sacks: int, max_gap: int) -> None:
        n = cols.n
        self.ss, self.base = _i64(cols, "ssthresh"), _i64(cols, "tcp_base")
        self.pkt0, self.nslots, self.cwnd, self.loss, self.bss, self.bbase = (
            np.zeros(n, np.int64) for _ in range(6))
        self.ok, self.rec, self.starts = (np.zeros(n, bool) for _ in range(3))
        r, nb, r1, l2 = _takeable(cols, max_sacks)
        k, base, c0, ss = _i64(cols, "cont_seq")[r], self.base[r], _i64(cols, "start_cwnd")[r], \
            self.ss[r]
        one = nb == 1  # the normal step (`plan_request`: one block covering [base, k])
        i, k1, b1, c1, s1 = r[one], k[one], base[one], c0[one], ss[one]
        prev = vec_cwnd(k1 - 1, b1, c1, s1)
        cur = vec_cwnd(k1, b1, c1, s1)
        self.pkt0[i], self.nslots[i], self.cwnd[i] = k1 + prev, 1 + cur - prev, cur
        self.ok[i] = True
        # a recovery (`_recovery`): the first loss right after block 1, block 2 ending at k
        two = ~one
        j, k, base, c0, ss = r[two], k[two], base[two], c0[two], ss[two]
        loss = r1[two] + 1
        prev = vec_cwnd(loss - 1, base, c0, ss)
        # (`recovery_window`: a loss in the recovery round's own packets does not halve again)
        again = (c0 == ss) & (loss < base + c0) & (prev > 1)
        half = np.maximum(vec_cwnd(loss, base, c0, ss) // 2, 1)
        lead = np.where(again, np.minimum((prev - 1) // 4, BOOT_LEAD),
                        np.minimum(np.minimum(prev - half, half // 4), BOOT_LEAD))
        ncw = np.where(again, prev - 1 - lead, half)
        nss = np.where(again, prev, ncw)
        last = loss - 1 + prev
        boot = last - ncw + 1 - lead
        starts = l2[two] == k  # a hole right below k, and it starts at the first loss
        lo = np.maximum(np.where(starts & (k - 1 - loss < max_gap), loss, k), boot)
        nslots = starts + np.maximum(np.minimum(k, boot + ncw - 1) - lo + 1, 0)
        self.rec[j], self.starts[j], self.loss[j], self.nslots[j] = True, starts, loss, nslots
        self.pkt0[j], self.cwnd[j], self.bss[j], self.bbase[j] = lo + last + 1 - boot, ncw, \
            nss, last + 1
        self.ok[j] = (k <= last) & (nslots > 0)  # (else a reject or a termination: row way)

    def slots(self, r: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        """Slot `p` of rows `r`: its event's kind code (into `SLOT_KINDS`), pkt, ssthresh,
        tcp_base and state."""
        rec, rt = self.rec[r], self.starts[r] & (p == 0)
        boot = rec & ~rt
        return {"kind": np.where(rec, np.where(rt, 2, 3), np.minimum(p, 1)),
                "pkt": np.where(rt, self.loss[r], self.pkt0[r] + p - self.starts[r]),
                "ssthresh": np.where(boot, self.bss[r], self.ss[r]),
                "tcp_base": np.where(boot, self.bbase[r], self.base[r]),
                "state": np.where(rec, np.where(rt, RECOVERY, BOOTSTRAP), NORMAL)}


SLOT_KINDS = [CONTINUE, SPLIT, RETRANSMIT, BOOT]


def _i64(cols: PacketColumns, f: str) -> np.ndarray:
    return cols.data[f].astype(np.int64)


def _takeable(cols: PacketColumns, max_sacks: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows the vector path may plan, their SACK block counts, r1, l2): NORMAL requests, not
    SYN, MAC and nonce not failed, a FULL1 or MINIMAL continuation not in recovery whose
    fields `bad_cont` accepts, and blocks `check_sacks` accepts of one of two shapes — one
    block [left, k] with left <= TCPBase (the normal step), or [l1, r1], [l2, k] with
    l1 <= TCPBase <= r1 and a hole between (a recovery from r1 + 1)."""
    d, m = cols.data, cols.mask
    ok = (d["direction"] == _REQUEST) & (d["error"] < 0) & (d["req_type"] == _NORMAL_T)
    ok &= (d["flags"] & SYN) == 0
    r = np.flatnonzero(ok)
    ok = (m["mac_ok"][r] | d["mac_ok"][r]) & (m["nonce_ok"][r] | d["nonce_ok"][r])
    for f in ("cont_type", "cont_seq", "state", "start_cwnd", "ssthresh", "tcp_base",
              "client_state", "parent", "client_timestamp", "mac", "sacks"):
        ok &= ~m[f][r]
    ok &= (d["cont_type"][r] != FULL2) & (d["state"][r] != RECOVERY)
    k, base, c0, ss = (d[f][r].astype(np.int64) for f in ("cont_seq", "tcp_base",
                                                           "start_cwnd", "ssthresh"))
    ok &= (c0 >= 1) & (c0 <= ss) & (c0 <= MAX_CWND) & (ss < _SS_MAX)
    ok &= (k >= base) & (k <= SEQ_LIMIT)
    off = d["sacks"]
    nb = off[r + 1] - off[r]
    ok &= ((nb == 1) | (nb == 2)) & (max_sacks >= nb)
    vals = cols.lists["sacks"]
    if not len(vals):
        return r[:0], nb[:0], nb[:0], nb[:0]
    last = len(vals) - 1
    b1 = np.minimum(off[r], last)
    b2 = np.minimum(b1 + 1, last)
    l1, r1, l2, r2 = vals[b1, 0], vals[b1, 1], vals[b2, 0], vals[b2, 1]
    ok &= (l1 >= 0) & (l1 <= base) & (l1 >= base - SACK_REACH)
    one = (nb == 1) & (r1 == k)
    two = (nb == 2) & (r1 >= base) & (l2 > r1 + 1) & (l2 <= r2) & (r2 == k)
    ok &= one | two
    return r[ok], nb[ok], r1[ok], l2[ok]


def _key_words(cols: PacketColumns, isreq: np.ndarray, e: np.ndarray) -> list[np.ndarray]:
    """`core.pairing.request_key` of rows `e` (a request's own, a response's `response_key`),
    packed without loss into four uint64 words: addresses, ports and k, clientState and
    parent, clientTimestamp."""
    d = cols.data
    q = isreq[e]

    def u(f: str) -> np.ndarray:
        return d[f][e].astype(np.uint64)

    src, dst, sport, dport = u("src"), u("dst"), u("sport"), u("dport")
    s32 = np.uint64(32)
    a = np.where(q, (src << s32) | dst, (dst << s32) | src)
    ports = np.where(q, (sport << np.uint64(16)) | dport, (dport << np.uint64(16)) | sport)
    b = (ports << s32) | np.where(q, u("cont_seq"), u("ack"))
    c = (u("client_state") << s32) | u("parent")
    return [a, b, c, u("client_timestamp")]


def _hash(keys: list[np.ndarray]) -> np.ndarray:
    """A 64-bit mix of the key words (groups are then checked word by word)."""
    h = np.zeros(len(keys[0]), np.uint64)
    for i, k in enumerate(keys):
        h ^= k + np.uint64(0x9E3779B97F4A7C15 + i)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


class _Groups:
    """The pairing key groups: requests and responses with one key, in capture order.
    ``bad[g]``: group g goes the row way."""

    def __init__(self, cols: PacketColumns, takeable: np.ndarray) -> None:
        d, m = cols.data, cols.mask
        isreq = d["direction"] == _REQUEST
        pair = (d["error"] < 0) & ((d["flags"] & SYN) == 0) & ~(isreq & (d["req_type"] == _SYN_T))
        pair &= ~m["client_state"] & ~m["parent"] & ~m["client_timestamp"]
        pair &= ~(isreq & m["cont_seq"])
        e = np.flatnonzero(pair)  # rows that register or answer, in capture order
        keys = _key_words(cols, isreq, e)
        h = _hash(keys)
        order = np.argsort(h, kind="stable")
        self.pos = e[order]
        self.isreq = isreq[self.pos]
        h = h[order]
        start = np.r_[True, h[1:] != h[:-1]] if len(h) else np.zeros(0, bool)
        self.gid = np.cumsum(start) - 1
        self.head = head = np.flatnonzero(start)
        odd = self.isreq & ~takeable[self.pos]
        for k in keys:
            k = k[order]
            odd |= k != k[head][self.gid]
        # (a response before any request of its key: the row way too)
        self.bad = ~self.isreq[head] | _any(odd, head)

    def pair(self, cols: PacketColumns, vp: VectorPlans) -> None:
        """Each response fills the slot it claims of its segment's request (the latest one
        before it): groups where any slot is missing, doubled or misplaced are marked bad.
        ``rq``, ``rpos``, ``slot``: each response's request, own row and slot fields."""
        d, m = cols.data, cols.mask
        if not self.isreq.any():  # answers only (or nothing): all the row way
            self.bad[:] = True
            self.rq = self.rpos = none = np.zeros(0, np.int64)
            self.slot = vp.slots(none, none)
            return
        seg = np.maximum(np.cumsum(self.isreq) - 1, 0)  # (leading answers: a bad group)
        segreq = self.pos[self.isreq]
        resp = ~self.isreq
        rq = segreq[seg[resp]]
        rpos = self.pos[resp]
        p = np.minimum(d["position"][rpos].astype(np.int64), 62)
        slot = vp.slots(rq, p)
        ok = ~m["position"][rpos] & (p < vp.nslots[rq])
        ok &= d["seq"][rpos].astype(np.int64) == slot["pkt"]
        nseg = len(segreq)
        cnt = np.bincount(seg[resp], minlength=nseg)
        bits = np.bincount(seg[resp], np.where(ok, 1 << p, 0), nseg)
        want = np.minimum(vp.nslots[segreq], 62)
        odd = np.empty(len(self.pos), bool)
        odd[resp] = ~ok
        odd[self.isreq] = (cnt != want) | (bits != (1 << want) - 1)
        self.bad |= _any(odd, self.head)
        self.rq, self.rpos, self.slot = rq, rpos, slot

    def drop(self, rows: np.ndarray) -> np.ndarray:
        """Mark the groups of (simple) rows `rows` bad; their rows."""
        g = np.unique(self.gid[np.isin(self.pos, rows)])
        self.bad[g] = True
        return np.sort(self.pos[np.isin(self.gid, g)])

    def simple_rows(self, n: int) -> np.ndarray:
        out = np.zeros(n, bool)
        out[self.pos[~self.bad[self.gid]]] = True
        return out


def _any(flags: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Per group (elements sorted by group, group g from head[g]): any flag set."""
    return np.logical_or.reduceat(flags, head) if len(head) else np.zeros(0, bool)


def _member(vals: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which `vals` are in `keys` (sorted, non-empty): a binary search each (`np.isin`
    sorts both)."""
    at = np.minimum(np.searchsorted(keys, vals), len(keys) - 1)
    return keys[at] == vals


def _mac_low(mac: np.ndarray) -> np.ndarray:
    """Bytes 4..7 of each MAC (big-endian): the low half of `replay_key`'s 64 bits, which the
    request type's tag never touches — a replay key can equal another only if these do."""
    b = mac[:, 4:8].astype(np.uint64)
    return (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3]


def derive_columns(cols: PacketColumns, cfg, verifier: Verifier | None, errors: Counter,
                   verdicts: dict[int, str]) -> EventTable:
    """`capture.events.derive_events` of the rows of `cols`, as an `EventTable`; `verdicts`
    and `errors` are filled as there."""
    vp = VectorPlans(cols, cfg.max_sacks, cfg.max_gap)
    g = _Groups(cols, vp.ok)
    g.pair(cols, vp)
    simple = g.simple_rows(cols.n)
    d = Derivation(cfg, verifier, errors)
    d.walk(_rows(cols, np.flatnonzero(~simple)))
    judged = [e.item for e in d.reqs if type(e) is Pending and not e.answered]
    low = {int.from_bytes(r.mac[4:8], "big") for r in judged if r.mac is not None}
    if low:  # answered requests whose replay-table entry an unanswered one may look up
        sreq = np.flatnonzero(simple & (cols.data["direction"] == _REQUEST))
        hit = sreq[_member(_mac_low(cols.data["mac"][sreq]), np.array(sorted(low), np.uint64))]
        if len(hit):
            moved = g.drop(hit)
            simple[moved] = False
            d.walk(_rows(cols, moved))
            d.reqs.sort(key=lambda e: e.index)
    _server_state(cols, d, judged)
    out = d.finish()
    q = np.flatnonzero(simple & (cols.data["direction"] == _REQUEST))
    d.verdicts.update(dict.fromkeys(cols.data["index"][q].tolist(), ADMITTED))
    verdicts.update(d.verdicts)
    return EventTable.merge(_table(cols, g, vp, simple, q), EventTable.of_events(out))


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
    pos = np.flatnonzero(sealed & ~m["mac"])
    lo = np.array(sorted({int.from_bytes(x[4:8], "big") for x in macs}), np.uint64)
    cand = pos[_member(_mac_low(dd["mac"][pos]), lo)] if len(lo) else pos[:0]
    last: dict[bytes, int] = {}
    for p, mac in zip(cand.tolist(), dd["mac"][cand].tolist(), strict=True):
        b = bytes(mac)
        if b in macs:
            last[b] = p
    for r in _rows(cols, np.array(sorted(last.values()), np.int64)):
        d.cv.genuine[r.mac] = r


_KINDS = [*SLOT_KINDS, ev.NONCE_OK, ev.RECOVERY_START]
_NONCE, _RSTART = 4, 5


def _table(cols: PacketColumns, g: _Groups, vp: VectorPlans, simple: np.ndarray,
           q: np.ndarray) -> EventTable:
    """The vector path's events: one per answer (its slot's kind and fields), a `nonce_ok`
    per request (its blocks), a `recovery_start` per request that retransmits."""
    d, m = cols.data, cols.mask
    sel = np.flatnonzero(simple[g.rpos])
    sel = sel[np.argsort(g.rpos[sel])]  # in capture order: `merge` then joins sorted runs
    rpos, rq = g.rpos[sel], g.rq[sel]
    slot = {f: v[sel] for f, v in g.slot.items()}
    rs = q[vp.starts[q]]
    cid = np.where(m["conn_id"], 0, d["conn_id"]).astype(np.uint64)
    state = np.where(m["state"], 0, d["state"]).astype(np.int64)
    ack = d["cont_seq"].astype(np.int64)
    nq, nr = len(q), len(rs)

    def reqs(a: np.ndarray) -> np.ndarray:  # a request field: of the answers' requests, of q, rs
        return np.r_[a[rq], a[q], a[rs]]

    blocks = _blocks(cols, q)
    firsts = [{"first_loss": x} for x in vp.loss[rs].tolist()]
    return EventTable.build(
        _KINDS, np.r_[slot["kind"], np.full(nq, _NONCE), np.full(nr, _RSTART)],
        np.r_[d["index"][rpos], d["index"][q], d["index"][rs]],
        np.r_[np.zeros(len(rpos), np.int64), np.ones(nq, np.int64), np.full(nr, 3)],
        {"t": np.r_[d["t"][rpos], d["t"][q], d["t"][rs]], "conn_id": reqs(cid),
         "pkt": np.r_[slot["pkt"], np.full(nq + nr, -1)], "ack": reqs(ack),
         "cwnd": np.r_[vp.cwnd[rq], np.zeros(nq, np.int64), vp.cwnd[rs]],
         "ssthresh": np.r_[slot["ssthresh"], vp.ss[q], vp.ss[rs]],
         "tcp_base": np.r_[slot["tcp_base"], vp.base[q], vp.base[rs]],
         "state": np.r_[slot["state"], state[q], state[rs]]},
        np.concatenate([objects([{} for _ in range(len(rpos))]), blocks, objects(firsts)]))


def _blocks(cols: PacketColumns, q: np.ndarray) -> np.ndarray:
    """The `nonce_ok` details of requests `q` (each with at least one SACK block), an object
    array: the [[left, right], ...] lists made by numpy, for each block count at once."""
    off, vals = cols.data["sacks"], cols.lists["sacks"][:, :2]
    b, nb = off[q], off[q + 1] - off[q]
    out = np.empty(len(q), object)
    for c in np.unique(nb).tolist():
        i = np.flatnonzero(nb == c)
        out[i] = [{"blocks": x} for x in vals[b[i, None] + np.arange(c)].tolist()]
    return out
