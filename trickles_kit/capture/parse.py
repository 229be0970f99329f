"""One segment -> one `PacketRow`: the decoder's general path, and the MAC/nonce verdicts.

The hot loop (`capture.batches`) decodes the two shapes of a bulk transfer inline; every other
shape, every error, and the other direction when a guess fails come here. The `Verifier` holds
the server's keys (from the master secret) and checks MACs with `core.seal`, the server's rule.
"""

from __future__ import annotations

import struct
from hmac import compare_digest

from trickles_kit.capture.rows import PacketRow
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.seal import mac_with
from trickles_kit.core.server import ServerConfig
from trickles_kit.wire.continuation import FULL1, FULL2, FULL_LEN, MAC_OFFSET, MINIMAL, MINIMAL_LEN
from trickles_kit.wire.delta import unpack_request
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    REQ_NAMES,
    DataChunk,
    FinHint,
    Request,
    Response,
    decode_request,
    decode_response,
)

__all__ = ["Verifier", "bad_row", "chunks", "request_row", "response_row", "row_from_request",
           "row_from_response"]

_RESP_FULL = struct.Struct("!IBBHBIBIIIIIBIIIIIQI16s")  # response header + FULL continuation
_RESP_MIN = struct.Struct("!IBBHBIBIII")  # response header + MINIMAL continuation
_REQ_HEAD = struct.Struct("!BBIBIIIIIBIIIIIQI16sB")  # type + FULL continuation + numSacks
_PSEUDO = struct.Struct("!4s4sHH")
_RESP_FULL_LEN = 8 + FULL_LEN
_RESP_MIN_LEN = 8 + MINIMAL_LEN
_REQ_HEAD_LEN = _REQ_HEAD.size
_U32S = struct.Struct("!I")
_SACK = struct.Struct("!III")
_RANGE = struct.Struct("!II")


class Verifier:
    """MAC and nonce checks given the master secret: the server's keys and `core.seal`'s MAC."""

    def __init__(self, secret: bytes, cfg) -> None:
        self.keys = KeyRing(secret, cfg.epoch_seconds)
        self.nonces = NonceGen(self.keys.nonce_key, cfg.nonce_bits)
        self._hashers: dict[int, object] = {}  # more epochs than the KeyRing keeps: a capture

    def mac_ok(self, pseudo: bytes, raw: bytes, epoch: int) -> bool:
        h = self._hashers.get(epoch)
        if h is None:
            if len(self._hashers) > 64:
                self._hashers.clear()
            h = self._hashers[epoch] = self.keys.mac_hasher(epoch)
        return compare_digest(mac_with(h, pseudo, raw), raw[MAC_OFFSET:FULL_LEN])

    def sacks_ok(self, conn_id: int, base: int, sacks: list) -> bool | None:
        if not sacks:
            return None
        summary = self.nonces.range_summary
        return all(summary(conn_id, base, left, right) == s for left, right, s in sacks)


def default_config() -> ServerConfig:
    return ServerConfig()


def bad_row(index, ts, d, p0, end, nm, carrier, total, error) -> PacketRow:
    seg = bytes(d[p0:end]) + b"\0" * 20
    sport, dport, seq, ack = struct.unpack_from("!HHII", seg, 0)
    flags = seg[13]
    return PacketRow(index, ts, "", nm[0], nm[1], sport, dport, carrier, total,
                     seq, ack, flags, int.from_bytes(seg[14:16], "big"), 0, error=error)


