"""The asyncio flavour of the client: many Trickles connections driven by an asyncio loop.

`AsyncClientHost` runs `ClientEngine`s over one transport (one socket) like `ClientHost`, but
from the event loop instead of a selector loop: `loop.add_reader` hands it each batch of
datagrams, and a single `loop.call_at` timer stands for the earliest engine deadline (re-armed
whenever deadlines change). No thread and no polling: between datagrams and deadlines the host
costs nothing.

    host = AsyncClientHost.open_to("127.0.0.1", 8080)           # owns its UDP transport
    resp = await host.open(b"GET /file HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    async for chunk in resp:                                     # the response stream, in order
        ...
    await host.aclose()

A response is the server's whole byte stream (for the web server, a complete HTTP response).
`read()` returns b"" at the end of the stream and raises `ConnectionError` once the connection
has failed (after the bytes that did arrive in order have been read).
"""

from __future__ import annotations

import asyncio
import heapq
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from trickles_kit.core.client import ClientConfig
from trickles_kit.core.events import Event
from trickles_kit.core.phase import Phase
from trickles_kit.net.endpoint import local_address_for, open_transport
from trickles_kit.net.ip import PROTO_TRICKLES, aton
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.net.runner import ClientHost, Connection
from trickles_kit.net.transport import Transport

_FIRST_PORT_LO, _FIRST_PORT_HI = 20000, 60000
# Request bytes that safely fit one datagram (UDP or raw IPv4) with the SYN's or a REQUEST's
# headers: the request rides in the SYN and is repeated until the server's ucont comes back.
MAX_REQUEST = 60000
# flow control: a response buffers at most this much for its reader; beyond it the bytes stay
# in the engine, whose window (ClientConfig.window) then stops asking the server for more
READ_BUFFER = 256 * 1024


def random_first_port() -> int:
    """A random first Trickles port, so hosts sharing a raw local address rarely collide."""
    return _FIRST_PORT_LO + int.from_bytes(os.urandom(2), "big") % (_FIRST_PORT_HI - _FIRST_PORT_LO)


