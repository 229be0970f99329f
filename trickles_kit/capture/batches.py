"""The decoder's hot loop: batches of IPv4 datagrams -> the flat packet table (`capture.rows`).

Why it looks the way it does: this is where a capture's time goes (a quarter-million packets a
second is the target). The two shapes of a bulk transfer — a NORMAL/SLOWSTART/FIN request with a
FULL continuation, a response with one DATA chunk — are decoded by `_fast_request` /
`_fast_response` straight from the buffer into tuples extended onto one list; nothing per row
outlives the loop. The SACK blocks and byte ranges of a fast-path request go to two value lists
(`rows.ragged`), so no per-row container is made either. Everything else (IP options, UDP,
errors, the other direction when a guess fails) takes the general path of `capture.parse`.
"""

from __future__ import annotations

import gc
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain, repeat

from trickles_kit.capture.parse import Verifier, bad_row, chunks, request_row, response_row
from trickles_kit.capture.rows import row_getter
from trickles_kit.wire.continuation import FULL1, FULL2, FULL_LEN, MAC_PSEUDO
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    CHUNK_DATA,
    CHUNK_HEADER_LEN,
    DATA_CHUNK_OVERHEAD,
    FLAG_FIN,
    MAX_RANGES,
    MAX_SACKS,
    RANGE,
    REQ_NAMES,
    REQUEST_CONT_OFFSET,
    REQUEST_FULL_TYPES,
    REQUEST_HEAD,
    REQUEST_HEAD_LEN,
    REQUEST_STATE_AT,
    RESPONSE_CONT_OFFSET,
    RESPONSE_FULL,
    RESPONSE_FULL_LEN,
    RESPONSE_STATE_AT,
    SACK_BLOCK,
    SACK_BLOCKS,
    U32,
)
from trickles_kit.wire.segment import (
    HEADER_LEN,
    IPV4_HEAD,
    IPV4_LEN,
    IPV4_TCP_HEAD,
    OPT_EXID,
    OPT_KIND,
    SYN,
    TCP_HEAD,
    UDP_LEN,
    decode_segment,
)

__all__ = ["MAX_NAMES", "MIN_NUMPY", "decode_batches", "decode_rows"]

# every byte layout and offset below is wire's (`wire.segment`, `wire.messages`): bound to
# local names here, the loop reads them as fast as its own copies. `_fast_request` /
# `_fast_response` walk the same shapes as `wire.flat` (which `capture.parse` calls) inline:
# the extra call and tuple per packet cost the loop 4-8 % (measured, checksums off)
_U32 = 0xFFFFFFFF
_IP = IPV4_HEAD
_TCP = TCP_HEAD
_IPTCP = IPV4_TCP_HEAD
_PSEUDO = MAC_PSEUDO
_FULL_TYPES = frozenset((FULL1, FULL2))
_REQ_NAME = [REQ_NAMES.get(i) for i in range(256)]
_SACKS_N = [s.unpack_from for s in SACK_BLOCKS]  # n blocks, flat
_MIN_IPTCP = IPV4_LEN + HEADER_LEN  # the one-unpack layout's length (48)
_SACK_LEN, _RANGE_LEN = SACK_BLOCK.size, RANGE.size
_PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 41: "ipv6_in_ip", 47: "gre",
                50: "esp", 89: "ospf", 132: "sctp"}
MAX_NAMES = 1 << 16  # cached address pairs (a cache: cleared when full, memory stays bounded)


class _Table:
    """What the loop appends to and what it knows across batches."""

    __slots__ = ("flat", "svals", "rvals", "syn_ports", "names", "errors", "verifier",
                 "service_port", "checksums", "flatten")

    def __init__(self, flat: list, svals: list, rvals: list, syn_ports: set, errors: Counter,
                 verifier: Verifier | None, service_port: int | None, checksums: bool) -> None:
        self.flat, self.svals, self.rvals, self.syn_ports = flat, svals, rvals, syn_ports
        self.names: dict[int, tuple[str, str, bytes, bytes]] = {}
        self.errors = errors
        self.verifier = verifier
        self.service_port = service_port
        self.checksums = checksums
        self.flatten = row_getter()


