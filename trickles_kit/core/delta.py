"""Delta encoding, the engine side: delayed-ack pairs (FULL2 + PAIR) and HASHED rebuilds.

Paired mode (PROTOCOL §4.2's delayed-ack emulation). Within an epoch (TCPBase B, startCwnd c0)
packet p is a PAIR packet when its offset `p - B` is even, otherwise FULL2 — counted after a
short lone prefix when c0 == 1, since a packet whose successor only its own ack would emit can
never wait for a partner (`lone_prefix`). A PAIR packet carries no usable continuation; the
FULL2 packet after it acknowledges both. The server answers a FULL2 request
for k with the *union* of what per-packet requests for k - 1 (when k - 1 is a PAIR packet the
proof covers) and k would have produced, so the packet schedule — and with it the Reno window
— is exactly the FULL1 one with half the requests. A lost PAIR packet is a hole the FULL2
request's own recovery step handles. The one packet whose partner never comes is the last
regular packet of an epoch that ends in recovery: the FULL2 request just before it also emits
its bootstrap packet, so the new epoch's window is complete.

HASHED mode: the client records, per request, the continuation it sent and the plan it predicted;
an answer in HASHED form names the request (low 16 bits of `parent`) and carries the server
clock, the key epoch's low byte and the MAC; `rebuild` recomputes everything else.
"""

from __future__ import annotations

from functools import lru_cache

from trickles_kit.core import plan as pl
from trickles_kit.core.cc import cwnd
from trickles_kit.wire.continuation import (
    BOOTSTRAP,
    FULL2,
    MINIMAL,
    PAIR,
    RECOVERY,
    Continuation,
)
from trickles_kit.wire.delta import epoch_from_low

_U32 = 0xFFFFFFFF


PAIR_MIN_CWND = 4  # pairs only once cwnd(p - 1) >= this (must be >= 2: see lone_prefix)


@lru_cache(maxsize=4096)
def lone_prefix(c0: int, ss: int, threshold: int = PAIR_MIN_CWND) -> int:
    """How many first packets of an epoch (c0, ss) travel alone (FULL2, never PAIR).

    Packet p may wait for a partner only if p + 1 is emitted without acknowledging p, i.e. if
    cwnd(p - 1) >= 2 (a packet with cwnd 1 before it would deadlock: its partner needs its own
    ack). Like TCP's quick acks, small windows ack every packet: pairs start once the window
    reaches `threshold`, so a lost FULL2 packet rarely leaves a small window without a
    continuation. The window never shrinks within an epoch, so the lone packets are a prefix;
    cwnd is translation-invariant, so the prefix depends on (c0, ss) only.
    """
    n = 0
    while cwnd(n - 1, 0, c0, ss) < threshold and n < 64:
        n += 1
    return n


def pair_type(pkt: int, base: int, c0: int, ss: int) -> int:
    """PAIR or FULL2: the wire type of packet `pkt` of the epoch (base, c0, ss) in paired mode."""
    off = pkt - base
    if c0 < PAIR_MIN_CWND:
        off -= lone_prefix(c0, ss)
    return PAIR if off >= 0 and not off & 1 else FULL2


def _covers(blocks: list[tuple[int, int]], pkt: int) -> bool:
    return any(left <= pkt <= right for left, right in blocks)


def _retype(plan: pl.Plan) -> pl.Plan:
    for s in plan.slots:
        if s.ctype != MINIMAL:  # retransmissions stay MINIMAL (nonce 0, never claimed)
            s.ctype = pair_type(s.pkt, s.tcp_base, s.start_cwnd, s.ssthresh)
    return plan


