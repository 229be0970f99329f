"""Byte-exact simulated transfers under loss, reordering, duplication and burst loss.

CI runs 50 seeds per cell (the acceptance figure); a local run takes 5 unless TRICKLES_SEEDS is
set, so `make test` stays quick on a laptop.
"""

from __future__ import annotations

import os
import random

import pytest

from trickles_kit.apps.sim import LinkConfig, simulate_transfer

SEEDS = int(os.environ.get("TRICKLES_SEEDS", "50" if os.environ.get("CI") else "5"))
SIZES = [0, 1, 1448, 1449, 10_000_000]


def _burst(seed: int) -> dict:
    start = random.Random(seed).randrange(50, 400)
    return {"down": LinkConfig(loss_pattern=range(start, start + 30))}


CONDITIONS = {
    "loss0": lambda s: {"loss": 0.0},
    "loss1": lambda s: {"loss": 0.01},
    "loss5": lambda s: {"loss": 0.05},
    "loss20": lambda s: {"loss": 0.20},
    "reorder": lambda s: {"down": LinkConfig(reorder=0.2), "up": LinkConfig(reorder=0.2)},
    "duplicate": lambda s: {"down": LinkConfig(duplicate=0.1), "up": LinkConfig(duplicate=0.1)},
    "burst30": _burst,
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cond", list(CONDITIONS))
def test_byte_exact(cond: str, size: int) -> None:
    failures = []
    for seed in range(SEEDS):
        r = simulate_transfer(size, seed=seed, **CONDITIONS[cond](seed))
        if not r.ok:
            failures.append((seed, r.phase, r.bytes, r.sha256_received[:12]))
        assert r.sha256_sent == r.sha256_received or not r.ok
    assert not failures, f"{cond} size={size}: {len(failures)}/{SEEDS} failed: {failures[:5]}"


def test_burst_really_loses_and_recovers() -> None:
    """The burst cell is not vacuous: 30 consecutive packets are dropped and the data arrives."""
    r = simulate_transfer(1_000_000, seed=3, down=LinkConfig(loss_pattern=range(100, 130)))
    assert r.links["down"]["lost"] == 30
    assert r.ok
    assert r.client["losses"] >= 30


def test_loss_really_happens_in_both_directions() -> None:
    r = simulate_transfer(1_000_000, loss=0.05, seed=9)
    assert r.links["down"]["lost"] > 0 and r.links["up"]["lost"] > 0
    assert r.ok and r.retransmissions > 0


def test_reorder_and_duplicates_are_exercised() -> None:
    r = simulate_transfer(
        1_000_000, seed=4,
        down=LinkConfig(reorder=0.2, duplicate=0.1), up=LinkConfig(reorder=0.2, duplicate=0.1),
    )
    assert r.links["down"]["reordered"] > 0 and r.links["down"]["duplicated"] > 0
    assert r.server.get("drop.replay", 0) > 0  # duplicated requests are caught as replays
    assert r.ok


def test_same_seed_same_run() -> None:
    a = simulate_transfer(300_000, loss=0.05, seed=11)
    b = simulate_transfer(300_000, loss=0.05, seed=11)
    assert a.as_dict() | {"wall_seconds": 0} == b.as_dict() | {"wall_seconds": 0}


def test_bad_link_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="probability"):
        LinkConfig(loss=1.5)
    with pytest.raises(ValueError):
        simulate_transfer(-1)
