"""Vectorised decode of one batch of IPv4 datagrams into `PacketColumns`.

Why: the Trickles header and continuation sit at fixed offsets, so a batch of datagrams is one
(k, 131)-byte array (a row per datagram, copied out of the mapped window at once) read through a
numpy structured view; the variable parts (SACK blocks, ranges, the DATA chunk) are found by
offset arithmetic on whole arrays. Only the shapes of a bulk transfer are read here — a request
with a FULL continuation, a response with a FULL or MINIMAL one and at most one DATA chunk, the
shapes the row decoder reads inline (`batches`, `parse.response_row`), with the same
conditions; every other datagram (SYNs, checksum failures, IP options, UDP, delta-encoded
requests...) is marked for the row decoder, which stays the one implementation of those rules
(`capture.columnar` lays its rows over the batch's table).
"""

from __future__ import annotations

import re
import struct

import numpy as np

from trickles_kit.capture.columns import KINDS, PacketColumns
from trickles_kit.wire import messages as msg
from trickles_kit.wire.continuation import (
    FULL1,
    FULL2,
    FULL_FORMAT,
    FULL_LEN,
    MAC_PSEUDO,
    MINIMAL,
    MINIMAL_FORMAT,
    MINIMAL_LEN,
)
from trickles_kit.wire.segment import HEADER_LEN, IPV4_TCP_HEAD, OPT_EXID, OPT_KIND, SYN

__all__ = ["WIDTH", "Scan", "Scratch", "scan_batch"]

_P = 20 + HEADER_LEN  # the payload of a datagram without IP options, our option layout (48)
WIDTH = _P + msg.RESPONSE_FULL_LEN  # bytes read per datagram at fixed offsets (131)
_SL, _RL = msg.SACK_BLOCK.size, msg.RANGE.size
_NP = {"B": "u1", "H": ">u2", "I": ">u4", "Q": ">u8", "16s": "V16"}


def layout(st: struct.Struct, names: list[str], at: int = 0) -> list[tuple[str, str, int]]:
    """(name, numpy format, offset + `at`) of each field of wire's `st`, pad bytes skipped:
    the offsets are wire's, never written down here."""
    out, off = [], 0
    fields = iter(names)
    for tok in re.findall(r"\d*[a-zA-Z]", st.format.lstrip("!<>=@")):
        if tok != "x":
            out.append((next(fields), _NP[tok], off + at))
        off += struct.calcsize("!" + tok)
    assert off == st.size and next(fields, None) is None, st.format
    return out


_CONT_NAMES = ["cont_type", "cont_seq", "first_child", "client_state", "parent",
               "client_timestamp", "timestamp", "mrtt", "state", "first_loss",
               "first_bootstrap_seq", "start_cwnd", "ssthresh", "tcp_base", "conn_id",
               "key_epoch", "mac"]
_CONT = layout(struct.Struct("!" + FULL_FORMAT), _CONT_NAMES)
_MINIMAL_FIELDS = len(struct.Struct("!" + MINIMAL_FORMAT).unpack(bytes(MINIMAL_LEN)))
# IPv4 without options + TCP (wire's one-unpack layout), the address pair read as two fields
_IPTCP = layout(IPV4_TCP_HEAD, ["total", "frag", "proto", "addrs", "sport", "dport", "seq",
                                "ack", "offb", "flags", "window", "okind", "olen", "exid",
                                "tlen"])
_ADDRS = next(o for f, _, o in _IPTCP if f == "addrs")
_HEAD = ([("b0", "u1", 0)] + [x for x in _IPTCP if x[0] != "addrs"]
         + [("src", ">u4", _ADDRS), ("dst", ">u4", _ADDRS + 4)])


def _dtype(fields: list) -> np.dtype:
    names, formats, offsets = zip(*fields, strict=True)
    return np.dtype({"names": list(names), "formats": list(formats), "offsets": list(offsets),
                     "itemsize": WIDTH})


