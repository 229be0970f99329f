"""Vectorised decode of one batch of IPv4 datagrams into `PacketColumns`.

Why: the Trickles header and continuation sit at fixed offsets, so a batch of datagrams is one
(k, 131)-byte array (a row per datagram, copied out of the mapped window at once) read through a
numpy structured view; the variable parts (SACK blocks, ranges, the DATA chunk) are found by
offset arithmetic on whole arrays. Only the two shapes of a bulk transfer are read here — the
very shapes `capture.batches` reads inline (`_fast_request` / `_fast_response`), with the same
conditions; every other datagram (SYNs, MINIMAL continuations, checksum failures, IP options,
UDP, delta-encoded requests...) is marked for the row decoder, which stays the one
implementation of those rules (`capture.columnar` merges both).
"""

from __future__ import annotations

import re
import struct

import numpy as np

from trickles_kit.capture.columns import KINDS, PacketColumns
from trickles_kit.wire.continuation import FULL1, FULL2, FULL_FORMAT, FULL_LEN, MAC_PSEUDO
from trickles_kit.wire.messages import (
    CHUNK_DATA,
    CHUNK_HEADER_LEN,
    DATA_CHUNK_OVERHEAD,
    FLAG_FIN,
    MAX_RANGES,
    MAX_SACKS,
    RANGE,
    REQUEST_CONT_OFFSET,
    REQUEST_HEAD,
    REQUEST_HEAD_LEN,
    RESPONSE_CONT_OFFSET,
    RESPONSE_FULL,
    RESPONSE_FULL_LEN,
    SACK_BLOCK,
)
from trickles_kit.wire.segment import HEADER_LEN, IPV4_TCP_HEAD, OPT_EXID, OPT_KIND, SYN

__all__ = ["WIDTH", "Scan", "scan_batch"]

_P = 20 + HEADER_LEN  # the payload of a datagram without IP options, our option layout (48)
WIDTH = _P + RESPONSE_FULL_LEN  # bytes read per datagram at fixed offsets (131)
_SL, _RL = SACK_BLOCK.size, RANGE.size
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
_REQ_DT = _dtype(layout(REQUEST_HEAD, ["rtype", *_CONT_NAMES, "nsacks"], _P))
_RESP_DT = _dtype(layout(RESPONSE_FULL, ["nonce", "siblings", "position", "ucont_len",
                                         *_CONT_NAMES], _P))


class Scan:
    """What `scan_batch` found: the vector rows (`parts`: requests, responses; each row's
    `index` its position in the batch; `raws` their fixed bytes), the positions left to the
    row decoder (`rest`), and the SYN ports in batch order (`syns`: (position, port) for each
    datagram with our layout and the SYN flag)."""

    __slots__ = ("parts", "raws", "rest", "syns")

    def __init__(self, parts, raws, rest, syns) -> None:
        self.parts, self.raws, self.rest, self.syns = parts, raws, rest, syns