def response_row(head: tuple, d: bytes, p: int, e: int, err: str | None, src_b: bytes,
                  dst_b: bytes, verifier: Verifier | None) -> PacketRow:
    """Fast path for the common layouts, the codec's decode_response for anything else."""
    n = e - p
    ctype = d[p + 8] if n > 8 else -1
    if ctype in (FULL1, FULL2) and n >= _RESP_FULL_LEN and d[p + 34] <= 2:
        f = _RESP_FULL.unpack_from(d, p)
        off = p + _RESP_FULL_LEN
        full = True
    elif ctype == MINIMAL and n >= _RESP_MIN_LEN:
        f = _RESP_MIN.unpack_from(d, p)
        off = p + _RESP_MIN_LEN
        full = False
    else:
        return _response_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    ulen = f[3]
    c = off + ulen
    if c > e:
        ds, dl, fin, fh, cerr = None, 0, False, None, "decode.truncated"
    else:
        ds, dl, fin, fh, cerr = chunks(d, c, e)
    if err is None:
        err = cerr
    mac_ok = nonce_ok = None
    if full:
        if verifier is not None:
            raw = d[p + 8 : p + _RESP_FULL_LEN]
            mac_ok = verifier.mac_ok(_PSEUDO.pack(dst_b, src_b, head[6], head[5]), raw, f[19])
            nonce_ok = verifier.nonces.packet_nonce(f[18], f[17], f[5]) == f[0]
        return PacketRow(*head[:2], "response", *head[3:], None, *f[4:21], f[0], f[1], f[2],
                         ulen, None, None, None, ds, dl, fin, fh, mac_ok, nonce_ok, err)
    if verifier is not None:
        nonce_ok = f[0] == 0
    return PacketRow(*head[:2], "response", *head[3:], None, *f[4:10], None, None, None, None,
                     None, None, None, None, None, None, None, f[0], f[1], f[2], ulen, None, None,
                     None, ds, dl, fin, fh, None, nonce_ok, err)


def chunks(d: bytes, c: int, e: int) -> tuple[int | None, int, bool, int | None, str | None]:
    """Walk the chunks in d[c:e]: (data_start, data_len, fin, finhint, error)."""
    ds = fh = err = None
    dl = 0
    fin = False
    while c < e:
        tf = d[c]
        if tf == 0:  # one-byte pad
            c += 1
            continue
        if c + 3 > e:
            err = "decode.truncated"
            break
        clen = (d[c + 1] << 8) | d[c + 2]
        if clen < 3 or c + clen > e:
            err = "decode.chunk_len"
            break
        ct = tf >> 4
        if ct == 2:
            if clen < 7:
                err = "decode.chunk_len"
                break
            if ds is None:
                ds = _U32S.unpack_from(d, c + 3)[0]
            dl += clen - 7
            if tf & 1:
                fin = True
        elif ct == 3:
            if clen != 11:
                err = "decode.chunk_len"
                break
        elif ct == 4:
            if clen != 7:
                err = "decode.chunk_len"
                break
            fh = _U32S.unpack_from(d, c + 3)[0]
        else:
            err = "decode.chunk_type"
            break
        c += clen
    return ds, dl, fin, fh, err


def _response_row_slow(head, d, p, e, err, src_b, dst_b, verifier) -> PacketRow:
    try:
        resp = decode_response(bytes(d[p:e]))
    except DecodeError as ex:
        return PacketRow(*head[:2], "response", *head[3:], error=err or "decode." + ex.reason)
    return row_from_response(head, resp, d, p, err, src_b, dst_b, verifier)


def row_from_response(head, resp: Response, d, p, err, src_b, dst_b, verifier) -> PacketRow:
    c = resp.cont
    row = PacketRow(*head[:2], "response", *head[3:], error=err)
    _fill_cont(row, c)
    row.nonce, row.siblings, row.position, row.ucont_len = (
        resp.nonce, resp.num_siblings, resp.position, len(resp.ucont))
    for ch in resp.chunks:
        if isinstance(ch, DataChunk):
            if row.data_start is None:
                row.data_start = ch.byte_num
            row.data_len += len(ch.data)
            row.fin = row.fin or ch.fin
        elif isinstance(ch, FinHint):
            row.finhint = ch.byte_num
    if verifier is not None:
        if c.is_full:
            raw = bytes(d[p + 8 : p + 8 + FULL_LEN])
            row.mac_ok = verifier.mac_ok(_PSEUDO.pack(dst_b, src_b, head[6], head[5]), raw,
                                         c.key_epoch)
            row.nonce_ok = verifier.nonces.packet_nonce(c.conn_id, c.tcp_base, c.seq) == resp.nonce
        else:
            row.nonce_ok = resp.nonce == 0
    return row


