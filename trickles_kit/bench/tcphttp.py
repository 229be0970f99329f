"""The Linux TCP baseline: a small HTTP/1.1 server and client over kernel TCP.

Benchmarks compare Trickles with the real Linux stack serving the same bytes, so this server
does nothing clever: it sends files (with `Range` support, so a client can resume after a
failover) and `/gen?size=N&seed=S` generated content identical to the Trickles web app's, on
sockets whose congestion control is chosen (`TCP_CONGESTION`, e.g. reno or cubic) and whose
MSS can be pinned.
The initial window is set by the route (`ip route … initcwnd N`), not here.

    python -m trickles_kit.bench.tcphttp --port 8080 --root DIR --cc reno
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from trickles_kit.apps.generated import generated_bytes
from trickles_kit.apps.http import ResponseHead, parse_response_head

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_GEN = re.compile(r"/gen\?size=(\d+)(?:&seed=(\d+))?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TcpHttpServer

    def log_message(self, fmt: str, *args: object) -> None:  # quiet: benchmarks time it
        return

    def _body(self) -> tuple[int, object] | None:
        m = _GEN.match(self.path)
        if m:
            return int(m.group(1)), int(m.group(2) or 0)
        root = self.server.root
        if root is None:
            return None
        p = (root / self.path.lstrip("/")).resolve()
        if root not in p.parents and p != root or not p.is_file():
            return None
        return p.stat().st_size, p

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        found = self._body()
        if found is None:
            self.send_error(404)
            return
        size, src = found
        start, end = 0, size
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or int(m.group(1)) >= size:
                self.send_error(416)
                return
            start = int(m.group(1))
            end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        step = 1 << 18
        if isinstance(src, int):  # generated: src is the seed
            for off in range(start, end, step):
                self.wfile.write(generated_bytes(src, off, min(end, off + step)))
        else:
            with open(src, "rb") as f:  # type: ignore[arg-type]
                f.seek(start)
                left = end - start
                while left:
                    chunk = f.read(min(step, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)


class TcpHttpServer(ThreadingHTTPServer):
    """Threaded HTTP server; accepted sockets inherit the listener's congestion control."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], root: Path | None = None, cc: str = "reno",
                 mss: int | None = None) -> None:
        self.root = root.resolve() if root else None
        self.cc, self.mss = cc, mss
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.cc.encode())
        except OSError as e:
            raise SystemExit(f"tcphttp: congestion control {self.cc!r} not available: {e} "
                             f"(see /proc/sys/net/ipv4/tcp_available_congestion_control)") from e
        if self.mss:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, self.mss)
        super().server_bind()


def read_head(s: socket.socket, closed: str) -> tuple[ResponseHead, bytes]:
    """The response head on `s` and the body bytes that came with it (ConnectionError
    `closed` if the peer closes first). The TCP clients of bench/ share it."""
    got = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(closed)
        got += chunk
        head = parse_response_head(got)
        if head is not None:
            return head, bytes(got[head.size :])


def fetch(host: str, port: int, path: str, start: int = 0, timeout: float = 30.0,
          sink: bytearray | None = None) -> tuple[int, bytes]:
    """GET `path` from byte `start`; returns (status, body). Raises OSError if the connection dies.

    `sink`, when given, receives bytes as they arrive, so a caller keeps what came before a
    failure and can resume with a Range request from there.
    """
    buf = sink if sink is not None else bytearray()
    with socket.create_connection((host, port), timeout=timeout) as s:
        hdr = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        if start:
            hdr += f"Range: bytes={start}-\r\n"
        s.sendall((hdr + "\r\n").encode())
        head, rest = read_head(s, "connection closed before the headers")
        status, length = head.status, head.content_length
        buf += rest
        got = len(rest)
        while length is None or got < length:
            chunk = s.recv(1 << 18)
            if not chunk:
                break
            buf += chunk
            got += len(chunk)
        if length is not None and got < length:
            raise ConnectionError(f"connection closed after {got} of {length} bytes")
    return status, bytes(buf)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m trickles_kit.bench.tcphttp",
        description="Linux TCP HTTP baseline server (files, /gen?size=N&seed=S).")
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--root", type=Path, default=None, help="directory of files to serve")
    ap.add_argument("--cc", default="reno", help="TCP_CONGESTION (reno, cubic, …)")
    ap.add_argument("--mss", type=int, default=None, help="pin TCP_MAXSEG")
    a = ap.parse_args(argv)
    srv = TcpHttpServer((a.bind, a.port), a.root, a.cc, a.mss)
    print(f"tcphttp: serving on {a.bind}:{a.port} cc={a.cc} pid={os.getpid()}", flush=True)
    t0 = time.time()
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        print(f"tcphttp: stopped after {time.time() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