_HEAD_DT = _dtype(_HEAD)
_REQ_DT = _dtype(layout(msg.REQUEST_HEAD, ["rtype", *_CONT_NAMES, "nsacks"], _P))
_RESP_DT = _dtype(layout(msg.RESPONSE_FULL, ["nonce", "siblings", "position", "ucont_len",
                                         *_CONT_NAMES], _P))


class Scan:
    """What `scan_batch` found, over the whole batch (row i = datagram i): `cols`, the columns
    of the rows the vector pass took (`taken`; the other rows hold no values), `cont`, the
    (k, FULL_LEN) continuation bytes of every row (for the MAC check), the positions left to
    the row decoder (`rest`) and the SYN ports in batch order (`syns`: (position, port) for
    each datagram with our layout and the SYN flag)."""

    __slots__ = ("cols", "cont", "taken", "rest", "syns")

    def __init__(self, cols, cont, taken, rest, syns) -> None:
        self.cols, self.cont, self.taken, self.rest, self.syns = cols, cont, taken, rest, syns


def _be(u8: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Big-endian unsigned integers of `width` (1, 2 or 4) bytes at `pos` (int64; a position
    too close to the end reads the last `width` bytes: callers mask those rows out)."""
    if len(u8) < width:
        return np.zeros(len(pos), np.int64)
    at = np.minimum(pos, len(u8) - width)
    out = u8[at].astype(np.int64)
    for j in range(1, width):  # (a byte gather each: cheaper than one (k, width) gather)
        out <<= 8
        out |= u8[at + j]
    return out


def header_stage(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """(G, head, ok, room, total): the fixed bytes of every datagram, its header view, which
    datagrams have our common layout (IPv4 without options, IP 253 or TCP, our option, TCP
    header length 28, whole), which have their fixed bytes in the buffer, the IP lengths."""
    size = len(u8)
    n = ends - starts
    room = (starts + WIDTH <= size) & (n >= _P)
    sw = np.lib.stride_tricks.sliding_window_view(u8, WIDTH) if size >= WIDTH else None
    s = np.where(room, starts, 0)
    G = sw[s] if sw is not None else np.zeros((len(starts), WIDTH), np.uint8)
    head = G.view(_HEAD_DT)[:, 0]
    total = head["total"].astype(np.int64)
    proto = head["proto"]
    ok = (room & (head["b0"] == 0x45) & ((head["frag"] & 0x3FFF) == 0)
          & ((proto == 253) | (proto == 6))
          & (head["okind"] == OPT_KIND) & (head["olen"] == 6) & (head["exid"] == OPT_EXID)
          & ((head["offb"] >> 4) == HEADER_LEN // 4) & (total <= n) & (total >= _P))
    return G, head, ok, room, total


def harmless(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, head, room: np.ndarray
             ) -> np.ndarray:
    """Which datagrams cannot be Trickles whatever follows (the header fields from the
    fixed bytes where they hold them, else read here)."""
    size = len(u8)
    n = ends - starts
    b0, pr = head["b0"].copy(), head["proto"].copy()
    fr = (head["frag"] & 0x3FFF) != 0
    out = np.flatnonzero(~room)
    if len(out) and size:
        at = starts[out]
        b0[out] = u8[np.minimum(at, size - 1)]
        pr[out] = u8[np.minimum(at + 9, size - 1)]
        fr[out] = (_be(u8, np.minimum(at + 6, max(size - 2, 0)), 2) & 0x3FFF) != 0
    ihl = (b0 & 15).astype(np.int64) << 2
    return ((n < 20) | (b0 >> 4 != 4) | (ihl < 20) | (ihl > n) | fr
            | ((pr != 6) & (pr != 17) & (pr != 253)))


def scan_batch(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, ts: np.ndarray,
               cksum: bool, is_req_of, strict: bool, scratch: Scratch | None = None
               ) -> Scan | None:
    """Decode the datagrams u8[starts[i]:ends[i]] (`ts` their times) that have the two bulk
    shapes; `cksum`: verify TCP checksums (a failure is left to the row decoder, which flags
    it); ``is_req_of(head, ok, syns)`` the direction rule's verdicts (request?, decided by
    port?). None when `strict` (ports are being learned) and a datagram might be a Trickles
    segment of another layout: its SYN could teach a port, so the caller decodes the whole
    batch in order.

    Why whole-batch columns: every column is computed for every datagram of the batch (the
    rows not taken hold garbage the caller overwrites or drops), so the table of a clean batch
    is made without a gather or a scatter per field."""
    G, head, ok, room, total = header_stage(u8, starts, ends)
    if strict and not ok.all() and not (ok | harmless(u8, starts, ends, head, room)).all():
        return None
    syn = ok & ((head["flags"] & SYN) != 0)
    sp = np.flatnonzero(syn)
    syn_port = np.where(head["tlen"][sp] == 0, head["dport"][sp], head["sport"][sp])
    syns = list(zip(sp.tolist(), syn_port.tolist(), strict=True))
    is_req, _ = is_req_of(head, ok, syns)
    vec = ok & ~syn
    if cksum:
        vec &= checksums_ok(u8, starts, starts + total, vec, scratch)
    k = len(starts)
    data, mask, lists = _blank(k)
    n = total - _P  # the payload's length (for the rows with our layout)
    rq = _requests(u8, G, vec & is_req, starts + _P, n, data, mask, lists)
    rs, mini = _responses(u8, G, vec & ~is_req, starts + _P, n, data, mask)
    taken = rq | rs
    cont = _cont_bytes(G, rq)
    _fill_head(data, head, ts, total, rq)
    _cont_fields(cont, data)
    for f in _CONT_NAMES[:_MINIMAL_FIELDS]:
        mask[f] = ~taken
    for f in _CONT_NAMES[_MINIMAL_FIELDS:]:
        mask[f] = ~taken | mini
    mask["ucont_len"] = ~taken
    cols = PacketColumns(k, data, mask, None, lists)
    return Scan(cols, cont, taken, np.flatnonzero(~taken), syns)


class Scratch:
    """A reusable uint64 buffer: a fresh array of a batch's size per call would cost its
    page faults every batch."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = np.zeros(0, np.uint64)

    def get(self, n: int) -> np.ndarray:
        if len(self.buf) < n:
            self.buf = np.empty(max(n, 2 * len(self.buf)), np.uint64)
        return self.buf[:n]


