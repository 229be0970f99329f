"""What one request makes the server send — a pure function shared by server and client.

The server runs it to answer; the client runs the very same function to predict how many packets
(and which numbers) each request will produce, so it can name the bytes each one should carry.
Covers the normal step (§4.2), the one deterministic recovery plan (§4.3), the timeout restart
(§4.4) and the handshake's initial window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trickles_kit.core.cc import cwnd
from trickles_kit.core.events import EventKind
from trickles_kit.core.names import Name
from trickles_kit.wire.continuation import BOOTSTRAP, FULL1, MINIMAL, NORMAL, RECOVERY


class SlotKind(Name):
    """Why a slot is sent. The server reports each slot with the event of the same kind, so
    the values are the event kinds' by design (not by coincidence)."""

    CONTINUE = EventKind.CONTINUE.value
    SPLIT = EventKind.SPLIT.value
    RETRANSMIT = EventKind.RETRANSMIT.value
    BOOT = EventKind.BOOTSTRAP.value
    INITIAL = EventKind.INITIAL.value


class Verdict(Name):
    """What the server makes of a request; `reject` is a counted drop, `terminate` ends the
    trickle without an answer."""

    NORMAL = "normal"
    HANDSHAKE = "handshake"
    RECOVERY = "recovery"
    SLOWSTART = "slowstart"
    TERMINATE = "terminate"
    REJECT = "reject"


# module-level names for the hot path (a global read, not an enum attribute)
CONTINUE, SPLIT, RETRANSMIT = SlotKind.CONTINUE, SlotKind.SPLIT, SlotKind.RETRANSMIT
BOOT, INITIAL = SlotKind.BOOT, SlotKind.INITIAL
NORMAL_V, HANDSHAKE_V, RECOVERY_V = Verdict.NORMAL, Verdict.HANDSHAKE, Verdict.RECOVERY
SLOWSTART_V, TERMINATE_V, REJECT_V = Verdict.SLOWSTART, Verdict.TERMINATE, Verdict.REJECT

MAX_GAP = 20
SLOWSTART_CWND = 2
# acks at the end of a recovering window that clock out no bootstrap packet of their own
# (`recovery_window`); 3 as TCP's dupthresh, the inflation of RFC 5681's fast recovery
BOOT_LEAD = 3


@dataclass(slots=True)
class Slot:
    """One packet the server will emit, with the congestion fields its continuation carries."""

    pkt: int
    kind: str
    ctype: int
    state: int
    tcp_base: int
    start_cwnd: int
    ssthresh: int
    first_loss: int = 0
    first_bootstrap_seq: int = 0


@dataclass(slots=True)
class Plan:
    verdict: Verdict
    slots: list[Slot] = field(default_factory=list)
    cwnd: int = 0
    reason: str = ""
    first_loss: int = -1
    recovery_start: bool = False  # this request retransmits the first hole: the plan starts here


def first_missing(blocks: list[tuple[int, int]], base: int, k: int) -> int | None:
    """First packet in [base, k] the blocks do not cover (blocks sorted and disjoint)."""
    pos = base
    for left, right in blocks:
        if right < pos:
            continue
        if left > pos:
            return pos
        pos = right + 1
        if pos > k:
            return None
    return pos if pos <= k else None


def contiguous_end(blocks: list[tuple[int, int]], base: int) -> int:
    """Last packet of the covered run starting at base (base - 1 when base is not covered)."""
    pos = base
    for left, right in blocks:
        if right < pos:
            continue
        if left > pos:
            break
        pos = right + 1
    return pos - 1


def hole_before(blocks: list[tuple[int, int]], base: int, k: int) -> tuple[int, int] | None:
    """The uncovered run ending at k - 1 (within [base, k-1]), or None if k - 1 is covered."""
    if k - 1 < base:
        return None
    prev_right = base - 1
    for left, right in blocks:
        if left > k - 1:
            break
        if right >= k - 1:
            return None
        prev_right = max(prev_right, right)
    return (prev_right + 1, k - 1)


