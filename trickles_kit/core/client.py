"""The client engine: a sans-I/O state machine that owns every timer and all reliability.

It runs the server's own planning function (`core.plan`) on each continuation it is about to
use, so it knows which packets the request will produce and names the bytes each one carries:
missing bytes first, then new ones (PROTOCOL §4.5). Loss is inferred FACK-style (a packet is
lost once one `dupthresh` numbers above it has arrived); requests for packets past an undecided
hole are held, so reordering does not trigger recovery.

API in the style of aioquic: `connect`, `receive(segment, now)`, `datagrams_to_send()`,
`get_timer()`, `handle_timer(now)`, `read()`, `close(now)`.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections import Counter
from dataclasses import dataclass

from trickles_kit.core import delta as dl
from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.ranges import RangeSet
from trickles_kit.core.replay import slowstart_age_bucket, slowstart_bucket_end
from trickles_kit.wire.continuation import BOOTSTRAP, FULL2, HASHED, MINIMAL, PAIR, Continuation
from trickles_kit.wire.delta import FLAG_HASHED, FLAG_PAIRED, compact_request, flag_request
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    MAX_RANGES,
    REQ_FIN,
    REQ_NORMAL,
    REQ_SLOWSTART,
    REQ_SYN,
    DataChunk,
    FinHint,
    Request,
    SackBlock,
    SkipChunk,
    decode_response,
)
from trickles_kit.wire.segment import ACK, FIN, SYN, decode_segment, encode_segment

_U32 = 0xFFFFFFFF


@dataclass(slots=True)
class ClientConfig:
    mss: int = 1448  # must match the server's
    max_sacks: int = 8
    dupthresh: int = 3
    initial_rto: float = 1.0
    min_rto: float = 0.2  # Linux's floor; the original Trickles used 1 s
    max_rto: float = 60.0
    max_timeouts: int = 15  # consecutive unproductive timeouts before giving up
    # s: the server's SLOWSTART age bucket unit (ServerConfig.slowstart_bucket, the same default)
    slowstart_bucket: float = 0.1
    max_gap: int = pl.MAX_GAP
    syn_data: bool = True  # send the request bytes (and a padded SYN) in the SYN
    # delta encoding (docs/protocol.md §14.3), used only if the server agrees: delayed-ack
    # pairs (FULL2 + PAIR), and HASHED answers / COMPACT requests
    paired: bool = False
    hashed: bool = False
    # empty requests in a row once every byte is asked for (tail probes): their packets keep
    # the ack clock running past the last data packets, so a lost one is found by FACK; every
    # further continuation is held until a loss gives it bytes to ask (docs/protocol.md §8.5)
    tail_probes: int = 2
    fin_tries: int = 4  # FIN requests before the client calls the connection closed anyway
    # flow control: response bytes held (unread by the application, or out of order) plus
    # bytes asked and not yet arrived never exceed this; nothing outside it is asked for or
    # kept, so a server (honest or not) cannot make the client hold more (docs §8.7)
    window: int = 8 << 20
    # request-path loss (docs/protocol.md §8.8), off by default: a lost request then leaves a
    # gap that counts as a loss, as in the paper. On, a NORMAL request none of whose packets
    # came is sent again (the very same datagrams) up to `request_repeats` times before its
    # packets are called lost, and every NORMAL request goes out in as many copies (at most
    # `request_copies`) as the request loss it measures calls for. The server answers one copy
    # of a continuation only (its replay table): copies of an answered request get nothing
    uplink_repair: bool = False
    request_repeats: int = 2
    request_copies: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        if not 1 <= self.max_sacks <= 64 or self.dupthresh < 1:
            raise ValueError("max_sacks must be in 1..64 and dupthresh >= 1")
        if not 0 <= self.tail_probes <= 64 or not 1 <= self.fin_tries <= 16:
            raise ValueError("tail_probes must be in 0..64 and fin_tries in 1..16")
        if not 2 * self.mss <= self.window <= 1 << 31:
            raise ValueError("window must be in [2 * mss, 2^31] bytes")
        if not 1 <= self.request_repeats <= 8 or not 1 <= self.request_copies <= 4:
            raise ValueError("request_repeats must be in 1..8 and request_copies in 1..4")

    @property
    def max_islands(self) -> int:
        """Out-of-order runs the client keeps: one per packet of a full window, plus slack."""
        return self.window // max(self.mss, 1) + 64


class _Expect:
    __slots__ = ("ranges", "order")

    def __init__(self, ranges: list[tuple[int, int]], order: int) -> None:
        self.ranges = ranges
        self.order = order


class _Req:
    """A NORMAL request as sent (uplink repair), kept while its packets are outstanding: a
    repeat is the very same datagram, so the server plans the very same packets for it."""

    __slots__ = ("segs", "copies", "stamp", "wire", "k", "pkts", "epoch", "answered",
                 "repeats", "first_repeat", "due", "serial")

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


class ClientEngine:
    """One Trickles connection, client side. Times are float seconds supplied by the caller."""

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
        self.cfg = config or ClientConfig()
        self.local_ip, self.local_port = local_ip, local_port
        self.server_ip, self.server_port = server_ip, server_port
        self.isn = isn & _U32
        self.on_event = on_event
        self.counters: Counter[str] = Counter()
        self.phase = "idle"  # idle|syn_sent|established|done|fin_sent|closed|failed
        self.conn_id = 0
        self.client_state = 0  # the timeout epoch (internal; the wire carries its echo token)
        # the echo tokens (docs §6.1, §15): 64 unpredictable bits per timeout epoch that every
        # answer must carry back in clientState|parent; an off-path host cannot guess them
        self._echo_key = echo_key if echo_key is not None else os.urandom(16)
        self._tokens: dict[int, int] = {}  # wire token -> epoch, the last ECHO_EPOCHS epochs
        self._add_token(0)
        self._req_seq = self.isn
        self._request_bytes = b""
        self._outbox: list[bytes] = []
        # transport scoreboard (current client_state only)
        self._board = RangeSet()  # packet numbers that may be claimed in SACK proofs
        self._nonce: dict[int, int] = {}
        self._sum_cache: dict[int, tuple[int, int]] = {}
        self._lost: set[int] = set()
        self._max_rx = -1
        self._expected: dict[int, _Expect] = {}
        self._exp_heap: list[int] = []
        self._rtx: dict[int, _Expect] = {}
        self._rtx_heap: list[tuple[int, int]] = []
        self._ready: list[tuple[int, int, Continuation]] = []
        # uplink repair (cfg.uplink_repair): the request each outstanding packet answers, the
        # packets waiting for a repeated request, and the repeats' deadlines
        self._repair_on = self.cfg.uplink_repair
        self._last_segs: list[bytes] = []
        self._last_wire: tuple[Request, int, int, int] | None = None
        self._req_of: dict[int, _Req] = {}
        self._rtx_req_of: dict[int, _Req] = {}
        self._under_repair: dict[int, _Req] = {}
        self._repair_heap: list[tuple[float, int, _Req]] = []
        self._req_serial = 0
        # whether repeats pay: the share of repeated requests whose packets then came (EWMA
        # over them); low when the gaps are answers lost on the way
        self._repair_yield = self.YIELD_START
        self._repair_skipped = 0
        # the loss of one request datagram on the way to the server (mean of the first
        # trials, then an EWMA) and the copies every NORMAL request goes out in now
        self._copy_loss = 0.0
        self._copy_trials = 0
        self._copies = 1
        self._spare: Continuation | None = None
        self._spare_stale = False  # the spare predates the last SLOWSTART: replace it
        self._ss_right = -1  # `right` of the last SLOWSTART
        self._spare_rx = 0.0  # when the spare arrived (its age here bounds the server's below)
        self._ss_spare: Continuation | None = None  # the continuation of the last SLOWSTART
        self._ss_bucket = -1  # the latest age bucket the server may have filed it in
        self.in_recovery = False
        self._recovery_base = -1
        self.cwnd = 0
        self.ssthresh = 0
        # bytes
        self.total: int | None = None
        self._received = RangeSet()
        self._missing = RangeSet()
        self._next_new = 0
        self._lanes: list[list[int]] = []  # parallel requests: [next, end) per reserved slice
        self._lane_turn = 0
        self._pieces: dict[int, bytearray] = {}  # out-of-order runs, merged: start -> bytes
        self._piece_end: dict[int, int] = {}  # end -> start of each run
        self._want = RangeSet()  # bytes asked for and not received yet
        self._want_bytes = 0
        self._held = 0  # bytes in _pieces and _app: out of order, or unread
        self._deliver = 0
        self._skips = RangeSet()
        self._app = bytearray()
        self.ucont = b""
        # timers
        self._srtt: float | None = None
        self._rttvar = 0.0
        self.rto = self.cfg.initial_rto
        self._backoff = 1
        self._timer: float | None = None
        self._reo: float | None = None  # end of the reordering window for an undecided hole
        self._timeouts_in_row = 0
        self._probes = 0  # empty requests sent since the last one that asked for bytes
        self._fin_tries = 0
        self._fin_bucket = -1  # the latest age bucket the server may have filed our FIN in
        self._syn_time = 0.0
        self._syn_range: tuple[int, int] | None = None
        self._preds = dl.Predictions() if self.cfg.hashed else None
        self._compact_ok = False  # the server sent a HASHED answer: it expands COMPACT ones

    # ------------------------------------------------------------------ public API
    @property
    def done(self) -> bool:
        """All response bytes received (the total is known and covered)."""
        return self.total is not None and self._received.covers(0, self.total)

    @property
    def bytes_received(self) -> int:
        return self._received.total()

    def connect(self, now: float, request: bytes = b"",
                lanes: list[tuple[int, int]] | None = None) -> None:
        """Open the connection and ask for the response to `request` (e.g. b"GET /file")."""
        if self.phase != "idle":
            raise ValueError(f"connect() in phase {self.phase}")
        self._request_bytes = bytes(request)
        if lanes:
            self.set_lanes(lanes)
        self.phase = "syn_sent"
        self._send_syn(now)
        if self._lanes and self._syn_range is not None:  # the SYN already asks for these bytes
            first = self._lanes[0]
            if first[0] == self._syn_range[0]:
                first[0] = min(max(first[0], self._syn_range[1]), first[1])

    def set_lanes(self, lanes: list[tuple[int, int]]) -> None:
        """Parallel requests: one reserved byte slice [start, end) of the response per request.

        New bytes are then asked round-robin across the slices, so every response progresses
        at once; what a slice's response leaves unused the server SKIPs. Call before connect.
        """
        if self.phase != "idle":
            raise ValueError("set_lanes() before connect()")
        spans = sorted(lanes)
        if not spans or any(s >= e or s < 0 or e > 1 << 32 for s, e in spans) or any(
            a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)
        ):
            raise ValueError("lanes must be disjoint, non-empty slices of [0, 2^32)")
        self._lanes = [[s, e] for s, e in spans]

    def set_total(self, total: int, now: float) -> None:
        """The response stream's length, learned by the application before any FINHINT (an
        HTTP Content-Length): no byte at or past it is asked for. As with FINHINT the least
        length wins. Without it the client asks past the end until the packet carrying the
        last byte arrives — about one window of answers with nothing in them."""
        if total < 0:
            raise ValueError("total must be >= 0")
        self._set_total(total)
        if self.done and self.phase == "established":
            self.phase = "done"
            self._timer = None
            self._event(ev.DONE, now, bytes=self.total)

    def close(self, now: float) -> None:
        """Tear down: a FIN request (the server keeps nothing to free; this tells the app).

        Retries go on the same continuation (after the last byte no new one comes). The server
        answers one FIN per continuation per age bucket (docs/protocol.md §9.3), so a retry
        waits until the continuation's age has left the bucket of the previous try.
        """
        if self.phase in ("closed", "failed", "idle"):
            return
        if self._spare is None:
            self.phase = "closed"
            return
        self.phase = "fin_sent"
        wait = self._bucket_wait(self._fin_bucket, now)
        if wait > 0:  # this try would be a replay of the last one: wait for the next bucket
            self._timer = now + wait
            return
        self._fin_tries += 1
        self._fin_bucket = self._spare_age_bucket(now)
        self._send_request(REQ_FIN, self._spare, [], [], now, flags=FIN | ACK)
        self._timer = now + min(self.rto * (1 << min(self._fin_tries - 1, 6)), self.cfg.max_rto)

    def read(self, now: float | None = None) -> bytes:
        """In-order response bytes that arrived since the last read. With `now`, the window
        this frees is used at once (held continuations ask for the next bytes)."""
        out = bytes(self._app)
        self._app.clear()
        self._held -= len(out)
        if now is not None and out and self.phase == "established":
            self._pump(now)
        return out

    @property
    def unread(self) -> int:
        """In-order bytes waiting for `read`."""
        return len(self._app)

    @property
    def held_bytes(self) -> int:
        """Response bytes the engine holds: unread, or out of order (at most the window)."""
        return self._held

    def credit(self) -> int:
        """New bytes the window still lets the client ask for."""
        return self.cfg.window - self._held - self._want_bytes

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline: the reordering window, a repeated request's wait or the
        retransmission timeout."""
        t = self._timer
        if self._reo is not None and (t is None or self._reo < t):
            t = self._reo
        if self._repair_heap and (t is None or self._repair_heap[0][0] < t):
            t = self._repair_heap[0][0]
        return t

    # ------------------------------------------------------------------ helpers
    def _event(self, kind: str, now: float, **kw) -> None:
        if self.on_event is None:
            return
        e = ev.Event(kind, now, "client", self.conn_id, cwnd=self.cwnd, ssthresh=self.ssthresh)
        for key, val in kw.items():
            if hasattr(e, key):
                setattr(e, key, val)
            else:
                e.detail[key] = val
        self.on_event(e)

    def _drop(self, reason: str, now: float, **kw) -> None:
        """A segment the client refuses: a counter `drop.<reason>` and a `drop` event."""
        self.counters["drop"] += 1
        self.counters["drop." + reason] += 1
        self._event(ev.DROP, now, reason=reason, **kw)

    ECHO_EPOCHS = 16  # timeout epochs whose late packets are still recognised (data only)

    def _token(self, epoch: int) -> int:
        d = hashlib.blake2b(epoch.to_bytes(4, "big"), key=self._echo_key, digest_size=8)
        return int.from_bytes(d.digest(), "big")

    def _add_token(self, epoch: int) -> None:
        tok = self._token(epoch)
        self._tokens[tok >> 32 if self.cfg.hashed else tok] = epoch
        old = epoch - self.ECHO_EPOCHS
        if old >= 0:
            t = self._token(old)
            self._tokens.pop(t >> 32 if self.cfg.hashed else t, None)

    def _owned(self, now: float) -> tuple[int, int, int]:
        """(clientState, parent, clientTimestamp) to send: the epoch's echo token (its high
        half and the request counter with HASHED answers, which echo only `parent`), the clock."""
        tok = self._token(self.client_state)
        parent = self.counters["requests"] & _U32 if self.cfg.hashed else tok & _U32
        return tok >> 32, parent, int(now * 1000) & _U32

    def _echo_epoch(self, cont: Continuation) -> int | None:
        """The timeout epoch whose token `cont` echoes, or None (not an answer to us)."""
        if self.cfg.hashed:
            return self._tokens.get(cont.client_state)
        return self._tokens.get(cont.client_state << 32 | cont.parent)

    def _segment(self, payload: bytes, ack: int, flags: int) -> bytes:
        self._req_seq = (self._req_seq + 1) & _U32
        return encode_segment(
            self.local_ip, self.server_ip, self.local_port, self.server_port, self._req_seq,
            ack, flags, payload, 0, 0xFFFF,
        )

    def _arm(self, now: float) -> None:
        self._timer = now + min(self.rto * self._backoff, self.cfg.max_rto)

    def _send_syn(self, now: float) -> None:
        ranges = [(0, self.cfg.mss)] if self.cfg.syn_data and self._request_bytes else []
        app = self._request_bytes if self.cfg.syn_data else b""
        # the SYN's ucont field starts with the client-owned values the handshake answer
        # echoes (docs §9.2), then zeros: padding so the answer stays within 3x the SYN (a
        # data answer is at most mss + 300 bytes, a bare handshake answer under 360)
        owned = b"".join(v.to_bytes(4, "big") for v in self._owned(now))
        req = Request(REQ_SYN, None, [], owned, ranges, app)
        payload = req.encode()
        answer = self.cfg.mss + 300 if ranges else 360
        need = answer // 3 + 1 - (len(payload) + 28)
        if need > 0:
            req.ucont = owned + b"\0" * need
            payload = req.encode()
        self._syn_time = now
        if ranges:
            self._syn_range = ranges[0]
            self._next_new = max(self._next_new, ranges[0][1])
            self._ask_bytes(*ranges[0])
        dflags = (FLAG_PAIRED if self.cfg.paired else 0) | (FLAG_HASHED if self.cfg.hashed else 0)
        if dflags:
            payload = flag_request(payload, dflags)
        self._outbox.append(self._segment(payload, 0, SYN))
        self.counters["tx"] += 1
        self._arm(now)

    # ------------------------------------------------------------------ receive
    def receive(self, segment: bytes, now: float) -> None:
        """Process one segment from the server; bad input is counted and dropped."""
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
        cont: Continuation | None = resp.cont
        if cont.type == HASHED:  # rebuild it from what we predicted for that request
            cont = None if self._preds is None else self._preds.rebuild(
                cont, seg.seq, resp.position, self.conn_id)
            if cont is None:  # not an answer to a request we made: nothing in it is trusted
                self.counters["delta_unknown"] += 1
                self._drop("echo", now, pkt=seg.seq)
                return
            self._compact_ok = True
        epoch = self._echo_epoch(cont)
        if epoch is None:  # no echo of our token: off-path injection (or a confused server)
            self._drop("echo", now, pkt=seg.seq)
            return
        cont.client_state = epoch  # from here on, the internal timeout epoch
        if self.phase == "syn_sent":
            if not seg.flags & SYN or not cont.is_full:
                self._drop("not_synack", now, pkt=seg.seq)
                return
            self.conn_id = cont.conn_id
            self.phase = "established"
            self.cwnd, self.ssthresh = cont.start_cwnd, cont.ssthresh
            self._sample_rtt(now - self._syn_time)
        elif cont.is_full and cont.conn_id != self.conn_id:
            self._drop("conn_id", now, pkt=seg.seq)
            return
        if self.phase in ("closed", "failed", "idle"):
            return
        if seg.flags & FIN and self.phase == "fin_sent" and not resp.chunks:  # the FIN answer
            self.phase = "closed"
            self._timer = None
            self.counters["fin_answered"] += 1
            return
        progress = self._take_chunks(resp.chunks, now)
        if seg.flags & SYN and self._syn_range is not None:
            # the SYN asked for these bytes; an answer trimmed by anti-amplification lacks them
            for s, e in self._received.gaps(*self._syn_range):
                self._missing.add(s, e)
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
        if self.done and self.phase == "established":
            self.phase = "done"
            self._timer = None
            self._event(ev.DONE, now, bytes=self.total)
        self._pump(now)
        self._update_reo(now)

    def _update_reo(self, now: float) -> None:
        """A hole too near the top for `dupthresh` gets a reordering window (RACK-style)."""
        if self.phase == "established" and self._pending_below(self._max_rx):
            if self._reo is None:
                srtt = self._srtt if self._srtt is not None else self.cfg.initial_rto
                self._reo = now + max(srtt / 4, 0.002)
        else:
            self._reo = None

    def _sample_rtt(self, r: float) -> None:
        if r < 0:
            return
        if self._srtt is None:
            self._srtt, self._rttvar = r, r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        self.rto = min(max(self._srtt + 4 * self._rttvar, self.cfg.min_rto), self.cfg.max_rto)

    def _take_chunks(self, chunks: list, now: float) -> bool:
        """Keep the bytes we asked for (within the window), below the stream's length."""
        got = False
        received = self._received
        cap = self.cfg.max_islands
        for c in chunks:
            if isinstance(c, DataChunk):
                start = c.byte_num
                end = start + len(c.data)
                if c.fin:
                    self._set_total(end)
                for s, e in self._want.clip(start, end):
                    if len(received) >= cap and not received.contains(s - 1):
                        self.counters["drop.fragments"] += 1  # a new island past the cap
                        continue
                    self._store(s, c.data[s - start : e - start])
                    received.add(s, e)
                    got = True
                if not got and c.data and received.gaps(start, end):
                    self.counters["drop.unasked"] += 1  # bytes we never asked for
            elif isinstance(c, FinHint):
                self._set_total(c.byte_num)
            elif isinstance(c, SkipChunk):
                end = c.byte_num + c.length
                if self.total is not None:
                    end = min(end, self.total)
                for s, e in received.gaps(c.byte_num, end):
                    if len(received) >= cap and not received.contains(s - 1):
                        self.counters["drop.fragments"] += 1
                        continue
                    self._skips.add(s, e)
                    received.add(s, e)
                    self._unask(s, e)
                    got = True
        if got:
            self._deliver_in_order(now)
        return got

    def _ask_bytes(self, start: int, end: int) -> None:
        """Record bytes named in a request: only these are accepted when they arrive."""
        for s, e in self._received.gaps(start, end):
            for gs, ge in self._want.gaps(s, e):
                self._want_bytes += ge - gs
            self._want.add(s, e)

    def _unask(self, start: int, end: int) -> None:
        for s, e in self._want.clip(start, end):
            self._want_bytes -= e - s
        self._want.remove(start, end)

    def _store(self, start: int, data: bytes) -> None:
        """Keep an out-of-order run, merged with its neighbours: memory stays one object per
        island however small the chunks are."""
        self._unask(start, start + len(data))
        self._held += len(data)
        left = self._piece_end.pop(start, None)
        if left is not None:
            buf = self._pieces[left]
            buf += data
        else:
            left, buf = start, bytearray(data)
            self._pieces[start] = buf
        right = self._pieces.pop(start + len(data), None)
        if right is not None:
            del self._piece_end[start + len(data) + len(right)]
            buf += right
        self._piece_end[left + len(buf)] = left

    def _set_total(self, total: int) -> None:
        if self.total is None or total < self.total:
            self.total = total
            self._missing.remove_from(total)
            self._unask(total, 1 << 33)

    def _deliver_in_order(self, now: float) -> None:
        pieces = self._pieces
        n0 = len(self._app)
        top = self.total
        while top is None or self._deliver < top:
            piece = pieces.pop(self._deliver, None)
            if piece is not None:
                del self._piece_end[self._deliver + len(piece)]
                if top is not None and self._deliver + len(piece) > top:  # past the stated end
                    self._held -= self._deliver + len(piece) - top
                    del piece[top - self._deliver :]
                self._app += piece
                self._deliver += len(piece)
                continue
            first = self._skips.first()
            if first is not None and first[0] == self._deliver:
                self._skips.remove(*first)
                self._deliver = first[1]
                continue
            break
        if self.on_event is not None and len(self._app) > n0:
            self._event(ev.DATA, now, bytes=len(self._app) - n0, offset=self._deliver)

    def _on_packet(self, cont: Continuation, nonce: int, now: float) -> bool:
        pkt = cont.seq
        req = (self._rtx_req_of if cont.type == MINIMAL else self._req_of).get(pkt)
        cts = cont.client_timestamp
        if req is not None:
            # the copy answered: copy i of a request carries its first copy's stamp + i ms
            # (all left at once); a repeated request gives no sample (Karn's rule)
            cts = 0 if req.repeats else req.stamp
        if cts:
            r = ((int(now * 1000) - cts) & _U32) / 1000.0
            if r < 1 << 20:
                self._sample_rtt(r)
        if cont.type == MINIMAL:  # a retransmission: its data counts, its number is not claimed
            exp = self._rtx.pop(pkt, None)
            if exp is not None:
                self._settle(exp)
                self.counters["rtx_received"] += 1
            if req is not None:
                del self._rtx_req_of[pkt]
                self._answered(req, -1, now, cont.client_timestamp)
            return exp is not None
        exp = self._expected.pop(pkt, None)
        if exp is not None:
            self._settle(exp)
        if req is not None:
            del self._req_of[pkt]
            self._under_repair.pop(pkt, None)
            self._answered(req, pkt, now, cont.client_timestamp)
        if pkt in self._lost or self._board.contains(pkt):
            self.counters["late_or_dup"] += 1
            return exp is not None
        self._board.add(pkt, pkt + 1)
        self._nonce[pkt] = nonce
        if pkt > self._max_rx:
            self._max_rx = pkt
        if cont.type == PAIR:  # claimable; the FULL2 packet after it makes the request
            self._detect_losses(now)
            return True
        if self._spare is None or self._spare_stale or pkt >= self._spare.seq:
            self._spare = cont  # the newest continuation of the current client epoch
            self._spare_stale = False
            self._spare_rx = now
        heapq.heappush(self._ready, (pkt, id(cont), cont))
        # (paired mode: the new epoch's first FULL2 packet may be its second one)
        if self.in_recovery and cont.state == BOOTSTRAP and (
                pkt == self._recovery_base
                or (cont.type == FULL2 and pkt == self._recovery_base + 1)):
            self.in_recovery = False
            self._event(ev.RECOVERY_END, now, pkt=pkt, tcp_base=cont.tcp_base)
        self._detect_losses(now)
        return True

    def _settle(self, exp: _Expect) -> None:
        """Bytes an arrived packet should have carried but did not become missing (never
        bytes at or past a known end: asking for them again would only fetch a FINHINT)."""
        top = self.total if self.total is not None else 1 << 32
        for s, e in exp.ranges:
            for gs, ge in self._received.gaps(s, min(e, top)):
                self._missing.add(gs, ge)

    def _detect_losses(self, now: float) -> None:
        if self._req_of:
            self._start_repairs(now)
        self._declare_below(self._max_rx - self.cfg.dupthresh + 1, now)

    def _declare_below(self, bound: int, now: float) -> None:
        """Declare every expected packet numbered below `bound` lost (not those waiting for a
        repeated request: their deadline decides)."""
        limit = bound - 1
        heap = self._exp_heap
        repairing = self._under_repair
        while heap and heap[0] <= limit:
            pkt = heapq.heappop(heap)
            if pkt in repairing:
                continue
            self._declare(pkt, now)
        rheap = self._rtx_heap
        while rheap and rheap[0][0] <= limit:
            _, pkt = heapq.heappop(rheap)
            exp = self._rtx.pop(pkt, None)
            self._rtx_req_of.pop(pkt, None)
            if exp is not None:
                self.counters["rtx_lost"] += 1
                self._settle(exp)

    def _declare(self, pkt: int, now: float) -> None:
        exp = self._expected.pop(pkt, None)
        self._req_of.pop(pkt, None)
        if exp is None:
            return
        self._lost.add(pkt)
        self.counters["losses"] += 1
        self._settle(exp)
        self._event(ev.LOSS_DETECTED, now, pkt=pkt)

    # ------------------------------------------------------------------ uplink repair
    # (docs/protocol.md §8.8) A lost request leaves a gap in the packets the client predicted,
    # exactly like a lost answer. The first packet numbered above a gap makes the client send
    # the request the gap belongs to again, the very same datagram, if none of that request's
    # packets came: the server either never saw it and answers now with the same packets, or
    # answered it already and refuses the copy as a replay. The gap's packets then wait about a
    # round trip (requests past them are held, as for any undecided hole, so nothing new is
    # sent meanwhile); still missing after the last repeat, they are lost and recovery halves
    # the window as before. Whether repeats pay is measured (gaps may be lost answers: then
    # they only delay recovery), and so is the loss of one request datagram: the more there
    # is, the more copies each request goes out in (at most `request_copies`), so that a
    # client sending copies of its own accord gains next to nothing.
    YIELD_START = 0.3  # the repair yield assumed before any repeat
    YIELD_MIN = 0.25  # repair yield below which gaps are not repeated (but for probes)
    YIELD_AGAIN = 0.75  # ... below which a repeat that failed is not repeated again
    YIELD_GAIN = 1 / 8  # EWMA gain: per repeated request, repaired (1) or not (0)
    REPAIRS_MIN = 8  # requests repaired at once: up to this many, or a quarter of the window
    PROBE_EVERY = 16  # gaps: with a low yield, one in this many is still repeated
    # copies per request by the measured loss of one request datagram: c + 1 copies from
    # COPY_STEPS[c - 1] up (2 from 2 %, 3 from 6 %), back down below 3/4 of the step
    COPY_STEPS = (0.02, 0.06, 0.15)
    COPY_GAIN = 1 / 128  # EWMA gain of the loss estimate (after as many trials)
    COPY_BURST = 256  # datagrams waiting to be sent past which no more copies are added
    PROBE_PAIR = 16  # sent once, one request in this many still goes out twice (a probe)
    REPAIR_RTTS = 1.25  # a repeat's packets are waited for this many smoothed RTTs (at least)

    def _start_repairs(self, now: float) -> None:
        heap = self._exp_heap
        top = self._max_rx
        budget = self.cfg.request_repeats
        expected, req_of, repairing = self._expected, self._req_of, self._under_repair
        keep = []
        out: int | None = None
        while heap and heap[0] < top:
            pkt = heapq.heappop(heap)
            if pkt not in expected or pkt in repairing:
                continue
            req = req_of.get(pkt)
            if (req is None or req.answered or req.repeats >= budget or not req.segs
                    or req.epoch != self.client_state):
                keep.append(pkt)  # FACK decides, as without repair
                continue
            if out is None:
                out = len({id(r) for r in repairing.values()})  # requests being repaired
            if self._repair_yield < self.YIELD_MIN or out >= max(self.REPAIRS_MIN,
                                                                 self.cwnd // 4):
                # repeats have not been paying (the gaps were lost answers), or a burst of
                # gaps is already being repaired: one gap in PROBE_EVERY still gets its
                # repeat, so that a change of the path is noticed
                if self._repair_skipped < self.PROBE_EVERY - 1:
                    self._repair_skipped += 1
                    self.counters["repeats_skipped"] += 1
                    req.repeats = budget  # decided: this one is not repeated
                    keep.append(pkt)
                    continue
                self._repair_skipped = 0
            self._repeat(req, now)
            out += 1
        for pkt in keep:
            heapq.heappush(heap, pkt)

    def _repair_wait(self) -> float:
        """How long a repeated request's packets are waited for: REPAIR_RTTS smoothed round
        trips, or one and its spread (the queue may be growing), at least 2 ms, at most the
        RTO."""
        srtt = self._srtt if self._srtt is not None else self.cfg.initial_rto
        return min(max(self.REPAIR_RTTS * srtt, srtt + 4 * self._rttvar, 0.002), self.rto)

    def _repeat(self, req: _Req, now: float) -> None:
        req.repeats += 1
        if req.repeats == 1:
            req.first_repeat = now
        for p in req.pkts:
            if self._req_of.get(p) is req and p in self._expected:
                self._under_repair[p] = req
        # a gap was just seen: at least two copies of the repeat (the first one's bytes)
        want = min(max(self._copies, 2), self.cfg.request_copies)
        if len(req.segs) < want and req.wire is not None and self._preds is None:
            wreq, cs, parent, flags = req.wire
            c = wreq.cont
            assert c is not None
            kept = c.client_state, c.parent, c.client_timestamp
            c.client_state, c.parent = cs, parent
            for i in range(len(req.segs), want):
                c.client_timestamp = (req.stamp + i) & _U32
                req.segs.append(self._segment(wreq.encode(), req.k, flags))
            c.client_state, c.parent, c.client_timestamp = kept
        self._outbox.extend(req.segs)
        self.counters["repeats"] += 1
        self.counters["tx"] += len(req.segs)
        req.due = now + self._repair_wait()
        heapq.heappush(self._repair_heap, (req.due, req.serial, req))
        if self.on_event is not None:
            self._event(ev.REQUEST, now, ack=req.k, req_type=REQ_NORMAL, repeat=req.repeats)

    def _answered(self, req: _Req, pkt: int, now: float, cts: int) -> None:
        """Packet `pkt` of `req` arrived (-1: its retransmission), echoing clientTimestamp
        `cts`: the server had the request, so it is not repeated again. The answer's packets
        leave in order: those numbered below `pkt` still missing were lost on the way (data
        loss) and go back to loss detection; those above are waited for until the repeat's
        deadline."""
        if not req.answered:
            req.answered = True
            lost = False
            if req.repeats:
                # a repeat's answer cannot come back much sooner than a round trip after it:
                # an earlier one answers the first copy, which was only late
                if now - req.first_repeat >= (self._srtt or 0.0) / 2:
                    lost = True
                    self.counters["repaired"] += 1
                    self._repair_yield += (1.0 - self._repair_yield) * self.YIELD_GAIN
                else:  # neither a success nor a failure
                    self.counters["repeats_late"] += 1
            # the loss of one request datagram, from trials that do not depend on whether
            # gaps are repeated: every copy lost (and a repeat's arrived); with copies, copy
            # i answered, so the i before it were lost (they left first); a single copy
            # answered, only while gaps are repeated (else its losses would go unseen)
            if lost:
                self._loss_trials(req.copies, True)
            elif req.repeats:
                pass  # the first copies were only late
            elif req.copies > 1:
                i = (cts - req.stamp) & _U32
                if i < req.copies:
                    self._loss_trials(i, True)
            elif req.copies == 1 and self._repair_yield >= self.YIELD_MIN:
                self._loss_trials(0, True)
        for p in req.pkts:
            if p < pkt and self._under_repair.get(p) is req:
                del self._under_repair[p]
                heapq.heappush(self._exp_heap, p)

    def _check_repairs(self, now: float) -> None:
        """Repeats whose wait is over: repeat again within the budget, else the packets are
        lost (the rest of an answer that has begun to arrive goes back to FACK)."""
        rheap = self._repair_heap
        repairing = self._under_repair
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
                    heapq.heappush(self._exp_heap, p)
                continue
            if (req.repeats < self.cfg.request_repeats and req.epoch == self.client_state
                    and self.phase == "established"
                    and self._repair_yield >= self.YIELD_AGAIN):
                self._repeat(req, now)
                continue
            self._repair_yield -= self._repair_yield * self.YIELD_GAIN  # it did not pay
            for p in mine:
                del repairing[p]
                self.counters["repair_failed"] += 1
                self._declare(p, now)

    def _loss_trials(self, lost: int, then_one: bool) -> None:
        """Request datagrams seen lost (`lost` of them) and, with `then_one`, one that arrived:
        update the loss estimate and choose the copies each request goes out in."""
        for x in [1.0] * lost + ([0.0] if then_one else []):
            self._copy_trials += 1
            gain = max(1 / self._copy_trials, self.COPY_GAIN)
            self._copy_loss += (x - self._copy_loss) * gain
        cmax = self.cfg.request_copies
        if cmax < 2 or self._preds is not None:  # (HASHED answers do not echo which copy)
            return
        p, c = self._copy_loss, self._copies
        want = 1 + sum(p >= step for step in self.COPY_STEPS[: cmax - 1])
        if want < c and p >= 0.75 * self.COPY_STEPS[want - 1]:
            want = c  # not down yet: hysteresis
        if want != c:
            self._copies = want
            self.counters["copies_up" if want > c else "copies_down"] += 1

    def _clear_repairs(self) -> None:
        self._req_of.clear()
        self._rtx_req_of.clear()
        self._under_repair.clear()
        self._repair_heap.clear()

    # ------------------------------------------------------------------ sending
    def _has_work(self) -> bool:
        return not self.done

    def _can_ask(self) -> bool:
        """Whether a request now would name any byte: a missing one or one never asked."""
        if self._missing:
            return True
        if self.credit() <= 0:
            return False  # the window is full: wait for the application to read
        top = self.total if self.total is not None else 1 << 32
        if not self._lanes:
            return self._unreceived(self._next_new, top, 1) is not None
        return any(self._unreceived(lane[0], min(lane[1], top), 1) is not None
                   for lane in self._lanes)

    def _pump(self, now: float) -> None:
        """Use the ready continuations, in packet order, unless a hole below one is undecided.

        Once every byte is asked for, only `tail_probes` empty requests go out in a row; the
        other continuations are held (unused, still valid) until a loss gives them bytes to ask.
        """
        if self.phase != "established":
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
            self._request_for(cont, now)

    def _pending_below(self, pkt: int) -> bool:
        """Whether an undecided packet (or one waiting for a repeated request) is numbered
        below `pkt`."""
        heap = self._exp_heap
        while heap and heap[0] not in self._expected:
            heapq.heappop(heap)
        if heap and heap[0] < pkt:
            return True
        repairing = self._under_repair
        return bool(repairing) and min(repairing) < pkt

    def _proof(self, cont: Continuation) -> list[tuple[int, int]]:
        lo = min(cont.tcp_base, cont.seq)
        blocks = [(s, e - 1) for s, e in self._board.clip(lo, cont.seq + 1)]
        m = self.cfg.max_sacks
        if len(blocks) > m:
            blocks = blocks[: m - 1] + blocks[-1:]
        return blocks

    def _summary(self, left: int, right: int) -> int:
        cached = self._sum_cache.get(left)
        if cached is not None and cached[0] <= right:
            r0, acc = cached
        else:
            r0, acc = left - 1, 0
        nonce = self._nonce
        for j in range(r0 + 1, right + 1):
            acc ^= nonce[j]
        if len(self._sum_cache) > 256:
            self._sum_cache.clear()
        self._sum_cache[left] = (right, acc)
        return acc

    def _assign(self, n: int) -> list[tuple[int, int]]:
        """Byte ranges for n slots: missing bytes first, then new ones (stops when none left)."""
        mss = self.cfg.mss
        out: list[tuple[int, int]] = []
        while len(out) < n:
            piece = self._missing.pop_first(mss)
            if piece is not None:
                for s, e in self._received.gaps(*piece):
                    out.append((s, e))
                    break
                continue
            rng = self._new_range(mss)
            if rng is None:
                break
            out.append(rng)
        return out

    def _new_range(self, mss: int) -> tuple[int, int] | None:
        """Bytes never asked for yet: from the one stream, or round-robin over the lanes."""
        mss = min(mss, self.credit())
        if mss <= 0:
            return None
        top = self.total if self.total is not None else 1 << 32
        lanes = self._lanes
        if not lanes:
            rng = self._unreceived(self._next_new, top, mss)
            if rng is not None:
                self._next_new = rng[1]
                self._ask_bytes(*rng)  # counted at once: the next slot sees less credit
            return rng
        n = len(lanes)
        for _ in range(n):
            lane = lanes[self._lane_turn % n]
            self._lane_turn += 1
            rng = self._unreceived(lane[0], min(lane[1], top), mss)
            if rng is not None:
                lane[0] = rng[1]
                self._ask_bytes(*rng)
                return rng
        return None

    def _unreceived(self, pos: int, stop: int, mss: int) -> tuple[int, int] | None:
        """Up to `mss` bytes from `pos`, jumping over what already arrived (a SKIP covers
        whole reserved ranges past the frontier in one chunk); None when [pos, stop) is done."""
        got = self._received.clip(pos, stop)  # past the frontier: only SKIPs, a few intervals
        i = 0
        while i < len(got) and got[i][0] <= pos:
            pos = max(pos, got[i][1])
            i += 1
        if pos >= stop:
            return None
        end = min(pos + mss, stop)
        if i < len(got):
            end = min(end, got[i][0])
        return (pos, end)

    def _request_for(self, cont: Continuation, now: float) -> None:
        blocks = self._proof(cont)
        plan = dl.plan_for(cont.type, cont.seq, cont.tcp_base, cont.start_cwnd, cont.ssthresh,
                           cont.state, blocks, False, self.cfg.max_gap)
        if plan.verdict == "reject":
            self.counters["unusable_cont"] += 1
            return
        self._launch(REQ_NORMAL, cont, blocks, plan, now)

    def _launch(self, rtype: int, cont: Continuation, blocks: list[tuple[int, int]],
                plan: pl.Plan, now: float) -> None:
        # a request carries at most MAX_RANGES ranges: a larger window from the server (its
        # startCwnd) leaves the extra slots without one rather than failing the encode
        ranges = self._assign(min(len(plan.slots), MAX_RANGES))
        if ranges:
            self._probes = 0
        elif plan.slots:
            self._probes += 1
            self.counters["tail_probes"] += 1
        newest = max((s.pkt for s in plan.slots if s.kind != pl.RETRANSMIT), default=cont.seq)
        req = None
        if self._repair_on and rtype == REQ_NORMAL and plan.slots:
            self._req_serial += 1
            req = _Req(cont.seq, plan, self.client_state, self._req_serial)
        for i, s in enumerate(plan.slots):
            rng = [ranges[i]] if i < len(ranges) else []
            table = self._rtx if s.kind == pl.RETRANSMIT else self._expected
            old = table.get(s.pkt)
            if old is not None:  # planned twice (e.g. two proofs showed the same hole):
                self._settle(old)  # the bytes asked of the first plan must not be forgotten
            if s.kind == pl.RETRANSMIT:
                self._rtx[s.pkt] = _Expect(rng, newest)
                heapq.heappush(self._rtx_heap, (newest, s.pkt))
                if req is not None:
                    self._rtx_req_of[s.pkt] = req
            else:
                self._expected[s.pkt] = _Expect(rng, s.pkt)
                heapq.heappush(self._exp_heap, s.pkt)
                self._under_repair.pop(s.pkt, None)  # planned anew: this request decides
                if req is not None:
                    self._req_of[s.pkt] = req
                else:
                    self._req_of.pop(s.pkt, None)
        if plan.slots:
            self.cwnd = plan.cwnd
            self.ssthresh = plan.slots[-1].ssthresh
        if plan.verdict == "recovery" and not self.in_recovery and plan.first_loss >= 0:
            boot = [s for s in plan.slots if s.kind == pl.BOOT]
            if boot:
                self.in_recovery = True
                self._recovery_base = boot[0].tcp_base
                self.counters["recoveries"] += 1
        for s in plan.slots:
            self.counters["pred." + s.kind] += 1
        if not plan.slots:
            self.counters["pred.terminate"] += 1
        self._last_segs, self._last_wire = [], None
        self._send_request(rtype, cont, blocks, ranges, now, plan=plan)
        if req is not None:  # (no copies if an override sent something else: no repeats)
            req.segs, req.stamp, req.wire = self._last_segs, cont.client_timestamp, \
                self._last_wire
            req.copies = len(req.segs)
        if self._timer is None:
            self._arm(now)

    def _send_request(self, rtype: int, cont: Continuation, blocks: list[tuple[int, int]],
                      ranges: list[tuple[int, int]], now: float, flags: int = ACK,
                      plan: pl.Plan | None = None) -> None:
        c = cont  # client-owned fields are ours to rewrite (they are outside the MAC)
        c.client_state, c.parent, c.client_timestamp = self._owned(now)
        for s, e in ranges:  # only bytes named in a request are accepted when they arrive
            self._ask_bytes(s, e)
        sacks = [SackBlock(lft, rgt, self._summary(lft, rgt)) for lft, rgt in blocks]
        app = self._request_bytes if not self.ucont else b""
        req = Request(rtype, c, sacks, self.ucont, ranges, app)
        payload = req.encode()
        if self._preds is not None:  # HASHED answers: remember what this request will produce
            if plan is not None:
                self._preds.record(c, plan, rtype == REQ_SLOWSTART)
            payload = (compact_request(payload, c, FLAG_HASHED) if self._compact_ok
                       else flag_request(payload, FLAG_HASHED))
        seg = self._segment(payload, cont.seq, flags)
        self._outbox.append(seg)
        self.counters["requests"] += 1
        self.counters["tx"] += 1
        if self._repair_on and rtype == REQ_NORMAL:
            segs = self._last_segs = [seg]
            self._last_wire = (req, c.client_state, c.parent, flags)
            n = self._copies
            if n == 1 and self.cfg.request_copies > 1 and \
                    self.counters["requests"] % self.PROBE_PAIR == 0:
                n = 2  # a probe: which copy is answered measures the loss of one
                self.counters["probe_pairs"] += 1
            if n > 1 and self._preds is None and len(self._outbox) < self.COPY_BURST:
                # uplink repair: copies (the server answers one), copy i stamped i ms later
                # so its answer says which arrived first; none within a long burst (held
                # requests let go at once), whose copies would overflow the path's queues
                t0 = c.client_timestamp
                for i in range(1, n):
                    c.client_timestamp = (t0 + i) & _U32
                    segs.append(self._segment(req.encode(), cont.seq, flags))
                c.client_timestamp = t0
                self._outbox.extend(segs[1:])
                self.counters["copies"] += len(segs) - 1
                self.counters["tx"] += len(segs) - 1
        if self.on_event is not None:
            self._event(ev.REQUEST, now, ack=cont.seq, tcp_base=cont.tcp_base, state=cont.state,
                        req_type=rtype, sacks=[list(b) for b in blocks], ranges=len(ranges))

    # ------------------------------------------------------------------ timers
    def handle_timer(self, now: float) -> None:
        if self._repair_heap and now >= self._repair_heap[0][0]:
            self._check_repairs(now)
            self._pump(now)
            self._update_reo(now)
        if self._reo is not None and now >= self._reo:
            self._reo = None
            self._declare_below(self._max_rx, now)
            self._pump(now)
            self._update_reo(now)
        if self._timer is None or now < self._timer:
            return
        self._timer = None
        if self.phase == "syn_sent":
            self._backoff = min(self._backoff * 2, 64)
            self._timeouts_in_row += 1
            if self._timeouts_in_row > self.cfg.max_timeouts:
                self.phase = "failed"
                return
            self.counters["syn_retries"] += 1
            self._send_syn(now)
            return
        if self.phase == "fin_sent":
            if self._fin_tries >= self.cfg.fin_tries or self._spare is None:
                self.phase = "closed"
                return
            self.counters["fin_retries"] += 1
            self.close(now)
            return
        if self.phase != "established":
            return
        if self._ready and not self._expected and not self._rtx and not self._can_ask():
            # the window is full and nothing is outstanding: the application is slow, not
            # the network; held continuations ask again when it reads (TCP's zero window)
            self.counters["window_stall"] += 1
            return
        wait = self._slowstart_wait(now)
        if wait > 0:  # the server would refuse it as a replay: wait for the next age bucket
            self.counters["slowstart_deferred"] += 1
            self._timer = now + wait
            return
        self._timeouts_in_row += 1
        if self._timeouts_in_row > self.cfg.max_timeouts or self._spare is None:
            self.phase = "failed"
            self._event(ev.TIMEOUT, now, fatal=True)
            return
        self.counters["timeouts"] += 1
        self._backoff = min(self._backoff * 2, 64)
        self._slowstart(now)

    def _slowstart_wait(self, now: float) -> float:
        """Seconds until a SLOWSTART on the spare falls in an age bucket it has not used.

        The server takes one SLOWSTART per continuation per age bucket (core.replay); timeouts
        that stop doubling at `max_rto` land twice in one bucket, and the second would be
        refused as a replay: a wasted timeout, counted toward giving up.
        """
        if self._ss_spare is None or self._ss_spare is not self._spare:
            return 0.0
        return self._bucket_wait(self._ss_bucket, now)

    def _bucket_wait(self, bucket: int, now: float) -> float:
        """Seconds until the spare's age (here, a lower bound of the server's) leaves `bucket`."""
        if bucket < 0:
            return 0.0
        unit = self.cfg.slowstart_bucket * 1000
        age = (now - self._spare_rx) * 1000
        if slowstart_age_bucket(age, unit) > bucket:
            return 0.0
        return (slowstart_bucket_end(bucket, unit) - age) / 1000 + 0.001

    def _spare_age_bucket(self, now: float) -> int:
        """The latest age bucket the server may file a request on the spare sent now under:
        its age there exceeds ours by the path delay, bounded by a smoothed RTT."""
        slack = min(self._srtt if self._srtt is not None else 0.1, 1.0)
        return slowstart_age_bucket((now - self._spare_rx + slack) * 1000,
                                    self.cfg.slowstart_bucket * 1000)

    def _slowstart(self, now: float) -> None:
        cont = self._spare
        assert cont is not None
        # the server's age of `cont` exceeds ours by the path delay: file this SLOWSTART in
        # the bucket of our age plus a smoothed RTT, so the next one is surely past it
        self._ss_spare = cont
        self._ss_bucket = self._spare_age_bucket(now)
        blocks = self._proof(cont)
        if self._spare_stale:  # only PAIR packets of the new epoch came: the old spare cannot
            r0 = self._ss_right  # claim them (their nonces belong to the new epoch)
            blocks = [(lft, min(rgt, r0)) for lft, rgt in blocks if lft <= r0]
        plan = dl.plan_for(cont.type, cont.seq, cont.tcp_base, cont.start_cwnd, cont.ssthresh,
                           cont.state, blocks, True, self.cfg.max_gap)
        right = plan.slots[0].pkt - 1
        blocks = [(lft, min(rgt, right)) for lft, rgt in blocks if lft <= right]  # same `right`
        self._event(ev.TIMEOUT, now, pkt=cont.seq, right=right, rto=self.rto * self._backoff,
                    srtt=self._srtt)
        # a new client epoch: everything outstanding is re-requested, numbers above right reused
        self.client_state = (self.client_state + 1) & _U32
        self._add_token(self.client_state)
        for exp in list(self._expected.values()) + list(self._rtx.values()):
            self._settle(exp)
        self._expected.clear()
        self._exp_heap.clear()
        self._rtx.clear()
        self._rtx_heap.clear()
        self._clear_repairs()
        self._ready.clear()
        self._lost.clear()
        self._board.remove_from(right + 1)
        for j in [j for j in self._nonce if j > right]:
            del self._nonce[j]
        self._sum_cache.clear()
        self._max_rx = right
        self.in_recovery = False
        self._launch(REQ_SLOWSTART, cont, blocks, plan, now)
        self._spare_stale = True  # the new epoch's first packet becomes the spare
        self._ss_right = right
        self._arm(now)


__all__ = ["ClientConfig", "ClientEngine"]