_U32 = np.uint64(32)
_LOW_BYTES = np.array([(1 << (8 * i)) - 1 for i in range(9)], np.uint64)  # i low bytes set


def checksums_ok(u8: np.ndarray, starts: np.ndarray, end: np.ndarray, sel: np.ndarray,
                 scratch: Scratch | None = None) -> np.ndarray:
    """The TCP checksum verdicts of the datagrams `sel` (IPv4 without options: the sum runs
    over the addresses and the segment, u8[start + 12:end], pseudo-header protocol 6) — the
    codec's rule, as `batches._cksum_ok` / `_batch_checksums` compute it, in one pass.

    Why 64-bit words: the sum of 16-bit words mod 0xFFFF only depends on each byte's weight,
    1 or 256 (65536 = 1 mod 0xFFFF, so a little-endian 64-bit word weighs its bytes 1, 256,
    1, 256... too), and numpy sums uint64 without a cast, four times as fast as 16-bit words
    into 32 bits. A word's value is lo + hi * 2**32 = lo + hi (mod 0xFFFF); the sums of each
    segment's words (mod 2**64) and of their high halves (exact) give the exact sum of the
    low halves. Summing the 8-aligned span [a, z) around [s, e) (one ``add.reduceat`` for
    every segment of the batch) gives even bytes weight 1 and odd ones 256; less the bytes of
    [a, s) and [e, z), it is the big-endian sum times 256 (s even) or itself (s odd): an odd
    length's pad byte comes out right either way."""
    out = np.zeros(len(starts), bool)
    # (a datagram at the very end of the buffer is left to the row decoder: reduceat needs a
    # word past the last span)
    idx = np.flatnonzero(sel & (((end + 7) & ~7) + 8 <= len(u8)))
    if not len(idx):
        return out
    s = starts[idx] + 12
    e = end[idx]
    a = s & ~7
    z = (e + 7) & ~7
    base = int(a[0])  # the batch's part of the buffer only
    words = np.frombuffer(u8, dtype="<u8", offset=base, count=(int(z[-1]) + 8 - base) >> 3)
    marks = np.empty(2 * len(idx), np.int64)
    marks[0::2] = (a - base) >> 3
    marks[1::2] = (z - base) >> 3
    hi = (scratch or Scratch()).get(len(words))
    np.right_shift(words, _U32, out=hi)
    h = np.add.reduceat(hi, marks)[0::2]
    lo = np.add.reduceat(words, marks)[0::2] - (h << _U32)  # (mod 2**64: exact)
    # the bytes of the span before s and from e on, from its first and last words (a word's
    # value is its bytes' weighted sum mod 0xFFFF)
    first = words[marks[0::2]] & _LOW_BYTES[s - a]
    last = words[marks[1::2] - 1] & ~_LOW_BYTES[8 - (z - e)]
    t = ((lo % 0xFFFF) + (h % 0xFFFF) + 2 * 0xFFFF - first % 0xFFFF - last % 0xFFFF
         ).astype(np.int64)
    t %= 0xFFFF
    t = np.where(s & 1, t, t * 256)
    seglen = e - starts[idx] - 20
    out[idx] = (t + 6 + seglen) % 0xFFFF == 0
    return out


