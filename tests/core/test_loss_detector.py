"""When the client declares a packet lost (core/loss.py, FACK): a retransmission is judged
against the newest packet planned before it, so packets already on their way when it was asked
for cannot make it lost (#15: at RTT 50 ms with 1 % loss about half the declared losses were
such retransmissions, each fetched twice)."""

from __future__ import annotations

from trickles_kit.core import plan as pl
from trickles_kit.core.loss import LossDetector

DUP = 3  # the client's dupthresh in these examples


def _slot(pkt: int, kind: str = pl.SlotKind.CONTINUE) -> pl.Slot:
    return pl.Slot(pkt=pkt, kind=kind, ctype=0, state=0, tcp_base=0, start_cwnd=2,
                   ssthresh=64)


def _plan(*slots: pl.Slot) -> pl.Plan:
    return pl.Plan(verdict=pl.Verdict.NORMAL, slots=list(slots))


def _lost_after(det: LossDetector, max_rx: int) -> list[int]:
    """The retransmissions declared lost once packet `max_rx` has arrived."""
    return [pkt for pkt, exp in det.rtx_lost_below(max_rx - DUP + 1) if exp is not None]


def test_a_lone_retransmission_waits_for_the_packets_already_planned() -> None:
    det = LossDetector()
    for seq in range(10, 30):  # requests 10..29 each planned the packet after the window
        det.expect(_plan(_slot(seq + 20)), [(0, 1)], seq)
    # request 30 makes only a retransmission of packet 12
    det.expect(_plan(_slot(12, pl.SlotKind.RETRANSMIT)), [(0, 1)], 30)
    assert _lost_after(det, 49) == []  # packets planned before it (up to 49) prove nothing
    assert _lost_after(det, 49 + DUP - 1) == []
    assert _lost_after(det, 49 + DUP) == [12]  # dupthresh past the newest planned: lost


def test_a_retransmission_with_new_packets_in_its_plan_keeps_their_order() -> None:
    det = LossDetector()
    det.expect(_plan(_slot(40)), [(0, 1)], 20)
    det.expect(_plan(_slot(7, pl.SlotKind.RETRANSMIT), _slot(45), _slot(46)),
               [(0, 1), (1, 2), (2, 3)], 21)
    assert _lost_after(det, 46 + DUP - 1) == []
    assert _lost_after(det, 46 + DUP) == [7]


def test_clear_forgets_the_newest_planned() -> None:
    det = LossDetector()
    det.expect(_plan(_slot(500)), [(0, 1)], 400)
    det.clear()
    det.expect(_plan(_slot(3, pl.SlotKind.RETRANSMIT)), [(0, 1)], 10)
    assert _lost_after(det, 10 + DUP) == [3]
