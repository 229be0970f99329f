"""Replay history (PROTOCOL §7): bounded soft state that rejects a second use of a continuation.

Keys are 64-bit integers the server derives from the continuation's MAC (unforgeable and unique
per sealing), stamped with the continuation's seal time: a continuation older than the
freshness limit is rejected as stale anyway, so a slot whose stamp has expired is free again. The
table is allocated once, at `max_entries` slots: memory is fixed, whatever the number of
connections or the load. When a row is full of fresh keys the one sealed first is evicted and the
row's horizon rises to its seal time; continuations sealed at or before a horizon are refused, so
no load makes a replay succeed. The history is soft state — a replica that restarts accepts one
replay per continuation still fresh.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import ClassVar, Final

# Table geometry, at module level: a compiled (mypyc) class body cannot read its own earlier
# names, and the per-request path reads module constants faster than class attributes (Final:
# the compiled build reads them as C statics or literals, not with a dict look-up).
_WAYS: Final = 16  # slots per row: at 50 % load a row overflows about once in 10^5
_TICK: Final = 0.01  # seal stamps in 10 ms ticks (u32: 497 days from the table's start)
# One bytearray holds the rows, each 16 keys (u64), then their 16 stamps (u32), then the
# horizon (u32): a row is one stretch of memory, read in few cache misses (separate key, stamp
# and horizon arrays cost a miss each per request on a large table). Little-endian whatever
# the machine; `bytearray.find` probes a row for a key or an empty slot in C, no int per slot.
_STAMPS_AT: Final = 8 * _WAYS  # a row's stamps, from its start
_HORIZON_AT: Final = _STAMPS_AT + 4 * _WAYS
_STRIDE: Final = _HORIZON_AT + 4  # 196 bytes a row: 12 a slot + 4
_KEY: Final = struct.Struct("<Q")
_STAMP: Final = struct.Struct("<I")
_STAMPS: Final = struct.Struct(f"<{_WAYS}I").unpack_from
# the methods `check_and_add` calls, bound once (Final: the compiled build calls them without
# looking a method up by name on every call, ~5 per request)
_KEY_PACK: Final = _KEY.pack
_KEY_PUT: Final = _KEY.pack_into
_STAMP_AT: Final = _STAMP.unpack_from
_STAMP_PUT: Final = _STAMP.pack_into
_FIND: Final = bytearray.find
_EMPTY: Final = bytes(4)  # the stamp of an empty slot
_P: Final = (1 << 89) - 1  # a Mersenne prime above every 64-bit key: the row hash's field
REPLAY_ENTRY_BYTES: Final = 12  # an 8-byte key and a 4-byte seal stamp per slot, allocated up front


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
    """A fixed table of 64-bit keys in 16-slot rows, each slot stamped with the seal time of its
    continuation, plus one horizon per row: safe at any load.

    All memory is allocated up front (12 bytes a slot + 4 a row), so the server's footprint does
    not move with the number of connections or with load. A key's row comes from a keyed hash
    (secret per-table parameters): the key itself is on the wire (MAC bytes), so an unkeyed
    placement would let an attacker fill a victim's row on purpose. When a row is full of fresh
    entries, the entry sealed earliest is evicted and the row's horizon rises to its seal time;
    every continuation sealed at or before the horizon is then refused (`refused`), so an
    evicted continuation can never be replayed. Safety before liveness, as WireGuard's window: an
    honest request refused this way recovers through the client's timeout. Size the table for
    `max_entries >= 2 x peak requests per second x freshness` (docs/protocol.md §11.2).
    """

    __slots__ = ("freshness", "max_entries", "width", "_nb", "_rows", "_count", "_hkey", "_ha",
                 "_hb", "_base", "evicted", "refused")

    # (a ClassVar: the compiled class keeps it on the class, where bench/memory read it)
    ENTRY_BYTES: ClassVar[int] = REPLAY_ENTRY_BYTES
    WAYS = _WAYS
    TICK = _TICK

    def __init__(self, freshness: float = 120.0, max_entries: int = 1 << 20,
                 hash_key: bytes | None = None) -> None:
        if freshness <= 0 or max_entries < 1:
            raise ValueError("freshness and max_entries must be positive")
        self.freshness = freshness
        self._nb = -(-max_entries // _WAYS)
        self.max_entries = self._nb * _WAYS
        self.width = _TICK
        self._rows = bytearray(_STRIDE * self._nb)  # a stamp 0 marks an empty slot
        self._hkey = hash_key if hash_key is not None else os.urandom(16)
        # the row hash's secret (a, b), drawn from the table's key: see `row`
        ab = hashlib.blake2b(self._hkey, digest_size=32, person=b"trickles replay").digest()
        self._ha = int.from_bytes(ab[:16], "little") % (_P - 1) + 1  # 1 <= a < p
        self._hb = int.from_bytes(ab[16:], "little") % _P
        self._base: float | None = None  # the tick origin, set by the first call
        self._count = 0  # slots ever filled (the table never shrinks)
        self.evicted = 0  # fresh entries pushed out early (each raised a horizon)
        self.refused = 0  # continuations refused because they were sealed at or below a horizon

    def __len__(self) -> int:
        return self._count

    def memory_bound_bytes(self) -> int:
        return self.max_entries * REPLAY_ENTRY_BYTES + self._nb * 4 + 4096  # + the objects

    def row(self, key: int) -> int:
        """The row of `key`: ((a * key + b) mod p) mod rows, p = 2^89 - 1 prime, (a, b) secret.

        A Carter-Wegman universal hash: two keys picked without (a, b) share a row with
        probability at most about 2 / rows, as under a random placement, so nobody without the
        table's key can aim keys at one row. It is not a PRF (the BLAKE2b it replaced was, at
        ~0.6 us a request); what it lacks, resistance to an attacker who sees rows, does not
        apply: the table shows no row, and a refusal needs a row already full of fresh keys."""
        return (self._ha * key + self._hb) % _P % self._nb

    def holds(self, key: int) -> bool:
        """Whether `key` still has a slot (for tools and benchmarks: a fresh key and an evicted
        one look alike to `check_and_add` once the row's horizon passed them)."""
        kb, lo = _KEY.pack(key), self.row(key) * _STRIDE
        return _aligned(self._rows, kb, self._rows.find(kb, lo, lo + _STAMPS_AT), lo, 8) >= 0

    def _origin(self, t: float) -> float:
        """The tick origin, set by the first call: room below for continuations sealed before
        the start."""
        base = self._base
        if base is None:
            base = self._base = t - 2 * self.freshness - 10.0
        return base

    def _tick(self, t: float) -> int:
        return min(max(int((t - self._origin(t)) / _TICK) + 1, 1), 0xFFFFFFFF)

    def seen(self, key: int, now: float, sealed: float, token: object = None) -> str | None:
        """`check_and_add` as admission's replay hook (`core.admission.View.seen`): None when
        `key` is new (recorded), else "replay", or "replay_horizon" when it was sealed at or
        below its row's horizon (the table overflowed: maybe never seen, but it cannot be told
        from a replay of an evicted entry, so it is refused; docs §11.2)."""
        refused = self.refused
        if self.check_and_add(key, now, sealed):
            return None
        return "replay_horizon" if self.refused > refused else "replay"

    def _live(self, now: float, base: float) -> int:
        """The oldest seal tick still fresh at `now` (older seals are stale: their slot is
        free); `check_and_add` asks only when it judges a slot, not for a new key's."""
        cur = int((now - base) / _TICK) + 1
        cur = 1 if cur < 1 else cur if cur < 0xFFFFFFFF else 0xFFFFFFFF
        return cur - int(self.freshness / _TICK) - 2

    def check_and_add(self, key: int, now: float, sealed: float | None = None) -> bool:
        """True if `key` is new (and records it); False if it may have been seen before.

        `sealed` is when the continuation was sealed (server clock; defaults to `now`). False
        means: recorded within the freshness limit, or sealed at or before the row's horizon.
        """
        r: int = (self._ha * key + self._hb) % _P % self._nb  # self.row(key), inlined
        rows = self._rows
        lo = r * _STRIDE
        tick = _TICK
        base = self._base
        if base is None:
            base = self._origin(now)
        # self._tick(sealed), inlined (`live`, from now's tick, only where a slot is judged)
        seal = int(((now if sealed is None else sealed) - base) / tick) + 1
        seal = 1 if seal < 1 else seal if seal < 0xFFFFFFFF else 0xFFFFFFFF
        kb = _KEY_PACK(key)
        at = _FIND(rows, kb, lo, lo + _STAMPS_AT)  # the key's slot in its row, if any
        if (at - lo) & 7 and at > 0:
            at = _aligned(rows, kb, at, lo, 8)
        if at >= 0:
            i = lo + _STAMPS_AT + ((at - lo) >> 1)  # its stamp
            st: int = _STAMP_AT(rows, i)[0]
            if st and st >= self._live(now, base):
                return False
            _STAMP_PUT(rows, i, seal)  # the same key long expired: a stale continuation,
            return True  # refused elsewhere
        horizon: int = _STAMP_AT(rows, lo + _HORIZON_AT)[0]
        if seal <= horizon:
            self.refused += 1
            return False
        st0 = lo + _STAMPS_AT
        at = _FIND(rows, _EMPTY, st0, st0 + 4 * _WAYS)  # the first empty slot: min()'s pick
        if (at - st0) & 3 and at > 0:
            at = _aligned(rows, _EMPTY, at, st0, 4)
        if at >= 0:
            j = (at - st0) >> 2
            self._count += 1
        else:
            row = _STAMPS(rows, st0)
            oldest = min(row)
            j = row.index(oldest)
            # a full row of fresh entries: evict the one sealed first
            if oldest >= self._live(now, base):
                self.evicted += 1
                if seal <= oldest:  # the newcomer is the oldest: accept it, keep the others
                    _STAMP_PUT(rows, lo + _HORIZON_AT, max(horizon, seal))
                    return True
                _STAMP_PUT(rows, lo + _HORIZON_AT, max(horizon, oldest))
        _KEY_PUT(rows, lo + 8 * j, key)  # (= kb: a slice assignment costs twice this)
        _STAMP_PUT(rows, st0 + 4 * j, seal)
        return True


def _aligned(rows: bytearray, item: bytes, at: int, start: int, width: int) -> int:
    """The first match of `item` at or after `at` that starts a slot (`start` + a multiple of
    `width`) of the same row, or -1: after `bytearray.find` matched across two slots at `at`
    (rare), look on."""
    end = start + _WAYS * width
    while at >= 0 and (at - start) % width:
        at = rows.find(item, at + width - (at - start) % width, end)
    return at