class _Host(ClientHost):
    """ClientHost that remembers which connections each round touched and can demux a batch."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.touched: set[int] = set()

    def _service(self, port: int, conn: Connection) -> None:
        super()._service(port, conn)
        self.touched.add(port)

    def prune_timers(self) -> float | None:
        """Drop stale heap entries from the top; the earliest live deadline (or None).

        Each connection has one live entry, at `conn.timer_at` (never later than its engine's
        deadline; `_fire_timers` re-pushes a deadline that moved later). Any other entry is
        stale and can go.
        """
        heap = self._timers
        while heap:
            t, port = heap[0]
            conn = self.conns.get(port)
            if conn is not None and conn.timer_at == t:
                return t
            heapq.heappop(heap)
        return None


class AsyncResponse:
    """The response stream of one connection opened by `AsyncClientHost.open`."""

    def __init__(self, host: AsyncClientHost) -> None:
        self._host = host
        self._conn: Connection | None = None
        self._buf: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._closed = False  # close() was called: reads return b""
        self._closing = False  # a FIN is outstanding
        self._all = False  # a read(-1) waits for the whole stream: buffer it all

    # ------------------------------------------------------------------ state
    @property
    def engine(self):
        assert self._conn is not None
        return self._conn.engine

    @property
    def local_port(self) -> int:
        return self.engine.local_port

    @property
    def total(self) -> int | None:
        """Length of the whole stream once the server has told it, else None."""
        return self.engine.total

    @property
    def received(self) -> int:
        """Bytes delivered in order so far (read or still buffered)."""
        return self._conn.received if self._conn is not None else 0

    @property
    def done(self) -> bool:
        """Every byte of the stream has arrived (some may still be unread)."""
        return self.engine.done

    @property
    def failed(self) -> bool:
        return self.engine.phase == Phase.FAILED

    @property
    def at_eof(self) -> bool:
        """The stream is complete and everything has been read."""
        return self._eof and not self._buf

    def __repr__(self) -> str:
        return (f"<AsyncResponse port={self.local_port} phase={self.engine.phase} "
                f"received={self.received} total={self.total}>")

    # ------------------------------------------------------------------ host side
    def _feed(self, data: bytes) -> None:
        if not self._closed and self._error is None:
            self._buf.append(data)
            self._buffered += len(data)

    def _finish(self) -> None:
        """The engine finished (all bytes, or failed): record which."""
        if self.engine.done:
            self._eof = True
        elif self._error is None:
            eng = self.engine
            self._error = ConnectionError(
                f"Trickles connection to {socket.inet_ntoa(eng.server_ip)}:{eng.server_port} "
                f"failed ({eng.phase}, {self.received} bytes received)")

    def _abort(self, err: BaseException) -> None:
        if not self._eof and self._error is None:
            self._error = err
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ------------------------------------------------------------------ reading
    def _accepts(self) -> bool:
        return self._buffered < READ_BUFFER or self._all


    def _take(self, n: int) -> bytes:
        out = self._take_buf(n)
        conn = self._conn
        if conn is not None and not self._closed and self._buffered < READ_BUFFER:
            self._host._resume(conn)  # room again: pull from the engine, which asks for more
        return out

    def _take_buf(self, n: int) -> bytes:
        if n < 0 or n >= self._buffered:
            out = b"".join(self._buf)
            self._buf.clear()
            self._buffered = 0
            return out
        parts = []
        need = n
        while need:
            piece = self._buf[0]
            if len(piece) <= need:
                parts.append(self._buf.popleft())
                need -= len(piece)
            else:
                parts.append(piece[:need])
                self._buf[0] = piece[need:]
                need = 0
        self._buffered -= n
        return b"".join(parts)

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("read() called while another coroutine is already reading")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes as soon as some are there (n < 0: everything up to the end).

        Returns b"" at the end of the stream (and then closes the connection) or after
        `close()`. Raises ConnectionError when the connection failed, once the bytes that
        arrived in order before the failure have been read.
        """
        if n == 0:
            return b""
        if n < 0 and not self._all and self._conn is not None:
            self._all = True  # the caller asked for everything: stop applying back-pressure
            self._host._resume(self._conn)
        while True:
            if self._closed:
                return b""
            if self._buf and (n >= 0 or self._eof):
                return self._take(n)
            if self._eof:
                self.close()
                return b""
            if self._error is not None:
                if self._buf:
                    return self._take(n)
                raise self._error
            await self._wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            data = await self.read(1 << 20)
            if not data:
                return
            yield data

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Stop reading and tell the server (a best-effort FIN); idempotent, never blocks."""
        if self._closed:
            return
        self._closed = True
        self._buf.clear()
        self._buffered = 0
        self._host._close_response(self)
        self._wake()

    async def __aenter__(self) -> AsyncResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncClientHost:
    """Many Trickles client connections over one transport, driven by the running asyncio loop.

    `server_ip` is a dotted string or packed 4 bytes; `peer` is what the transport sends to
    (for UDP the (ip, port) pair; defaults to (server_ip, server_port) for UDP). The host is
    attached to the loop that runs its first `open()`.
    """

    def __init__(self, transport: Transport, server_ip: str | bytes, server_port: int,
                 peer: Any = None, config: ClientConfig | None = None,
                 pcap: PcapWriter | None = None, on_event: Callable[[Event], None] | None = None,
                 first_port: int | None = None, owns_transport: bool = False) -> None:
        sip = aton(server_ip) if isinstance(server_ip, str) else bytes(server_ip)
        if peer is None and transport.name == "udp":
            peer = (socket.inet_ntoa(sip), server_port)
        self._h = _Host(transport, sip, server_port, peer, config, pcap, on_event,
                        random_first_port() if first_port is None else first_port)
        self._h.shutdown()  # its selector is not used: the asyncio loop does the waiting
        self.transport = transport
        self.owns_transport = owns_transport
        self._responses: dict[int, AsyncResponse] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed: float | None = None
        self._closed = False
        self._idle: asyncio.Event | None = None  # set when no FIN is outstanding

    @classmethod
    def open_to(cls, host: str, port: int, transport: str = "udp",
                ip_proto: int = PROTO_TRICKLES, local_addr: str | None = None,
                config: ClientConfig | None = None, **kw: Any) -> AsyncClientHost:
        """A host for server `host:port` on a fresh transport it owns (closed by `aclose`)."""
        ip = socket.gethostbyname(host)
        tr = open_transport(transport, local_addr or local_address_for(ip), ip_proto)
        peer = (ip, port) if transport == "udp" else None
        return cls(tr, ip, port, peer, config, owns_transport=True, **kw)

    # ------------------------------------------------------------------ info
    @property
    def counters(self) -> dict[str, int]:
        return self._h.counters

    @property
    def connections(self) -> int:
        """Connections the host still demultiplexes for (open, or waiting for a FIN answer)."""
        return len(self._h.conns)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ opening
    def _start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.transport.fileno(), self._on_readable)

    async def open(self, request: bytes) -> AsyncResponse:
        """Open a connection asking for `request` (sent in the SYN); its response stream."""
        if self._closed:
            raise RuntimeError("AsyncClientHost is closed")
        if len(request) > MAX_REQUEST:
            raise ValueError(f"request longer than {MAX_REQUEST} bytes (it must fit one datagram)")
        self._start()
        if self._loop is not asyncio.get_running_loop():
            raise RuntimeError("AsyncClientHost used from a second event loop")
        resp = AsyncResponse(self)
        conn = self._h.open(bytes(request), resp._feed)
        conn.accepts = resp._accepts
        resp._conn = conn
        self._responses[conn.engine.local_port] = resp
        self._round()
        return resp

    # ------------------------------------------------------------------ the loop's callbacks
    def _on_readable(self) -> None:
        try:
            batch = self.transport.recv_batch()
        except OSError as e:  # the socket itself broke: nothing more will arrive
            self._fail_all(ConnectionError(f"transport error: {e}"))
            return
        self._h.dispatch(batch)
        self._h._fire_timers()
        self._round()

    def _resume(self, conn: Connection) -> None:
        """A reader took bytes: hand over what the engine holds (the window reopens)."""
        if self._closed:
            return
        self._h.resume(conn)
        self._round()

    def _on_timer(self) -> None:
        self._handle = None
        self._armed = None
        self._h._fire_timers()
        self._round()

    def _round(self) -> None:
        """After engines ran: wake readers, finish connections, re-arm the one timer."""
        h = self._h
        touched, h.touched = h.touched, set()
        for port in touched:
            resp = self._responses.get(port)
            if resp is None:
                continue
            conn = resp._conn
            assert conn is not None
            if resp._closing:
                if conn.engine.phase != Phase.FIN_SENT:
                    self._forget(port)
                continue
            if conn.finished is not None:
                resp._finish()
                if conn.engine.phase == Phase.FAILED:
                    self._forget(port)
            resp._wake()
        self._rearm()

    def _rearm(self) -> None:
        if self._closed or self._loop is None:
            return
        when = self._h.prune_timers()
        if when is not None and self._handle is not None and self._armed is not None \
                and self._armed <= when:
            return  # the armed timer fires first and re-arms then (no cancel per packet)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed = None
        if when is None:
            return
        delay = max(0.0, when - self._h.clock())
        self._handle = self._loop.call_at(self._loop.time() + delay, self._on_timer)
        self._armed = when

    def _forget(self, port: int) -> None:
        self._h.conns.pop(port, None)
        self._responses.pop(port, None)
        if self._idle is not None and not any(r._closing for r in self._responses.values()):
            self._idle.set()

    def _close_response(self, resp: AsyncResponse) -> None:
        conn = resp._conn
        if conn is None:
            return
        port = conn.engine.local_port
        if self._responses.get(port) is not resp:
            return  # already forgotten (failed, or the host closed)
        if self._closed:
            self._forget(port)
            return
        conn.engine.close(self._h.clock())
        self._h._service(port, conn)
        if conn.engine.phase == Phase.FIN_SENT:
            resp._closing = True  # forgotten when the FIN is answered or given up
        else:
            self._forget(port)
        self._round()

    def _fail_all(self, err: BaseException) -> None:
        for port, resp in list(self._responses.items()):
            resp._abort(err)
            self._forget(port)

    # ------------------------------------------------------------------ closing
    async def aclose(self, linger: float = 0.2) -> None:
        """Close every connection (FINs, waiting up to `linger` s for answers), remove the
        reader and the timer; close the transport if the host owns it. Idempotent."""
        if self._closed:
            return
        for resp in list(self._responses.values()):
            if not resp._closing:
                if not resp.done:  # bytes already buffered stay readable, then the error
                    resp._abort(ConnectionError("AsyncClientHost closed"))
                self._close_response(resp)
        if linger > 0 and any(r._closing for r in self._responses.values()):
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), linger)
            except TimeoutError:
                pass
            finally:
                self._idle = None
        self._closed = True
        self._fail_all(ConnectionError("AsyncClientHost closed"))
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.transport.fileno())
        if self.owns_transport:
            self.transport.close()

    async def __aenter__(self) -> AsyncClientHost:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["MAX_REQUEST", "AsyncClientHost", "AsyncResponse", "random_first_port"]