def _fill_head(d: dict, head, ts: np.ndarray, total: np.ndarray, rq: np.ndarray) -> None:
    """The IP / TCP fields of every row (the direction: request where `rq`)."""
    d["index"] = np.arange(len(ts), dtype=np.int64)  # (the caller adds the batch's first)
    d["t"] = ts
    d["direction"] = (~rq).astype(np.int16)
    d["carrier"] = (head["proto"] != 253).astype(np.int16)
    d["length"] = total
    for f in ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window"):
        d[f] = head[f].astype(np.dtype(KINDS[f].replace("addr", "u4")))
    d["trickles_len"] = head["tlen"].astype(np.uint16)


def _blank(k: int) -> tuple[dict, dict, dict]:
    """(data, mask, lists) of `k` rows: the fields the vector rows never hold, null."""
    data: dict = {"finhint": np.zeros(k, np.uint32), "error": np.full(k, -1, np.int16),
                  "mac_ok": np.zeros(k, bool), "nonce_ok": np.zeros(k, bool)}
    mask: dict = {f: np.ones(k, bool) for f in ("finhint", "error", "mac_ok", "nonce_ok")}
    return data, mask, {}


_CONT_DT = np.dtype({"names": [f for f, _, _ in _CONT], "formats": [t for _, t, _ in _CONT],
                     "offsets": [o for _, _, o in _CONT], "itemsize": FULL_LEN})
_MAC_AT = next(o for f, _, o in _CONT if f == "mac")
_REQ_CONT, _RESP_CONT = _P + msg.REQUEST_CONT_OFFSET, _P + msg.RESPONSE_CONT_OFFSET


def _cont_bytes(G: np.ndarray, rq: np.ndarray) -> np.ndarray:
    """The (k, FULL_LEN) continuation bytes of every row, wherever its message puts them
    (a request's after its type byte, a response's after its header): one gather."""
    k = len(G)
    at = np.arange(k, dtype=np.int64) * WIDTH + np.where(rq, _REQ_CONT, _RESP_CONT)
    if not k:
        return np.zeros((0, FULL_LEN), np.uint8)
    return np.lib.stride_tricks.sliding_window_view(G.reshape(-1), FULL_LEN)[at]


def _cont_fields(cont: np.ndarray, out: dict) -> None:
    """The continuation's fields of every row, from its bytes."""
    v = cont.view(_CONT_DT)[:, 0] if len(cont) else np.zeros(0, _CONT_DT)
    for f, _, _ in _CONT:
        if f == "mac":
            out[f] = np.ascontiguousarray(cont[:, _MAC_AT:_MAC_AT + 16])
        else:
            out[f] = v[f].astype(np.dtype(KINDS[f].rstrip("?")))