def _fill_cont(row: PacketRow, c) -> None:
    row.cont_type, row.cont_seq, row.first_child = c.type, c.seq, c.first_child
    row.client_state, row.parent, row.client_timestamp = c.client_state, c.parent, \
        c.client_timestamp
    if c.is_full:
        row.timestamp, row.mrtt, row.state, row.first_loss = c.timestamp, c.mrtt, c.state, \
            c.first_loss
        row.first_bootstrap_seq, row.start_cwnd, row.ssthresh, row.tcp_base = (
            c.first_bootstrap_seq, c.start_cwnd, c.ssthresh, c.tcp_base)
        row.conn_id, row.key_epoch, row.mac = c.conn_id, c.key_epoch, bytes(c.mac)


def request_row(head: tuple, d: bytes, p: int, e: int, err: str | None, src_b: bytes,
                 dst_b: bytes, verifier: Verifier | None) -> PacketRow:
    """Fast path for NORMAL / SLOWSTART / FIN with a FULL continuation; the codec otherwise."""
    n = e - p
    if not (n >= _REQ_HEAD_LEN and d[p] in (0, 1, 3) and d[p + 1] in (FULL1, FULL2)
            and d[p + 27] <= 2):
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    f = _REQ_HEAD.unpack_from(d, p)
    nsacks = f[18]
    off = p + _REQ_HEAD_LEN
    end = off + 12 * nsacks
    if nsacks > 64 or end + 3 > e:
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    sacks = list(_SACK.iter_unpack(d[off:end])) if nsacks else []
    ulen = (d[end] << 8) | d[end + 1]
    off = end + 2 + ulen
    if off >= e:
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    nr = d[off]
    off += 1
    end = off + 8 * nr
    if nr > 64 or end > e:
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    ranges = []
    if nr:
        for start, length in _RANGE.iter_unpack(d[off:end]):
            if start + length > 0x100000000:
                return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
            ranges.append((start, start + length))
    mac_ok = nonce_ok = None
    if verifier is not None:
        mac_ok = verifier.mac_ok(_PSEUDO.pack(src_b, dst_b, head[5], head[6]),
                                 d[p + 1 : p + 1 + FULL_LEN], f[16])
        nonce_ok = verifier.sacks_ok(f[15], f[14], sacks)
    return PacketRow(*head[:2], "request", *head[3:], REQ_NAMES[f[0]], *f[1:18], None, None,
                     None, ulen, sacks, ranges, e - end, None, 0, False, None, mac_ok, nonce_ok,
                     err)


def _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier) -> PacketRow:
    payload = bytes(d[p:e])
    try:
        if payload and payload[0] & 0xC0:  # delta-encoding flags (docs/protocol.md §14.3)
            # read it as a server with the option on would: flags off, a COMPACT form expanded
            # (its key epoch is the current or previous one; the capture's clock gives which)
            epoch_s = verifier.keys.epoch_seconds if verifier else default_config().epoch_seconds
            _, payload = unpack_request(payload, head[10], int(head[1] // epoch_s), True)
        req = decode_request(payload)
    except DecodeError as ex:
        return PacketRow(*head[:2], "request", *head[3:], error=err or "decode." + ex.reason)
    return row_from_request(head, req, err, src_b, dst_b, verifier)


def row_from_request(head, req: Request, err, src_b, dst_b, verifier) -> PacketRow:
    row = PacketRow(*head[:2], "request", *head[3:], REQ_NAMES[req.type], error=err)
    row.ucont_len = len(req.ucont)
    row.sacks = [tuple(b) for b in req.sacks]
    row.ranges = list(req.ranges)
    row.app_len = len(req.app)
    if req.cont is not None:
        _fill_cont(row, req.cont)
        if verifier is not None:
            row.mac_ok = verifier.mac_ok(_PSEUDO.pack(src_b, dst_b, head[5], head[6]),
                                         req.cont_raw, req.cont.key_epoch)
            row.nonce_ok = verifier.sacks_ok(req.cont.conn_id, req.cont.tcp_base, row.sacks)
    return row

