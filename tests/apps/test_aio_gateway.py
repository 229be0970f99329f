"""Client APIs over the real wire (UDP, no privileges): the asyncio host, the socket-like client
and the TCP gateway (driven by curl). Every server runs in a background thread on an ephemeral
port and is stopped by its fixture."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trickles_kit.apps.gateway import run_gateway, valid_head
from trickles_kit.apps.generated import Generated, gen_request, generated_sha256
from trickles_kit.apps.static import StaticFiles
from trickles_kit.core.client import ClientConfig
from trickles_kit.core.server import ServerEngine
from trickles_kit.net.aio import AsyncClientHost
from trickles_kit.net.ip import aton
from trickles_kit.net.runner import ServerLoop
from trickles_kit.net.socketapi import TricklesSocket, get
from trickles_kit.net.udp import UdpTransport

pytestmark = pytest.mark.e2e
CURL = shutil.which("curl") or "/usr/bin/curl"
REPO = Path(__file__).resolve().parents[2]
# fail fast toward a server that never answers (about 0.3 s instead of minutes)
QUICK_FAIL = ClientConfig(initial_rto=0.05, min_rto=0.05, max_rto=0.1, max_timeouts=3)


def web_server_class() -> Any:
    """`apps.web.WebServer` if it exists (real HTTP responses), else None."""
    if importlib.util.find_spec("trickles_kit.apps.web") is None:
        return None
    from trickles_kit.apps import web

    return getattr(web, "WebServer", None)


class LossyUdp(UdpTransport):
    """Drops a seeded random share of what the server sends (exercises the client's timers)."""

    def __init__(self, *args: Any, loss: float = 0.03, seed: int = 1) -> None:
        super().__init__(*args)
        self.loss = loss
        self.rng = random.Random(seed)

    def send(self, segment: bytes, dst_ip: bytes, peer: Any) -> bool:
        if self.rng.random() < self.loss:
            return False
        return super().send(segment, dst_ip, peer)


class Server:
    """A Trickles server (ServerEngine + ServerLoop) on UDP 127.0.0.1:<ephemeral>, in a thread."""

    def __init__(self, make_handler: Callable[[], Any], loss: float = 0.0) -> None:
        self.tr = LossyUdp("127.0.0.1", 0, loss=loss) if loss else UdpTransport("127.0.0.1", 0)
        self.port = self.tr.port
        self.handler = make_handler()
        self.engine = ServerEngine(os.urandom(32), self.handler, aton("127.0.0.1"), self.port)
        if hasattr(self.handler, "attach"):
            self.handler.attach(self.engine)
        self.loop = ServerLoop(self.engine, self.tr)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.tr.close()


@pytest.fixture(scope="module")
def gen_server() -> Iterator[Server]:
    s = Server(Generated)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("www")
    (d / "big.bin").write_bytes(os.urandom(3_000_000 + 17))
    (d / "small.txt").write_bytes(b"hello, stateless world\n" * 300)
    return d


@pytest.fixture(scope="module")
def web_server(www: Path) -> Iterator[Server]:
    cls = web_server_class()
    s = Server(lambda: cls(www) if cls is not None else StaticFiles(www))
    s.http = cls is not None  # type: ignore[attr-defined]
    yield s
    s.stop()
    if hasattr(s.handler, "close"):
        s.handler.close()


def split_http(stream: bytes) -> tuple[int, bytes]:
    head, sep, body = stream.partition(b"\r\n\r\n")
    assert sep, stream[:200]
    return int(head.split(b" ", 2)[1]), body


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------------- asyncio client
def test_async_twenty_concurrent_opens_byte_exact(gen_server: Server) -> None:
    async def main() -> None:
        host = AsyncClientHost.open_to("127.0.0.1", gen_server.port)
        async with host:
            async def one(i: int) -> tuple[str, int]:
                size = 60_000 + i * 13_579
                resp = await host.open(gen_request(size, 100 + i))
                h = hashlib.sha256()
                async for chunk in resp:
                    h.update(chunk)
                assert resp.done and resp.total == size and resp.received == size
                return h.hexdigest(), size

            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 20)
            for i, (digest, size) in enumerate(results):
                assert digest == generated_sha256(size, 100 + i), i
            # every datagram found its connection; the only strays allowed are answers to FIN
            # retries sent before the first answer came (under load the RTO can be shorter than
            # the answer's delay): since FIN retries are answered (docs/protocol.md §9.3), such an
            # answer reaches a connection already closed and forgotten — at most 3 per connection
            assert host.counters["unknown_port"] <= 3 * 20
            # read(-1): the whole stream at once; read(n) never returns more than n
            resp = await host.open(gen_request(1_000_000, 9))
            first = await resp.read(1000)
            assert 0 < len(first) <= 1000
            rest = await asyncio.wait_for(resp.read(), 20)
            assert sha(first + rest) == generated_sha256(1_000_000, 9)
            assert await resp.read() == b"" and await resp.read(10) == b""
            fd = host.transport.fileno()
        assert host.closed and host.connections == 0
        # aclose removed the reader (and closed the transport it owned)
        assert not asyncio.get_running_loop().remove_reader(fd)

    asyncio.run(main())