def _requests(u8, G, sel, p, n, d: dict, m: dict, lists: dict) -> np.ndarray:
    """NORMAL / SLOWSTART / FIN requests with a FULL continuation (`batches._fast_request`'s
    conditions) among `sel`: their fields into `d` / `m` / `lists`; returns which rows."""
    size = len(u8)
    v = G.view(_REQ_DT)[:, 0]
    ns = v["nsacks"].astype(np.int64)
    rtype = v["rtype"]
    ctype = v["cont_type"]
    end = p + n
    good = (sel & (n >= msg.REQUEST_HEAD_LEN) & (rtype != 2) & (rtype <= 3)
            & ((ctype == FULL1) | (ctype == FULL2)) & (v["state"] < 3) & (ns <= msg.MAX_SACKS))
    q = p + msg.REQUEST_HEAD_LEN + _SL * ns
    good &= q + 3 <= end
    qc = np.where(good, q, 0)
    ulen = _be(u8, qc, 2)
    o = qc + 2 + ulen
    good &= o < end
    oc = np.where(good, o, 0)
    nr = u8[np.minimum(oc, size - 1)].astype(np.int64)
    q2 = oc + 1 + _RL * nr
    good &= (nr <= msg.MAX_RANGES) & (q2 <= end)
    nr = np.where(good, nr, 0)
    r_off, lo, hi = _ragged_u32(u8, oc + 1, nr, 2)
    rv = np.stack([lo, lo + hi], axis=1)
    over = rv[:, 1] > 0x100000000
    if over.any():  # a range past 2**32: the row decoder's (it flags it)
        good[np.repeat(np.arange(len(nr)), nr)[over]] = False
        r_off, rv = _sub_ragged(r_off, rv, np.flatnonzero(good), len(nr))
    s_off, sv = _sacks(u8, p + msg.REQUEST_HEAD_LEN, np.where(good, ns, 0))
    nul = ~good
    d["req_type"] = np.where(good, rtype.astype(np.int16), np.int16(-1))
    d["ucont_len"] = ulen.astype(np.uint16)
    d["app_len"] = end - q2
    d["sacks"], d["ranges"] = s_off, r_off
    lists["sacks"], lists["ranges"] = sv, rv
    for f in ("req_type", "app_len", "sacks", "ranges"):
        m[f] = nul.copy()  # (one array each: the row decoder's rows are laid over each)
    return good


def _responses(u8, G, sel, p, n, d: dict, m: dict) -> tuple[np.ndarray, np.ndarray]:
    """Responses with a FULL or MINIMAL continuation and no chunk or one DATA chunk filling
    the rest (`batches._fast_response`'s inline case, and `parse.response_row`'s MINIMAL
    one) among `sel`: their fields into `d` / `m` (``ucont_len`` where they are); returns
    which rows, and which of them are MINIMAL."""
    size = len(u8)
    v = G.view(_RESP_DT)[:, 0]
    ulen = v["ucont_len"].astype(np.int64)
    ctype = v["cont_type"]
    end = p + n
    mini = ctype == MINIMAL  # (the MINIMAL form is the FULL one's prefix)
    hl = np.where(mini, msg.RESPONSE_MINIMAL_LEN, msg.RESPONSE_FULL_LEN)
    c = p + hl + ulen
    good = (sel & (n >= hl) & (c <= end)
            & (mini | (((ctype == FULL1) | (ctype == FULL2)) & (v["state"] < 3))))
    chunk = good & (c < end) & (c + msg.CHUNK_HEADER_LEN <= end)
    cc = np.where(chunk, c, 0)
    tf = u8[np.minimum(cc, size - 1)]
    clen = _be(u8, np.minimum(cc + 1, size - 2), 2)
    one = (chunk & (tf >> 4 == msg.CHUNK_DATA) & (cc + clen == end)
           & (clen >= msg.DATA_CHUNK_OVERHEAD))
    good &= (c == end) | one
    one &= good
    d["nonce"] = v["nonce"].astype(np.uint32)
    d["siblings"] = v["siblings"].astype(np.uint8)
    d["position"] = v["position"].astype(np.uint8)
    d["ucont_len"] = np.where(good, ulen, d["ucont_len"]).astype(np.uint16)
    d["data_start"] = _be(u8, np.where(one, cc + msg.CHUNK_HEADER_LEN, 0), 4).astype(np.uint32)
    d["data_len"] = np.where(one, clen - msg.DATA_CHUNK_OVERHEAD, 0)
    d["fin"] = one & ((tf & msg.FLAG_FIN) != 0)
    nul = ~good
    for f in ("nonce", "siblings", "position"):
        m[f] = nul.copy()
    m["data_start"] = ~one
    return good, mini & good


