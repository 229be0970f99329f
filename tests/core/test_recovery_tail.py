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
        new_cwnd, _, last_regular, boot_start = pl.recovery_window(first_loss, 1, 3, 16383)
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


def test_a_loss_in_the_recovery_round_does_not_halve_again() -> None:
    """A bootstrap packet lost on the path is part of the congestion episode already halved for
    (§7.4, one reduction per episode, as TCP for a lost retransmission): a second recovery that
    keeps the window (less the lead, which the new epoch's slow start gives back)."""
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
    assert len(starts) == 2, "the lost bootstrap packet is detected and recovered"
    first = starts[0].cwnd
    assert first > 4
    assert starts[1].cwnd == first - 1 - min(pl.BOOT_LEAD, (first - 1) // 4), \
        "not halved: the window (the retransmission in the lost packet's place) is kept"


@pytest.mark.parametrize("c0", [2, 5, 20, 300])
def test_an_unhalved_round_is_followed_by_halving_rounds(c0: int) -> None:
    """Only the first window of an epoch that starts in congestion avoidance (startCwnd =
    ssthresh: a recovery's) is exempt; the epoch an unhalved round starts is in slow start, so
    a loss in its first window halves — no chain of unhalved rounds under lasting congestion."""
    base = 1001
    for first_loss in range(base, base + c0):
        new, ss, last, boot = pl.recovery_window(first_loss, base, c0, c0)
        lead = min(pl.BOOT_LEAD, (c0 - 1) // 4)
        assert (new, ss, last) == (c0 - 1 - lead, c0, first_loss - 1 + c0)
        assert boot == first_loss + 1, "the lost packet's own ack clocks nothing (the rtx does)"
        assert new < ss
        b2 = last + 1
        for k in (b2, b2 + new - 1):
            new2, ss2, _, _ = pl.recovery_window(k, b2, new, ss)
            assert new2 == ss2 == max(cwnd(k, b2, new, ss) // 2, 1)
    # past the first window the recovery epoch halves as any other
    past = base + c0 + 1
    half = max(cwnd(past, base, c0, c0) // 2, 1)
    assert pl.recovery_window(past, base, c0, c0)[:2] == (half, half)


@pytest.mark.parametrize("lost_at", [0, 3, 7])
def test_an_unhalved_round_sends_the_new_window_exactly_once(lost_at: int) -> None:
    """Every ack of the recovery round but the lost one arrives: one retransmission, and the
    new epoch's first window B' .. B' + new - 1, each packet once."""
    base, c0 = 501, 16
    first_loss = base + lost_at
    new, _, last, _ = pl.recovery_window(first_loss, base, c0, c0)
    received = set(range(1, last + 1)) - {first_loss}
    slots = []
    for k in sorted(p for p in received if p > first_loss):
        plan = pl.plan_request(k, base, c0, c0, 0, _proof(received, 1, k))
        assert plan.first_loss == first_loss
        slots += plan.slots
    assert [s.pkt for s in slots if s.kind == pl.RETRANSMIT] == [first_loss]
    boots = [s.pkt for s in slots if s.kind == pl.BOOT]
    assert boots == list(range(last + 1, last + 1 + new))
    assert len(slots) == new + 1 <= c0