def test_async_concurrent_opens_under_loss() -> None:
    """3% of the server's packets lost: recoveries and timeouts run off the one loop timer."""
    server = Server(Generated, loss=0.03)

    async def main() -> list[tuple[bool, int]]:
        async with AsyncClientHost.open_to("127.0.0.1", server.port) as host:
            async def one(i: int) -> tuple[bool, int]:
                resp = await host.open(gen_request(300_000, i))
                data = await resp.read()
                c = resp.engine.counters
                return sha(data) == generated_sha256(300_000, i), c["recoveries"] + c["timeouts"]

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 20)

    try:
        results = asyncio.run(main())
    finally:
        server.stop()
    assert all(ok for ok, _ in results)
    assert sum(n for _, n in results) > 0  # loss really happened and was repaired


def test_async_failed_connection_raises_connection_error() -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a port where nobody answers
    dead.bind(("127.0.0.1", 0))

    async def main() -> None:
        host = AsyncClientHost.open_to("127.0.0.1", dead.getsockname()[1], config=QUICK_FAIL)
        async with host:
            resp = await host.open(gen_request(1000, 1))
            with pytest.raises(ConnectionError):  # gave up itself: wait_for raises TimeoutError
                await asyncio.wait_for(resp.read(), 60)
            assert resp.failed
            with pytest.raises(ConnectionError):
                await resp.read(10)

    try:
        asyncio.run(main())
    finally:
        dead.close()


def test_async_host_waits_without_spinning() -> None:
    """A pending connection costs one timer and one reader: no busy loop, no thread."""
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))

    async def main() -> None:
        n_threads = threading.active_count()
        host = AsyncClientHost.open_to("127.0.0.1", dead.getsockname()[1])
        resp = await host.open(gen_request(1000, 1))
        cpu = time.process_time()
        await asyncio.sleep(0.5)
        assert time.process_time() - cpu < 0.1
        assert threading.active_count() == n_threads
        assert resp.received == 0 and not resp.done
        await host.aclose(linger=0)
        with pytest.raises(ConnectionError):  # the host closed under a pending read
            await resp.read()

    try:
        asyncio.run(main())
    finally:
        dead.close()


# ---------------------------------------------------------------------- socket-like client
def test_socket_api_byte_exact(gen_server: Server) -> None:
    size = 700_001
    with TricklesSocket("udp") as s:
        s.settimeout(20)
        s.connect(("127.0.0.1", gen_server.port))
        req = gen_request(size, 77)
        s.sendall(req[:4])  # buffered: nothing is sent before the first recv
        s.sendall(req[4:])
        got = bytearray()
        while chunk := s.recv(4096):
            assert len(chunk) <= 4096
            got += chunk
        assert s.recv(10) == b""
        with pytest.raises(OSError):
            s.sendall(b"more")  # the request went out with the SYN
        assert s.total == size
    assert sha(bytes(got)) == generated_sha256(size, 77)
    with pytest.raises(OSError):
        s.recv(1)  # closed

    # shutdown(SHUT_WR) sends the request at once
    with TricklesSocket() as s:
        s.connect(("127.0.0.1", gen_server.port))
        s.sendall(gen_request(5000, 3))
        s.shutdown(socket.SHUT_WR)
        assert s.getsockname()[1] > 0
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    assert sha(bytes(got)) == generated_sha256(5000, 3)


def test_socket_get_url(web_server: Server, www: Path) -> None:
    stream = get(f"http://127.0.0.1:{web_server.port}/big.bin", timeout=20)
    want = (www / "big.bin").read_bytes()
    if web_server.http:  # type: ignore[attr-defined]
        status, body = split_http(stream)
        assert status == 200 and sha(body) == sha(want)
    else:
        assert sha(stream) == sha(want)