def decode_rows(spans: Iterable[tuple], service_port: int | None,
                verifier: Verifier | None, errors: Counter,
                checksums: bool = True, promote: bool = False) -> tuple[list, list, list, set]:
    """The table of every Trickles segment in `spans` (`PcapReader.spans` batches), flat: `NF`
    values per row in `ROW_FIELDS` order, its two value lists and the service ports."""
    flat: list = []
    svals: list[int] = []
    rvals: list[int] = []
    syn_ports: set[int] = set()
    for _ in decode_batches(spans, service_port, verifier, errors, checksums, promote, flat,
                            svals, rvals, syn_ports):
        pass
    return flat, svals, rvals, ({service_port} if service_port is not None else syn_ports)


def decode_batches(spans: Iterable[tuple], service_port: int | None,
                   verifier: Verifier | None, errors: Counter, checksums: bool, promote: bool,
                   flat: list, svals: list, rvals: list, syn_ports: set) -> Iterator[bool]:
    """Append the rows of each batch of `spans` to `flat` (`NF` values per row in `ROW_FIELDS`
    order; SACK blocks and ranges of fast-path requests to `svals` / `rvals`), then yield True:
    the caller may take the batch's rows and clear the three lists (offsets in a batch are
    relative to the lists' contents at its start) — or let them grow into one table. Service
    ports learned from SYNs go to `syn_ports`.

    Offsets are absolute in the batch's buffer (datagram = buf[b:e]). TCP checksums of IPv4
    datagrams without options come precomputed per batch when numpy is there
    (`_batch_checksums`); any other is summed in the loop (`_cksum_ok`).
    """
    tab = _Table(flat, svals, rvals, syn_ports, errors, verifier, service_port, checksums)
    index = -1
    if promote:
        # the table's three lists live as long as the Capture and will hold millions of
        # references: a young-generation collection now (a few thousand objects) moves them,
        # still empty, to the oldest generation, so that no young pass ever walks them — that
        # walk, all items cache-cold, cost about a tenth of the decode
        gc.collect(1)
    for d, tss, starts, ends in spans:
        if len(tab.names) > MAX_NAMES:
            tab.names.clear()
        verdicts = _batch_checksums(d, starts, ends) if checksums else None
        index, not_trickles = _decode_batch(tab, d, tss, starts, ends, verdicts, index)
        if not_trickles:
            errors["not_trickles"] += not_trickles
        yield True


