"""A local TCP-to-Trickles gateway: unmodified programs (curl, a browser) fetch from a Trickles
server. TCP from the program, Trickles on the wire.

For each TCP connection the gateway reads the HTTP request head (up to the blank line; at most
64 KiB are read, and a head must fit one Trickles SYN, `MAX_REQUEST` bytes, else 400), sends
exactly those bytes as the Trickles request to the upstream server, streams the Trickles response
stream (a complete HTTP response from the web server) back as it arrives, then closes the TCP
connection: one request per connection, like HTTP/1.0. A request body is not forwarded. If the
Trickles transfer fails (or stalls for `idle_timeout` seconds) the client gets `502 Bad Gateway`
when nothing was sent yet; otherwise the TCP connection is just closed, so the client sees a
short response.

All TCP connections share one `AsyncClientHost` (one socket toward the upstream server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import re
import signal
import socket
import sys
from collections import Counter
from collections.abc import Callable

from trickles_kit.core.client import ClientConfig
from trickles_kit.net.aio import MAX_REQUEST, AsyncClientHost
from trickles_kit.net.ip import PROTO_TCP, PROTO_TRICKLES
from trickles_kit.net.privileges import PrivilegeError

MAX_HEAD = 64 * 1024
LINGER = 1.0  # seconds to wait for the client's FIN after the response
TRIM_DELAY = 0.2  # s after a TCP peer leaves before the freed heap is given back
TRIM_TRIES = 25  # ... waiting at most this many delays for its Trickles side to close
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/\d\.\d")


def _simple_response(status: str, text: str) -> bytes:
    body = (text + "\n").encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


BAD_REQUEST = _simple_response("400 Bad Request", "bad request")
BAD_GATEWAY = _simple_response("502 Bad Gateway", "the Trickles transfer failed")

_malloc_trim: Callable[[int], int] | None | bool = False  # False: not looked up yet


def release_freed_memory() -> bool:
    """Give the heap pages freed by a finished transfer back to the OS; True if any were.

    A peer that never reads leaves up to a window of response data (ClientConfig.window, 8 MiB)
    in the engine, held as thousands of packet-sized objects. Freed, the large ones go back
    at once (glibc maps them on their own), but glibc's malloc keeps the pages of the small
    and medium ones for reuse, so the gateway's RSS stays megabytes above its baseline after
    the peer left. `malloc_trim(0)` returns every free page (glibc >= 2.8). glibc only: with
    another C library (musl, macOS) this does nothing.
    """
    global _malloc_trim
    if _malloc_trim is False:
        try:
            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = fn
        except (OSError, AttributeError):
            _malloc_trim = None
    gc.collect()  # objects in reference cycles (asyncio futures, tracebacks) go first
    return bool(_malloc_trim(0)) if callable(_malloc_trim) else False


def valid_head(head: bytes) -> bool:
    """A request line `METHOD TARGET HTTP/x.y` and header lines `Name: value`."""
    lines = head[:-4].split(b"\r\n")
    if not _REQUEST_LINE.fullmatch(lines[0]):
        return False
    for line in lines[1:]:
        name, colon, _ = line.partition(b":")
        if not colon or not name or name != name.strip() or b"\n" in line or b"\r" in line:
            return False
    return True


class Gateway:
    """The gateway's state: one AsyncClientHost toward the upstream, one asyncio TCP server."""

    def __init__(self, upstream_host: str, upstream_port: int, transport: str = "udp",
                 ip_proto: int = PROTO_TRICKLES, local_addr: str | None = None,
                 config: ClientConfig | None = None, idle_timeout: float = 60.0,
                 head_timeout: float = 30.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.transport = transport
        self.ip_proto = ip_proto
        self.local_addr = local_addr
        self.config = config
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.counters: Counter[str] = Counter()
        self.host: AsyncClientHost | None = None
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._trim: asyncio.TimerHandle | None = None

    async def start(self, listen_host: str, listen_port: int) -> tuple[str, int]:
        """Open the upstream transport and listen; returns the bound (host, port)."""
        self.host = AsyncClientHost.open_to(self.upstream[0], self.upstream[1], self.transport,
                                            self.ip_proto, self.local_addr, self.config)
        try:
            self.server = await asyncio.start_server(self._client, listen_host, listen_port,
                                                     limit=MAX_HEAD)
        except BaseException:
            await self.host.aclose(linger=0)
            raise
        return self.server.sockets[0].getsockname()[:2]

    async def aclose(self) -> None:
        """Stop listening, end every TCP connection, close the upstream host."""
        if self.server is not None:
            self.server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        if self.host is not None:
            await self.host.aclose()

    def _schedule_trim(self, tries: int = TRIM_TRIES) -> None:
        """Once the TCP connections that ended have closed their Trickles side too (a FIN is
        answered in about a round trip), give the memory they held back (one call for any
        number of connections that ended together)."""
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim_now, tries)

    def _trim_now(self, tries: int) -> None:
        self._trim = None
        host = self.host
        if host is None or host.closed:
            return
        if host.connections > len(self._tasks) and tries > 1:  # a Trickles side still closing
            self._schedule_trim(tries - 1)
            return
        if release_freed_memory():
            self.counters["memory_trims"] += 1

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.counters["tcp_connections"] += 1
        try:
            await self._serve(reader, writer)
            await self._linger(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one connection's trouble reach the loop
            self.counters["errors"] += 1
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            if self.host is not None and not self.host.closed:
                self._schedule_trim()

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then drop what the client still sends (for at most LINGER s): closing with
        unread input would reset the connection under the last bytes of the response."""

        async def drain_input() -> None:
            while await reader.read(65536):
                pass

        try:
            if writer.can_write_eof():
                writer.write_eof()
            await asyncio.wait_for(drain_input(), LINGER)
        except (TimeoutError, OSError):
            pass

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The request head (leading blank lines dropped), b"" on a silent close, None if bad."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except asyncio.IncompleteReadError as e:
            return b"" if not e.partial.strip() else None
        except asyncio.LimitOverrunError:
            return None
        except (TimeoutError, ConnectionError):
            return b""
        head = head.lstrip(b"\r\n")
        if not 4 <= len(head) <= MAX_REQUEST or not valid_head(head):  # must fit one SYN
            return None
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await self._read_head(reader)
        if head is None:
            self.counters["bad_request"] += 1
            writer.write(BAD_REQUEST)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            return
        if not head:
            return
        assert self.host is not None
        resp = await self.host.open(head)
        self.counters["requests"] += 1
        sent = 0
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(resp.read(1 << 20), self.idle_timeout)
                except (ConnectionError, TimeoutError):
                    self.counters["upstream_failed"] += 1
                    if sent == 0:
                        writer.write(BAD_GATEWAY)
                        with contextlib.suppress(ConnectionError):
                            await writer.drain()
                    return
                if not chunk:
                    self.counters["completed"] += 1
                    return
                writer.write(chunk)
                sent += len(chunk)
                try:
                    await writer.drain()
                except ConnectionError:
                    self.counters["client_gone"] += 1
                    return
        finally:
            resp.close()
            self.counters["bytes"] += sent


async def run_gateway(listen_host: str, listen_port: int, upstream_host: str, upstream_port: int,
                      transport: str = "udp", ip_proto: int = PROTO_TRICKLES,
                      local_addr: str | None = None, *, config: ClientConfig | None = None,
                      idle_timeout: float = 60.0,
                      ready: Callable[[tuple[str, int]], None] | None = None,
                      stop: asyncio.Event | None = None) -> Gateway:
    """Serve until `stop` is set (or the task is cancelled), then shut down cleanly.

    `ready` is called with the bound (host, port) once listening (useful with port 0).
    Returns the Gateway (its counters) after the shutdown.
    """
    gw = Gateway(upstream_host, upstream_port, transport, ip_proto, local_addr, config,
                 idle_timeout)
    where = await gw.start(listen_host, listen_port)
    try:
        if ready is not None:
            ready(where)
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await gw.aclose()
    return gw


# ---------------------------------------------------------------------- command line
def _hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = text, ""
    if not port:
        if default_port is None:
            raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
        port = str(default_port)
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: bad port {port!r}") from None
    if not 0 <= p < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port out of range")
    return host.strip("[]") or "127.0.0.1", p


def _ip_proto(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v not in (PROTO_TRICKLES, PROTO_TCP):
        raise argparse.ArgumentTypeError("--ip-proto must be 253 (experimental) or 6 (TCP)")
    return v


def add_gateway_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    g = subparsers.add_parser(
        "gateway", help="local TCP gateway to a Trickles web server (for curl, browsers)",
        description="Accept plain TCP (HTTP) connections and fetch each request from a Trickles "
                    "server: TCP from the program, Trickles on the wire. One request per "
                    "connection.",
    )
    g.add_argument("--listen", type=_hostport, default=("127.0.0.1", 8080), metavar="HOST:PORT",
                   help="TCP address to accept connections on (default 127.0.0.1:8080)")
    g.add_argument("--upstream", type=lambda t: _hostport(t, 8080), required=True,
                   metavar="HOST:PORT", help="the Trickles server (port defaults to 8080)")
    g.add_argument("--transport", choices=("raw", "udp"), default="raw",
                   help="toward the server: raw IP sockets (root or CAP_NET_RAW) or UDP")
    g.add_argument("--ip-proto", type=_ip_proto, default=PROTO_TRICKLES,
                   help="IP protocol for raw sockets: 253 (default) or 6")
    g.add_argument("--local-addr", help="local address toward the server (default: chosen)")
    g.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="give up on a transfer that stalls this long (502 if nothing sent)")
    g.set_defaults(func=cmd_gateway)
    return g


def _privilege_errors() -> tuple[type[BaseException], ...]:
    return (PrivilegeError, PermissionError)


def cmd_gateway(args: argparse.Namespace) -> int:
    (lhost, lport), (uhost, uport) = args.listen, args.upstream
    try:
        uip = socket.gethostbyname(uhost)
    except OSError as e:
        print(f"trickles gateway: cannot resolve {uhost}: {e}", file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(where: tuple[str, int]) -> None:
            mode = args.transport
            if args.transport == "raw":
                mode += f", IP protocol {args.ip_proto}"
            print(f"trickles gateway: listening on http://{where[0]}:{where[1]}/ -> Trickles "
                  f"{uip}:{uport} ({mode})", flush=True)

        gw = await run_gateway(lhost, lport, uip, uport, args.transport, args.ip_proto,
                               args.local_addr, idle_timeout=args.idle_timeout, ready=ready,
                               stop=stop)
        c = gw.counters
        print(f"trickles gateway: stopped; {c['requests']} requests, {c['completed']} completed, "
              f"{c['upstream_failed']} failed upstream, {c['bad_request']} bad", flush=True)

    try:
        asyncio.run(main())
    except _privilege_errors() as e:
        print(f"trickles gateway: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"trickles gateway: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    return 0


__all__ = ["Gateway", "add_gateway_parser", "cmd_gateway", "run_gateway", "valid_head"]
