"""How the client engine uses the continuations that came: which one goes next, what its
request names and proves, what the engine then expects (core.client.ClientEngine's sending
steps; testing/liars.py overrides several of them, so they stay methods of the engine).

A continuation is used in packet order, and only once no hole below it is undecided (so
reordering does not trigger recovery). Its request names missing bytes first, then new ones
(core.range_picker), proves the packets received with SACK blocks (core.scoreboard), and the
engine runs the server's planning function on it to know the packets it will make.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import TYPE_CHECKING, Final

from trickles_kit.core import client_fast
from trickles_kit.core import delta as dl
from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.client_names import OlderNames
from trickles_kit.core.phase import Phase
from trickles_kit.core.reassembly import Ranges
from trickles_kit.native.hints import mypyc_attr
from trickles_kit.wire.continuation import FULL1, FULL2, Continuation
from trickles_kit.wire.messages import MAX_RANGES, MAX_SACKS, REQ_NORMAL, Request, SackBlock
from trickles_kit.wire.segment import ACK

if TYPE_CHECKING:  # (types only)
    from trickles_kit.core.client_config import ClientConfig
    from trickles_kit.core.uplink_repair import UplinkRepair

_U32 = 0xFFFFFFFF
_ESTABLISHED: Final = Phase.ESTABLISHED  # (a module constant: compiled, a static's load)


def encode_request(req: Request) -> bytes:
    """`req.encode()` for a non-SYN request that is well formed, in fewer steps (it runs per
    request); anything else (a field the encoder refuses) goes to `Request.encode`, which
    raises. tests/core/test_fastpath.py checks the two agree."""
    c = req.cont
    sacks, ranges, ucont = req.sacks, req.ranges, req.ucont
    rparts = client_fast.range_parts(ranges)
    if (c is None or (c.type != FULL1 and c.type != FULL2) or req.type > 3 or req.type == 2
            or len(sacks) > MAX_SACKS or len(ranges) > MAX_RANGES or len(ucont) > 0xFFFF
            or len(c.mac) != 16 or rparts is None):
        return req.encode()  # (it raises)
    return client_fast.pack_request(req.type, c, [x for b in sacks for x in b], ucont, rparts,
                                    req.app)


@mypyc_attr(allow_interpreted_subclasses=True)  # (ClientEngine's base)
class RequestSending(OlderNames):
    """The engine's sending steps (a base class of ClientEngine, which sets every attribute
    declared here; declared rather than set so that a compiled build lays them out once)."""

    cfg: ClientConfig
    phase: str
    counters: Counter[str]
    conn_id: int
    client_state: int
    cwnd: int
    ssthresh: int
    in_recovery: bool
    ucont: bytes
    repair: UplinkRepair
    on_event: ev.EventSink | None
    _ready: list[tuple[int, int, Continuation]]
    _probes: int
    _recovery_base: int
    _repair_on: bool
    _request_bytes: bytes
    _outbox: list[bytes]
    _last_segs: list[bytes]
    _last_wire: tuple[Request, int, int, int] | None
    _timer: float | None
    _backoff: int
    _syn_time: float
    _syn_range: tuple[int, int] | None
    _max_gap: int  # cfg.max_gap, resolved (the config's field is Optional)
    _fast: bool  # core.client_fast may take answers and build requests
    _rx_sum: int  # (core.client_fast.sums)
    local_port: int
    server_port: int
    _tx_sum: int

    def _event(self, kind: str, now: float, **kw: object) -> None:
        if self.on_event is None:
            return
        self.on_event(ev.Event.make(kind, now, "client", **({
            "conn_id": self.conn_id, "cwnd": self.cwnd, "ssthresh": self.ssthresh} | kw)))

    def _arm(self, now: float) -> None:
        self._timer = now + min(self.rtt.rto * self._backoff, self.cfg.max_rto)

    def _has_work(self) -> bool:
        return not self.stream.done

    def _can_ask(self) -> bool:
        """Whether a request now would name any byte: a missing one or one never asked."""
        return self.picker.can_ask()

    def _pump(self, now: float) -> None:
        """Use the ready continuations, in packet order, unless a hole below one is undecided.

        Once every byte is asked for, only `tail_probes` empty requests go out in a row; the
        other continuations are held (unused, still valid) until a loss gives them bytes to ask.
        """
        if self.phase != _ESTABLISHED:
            return
        ready = self._ready
        probes = self.cfg.tail_probes
        while ready:
            pkt = ready[0][0]
            if self._pending_below(pkt):
                break
            if self._probes >= probes and not self._can_ask():
                break  # nothing to ask: hold the rest
            _, _, cont = heapq.heappop(ready)
            if self._fast and cont.type == FULL1:
                client_fast.request(self, cont, now)
            else:
                self._request_for(cont, now)

    def _proof(self, cont: Continuation) -> list[tuple[int, int]]:
        return self.score.proof(min(cont.tcp_base, cont.seq), cont.seq, self.cfg.max_sacks)

    def _summary(self, left: int, right: int) -> int:
        return self.score.summary(left, right)

    def _assign(self, n: int) -> Ranges:
        """Byte ranges for n slots: missing bytes first, then new ones (stops when none left)."""
        return self.picker.assign(n)

    def _request_for(self, cont: Continuation, now: float) -> None:
        blocks = self._proof(cont)
        # (dl.plan_for's dispatch, inline: it runs per request)
        plan = (dl.plan_paired if cont.type == FULL2 else pl.plan_request)(
            cont.seq, cont.tcp_base, cont.start_cwnd, cont.ssthresh, cont.state, blocks, False,
            self._max_gap)
        if plan.verdict == "reject":
            self.counters["unusable_cont"] += 1
            return
        self._launch(REQ_NORMAL, cont, blocks, plan, now)

    def _launch(self, rtype: int, cont: Continuation, blocks: list[tuple[int, int]],
                plan: pl.Plan, now: float) -> None:
        # a request carries at most MAX_RANGES ranges: a larger window from the server (its
        # startCwnd) leaves the extra slots without one rather than failing the encode
        slots = plan.slots  # (read once: a Plan's fields are attribute lookups, compiled too)
        ranges = self.picker.assign(min(len(slots), MAX_RANGES))
        req = None
        repair_on = self._repair_on
        if repair_on and rtype == REQ_NORMAL and slots:
            req = self.repair.new_request(cont.seq, plan, self.client_state)
        for old in self.loss.expect(plan, ranges, cont.seq):  # the bytes asked of a first
            self.stream.settle(old.ranges)  # plan of the same number must not be forgotten
        if repair_on:
            self.repair.note(plan, req)
        client_fast.note_plan(self, plan, ranges)
        self._forget_last()
        self._send_request(rtype, cont, blocks, ranges, now, plan=plan)
        if req is not None:  # (no copies if an override sent something else: no repeats)
            req.segs, req.stamp, req.wire = self._last_segs, cont.client_timestamp, \
                self._last_wire
            req.copies = len(req.segs)
        if self._timer is None:
            self._arm(now)

    def _forget_last(self) -> None:
        """Before a request: none sent yet to copy (_send_request sets them; a method, so
        that mypy, and with it mypyc, does not take them for None after that call)."""
        self._last_segs, self._last_wire = [], None

    def _send_request(self, rtype: int, cont: Continuation, blocks: list[tuple[int, int]],
                      ranges: Ranges, now: float, flags: int = ACK,
                      plan: pl.Plan | None = None) -> None:
        c = cont  # client-owned fields are ours to rewrite (they are outside the MAC)
        c.client_state, c.parent, c.client_timestamp = self._owned(now)
        for s, e in ranges:  # only bytes named in a request are accepted when they arrive
            self.stream.ask(s, e)
        sacks = [SackBlock(lft, rgt, self._summary(lft, rgt)) for lft, rgt in blocks]
        app = self._request_bytes if not self.ucont else b""
        req = Request(rtype, c, sacks, self.ucont, ranges, app)
        build = self.build
        payload = encode_request(req) if build.preds is None else build.payload(req, rtype, plan)
        seg = build.segment(payload, cont.seq, flags)
        self._outbox.append(seg)
        self.counters["requests"] += 1
        self.counters["tx"] += 1
        if self._repair_on and rtype == REQ_NORMAL:
            self._last_segs = [seg]
            self._last_wire = (req, c.client_state, c.parent, flags)
            self.repair.copy(req, cont.seq, flags, self._last_segs)
        if self.on_event is not None:
            self._event(ev.REQUEST, now, ack=cont.seq, tcp_base=cont.tcp_base, state=cont.state,
                        req_type=rtype, sacks=[list(b) for b in blocks], ranges=len(ranges))

    def _pending_below(self, pkt: int) -> bool:
        """Whether an undecided packet (or one waiting for a repeated request) is numbered
        below `pkt` (core.loss.LossDetector.pending_below, inline: it runs per packet)."""
        loss = self.loss
        heap = loss.heap
        while heap and heap[0] not in loss.expected:
            heapq.heappop(heap)
        if heap and heap[0] < pkt:
            return True
        repairing = self.repair.under_repair
        return bool(repairing) and min(repairing) < pkt

    def _owned(self, now: float) -> tuple[int, int, int]:
        """(clientState, parent, clientTimestamp) to send now: the epoch's echo token (its high
        half and the request counter with HASHED answers, which echo only `parent`), the clock."""
        b = self.build
        tok = b.token(self.client_state)
        parent = self.counters["requests"] & _U32 if b.hashed else tok & _U32
        return tok >> 32, parent, int(now * 1000) & _U32

    def _send_syn(self, now: float) -> None:
        cfg = self.cfg
        mss = self.picker.mss  # (cfg.mss, resolved)
        ranges = [(0, mss)] if cfg.syn_data and self._request_bytes else []
        app = self._request_bytes if cfg.syn_data else b""
        self._syn_time = now
        if ranges:
            self._syn_range = ranges[0]
            self.picker.next_new = max(self.picker.next_new, ranges[0][1])
            self.stream.ask(*ranges[0])
        self._outbox.append(self.build.syn(self._owned(now), ranges, app, mss))
        self.counters["tx"] += 1
        self._arm(now)


__all__ = ["RequestSending"]