def plan_paired(k: int, tcp_base: int, start_cwnd: int, ssthresh: int, state: int,
                blocks: list[tuple[int, int]], slowstart: bool = False,
                max_gap: int = pl.MAX_GAP) -> pl.Plan:
    """`plan_request` for a FULL2 continuation: one request stands for up to two acks."""
    args = (tcp_base, start_cwnd, ssthresh, state, blocks)
    if slowstart or k < tcp_base or state == RECOVERY:
        return _retype(pl.plan_request(k, *args, slowstart, max_gap))
    acks = [k]
    if (k - 1 >= tcp_base and pair_type(k - 1, tcp_base, start_cwnd, ssthresh) == PAIR
            and _covers(blocks, k - 1)):
        acks.insert(0, k - 1)
    plans = [pl.plan_request(a, *args, False, max_gap) for a in acks]
    last = plans[-1]
    for p in plans:
        if p.verdict == "reject":
            return p
    slots = [s for p in plans for s in p.slots]
    fl = last.first_loss
    if fl >= 0:
        # the last regular packet of the ending epoch, when it is a PAIR packet, has no FULL2
        # partner: the request just before it emits its bootstrap packet (if it has one: the
        # bootstrap acks end before the window's last unless the window is tiny, core.plan)
        new, nss, lr, bs = pl.recovery_window(fl, tcp_base, start_cwnd, ssthresh)
        if (k + 1 == lr and bs + new - 1 == lr
                and pair_type(lr, tcp_base, start_cwnd, ssthresh) == PAIR):
            nb = lr + 1
            slots.append(pl.Slot(pkt=nb + new - 1, kind=pl.BOOT, ctype=FULL2, state=BOOTSTRAP,
                                 tcp_base=nb, start_cwnd=new, ssthresh=nss, first_loss=fl,
                                 first_bootstrap_seq=nb))
    verdicts = {p.verdict for p in plans}
    verdict = (pl.Verdict.RECOVERY if pl.Verdict.RECOVERY in verdicts or (slots and fl >= 0)
               else pl.Verdict.NORMAL if pl.Verdict.NORMAL in verdicts else last.verdict)
    if not slots:
        verdict = pl.Verdict.TERMINATE
    out = pl.Plan(verdict=verdict, slots=slots, cwnd=last.cwnd, reason=last.reason,
                  first_loss=fl, recovery_start=any(p.recovery_start for p in plans))
    return _retype(out)


def plan_for(ctype: int, k: int, tcp_base: int, start_cwnd: int, ssthresh: int, state: int,
             blocks: list[tuple[int, int]], slowstart: bool = False,
             max_gap: int = pl.MAX_GAP) -> pl.Plan:
    """The plan of a request on a continuation of type `ctype` (FULL2 = paired mode)."""
    fn = plan_paired if ctype == FULL2 else pl.plan_request
    return fn(k, tcp_base, start_cwnd, ssthresh, state, blocks, slowstart, max_gap)


def next_mrtt(mrtt: int, age: int, slowstart: bool) -> int:
    """The server's smoothed-RTT update (core.server._request), which the client replays."""
    sample = age if age < 1 << 31 else 0
    return (sample * 8 if slowstart or mrtt == 0 else mrtt - (mrtt >> 3) + sample) & _U32


class Predictions:
    """What the client sent and expects, per request, for rebuilding HASHED continuations.

    Bounded: only the newest `limit` requests are kept (keyed by the low 16 bits of their id);
    an answer to an older one is counted and its continuation ignored, its data still used.
    """

    def __init__(self, limit: int = 4096) -> None:
        if not 1 <= limit <= 1 << 15:
            raise ValueError("limit must be in 1..32768")
        self.limit = limit
        self._recs: dict[int, tuple[Continuation, dict[int, tuple[int, pl.Slot]], bool]] = {}

    def record(self, sent: Continuation, plan: pl.Plan, slowstart: bool) -> None:
        key = sent.parent & 0xFFFF
        self._recs.pop((key - self.limit) & 0xFFFF, None)
        snap = Continuation(sent.type, sent.seq, sent.first_child, sent.client_state,
                            sent.parent, sent.client_timestamp, sent.timestamp, sent.mrtt,
                            key_epoch=sent.key_epoch)
        self._recs[key] = (snap, {s.pkt: (i, s) for i, s in enumerate(plan.slots)}, slowstart)

    def __len__(self) -> int:
        return len(self._recs)

    def rebuild(self, h: Continuation, pkt: int, position: int,
                conn_id: int) -> Continuation | None:
        """The FULL continuation the HASHED `h` on packet `pkt` stands for, or None."""
        rec = self._recs.get(h.parent & 0xFFFF)
        if rec is None:
            return None
        sent, slots, slowstart = rec
        hit = slots.get(pkt)
        if hit is None or hit[0] != position or hit[1].ctype == MINIMAL:
            return None
        s = hit[1]
        age = (h.timestamp - sent.timestamp) & _U32
        return Continuation(
            s.ctype, pkt, 1 if position == 0 else 0, sent.client_state, sent.parent,
            sent.client_timestamp, h.timestamp, next_mrtt(sent.mrtt, age, slowstart), s.state,
            s.first_loss, s.first_bootstrap_seq, s.start_cwnd, s.ssthresh, s.tcp_base, conn_id,
            epoch_from_low(sent.key_epoch, h.key_epoch), h.mac)


__all__ = ["Predictions", "next_mrtt", "pair_type", "plan_for", "plan_paired"]
