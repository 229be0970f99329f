"""A blocking, socket-like Trickles client, so ordinary code reads a response as a byte stream.

    from trickles_kit.net.socketapi import TricklesSocket
    with TricklesSocket("udp") as s:
        s.connect(("127.0.0.1", 8080))
        s.sendall(b"GET /index.html HTTP/1.1\\r\\nHost: example\\r\\n\\r\\n")
        while chunk := s.recv(65536):
            ...

How it differs from a TCP socket (Trickles is request/response, and the request rides in the
SYN):

* `connect()` only records the server; nothing is sent yet.
* `sendall()` only buffers the request bytes. The whole request is sent, in the SYN, by the
  first `recv()` or by `shutdown(socket.SHUT_WR)`; after that `sendall()` raises OSError.
  The request must fit one datagram (`MAX_REQUEST` bytes).
* `recv()` blocks until response bytes arrive and returns b"" at the end of the stream. If the
  connection fails (the server stays silent through every retransmission) it raises
  ConnectionError; with `settimeout(t)` a wait longer than t raises `socket.timeout`
  (`TimeoutError`) and the connection stays usable.
* `close()` sends a best-effort FIN (waiting at most `linger` seconds for its answer).

Each TricklesSocket has its own transport (one UDP socket, or one raw socket).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from typing import Any

from trickles_kit.core.client import ClientConfig
from trickles_kit.core.phase import Phase
from trickles_kit.net.aio import MAX_REQUEST, random_first_port
from trickles_kit.net.endpoint import local_address_for, open_transport, parse_url
from trickles_kit.net.ip import PROTO_TRICKLES, aton
from trickles_kit.net.runner import ClientHost, Connection
from trickles_kit.net.transport import Transport


class TricklesSocket:
    """One Trickles connection with a blocking socket-like API (see the module docstring)."""

    def __init__(self, transport: str = "udp", ip_proto: int = PROTO_TRICKLES,
                 local_addr: str | None = None, config: ClientConfig | None = None,
                 linger: float = 0.2) -> None:
        if transport not in ("udp", "raw"):
            raise ValueError(f"unknown transport {transport!r} (use raw or udp)")
        self.transport_name = transport
        self.ip_proto = ip_proto
        self.local_addr = local_addr
        self.config = config
        self.linger = linger
        self._timeout: float | None = None
        self._server: tuple[str, int] | None = None
        self._request = bytearray()
        self._tr: Transport | None = None
        self._host: ClientHost | None = None
        self._conn: Connection | None = None
        self._buf = bytearray()
        self._rd_shut = False
        self._closed = False

    # ------------------------------------------------------------------ socket-like API
    def settimeout(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def connect(self, address: tuple[str, int]) -> None:
        """Record the server (host, port). Nothing is sent until the first recv()."""
        self._check_open()
        if self._server is not None:
            raise OSError(errno.EISCONN, "already connected")
        host, port = address
        if not 0 < int(port) < 65536:
            raise ValueError(f"bad port {port!r}")
        self._server = (socket.gethostbyname(host), int(port))

    def sendall(self, data: bytes) -> None:
        """Buffer request bytes; they are sent (in the SYN) by the first recv()/shutdown()."""
        self._check_open()
        if self._conn is not None:
            raise OSError(errno.EISCONN, "the request was already sent (Trickles sends the "
                                         "whole request with the SYN, on the first recv)")
        if len(self._request) + len(data) > MAX_REQUEST:
            raise OSError(errno.EMSGSIZE, f"request longer than {MAX_REQUEST} bytes")
        self._request += data

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        """SHUT_WR sends the buffered request now; SHUT_RD makes recv() return b""."""
        self._check_open()
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._start()
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._rd_shut = True
            self._buf.clear()

    def recv(self, bufsize: int) -> bytes:
        """Up to `bufsize` response bytes, blocking until some arrive; b"" at end of stream."""
        self._check_open()
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        self._start()
        if self._rd_shut or bufsize == 0:
            return b""
        host, conn = self._host, self._conn
        assert host is not None and conn is not None
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        polled = False
        while not self._buf:
            if conn.finished is not None:
                if conn.engine.done:
                    return b""
                ip, port = self._server or ("?", 0)
                raise ConnectionError(f"Trickles connection to {ip}:{port} failed "
                                      f"({conn.engine.phase}, {conn.received} bytes received)")
            wait = 1.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 and polled:
                    if self._timeout == 0:
                        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                    raise TimeoutError("timed out")  # == socket.timeout
                wait = min(wait, max(left, 0.0))
            host.step(wait)
            polled = True
        out = bytes(self._buf[:bufsize])
        del self._buf[:bufsize]
        return out

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        mv = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(mv))
        mv[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Send a FIN (best effort, waiting at most `linger` s) and release the transport."""
        if self._closed:
            return
        self._closed = True
        host, conn = self._host, self._conn
        try:
            live = conn is not None and conn.engine.phase not in (Phase.FAILED, Phase.CLOSED)
            if host is not None and conn is not None and live:
                with contextlib.suppress(OSError):
                    host.close(conn, self.linger)
        finally:
            if host is not None:
                host.shutdown()
            if self._tr is not None:
                self._tr.close()
            self._buf.clear()

    def __enter__(self) -> TricklesSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ extras
    @property
    def total(self) -> int | None:
        """Length of the whole response stream once known."""
        return self._conn.engine.total if self._conn is not None else None

    @property
    def engine(self):
        return self._conn.engine if self._conn is not None else None

    def getpeername(self) -> tuple[str, int]:
        if self._server is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self._server

    def getsockname(self) -> tuple[str, int]:
        """(local address, Trickles port) once the request was sent."""
        if self._conn is None or self._tr is None:
            raise OSError(errno.ENOTCONN, "the connection starts with the first recv()")
        return self._tr.local_ip_str, self._conn.engine.local_port

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def _start(self) -> None:
        if self._conn is not None:
            return
        if self._server is None:
            raise OSError(errno.ENOTCONN, "not connected: call connect((host, port)) first")
        if not self._request:
            raise OSError(errno.EINVAL, "no request: call sendall(request) before recv(); "
                                        "Trickles sends the request with the SYN")

        ip, port = self._server
        self._tr = open_transport(self.transport_name, self.local_addr or local_address_for(ip),
                                  self.ip_proto)
        try:
            peer = (ip, port) if self.transport_name == "udp" else None
            self._host = ClientHost(self._tr, aton(ip), port, peer, self.config,
                                    first_port=random_first_port())
            self._conn = self._host.open(bytes(self._request), self._buf.extend)
        except BaseException:
            self._tr.close()
            self._tr = None
            raise


def get(url: str, transport: str = "udp", ip_proto: int = PROTO_TRICKLES,
        local_addr: str | None = None, timeout: float | None = 60.0,
        config: ClientConfig | None = None) -> bytes:
    """The whole response stream for `url` (http://HOST:PORT/PATH or trickles://...).

    For the web server this is a complete HTTP response, head included. `timeout` bounds each
    wait for data (socket.timeout); a failed connection raises ConnectionError.
    """
    host, port, path = parse_url(url)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    out = bytearray()
    with TricklesSocket(transport, ip_proto, local_addr, config) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(request)
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                return bytes(out)
            out += chunk


__all__ = ["MAX_REQUEST", "TricklesSocket", "get"]