def _be(u8: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Big-endian unsigned integers of `width` (1, 2 or 4) bytes at `pos` (int64; a position
    too close to the end reads the last `width` bytes: callers mask those rows out)."""
    if len(u8) < width:
        return np.zeros(len(pos), np.int64)
    at = np.minimum(pos, len(u8) - width)
    if width == 1:
        return u8[at].astype(np.int64)
    rows = u8[(at[:, None] + np.arange(width)).ravel()]  # one flat gather: (k * width) bytes
    return rows.view(f">u{width}").astype(np.int64)


def header_stage(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """(G, head, ok, harmless): the fixed bytes of every datagram, its header view, which
    datagrams have our common layout (IPv4 without options, IP 253 or TCP, our option,
    TCP header length 28, whole), and which cannot be Trickles whatever follows."""
    size = len(u8)
    n = ends - starts
    room = (starts + WIDTH <= size) & (n >= _P)
    sw = np.lib.stride_tricks.sliding_window_view(u8, WIDTH) if size >= WIDTH else None
    s = np.where(room, starts, 0)
    G = sw[s] if sw is not None else np.zeros((len(starts), WIDTH), np.uint8)
    head = G.view(_HEAD_DT)[:, 0]
    total = head["total"].astype(np.int64)
    proto = head["proto"]
    frag = (head["frag"] & 0x3FFF) != 0
    ok = (room & (head["b0"] == 0x45) & ~frag & ((proto == 253) | (proto == 6))
          & (head["okind"] == OPT_KIND) & (head["olen"] == 6) & (head["exid"] == OPT_EXID)
          & ((head["offb"] >> 4) == HEADER_LEN // 4) & (total <= n) & (total >= _P))
    # cannot be Trickles: the header fields from G where it holds them, else read here
    b0, pr, fr = head["b0"].copy(), proto.copy(), frag.copy()
    out = np.flatnonzero(~room)
    if len(out) and size:
        at = starts[out]
        b0[out] = u8[np.minimum(at, size - 1)]
        pr[out] = u8[np.minimum(at + 9, size - 1)]
        fr[out] = (_be(u8, np.minimum(at + 6, max(size - 2, 0)), 2) & 0x3FFF) != 0
    ihl = (b0 & 15).astype(np.int64) << 2
    harmless = ((n < 20) | (b0 >> 4 != 4) | (ihl < 20) | (ihl > n) | fr
                | ((pr != 6) & (pr != 17) & (pr != 253)))
    return G, head, ok, harmless, total


def scan_batch(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, ts: np.ndarray,
               cksum: bool, is_req_of, strict: bool) -> Scan | None:
    """Decode the datagrams u8[starts[i]:ends[i]] (`ts` their times) that have the two bulk
    shapes; `cksum`: verify TCP checksums (a failure is left to the row decoder, which flags
    it); ``is_req_of(head, ok, syns)``
    the direction rule's verdicts (request?, decided by port?). None when `strict` (ports are
    being learned) and a datagram might be a Trickles segment of another layout: its SYN could
    teach a port, so the caller decodes the whole batch in order."""
    G, head, ok, harmless, total = header_stage(u8, starts, ends)
    if strict and not (ok | harmless).all():
        return None
    syn = ok & ((head["flags"] & SYN) != 0)
    sp = np.flatnonzero(syn)
    syn_port = np.where(head["tlen"][sp] == 0, head["dport"][sp], head["sport"][sp])
    syns = list(zip(sp.tolist(), syn_port.tolist(), strict=True))
    is_req, _ = is_req_of(head, ok, syns)
    vec = ok & ~syn
    end = starts + total
    if cksum:
        vec &= checksums_ok(u8, starts, end, vec)
    p = starts + _P
    req_cols, rq = _requests(u8, G, head, vec & is_req, p, end)
    resp_cols, rs = _responses(u8, G, head, vec & ~is_req, p, end)
    taken = np.zeros(len(starts), bool)
    for cols, pos in ((req_cols, rq), (resp_cols, rs)):
        _fill_head(cols, head, pos, ts, total)
        taken[pos] = True
    rest = np.flatnonzero(~taken)
    return Scan([req_cols, resp_cols], [G[rq], G[rs]], rest, syns)


def checksums_ok(u8: np.ndarray, starts: np.ndarray, end: np.ndarray, sel: np.ndarray
                 ) -> np.ndarray:
    """The TCP checksum verdicts of the datagrams `sel` (IPv4 without options: the sum runs
    over the addresses and the segment, u8[start + 12:end], pseudo-header protocol 6) — the
    codec's rule, as `batches._cksum_ok` / `_batch_checksums` compute it, in one pass.

    Why one pass: the sum of 16-bit words mod 0xFFFF only depends on each byte's weight, 1 or
    256 (256 * 256 = 1 mod 0xFFFF). Summing the little-endian words of the even-aligned span
    [a, z) around [s, e) (one ``add.reduceat`` for every segment of the batch, whatever its
    alignment) gives even bytes weight 1 and odd ones 256; less the byte before s (s odd) and
    the byte at e (e odd) that span adds, it is the big-endian sum times 256 (s even) or
    itself (s odd): an odd length's pad byte comes out right either way."""
    out = np.zeros(len(starts), bool)
    # (a datagram at the very end of the buffer is left to the row decoder: reduceat needs a
    # word past the last span)
    idx = np.flatnonzero(sel & (((end[:] + 1) & ~1) + 2 <= len(u8)))
    if not len(idx):
        return out
    s = starts[idx] + 12
    e = end[idx]
    a = s & ~1
    z = (e + 1) & ~1
    base = int(a[0])  # the batch's part of the buffer only (reduceat casts all it is given)
    words = np.frombuffer(u8, dtype="<u2", offset=base, count=(int(z[-1]) + 2 - base) >> 1)
    marks = np.empty(2 * len(idx), np.int64)
    marks[0::2] = (a - base) >> 1
    marks[1::2] = (z - base) >> 1
    t = np.add.reduceat(words, marks, dtype=np.uint32)[0::2].astype(np.int64)
    t -= np.where(s & 1, u8[np.maximum(s - 1, 0)], 0)
    t -= np.where(e & 1, u8[np.minimum(e, len(u8) - 1)].astype(np.int64) << 8, 0)
    t %= 0xFFFF
    t = np.where(s & 1, t, t * 256)
    seglen = e - starts[idx] - 20
    out[idx] = (t + 6 + seglen) % 0xFFFF == 0
    return out


