"""The replay history's fixed table: refuses repeats while fresh, frees expired slots, counts
early evictions, and never grows."""

from __future__ import annotations

import random
import sys

import pytest

from trickles_kit.core.replay import ReplayHistory, slowstart_age_bucket, slowstart_bucket_end


def test_repeat_refused_within_freshness_and_slot_reused_after() -> None:
    h = ReplayHistory(freshness=120.0, max_entries=64)
    assert h.check_and_add(12345, 0.0)
    assert not h.check_and_add(12345, 119.0)  # within the limit: a replay
    assert h.check_and_add(12345, 200.0)  # long expired (the freshness check refuses it anyway)
    assert h.check_and_add(0, 1.0) and not h.check_and_add(0, 2.0)  # key 0 is a key like any


def test_expired_slots_are_taken_before_fresh_ones_are_evicted() -> None:
    h = ReplayHistory(freshness=120.0, max_entries=16)  # one bucket of 16 slots
    old = list(range(1, 17))
    for k in old:
        assert h.check_and_add(k * h._nb, 0.0)
    assert len(h) == 16 and h.evicted == 0
    # 140 s later every stamp has expired: new keys take those slots without an eviction
    for k in range(100, 116):
        assert h.check_and_add(k * h._nb, 140.0)
    assert h.evicted == 0
    # a 17th fresh key in a full bucket of fresh keys evicts the oldest, and says so
    assert h.check_and_add(999 * h._nb, 141.0)
    assert h.evicted == 1


def test_table_does_not_grow() -> None:
    h = ReplayHistory(freshness=120.0, max_entries=4096)
    size = sys.getsizeof(h._rows)
    rng = random.Random(3)
    keys = [rng.getrandbits(64) for _ in range(20_000)]
    for i, k in enumerate(keys):
        h.check_and_add(k, i * 0.01)
    assert sys.getsizeof(h._rows) == size
    assert size <= h.memory_bound_bytes()
    assert len(h) == h.max_entries  # every slot used, none added
    # the most recent keys (well under capacity within the last time bucket) are all refused
    assert not any(h.check_and_add(k, 200.0) for k in keys[-500:])


def test_rejects_bad_sizes() -> None:
    for args in ((0.0, 10), (120.0, 0)):
        try:
            ReplayHistory(*args)
        except ValueError:
            continue
        raise AssertionError(f"accepted {args}")


@pytest.mark.parametrize("unit", [100.0, 37.5])
def test_slowstart_bucket_end_is_where_the_next_bucket_starts(unit: float) -> None:


    for b in range(0, 30):
        end = slowstart_bucket_end(b, unit)
        assert slowstart_age_bucket(end, unit) == b + 1
        assert slowstart_age_bucket(end - 0.01, unit) == b
