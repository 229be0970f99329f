"""Event loops that drive the sans-I/O engines over a real transport.

`ServerLoop` answers every datagram statelessly. `ClientHost` runs any number of client
connections over one transport (one socket): it demultiplexes by the Trickles port inside the
segment and keeps one heap of engine timers. Both optionally log every segment to a pcap and
every event as JSON lines.
"""

from __future__ import annotations

import heapq
import os
import selectors
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.events import Event
from trickles_kit.core.server import ServerEngine
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.net.transport import Transport


class EventWriter:
    """JSON-lines event sink (one event per line).

    Flushed at most `flush_s` after an event (and by the loops when they go idle), because a
    live view follows the file while the run goes on: a plain buffer would hold the last
    events of a transfer until the process exits.
    """

    def __init__(self, path: str, flush_s: float = 0.05) -> None:
        self._f: TextIO = open(path, "w")  # noqa: SIM115 - closed by close()
        self.count = 0
        self.flush_s = flush_s
        self._flushed = time.monotonic()
        self._dirty = False

    def __call__(self, e: Event) -> None:
        self._f.write(e.to_json() + "\n")
        self.count += 1
        self._dirty = True
        now = time.monotonic()
        if now - self._flushed >= self.flush_s:
            self._f.flush()
            self._flushed, self._dirty = now, False

    def flush(self) -> None:
        """Write out what is buffered (cheap when nothing is)."""
        if self._dirty and not self._f.closed:
            self._f.flush()
            self._flushed, self._dirty = time.monotonic(), False

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class ServerLoop:
    """Serve one `ServerEngine` on one transport until stopped."""

    def __init__(self, engine: ServerEngine, transport: Transport,
                 pcap: PcapWriter | None = None, clock: Callable[[], float] = time.time,
                 delay: float = 0.0) -> None:
        if not 0.0 <= delay <= 10.0:
            raise ValueError(f"delay must be in [0, 10] seconds, got {delay}")
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
        # a SYN costs the application a request parse; under a SYN flood, answering at most
        # this many per batch keeps the socket drained and established trickles served
        # (a shed SYN is retried by its client's timer)
        self.syns_per_batch = 64
        self.syns_shed = 0

    def step(self, timeout: float = 0.1, sel: selectors.BaseSelector | None = None) -> int:
        """Wait up to `timeout` for datagrams and answer them; returns how many were handled."""
        tr, eng, pcap = self.transport, self.engine, self.pcap
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
            now = self.clock()
            if pcap is not None:
                pcap.log(now, src_ip, tr.local_ip, seg, tr.ip_proto, tr.udp_ports(peer, False))
            for out in eng.receive(seg, src_ip, now):
                if self.delay:
                    self._held.append((now + self.delay, out, src_ip, peer))
                    continue
                tr.send(out, src_ip, peer)
                if pcap is not None:
                    pcap.log(now, tr.local_ip, src_ip, out, tr.ip_proto, tr.udp_ports(peer, True))
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
        """`timeout`, shortened to when the first held answer is due."""
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
        return self.engine.phase == "failed"


class ClientHost:
    """Many client connections over one transport, in one thread."""

    def __init__(self, transport: Transport, server_ip: bytes, server_port: int,
                 peer: Any = None, config: ClientConfig | None = None,
                 pcap: PcapWriter | None = None, on_event: Callable[[Event], None] | None = None,
                 first_port: int | None = None) -> None:
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
        self.clock = time.time  # the server's clock too, so live events line up in one timeline
        self._sel = selectors.DefaultSelector()
        self._sel.register(transport, selectors.EVENT_READ)
        self.counters: dict[str, int] = {"unknown_port": 0}

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
            now = time.time()
            for seg in out:
                tr.send(seg, self.server_ip, self.peer)
                if self.pcap is not None:
                    self.pcap.log(now, tr.local_ip, self.server_ip, seg, tr.ip_proto,
                                  tr.udp_ports(self.peer, True))
        if conn.finished is None and (eng.done or eng.phase == "failed") and not eng.unread:
            conn.finished = self.clock()
        t = eng.get_timer()
        if t is not None and (conn.timer_at is None or t < conn.timer_at):
            conn.timer_at = t
            heapq.heappush(self._timers, (t, port))

    def resume(self, conn: Connection) -> None:
        """The consumer took bytes: move what the engine holds and let it ask for more."""
        if self.conns.get(conn.engine.local_port) is conn:
            self._service(conn.engine.local_port, conn)

    def _fire_timers(self) -> None:
        now = self.clock()
        timers = self._timers
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
        """Hand each segment to its connection by the Trickles port inside it."""
        tr = self.transport
        pcap = self.pcap
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
                pcap.log(time.time(), src_ip, tr.local_ip, seg, tr.ip_proto,
                         tr.udp_ports(peer, False))
            conn.engine.receive(seg, self.clock())
            self._service(conn.engine.local_port, conn)

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
        while self.clock() < end and any(c.engine.phase == "fin_sent" for c in targets):
            self.step(0.02)
        for c in targets:
            self.conns.pop(c.engine.local_port, None)

    def shutdown(self) -> None:
        """Stop polling. The transport belongs to the caller, who closes it."""
        self._sel.close()
