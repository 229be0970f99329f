"""A deterministic dynamic handler: "GEN <size> <seed>" streams pseudo-random bytes.

Content is a function of (seed, offset), so any byte range is produced statelessly and a test
knows the SHA-256 without storing the data. The user continuation (size, seed) is sealed with
AES-GCM and bound to the connection: a client cannot change what it is being served.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from typing import Final

from trickles_kit.apps.common import request_words
from trickles_kit.core.seal import UcontBox
from trickles_kit.core.server import Minisocket, ServerEngine
from trickles_kit.native import speedups

PERIOD: Final = 65521  # prime, so the pattern never lines up with packet sizes
_UC: Final = struct.Struct("!QQ")
_patterns: Final[OrderedDict[int, bytes]] = OrderedDict()
_SUM_BLOCK: Final = 64  # `_block_sums`: whole blocks from the table, the ends from the bytes
_sums: Final[OrderedDict[int, list[int]]] = OrderedDict()
# the slots' checksum shares pay where the checksum is Python (`pattern_sum` 0.5 us, summing
# 1448 bytes 2.0); the compiled build's C checksum sums them faster than the look-up
_GIVE_SUMS: Final = speedups is None


def _pattern(seed: int) -> bytes:
    """Twice the period, so any slice up to PERIOD long is one contiguous copy."""
    p = _patterns.get(seed)
    if p is None:
        blocks = []
        n = 0
        i = 0
        while n < PERIOD:
            b = hashlib.blake2b(struct.pack("!QQ", seed, i), digest_size=64).digest()
            blocks.append(b)
            n += 64
            i += 1
        one = b"".join(blocks)[:PERIOD]
        p = one + one
        _patterns[seed] = p
        if len(_patterns) > 16:
            _patterns.popitem(last=False)
    return p


def _block_sums(seed: int) -> list[int]:
    """S[m] = int.from_bytes(pattern[:64 m], "big") % 0xFFFF for every whole block of the
    pattern (cached as the patterns are: ~0.7 ms per seed, 2,048 numbers)."""
    sums = _sums.get(seed)
    if sums is None:
        pat = _pattern(seed)
        fb, acc = int.from_bytes, 0
        sums = [0]
        for i in range(0, len(pat) - _SUM_BLOCK + 1, _SUM_BLOCK):
            acc = (acc + fb(pat[i : i + _SUM_BLOCK], "big")) % 0xFFFF
            sums.append(acc)
        _sums[seed] = sums
        if len(_sums) > 16:
            _sums.popitem(last=False)
    return sums


def pattern_sum(pat: bytes, sums: list[int], a: int, b: int) -> int:
    """int.from_bytes(pat[a:b], "big") % 0xFFFF, the slice's share of a TCP checksum, from the
    block sums of `pat` (`_block_sums`): 2^16 = 1 (mod 0xFFFF), so a run of whole blocks (an
    even length each) sums as the difference of two table entries, and only the partial blocks
    at either end are summed from the bytes; an odd-length tail weighs what precedes it by 256.
    About a quarter of summing 1448 bytes in pure Python."""
    lo = -(-a // _SUM_BLOCK)
    hi = b // _SUM_BLOCK
    if hi <= lo:
        return int.from_bytes(pat[a:b], "big") % 0xFFFF
    lo_at, hi_at = lo * _SUM_BLOCK, hi * _SUM_BLOCK
    fb = int.from_bytes
    s = fb(pat[a:lo_at], "big") + sums[hi] - sums[lo]
    if b & 1:
        s *= 256
    return (s + fb(pat[hi_at:b], "big")) % 0xFFFF


def generated_bytes(seed: int, start: int, end: int) -> bytes:
    pat = _pattern(seed)
    out = []
    while start < end:
        off = start % PERIOD
        n = min(end - start, PERIOD)
        out.append(pat[off : off + n])
        start += n
    return b"".join(out)


def generated_sha256(size: int, seed: int) -> str:
    h = hashlib.sha256()
    step = PERIOD * 16
    for s in range(0, size, step):
        h.update(generated_bytes(seed, s, min(size, s + step)))
    return h.hexdigest()


def gen_request(size: int, seed: int) -> bytes:
    return f"GEN {size} {seed}".encode()


class Generated:
    """Handler for "GEN <size> <seed>"; bind it to a server with `attach` to seal its state."""

    def __init__(self, max_size: int = (1 << 32) - 1, cache_entries: int = 4096) -> None:
        self.max_size = max_size
        self.cache_entries = cache_entries
        self._box: UcontBox | None = None
        self.bad_ucont = 0
        # hand each slot its data's checksum share (pure build; `bench_core --no-app-sums`
        # turns it off to show the engine's own cost without what this app knows)
        self.give_sums = _GIVE_SUMS
        # bounded soft state: sealed blobs already authenticated -> (size, seed). A hit means
        # these exact bytes, bound to this connId, opened before; a miss just opens again.
        self._opened: dict[tuple[int, bytes], tuple[int, int]] = {}

    def attach(self, server: ServerEngine) -> Generated:
        self._box = UcontBox(server.keys)
        return self

    def __call__(self, msk: Minisocket) -> None:
        if msk.kind == "FIN" or (msk.kind == "SYN" and not msk.request):
            return  # nothing to serve yet: a bare SYN only opens the connection
        if self._box is None:
            raise ValueError("Generated handler used before attach(server)")
        box = self._box
        if msk.ucont:
            sealed = msk.ucont  # still valid and bound to this connection: pass it on unchanged
            state = self._opened.get((msk.conn_id, sealed))
            if state is None:
                plain = box.open(sealed, msk.conn_id)
                if plain is None or len(plain) != _UC.size:
                    self.bad_ucont += 1
                    msk.drop()
                    return
                state = _UC.unpack(plain)
                if state[0] > self.max_size:  # sealed by a server with another limit
                    self.bad_ucont += 1
                    msk.drop()
                    return
                if len(self._opened) >= self.cache_entries:
                    self._opened.clear()
                self._opened[(msk.conn_id, sealed)] = state
            size, seed = state
        else:
            words = request_words(msk)
            try:
                if len(words) != 3 or words[0] != "GEN":
                    raise ValueError
                size, seed = int(words[1]), int(words[2])
                if not 0 <= size <= self.max_size or not 0 <= seed < 1 << 64:
                    raise ValueError
            except ValueError:
                msk.drop()
                return
            sealed = box.seal(_UC.pack(size, seed), msk.conn_id)
        pat = _pattern(seed)
        sums = _block_sums(seed) if self.give_sums else None
        # `fill_slots(msk, size, read, lambda _off: sealed)` inlined (this runs per request):
        # the same bytes, FINHINTs and user continuations, without its closures and calls; each
        # slot is given its data's checksum share, from the pattern's block sums
        held = msk.ucont
        for slot in msk.slots:
            rng = slot.range
            if rng is None:
                slot.finhint = size
                slot.ucont = sealed
                continue
            start, end = rng
            room = slot.budget - len(sealed) if sealed != held else slot.budget
            cap = start + (room if room > 1 else 1)
            if size < end:  # end = min(end, size, cap), without a call
                end = size
            if cap < end:
                end = cap
            if start < end:
                off = start % PERIOD
                n = end - start
                if n > PERIOD:
                    slot.fill(start, generated_bytes(seed, start, end), end == size)
                else:
                    slot.fill(start, pat[off : off + n], end == size,
                              None if sums is None else pattern_sum(pat, sums, off, off + n))
            if end >= size or start >= end:
                slot.finhint = size
            slot.ucont = sealed