def _ragged_u32(u8, first: np.ndarray, counts: np.ndarray, width: int):
    """Offsets and `width` u32 columns of `counts[i]` records of 4*width bytes at first[i]."""
    off = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=off[1:])
    m = int(off[-1])
    at = np.repeat(first - off[:-1] * 4 * width, counts) + np.arange(m) * 4 * width
    return off, *[_be(u8, at + 4 * j, 4) for j in range(width)]


def _sacks(u8, first: np.ndarray, ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    off, left, right, summ = _ragged_u32(u8, first, ns, 3)
    return off, np.stack([left, right, summ], axis=1)


def _sub_ragged(off: np.ndarray, vals: np.ndarray, keep: np.ndarray, k: int):
    """The list column of `k` rows with only rows `keep`'s lists (the others empty)."""
    counts = np.zeros(k, np.int64)
    counts[keep] = off[1:][keep] - off[:-1][keep]
    new = np.zeros(k + 1, np.int64)
    np.cumsum(counts, out=new[1:])
    at = np.repeat(off[:-1] - new[:-1], counts) + np.arange(int(new[-1]))
    return new, vals[at]


MAC_PSEUDO_PACK = MAC_PSEUDO.pack


def verify(cols: PacketColumns, cont: np.ndarray, rows: np.ndarray, verifier) -> None:
    """mac_ok / nonce_ok of the vector rows `rows` with the secret (`cont`: every row's
    continuation bytes): the row decoder's `Verifier`, row by row (an HMAC each; the one
    implementation of both checks)."""
    d = cols.data
    mac_ok, nonce_ok, nonce_null = d["mac_ok"], d["nonce_ok"], cols.mask["nonce_ok"]
    full = ~cols.mask["mac"]
    cols.mask["mac_ok"][rows] = ~full[rows]  # (a MINIMAL continuation has no MAC)
    nonce_null[rows] = False
    full = full.tolist()
    req = (d["direction"] == 0).tolist()
    src, dst = d["src"].tolist(), d["dst"].tolist()
    sport, dport = d["sport"].tolist(), d["dport"].tolist()
    epoch, cid, base = d["key_epoch"].tolist(), d["conn_id"].tolist(), d["tcp_base"].tolist()
    cseq, nonce = d["cont_seq"].tolist(), d["nonce"].tolist()
    so = d["sacks"].tolist()
    sv = cols.lists["sacks"].tolist()
    body = cont.tobytes()
    for i in rows.tolist():
        a, b = src[i].to_bytes(4, "big"), dst[i].to_bytes(4, "big")
        if req[i]:
            pseudo = MAC_PSEUDO_PACK(a, b, sport[i], dport[i])
            sk = [tuple(x) for x in sv[so[i]:so[i + 1]]]
            ok = verifier.sacks_ok(cid[i], base[i], sk)
            nonce_null[i] = ok is None
            nonce_ok[i] = bool(ok)
        elif not full[i]:
            nonce_ok[i] = nonce[i] == 0  # (`parse.response_row`'s rule for MINIMAL)
            continue
        else:
            pseudo = MAC_PSEUDO_PACK(b, a, dport[i], sport[i])
            nonce_ok[i] = verifier.nonces.packet_nonce(cid[i], base[i], cseq[i]) == nonce[i]
        mac_ok[i] = verifier.mac_ok(pseudo, body[i * FULL_LEN:(i + 1) * FULL_LEN], epoch[i])