def _decode_batch(tab: _Table, d, tss: list, starts: list, ends: list,
                  verdicts: list[bool] | None, index: int) -> tuple[int, int]:
    """One batch into the table: (the last record index, datagrams that were not Trickles).

    The common layout (IPv4 without options, raw IP 253 or TCP, our encoder's option) is read
    here in one unpack; the rest go to `_other_headers` / `_option_scan`."""
    extend = tab.flat.extend
    names = tab.names
    errors = tab.errors
    syn_ports = tab.syn_ports
    # the direction rule's ports: the given service port, else those learned from SYNs
    ports = syn_ports if tab.service_port is None else {tab.service_port}
    checksums = tab.checksums
    iptcp_unpack = _IPTCP.unpack_from
    fast_request, fast_response = _fast_request, _fast_response
    not_trickles = 0
    for ts, b, e, ok in zip(tss, starts, ends, verdicts or repeat(None), strict=False):
        index += 1
        n = e - b
        if n >= _MIN_IPTCP and d[b] == 0x45 and d[b + 9] != 17:
            # no IP options, raw IP 253 / TCP: IP and TCP headers in one unpack
            (total, frag, proto, addrs, sport, dport, seq, ack, offb, flags, win, okind,
             olen, exid, tlen) = iptcp_unpack(d, b)
            if frag & 0x3FFF or (proto != 253 and proto != 6):
                not_trickles += 1
                errors["not_trickles." + ("fragment" if frag & 0x3FFF else _PROTO_NAMES.get(
                    proto, f"proto_{proto}"))] += 1
                continue
            carrier = "ip253" if proto == 253 else "tcp"
            p0 = b + IPV4_LEN
            cut = total > n
            end = e if cut or total < IPV4_LEN else b + total
        else:
            h = _other_headers(tab, d, b, e, index, ts)
            if h is None:
                continue
            (carrier, p0, cut, end, total, addrs, sport, dport, seq, ack, offb, flags, win,
             okind, olen, exid, tlen) = h
            ok = None  # (the batch verdicts assume the common layout)
        seglen = end - p0
        hlen = (offb >> 4) << 2
        if not (okind == OPT_KIND and olen == 6 and exid == OPT_EXID
                and HEADER_LEN <= hlen <= seglen):
            tlen = _option_scan(tab, d, p0, end, seglen, hlen, carrier, addrs, index, ts, total)
            if tlen is None:
                continue
        err = "snaplen" if cut else None
        if checksums and not cut:
            if ok is None:
                ok = _cksum_ok(d, b, p0, end, seglen)
            if not ok:
                err = "decode.checksum"
        if flags & SYN:
            # the role, not the flags, says which end is the service: a request carries
            # option value 0, an answer its header length (a client may send SYN|ACK)
            syn_ports.add(dport if tlen == 0 else sport)
        nm = names.get(addrs)
        if nm is None:
            nm = _names(names, addrs)
        src, dst, src_b, dst_b = nm
        by_port = dport in ports or sport in ports  # else the payload's shape decides
        is_req = dport in ports if by_port else tlen == 0
        p = p0 + hlen
        if is_req:
            tail = fast_request(d, p, end, err, src_b, dst_b, sport, dport, tab)
            if tail is not None:
                extend((index, ts, "request", src, dst, sport, dport, carrier, total, seq, ack,
                        flags, win, tlen))
                extend(tail)
                continue
        else:
            tail = fast_response(d, p, end, err, src_b, dst_b, sport, dport, tab, by_port)
            if tail is not None:
                extend((index, ts, "response", src, dst, sport, dport, carrier, total, seq,
                        ack, flags, win, tlen))
                extend(tail)
                continue
        _general(tab, (index, ts, "", src, dst, sport, dport, carrier, total, seq, ack, flags,
                       win, tlen), d, p, end, err, src_b, dst_b, is_req, by_port)
    return index, not_trickles


def _fast_request(d, p: int, end: int, err: str | None, src_b: bytes, dst_b: bytes,
                  sport: int, dport: int, tab: _Table, _head=REQUEST_HEAD.unpack_from,
                  _types=REQUEST_FULL_TYPES, _full=_FULL_TYPES, _sack=SACK_BLOCK.unpack_from,
                  _sacks_n=_SACKS_N, _range=RANGE.unpack_from, _name=_REQ_NAME,
                  _hl=REQUEST_HEAD_LEN, _ct=REQUEST_CONT_OFFSET, _st=REQUEST_STATE_AT,
                  _sl=_SACK_LEN, _rl=_RANGE_LEN, _ms=MAX_SACKS, _mr=MAX_RANGES,
                  _cl=FULL_LEN) -> tuple | None:
    """The row after its TCP fields for a NORMAL / SLOWSTART / FIN request with a FULL
    continuation (wire's `REQUEST_HEAD` layout, docs §2), or None: the general path decides."""
    if not (end - p >= _hl and d[p] in _types and d[p + _ct] in _full and d[p + _st] < 3):
        return None
    (rtype, ctype, cseq, fc, cs, par, cts, sts, mrtt, state, fl, fbs, sc, ss, base, cid, epoch,
     mac, nsacks) = _head(d, p)
    q = p + _hl + _sl * nsacks
    if nsacks > _ms or q + 3 > end:
        return None
    # the blocks' values (L, R, summary, L, ...): see `rows.ragged`
    sk = _sack(d, p + _hl) if nsacks == 1 else _sacks_n[nsacks](d, p + _hl)
    ulen = (d[q] << 8) | d[q + 1]
    o = q + 2 + ulen
    if o >= end:
        return None
    nr = d[o]
    q = o + 1 + _rl * nr
    if nr > _mr or q > end:
        return None
    if nr == 1:
        lo, hi = _range(d, o + 1)
        hi += lo
        rk: tuple = (lo, hi)
    else:
        rk = tuple(chain.from_iterable((x, x + y) for x, y in RANGE.iter_unpack(d[o + 1 : q])))
        hi = max(rk[1::2]) if nr else 0
    if hi > 0x100000000:
        return None
    mac_ok = nonce_ok = None
    verifier = tab.verifier
    if verifier is not None:
        mac_ok = verifier.mac_ok(_PSEUDO.pack(src_b, dst_b, sport, dport),
                                 d[p + _ct : p + _ct + _cl], epoch)
        nonce_ok = verifier.sacks_ok(cid, base, list(zip(*[iter(sk)] * 3, strict=True)))
    svals, rvals = tab.svals, tab.rvals
    sacks = (len(svals) << 7) | nsacks
    svals.extend(sk)
    ranges = (len(rvals) << 7) | nr
    rvals.extend(rk)
    if err is not None:
        tab.errors["flagged"] += 1
        tab.errors["flagged." + err] += 1
    return (_name[rtype], ctype, cseq, fc, cs, par, cts, sts, mrtt, state, fl, fbs, sc, ss, base,
            cid, epoch, mac, None, None, None, ulen, sacks, ranges, end - q, None, 0, False, None,
            mac_ok, nonce_ok, err)


