"""Recovery counts its retransmissions inside the halved window (PROTOCOL §7.4, issue 15).

After a slow-start overshoot a drop-tail queue loses about every other packet of the last
window. TCP's SACK recovery then sends the halved window in all, retransmissions included
(RFC 6675's pipe); a recovery that retransmitted every hole on top of the halved window sent
about twice what the path holds, lost half of it again and halved once more, and again.
"""

from __future__ import annotations

import pytest
from wire_helpers import sack_proof as _proof

from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.cc import cwnd
from trickles_kit.core.events import EventLog


@pytest.mark.parametrize(("first_loss", "step"), [(100, 2), (60, 3), (300, 2), (41, 1)])
def test_overshoot_round_sends_the_halved_window_and_one_retransmission(first_loss: int,
                                                                         step: int) -> None:
    base, c0, ss = 1, 3, 16383
    new_cwnd = cwnd(first_loss, base, c0, ss) // 2
    last_regular = first_loss - 1 + cwnd(first_loss - 1, base, c0, ss)
    # every step-th packet of the old window lost from first_loss on (step 1: all of one
    # short burst), its last packet received (a request after every hole)
    lost = set(range(first_loss, last_regular, step)) if step > 1 else \
        set(range(first_loss, first_loss + 5))
    received = set(range(base, last_regular + 1)) - lost
    slots = []
    for k in sorted(p for p in received if p > first_loss):
        plan = pl.plan_request(k, base, c0, ss, 0, _proof(received, base, k))
        assert plan.verdict in ("recovery", "terminate") and plan.first_loss == first_loss
        slots += plan.slots
    rtx = [s.pkt for s in slots if s.kind == pl.RETRANSMIT]
    boots = sorted(s.pkt for s in slots if s.kind == pl.BOOT)
    assert rtx == [first_loss], "one fast retransmission, of the first loss"
    assert boots == list(range(last_regular + 1, last_regular + 1 + new_cwnd)), \
        "the new window exactly once"
    assert len(slots) == new_cwnd + 1


@pytest.mark.parametrize(("rate_mbit", "rtt_ms"), [(10, 50), (10, 100), (50, 50)])
def test_one_overshoot_does_not_cascade(rate_mbit: int, rtt_ms: int) -> None:
    """A single flow's slow start through a one-BDP drop-tail queue: the window is cut to
    about what the path holds, not halved again and again below it."""
    rate = rate_mbit * 1e6
    bdp = int(rate * rtt_ms / 1000 / 8 / 1500) + 1  # packets of 1500 bytes
    log = EventLog()
    simulate_transfer(
        rate_mbit * 400_000, seed=1, on_event=log, time_limit=rtt_ms / 1000 * 30,
        down=LinkConfig(delay=rtt_ms / 2000, rate=rate, queue=bdp),
        up=LinkConfig(delay=rtt_ms / 2000, rate=None))
    cuts = [e.cwnd for e in log.of(ev.RECOVERY_START) if e.side == "server"]
    assert cuts, "slow start overflowed the queue (the scenario has an overshoot)"
    assert cuts[0] >= bdp, cuts
    # the path holds 2 x BDP packets: Reno halves to about that; the window may be cut once
    # more where the halved window fills the queue to the brim, never below half the BDP. A
    # loss in the recovery round itself does not halve (§7.4: one reduction per episode)
    assert min(cuts) >= bdp // 2, f"window cut {cuts} (BDP {bdp} packets)"
    halvings = [c for i, c in enumerate(cuts) if i == 0 or c <= (cuts[i - 1] + 1) // 2]
    assert len(halvings) <= 2, cuts
