"""Replay history (PROTOCOL §7): bounded soft state that rejects a second use of a continuation.

Keys are 64-bit integers the server derives from the continuation's MAC (unforgeable and unique
per sealing), kept in time buckets: a continuation older than the freshness limit is rejected as
stale anyway, so a whole bucket expires at once. Memory depends on the request rate, never on the
number of connections, and is capped at `max_entries`; past the cap the oldest entries are
evicted early (counted). The history is soft state — a replica that restarts accepts one replay
per continuation still fresh.
"""

from __future__ import annotations

from collections import deque


def slowstart_age_bucket(age_ms: int, unit_ms: float = 100.0) -> int:
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


class ReplayHistory:
    __slots__ = ("freshness", "max_entries", "width", "_buckets", "_count", "evicted")

    # bytes per entry: a 64-bit int object (32 B) + its share of a set's hash table (16 B a
    # slot at <= 60 % load); tracemalloc measures 60-90 B, so 128 is an upper bound
    ENTRY_BYTES = 128
    BUCKETS = 12

    def __init__(self, freshness: float = 120.0, max_entries: int = 1 << 20) -> None:
        if freshness <= 0 or max_entries < 1:
            raise ValueError("freshness and max_entries must be positive")
        self.freshness = freshness
        self.max_entries = max_entries
        self.width = freshness / self.BUCKETS
        self._buckets: deque[tuple[int, set[int]]] = deque()
        self._count = 0
        self.evicted = 0

    def __len__(self) -> int:
        return self._count

    def memory_bound_bytes(self) -> int:
        return self.max_entries * self.ENTRY_BYTES

    def check_and_add(self, key: int, now: float) -> bool:
        """True if `key` is new (and records it); False if seen within the freshness limit."""
        buckets = self._buckets
        slot = int(now // self.width)
        # a bucket may go once all it holds is older than the freshness limit
        oldest_kept = slot - self.BUCKETS - 1
        while buckets and buckets[0][0] < oldest_kept:
            self._count -= len(buckets.popleft()[1])
        for _, seen in buckets:
            if key in seen:
                return False
        if not buckets or buckets[-1][0] < slot:
            buckets.append((slot, set()))
        if self._count >= self.max_entries:
            self._evict_one()
        buckets[-1][1].add(key)
        self._count += 1
        return True

    def _evict_one(self) -> None:
        buckets = self._buckets
        while buckets and not buckets[0][1]:
            buckets.popleft()
        if buckets:
            buckets[0][1].pop()
            self._count -= 1
            self.evicted += 1
