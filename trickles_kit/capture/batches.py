"""The decoder's hot loop: batches of IPv4 datagrams -> the flat packet table (`capture.rows`).

Why it looks the way it does: this is where a capture's time goes (a quarter-million packets a
second is the target). The two shapes of a bulk transfer — a NORMAL/SLOWSTART/FIN request with a
FULL continuation, a response with one DATA chunk — are read by `wire.flat.request_parts` /
`response_parts` (the loop's one call a packet) and each row extended onto one list as one
tuple; nothing per row outlives the loop. The SACK blocks and byte ranges of a fast-path
request go to two value lists (`rows.ragged`), so no per-row container is made either.
Everything else (IP options, UDP, errors, the other direction when a guess fails) takes the
general path of `capture.parse`.
"""

from __future__ import annotations

import gc
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import repeat

from trickles_kit.capture.parse import Verifier, bad_row, request_row, response_row
from trickles_kit.capture.rows import row_getter
from trickles_kit.wire.continuation import FULL_LEN, MAC_PSEUDO
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.flat import request_parts, response_parts
from trickles_kit.wire.messages import (
    REQ_NAMES,
    REQUEST_CONT_OFFSET,
    RESPONSE_CONT_OFFSET,
    RESPONSE_FULL_LEN,
)
from trickles_kit.wire.segment import (
    HEADER_LEN,
    IPV4_HEAD,
    IPV4_LEN,
    IPV4_TCP_HEAD,
    OPT_EXID,
    OPT_KIND,
    OPT_PREFIX,
    SYN,
    TCP_HEAD,
    UDP_LEN,
    decode_segment,
)

__all__ = ["MAX_NAMES", "MIN_NUMPY", "decode_batches", "decode_rows"]