def test_socket_timeout_and_errors() -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    try:
        with TricklesSocket() as s:
            with pytest.raises(OSError):
                s.recv(10)  # not connected
            s.connect(("127.0.0.1", dead.getsockname()[1]))
            with pytest.raises(OSError):
                s.recv(10)  # no request
            s.sendall(b"GET /x")
            s.settimeout(0.2)
            t0 = time.monotonic()
            with pytest.raises(socket.timeout):
                s.recv(10)
            # waited the timeout (the upper bound is only a ceiling for a timeout not applied)
            assert 0.15 < time.monotonic() - t0 < 30
        with TricklesSocket(config=QUICK_FAIL) as s:
            s.connect(("127.0.0.1", dead.getsockname()[1]))
            s.sendall(b"GET /x")
            s.settimeout(10)
            with pytest.raises(ConnectionError):
                s.recv(10)
    finally:
        dead.close()


# ---------------------------------------------------------------------- gateway
class GatewayThread:
    """`run_gateway` on its own event loop in a thread, listening on 127.0.0.1:<ephemeral>."""

    def __init__(self, upstream_port: int, **kw: Any) -> None:
        self.addr: tuple[str, int] | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._kw = kw
        self._upstream = upstream_port
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "gateway did not start"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()

            def ready(addr: tuple[str, int]) -> None:
                self.addr = addr
                self._ready.set()

            self.gateway = await run_gateway("127.0.0.1", 0, "127.0.0.1", self._upstream, "udp",
                                             ready=ready, stop=self.stop_event, **self._kw)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            self.error = e
            self._ready.set()

    @property
    def url(self) -> str:
        assert self.addr is not None
        return f"http://{self.addr[0]}:{self.addr[1]}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)
        assert not self.thread.is_alive(), "gateway did not stop"
        assert self.error is None, self.error


@pytest.fixture
def gateway(web_server: Server) -> Iterator[GatewayThread]:
    g = GatewayThread(web_server.port)
    yield g
    g.stop()


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([CURL, "-s", "--max-time", str(timeout), *args], capture_output=True,
                          timeout=timeout + 5)


def test_gateway_curl_byte_exact(gateway: GatewayThread, web_server: Server, www: Path,
                                 tmp_path: Path) -> None:
    http09 = [] if web_server.http else ["--http0.9"]  # type: ignore[attr-defined]
    procs = []
    for i, name in enumerate(["big.bin", "small.txt", "big.bin"]):
        out = tmp_path / f"out{i}"
        procs.append((name, out, subprocess.Popen(
            [CURL, "-s", "--max-time", "20", *http09, "-o", str(out), f"{gateway.url}/{name}"])))
    for name, out, p in procs:  # three transfers at once over the one AsyncClientHost
        assert p.wait(25) == 0, name
        assert sha(out.read_bytes()) == sha((www / name).read_bytes()), name
    if web_server.http:  # type: ignore[attr-defined]
        p = curl("-o", str(tmp_path / "gen"), "-w", "%{http_code}",
                 f"{gateway.url}/gen?size=400000&seed=5")
        assert p.stdout == b"200"
        assert sha((tmp_path / "gen").read_bytes()) == generated_sha256(400_000, 5)


def test_gateway_bad_requests(gateway: GatewayThread) -> None:
    assert gateway.addr is not None
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"hello\r\n\r\n",
                 b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"GET /" + b"a" * 70_000,
                 b"GET / HTTP/1.1\r\nX: " + b"a" * 61_000 + b"\r\n\r\n"):
        with socket.create_connection(gateway.addr, timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 "), (junk[:20], reply[:100])
    assert valid_head(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")


def test_gateway_502_when_upstream_fails(tmp_path: Path) -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    g = GatewayThread(dead.getsockname()[1], config=QUICK_FAIL)
    try:
        p = curl("-o", str(tmp_path / "x"), "-w", "%{http_code}", f"{g.url}/big.bin")
        assert p.stdout == b"502"
        assert b"Trickles transfer failed" in (tmp_path / "x").read_bytes()
    finally:
        g.stop()
        dead.close()


def test_gateway_command_sigterm(web_server: Server, www: Path, tmp_path: Path) -> None:
    """`trickles gateway` as a process: one line when listening, SIGTERM stops it cleanly."""
    script = (
        "import argparse, sys\n"
        "from trickles_kit.apps.gateway import add_gateway_parser\n"
        "p = argparse.ArgumentParser(prog='trickles'); sub = p.add_subparsers()\n"
        "add_gateway_parser(sub)\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "gateway", "--listen", "127.0.0.1:0", "--upstream",
         f"127.0.0.1:{web_server.port}", "--transport", "udp"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore
        http09 = [] if web_server.http else ["--http0.9"]  # type: ignore[attr-defined]
        out = tmp_path / "small"
        p = curl(*http09, "-o", str(out), f"http://127.0.0.1:{m.group(1)}/small.txt")
        assert p.returncode == 0
        assert out.read_bytes() == (www / "small.txt").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "stopped" in proc.stdout.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
