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

__all__ = ["flat_request", "flat_response"]

_FULL_TYPES = frozenset((FULL1, FULL2))
_SACKS_N = [s.unpack_from for s in SACK_BLOCKS]
_ONE_SACK = SACK_BLOCK.unpack_from
_SACK_LEN, _RANGE_LEN = SACK_BLOCK.size, RANGE.size
_U32_END = 0x100000000


def flat_request(d, p: int, end: int, _head=REQUEST_HEAD.unpack_from, _types=REQUEST_FULL_TYPES,
                 _full=_FULL_TYPES, _hl=REQUEST_HEAD_LEN, _ct=REQUEST_CONT_OFFSET,
                 _st=REQUEST_STATE_AT, _one=_ONE_SACK, _sacks_n=_SACKS_N,
                 _range=RANGE.unpack_from, _b=BOOTSTRAP, _sl=_SACK_LEN, _rl=_RANGE_LEN,
                 _ms=MAX_SACKS, _mr=MAX_RANGES) -> tuple | None:
    """A NORMAL / SLOWSTART / FIN request with a FULL continuation in d[p:end], flat:
    `REQUEST_HEAD`'s 19 fields (type, the continuation's 17, numSacks), then the SACK blocks'
    values (L, R, summary, L, ...), ucont_len, the range count, the ranges' values
    (start, end, start, ...) and where the application bytes begin. None for any other shape.
    """
    if not (end - p >= _hl and d[p] in _types and d[p + _ct] in _full
            and d[p + _st] <= _b):
        return None
    head = _head(d, p)
    nsacks = head[18]
    q = p + _hl + _sl * nsacks
    if nsacks > _ms or q + 3 > end:
        return None
    sk = _one(d, p + _hl) if nsacks == 1 else _sacks_n[nsacks](d, p + _hl)
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
    if hi > _U32_END:
        return None
    return head + (sk, ulen, nr, rk, q)


def flat_response(d, p: int, end: int, _resp=RESPONSE_FULL.unpack_from, _full=_FULL_TYPES,
                  _rl=RESPONSE_FULL_LEN, _ct=RESPONSE_CONT_OFFSET, _st=RESPONSE_STATE_AT,
                  _u32=U32.unpack_from, _b=BOOTSTRAP, _ch=CHUNK_HEADER_LEN, _dk=CHUNK_DATA,
                  _dh=DATA_CHUNK_OVERHEAD, _fin=FLAG_FIN) -> tuple | None:
    """A response with a FULL continuation in d[p:end], flat: `RESPONSE_FULL`'s 21 fields
    (nonce, numSiblings, position, ucont_len, the continuation's 17), then what its chunks
    say — first DATA byteNum, DATA bytes, FIN, FINHINT byteNum and the DecodeError reason of
    a bad chunk (`scan_chunks`; "truncated" when the user continuation runs past the end) or
    None. None for any other shape."""
    if not (end - p >= _rl and d[p + _ct] in _full and d[p + _st] <= _b):
        return None
    head = _resp(d, p)
    c = p + _rl + head[3]
    if c > end:  # the user continuation runs past the end
        return head + (None, 0, False, None, "truncated")
    if c == end:
        return head + (None, 0, False, None, None)
    tf = d[c]
    clen = (d[c + 1] << 8) | d[c + 2] if c + _ch <= end else 0
    if tf >> 4 == _dk and c + clen == end and clen >= _dh:  # one DATA chunk
        return head + (_u32(d, c + _ch)[0], clen - _dh, bool(tf & _fin), None, None)
    return head + scan_chunks(d, c, end)
