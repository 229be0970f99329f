"""Requests, responses, SACK blocks and chunks (the Trickles payload after the TCP header).

Response (server -> client)::

    nonce u32 | numSiblings u8 | position u8 | ucont_len u16 | continuation (75 or 18)
    | user continuation | chunks...

Request (client -> server)::

    type u8 | continuation (75, absent in SYN) | numSacks u8 | blocks {L u32, R u32, summary u32}
    | ucont_len u16 | ucont | nranges u8 | ranges {start u32, length u32} | application bytes

Chunk: a 3-byte header {type<<4 | flags u8, length u16 (header included)} then its fields:
DATA {byteNum u32, bytes} (flag 1 = FIN), SKIP {byteNum u32, len u32}, FINHINT {byteNum u32}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from trickles_kit.wire.continuation import (
    BOOTSTRAP,
    FULL1,
    FULL2,
    FULL_FORMAT,
    FULL_LEN,
    MINIMAL,
    MINIMAL_FORMAT,
    MINIMAL_LEN,
    STATE_OFFSET,
    Continuation,
    decode_continuation,
    encoded_len,
)
from trickles_kit.wire.errors import DecodeError

REQ_NORMAL, REQ_SLOWSTART, REQ_SYN, REQ_FIN = 0, 1, 2, 3
REQ_NAMES = {REQ_NORMAL: "NORMAL", REQ_SLOWSTART: "SLOWSTART", REQ_SYN: "SYN", REQ_FIN: "FIN"}

MAX_SACKS = 64  # hard cap on the wire; engines use a smaller configured limit
MAX_RANGES = 64

CHUNK_DATA, CHUNK_SKIP, CHUNK_FINHINT = 2, 3, 4
FLAG_FIN = 0x1

RESPONSE_HEADER_LEN = 8
DATA_CHUNK_OVERHEAD = 7

# Named layouts and offsets: the codec below and the capture decoder's fast path
# (`capture.batches`, `capture.parse`) read the same objects, so a field changes here only.
_RESP_HDR_FORMAT = "IBBH"  # nonce, numSiblings, position, ucont_len
RESPONSE_CONT_OFFSET = RESPONSE_HEADER_LEN  # the continuation follows the response header
RESPONSE_STATE_AT = RESPONSE_CONT_OFFSET + STATE_OFFSET  # its state byte (34)
RESPONSE_FULL = struct.Struct("!" + _RESP_HDR_FORMAT + FULL_FORMAT)  # header + FULL cont
RESPONSE_MINIMAL = struct.Struct("!" + _RESP_HDR_FORMAT + MINIMAL_FORMAT)  # header + MINIMAL
RESPONSE_FULL_LEN = RESPONSE_HEADER_LEN + FULL_LEN  # 83
RESPONSE_MINIMAL_LEN = RESPONSE_HEADER_LEN + MINIMAL_LEN
REQUEST_CONT_OFFSET = 1  # after the type byte
REQUEST_STATE_AT = REQUEST_CONT_OFFSET + STATE_OFFSET  # 27
REQUEST_HEAD = struct.Struct("!B" + FULL_FORMAT + "B")  # type + FULL continuation + numSacks
REQUEST_HEAD_LEN = REQUEST_HEAD.size  # 77
REQUEST_FULL_TYPES = frozenset((REQ_NORMAL, REQ_SLOWSTART, REQ_FIN))  # REQUEST_HEAD applies
SACK_BLOCK = struct.Struct("!III")  # left, right, summary
SACK_BLOCKS = [struct.Struct(f"!{3 * i}I") for i in range(MAX_SACKS + 1)]  # n blocks, flat
RANGE = struct.Struct("!II")  # start, length
CHUNK_HEADER_LEN = 3  # type<<4 | flags u8, length u16 (header included)
U32 = struct.Struct("!I")  # a chunk's byteNum, after its header

_RESP_HDR = struct.Struct("!" + _RESP_HDR_FORMAT)
_HEAD = REQUEST_HEAD
_HEAD_LEN = REQUEST_HEAD_LEN
_SACK = SACK_BLOCK
_RANGE = RANGE
_CHUNK_HDR = struct.Struct("!BH")
_DATA_HDR = struct.Struct("!BHI")
_SKIP = struct.Struct("!BHII")
_FINHINT = struct.Struct("!BHI")
_U16 = struct.Struct("!H")
_MAX_U32 = 0xFFFFFFFF


class SackBlock(NamedTuple):
    """Claim: packets left..right (inclusive) were received; summary = r_left XOR r_(right+1)."""

    left: int
    right: int
    summary: int


class DataChunk(NamedTuple):
    byte_num: int
    data: bytes
    fin: bool = False


class SkipChunk(NamedTuple):
    byte_num: int
    length: int


class FinHint(NamedTuple):
    byte_num: int


Chunk = DataChunk | SkipChunk | FinHint


@dataclass(slots=True)
class Request:
    type: int
    cont: Continuation | None = None
    sacks: list[SackBlock] = field(default_factory=list)
    ucont: bytes = b""
    ranges: list[tuple[int, int]] = field(default_factory=list)  # [start, end)
    app: bytes = b""
    cont_raw: bytes = b""  # the continuation exactly as received (verified without re-encoding)

    def encode(self) -> bytes:
        if self.type not in REQ_NAMES:
            raise ValueError(f"unknown request type {self.type}")
        if len(self.sacks) > MAX_SACKS or len(self.ranges) > MAX_RANGES:
            raise ValueError("too many SACK blocks or ranges")
        parts = [bytes((self.type,))]
        if self.type != REQ_SYN:
            if self.cont is None or not self.cont.is_full:
                raise ValueError("a non-SYN request needs a FULL continuation")
            parts.append(self.cont.encode())
        parts.append(bytes((len(self.sacks),)))
        parts.extend(_SACK.pack(*b) for b in self.sacks)
        if len(self.ucont) > 0xFFFF:
            raise ValueError("user continuation longer than 65535 bytes")
        parts.append(_U16.pack(len(self.ucont)))
        parts.append(self.ucont)
        parts.append(bytes((len(self.ranges),)))
        for start, end in self.ranges:
            if not 0 <= start <= _MAX_U32 or not start <= end <= _MAX_U32 + 1 or (
                end - start > _MAX_U32
            ):
                raise ValueError(f"bad range [{start}, {end})")
            parts.append(_RANGE.pack(start, end - start))
        parts.append(self.app)
        return b"".join(parts)


def decode_request(data: bytes) -> Request:
    """Decode a request payload. Raises DecodeError on any malformed input."""
    n = len(data)
    if n < 1:
        raise DecodeError("truncated", "empty request")
    rtype = data[0]
    if rtype not in REQ_NAMES:
        raise DecodeError("req_type", f"request type {rtype}")
    off = 1
    cont = None
    raw = b""
    if rtype != REQ_SYN:
        if (n >= _HEAD_LEN and data[REQUEST_CONT_OFFSET] in (FULL1, FULL2)
                and data[REQUEST_STATE_AT] <= BOOTSTRAP):
            f = _HEAD.unpack_from(data, 0)  # the common case in one unpack
            cont = Continuation(*f[1:18])
            nsacks = f[18]
            off = _HEAD_LEN
        else:
            cont, off = decode_continuation(data, off)
            if cont.type == MINIMAL:
                raise DecodeError("minimal_request", "a MINIMAL continuation cannot make a request")
            if not cont.is_full:  # PAIR / HASHED are response-only forms (wire.delta)
                raise DecodeError("cont_type", f"continuation type {cont.type} in a request")
            if off >= n:
                raise DecodeError("truncated", "SACK count")
            nsacks = data[off]
            off += 1
        raw = bytes(data[1 : 1 + FULL_LEN])
    else:
        if off >= n:
            raise DecodeError("truncated", "SACK count")
        nsacks = data[off]
        off += 1
    if nsacks > MAX_SACKS:
        raise DecodeError("sack_count", f"{nsacks} SACK blocks")
    end = off + 12 * nsacks
    if end > n:
        raise DecodeError("truncated", "SACK blocks")
    sacks = [SackBlock._make(b) for b in _SACK.iter_unpack(data[off:end])] if nsacks else []
    off = end
    if off + 2 > n:
        raise DecodeError("truncated", "ucont length")
    (ulen,) = _U16.unpack_from(data, off)
    off += 2
    if off + ulen > n:
        raise DecodeError("truncated", "user continuation")
    ucont = bytes(data[off : off + ulen])
    off += ulen
    if off >= n:
        raise DecodeError("truncated", "range count")
    nr = data[off]
    off += 1
    if nr > MAX_RANGES:
        raise DecodeError("range_count", f"{nr} ranges")
    end = off + 8 * nr
    if end > n:
        raise DecodeError("truncated", "ranges")
    ranges = []
    for start, length in _RANGE.iter_unpack(data[off:end]) if nr else ():
        if start + length > _MAX_U32 + 1:
            raise DecodeError("range", f"range {start}+{length} passes 2^32")
        ranges.append((start, start + length))
    return Request(rtype, cont, sacks, ucont, ranges, bytes(data[end:]), raw)


@dataclass(slots=True)
class Response:
    nonce: int
    num_siblings: int
    position: int
    cont: Continuation
    ucont: bytes = b""
    chunks: list[Chunk] = field(default_factory=list)

    def header_len(self) -> int:
        """Length of the Trickles header (the TCP option's value): all but the chunks."""
        return RESPONSE_HEADER_LEN + encoded_len(self.cont.type) + len(self.ucont)

    def encode(self) -> bytes:
        return encode_response(
            self.nonce, self.num_siblings, self.position, self.cont.encode(), self.ucont,
            encode_chunks(self.chunks),
        )


def encode_response(
    nonce: int, siblings: int, position: int, cont_bytes: bytes, ucont: bytes, chunk_bytes: bytes
) -> bytes:
    """Fast path used by the server engine: the continuation arrives already sealed/encoded."""
    if len(ucont) > 0xFFFF:
        raise ValueError("user continuation longer than 65535 bytes")
    return b"".join(
        (_RESP_HDR.pack(nonce, siblings, position, len(ucont)), cont_bytes, ucont, chunk_bytes)
    )


def encode_chunks(chunks: list[Chunk]) -> bytes:
    out = []
    for c in chunks:
        if isinstance(c, DataChunk):
            out.append(encode_data_chunk(c.byte_num, c.data, c.fin))
        elif isinstance(c, SkipChunk):
            out.append(_SKIP.pack(CHUNK_SKIP << 4, 11, c.byte_num, c.length))
        elif isinstance(c, FinHint):
            out.append(_FINHINT.pack(CHUNK_FINHINT << 4, 7, c.byte_num))
        else:
            raise ValueError(f"not a chunk: {c!r}")
    return b"".join(out)


def encode_data_chunk(byte_num: int, data: bytes, fin: bool = False) -> bytes:
    if len(data) > 0xFFFF - DATA_CHUNK_OVERHEAD:
        raise ValueError("DATA chunk too long")
    return _DATA_HDR.pack(
        (CHUNK_DATA << 4) | (FLAG_FIN if fin else 0), DATA_CHUNK_OVERHEAD + len(data), byte_num
    ) + data


def decode_response(data: bytes) -> Response:
    """Decode a response payload. Raises DecodeError on any malformed input."""
    n = len(data)
    if n < RESPONSE_HEADER_LEN:
        raise DecodeError("truncated", "response header")
    nonce, sib, pos, ulen = _RESP_HDR.unpack_from(data, 0)
    cont, off = decode_continuation(data, RESPONSE_HEADER_LEN)
    if off + ulen > n:
        raise DecodeError("truncated", "user continuation")
    ucont = bytes(data[off : off + ulen])
    return Response(nonce, sib, pos, cont, ucont, decode_chunks(data, off + ulen))


def decode_chunks(data: bytes, off: int = 0) -> list[Chunk]:
    chunks: list[Chunk] = []
    n = len(data)
    while off < n:
        tf = data[off]
        if tf == 0:  # one-byte pad
            off += 1
            continue
        if off + 3 > n:
            raise DecodeError("truncated", "chunk header")
        _, clen = _CHUNK_HDR.unpack_from(data, off)
        ctype, flags = tf >> 4, tf & 0xF
        if clen < 3 or off + clen > n:
            raise DecodeError("chunk_len", f"chunk length {clen}")
        if ctype == CHUNK_DATA:
            if clen < DATA_CHUNK_OVERHEAD:
                raise DecodeError("chunk_len", "DATA chunk")
            (bn,) = U32.unpack_from(data, off + CHUNK_HEADER_LEN)
            chunks.append(DataChunk(bn, bytes(data[off + 7 : off + clen]), bool(flags & FLAG_FIN)))
        elif ctype == CHUNK_SKIP:
            if clen != 11:
                raise DecodeError("chunk_len", "SKIP chunk")
            _, _, bn, ln = _SKIP.unpack_from(data, off)
            chunks.append(SkipChunk(bn, ln))
        elif ctype == CHUNK_FINHINT:
            if clen != 7:
                raise DecodeError("chunk_len", "FINHINT chunk")
            _, _, bn = _FINHINT.unpack_from(data, off)
            chunks.append(FinHint(bn))
        else:
            raise DecodeError("chunk_type", f"chunk type {ctype}")
        off += clen
    return chunks


def scan_chunks(d, c: int, e: int) -> tuple[int | None, int, bool, int | None, str | None]:
    """Walk the chunks in d[c:e] without building them (the capture decoder's rows):
    (first DATA byteNum, DATA bytes, FIN seen, FINHINT byteNum, the DecodeError reason that
    `decode_chunks` would raise, or None)."""
    ds = fh = err = None
    dl = 0
    fin = False
    while c < e:
        tf = d[c]
        if tf == 0:  # one-byte pad
            c += 1
            continue
        if c + CHUNK_HEADER_LEN > e:
            err = "truncated"
            break
        clen = (d[c + 1] << 8) | d[c + 2]
        if clen < CHUNK_HEADER_LEN or c + clen > e:
            err = "chunk_len"
            break
        ct = tf >> 4
        if ct == CHUNK_DATA:
            if clen < DATA_CHUNK_OVERHEAD:
                err = "chunk_len"
                break
            if ds is None:
                ds = U32.unpack_from(d, c + CHUNK_HEADER_LEN)[0]
            dl += clen - DATA_CHUNK_OVERHEAD
            if tf & FLAG_FIN:
                fin = True
        elif ct == CHUNK_SKIP:
            if clen != _SKIP.size:
                err = "chunk_len"
                break
        elif ct == CHUNK_FINHINT:
            if clen != _FINHINT.size:
                err = "chunk_len"
                break
            fh = U32.unpack_from(d, c + CHUNK_HEADER_LEN)[0]
        else:
            err = "chunk_type"
            break
        c += clen
    return ds, dl, fin, fh, err
