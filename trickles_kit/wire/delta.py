"""Delta-encoded continuations: the byte layouts of the compressed forms (docs/protocol.md §14.3).

Three forms, all off by default and switched on per connection by flag bits in the request type
byte (a server without the option strips the bits and answers in the plain format):

* PAIR (type 3, 18 bytes, server -> client): the MINIMAL layout on the first packet of a
  delayed-ack pair. Unlike a MINIMAL retransmission it carries a real nonce and is claimed in
  proofs; the FULL2 continuation on the next packet acknowledges both.
* HASHED (type 4, 24 bytes, server -> client): only what the client cannot predict from its own
  run of the server's plan (the server clock, the key epoch's low byte) plus the MAC of the FULL
  form, and the low 16 bits of the request id that names the prediction to use.
* COMPACT (type 5, 35 bytes + varints, client -> server): the FULL form without the packet number
  (the segment's ack field already holds it), with small integers as LEB128 varints and epoch
  relative fields as deltas. The server expands it to the 75-byte FULL form and verifies the MAC
  over that, so every wrong byte is a MAC failure (or a decode error) and replay keys are shared
  with the FULL form.
"""

from __future__ import annotations

import struct

from trickles_kit.wire.continuation import (
    BOOTSTRAP,
    COMPACT,
    FULL1,
    FULL2,
    FULL_LEN,
    HASHED,
    HASHED_LEN,
    MAC_LEN,
    MINIMAL_LEN,
    Continuation,
    pack_body,
)
from trickles_kit.wire.errors import DecodeError

FLAG_PAIRED = 0x80  # request type byte: "seal my handshake continuation FULL2" (SYN)
FLAG_HASHED = 0x40  # request type byte: "send HASHED continuations; I may send COMPACT ones"
FLAG_MASK = FLAG_PAIRED | FLAG_HASHED

_HASHED = struct.Struct("!BHIB16s")
_COMPACT_FIXED = struct.Struct("!BBBIIQ16s")  # type, bits, epoch8, ts, cts, connId, MAC
COMPACT_FIXED_LEN = _COMPACT_FIXED.size  # 35
_U32 = 0xFFFFFFFF

# bits of the COMPACT form's second byte
_B_FULL2, _B_FIRST, _B_LOSS = 0x01, 0x02, 0x10
_STATE_SHIFT = 2