def _fast_response(d, p: int, end: int, err: str | None, src_b: bytes, dst_b: bytes,
                   sport: int, dport: int, tab: _Table, by_port: bool,
                   _resp=RESPONSE_FULL.unpack_from, _full=_FULL_TYPES, _u32=U32.unpack_from,
                   _rl=RESPONSE_FULL_LEN, _ct=RESPONSE_CONT_OFFSET, _st=RESPONSE_STATE_AT,
                   _ch=CHUNK_HEADER_LEN, _dk=CHUNK_DATA, _dh=DATA_CHUNK_OVERHEAD,
                   _fin=FLAG_FIN) -> tuple | None:
    """The row after its TCP fields for a response with a FULL continuation (wire's
    `RESPONSE_FULL` layout; one DATA chunk read inline, other chunks walked), or None: the
    general path decides."""
    if not (end - p >= _rl and d[p + _ct] in _full and d[p + _st] < 3):
        return None
    (nonce, sib, pos, ulen, ctype, cseq, fc, cs, par, cts, sts, mrtt, state, fl, fbs, sc, ss,
     base, cid, epoch, mac) = _resp(d, p)
    c = p + _rl + ulen
    if c > end:
        return None
    ds = fh = None
    dl = 0
    fin = False
    if c < end:
        tf = d[c]
        clen = (d[c + 1] << 8) | d[c + 2] if c + _ch <= end else 0
        if tf >> 4 == _dk and c + clen == end and clen >= _dh:  # one DATA chunk
            ds = _u32(d, c + _ch)[0]
            dl = clen - _dh
            fin = bool(tf & _fin)
        else:
            ds, dl, fin, fh, cerr = chunks(d, c, end)
            if cerr is not None:
                if not by_port:
                    return None  # maybe not a response after all: the general path tries both
                if err is None:
                    err = cerr
    mac_ok = nonce_ok = None
    verifier = tab.verifier
    if verifier is not None:
        mac_ok = verifier.mac_ok(_PSEUDO.pack(dst_b, src_b, dport, sport), d[p + _ct : p + _rl],
                                 epoch)
        nonce_ok = verifier.nonces.packet_nonce(cid, base, cseq) == nonce
    if err is not None:
        tab.errors["flagged"] += 1
        tab.errors["flagged." + err] += 1
    return (None, ctype, cseq, fc, cs, par, cts, sts, mrtt, state, fl, fbs, sc, ss, base, cid,
            epoch, mac, nonce, sib, pos, ulen, None, None, None, ds, dl, fin, fh, mac_ok,
            nonce_ok, err)