def _fill_head(cols: PacketColumns, head, pos: np.ndarray, ts: np.ndarray,
               total: np.ndarray) -> None:
    """The IP / TCP fields of the vector rows (positions `pos`, in order)."""
    d = cols.data
    d["index"] = pos.astype(np.int64)  # (the caller adds the batch's first record index)
    d["t"] = ts[pos]
    d["carrier"] = np.where(head["proto"][pos] == 253, 0, 1).astype(np.int16)
    d["length"] = total[pos]
    for f in ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window"):
        d[f] = head[f][pos].astype(np.dtype(KINDS[f].replace("addr", "u4")))
    d["trickles_len"] = head["tlen"][pos].astype(np.uint16)


def _base(k: int, fields: dict) -> tuple[dict, dict]:
    """Columns of `k` vector rows: the given fields, the header ones to fill, the rest null."""
    data: dict = {}
    mask: dict = {}
    for f, kind in KINDS.items():
        if f in fields:
            data[f] = fields[f]
            continue
        base = kind.rstrip("?")
        if base in ("list3", "list2"):
            data[f] = np.zeros(k + 1, np.int64)
        elif base == "mac":
            data[f] = np.zeros((k, 16), np.uint8)
        elif base in ("cat",):
            data[f] = np.full(k, -1, np.int16)
        else:
            data[f] = np.zeros(k, np.bool_ if base == "b1" else
                               np.dtype(base.replace("addr", "u4")))
        if kind.endswith("?"):
            mask[f] = np.ones(k, bool)
    return data, mask


def _cont_fields(v, at: np.ndarray, out: dict) -> None:
    """The continuation's fields of rows `at` of the structured view `v`."""
    for f, _, _ in _CONT:
        if f == "mac":
            out[f] = np.ascontiguousarray(v[f][at]).view(np.uint8).reshape(-1, 16)
        else:
            out[f] = v[f][at].astype(np.dtype(KINDS[f].rstrip("?")))


def _requests(u8, G, head, sel, p, end) -> tuple[PacketColumns, np.ndarray]:
    """NORMAL / SLOWSTART / FIN requests with a FULL continuation (`batches._fast_request`'s
    conditions): their columns and positions."""
    size = len(u8)
    idx = np.flatnonzero(sel)
    v = G.view(_REQ_DT)[:, 0]  # (fields are read at the rows they are needed for)
    p, end = p[idx], end[idx]
    ns = v["nsacks"][idx].astype(np.int64)
    rtype, ctype = v["rtype"][idx], v["cont_type"][idx]
    good = ((end - p >= REQUEST_HEAD_LEN) & (rtype != 2) & (rtype <= 3)
            & ((ctype == FULL1) | (ctype == FULL2)) & (v["state"][idx] < 3) & (ns <= MAX_SACKS))
    q = p + REQUEST_HEAD_LEN + _SL * ns
    good &= q + 3 <= end
    qc = np.where(good, q, 0)
    ulen = _be(u8, qc, 2)
    o = qc + 2 + ulen
    good &= o < end
    oc = np.where(good, o, 0)
    nr = u8[np.minimum(oc, size - 1)].astype(np.int64)
    q2 = oc + 1 + _RL * nr
    good &= (nr <= MAX_RANGES) & (q2 <= end)
    nr = np.where(good, nr, 0)
    r_off, lo, hi = _ragged_u32(u8, oc + 1, nr, 2)
    hi = lo + hi
    top = np.zeros(len(idx), np.int64)
    if len(hi):
        np.maximum.at(top, np.repeat(np.arange(len(idx)), nr), hi)
    good &= top <= 0x100000000
    keep = np.flatnonzero(good)
    ns, nr, ulen = ns[keep], nr[keep], ulen[keep]
    s_off, sv = _sacks(u8, p[keep] + REQUEST_HEAD_LEN, ns)
    r_off2, rv = _sub_ragged(r_off, np.stack([lo, hi], axis=1), keep)
    fields: dict = {"req_type": rtype[keep].astype(np.int16), "ucont_len": ulen.astype(np.uint16),
                    "sacks": s_off, "ranges": r_off2, "app_len": end[keep] - q2[keep],
                    "direction": np.zeros(len(keep), np.int16)}
    _cont_fields(v, idx[keep], fields)
    data, mask = _base(len(keep), fields)
    for f in ("req_type", "ucont_len", "app_len", "sacks", "ranges", *[c[0] for c in _CONT]):
        mask[f] = np.zeros(len(keep), bool)
    return PacketColumns(len(keep), data, mask, None, {"sacks": sv, "ranges": rv}), idx[keep]