# ------------------------------------------------------------------ varints
def put_varint(out: bytearray, value: int) -> None:
    """Unsigned LEB128 (7 bits a byte, low first); values are u32 here."""
    if not 0 <= value <= _U32:
        raise ValueError(f"varint out of range: {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def get_varint(data: bytes, off: int) -> tuple[int, int]:
    """Decode one u32 varint at `off`; at most 5 bytes, no overlong value past 2^32."""
    value = shift = 0
    for i in range(5):
        if off + i >= len(data):
            raise DecodeError("truncated", "compact continuation varint")
        b = data[off + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if value > _U32:
                raise DecodeError("compact", "varint past 2^32")
            return value, off + i + 1
        shift += 7
    raise DecodeError("compact", "varint longer than 5 bytes")


def _zz(v: int) -> int:
    """Zigzag: a signed delta as an unsigned varint (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...)."""
    return (v << 1) if v >= 0 else ((-v << 1) - 1)


def _unzz(u: int) -> int:
    return (u >> 1) if not u & 1 else -((u + 1) >> 1)


# ------------------------------------------------------------------ HASHED (server -> client)
def pack_hashed(parent: int, timestamp: int, key_epoch: int, mac: bytes) -> bytes:
    """The 24-byte HASHED form of a sealed FULL continuation."""
    return _HASHED.pack(HASHED, parent & 0xFFFF, timestamp & _U32, key_epoch & 0xFF, mac)


def unpack_hashed(data: bytes, offset: int = 0) -> tuple[int, int, int, bytes]:
    """(parent16, timestamp, epoch8, mac) of the HASHED form at `offset`."""
    if offset + HASHED_LEN > len(data):
        raise DecodeError("truncated", "hashed continuation")
    _, parent, ts, ep, mac = _HASHED.unpack_from(data, offset)
    return parent, ts, ep, mac


def epoch_from_low(reference: int, low: int) -> int:
    """The key epoch >= `reference` (the epoch of the continuation we sent) with low byte `low`.

    A server seals in its current epoch and accepts only the current and the previous one, so
    the answer's epoch is the sent one or a little later; 256 epochs (4 hours) cannot pass.
    """
    return (reference + ((low - reference) & 0xFF)) & _U32


# ------------------------------------------------------------------ COMPACT (client -> server)
def pack_compact(c: Continuation) -> bytes:
    """COMPACT form of a FULL continuation (its seq travels in the request's TCP ack field)."""
    if c.type not in (FULL1, FULL2) or c.first_child > 1 or c.state > BOOTSTRAP:
        raise ValueError("only FULL continuations with standard fields compact")
    loss = c.first_loss != 0 or c.first_bootstrap_seq != 0
    bits = ((_B_FULL2 if c.type == FULL2 else 0) | (_B_FIRST if c.first_child else 0)
            | (c.state << _STATE_SHIFT) | (_B_LOSS if loss else 0))
    out = bytearray(_COMPACT_FIXED.pack(
        COMPACT, bits, c.key_epoch & 0xFF, c.timestamp, c.client_timestamp, c.conn_id, c.mac))
    for v in (c.client_state, c.parent, c.mrtt, c.start_cwnd, c.ssthresh):
        put_varint(out, v)
    put_varint(out, _zz(c.seq + 1 - c.tcp_base))
    if loss:
        put_varint(out, _zz(c.tcp_base - c.first_loss))
        put_varint(out, _zz(c.first_bootstrap_seq - c.tcp_base))
    return bytes(out)


def unpack_compact(data: bytes, offset: int, seq: int, current_epoch: int) -> tuple[bytes, int]:
    """Expand the COMPACT form at `offset` to the 75 FULL bytes; returns them and the end offset.

    `seq` is the request's TCP ack field; `current_epoch` the server's current key epoch (the
    sender's epoch is the current or the previous one, told apart by the low byte).
    """
    if offset + COMPACT_FIXED_LEN > len(data):
        raise DecodeError("truncated", "compact continuation")
    ctype, bits, ep, ts, cts, cid, mac = _COMPACT_FIXED.unpack_from(data, offset)
    if ctype != COMPACT or bits & 0xE0 or (bits >> _STATE_SHIFT) & 3 > BOOTSTRAP:
        raise DecodeError("compact", f"compact bits {bits:#x}")
    off = offset + COMPACT_FIXED_LEN
    vals = []
    for _ in range(8 if bits & _B_LOSS else 6):
        v, off = get_varint(data, off)
        vals.append(v)
    cs, parent, mrtt, c0, ss, dbase = vals[:6]
    base = seq + 1 - _unzz(dbase)
    first_loss = fbs = 0
    if bits & _B_LOSS:
        first_loss = base - _unzz(vals[6])
        fbs = base + _unzz(vals[7])
    if not (0 <= base <= _U32 and 0 <= first_loss <= _U32 and 0 <= fbs <= _U32):
        raise DecodeError("compact", "field out of range")
    key_epoch = (current_epoch - ((current_epoch - ep) & 0xFF)) & _U32
    body = pack_body(
        FULL2 if bits & _B_FULL2 else FULL1, seq, 1 if bits & _B_FIRST else 0, cs, parent, cts,
        ts, mrtt, (bits >> _STATE_SHIFT) & 3, first_loss, fbs, c0, ss, base, cid, key_epoch)
    return body + mac, off


# ------------------------------------------------------------------ request payloads
def compact_request(payload: bytes, cont: Continuation, flags: int) -> bytes:
    """A plain request payload (type | FULL | rest) with flags set and the continuation COMPACT."""
    return bytes((payload[0] | flags,)) + pack_compact(cont) + payload[1 + FULL_LEN:]


def flag_request(payload: bytes, flags: int) -> bytes:
    return bytes((payload[0] | flags,)) + payload[1:]


def unpack_request(payload: bytes, seq: int, current_epoch: int,
                   enabled: bool) -> tuple[int, bytes]:
    """Split the delta flags off a request payload and expand a COMPACT continuation.

    Returns (flags, plain payload). A server with the option off ignores the flags (the client
    then sees plain continuations and never sends COMPACT ones); a COMPACT continuation it
    cannot expand is a decode error.
    """
    flags = payload[0] & FLAG_MASK
    plain = bytes((payload[0] & ~FLAG_MASK & 0xFF,))
    if len(payload) > 1 and payload[1] == COMPACT:
        if not enabled:
            raise DecodeError("delta_off", "compact continuation, delta encoding is off")
        full, end = unpack_compact(payload, 1, seq, current_epoch)
        return flags, plain + full + payload[end:]
    return (flags if enabled else 0), plain + payload[1:]


# ------------------------------------------------------------------ accounting
def response_cont_len(payload: bytes) -> tuple[int, int]:
    """(type, length) of the continuation in a response payload (it starts at byte 8)."""
    if len(payload) < 9:
        return -1, 0
    t = payload[8]
    return t, {HASHED: HASHED_LEN, FULL1: FULL_LEN, FULL2: FULL_LEN}.get(t, MINIMAL_LEN)


def request_cont_len(payload: bytes) -> tuple[int, int]:
    """(type, length) of the continuation in a request payload; (-1, 0) for a SYN."""
    if len(payload) < 2 or payload[0] & ~FLAG_MASK == 2:
        return -1, 0
    t = payload[1]
    if t != COMPACT:
        return t, FULL_LEN
    try:
        bits = payload[2]
        off = 1 + COMPACT_FIXED_LEN
        for _ in range(8 if bits & _B_LOSS else 6):
            _, off = get_varint(payload, off)
    except (DecodeError, IndexError):
        return t, len(payload) - 1
    return t, off - 1


__all__ = [
    "FLAG_HASHED", "FLAG_PAIRED", "MAC_LEN", "compact_request", "epoch_from_low",
    "flag_request", "pack_compact", "pack_hashed", "request_cont_len", "response_cont_len",
    "unpack_compact", "unpack_hashed", "unpack_request",
]
