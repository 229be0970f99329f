"""The client engine: a sans-I/O state machine that owns every timer and all reliability.

It runs the server's own planning function (`core.plan`) on each continuation it is about to
use, so it knows which packets the request will produce and names the bytes each one carries:
missing bytes first, then new ones (PROTOCOL §4.5). Loss is inferred FACK-style (a packet is
lost once one `dupthresh` numbers above it has arrived); requests for packets past an undecided
hole are held, so reordering does not trigger recovery.

API in the style of aioquic: `connect`, `receive(segment, now)`, `datagrams_to_send()`,
`get_timer()`, `handle_timer(now)`, `read()`, `close(now)`. Like aioquic's connection, the
engine is a conductor over small objects with one concern each: `RttEstimator` (core.rtt),
`Scoreboard` (core.scoreboard: packet numbers, nonces, SACK proofs), `Reassembly`
(core.reassembly: chunks, in-order delivery, the window), `RangePicker` (core.range_picker:
which bytes a request names), `RequestBuilder` (core.request_builder: segments, echo tokens)
and `UplinkRepair` (core.uplink_repair). It keeps the timers, the packets it expects and the
continuations it holds.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from typing import ClassVar, Final

from trickles_kit.core import client_fast
from trickles_kit.core import delta as dl
from trickles_kit.core import events as ev
from trickles_kit.core.client_config import ClientConfig
from trickles_kit.core.client_send import RequestSending
from trickles_kit.core.loss import LossDetector, ReorderGate
from trickles_kit.core.phase import ENDED, Phase
from trickles_kit.core.range_picker import RangePicker
from trickles_kit.core.reassembly import Ranges, Reassembly
from trickles_kit.core.request_builder import RequestBuilder
from trickles_kit.core.rtt import RttEstimator
from trickles_kit.core.scoreboard import Scoreboard
from trickles_kit.core.spare import Spare
from trickles_kit.core.uplink_repair import UplinkRepair
from trickles_kit.native.hints import Alias, mypyc_attr
from trickles_kit.wire.continuation import BOOTSTRAP, FULL2, HASHED, MINIMAL, PAIR, Continuation
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    REQ_FIN,
    REQ_SLOWSTART,
    Request,
    decode_response,
)
from trickles_kit.wire.segment import ACK, FIN, SYN, decode_segment

_U32 = 0xFFFFFFFF
_QUIET = (*ENDED, Phase.IDLE)  # phases in which answers change nothing
_SYN_SENT: Final = Phase.SYN_SENT  # (module constants: compiled, a static's load)
_ESTABLISHED: Final = Phase.ESTABLISHED


@mypyc_attr(allow_interpreted_subclasses=True)  # testing/liars.py subclasses it
class ClientEngine(RequestSending):
    """One Trickles connection, client side. Times are float seconds supplied by the caller."""

    # uplink repair's tuning, named here too (tests and benchmarks read them off the engine)
    PROBE_PAIR: ClassVar[int] = UplinkRepair.PROBE_PAIR
    COPY_STEPS: ClassVar[tuple[float, ...]] = UplinkRepair.COPY_STEPS
    ECHO_EPOCHS: ClassVar[int] = RequestBuilder.ECHO_EPOCHS
    PRUNE_MIN: Final = 256  # claimed nonces held before the scoreboard is first pruned

    def __init__(
        self,
        local_ip: bytes,
        local_port: int,
        server_ip: bytes,
        server_port: int,
        config: ClientConfig | None = None,
        isn: int = 0,
        on_event: ev.EventSink | None = None,
        echo_key: bytes | None = None,
    ) -> None:
        if len(local_ip) != 4 or len(server_ip) != 4:
            raise ValueError("addresses must be packed IPv4 (4 bytes)")
        cfg = self.cfg = config or ClientConfig()
        self.local_ip, self.local_port = local_ip, local_port
        self.server_ip, self.server_port = server_ip, server_port
        self.isn = isn & _U32
        self.on_event = on_event
        self.counters: Counter[str] = Counter()
        self.phase = Phase.IDLE
        self.conn_id = 0
        self.client_state = 0  # the timeout epoch (internal; the wire carries its echo token)
        self.build = RequestBuilder(local_ip, local_port, server_ip, server_port, self.isn,
                                    echo_key if echo_key is not None else os.urandom(16),
                                    cfg.paired, cfg.hashed)
        self.rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)
        self.stream = Reassembly(cfg.window, cfg.max_islands, self.counters)
        mss, max_gap, bucket = cfg.mss, cfg.max_gap, cfg.slowstart_bucket
        assert mss is not None and max_gap is not None and bucket is not None  # (resolved)
        self._max_gap = max_gap
        self.picker = RangePicker(self.stream, mss)
        self.score = Scoreboard()  # (current client_state only)
        self.repair = UplinkRepair(self)
        self._repair_on = cfg.uplink_repair
        # a subclass that makes its own proofs (testing/liars.py) may claim any range: it
        # keeps every nonce
        self._prunes = all(getattr(type(self), m) is getattr(ClientEngine, m)
                           for m in ("_proof", "_summary", "_send_request", "_on_packet"))
        self._next_prune = self.PRUNE_MIN
        # the per-packet fast path (core.client_fast) only where it is the general path's
        # twin: this class's own steps, no uplink repair, no HASHED answers
        self._fast = type(self) is ClientEngine and not cfg.uplink_repair and not cfg.hashed
        self._rx_sum, self._tx_sum = client_fast.sums(local_ip, local_port, server_ip, server_port)
        self._request_bytes = b""
        self._outbox: list[bytes] = []
        self.ucont = b""
        self.loss = LossDetector(self.cfg.dupthresh)  # the packets our requests will make
        self.gate = ReorderGate()  # once the path reorders: holes wait a window (RACK)
        self.spare = Spare(bucket)  # the newest continuation, for SLOWSTART/FIN
        # the continuations that came, in packet order, for the next requests
        self._ready: list[tuple[int, int, Continuation]] = []
        self._last_segs: list[bytes] = []
        self._last_wire: tuple[Request, int, int, int] | None = None
        self.in_recovery = False
        self._recovery_base = -1
        self.cwnd = 0
        self.ssthresh = 0
        # timers
        self._backoff = 1
        self._timer: float | None = None
        self._reo: float | None = None  # end of the reordering window for an undecided hole
        self._timeouts_in_row = 0
        self._probes = 0  # empty requests sent since the last one that asked for bytes
        self._fin_tries = 0
        self._syn_time = 0.0
        self._syn_range: tuple[int, int] | None = None

    # ------------------------------------------------------------------ public API
    # all response bytes received (the total is known and covered)
    done: ClassVar[Alias[bool]] = Alias("stream", "done")
    # the response stream's length, once the server (or the application) stated it
    total: ClassVar[Alias[int | None]] = Alias("stream", "total")
    rto: ClassVar[Alias[float]] = Alias("rtt", "rto")
    # response bytes the engine holds: unread, or out of order (at most the window)
    held_bytes: ClassVar[Alias[int]] = Alias("stream", "held")

    @property
    def bytes_received(self) -> int:
        return self.stream.received.total()

    def connect(self, now: float, request: bytes = b"",
                lanes: list[tuple[int, int]] | None = None) -> None:
        """Open the connection and ask for the response to `request` (e.g. b"GET /file")."""
        if self.phase != Phase.IDLE:
            raise ValueError(f"connect() in phase {self.phase}")
        self._request_bytes = bytes(request)
        if lanes:
            self.set_lanes(lanes)
        self.phase = Phase.SYN_SENT
        self._send_syn(now)
        lanes_now = self.picker.lanes
        if lanes_now and self._syn_range is not None:  # the SYN already asks for these bytes
            first = lanes_now[0]
            if first[0] == self._syn_range[0]:
                first[0] = min(max(first[0], self._syn_range[1]), first[1])

    def set_lanes(self, lanes: list[tuple[int, int]]) -> None:
        """Parallel requests: one reserved byte slice [start, end) of the response per request;
        new bytes are asked round-robin across the slices, so every response progresses at
        once, and what a slice's response leaves unused the server SKIPs. Call before connect."""
        if self.phase != Phase.IDLE:
            raise ValueError("set_lanes() before connect()")
        self.picker.set_lanes(lanes)

    def set_total(self, total: int, now: float) -> None:
        """The response stream's length, learned by the application before any FINHINT (an
        HTTP Content-Length): no byte at or past it is asked for. As with FINHINT the least
        length wins. Without it the client asks past the end until the packet carrying the
        last byte arrives — about one window of answers with nothing in them. A length below
        the bytes already delivered fails the connection (`drop.total_below_delivered`)."""
        if total < 0:
            raise ValueError("total must be >= 0")
        if not self.stream.set_total(total):  # (more was delivered already: it cannot be)
            self._protocol_error("total_below_delivered", now, total=total)
            return
        self._check_done(now)

    def close(self, now: float) -> None:
        """Tear down: a FIN request (the server keeps nothing to free; this tells the app).
        Retries go on the same continuation (after the last byte no new one comes). The server
        answers one FIN per continuation per age bucket (docs/protocol.md §9.3), so a retry
        waits until the continuation's age has left the bucket of the previous try."""
        if self.phase in _QUIET:
            return
        spare = self.spare
        if spare.cont is None:
            self.phase = Phase.CLOSED
            return
        self.phase = Phase.FIN_SENT
        wait = spare.bucket_wait(spare.fin_bucket, now)
        if wait > 0:  # this try would be a replay of the last one: wait for the next bucket
            self._timer = now + wait
            return
        self._fin_tries += 1
        spare.fin_bucket = spare.age_bucket(now, self.rtt.srtt)
        self._send_request(REQ_FIN, spare.cont, [], [], now, flags=FIN | ACK)
        self._timer = now + min(self.rtt.rto * (1 << min(self._fin_tries - 1, 6)),
                                self.cfg.max_rto)

    def read(self, now: float | None = None) -> bytes:
        """In-order response bytes that arrived since the last read. With `now`, the window
        this frees is used at once (held continuations ask for the next bytes)."""
        out = self.stream.read()
        if now is not None and out and self.phase == Phase.ESTABLISHED:
            self._pump(now)
        return out

    @property
    def unread(self) -> int:
        """In-order bytes waiting for `read`."""
        return len(self.stream.app)

    def credit(self) -> int:
        """New bytes the window still lets the client ask for."""
        return self.stream.credit()

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline: the reordering window, a repeated request's wait or the
        retransmission timeout."""
        t = self._timer
        if self._reo is not None and (t is None or self._reo < t):
            t = self._reo
        rheap = self.repair.heap
        if rheap and (t is None or rheap[0][0] < t):
            t = rheap[0][0]
        return t

    # ------------------------------------------------------------------ helpers
    def _drop(self, reason: str, now: float, **kw) -> None:
        """A segment the client refuses: a counter `drop.<reason>` and a `drop` event."""
        self.counters["drop"] += 1
        self.counters["drop." + reason] += 1
        self._event(ev.DROP, now, reason=reason, **kw)

    def _echo_epoch(self, cont: Continuation) -> int | None:
        """The timeout epoch whose token `cont` echoes, or None (not an answer to us)."""
        b = self.build
        if b.hashed:
            return b.tokens.get(cont.client_state)
        return b.tokens.get(cont.client_state << 32 | cont.parent)

    # ------------------------------------------------------------------ receive
    def receive(self, segment: bytes, now: float) -> None:
        """Process one segment from the server; bad input is counted and dropped."""
        if self._fast and client_fast.receive(self, segment, now):
            return
        self.counters["rx"] += 1
        try:
            seg = decode_segment(segment, self.server_ip, self.local_ip)
            if seg.dst_port != self.local_port or seg.src_port != self.server_port:
                self._drop("port", now)
                return
            resp = decode_response(seg.payload)
        except DecodeError as e:
            self._drop("decode." + e.reason, now)
            return
        cont = resp.cont
        if cont.type == HASHED:  # rebuild it from what we predicted for that request
            full = self._rebuild(cont, seg.seq, resp.position, now)
            if full is None:
                return
            cont = full
        epoch = self._echo_epoch(cont)
        if epoch is None:  # no echo of our token: off-path injection (or a confused server)
            self._drop("echo", now, pkt=seg.seq)
            return
        cont.client_state = epoch  # from here on, the internal timeout epoch
        if (self.phase == _SYN_SENT or cont.conn_id != self.conn_id) and \
                not self._accept_cont(cont, seg.flags, seg.seq, now):
            return
        if self.phase in _QUIET:
            return
        chunks = resp.chunks
        if seg.flags & FIN and self.phase == Phase.FIN_SENT and not chunks:  # the FIN answer
            self.phase = Phase.CLOSED
            self._timer = None
            self.counters["fin_answered"] += 1
            return
        progress = False
        if chunks:
            stream = self.stream
            got = stream.take(chunks, self._own_ranges(cont, seg.flags))
            if got is None:  # it states a length below the bytes delivered: cannot be
                self._protocol_error("total_below_delivered", now, pkt=seg.seq)
                return
            if got:
                progress = True
                n = stream.deliver_in_order()
                if n and self.on_event is not None:
                    self._event(ev.DATA, now, bytes=n, offset=stream.deliver)
        if seg.flags & SYN and self._syn_range is not None:
            # the SYN asked for these bytes; an answer trimmed by anti-amplification lacks them
            for lo, hi in self.stream.received.gaps(*self._syn_range):
                self.stream.missing.add(lo, hi)
            self._syn_range = None
        if resp.ucont:
            self.ucont = resp.ucont
        if cont.client_state == self.client_state:
            progress |= self._on_packet(cont, resp.nonce, now)
        else:
            self.counters["stale_epoch_packet"] += 1
        if progress:
            self._backoff = 1
            self._timeouts_in_row = 0
            self._arm(now)
        if self.stream.total is not None:
            self._check_done(now)
        self._pump(now)
        self._update_reo(now)

    def _rebuild(self, cont: Continuation, pkt: int, position: int,
                 now: float) -> Continuation | None:
        """The FULL continuation a HASHED answer stands for, from what we predicted for the
        request it answers (None, counted: not an answer to a request we made)."""
        preds = self.build.preds
        full = None if preds is None else preds.rebuild(cont, pkt, position, self.conn_id)
        if full is None:  # nothing in it is trusted
            self.counters["delta_unknown"] += 1
            self._drop("echo", now, pkt=pkt)
            return None
        self.build.compact_ok = True
        return full

    def _accept_cont(self, cont: Continuation, flags: int, pkt: int, now: float) -> bool:
        """The handshake answer opens the connection; later ones must be of the same one."""
        if self.phase == Phase.SYN_SENT:
            if not flags & SYN or not cont.is_full:
                self._drop("not_synack", now, pkt=pkt)
                return False
            self.conn_id = cont.conn_id
            self.phase = Phase.ESTABLISHED
            self.cwnd, self.ssthresh = cont.start_cwnd, cont.ssthresh
            self.rtt.sample(now - self._syn_time)
        elif cont.is_full and cont.conn_id != self.conn_id:
            self._drop("conn_id", now, pkt=pkt)
            return False
        return True

    def _own_ranges(self, cont: Continuation, flags: int) -> Ranges | None:
        """The bytes the packet's own slot asked for: its data may fill only those (None: a
        packet we planned no slot for, e.g. of an earlier timeout epoch — any bytes asked)."""
        if flags & SYN and self._syn_range is not None:
            return [self._syn_range]
        if cont.client_state != self.client_state:
            return None
        if cont.type == MINIMAL:
            exp = self.loss.rtx.get(cont.seq)
        else:
            exp = self.loss.expected.get(cont.seq)
            if exp is None:  # one declared lost may still come
                return self.score.lost.get(cont.seq)
        return exp.accept if exp is not None else None

    def _protocol_error(self, reason: str, now: float, **kw) -> None:
        """The server broke the protocol in a way the client cannot repair: a counted drop
        of the packet, and the connection fails (the application has only good bytes)."""
        self._drop(reason, now, **kw)
        self.counters["protocol_error"] += 1
        self.phase = Phase.FAILED
        self._timer = self._reo = None
        self.repair.clear()

    def _check_done(self, now: float) -> None:
        if self.phase == Phase.ESTABLISHED and self.stream.done:
            self.phase = Phase.DONE
            self._timer = None
            self._event(ev.DONE, now, bytes=self.stream.total)

    def _update_reo(self, now: float) -> None:
        """A hole too near the top for `dupthresh` gets a reordering window (RACK-style); on
        a path that reorders every hole has its own (`gate`)."""
        if self.phase == _ESTABLISHED and self.gate.steps:
            self._reo = self.gate.next_deadline()
        elif self.phase == _ESTABLISHED and self._pending_below(self.score.max_rx):
            self._open_reo(now)
        else:
            self._reo = None

    def _reo_srtt(self) -> float:
        return self.rtt.srtt if self.rtt.srtt is not None else self.cfg.initial_rto

    def _open_reo(self, now: float) -> None:
        """The reordering window starts now, unless one is open."""
        if self._reo is None:
            self._reo = now + max(self._reo_srtt() / 4, 0.002)

    # ------------------------------------------------------------------ packets and losses
    def _on_packet(self, cont: Continuation, nonce: int, now: float) -> bool:
        pkt = cont.seq
        repair = self.repair
        req = (repair.rtx_req_of if cont.type == MINIMAL else repair.req_of).get(pkt)
        cts = cont.client_timestamp
        if req is not None:
            # the copy answered: copy i of a request carries its first copy's stamp + i ms
            # (all left at once); a repeated request gives no sample (Karn's rule)
            cts = 0 if req.repeats else req.stamp
        if cts:
            r = ((int(now * 1000) - cts) & _U32) / 1000.0
            if r < 1 << 20:
                self.rtt.sample(r)
        if cont.type == MINIMAL:  # a retransmission: its data counts, its number is not claimed
            exp = self.loss.rtx.pop(pkt, None)
            if exp is not None:
                self.stream.settle(exp.ranges)
                self.counters["rtx_received"] += 1
            if req is not None:
                del repair.rtx_req_of[pkt]
                repair.answered(req, -1, now, cont.client_timestamp)
            return exp is not None
        exp = self.loss.expected.pop(pkt, None)
        if exp is not None:
            self.stream.settle(exp.ranges)
        if req is not None:
            del repair.req_of[pkt]
            repair.under_repair.pop(pkt, None)
            repair.answered(req, pkt, now, cont.client_timestamp)
        score = self.score
        if score.known(pkt):
            if pkt in score.lost:  # declared lost, and here after all: the path reorders
                self.loss.reordered(score.max_rx - pkt)
                self.gate.widen(now, self._reo_srtt())
                self.counters["reordered"] += 1
            self.counters["late_or_dup"] += 1
            return exp is not None
        score.claim(pkt, nonce)
        if cont.type == PAIR:  # claimable; the FULL2 packet after it makes the request
            self._detect_losses(now)
            return True
        self.spare.offer(cont, now)
        heapq.heappush(self._ready, (pkt, id(cont), cont))
        # (paired mode: the new epoch's first FULL2 packet may be its second one)
        if self.in_recovery and cont.state == BOOTSTRAP and (
                pkt == self._recovery_base
                or (cont.type == FULL2 and pkt == self._recovery_base + 1)):
            self.in_recovery = False
            self._event(ev.RECOVERY_END, now, pkt=pkt, tcp_base=cont.tcp_base)
        self._detect_losses(now)
        if self._prunes and len(score.nonce) >= self._next_prune:
            self._prune()
        return True

    def _prune(self) -> None:
        """Let the scoreboard forget what no proof can need: below the oldest continuation
        held, the oldest packet awaited and (after a SLOWSTART) the old spare's `right`;
        proofs may still start at any held or awaited continuation's lo (docs §8.2)."""
        score = self.score
        floor = score.max_rx + 1
        los = []
        for pkt, _, c in self._ready:
            floor = min(floor, pkt)
            los.append(min(c.tcp_base, c.seq))
        spare = self.spare.cont
        if spare is not None:
            floor = min(floor, spare.seq)
            los.append(min(spare.tcp_base, spare.seq))
            if self.spare.stale:
                floor = min(floor, self.spare.ss_right + 1)
        for pkt, exp in self.loss.expected.items():
            floor = min(floor, pkt)
            los.append(exp.base)
        score.prune(floor, los)
        self._next_prune = 2 * len(score.nonce) + self.PRUNE_MIN

    def _detect_losses(self, now: float) -> None:
        if self.repair.req_of:
            self.repair.start(now)
        loss, top, gate = self.loss, self.score.max_rx, self.gate
        bound = (gate.note(now, top, loss.hole_below(top), self._reo_srtt()) if gate.steps
                 else top - loss.reordering + 1)  # a path that reorders: holes wait (gate)
        self._declare_below(bound, now)

    def _declare_below(self, bound: int, now: float) -> None:
        """Declare every expected packet numbered below `bound` lost (not those waiting for a
        repeated request: their deadline decides)."""
        loss = self.loss
        if loss.heap and loss.heap[0] < bound:
            for pkt in loss.due_below(bound, self.repair.under_repair):
                self._declare(pkt, now)
        if loss.rtx_heap and loss.rtx_heap[0][0] < bound:
            for pkt, exp in loss.rtx_lost_below(bound):
                self.repair.rtx_req_of.pop(pkt, None)
                if exp is not None:
                    self.counters["rtx_lost"] += 1
                    self.stream.settle(exp.ranges)

    def _declare(self, pkt: int, now: float) -> None:
        exp = self.loss.expected.pop(pkt, None)
        self.repair.req_of.pop(pkt, None)
        if exp is None:
            return
        self.score.lost[pkt] = exp.accept
        self.counters["losses"] += 1
        self.stream.settle(exp.ranges)
        if self.on_event is not None:
            self._event(ev.LOSS_DETECTED, now, pkt=pkt)

    # ------------------------------------------------------------------ timers
    def handle_timer(self, now: float) -> None:
        rheap = self.repair.heap
        if rheap and now >= rheap[0][0]:
            self.repair.check(now)
            self._pump(now)
            self._update_reo(now)
        if self._reo is not None and now >= self._reo:
            self._reo = None
            self._declare_below(self.gate.due(now) if self.gate.steps else self.score.max_rx,
                                now)
            self._pump(now)
            self._update_reo(now)
        if self._timer is None or now < self._timer:
            return
        self._timer = None
        if self.phase == Phase.SYN_SENT:
            self._backoff = min(self._backoff * 2, 64)
            self._timeouts_in_row += 1
            if self._timeouts_in_row > self.cfg.max_timeouts:
                self.phase = Phase.FAILED
                return
            self.counters["syn_retries"] += 1
            self._send_syn(now)
            return
        if self.phase == Phase.FIN_SENT:
            if self._fin_tries >= self.cfg.fin_tries or self.spare.cont is None:
                self.phase = Phase.CLOSED
                return
            self.counters["fin_retries"] += 1
            self.close(now)
            return
        if self.phase == Phase.ESTABLISHED:
            self._timeout(now)

    def _timeout(self, now: float) -> None:
        """The retransmission timer fired in an established connection."""
        loss = self.loss
        if self._ready and not loss.expected and not loss.rtx and not self._can_ask():
            # the window is full and nothing is outstanding: the application is slow, not
            # the network; held continuations ask again when it reads (TCP's zero window)
            self.counters["window_stall"] += 1
            return
        wait = self.spare.slowstart_wait(now)
        if wait > 0:  # the server would refuse it as a replay: wait for the next age bucket
            self.counters["slowstart_deferred"] += 1
            self._timer = now + wait
            return
        self._timeouts_in_row += 1
        if self._timeouts_in_row > self.cfg.max_timeouts or self.spare.cont is None:
            self.phase = Phase.FAILED
            self._event(ev.TIMEOUT, now, fatal=True)
            return
        self.counters["timeouts"] += 1
        self._backoff = min(self._backoff * 2, 64)
        self._slowstart(now)

    def _slowstart(self, now: float) -> None:
        spare = self.spare
        cont = spare.cont
        assert cont is not None
        # the server's age of `cont` exceeds ours by the path delay: file this SLOWSTART in
        # the bucket of our age plus a smoothed RTT, so the next one is surely past it
        spare.ss_cont = cont
        spare.ss_bucket = spare.age_bucket(now, self.rtt.srtt)
        blocks = self._proof(cont)
        if spare.stale:  # only PAIR packets of the new epoch came: the old spare cannot
            r0 = spare.ss_right  # claim them (their nonces belong to the new epoch)
            blocks = [(lft, min(rgt, r0)) for lft, rgt in blocks if lft <= r0]
        plan = dl.plan_for(cont.type, cont.seq, cont.tcp_base, cont.start_cwnd, cont.ssthresh,
                           cont.state, blocks, True, self._max_gap)
        right = plan.slots[0].pkt - 1
        blocks = [(lft, min(rgt, right)) for lft, rgt in blocks if lft <= right]  # same `right`
        self._event(ev.TIMEOUT, now, pkt=cont.seq, right=right,
                    rto=self.rtt.rto * self._backoff, srtt=self.rtt.srtt)
        # a new client epoch: everything outstanding is re-requested, numbers above right reused
        self.client_state = (self.client_state + 1) & _U32
        self.build.add_token(self.client_state)
        for exp in self.loss.outstanding():
            self.stream.settle(exp.ranges)
        self.loss.clear()
        self.gate.restart()
        self.repair.clear()
        self._ready.clear()
        self.score.cut_above(right)
        self.in_recovery = False
        self._launch(REQ_SLOWSTART, cont, blocks, plan, now)
        spare.stale = True  # the new epoch's first packet becomes the spare
        spare.ss_right = right
        self._arm(now)


__all__ = ["ClientConfig", "ClientEngine", "Phase"]