# every byte layout and offset below is wire's (`wire.segment`, `wire.messages`); the two bulk
# shapes are read by `wire.flat` (one call per packet, the loop's only one)
_U32 = 0xFFFFFFFF
_IP = IPV4_HEAD
_TCP = TCP_HEAD
_IPTCP = IPV4_TCP_HEAD
_PSEUDO = MAC_PSEUDO
_REQ_NAME = [REQ_NAMES.get(i) for i in range(256)]
_MIN_IPTCP = IPV4_LEN + HEADER_LEN  # the one-unpack layout's length (48)
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
                  verdicts: list[bool] | None, index: int, _iptcp=_IPTCP.unpack_from,
                  _req=request_parts, _resp=response_parts, _name=_REQ_NAME) -> tuple[int, int]:
    """One batch into the table: (the last record index, datagrams that were not Trickles).

    The common layout (IPv4 without options, raw IP 253 or TCP, our encoder's option) is read
    here in one unpack, the bulk shapes by `wire.flat` (the one call a packet), a row extended
    as one tuple; the rest go to `_other_headers` / `_option_scan` / `_general`."""
    extend, svals, rvals, names = tab.flat.extend, tab.svals, tab.rvals, tab.names
    errors, syn_ports, checksums, verifier = tab.errors, tab.syn_ports, tab.checksums, tab.verifier
    # the direction rule's ports: the given service port, else those learned from SYNs
    ports = syn_ports if tab.service_port is None else {tab.service_port}
    not_trickles = 0
    for ts, b, e, ok in zip(tss, starts, ends, verdicts or repeat(None), strict=False):
        index += 1
        n = e - b
        if n >= _MIN_IPTCP and d[b] == 0x45 and d[b + 9] != 17:
            # no IP options, raw IP 253 / TCP: IP and TCP headers in one unpack
            (total, frag, proto, addrs, sport, dport, seq, ack, offb, flags, win, okind,
             olen, exid, tlen) = _iptcp(d, b)
            if frag & 0x3FFF or (proto != 253 and proto != 6):
                not_trickles += _not_trickles(errors, frag, proto)
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
        if checksums and not cut and not (ok or ok is None and _cksum_ok(d, b, p0, end, seglen)):
            err = _bad_sum(d, b, p0, end, carrier)
        if flags & SYN:
            # the role, not the flags, says which end is the service: a request carries
            # option value 0, an answer its header length (a client may send SYN|ACK)
            syn_ports.add(dport if tlen == 0 else sport)
        nm = names.get(addrs) or _names(names, addrs)
        by_port = dport in ports or sport in ports  # else the payload's shape decides
        is_req = dport in ports if by_port else tlen == 0
        p = p0 + hlen
        f = _req(d, p, end) if is_req else _resp(d, p, end)
        if f is not None and (is_req or f[5] is None or by_port):
            mac_ok = nonce_ok = None
            if verifier is not None or err is not None or not is_req and f[5] is not None:
                err, mac_ok, nonce_ok = _verdicts(tab, f, is_req, err, d, p, nm, sport, dport)
            if is_req:  # the SACK blocks and ranges to the value lists (`rows.ragged`)
                ((rtype, ctype, cseq, fc, cs, par, cts, sts, mrtt, state, fl, fbs, sc, ss, base,
                  cid, epoch, mac, nsacks), sk, ulen, nr, rk, q) = f
                sacks = (len(svals) << 7) | nsacks
                svals.extend(sk)
                ranges = (len(rvals) << 7) | nr
                rvals.extend(rk)
                extend((index, ts, "request", nm[0], nm[1], sport, dport, carrier, total, seq,
                        ack, flags, win, tlen, _name[rtype], ctype, cseq, fc, cs, par, cts,
                        sts, mrtt, state, fl, fbs, sc, ss, base, cid, epoch, mac, None, None,
                        None, ulen, sacks, ranges, end - q, None, 0, False, None, mac_ok,
                        nonce_ok, err))
            else:
                ((nonce, sib, pos, ulen, ctype, cseq, fc, cs, par, cts, sts, mrtt, state, fl,
                  fbs, sc, ss, base, cid, epoch, mac), ds, dl, fin, fh, _) = f
                extend((index, ts, "response", nm[0], nm[1], sport, dport, carrier, total, seq,
                        ack, flags, win, tlen, None, ctype, cseq, fc, cs, par, cts, sts, mrtt,
                        state, fl, fbs, sc, ss, base, cid, epoch, mac, nonce, sib, pos, ulen,
                        None, None, None, ds, dl, fin, fh, mac_ok, nonce_ok, err))
            continue
        _general(tab, (index, ts, "", nm[0], nm[1], sport, dport, carrier, total, seq, ack,
                       flags, win, tlen), d, p, end, err, nm[2], nm[3], is_req, by_port)
    return index, not_trickles


def _verdicts(tab: _Table, f: tuple, is_req: bool, err: str | None, d, p: int, nm: tuple,
              sport: int, dport: int) -> tuple[str | None, bool | None, bool | None]:
    """A fast-path row's error (a bad chunk's, when nothing came before) and MAC / nonce
    verdicts (with the secret), from `wire.flat`'s parts `f`; a flagged row counted."""
    if not is_req and f[5] is not None and err is None:
        err = "decode." + f[5]
    mac_ok = nonce_ok = None
    verifier = tab.verifier
    if verifier is not None:
        src_b, dst_b, h = nm[2], nm[3], f[0]
        if is_req:
            c = p + REQUEST_CONT_OFFSET
            mac_ok = verifier.mac_ok(_PSEUDO.pack(src_b, dst_b, sport, dport), d[c : c + FULL_LEN],
                                     h[16])
            nonce_ok = verifier.sacks_ok(h[15], h[14], list(zip(*[iter(f[1])] * 3, strict=True)))
        else:
            mac_ok = verifier.mac_ok(_PSEUDO.pack(dst_b, src_b, dport, sport),
                                     d[p + RESPONSE_CONT_OFFSET : p + RESPONSE_FULL_LEN], h[19])
            nonce_ok = verifier.nonces.packet_nonce(h[18], h[17], h[5]) == h[0]
    if err is not None:
        tab.errors["flagged"] += 1
        tab.errors["flagged." + err] += 1
    return err, mac_ok, nonce_ok


def _not_trickles(errors: Counter, frag: int, proto: int) -> int:
    """Count a fragment or another protocol than 253 / TCP (common layout); 1 for the total."""
    errors["not_trickles." + ("fragment" if frag & 0x3FFF else _PROTO_NAMES.get(
        proto, f"proto_{proto}"))] += 1
    return 1


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