def plan_request(
    k: int,
    tcp_base: int,
    start_cwnd: int,
    ssthresh: int,
    state: int,
    blocks: list[tuple[int, int]],
    slowstart: bool = False,
    max_gap: int = MAX_GAP,
) -> Plan:
    """Plan the answer to a valid request that acknowledges packet k with the given epoch."""
    if slowstart:
        right = contiguous_end(blocks, tcp_base)
        if right > k:
            right = k
        ss = max(cwnd(right, tcp_base, start_cwnd, ssthresh) // 2, SLOWSTART_CWND)
        base = right + 1
        return Plan(
            verdict=SLOWSTART_V,
            slots=[
                Slot(pkt=base + i, kind=INITIAL, ctype=FULL1, state=NORMAL, tcp_base=base,
                     start_cwnd=SLOWSTART_CWND, ssthresh=ss)
                for i in range(SLOWSTART_CWND)
            ],
            cwnd=SLOWSTART_CWND,
        )
    if state == RECOVERY:
        return Plan(verdict=TERMINATE_V, reason="recovery continuation")
    if k == tcp_base - 1:  # the handshake continuation: open the initial window
        return Plan(
            verdict=HANDSHAKE_V,
            slots=[
                Slot(pkt=tcp_base + i, kind=INITIAL, ctype=FULL1, state=NORMAL,
                     tcp_base=tcp_base, start_cwnd=start_cwnd, ssthresh=ssthresh)
                for i in range(start_cwnd)
            ],
            cwnd=start_cwnd,
        )
    if k < tcp_base:
        return Plan(verdict=REJECT_V, reason="ack before epoch")
    # the common case first: one block covering [base, k] (or more, all contiguous)
    if (len(blocks) == 1 and blocks[0][0] <= tcp_base and blocks[0][1] >= k) or (
        first_missing(blocks, tcp_base, k) is None
    ):
        prev = cwnd(k - 1, tcp_base, start_cwnd, ssthresh)
        cur = cwnd(k, tcp_base, start_cwnd, ssthresh)
        first = k + prev
        slots = [Slot(first, CONTINUE, FULL1, NORMAL, tcp_base, start_cwnd, ssthresh)]
        for i in range(1, cur - prev + 1):
            slots.append(Slot(first + i, SPLIT, FULL1, NORMAL, tcp_base, start_cwnd, ssthresh))
        return Plan(NORMAL_V, slots, cur)
    loss = first_missing(blocks, tcp_base, k)
    assert loss is not None
    return _recovery(k, tcp_base, start_cwnd, ssthresh, blocks, loss, max_gap)


def recovery_window(first_loss: int, tcp_base: int, start_cwnd: int,
                    ssthresh: int) -> tuple[int, int, int, int]:
    """(new_cwnd, new_ssthresh, last_regular, boot_start) of a recovery from `first_loss`
    (§7.4): the acks boot_start .. boot_start + new_cwnd - 1 of the old window each clock out
    one packet of the new epoch, whose TCPBase is last_regular + 1. That run ends BOOT_LEAD
    acks before last_regular (fewer when the old window has no room), so the last acks of the
    window, which a slow-start overshoot loses as often as not, are never the only ones to
    clock a packet.

    One reduction per congestion episode: a loss among the recovery round's own packets (the
    first window of an epoch that starts in congestion avoidance, startCwnd = ssthresh) is the
    congestion already halved for, or a random loss of what are mostly retransmitted bytes —
    TCP does not reduce again for a lost retransmission either. The window keeps its size:
    the new epoch (new_cwnd, ssthresh = the old window) starts in slow start, so a loss in
    *its* first window halves (no chain of unhalved rounds)."""
    prev = cwnd(first_loss - 1, tcp_base, start_cwnd, ssthresh)
    last_regular = first_loss - 1 + prev
    if start_cwnd == ssthresh and first_loss < tcp_base + start_cwnd and prev > 1:
        # the retransmission takes the lost packet's place (its ack clocks nothing); the lead
        # comes out of the round and back in the new epoch's slow start up to prev
        lead = min(BOOT_LEAD, (prev - 1) // 4)
        new_cwnd, new_ss = prev - 1 - lead, prev
    else:
        new_cwnd = max(cwnd(first_loss, tcp_base, start_cwnd, ssthresh) // 2, 1)
        new_ss = new_cwnd
        # at most a quarter more than new_cwnd in flight for the round; and boot_start >=
        # first_loss (prev - new_cwnd >= 0: new_cwnd <= (prev + 1) // 2)
        lead = min(BOOT_LEAD, new_cwnd // 4, prev - new_cwnd)
    return new_cwnd, new_ss, last_regular, last_regular - new_cwnd + 1 - lead


def _recovery(
    k: int,
    tcp_base: int,
    start_cwnd: int,
    ssthresh: int,
    blocks: list[tuple[int, int]],
    first_loss: int,
    max_gap: int,
) -> Plan:
    """Recovery (§7.4) like TCP's SACK recovery (RFC 6675): one fast retransmission of the
    first loss, then the halved window — and nothing more — from the old window's last acks.
    Other lost bytes travel in those bootstrap packets (the client names every slot's bytes,
    missing ones first): a retransmission per hole on top of new_cwnd bootstrap packets made the
    recovery round carry ~2x the pipe after an overshoot and halved the window again and again.

    Each request clocks out the bootstrap packets of its own ack and of the lost acks just
    before it. A packet nobody clocks out is never sent, and the new epoch takes the gap for a
    loss and halves a second time for the same overshoot: that is what happened when the old
    window's very last packet was lost (issue 15). So the bootstrap acks end BOOT_LEAD acks
    early (`recovery_window`), and a request from those last acks clocks out only the
    bootstrap packets of the lost acks before it."""
    new_cwnd, new_ss, last_regular, boot_start = recovery_window(first_loss, tcp_base,
                                                                 start_cwnd, ssthresh)
    if k > last_regular:
        return Plan(verdict=REJECT_V, reason="ack beyond the window", first_loss=first_loss)
    base = last_regular + 1
    slots: list[Slot] = []
    hole = hole_before(blocks, tcp_base, k)
    starts = hole is not None and hole[0] == first_loss
    if starts:
        slots.append(Slot(first_loss, RETRANSMIT, MINIMAL, RECOVERY, tcp_base, start_cwnd,
                           ssthresh, first_loss, base))
    lo = k  # the acks this request clocks out: its own and those of the hole before it
    if hole is not None and hole[1] - hole[0] < max_gap:
        lo = hole[0]
    if lo < boot_start:
        lo = boot_start
    hi = boot_start + new_cwnd - 1  # the last bootstrap ack
    if k < hi:
        hi = k
    shift = base - boot_start
    for m in range(lo, hi + 1):
        slots.append(Slot(m + shift, BOOT, FULL1, BOOTSTRAP, base, new_cwnd, new_ss,
                           first_loss, base))
    return Plan(RECOVERY_V if slots else TERMINATE_V, slots, new_cwnd, "", first_loss, starts)
