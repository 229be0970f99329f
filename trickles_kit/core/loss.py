"""The packets the client's requests will make, and when one is lost (FACK, PROTOCOL §8.3).

The client runs the server's planning function on every request it sends, so it knows each
packet number to come and the bytes it is to carry. A regular packet is lost once one
`dupthresh` numbers above it has arrived; a retransmission once one `dupthresh` numbers above
the newest packet planned when it was (its own request's, or an earlier request's still on the
way: a retransmission leaves after those, so their arrival says nothing about it). Kept apart
from the engine (as aioquic keeps its packet recovery) so the engine only says what arrived and
acts on what was declared.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container
from heapq import heappop, heappush

from trickles_kit.core import plan as pl
from trickles_kit.core.reassembly import Ranges

RETRANSMIT = pl.RETRANSMIT


class Expect:
    """A packet a request of ours will make: the bytes its slot names (`ranges`), the bytes
    its answer may carry (`accept`: those, and any an earlier plan of the same number named),
    the order FACK decides it in, and the TCPBase its continuation will carry."""

    __slots__ = ("ranges", "order", "base", "accept")

    def __init__(self, ranges: Ranges, order: int, base: int) -> None:
        self.ranges = ranges
        self.order = order
        self.base = base
        self.accept = ranges


# How far the reordering threshold may rise (packet numbers). Linux TCP caps its own adaptive
# `reordering` at 300; a smaller cap keeps a real loss in a small window from waiting on the
# timers: the reordering window (`ClientEngine._update_reo`, RACK-style) and the RTO.
MAX_REORDERING = 64


class LossDetector:
    __slots__ = ("expected", "heap", "rtx", "rtx_heap", "top", "reordering")

    def __init__(self, dupthresh: int = 3) -> None:
        self.expected: dict[int, Expect] = {}  # regular packets awaited, by number
        self.heap: list[int] = []  # their numbers (lazily cleaned: check `expected`)
        self.rtx: dict[int, Expect] = {}  # retransmissions awaited, by number
        self.rtx_heap: list[tuple[int, int]] = []  # (newest number planned then, number)
        self.top = -1  # the highest regular packet number planned so far
        # a packet is lost once one this many numbers above it has arrived: `dupthresh` at
        # first, raised by `reordered` when the path is shown to reorder further
        self.reordering = dupthresh

    def reordered(self, degree: int) -> None:
        """A packet declared lost arrived after all, with packets up to `degree` numbers above
        it already in: the path reorders (per-packet balancing over replicas that answer at
        their own pace does), and declaring it lost cost a halved window for nothing. Later
        packets wait for one more than that (as Linux TCP raises `reordering`), up to
        MAX_REORDERING."""
        if degree >= self.reordering:
            self.reordering = min(degree + 1, MAX_REORDERING)

    def expect(self, plan: pl.Plan, ranges: Ranges, seq: int) -> list[Expect]:
        """Note the packets `plan` will make, slot i carrying ranges[i]; the expectations they
        replace (a number planned twice, e.g. two proofs showed the same hole)."""
        newest = seq
        have = False
        for s in plan.slots:
            if s.kind != RETRANSMIT and (not have or s.pkt > newest):
                newest, have = s.pkt, True
        if have and newest > self.top:
            self.top = newest
        # a retransmission is judged against the newest packet planned by now (FIFO: it
        # arrives after those), not only its own request's: a request that makes nothing but
        # a retransmission would else have it declared lost by the next arrival
        rtx_order = max(newest, self.top)
        replaced: list[Expect] = []
        for i, s in enumerate(plan.slots):
            rng = ranges[i : i + 1]
            if s.kind != RETRANSMIT:
                replaced += self.expect_run(s.pkt, 1, rng, s.tcp_base)
                continue
            exp = Expect(rng, rtx_order, s.tcp_base)
            old = self.rtx.get(s.pkt)
            self.rtx[s.pkt] = exp
            heappush(self.rtx_heap, (rtx_order, s.pkt))
            if old is not None:  # its bytes may still come with it
                exp.accept = rng + old.accept
                replaced.append(old)
        return replaced

    def expect_run(self, first: int, n: int, ranges: Ranges, base: int) -> list[Expect]:
        """`expect` of n regular packets numbered from `first`, of the epoch at TCPBase
        `base`, packet i carrying ranges[i]: a normal step's plan, which the client's fast path
        (core.client_fast) does not build."""
        last = first + n - 1
        if last > self.top:
            self.top = last
        replaced: list[Expect] = []
        nr = len(ranges)
        expected, heap = self.expected, self.heap
        for i in range(n):
            pkt = first + i
            rng = [ranges[i]] if i < nr else []
            exp = Expect(rng, pkt, base)
            old = expected.get(pkt)
            expected[pkt] = exp
            heappush(heap, pkt)
            if old is not None:  # its bytes may still come with it
                exp.accept = rng + old.accept
                replaced.append(old)
        return replaced

    def due_below(self, bound: int, waiting: Container[int]) -> list[int]:
        """Regular packets numbered below `bound` that are now to be declared lost (not those
        `waiting` for a repeated request: their deadline decides)."""
        limit = bound - 1
        heap = self.heap
        out = []
        while heap and heap[0] <= limit:
            pkt = heappop(heap)
            if pkt not in waiting:
                out.append(pkt)
        return out

    def rtx_lost_below(self, bound: int) -> list[tuple[int, Expect | None]]:
        """Retransmissions whose request's newest packet is numbered below `bound`: lost
        (None: one that had arrived, or was planned anew)."""
        limit = bound - 1
        rheap = self.rtx_heap
        out = []
        while rheap and rheap[0][0] <= limit:
            _, pkt = heappop(rheap)
            out.append((pkt, self.rtx.pop(pkt, None)))
        return out

    def hole_below(self, top: int) -> bool:
        """Whether a packet awaited (perhaps one already settled: the heaps are cleaned
        lazily) is numbered, or ordered, below `top`."""
        return bool(self.heap and self.heap[0] < top) or bool(
            self.rtx_heap and self.rtx_heap[0][0] < top)

    def pending_below(self, pkt: int, waiting: dict[int, object]) -> bool:
        """Whether an undecided packet (or one `waiting` for a repeated request) is numbered
        below `pkt`."""
        heap = self.heap
        while heap and heap[0] not in self.expected:
            heappop(heap)
        if heap and heap[0] < pkt:
            return True
        return bool(waiting) and min(waiting) < pkt

    def outstanding(self) -> list[Expect]:
        return list(self.expected.values()) + list(self.rtx.values())

    def clear(self) -> None:
        self.expected.clear()
        self.heap.clear()
        self.rtx.clear()
        self.rtx_heap.clear()
        self.top = -1


# How far the time gate's window may widen: steps x max(srtt/4, REO_MIN_S), at most 4 steps
# (one SRTT at most on a wide-area path, as Linux's RACK caps its own reo_wnd at one SRTT).
MAX_REO_STEPS = 4
REO_MIN_S = 0.002


class ReorderGate:
    """Once the path has reordered, a hole is lost only when a packet numbered above it has
    been in for a reordering window (RACK, RFC 8985; Linux turns its time gate on the same way,
    once reordering is seen).

    Why: per-packet balancing over replicas that answer at their own pace reorders by a few
    milliseconds. A count threshold learns how *far* packets are overtaken but not how *long*
    they are late, and every declaration of a packet that was only late costs a halved window
    Trickles cannot undo: 27 recoveries in 8 x 1 MB at RTT 50 ms, all spurious. `steps` is 0
    until a declared loss arrives after all; each later such arrival, at most once per SRTT,
    widens the window by one step."""

    __slots__ = ("entries", "top", "steps", "widened")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()  # (deadline, max_rx then)
        self.top = -1  # the highest packet number an entry was considered for
        self.steps = 0
        self.widened = 0.0

    def window(self, srtt: float) -> float:
        return max(srtt / 4, REO_MIN_S) * self.steps

    def widen(self, now: float, srtt: float) -> None:
        """A declared loss arrived after all: gate from now on, a step wider if the last
        widening is an SRTT old (one late burst widens once)."""
        if self.steps == 0 or (self.steps < MAX_REO_STEPS and now >= self.widened + srtt):
            self.steps += 1
            self.widened = now

    def note(self, now: float, top: int, hole_below: bool, srtt: float) -> int:
        """`top` is the highest packet in, `hole_below` whether one awaited is below it; the
        bound every packet under which is now lost (-1: none yet; always, until reordering)."""
        if not self.steps:
            return -1
        if top > self.top:
            self.top = top
            if hole_below:
                self.entries.append((now + self.window(srtt), top))
        return self.due(now)

    def due(self, now: float) -> int:
        entries = self.entries
        bound = -1
        while entries and entries[0][0] <= now:
            bound = entries.popleft()[1]
        return bound

    def next_deadline(self) -> float | None:
        return self.entries[0][0] if self.entries else None

    def restart(self) -> None:
        """A timeout starts a new epoch whose packet numbers may repeat: forget the entries
        (the steps learnt about the path stay)."""
        self.entries.clear()
        self.top = -1


__all__ = ["MAX_REORDERING", "MAX_REO_STEPS", "Expect", "LossDetector", "ReorderGate"]