def _general(tab: _Table, head: tuple, d, p: int, end: int, err: str | None, src_b: bytes,
             dst_b: bytes, is_req: bool, by_port: bool) -> None:
    """Every other shape through `capture.parse`; when the direction was only guessed and the
    guess does not decode, the other direction is tried."""
    verifier = tab.verifier
    first, second = (request_row, response_row) if is_req else (response_row, request_row)
    row = first(head, d, p, end, err, src_b, dst_b, verifier)
    if row.error is not None and row.error != err and not by_port:
        alt = second(head, d, p, end, err, src_b, dst_b, verifier)
        if alt.error == err:
            row = alt
    if row.error is not None:
        tab.errors["flagged"] += 1
        tab.errors["flagged." + row.error] += 1
    tab.flat.extend(tab.flatten(row))


def _other_headers(tab: _Table, d, b: int, e: int, index: int, ts: float) -> tuple | None:
    """IPv4 with options, a UDP carrier, short datagrams: the header fields the loop needs, or
    None when the datagram is not Trickles (counted) or is a flagged row (appended)."""
    errors = tab.errors
    n = e - b
    if n < IPV4_LEN:
        return _skip(errors, "ip_short")
    vihl, total, frag, proto, addrs = _IP.unpack_from(d, b)
    ihl = (vihl & 15) << 2
    if vihl >> 4 != 4 or ihl < IPV4_LEN or ihl > n:
        return _skip(errors, "ip_header")
    if frag & 0x3FFF:
        return _skip(errors, "fragment")
    if proto == 253:
        carrier, p0 = "ip253", b + ihl
    elif proto == 17:
        carrier, p0 = "udp", b + ihl + UDP_LEN
    elif proto == 6:
        carrier, p0 = "tcp", b + ihl
    else:
        return _skip(errors, _PROTO_NAMES.get(proto, f"proto_{proto}"))
    cut = total > n
    end = e if cut or total < ihl else b + total
    seglen = end - p0
    if seglen < 26:
        if carrier != "ip253" or seglen < 4:
            return _skip(errors, "short" if carrier == "ip253" else carrier)
        _flag(tab, bad_row(index, ts, d, p0, end, _names(tab.names, addrs), carrier, total,
                           "decode.short"))
        return None
    return (carrier, p0, cut, end, total, addrs, *_TCP.unpack_from(d, p0))


def _option_scan(tab: _Table, d, p0: int, end: int, seglen: int, hlen: int, carrier: str,
                 addrs: int, index: int, ts: float, total: int) -> int | None:
    """Not our encoder's option layout: the codec's own option scan (no addresses: no checksum
    here). The Trickles option's value, or None (not Trickles, or a flagged row)."""
    if seglen < 20 or hlen < 20 or hlen > seglen:
        reason = "short" if seglen < 20 else "offset"
    else:
        try:
            return decode_segment(d[p0:end]).trickles_len
        except DecodeError as ex:
            reason = ex.reason
    if carrier != "ip253":
        return _skip(tab.errors, carrier)
    _flag(tab, bad_row(index, ts, d, p0, end, _names(tab.names, addrs), carrier, total,
                       "decode." + reason))
    return None


def _skip(errors: Counter, why: str) -> None:
    errors["not_trickles"] += 1
    errors["not_trickles." + why] += 1
    return None


def _flag(tab: _Table, row) -> None:
    tab.flat.extend(tab.flatten(row))
    tab.errors["flagged"] += 1
    tab.errors["flagged." + row.error] += 1


def _names(names: dict, addrs: int) -> tuple[str, str, bytes, bytes]:
    """(src, dst, src bytes, dst bytes) of the IPv4 address pair `addrs` (a 64-bit int)."""
    nm = names.get(addrs)
    if nm is None:
        src_b, dst_b = (addrs >> 32).to_bytes(4, "big"), (addrs & _U32).to_bytes(4, "big")
        nm = names[addrs] = (socket.inet_ntoa(src_b), socket.inet_ntoa(dst_b), src_b, dst_b)
    return nm


