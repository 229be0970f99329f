"""One overshoot, one halving, even when the old window's last packets are lost (issue 15).

A request clocks out the bootstrap packets of its own ack and of the lost acks just before it
(PROTOCOL §7.4). When the bootstrap acks ran to the old window's very last packet, losing that
packet (a slow-start overshoot does, as often as not) left its bootstrap packet unsent: the new
epoch saw the gap as a loss and halved a second time for the same overshoot, to a quarter of the
peak. The bootstrap acks now end a few acks early, so a later ack of the window clocks it out.
"""

from __future__ import annotations

import pytest
from wire_helpers import sack_proof as _proof

from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.cc import cwnd
from trickles_kit.core.events import EventLog


@pytest.mark.parametrize("tail", [1, 2, 3])
@pytest.mark.parametrize("first_loss", [100, 158, 330])
def test_the_new_window_is_whole_when_the_old_window_ends_lost(first_loss: int,
                                                              tail: int) -> None:
    """Every other packet of the overshoot lost, and the last `tail` packets of the window."""
    base, c0, ss = 1, 3, 16383
    new_cwnd = cwnd(first_loss, base, c0, ss) // 2
    last_regular = first_loss - 1 + cwnd(first_loss - 1, base, c0, ss)
    lost = set(range(first_loss, last_regular + 1, 2)) | set(
        range(last_regular - tail + 1, last_regular + 1))
    received = set(range(base, last_regular + 1)) - lost
    slots = []
    for k in sorted(p for p in received if p > first_loss):
        plan = pl.plan_request(k, base, c0, ss, 0, _proof(received, base, k))
        assert plan.first_loss == first_loss
        slots += plan.slots
    boots = sorted(s.pkt for s in slots if s.kind == pl.BOOT)
    assert boots == list(range(last_regular + 1, last_regular + 1 + new_cwnd)), \
        "the new window exactly once, its last packet included"
    assert [s.pkt for s in slots if s.kind == pl.RETRANSMIT] == [first_loss]


def test_the_window_is_never_more_than_a_quarter_over_during_recovery() -> None:
    """The lead is bounded: newCwnd // 4, at most 3 (none for tiny windows)."""
    for first_loss in range(2, 400):
        new_cwnd, last_regular, boot_start = pl.recovery_window(first_loss, 1, 3, 16383)
        lead = last_regular - (boot_start + new_cwnd - 1)
        assert 0 <= lead <= min(3, new_cwnd // 4)
        assert boot_start >= first_loss


@pytest.mark.parametrize(("rate_mbit", "rtt_ms"), [(10, 100), (50, 50), (50, 100)])
def test_a_slow_start_overshoot_through_a_short_queue_halves_once(rate_mbit: int,
                                                                  rtt_ms: int) -> None:
    """A 40-packet drop-tail queue, well under the BDP (10 Mbit/s, RTT 100 ms: 83 packets):
    the overshoot loses ~40 packets, every other one to the window's end. One recovery, the
    window half the peak (the halved window fits the path: no genuine second loss)."""
    rate = rate_mbit * 1e6
    log = EventLog()
    r = simulate_transfer(
        int(3.75e6 * rate_mbit / 10), seed=1, on_event=log,
        down=LinkConfig(delay=rtt_ms / 2000, rate=rate, queue=40),
        up=LinkConfig(delay=rtt_ms / 2000, rate=None))
    assert r.ok
    starts = [e for e in log.of(ev.RECOVERY_START) if e.side == "server"]
    assert len(starts) == 1, [(e.detail["first_loss"], e.cwnd) for e in starts]
    first_loss = starts[0].detail["first_loss"]
    peak = cwnd(first_loss, 1, 3, 0x3FFF)
    assert starts[0].cwnd == peak // 2
    # the new epoch runs in congestion avoidance from the halved window, and only grows
    after = [e for e in log.of(ev.CONTINUE) if e.side == "server" and e.tcp_base > first_loss]
    assert after and min(e.cwnd for e in after) >= peak // 2
    assert r.timeouts == 0


def test_a_real_loss_in_the_recovery_round_still_halves() -> None:
    """A bootstrap packet lost on the path (not one never sent) is a new loss: halve again."""
    fast = {"rate": None}
    log = EventLog()
    simulate_transfer(1_000_000, seed=1, on_event=log,
                      down=LinkConfig(loss_pattern=[60], **fast), up=LinkConfig(**fast))
    sends = [e for e in log.events if e.side == "server" and e.kind in pl.SlotKind]
    boot = next(i for i, e in enumerate(sends) if e.kind == ev.BOOTSTRAP)
    log2 = EventLog()
    r = simulate_transfer(1_000_000, seed=1, on_event=log2,
                          down=LinkConfig(loss_pattern=[60, boot + 2], **fast),
                          up=LinkConfig(**fast))
    assert r.ok
    starts = [e for e in log2.of(ev.RECOVERY_START) if e.side == "server"]
    assert len(starts) == 2, "the second loss is a new congestion signal"
    assert starts[1].cwnd == max(starts[0].cwnd // 2, 1)
