"""One segment -> one `PacketRow`: the decoder's general path, and the MAC/nonce verdicts.

The hot loop (`capture.batches`) decodes the two shapes of a bulk transfer inline; every other
shape, every error, and the other direction when a guess fails come here. The `Verifier` holds
the server's keys (from the master secret) and checks MACs with `core.seal`, the server's rule.
"""

from __future__ import annotations

from hmac import compare_digest

from trickles_kit.capture.rows import PacketRow
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.seal import mac_with
from trickles_kit.core.server import ServerConfig
from trickles_kit.wire.continuation import (
    FULL_LEN,
    MAC_OFFSET,
    MAC_PSEUDO,
    MINIMAL,
)
from trickles_kit.wire.delta import unpack_request
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.flat import flat_request, flat_response
from trickles_kit.wire.messages import (
    REQ_NAMES,
    REQUEST_CONT_OFFSET,
    RESPONSE_CONT_OFFSET,
    RESPONSE_FULL_LEN,
    RESPONSE_MINIMAL,
    RESPONSE_MINIMAL_LEN,
    DataChunk,
    FinHint,
    Request,
    Response,
    decode_request,
    decode_response,
    scan_chunks,
)
from trickles_kit.wire.segment import TCP_HEAD

__all__ = ["Verifier", "bad_row", "chunks", "request_row", "response_row", "row_from_request",
           "row_from_response"]

# the layouts are wire's (`wire.messages`): one definition for the codec and the decoder
_RESP_MIN = RESPONSE_MINIMAL
_PSEUDO = MAC_PSEUDO
_RESP_MIN_LEN = RESPONSE_MINIMAL_LEN


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
    seg = bytes(d[p0:end]) + b"\0" * TCP_HEAD.size
    sport, dport, seq, ack, _, flags, window = TCP_HEAD.unpack_from(seg, 0)[:7]
    return PacketRow(index, ts, "", nm[0], nm[1], sport, dport, carrier, total,
                     seq, ack, flags, window, 0, error=error)


def response_row(head: tuple, d: bytes, p: int, e: int, err: str | None, src_b: bytes,
                 dst_b: bytes, verifier: Verifier | None) -> PacketRow:
    """A FULL continuation by `wire.flat.flat_response`, a MINIMAL one by wire's
    `RESPONSE_MINIMAL`, the codec's decode_response for anything else."""
    f = flat_response(d, p, e)
    if f is not None:
        ds, dl, fin, fh, reason = f[21:]
        if err is None and reason is not None:
            err = "decode." + reason
        mac_ok = nonce_ok = None
        if verifier is not None:
            raw = d[p + RESPONSE_CONT_OFFSET : p + RESPONSE_FULL_LEN]
            mac_ok = verifier.mac_ok(_PSEUDO.pack(dst_b, src_b, head[6], head[5]), raw, f[19])
            nonce_ok = verifier.nonces.packet_nonce(f[18], f[17], f[5]) == f[0]
        return PacketRow(*head[:2], "response", *head[3:], None, *f[4:21], f[0], f[1], f[2],
                         f[3], None, None, None, ds, dl, fin, fh, mac_ok, nonce_ok, err)
    n = e - p
    if not (n >= _RESP_MIN_LEN and d[p + RESPONSE_CONT_OFFSET] == MINIMAL):
        return _response_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    f = _RESP_MIN.unpack_from(d, p)
    ulen = f[3]
    c = p + _RESP_MIN_LEN + ulen
    if c > e:
        ds, dl, fin, fh, cerr = None, 0, False, None, "decode.truncated"
    else:
        ds, dl, fin, fh, cerr = chunks(d, c, e)
    if err is None:
        err = cerr
    nonce_ok = None
    if verifier is not None:
        nonce_ok = f[0] == 0
    return PacketRow(*head[:2], "response", *head[3:], None, *f[4:10], None, None, None, None,
                     None, None, None, None, None, None, None, f[0], f[1], f[2], ulen, None, None,
                     None, ds, dl, fin, fh, None, nonce_ok, err)


def chunks(d: bytes, c: int, e: int) -> tuple[int | None, int, bool, int | None, str | None]:
    """Walk the chunks in d[c:e] (`wire.messages.scan_chunks`): (data_start, data_len, fin,
    finhint, the row's error)."""
    ds, dl, fin, fh, reason = scan_chunks(d, c, e)
    return ds, dl, fin, fh, (None if reason is None else "decode." + reason)


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
            raw = bytes(d[p + RESPONSE_CONT_OFFSET : p + RESPONSE_CONT_OFFSET + FULL_LEN])
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
    """NORMAL / SLOWSTART / FIN with a FULL continuation by `wire.flat.flat_request`; the
    codec otherwise."""
    f = flat_request(d, p, e)
    if f is None:
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    it = iter(f[19])
    sacks = list(zip(it, it, it, strict=True))
    it = iter(f[22])
    ranges = list(zip(it, it, strict=True))
    mac_ok = nonce_ok = None
    if verifier is not None:
        mac_ok = verifier.mac_ok(_PSEUDO.pack(src_b, dst_b, head[5], head[6]),
                                 d[p + REQUEST_CONT_OFFSET : p + REQUEST_CONT_OFFSET + FULL_LEN],
                                 f[16])
        nonce_ok = verifier.sacks_ok(f[15], f[14], sacks)
    return PacketRow(*head[:2], "request", *head[3:], REQ_NAMES[f[0]], *f[1:18], None, None,
                     None, f[20], sacks, ranges, e - f[23], None, 0, False, None, mac_ok,
                     nonce_ok, err)


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