def _cksum_ok(d, b: int, p0: int, end: int, seglen: int) -> bool:
    """The TCP checksum of segment d[p0:end] of the datagram at d[b:] (pseudo-header protocol
    6, as the codec)."""
    # the ones'-complement sum of 16-bit words is the big-endian integer mod 0xFFFF
    # (2^16 = 1); with no IP options the addresses and the segment are contiguous
    v = int.from_bytes(d[b + 12 if p0 == b + 20 else p0 : end], "big") % 0xFFFF
    if seglen & 1:  # the pad byte: (segment | 0) = segment * 256
        v <<= 8
    if p0 != b + 20:
        v += int.from_bytes(d[b + 12 : b + 20], "big")
    return not (v + 6 + seglen) % 0xFFFF


MIN_NUMPY = 256  # batches smaller than this are summed in Python (no numpy import)


def _batch_checksums(buf, starts: list[int], ends: list[int]) -> list[bool] | None:
    """TCP checksum verdicts of a batch, for the loop's no-IP-options layout, with numpy.

    Per datagram buf[b:e] whose first byte is 0x45 (others get a meaningless value the loop
    ignores): the sum of buf[b+12:end] (addresses + segment), end = b + the IP total length
    unless that is out of bounds (then e), as `_cksum_ok`. 16-bit words summed per segment with
    one ``add.reduceat`` per word alignment, on the buffer itself (the mapped file): a few ns
    per segment instead of about 2 us for Python's big-int conversion of a full-size segment.
    None (the loop sums in Python) when numpy is missing or the batch is small.
    """
    k = len(starts)
    if k < MIN_NUMPY:
        return None
    np = _numpy()
    if np is None:
        return None
    size = len(buf)
    u8 = np.frombuffer(buf, dtype=np.uint8)
    b = np.array(starts, dtype=np.int64)
    e = np.array(ends, dtype=np.int64)
    n = e - b
    hb = np.minimum(b + 3, size - 1)  # the total-length bytes (in bounds for any datagram)
    total = (u8[hb - 1].astype(np.int64) << 8) | u8[hb]
    end = np.where((total > n) | (total < 20), e, b + total)
    start = np.minimum(b + 12, end)  # empty for short datagrams (not judged here)
    words = (end - start) >> 1
    sums = np.zeros(k, dtype=np.int64)
    for par in (0, 1):  # segments at even / odd offsets of the buffer
        sel = np.flatnonzero(((start & 1) == par) & (words > 0))
        if not len(sel):
            continue
        # the batch's part of the buffer only: reduceat's last sum runs to the array's end
        first = int(start[sel[0]])
        base = first - ((first - par) & 1)
        count = min((int(end[sel].max()) - base) >> 1, (size - base) >> 1)
        w = np.frombuffer(buf, dtype="<u2", offset=base, count=count)
        a = (start[sel] - base) >> 1
        idx = np.empty(2 * len(sel), dtype=np.int64)
        idx[0::2] = a
        idx[1::2] = np.minimum(a + words[sel], len(w) - 1)
        # a segment's sum fits 32 bits (at most 32767 words of 0xFFFF)
        s = np.add.reduceat(w, idx, dtype=np.uint32)[0::2].astype(np.int64)
        for i in np.flatnonzero(a + words[sel] == len(w)).tolist():  # ends the buffer
            s[i] = int(w[a[i]:].sum(dtype=np.uint64))
        sums[sel] = s % 0xFFFF
    # little-endian words: the big-endian sum is 256 x the little-endian one (mod 0xFFFF)
    v = sums * 256
    seglen = end - b - 20
    odd = np.flatnonzero((seglen & 1) & (end > start))
    if len(odd):  # the pad byte: the last byte, high half of a word
        v[odd] += u8[end[odd] - 1].astype(np.int64) << 8
    v += seglen + 6
    ok = (v % 0xFFFF) == 0
    return ok.tolist()


_NUMPY: list = []


def _numpy():
    """numpy, or None when it is not installed (imported once, on the first large batch)."""
    if not _NUMPY:
        try:
            import numpy
        except ImportError:
            numpy = None
        _NUMPY.append(numpy)
    return _NUMPY[0]


