"""A bounded server soft-state cache of recently verified continuations (PROTOCOL §10).

Why it is safe. The key is the exact bytes the MAC covers — pseudo-header (both addresses and
ports), type/seq/firstChild and the whole server-owned block including the key epoch — followed
by the 16 MAC bytes themselves. A hit therefore means *these very bytes* passed the full check
earlier in this process; a continuation with any field changed (or moved to another client
address or service) has a different key and misses, and a miss runs the full check. The client-
owned fields (clientState, parent, clientTimestamp) are not in the key, just as they are not
under the MAC.

What a hit skips: the BLAKE2s MAC and the "a seal of fields we never produce" sanity check, both
pure functions of the key. What a hit never skips: the key-epoch acceptance (run before the
lookup, so an expired epoch is refused even if still cached), freshness and future-skew (they
depend on the clock), SACK shape and nonces (they are in the request, not the continuation) and
the replay history (a hit on a replayed continuation is still dropped as a replay).

Memory. A fixed number of entries (LRU), whatever the number of connections; at about 250 bytes
an entry the default 4096 entries stay under 1 MiB. The cache is soft state: clearing it, or
a replica that never saw a continuation, only costs a full check.

Measured honestly (benchmarks/bench_cache.py): a continuation is normally used once, so in a
plain transfer the hit rate is ~0 and the cache only costs its insertions; it pays off for a
continuation presented again — a duplicated or replayed request, a SLOWSTART or FIN on the spare
continuation — where the replay drop becomes cheaper.
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_ENTRIES = 4096
ENV = "TRICKLES_STATE_CACHE"
ENTRY_BYTES = 256  # upper bound per entry: a ~110-byte bytes key + OrderedDict node and slot


def cache_key(pseudo: bytes, raw: bytes) -> bytes:
    """The exact MAC-covered bytes of a raw FULL continuation, then its MAC."""
    return pseudo + raw[0:6] + raw[18:]


class StateCache:
    """LRU set of verified continuation keys with hit/miss counters."""

    __slots__ = ("entries", "_d", "hits", "misses", "evictions")

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        if entries < 1:
            raise ValueError("a state cache needs at least 1 entry")
        self.entries = entries
        self._d: OrderedDict[bytes, None] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: bytes) -> bool:
        return key in self._d

    def lookup(self, key: bytes) -> bool:
        """True when `key` was verified before (and refreshes it); counts the hit or miss."""
        d = self._d
        if key in d:
            d.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        return False

    def add(self, key: bytes) -> None:
        """Remember a key that just passed the full check; evicts the least recently used."""
        d = self._d
        d[key] = None
        if len(d) > self.entries:
            d.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._d.clear()

    def memory_bound_bytes(self) -> int:
        return self.entries * ENTRY_BYTES

    def stats(self) -> dict[str, int | float]:
        looked = self.hits + self.misses
        return {"entries": len(self._d), "capacity": self.entries, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions,
                "hit_rate": round(self.hits / looked, 4) if looked else 0.0}


_default = 0  # ServerConfig.state_cache's default: off, unless an entry point says otherwise


def default_entries() -> int:
    """ServerConfig's default: off (0) unless `set_default_entries` changed it.

    The package reads no environment: the entry points (the `trickles` command, the scenario
    runner) and the test suite's conftest turn ``TRICKLES_STATE_CACHE`` into
    `set_default_entries(entries_from_text(...))`, so a whole suite can run with the cache on
    without touching each test (`TRICKLES_STATE_CACHE=1 pytest tests/apps/test_transfers.py`).
    """
    return _default


def set_default_entries(n: int) -> None:
    """Set the default cache size of every ServerConfig made from now on (0 = off)."""
    global _default
    if n < 0:
        raise ValueError("a state cache default must be >= 0 entries")
    _default = n


def entries_from_text(text: str, name: str = ENV) -> int:
    """An entry count as the `name` setting writes it: "" or "0" off, "1" the default size
    (`DEFAULT_ENTRIES`), N entries."""
    text = text.strip()
    if not text or text == "0":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an entry count (0 = off, 1 = default size)") from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0")
    return DEFAULT_ENTRIES if n == 1 else n


__all__ = ["DEFAULT_ENTRIES", "ENV", "StateCache", "cache_key", "default_entries",
           "entries_from_text", "set_default_entries"]
