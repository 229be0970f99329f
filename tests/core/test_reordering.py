"""The client's loss threshold adapts to a path that reorders (core/loss.py `reordered`).

Per-packet balancing over replicas that answer at their own pace reorders a connection's
packets; with a fixed threshold of 3 every such reordering was declared a loss and halved the
window (the services balance demo at RTT 50 ms took 16 s for 2 MB). A packet declared lost
that arrives after all raises the threshold past the depth it was overtaken by."""

from __future__ import annotations

from trickles_kit.apps.generated import Generated, gen_request, generated_sha256
from trickles_kit.apps.sim import LinkConfig, build_world, sim_server
from trickles_kit.core.loss import MAX_REO_STEPS, MAX_REORDERING, LossDetector, ReorderGate


def test_the_threshold_rises_past_what_overtook_and_never_falls() -> None:
    loss = LossDetector(3)
    assert loss.reordering == 3
    loss.reordered(2)  # overtaken by fewer than the threshold: nothing to learn
    assert loss.reordering == 3
    loss.reordered(7)
    assert loss.reordering == 8
    loss.reordered(5)
    assert loss.reordering == 8
    loss.reordered(10_000)
    assert loss.reordering == MAX_REORDERING


def test_the_gate_holds_each_hole_a_window_from_its_own_overtaking() -> None:
    gate = ReorderGate()
    assert gate.note(0.0, 10, True, 0.05) == -1 and not gate.entries  # off until reordering
    gate.widen(1.0, 0.05)
    assert gate.steps == 1 and gate.window(0.05) == 0.0125
    assert gate.note(1.0, 20, True, 0.05) == -1  # packet 20 in: holes below it wait 12.5 ms
    assert gate.note(1.010, 30, True, 0.05) == -1  # 30 in: holes in 20..29 wait until 1.0225
    assert gate.note(1.011, 30, True, 0.05) == -1  # the same top again: no second entry
    assert gate.note(1.012, 31, False, 0.05) == -1  # nothing awaited below 31: no entry
    assert gate.next_deadline() == 1.0125
    assert gate.due(1.0126) == 20  # below 20 lost now; 20..29 still wait
    assert gate.due(1.03) == 30 and gate.next_deadline() is None
    gate.widen(1.03, 0.05)  # within an SRTT of the last widening: one late burst widens once
    assert gate.steps == 1
    for k in range(10):
        gate.widen(2.0 + k, 0.05)
    assert gate.steps == MAX_REO_STEPS and gate.window(0.0) == MAX_REO_STEPS * 0.002
    gate.note(20.0, 99, True, 0.05)
    gate.restart()  # a timeout's new epoch may reuse numbers: entries go, what was learnt stays
    assert gate.next_deadline() is None and gate.top == -1 and gate.steps == MAX_REO_STEPS


def _reordering_transfer(seed: int, share: float = 0.05, late: float = 0.004):
    """2 MB at RTT 50 ms over a 20 Mbit/s link that holds back `share` of packets by `late`."""
    size = 2_000_000
    server = sim_server(seed, Generated(), None, None, None)
    down = LinkConfig(delay=0.025, rate=20e6, queue=100, reorder=share, reorder_delay=late)
    world = build_world(seed, server, gen_request(size, seed), down=down,
                        up=LinkConfig(delay=0.025, rate=None))
    world.run(120.0)
    assert world.client.done and world.slot.hasher.hexdigest() == generated_sha256(size, seed)
    return world.client


def test_a_reordering_path_is_learnt_and_stops_halving_the_window() -> None:
    for seed in (1, 2, 3):
        client = _reordering_transfer(seed)
        c = client.counters
        assert c["reordered"] >= 1 and client.loss.reordering > 3, dict(c)
        # a fixed threshold of 3 made 11-22 recoveries of these transfers (no packet is lost)
        assert c["recoveries"] <= 3, dict(c)


def test_packets_held_longer_than_the_count_learns_wait_out_the_window() -> None:
    """20 % of packets 10 ms late: overtaken by ever more numbers, so the count keeps being
    passed (8-12 recoveries per transfer with the count alone); the time gate, on after the
    first, leaves one."""
    for seed in (1, 2, 3):
        client = _reordering_transfer(seed, 0.2, 0.010)
        c = client.counters
        assert client.gate.steps >= 1 and c["recoveries"] <= 2, dict(c)