def _responses(u8, G, head, sel, p, end) -> tuple[PacketColumns, np.ndarray]:
    """Responses with a FULL continuation and no chunk or one DATA chunk filling the rest
    (`batches._fast_response`'s inline case): their columns and positions."""
    size = len(u8)
    idx = np.flatnonzero(sel)
    v = G.view(_RESP_DT)[:, 0]  # (fields are read at the rows they are needed for)
    p, end = p[idx], end[idx]
    ulen = v["ucont_len"][idx].astype(np.int64)
    ctype = v["cont_type"][idx]
    c = p + RESPONSE_FULL_LEN + ulen
    good = ((end - p >= RESPONSE_FULL_LEN) & ((ctype == FULL1) | (ctype == FULL2))
            & (v["state"][idx] < 3) & (c <= end))
    chunk = good & (c < end) & (c + CHUNK_HEADER_LEN <= end)
    cc = np.where(chunk, c, 0)
    tf = u8[np.minimum(cc, size - 1)].astype(np.int64)
    clen = _be(u8, np.minimum(cc + 1, size - 2), 2)
    one = chunk & (tf >> 4 == CHUNK_DATA) & (cc + clen == end) & (clen >= DATA_CHUNK_OVERHEAD)
    good &= (c == end) | one
    keep = np.flatnonzero(good)
    one = one[keep]
    ds = _be(u8, np.where(one, cc[keep] + CHUNK_HEADER_LEN, 0), 4)
    at = idx[keep]
    fields: dict = {
        "nonce": v["nonce"][at].astype(np.uint32), "siblings": v["siblings"][at].astype(np.uint8),
        "position": v["position"][at].astype(np.uint8),
        "ucont_len": ulen[keep].astype(np.uint16),
        "data_start": ds.astype(np.uint32), "data_len": np.where(one, clen[keep] - 7, 0),
        "fin": one & ((tf[keep] & FLAG_FIN) != 0),
        "direction": np.ones(len(keep), np.int16),
    }
    _cont_fields(v, at, fields)
    data, mask = _base(len(keep), fields)
    for f in ("nonce", "siblings", "position", "ucont_len", *[c[0] for c in _CONT]):
        mask[f] = np.zeros(len(keep), bool)
    mask["data_start"] = ~one
    return PacketColumns(len(keep), data, mask, None, {"sacks": np.zeros((0, 3), np.int64),
                                                       "ranges": np.zeros((0, 2), np.int64)}
                         ), idx[keep]


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


def _sub_ragged(off: np.ndarray, vals: np.ndarray, keep: np.ndarray):
    starts = off[:-1][keep]
    counts = off[1:][keep] - starts
    new = np.zeros(len(keep) + 1, np.int64)
    np.cumsum(counts, out=new[1:])
    at = np.repeat(starts - new[:-1], counts) + np.arange(int(new[-1]))
    return new, vals[at]


MAC_PSEUDO_PACK = MAC_PSEUDO.pack


def verify(cols: PacketColumns, raw: np.ndarray, verifier) -> None:
    """mac_ok / nonce_ok of the vector rows with the secret: the row decoder's `Verifier`, row
    by row (an HMAC each; the one implementation of both checks)."""
    d = cols.data
    n = cols.n
    mac_ok = np.zeros(n, bool)
    nonce_ok = np.zeros(n, bool)
    nonce_null = np.zeros(n, bool)
    req = (d["direction"] == 0).tolist()
    src, dst = d["src"].tolist(), d["dst"].tolist()
    sport, dport = d["sport"].tolist(), d["dport"].tolist()
    epoch, cid, base = d["key_epoch"].tolist(), d["conn_id"].tolist(), d["tcp_base"].tolist()
    cseq, nonce = d["cont_seq"].tolist(), d["nonce"].tolist()
    so = d["sacks"].tolist()
    sv = cols.lists["sacks"].tolist()
    body = raw.tobytes()
    w = raw.shape[1] if raw.ndim == 2 else 0
    for i in range(n):
        a, b = src[i].to_bytes(4, "big"), dst[i].to_bytes(4, "big")
        at = i * w + _P
        if req[i]:
            pseudo = MAC_PSEUDO_PACK(a, b, sport[i], dport[i])
            cont = body[at + REQUEST_CONT_OFFSET: at + REQUEST_CONT_OFFSET + FULL_LEN]
            sk = [tuple(x) for x in sv[so[i]:so[i + 1]]]
            ok = verifier.sacks_ok(cid[i], base[i], sk)
            nonce_null[i] = ok is None
            nonce_ok[i] = bool(ok)
        else:
            pseudo = MAC_PSEUDO_PACK(b, a, dport[i], sport[i])
            cont = body[at + RESPONSE_CONT_OFFSET: at + RESPONSE_FULL_LEN]
            nonce_ok[i] = verifier.nonces.packet_nonce(cid[i], base[i], cseq[i]) == nonce[i]
        mac_ok[i] = verifier.mac_ok(pseudo, cont, epoch[i])
    d["mac_ok"], d["nonce_ok"] = mac_ok, nonce_ok
    cols.mask["mac_ok"] = np.zeros(n, bool)
    cols.mask["nonce_ok"] = nonce_null
