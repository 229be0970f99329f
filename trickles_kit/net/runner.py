"""Event loops that drive the sans-I/O engines over a real transport.

`ServerLoop` answers every datagram statelessly. `ClientHost` runs any number of client
connections over one transport (one socket): it demultiplexes by the Trickles port inside the
segment and keeps one heap of engine timers. Both optionally log every segment to a pcap and
every event as JSON lines.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.events import Event
from trickles_kit.core.phase import Phase
from trickles_kit.core.server import ServerEngine
from trickles_kit.net.eventwriter import EventWriter
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.net.synbucket import SynBucket
from trickles_kit.net.transport import Transport, batches

__all__ = ["SEND_BATCH", "ClientHost", "Connection", "EventWriter", "ServerLoop", "SynBucket"]



# Defaults of `trickles serve --syn-rate/--syn-burst/--syn-share`. The count: 1,000 handshakes a
# second, 64 at once. The time: a quarter of the loop's time, so a SYN flood leaves at least
# three quarters to established trickles and to draining the socket, whatever a SYN costs the
# application (~90 us for a small file here; ~2 ms for a /gen response of a new seed, whose
# byte pattern must first be computed: a flood picks those). The backlog lets a burst of honest
# SYNs (a client opening many connections) wait, for at most a quarter second of the rate,
# instead of dropping them to their client's 1 s timeout
SYN_RATE = 1000.0
SYN_BURST = 64
SYN_SHARE = 0.25
SYN_BACKLOG = 512
DRAIN_MAX = 4096  # datagrams taken from the socket per pass, at most (then they are answered)
# answers queued before one batched send (Transport.send_batch): the server sends at the latest
# after this many, and at the end of every pass (a pass of 4096 requests must not hold its first
# answers until the last is computed)
SEND_BATCH = 64
# the server socket's receive buffer with priority on (root may pass net.core.rmem_max; others
# get at most rmem_max): the kernel's queue is arrival-ordered, and a datagram it drops when a
# flood fills it is lost whatever its kind. The loop drains it in order of priority, so a
# longer queue costs an honest request delay, not loss, while the server is briefly
# descheduled: 16 MiB (32 MiB of kernel accounting) holds ~26k flood SYNs, ~0.9 s at 30k/s
SERVER_RCVBUF = 16 << 20


def _grow_rcvbuf(sock: socket.socket, size: int) -> None:
    """Raise a socket's receive buffer to `size` (never lower it)."""
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * size:  # (Linux doubles it)
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE: past rmem_max (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class ServerLoop:
    """Serve one `ServerEngine` on one transport until stopped.

    Each pass drains the socket (up to `drain` datagrams) and sorts each datagram by one header
    byte (the TCP flags: SYN or not) without decoding it. It answers every request that
    carries a continuation first. Then it admits waiting SYNs through one global token bucket
    (`syn_rate` a second, `syn_burst` at once, and at most `syn_share` of the loop's time,
    charged what each answer took), round-robin by source address, so a flood from a few
    addresses cannot crowd out another address's handshake. SYNs wait in a bounded backlog (at
    most `syn_backlog`, and a quarter second of the rate; a quarter of it, or a burst, per
    source); the ones that find no room are dropped (with `syn_backlog=0`, every SYN the bucket
    does not admit at once): counter `drop.syn_rate`, and one `drop` event per pass with
    `detail.count`. No per-connection state: the bucket and the backlog are global and
    bounded.

    `priority=False` is the loop as it was (one batch of 256 in arrival order, SYNs beyond 64
    a batch shed as `drop.syn_shed`): kept for the before/after flood benchmark.
    """

    def __init__(self, engine: ServerEngine, transport: Transport,
                 pcap: PcapWriter | None = None, clock: Callable[[], float] = time.time,
                 delay: float = 0.0, *, priority: bool = True, syn_rate: float = SYN_RATE,
                 syn_burst: int = SYN_BURST, syn_share: float = SYN_SHARE,
                 syn_backlog: int = SYN_BACKLOG,
                 drain: int = DRAIN_MAX, rcvbuf: int | None = SERVER_RCVBUF) -> None:
        if not 0.0 <= delay <= 10.0:
            raise ValueError(f"delay must be in [0, 10] seconds, got {delay}")
        if syn_backlog < 0 or drain < 1:
            raise ValueError(f"need syn_backlog >= 0 and drain >= 1, got {syn_backlog}, {drain}")
        self.engine = engine
        # every answer is held `delay` seconds before it is sent: a user-space stand-in for a
        # wide-area round trip (this kernel has no netem), so a loopback transfer lasts long
        # enough to watch and congestion control acts on a real RTT
        self.delay = delay
        self._held: deque[tuple[float, bytes, bytes, Any]] = deque()
        self.transport = transport
        self.pcap = pcap
        self.clock = clock  # wall clock: key epochs and timestamps must agree across restarts
        self.running = True
        self.not_ours = 0
        self.priority = priority
        self.bucket = SynBucket(syn_rate, syn_burst, syn_share)
        self._timer = time.perf_counter  # what a SYN's answer took (the time bucket's charge)
        # a SYN waits at most a quarter second of the rate: its client's first timeout is 1 s
        self.syn_backlog = min(syn_backlog, int(syn_rate * 0.25)) if syn_rate else syn_backlog
        # what one pass may hold (with no backlog: what the bucket may admit now); one source
        # gets a quarter of it (at least a burst)
        self._room = max(self.syn_backlog, self.bucket.burst)
        self._per_source = max(self.bucket.burst, self.syn_backlog // 4)
        if not syn_rate:  # no limit: no share either (bounded by what one pass drains)
            self._room = self._per_source = max(drain, self.syn_backlog)
        self.drain = drain
        sock = getattr(transport, "sock", None)
        if priority and rcvbuf and sock is not None:
            _grow_rcvbuf(sock, rcvbuf)
        # waiting SYNs by source address, in round-robin order (a served source goes last)
        self._syns: dict[bytes, deque[tuple[bytes, bytes, Any]]] = {}
        self._waiting = 0
        self.syns_dropped = 0  # drop.syn_rate
        # priority=False: a SYN costs the application a request parse; answering at most this
        # many per batch kept the socket drained under a moderate flood (a shed SYN is retried
        # by its client's timer)
        self.syns_per_batch = 64
        self.syns_shed = 0
        self._out: list[tuple[bytes, Any]] = []  # answers waiting for one batched send
        # a transport without send_batch (a test's stand-in) gets one send per answer
        self._batched = batches(transport)

    def flush(self) -> None:
        """Send the queued answers (one batched call)."""
        if self._out:
            out, self._out = self._out, []
            self.transport.send_batch(out)

    def step(self, timeout: float = 0.1, sel: selectors.BaseSelector | None = None) -> int:
        """Wait up to `timeout` for datagrams and answer them; returns how many were handled."""
        if not self.priority:
            return self._step_fifo(timeout, sel)
        if sel is not None and not sel.select(timeout):
            if self._waiting:  # nothing new: the backlog's SYNs, as the bucket refills
                self._admit_syns()
                self.flush()
                if self._held:
                    self.release()
            return 0
        eng = self.engine
        port = eng.service_port.to_bytes(2, "big")
        syns, room, per_source = self._syns, self._room, self._per_source
        requests = []
        dropped = 0
        batch = self._drain()
        for d in batch:
            seg = d[0]
            if seg[2:4] != port:  # another service on this address (raw sockets see it all)
                self.not_ours += 1  # (or a runt): the engine's drop, a counter and an event
                eng.receive(seg, d[1], self.clock())
            elif len(seg) > 13 and seg[13] & 0x02:  # SYN (with or without ACK): a handshake
                q = syns.get(d[1])
                if self._waiting >= room or (q is not None and len(q) >= per_source):
                    dropped += 1
                    continue
                if q is None:
                    syns[d[1]] = q = deque()
                q.append(d)
                self._waiting += 1
            else:  # carries a continuation (or is garbage the engine will count)
                requests.append(d)
        for seg, src_ip, peer in requests:  # established trickles first
            self._answer(seg, src_ip, peer)
        if self._waiting:
            dropped += self._admit_syns()
        self.flush()
        if dropped:
            self._count_drops("syn_rate", dropped)
        if self._held:
            self.release()
        return len(batch)

    def _drain(self) -> list[tuple[bytes, bytes, Any]]:
        """What the socket holds, up to `drain` datagrams, in arrival order."""
        recv = self.transport.recv_batch
        batch = recv(256)
        more = len(batch) >= 256  # (a coalesced UDP read counts one, holds several)
        while more and len(batch) < self.drain:
            nxt = recv(256)
            batch += nxt
            more = len(nxt) >= 256
        return batch

    def _admit_syns(self) -> int:
        """Answer the SYNs the bucket admits, one per source in turn, each charged what its
        answer took. With no backlog the others are dropped: returns how many (the caller
        counts them)."""
        syns, bucket, timer = self._syns, self.bucket, self._timer
        now = self.clock()
        while self._waiting and bucket.allow(now):
            src = next(iter(syns))
            q = syns.pop(src)
            seg, src_ip, peer = q.popleft()
            if q:
                syns[src] = q  # to the back of the round
            self._waiting -= 1
            t = timer()
            self._answer(seg, src_ip, peer)
            bucket.charge(timer() - t)
        if self.syn_backlog or not self._waiting:
            return 0
        n, self._waiting = self._waiting, 0
        syns.clear()
        return n

    def _count_drops(self, reason: str, n: int) -> None:
        """`n` datagrams dropped before the engine: counters like the engine's own and one
        `drop` event for all of them (an event each would cost more than the drop under a
        flood)."""
        self.syns_dropped += n
        eng = self.engine
        eng.counters["drop"] += n
        eng.counters["drop." + reason] += n
        sink = getattr(eng, "on_event", None)
        if sink is not None:
            sink(Event("drop", self.clock(), "server", detail={"reason": reason, "count": n}))

    def _answer(self, seg: bytes, src_ip: bytes, peer: Any) -> None:
        """Hand one datagram to the engine and send (or hold) its answers."""
        tr, pcap = self.transport, self.pcap
        now = self.clock()
        if pcap is not None:
            pcap.log(now, src_ip, tr.local_ip, seg, tr.ip_proto, tr.udp_ports(peer, False))
        outs = self.engine.receive(seg, src_ip, now)
        if not outs:
            return
        if self.delay:
            for out in outs:
                self._held.append((now + self.delay, out, src_ip, peer))
            return
        if self._batched:  # (queued: sent by `flush`, at the latest at the end of the pass)
            addr = tr.address(src_ip, peer)
            self._out.extend([(out, addr) for out in outs])
        else:
            for out in outs:
                tr.send(out, src_ip, peer)
        if pcap is not None:
            for out in outs:
                pcap.log(now, tr.local_ip, src_ip, out, tr.ip_proto, tr.udp_ports(peer, True))
        if len(self._out) >= SEND_BATCH:
            self.flush()

    def _step_fifo(self, timeout: float, sel: selectors.BaseSelector | None) -> int:
        """The loop before SYN priority: one batch in arrival order, SYNs shed beyond 64."""
        tr, eng = self.transport, self.engine
        if sel is not None and not sel.select(timeout):
            return 0
        batch = tr.recv_batch()
        port = eng.service_port.to_bytes(2, "big")
        syns = 0
        for seg, src_ip, peer in batch:
            if seg[2:4] != port:  # another service on this address (raw sockets see it all)
                self.not_ours += 1  # (or a runt): the engine's drop, a counter and an event
                eng.receive(seg, src_ip, self.clock())
                continue
            if len(seg) > 13 and seg[13] & 0x12 == 0x02:  # SYN without ACK: a new connection
                syns += 1
                if syns > self.syns_per_batch:  # shed SYNs, not established trickles
                    self.syns_shed += 1
                    eng.note_drop("syn_shed", self.clock())
                    continue
            self._answer(seg, src_ip, peer)
        self.flush()
        if self._held:
            self.release()
        return len(batch)

    def release(self) -> int:
        """Send the held answers that are due (the delay is constant: they leave in order)."""
        tr, pcap, held = self.transport, self.pcap, self._held
        now = self.clock()
        sent = 0
        while held and held[0][0] <= now:
            _, out, dst, peer = held.popleft()
            tr.send(out, dst, peer)
            if pcap is not None:  # the capture shows when the packet really left
                pcap.log(now, tr.local_ip, dst, out, tr.ip_proto, tr.udp_ports(peer, True))
            sent += 1
        return sent

    def next_due(self, timeout: float) -> float:
        """`timeout`, shortened to when the first held answer is due (or, with SYNs waiting
        in the backlog, to when the bucket admits the next one)."""
        if self._waiting:
            timeout = min(timeout, self.bucket.wait(self.clock()))
        if not self._held:
            return timeout
        return max(0.0, min(timeout, self._held[0][0] - self.clock()))

    def run(self, duration: float | None = None) -> None:
        """Serve until `stop()` is called (from a signal handler) or `duration` seconds pass."""
        sel = selectors.DefaultSelector()
        sel.register(self.transport, selectors.EVENT_READ)
        end = None if duration is None else time.monotonic() + duration
        try:
            sink = getattr(self.engine, "on_event", None)
            idle = getattr(sink, "flush", None)  # an EventWriter: idle means flush now
            while self.running and (end is None or time.monotonic() < end):
                wait = self.next_due(0.05 if idle else 0.2)
                handled = self.step(wait, sel)
                if self._held:
                    self.release()
                if not handled and idle is not None:  # (also while answers are held: --delay)
                    idle()
        finally:
            sel.close()

    def stop(self) -> None:
        self.running = False


@dataclass
class Connection:
    """One client connection hosted by a ClientHost, with where its bytes go."""

    engine: ClientEngine
    sink: Callable[[bytes], None] | None
    started: float
    timer_at: float | None = None  # the earliest deadline already on the host's heap
    received: int = 0
    finished: float | None = None
    chunks: list[bytes] = field(default_factory=list)
    # flow control: when set and False, the host leaves the bytes in the engine (whose window
    # then fills and stops asking) until the consumer calls ClientHost.resume
    accepts: Callable[[], bool] | None = None

    @property
    def done(self) -> bool:
        return self.engine.done

    @property
    def failed(self) -> bool:
        return self.engine.phase == Phase.FAILED


class ClientHost:
    """Many client connections over one transport, in one thread."""

    def __init__(self, transport: Transport, server_ip: bytes, server_port: int,
                 peer: Any = None, config: ClientConfig | None = None,
                 pcap: PcapWriter | None = None, on_event: Callable[[Event], None] | None = None,
                 first_port: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self.transport = transport
        self.server_ip = server_ip
        self.server_port = server_port
        self.peer = peer if peer is not None else server_ip
        self.cfg = config or ClientConfig()
        self.pcap = pcap
        self.on_event = on_event
        self.conns: dict[int, Connection] = {}
        # a random start, so two hosts sharing a local address rarely pick the same ports
        self._next_port = first_port or 20000 + int.from_bytes(os.urandom(2), "big") % 40000
        self._timers: list[tuple[float, int]] = []
        # the engines' `now`, event and pcap times: by default the wall clock, the server's
        # too, so live events line up in one timeline
        self.clock = clock
        self._sel = selectors.DefaultSelector()
        self._sel.register(transport, selectors.EVENT_READ)
        self.counters: dict[str, int] = {"unknown_port": 0}
        # a transport without send_batch (a test's stand-in) gets one send per request
        self._addr = (transport.address(server_ip, self.peer)
                      if batches(transport) else None)
        # while a batch is dispatched or timers fire, requests queue here and leave in one
        # batched send at the end (Transport.send_batch); None: each is sent at once
        self._out: list[tuple[bytes, Any]] | None = None

    def open(self, request: bytes, sink: Callable[[bytes], None] | None = None,
             keep: bool = False, lanes: list[tuple[int, int]] | None = None) -> Connection:
        """Start a connection asking for `request`; bytes go to `sink` (or are kept if `keep`).

        `lanes`: reserved response slices of parallel requests (ClientEngine.set_lanes)."""
        if len(self.conns) >= 45000:
            raise RuntimeError("no free Trickles port: close finished connections first")
        port = self._next_port
        while port in self.conns:
            port = port + 1 if port < 65535 else 20000
        self._next_port = port + 1 if port < 65535 else 20000
        eng = ClientEngine(self.transport.local_ip, port, self.server_ip, self.server_port,
                           self.cfg, isn=int.from_bytes(os.urandom(4), "big"),
                           on_event=self.on_event)
        conn = Connection(eng, sink, self.clock())
        if keep:
            conn.sink = conn.chunks.append
        self.conns[port] = conn
        eng.connect(self.clock(), request, lanes)
        self._service(port, conn)
        return conn

    def _service(self, port: int, conn: Connection) -> None:
        eng = conn.engine
        tr = self.transport
        if conn.accepts is None or conn.accepts():  # (reading frees window: before sending)
            data = eng.read(self.clock())
            if data:
                conn.received += len(data)
                if conn.sink is not None:
                    conn.sink(data)
        out = eng.datagrams_to_send()
        if out:
            queue = self._out
            if self._addr is None:
                for seg in out:
                    tr.send(seg, self.server_ip, self.peer)
            elif queue is None:
                tr.send_batch([(seg, self._addr) for seg in out])
            else:
                queue.extend([(seg, self._addr) for seg in out])
            if self.pcap is not None:
                now = self.clock()
                for seg in out:
                    self.pcap.log(now, tr.local_ip, self.server_ip, seg, tr.ip_proto,
                                  tr.udp_ports(self.peer, True))
        if conn.finished is None and (eng.done or eng.phase == Phase.FAILED) and not eng.unread:
            conn.finished = self.clock()
        t = eng.get_timer()
        if t is not None and (conn.timer_at is None or t < conn.timer_at):
            conn.timer_at = t
            heapq.heappush(self._timers, (t, port))

    def resume(self, conn: Connection) -> None:
        """The consumer took bytes: move what the engine holds and let it ask for more."""
        if self.conns.get(conn.engine.local_port) is conn:
            self._service(conn.engine.local_port, conn)

    @contextlib.contextmanager
    def _batched(self) -> Iterator[None]:
        """Queue the requests made inside; they leave in one batched send at the end. Inside
        an open batch (timers fired while dispatching) it queues into that one: its opener
        sends."""
        if self._out is not None:
            yield
            return
        self._out = []
        try:
            yield
        finally:
            out, self._out = self._out, None
            if out:
                self.transport.send_batch(out)

    def _fire_timers(self) -> None:
        timers = self._timers
        if not timers or timers[0][0] > self.clock():
            return
        with self._batched():
            self._fire_due(timers)

    def _fire_due(self, timers: list[tuple[float, int]]) -> None:
        now = self.clock()
        while timers and timers[0][0] <= now:
            t, port = heapq.heappop(timers)
            conn = self.conns.get(port)
            if conn is None or conn.timer_at != t:
                continue  # a stale entry: a later push replaced it
            conn.timer_at = None
            due = conn.engine.get_timer()
            if due is not None and due <= now:
                conn.engine.handle_timer(now)
            self._service(port, conn)

    def step(self, timeout: float = 0.05) -> None:
        """Receive what is there (waiting at most until the next timer), then run timers."""
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - self.clock()))
        if self._sel.select(timeout):
            self.dispatch(self.transport.recv_batch())
        self._fire_timers()

    def dispatch(self, batch: list[tuple[bytes, bytes, Any]]) -> None:
        """Hand each segment to its connection by the Trickles port inside it; the requests
        they cause leave together at the end."""
        with self._batched():
            self._dispatch(batch)

    def _dispatch(self, batch: list[tuple[bytes, bytes, Any]]) -> None:
        """Each segment to its engine, then each connection it touched serviced once: one
        `read` (and the requests it frees), one timer update per batch, not per segment (the
        at most 256 x MSS bytes a batch leaves unread are far below the window)."""
        tr = self.transport
        pcap = self.pcap
        touched: dict[int, Connection] = {}  # (in order of first arrival)
        for seg, src_ip, peer in batch:
            if src_ip != self.server_ip or peer != self.peer:
                # not from the address we talk to (over UDP: the server's UDP address too)
                self._drop_source(src_ip, peer)
                continue
            conn = self.conns.get(int.from_bytes(seg[2:4], "big")) if len(seg) >= 4 else None
            if conn is None:
                self.counters["unknown_port"] += 1
                continue
            if pcap is not None:
                pcap.log(self.clock(), src_ip, tr.local_ip, seg, tr.ip_proto,
                         tr.udp_ports(peer, False))
            conn.engine.receive(seg, self.clock())
            touched[conn.engine.local_port] = conn
        for port, conn in touched.items():
            self._service(port, conn)

    def _drop_source(self, src_ip: bytes, peer: Any) -> None:
        self.counters["drop"] = self.counters.get("drop", 0) + 1
        self.counters["drop.source"] = self.counters.get("drop.source", 0) + 1
        if self.on_event is not None:
            src = peer if isinstance(peer, tuple) else ".".join(map(str, src_ip))
            self.on_event(Event("drop", self.clock(), "client",
                                detail={"reason": "source", "from": str(src)}))

    def run_until(self, done: Callable[[], bool], timeout: float | None = None,
                  progress: Callable[[], None] | None = None) -> bool:
        """Step until `done()` or `timeout` seconds; returns done()."""
        end = None if timeout is None else self.clock() + timeout
        last = 0.0
        while not done():
            if end is not None and self.clock() > end:
                return False
            self.step()
            if progress is not None and self.clock() - last > 0.1:
                last = self.clock()
                progress()
        return True

    def all_finished(self) -> bool:
        return all(c.finished is not None for c in self.conns.values())

    def close(self, conn: Connection | None = None, linger: float = 0.2) -> None:
        """Send FINs (best effort, briefly waiting for the answers), then forget connections."""
        targets = [conn] if conn is not None else list(self.conns.values())
        for c in targets:
            c.engine.close(self.clock())
            self._service(c.engine.local_port, c)
        end = self.clock() + linger
        while self.clock() < end and any(c.engine.phase == Phase.FIN_SENT for c in targets):
            self.step(0.02)
        for c in targets:
            self.conns.pop(c.engine.local_port, None)

    def shutdown(self) -> None:
        """Stop polling. The transport belongs to the caller, who closes it."""
        self._sel.close()
