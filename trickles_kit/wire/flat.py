"""Flat decoders: the common request and response shapes as one tuple of fields, no objects.

Why: a capture of a bulk transfer is almost only these two shapes, and its decoder
(`capture.batches`) reads them a quarter-million times a second into flat rows. Reading them
here, with the layouts `wire.messages` defines, keeps every byte offset in `wire/`; anything
else (another request type, a MINIMAL continuation, a malformed field) gets None and goes to the
codec (`decode_request` / `decode_response`), which says why.
"""

from __future__ import annotations

from itertools import chain

from trickles_kit.wire.continuation import BOOTSTRAP, FULL1, FULL2
from trickles_kit.wire.messages import (
    CHUNK_DATA,
    CHUNK_HEADER_LEN,
    DATA_CHUNK_OVERHEAD,
    FLAG_FIN,
    MAX_RANGES,
    MAX_SACKS,
    RANGE,
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
    scan_chunks,
)

__all__ = ["flat_request", "flat_response", "request_parts", "response_parts"]

# module globals, not default arguments: a call copies every default (16 of them doubled the
# cost of a call the capture decoder makes per packet)
_FULL_TYPES = frozenset((FULL1, FULL2))
_REQ_TYPES = REQUEST_FULL_TYPES
_HEAD = REQUEST_HEAD.unpack_from
_HEAD_LEN, _REQ_CONT, _REQ_STATE = REQUEST_HEAD_LEN, REQUEST_CONT_OFFSET, REQUEST_STATE_AT
_SACKS_N = [s.unpack_from for s in SACK_BLOCKS]
_ONE_SACK = SACK_BLOCK.unpack_from
_RANGE = RANGE.unpack_from
_RANGES = RANGE.iter_unpack
_SACK_LEN, _RANGE_LEN = SACK_BLOCK.size, RANGE.size
_RESP = RESPONSE_FULL.unpack_from
_RESP_LEN, _RESP_CONT, _RESP_STATE = RESPONSE_FULL_LEN, RESPONSE_CONT_OFFSET, RESPONSE_STATE_AT
_U32 = U32.unpack_from
_U32_END = 0x100000000


def request_parts(d, p: int, end: int) -> tuple | None:
    """A NORMAL / SLOWSTART / FIN request with a FULL continuation in d[p:end] as
    (`REQUEST_HEAD`'s 19 fields — type, the continuation's 17, numSacks —, the SACK blocks'
    values (L, R, summary, L, ...), ucont_len, the range count, the ranges' values (start,
    end, start, ...), where the application bytes begin). None for any other shape.
    Six items, the head as unpacked: no tuple is copied (`flat_request` joins them)."""
    if not (end - p >= _HEAD_LEN and d[p] in _REQ_TYPES and d[p + _REQ_CONT] in _FULL_TYPES
            and d[p + _REQ_STATE] <= BOOTSTRAP):
        return None
    head = _HEAD(d, p)
    nsacks = head[18]
    q = p + _HEAD_LEN + _SACK_LEN * nsacks
    if nsacks > MAX_SACKS or q + 3 > end:
        return None
    sk = _ONE_SACK(d, p + _HEAD_LEN) if nsacks == 1 else _SACKS_N[nsacks](d, p + _HEAD_LEN)
    ulen = (d[q] << 8) | d[q + 1]
    o = q + 2 + ulen
    if o >= end:
        return None
    nr = d[o]
    q = o + 1 + _RANGE_LEN * nr
    if nr > MAX_RANGES or q > end:
        return None
    if nr == 1:
        lo, hi = _RANGE(d, o + 1)
        hi += lo
        rk: tuple = (lo, hi)
    else:
        rk = tuple(chain.from_iterable((x, x + y) for x, y in _RANGES(d[o + 1 : q])))
        hi = max(rk[1::2]) if nr else 0
    if hi > _U32_END:
        return None
    return head, sk, ulen, nr, rk, q


def flat_request(d, p: int, end: int) -> tuple | None:
    """`request_parts` as one flat tuple: the head's 19 fields, then the other five."""
    f = request_parts(d, p, end)
    return None if f is None else f[0] + f[1:]


def response_parts(d, p: int, end: int) -> tuple | None:
    """A response with a FULL continuation in d[p:end] as (`RESPONSE_FULL`'s 21 fields —
    nonce, numSiblings, position, ucont_len, the continuation's 17 —, then what its chunks
    say: first DATA byteNum, DATA bytes, FIN, FINHINT byteNum and the DecodeError reason of a
    bad chunk (`scan_chunks`; "truncated" when the user continuation runs past the end) or
    None). None for any other shape. Six items, the head as unpacked (`flat_response` joins
    them)."""
    if not (end - p >= _RESP_LEN and d[p + _RESP_CONT] in _FULL_TYPES
            and d[p + _RESP_STATE] <= BOOTSTRAP):
        return None
    head = _RESP(d, p)
    c = p + _RESP_LEN + head[3]
    if c > end:  # the user continuation runs past the end
        return head, None, 0, False, None, "truncated"
    if c == end:
        return head, None, 0, False, None, None
    tf = d[c]
    clen = (d[c + 1] << 8) | d[c + 2] if c + CHUNK_HEADER_LEN <= end else 0
    if tf >> 4 == CHUNK_DATA and c + clen == end and clen >= DATA_CHUNK_OVERHEAD:  # one DATA
        return (head, _U32(d, c + CHUNK_HEADER_LEN)[0], clen - DATA_CHUNK_OVERHEAD,
                bool(tf & FLAG_FIN), None, None)
    return (head, *scan_chunks(d, c, end))


def flat_response(d, p: int, end: int) -> tuple | None:
    """`response_parts` as one flat tuple: the head's 21 fields, then the other five."""
    f = response_parts(d, p, end)
    return None if f is None else f[0] + f[1:]
