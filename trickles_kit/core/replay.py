"""Replay history (PROTOCOL §7): bounded soft state that rejects a second use of a continuation.

Keys are 64-bit integers the server derives from the continuation's MAC (unforgeable and unique
per sealing), stamped with a time bucket: a continuation older than the freshness limit is
rejected as stale anyway, so a slot whose stamp has expired is free again. The table is allocated
once, at `max_entries` slots: memory is fixed, whatever the number of connections or the load;
when a key's bucket is full of fresh keys the oldest is evicted early (counted). The history is
soft state — a replica that restarts accepts one replay per continuation still fresh.
"""

from __future__ import annotations

import struct
from array import array


def slowstart_age_bucket(age_ms: float, unit_ms: float = 100.0) -> int:
    """Which SLOWSTART a continuation of this age may still make (one per bucket).

    An honest client times out with doubling RTOs (>= 0.2 s), capped at 64x: so power-of-two
    buckets of `unit` up to 128 units (12.8 s), then buckets of 64 units, half the largest
    backed-off RTO. Successive honest timeouts on one continuation never share a bucket; a
    replayer gets about 25 SLOWSTARTs (2 packets each) over a continuation's 120 s life.
    """
    units = int(age_ms / unit_ms)
    if units < 128:
        return units.bit_length()
    return 8 + (units - 128) // 64


def slowstart_bucket_end(bucket: int, unit_ms: float = 100.0) -> float:
    """The youngest age (ms) past `bucket`: when a client whose SLOWSTART on a continuation fell
    in `bucket` may make the next one (the client side of `slowstart_age_bucket`)."""
    units = 1 << bucket if bucket < 8 else 128 + (bucket - 7) * 64
    return units * unit_ms


class ReplayHistory:
    """A fixed table of 64-bit keys in 16-slot buckets, each slot stamped with its time bucket.

    All memory is allocated up front (12 bytes a slot), so the server's footprint does not move
    with the number of connections or with load: a new key takes the slot with the oldest stamp
    in its bucket (empty slots are stamped 0), and only when all 16 still hold fresh keys is a
    fresh one evicted early (counted in `evicted`; that continuation could then be replayed).
    """

    __slots__ = ("freshness", "max_entries", "width", "_nb", "_keys", "_stamps", "_count",
                 "evicted")

    ENTRY_BYTES = 12  # an 8-byte key and a 4-byte time stamp per slot, allocated up front
    BUCKETS = 12  # time buckets per freshness limit
    WAYS = 16  # slots per hash bucket: at 50 % load a bucket overflows about once in 10^5
    _LIVE = BUCKETS + 1  # a stamp this many time buckets old may still hold a fresh key
    _ROW = struct.Struct(f"={WAYS}Q")  # native order: reads the arrays in place
    _STAMPS = struct.Struct(f"={WAYS}I")

    def __init__(self, freshness: float = 120.0, max_entries: int = 1 << 20) -> None:
        if freshness <= 0 or max_entries < 1:
            raise ValueError("freshness and max_entries must be positive")
        self.freshness = freshness
        self._nb = -(-max_entries // self.WAYS)
        self.max_entries = self._nb * self.WAYS
        self.width = freshness / self.BUCKETS
        self._keys = array("Q", bytes(8 * self.max_entries))
        self._stamps = array("I", bytes(4 * self.max_entries))
        self._count = 0  # slots ever filled (the table never shrinks)
        self.evicted = 0

    def __len__(self) -> int:
        return self._count

    def memory_bound_bytes(self) -> int:
        return self.max_entries * self.ENTRY_BYTES + 4096  # + the objects around the arrays

    def check_and_add(self, key: int, now: float) -> bool:
        """True if `key` is new (and records it); False if seen within the freshness limit."""
        w = self.WAYS
        b = (key % self._nb) * w
        row = self._ROW.unpack_from(self._keys, b * 8)
        cur = int(now // self.width) + 1  # 0 marks an empty slot
        stamps = self._stamps
        if key in row:
            i = b + row.index(key)
            if stamps[i] and stamps[i] >= cur - self._LIVE:
                return False
            stamps[i] = cur  # the same key long expired: a stale continuation, refused elsewhere
            return True
        bucket = self._STAMPS.unpack_from(stamps, b * 4)
        oldest = min(bucket)
        i = b + bucket.index(oldest)
        if not oldest:
            self._count += 1
        elif oldest >= cur - self._LIVE:
            self.evicted += 1
        self._keys[i] = key
        stamps[i] = cur
        return True