def _bad_sum(d, b: int, p0: int, end: int, carrier: str) -> str:
    """The error of a segment whose checksum fails: a segmented UDP run, or a bad checksum."""
    return "decode.udp_run" if carrier == "udp" and _udp_run(d, b, p0, end) else "decode.checksum"


def _udp_run(d, b: int, p0: int, end: int) -> bool:
    """Whether a UDP datagram is a run of segments sent in one segmented send (net/gso.py)
    and captured on the sending host before the kernel cut it apart: a second segment starts
    where the ports and option prefix of the first recur and the first segment's own checksum
    holds over the bytes before it."""
    ports = bytes(d[p0:p0 + 4])
    i = p0 + HEADER_LEN
    while (i := d.find(ports, i, end - HEADER_LEN + 1)) >= 0:
        if d[i + 20:i + 24] == OPT_PREFIX and _cksum_ok(d, b, p0, i, i - p0):
            return True
        i += 1
    return False


MIN_NUMPY = 256  # batches smaller than this are summed in Python (no numpy import)


def _batch_checksums(buf, starts: list[int], ends: list[int]) -> list[bool] | None:
    """TCP checksum verdicts of a batch, for the loop's no-IP-options layout, with numpy.

    Per datagram buf[b:e] whose first byte is 0x45 (others get a meaningless value the loop
    ignores): the sum of s..t = buf[b+12:end] (addresses + segment), end = b + the IP total
    length unless that is out of bounds (then e), as `_cksum_ok`. One ``add.reduceat`` of the
    buffer's little-endian 16-bit words (the mapped file itself) sums every segment's whole
    words, s and t rounded inwards to even offsets; an odd s's first and an odd t's last byte
    are added apart. A few ns per segment instead of about 2 us for Python's big-int
    conversion of a full-size segment. None (the loop sums in Python) when numpy is missing
    or the batch is small.
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
    hb = np.minimum(b + 3, size - 1)  # the total-length bytes (in bounds for any datagram)
    total = (u8[hb - 1].astype(np.int64) << 8) | u8[hb]
    end = np.where((total > e - b) | (total < 20), e, b + total)
    s = np.minimum(b + 12, end)  # empty for short datagrams (not judged here)
    s_odd, t_odd = s & 1, end & 1
    lo, hi = (s + s_odd) >> 1, (end - t_odd) >> 1  # whole words: [lo, hi) of the buffer's
    sums = np.zeros(k, dtype=np.int64)
    sel = np.flatnonzero(hi > lo)
    if len(sel):
        first = int(lo[sel].min())
        w = np.frombuffer(buf, dtype="<u2", offset=2 * first, count=int(hi[sel].max()) - first)
        a, z = lo[sel] - first, hi[sel] - first
        idx = np.empty(2 * len(sel), dtype=np.int64)
        idx[0::2] = a
        idx[1::2] = np.minimum(z, len(w) - 1)  # reduceat's last sum runs to the array's end
        # a segment's sum fits 32 bits (at most 32767 words of 0xFFFF)
        got = np.add.reduceat(w, idx, dtype=np.uint32)[0::2].astype(np.int64)
        for i in np.flatnonzero(z == len(w)).tolist():  # ends the buffer
            got[i] = int(w[a[i]:].sum(dtype=np.uint64))
        sums[sel] = got % 0xFFFF
    # little-endian words: from an even s the big-endian sum is 256 x theirs (mod 0xFFFF), from
    # an odd s theirs; a lone first byte is a high half, a lone last byte (the pad) a high half
    # from an even s and a low one from an odd s
    head = u8[np.minimum(s, size - 1)].astype(np.int64) * s_odd
    tail = u8[np.maximum(end - 1, 0)].astype(np.int64) * (t_odd & (end > s))
    v = np.where(s_odd == 1, sums + (head << 8) + tail, (sums + tail) << 8)
    v += end - b - 20 + 6  # the pseudo-header's protocol and TCP length
    return ((v % 0xFFFF) == 0).tolist()


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


