"""Uplink repair (docs/protocol.md §8.8): the client's answer to lost requests.

A lost request leaves a gap in the packets the client predicted, exactly like a lost answer.
The first packet numbered above a gap makes the client send the request the gap belongs to
again, the very same datagram, if none of that request's packets came: the server either never
saw it and answers now with the same packets, or answered it already and refuses the copy as a
replay. The gap's packets then wait about a round trip (requests past them are held, as for any
undecided hole, so nothing new is sent meanwhile); still missing after the last repeat, they are
lost and recovery halves the window as before. Whether repeats pay is measured (gaps may be lost
answers: then they only delay recovery), and so is the loss of one request datagram: the more
there is, the more copies each request goes out in (at most `request_copies`), so that a client
sending copies of its own accord gains next to nothing.

The engine owns the packets it expects; this object owns which request each one answers, the
repeats' deadlines and the two estimates, and acts on the engine it was given.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, ClassVar, Final

from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.phase import Phase
from trickles_kit.wire.messages import REQ_NORMAL, Request

if TYPE_CHECKING:  # (a type only: the engine imports this module)
    from trickles_kit.core.client import ClientEngine

_U32 = 0xFFFFFFFF


class SentRequest:
    """A NORMAL request as sent, kept while its packets are outstanding: a repeat is the very
    same datagram, so the server plans the very same packets for it."""

    __slots__ = ("segs", "copies", "stamp", "wire", "k", "pkts", "epoch", "answered",
                 "repeats", "first_repeat", "due", "serial", "sent", "resent")

    def __init__(self, k: int, plan: pl.Plan, epoch: int, serial: int) -> None:
        self.segs: list[bytes] = []  # the copies sent (none: not repeatable)
        self.copies = 0  # how many went out at first
        self.stamp = 0  # the first copy's clientTimestamp; copy i carries stamp + i
        # (request, clientState, parent, flags): to make more copies for a repeat
        self.wire: tuple[Request, int, int, int] | None = None
        self.k = k
        self.pkts = [s.pkt for s in plan.slots if s.kind != pl.RETRANSMIT]
        self.epoch = epoch
        self.answered = False  # a packet of it arrived: the server had it, a gap is data loss
        self.repeats = 0
        self.first_repeat = 0.0
        self.due = 0.0
        self.serial = serial
        self.sent = 0  # the order of its latest repeat among all repeats (UplinkRepair.sent)
        self.resent = 0.0  # when its latest repeat went out


class UplinkRepair:
    YIELD_START: Final = 0.3  # the repair yield assumed before any repeat
    YIELD_MIN: Final = 0.25  # repair yield below which gaps are not repeated (but for probes)
    YIELD_AGAIN: Final = 0.75  # ... below which a repeat that failed is not repeated again
    YIELD_GAIN: Final = 1 / 8  # EWMA gain: per repeated request, repaired (1) or not (0)
    REPAIRS_MIN: Final = 8  # requests repaired at once: up to this many, or a quarter of the window
    PROBE_EVERY: Final = 16  # gaps: with a low yield, one in this many is still repeated
    # copies per request by the measured loss of one request datagram: c + 1 copies from
    # COPY_STEPS[c - 1] up (2 from 2 %, 3 from 6 %), back down below 3/4 of the step
    COPY_STEPS: ClassVar[tuple[float, ...]] = (0.02, 0.06, 0.15)
    COPY_GAIN: Final = 1 / 128  # EWMA gain of the loss estimate (after as many trials)
    COPY_BURST: Final = 256  # datagrams waiting to be sent past which no more copies are added
    PROBE_PAIR: Final = 16  # sent once, one request in this many still goes out twice (a probe)
    REPAIR_RTTS: Final = 1.25  # a repeat's packets are waited this many smoothed RTTs (at least)

    def __init__(self, eng: ClientEngine) -> None:
        self.eng = eng
        # the request each outstanding packet answers, the packets waiting for a repeated
        # request, and the repeats' deadlines
        self.req_of: dict[int, SentRequest] = {}
        self.rtx_req_of: dict[int, SentRequest] = {}
        self.under_repair: dict[int, SentRequest] = {}
        self.heap: list[tuple[float, int, SentRequest]] = []
        self.serial = 0
        self.sent = 0  # repeats sent so far: the order the server meets them in
        # whether repeats pay: the share of repeated requests whose packets then came (EWMA
        # over them); low when the gaps are answers lost on the way
        self.yield_ = self.YIELD_START
        self.skipped = 0
        # the loss of one request datagram on the way to the server (mean of the first
        # trials, then an EWMA) and the copies every NORMAL request goes out in now
        self.copy_loss = 0.0
        self.copy_trials = 0
        self.copies = 1

    def new_request(self, k: int, plan: pl.Plan, epoch: int) -> SentRequest:
        self.serial += 1
        return SentRequest(k, plan, epoch, self.serial)

    def note(self, plan: pl.Plan, req: SentRequest | None) -> None:
        """The packets `plan` will make answer `req` (None: a request that is not repeated)."""
        for s in plan.slots:
            if s.kind == pl.RETRANSMIT:
                if req is not None:
                    self.rtx_req_of[s.pkt] = req
                continue
            self.under_repair.pop(s.pkt, None)  # planned anew: this request decides
            if req is not None:
                self.req_of[s.pkt] = req
            else:
                self.req_of.pop(s.pkt, None)

    def copy(self, req: Request, ack: int, flags: int, segs: list[bytes]) -> None:
        """A NORMAL request just sent (`segs` holds it): its copies (the server answers one),
        copy i stamped i ms later so its answer says which arrived first; none within a long
        burst (held requests let go at once), whose copies would overflow the path's queues."""
        eng = self.eng
        c = req.cont
        assert c is not None
        n = self.copies
        if n == 1 and eng.cfg.request_copies > 1 and \
                eng.counters["requests"] % self.PROBE_PAIR == 0:
            n = 2  # a probe: which copy is answered measures the loss of one
            eng.counters["probe_pairs"] += 1
        if n > 1 and eng.build.preds is None and len(eng._outbox) < self.COPY_BURST:
            t0 = c.client_timestamp
            for i in range(1, n):
                c.client_timestamp = (t0 + i) & _U32
                segs.append(eng.build.segment(req.encode(), ack, flags))
            c.client_timestamp = t0
            eng._outbox.extend(segs[1:])
            eng.counters["copies"] += len(segs) - 1
            eng.counters["tx"] += len(segs) - 1

    def clear(self) -> None:
        self.req_of.clear()
        self.rtx_req_of.clear()
        self.under_repair.clear()
        self.heap.clear()

    def start(self, now: float) -> None:
        """Gaps below the newest packet: repeat the requests they belong to (within budget)."""
        eng = self.eng
        heap = eng.loss.heap
        top = eng.score.max_rx
        budget = eng.cfg.request_repeats
        expected, req_of, repairing = eng.loss.expected, self.req_of, self.under_repair
        keep = []
        out: int | None = None
        while heap and heap[0] < top:
            pkt = heapq.heappop(heap)
            if pkt not in expected or pkt in repairing:
                continue
            req = req_of.get(pkt)
            if (req is None or req.answered or req.repeats >= budget or not req.segs
                    or req.epoch != eng.client_state):
                keep.append(pkt)  # FACK decides, as without repair
                continue
            if out is None:
                out = len({id(r) for r in repairing.values()})  # requests being repaired
            if self.yield_ < self.YIELD_MIN or out >= max(self.REPAIRS_MIN, eng.cwnd // 4):
                # repeats have not been paying (the gaps were lost answers), or a burst of
                # gaps is already being repaired: one gap in PROBE_EVERY still gets its
                # repeat, so that a change of the path is noticed
                if self.skipped < self.PROBE_EVERY - 1:
                    self.skipped += 1
                    eng.counters["repeats_skipped"] += 1
                    req.repeats = budget  # decided: this one is not repeated
                    keep.append(pkt)
                    continue
                self.skipped = 0
            self.repeat(req, now)
            out += 1
        for pkt in keep:
            heapq.heappush(heap, pkt)

    def wait(self) -> float:
        """How long a repeated request's packets are waited for: REPAIR_RTTS smoothed round
        trips, or one and its spread (the queue may be growing), at least 2 ms, at most the
        RTO."""
        rtt = self.eng.rtt
        srtt = rtt.srtt if rtt.srtt is not None else self.eng.cfg.initial_rto
        return min(max(self.REPAIR_RTTS * srtt, srtt + 4 * rtt.rttvar, 0.002), rtt.rto)

    def repeat(self, req: SentRequest, now: float) -> None:
        eng = self.eng
        req.repeats += 1
        if req.repeats == 1:
            req.first_repeat = now
        for p in req.pkts:
            if self.req_of.get(p) is req and p in eng.loss.expected:
                self.under_repair[p] = req
        # a gap was just seen: at least two copies of the repeat (the first one's bytes)
        want = min(max(self.copies, 2), eng.cfg.request_copies)
        if len(req.segs) < want and req.wire is not None and eng.build.preds is None:
            wreq, cs, parent, flags = req.wire
            c = wreq.cont
            assert c is not None
            kept = c.client_state, c.parent, c.client_timestamp
            c.client_state, c.parent = cs, parent
            for i in range(len(req.segs), want):
                c.client_timestamp = (req.stamp + i) & _U32
                req.segs.append(eng.build.segment(wreq.encode(), req.k, flags))
            c.client_state, c.parent, c.client_timestamp = kept
        eng._outbox.extend(req.segs)
        self.sent += 1
        req.sent, req.resent = self.sent, now
        eng.counters["repeats"] += 1
        eng.counters["tx"] += len(req.segs)
        req.due = now + self.wait()
        heapq.heappush(self.heap, (req.due, req.serial, req))
        if eng.on_event is not None:
            eng._event(ev.REQUEST, now, ack=req.k, req_type=REQ_NORMAL, repeat=req.repeats)

    def answered(self, req: SentRequest, pkt: int, now: float, cts: int) -> None:
        """Packet `pkt` of `req` arrived (-1: its retransmission), echoing clientTimestamp
        `cts`: the server had the request, so it is not repeated again. The answer's packets
        leave in order: those numbered below `pkt` still missing were lost on the way (data
        loss) and go back to loss detection; those above are waited for until the repeat's
        deadline."""
        if not req.answered:
            req.answered = True
            self._learn(req, now, cts)
            if req.repeats:
                self._overtaken(req, now)
        for p in req.pkts:
            if p < pkt and self.under_repair.get(p) is req:
                del self.under_repair[p]
                heapq.heappush(self.eng.loss.heap, p)

    def _overtaken(self, req: SentRequest, now: float) -> None:
        """A repeated request was answered `d` after its repeat: the repeats sent before it
        still unanswered are given that long again (at least 2 ms, and SRTT/2 since their own
        repeat) rather than their whole wait. The server answers in the order requests arrive
        and answers leave in order, so theirs should be here already: a repeat refused as a
        replay (the first answer was lost) is never answered. Without this a burst of such
        repeats holds every request above them for srtt + 4 rttvar, which a draining queue
        makes tens of round trips (issue 15: 160 ms at a 1 ms RTT)."""
        after = now + max(now - req.resent, 0.002)
        half = (self.eng.rtt.srtt or 0.0) / 2  # (an answer sooner than this after its repeat
        for r in {id(r): r for r in self.under_repair.values()}.values():  # was only late)
            due = max(after, r.resent + half)
            if not r.answered and r.sent < req.sent and r.due > due:
                r.due = due
                heapq.heappush(self.heap, (due, r.serial, r))

    def _learn(self, req: SentRequest, now: float, cts: int) -> None:
        """What the first answer to `req` says about repeats and about request loss."""
        lost = False
        if req.repeats:
            # a repeat's answer cannot come back much sooner than a round trip after it:
            # an earlier one answers the first copy, which was only late
            if now - req.first_repeat >= (self.eng.rtt.srtt or 0.0) / 2:
                lost = True
                self.eng.counters["repaired"] += 1
                self.yield_ += (1.0 - self.yield_) * self.YIELD_GAIN
            else:  # neither a success nor a failure
                self.eng.counters["repeats_late"] += 1
        # the loss of one request datagram, from trials that do not depend on whether
        # gaps are repeated: every copy lost (and a repeat's arrived); with copies, copy
        # i answered, so the i before it were lost (they left first); a single copy
        # answered, only while gaps are repeated (else its losses would go unseen)
        if lost:
            self.loss_trials(req.copies, True)
        elif req.repeats:
            pass  # the first copies were only late
        elif req.copies > 1:
            i = (cts - req.stamp) & _U32
            if i < req.copies:
                self.loss_trials(i, True)
        elif req.copies == 1 and self.yield_ >= self.YIELD_MIN:
            self.loss_trials(0, True)

    def check(self, now: float) -> None:
        """Repeats whose wait is over: repeat again within the budget, else the packets are
        lost (the rest of an answer that has begun to arrive goes back to FACK)."""
        eng = self.eng
        rheap = self.heap
        repairing = self.under_repair
        while rheap and rheap[0][0] <= now:
            due, _, req = heapq.heappop(rheap)
            if due != req.due:
                continue  # superseded by a later repeat
            mine = [p for p in req.pkts if repairing.get(p) is req]
            if not mine:
                continue
            if req.answered:
                for p in mine:
                    del repairing[p]
                    heapq.heappush(eng.loss.heap, p)
                continue
            if (req.repeats < eng.cfg.request_repeats and req.epoch == eng.client_state
                    and eng.phase == Phase.ESTABLISHED
                    and self.yield_ >= self.YIELD_AGAIN):
                self.repeat(req, now)
                continue
            self.yield_ -= self.yield_ * self.YIELD_GAIN  # it did not pay
            for p in mine:
                del repairing[p]
                eng.counters["repair_failed"] += 1
                eng._declare(p, now)

    def loss_trials(self, lost: int, then_one: bool) -> None:
        """Request datagrams seen lost (`lost` of them) and, with `then_one`, one that arrived:
        update the loss estimate and choose the copies each request goes out in."""
        for x in [1.0] * lost + ([0.0] if then_one else []):
            self.copy_trials += 1
            gain = max(1 / self.copy_trials, self.COPY_GAIN)
            self.copy_loss += (x - self.copy_loss) * gain
        cmax = self.eng.cfg.request_copies
        if cmax < 2 or self.eng.build.preds is not None:  # (HASHED answers do not echo which
            return  # copy)
        p, c = self.copy_loss, self.copies
        want = 1 + sum(p >= step for step in self.COPY_STEPS[: cmax - 1])
        if want < c and p >= 0.75 * self.COPY_STEPS[want - 1]:
            want = c  # not down yet: hysteresis
        if want != c:
            self.copies = want
            self.eng.counters["copies_up" if want > c else "copies_down"] += 1


__all__ = ["SentRequest", "UplinkRepair"]
