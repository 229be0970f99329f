"""Linux TCP with thousands of live connections: an event-driven server and client, kernel memory.

`bench/tcphttp.py` is threaded — one thread (and stack) per connection — which is fair for a
bulk transfer but not for 10,000 concurrent connections. The memory experiment needs what a
careful TCP server would do: one process, one event loop (asyncio over epoll), a small
protocol object per connection, HTTP/1.1 keep-alive. It serves `/gen?size=N&seed=S`
byte-identical to the Trickles web app (same generator), so both sides hand out the same bytes.

The client opens N connections from one process (non-blocking sockets and a selector), sends
one GET on each, reads the header and the first body bytes, then stops reading that socket:
the connection is alive and mid-transfer (the rest of the body is in flight or in the client's
receive buffer). On `resume` it reads every body to the end and checks its SHA-256; the
connections then stay open, idle, until `close`. The client speaks JSON lines on stdout and
takes commands on stdin, so a benchmark in another namespace can measure at each point.

Kernel memory: `/proc/net/sockstat`'s TCP `inuse` is per network namespace, but its `mem`
(pages) is the global `tcp_memory_allocated` — every TCP socket on the machine, both ends. The
server's own buffers are therefore summed from `ss -tm` (skmem of each socket) inside the
server's namespace; the socket structures themselves are estimated from /proc/slabinfo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trickles_kit.apps.generated import generated_bytes, generated_sha256
from trickles_kit.apps.http import HeadTooLong, parse_response_head

MAX_OBJECT = 1 << 20  # the server answers 413 above this: every body is written in one go
MAX_HEADER = 16384
_GEN_PATH = re.compile(rb"GET /gen\?size=(\d+)(?:&seed=(\d+))? HTTP/1\.[01]$")
_SKMEM = re.compile(r"skmem:\(r(\d+),rb\d+,t(\d+),tb\d+,f(\d+),w(\d+),o(\d+),bl(\d+)")
# kernel objects behind one connected TCP socket of a user process (the file, its inode and
# dentry, the TCP socket itself, the epoll item): their slab object sizes
SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")


def raise_nofile(n: int) -> int:
    """Lift RLIMIT_NOFILE to at least `n` descriptors (root may raise the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    if want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


# ====================================================================== server
class _HttpConn(asyncio.Protocol):
    """One keep-alive connection: answers each complete GET /gen request, nothing else."""

    __slots__ = ("stats", "tr", "buf")

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self.tr: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        self.stats["open"] += 1
        self.stats["accepted"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["open"] -= 1
        self.tr = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.tr is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER:
                    self._fail(431, "header_too_long")
                return
            line = self.buf[: self.buf.find(b"\r\n")]
            self.buf = self.buf[end + 4 :]
            m = _GEN_PATH.match(line)
            if m is None:
                self._fail(404, "bad_request")
                return
            size, seed = int(m.group(1)), int(m.group(2) or 0)
            if size > MAX_OBJECT:
                self._fail(413, "too_large")
                return
            self.stats["requests"] += 1
            self.tr.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
                          + generated_bytes(seed, 0, size))

    def _fail(self, status: int, counter: str) -> None:
        """A bad request is counted, answered with its status and the connection closed."""
        self.stats[counter] += 1
        if self.tr is not None:
            self.tr.write(b"HTTP/1.1 %d Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                          % status)
            self.tr.close()


async def _serve(bind: str, port: int, cc: str, backlog: int) -> None:
    loop = asyncio.get_running_loop()
    stats = {"open": 0, "accepted": 0, "requests": 0, "bad_request": 0, "too_large": 0,
             "header_too_long": 0}
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    ls.bind((bind, port))
    srv = await loop.create_server(lambda: _HttpConn(stats), sock=ls, backlog=backlog)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"phase": "serving", "bind": bind, "port": port, "cc": cc}), flush=True)
    async with srv:
        await stop.wait()
    print(json.dumps({"phase": "stopped", **stats}), flush=True)


# ====================================================================== client
class _Client:
    """N connections from one process; a connection is parked once its first body byte came."""

    def __init__(self, host: str, port: int, n: int, size: int, seeds: int, window: int,
                 rcvbuf: int | None) -> None:
        self.addr = (host, port)
        self.n, self.size, self.window, self.rcvbuf = n, size, window, rcvbuf
        self.seeds = [1 + i % seeds for i in range(n)]
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket | None] = [None] * n
        self.head = [b""] * n
        self.seen = [False] * n  # the response header is complete
        self.body = [0] * n
        self.sha = [hashlib.sha256() for _ in range(n)]
        self.state = ["new"] * n  # new, connecting, reading, parked, done, failed
        self.errors: dict[str, int] = {}

    def _fail(self, i: int, why: str) -> None:
        self.state[i] = "failed"
        self.errors[why] = self.errors.get(why, 0) + 1
        s = self.socks[i]
        if s is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(s)
            s.close()

    def _start(self, i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        s.setblocking(False)
        self.socks[i] = s
        self.state[i] = "connecting"
        err = s.connect_ex(self.addr)
        if err not in (0, 115):  # EINPROGRESS
            self._fail(i, f"connect_errno_{err}")
            return
        self.sel.register(s, selectors.EVENT_WRITE, i)

    def _request(self, i: int) -> bytes:
        return (f"GET /gen?size={self.size}&seed={self.seeds[i]} HTTP/1.1\r\n"
                f"Host: {self.addr[0]}\r\n\r\n").encode()

    def _on_event(self, i: int, s: socket.socket, until_done: bool) -> None:
        if self.state[i] == "connecting":
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(i, f"connect_errno_{err}")
                return
            s.sendall(self._request(i))  # a few dozen bytes: the send buffer is empty
            self.state[i] = "reading"
            self.sel.modify(s, selectors.EVENT_READ, i)
            return
        try:  # small reads until parked, so a connection never swallows its whole body
            data = s.recv(1 << 16 if until_done else 1024)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(i, type(e).__name__)
            return
        if not data:
            self._fail(i, "closed_by_server")
            return
        if not self.seen[i]:
            buf = self.head[i] + data
            try:
                head = parse_response_head(buf, limit=MAX_HEADER)
            except HeadTooLong:
                self._fail(i, "header_too_long")
                return
            except ValueError:  # a status line without a numeric status
                self._fail(i, "bad_status")
                return
            if head is None:
                self.head[i] = buf
                return
            self.head[i] = b""
            self.seen[i] = True
            if head.status != 200:
                self._fail(i, "bad_status")
                return
            data = buf[head.size :]
        self.body[i] += len(data)
        self.sha[i].update(data)
        if self.body[i] > self.size:
            self._fail(i, "body_too_long")
        elif self.body[i] == self.size:
            self.state[i] = "done"
            self.sel.unregister(s)  # stays open: an idle keep-alive connection
        elif not until_done and self.body[i] > 0:
            self.state[i] = "parked"
            self.sel.unregister(s)

    def _loop(self, pending: list[int], timeout: float, until_done: bool) -> bool:
        """Start connections from `pending` (at most `window` at a time in progress) and serve
        events until none is in progress; False if `timeout` ran out first."""
        end = time.monotonic() + timeout
        busy = ("connecting", "reading")
        active = sum(1 for st in self.state if st in busy)
        while True:
            while pending and active < self.window:
                self._start(pending.pop())
                active += 1
            if not active and not pending:
                return True
            if time.monotonic() > end:
                return False
            for key, _ in self.sel.select(0.2):
                i = key.data
                self._on_event(i, key.fileobj, until_done)  # type: ignore[arg-type]
            active = sum(1 for st in self.state if st in busy)

    def census(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st in self.state:
            out[st] = out.get(st, 0) + 1
        return out

    def open_all(self, timeout: float) -> dict:
        t0 = time.monotonic()
        ok = self._loop(list(range(self.n - 1, -1, -1)), timeout, until_done=False)
        c = self.census()
        return {"phase": "parked", "in_time": ok, "open_s": round(time.monotonic() - t0, 3),
                "states": c, "alive": c.get("parked", 0), "errors": self.errors,
                "body_bytes_read": sum(self.body)}

    def resume(self, timeout: float) -> dict:
        t0 = time.monotonic()
        for i, st in enumerate(self.state):
            if st == "parked":
                self.state[i] = "reading"
                self.sel.register(self.socks[i], selectors.EVENT_READ, i)  # type: ignore[arg-type]
        ok = self._loop([], timeout, until_done=True)
        exact = {s: generated_sha256(self.size, s) for s in set(self.seeds)}
        good = sum(1 for i in range(self.n) if self.state[i] == "done"
                   and self.sha[i].hexdigest() == exact[self.seeds[i]])
        return {"phase": "idle", "in_time": ok, "resume_s": round(time.monotonic() - t0, 3),
                "states": self.census(), "byte_exact": good, "errors": self.errors}

    def close(self) -> dict:
        n = 0
        for s in self.socks:
            if s is not None and s.fileno() >= 0:
                s.close()
                n += 1
        self.sel.close()
        return {"phase": "closed", "closed": n}


def client_main(host: str, port: int, n: int, size: int, seeds: int, window: int,
                timeout: float, rcvbuf: int | None = None) -> int:
    """Run the client protocol: open+park, print; `resume` → read all, print; `close`."""
    raise_nofile(n + 64)
    c = _Client(host, port, n, size, seeds, window, rcvbuf)
    print(json.dumps(c.open_all(timeout)), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "resume":
            print(json.dumps(c.resume(timeout)), flush=True)
        elif cmd == "close":
            break
    print(json.dumps(c.close()), flush=True)
    return 0


# ====================================================================== kernel memory
def sockstat(pid: int | str = "self") -> dict[str, dict[str, int]]:
    """/proc/PID/net/sockstat as {"TCP": {"inuse": .., "mem": ..}, ...}, in the netns of PID."""
    out: dict[str, dict[str, int]] = {}
    for line in Path(f"/proc/{pid}/net/sockstat").read_text().splitlines():
        name, _, rest = line.partition(":")
        f = rest.split()
        out[name] = {f[k]: int(f[k + 1]) for k in range(0, len(f) - 1, 2)}
    return out


def skmem_sum(ss_output: str) -> dict[str, int]:
    """Totals of `ss -tm` skmem fields: sockets, receive queue (r), send queue (w), forward
    allocation (f) and option memory (o); `charged` = r + w + f + o, what the sockets hold
    against the kernel's TCP memory accounting."""
    tot = {"sockets": 0, "rmem_alloc": 0, "wmem_alloc": 0, "fwd_alloc": 0, "wmem_queued": 0,
           "optmem": 0, "backlog": 0}
    for m in _SKMEM.finditer(ss_output):
        r, t, f, w, o, bl = (int(x) for x in m.groups())
        tot["sockets"] += 1
        tot["rmem_alloc"] += r
        tot["wmem_alloc"] += t
        tot["fwd_alloc"] += f
        tot["wmem_queued"] += w
        tot["optmem"] += o
        tot["backlog"] += bl
    tot["charged"] = tot["rmem_alloc"] + tot["wmem_queued"] + tot["fwd_alloc"] + tot["optmem"]
    return tot


def ss_argv(port: int, peer: bool = False) -> list[str]:
    """`ss` listing the connected TCP sockets of local port `port` (or of remote port `port`
    with `peer`: the client's side), with their memory."""
    return ["ss", "-tmnH", "state", "connected", "dport" if peer else "sport", "=", f":{port}"]


def skmem(ns_argv: list[str], port: int, peer: bool = False,
          timeout: float = 60.0) -> dict[str, int]:
    """skmem totals of port `port`, `ss` run under `ns_argv` (e.g. ip netns exec NS)."""
    p = subprocess.run([*ns_argv, *ss_argv(port, peer)], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"ss failed: {p.stderr.strip()}")
    return skmem_sum(p.stdout)


def slab_bytes_per_socket() -> dict[str, int] | None:
    """Object sizes of the slabs behind one connected socket (/proc/slabinfo; root only)."""
    try:
        lines = Path("/proc/slabinfo").read_text().splitlines()
    except OSError:
        return None
    sizes = {}
    for line in lines[2:]:
        f = line.split()
        if f and f[0] in SLABS:
            sizes[f[0]] = int(f[3])
    return sizes if sizes else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trickles_kit.bench.tcpmany",
                                 description="Many-connection Linux TCP server and client "
                                             "(the memory benchmark's baseline).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--cc", default="reno")
    s.add_argument("--backlog", type=int, default=4096)
    s.add_argument("--nofile", type=int, default=20000)
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("-n", type=int, required=True)
    c.add_argument("--size", type=int, default=16384)
    c.add_argument("--seeds", type=int, default=8)
    c.add_argument("--window", type=int, default=256, help="connections in progress at once")
    c.add_argument("--timeout", type=float, default=300.0)
    c.add_argument("--rcvbuf", type=int, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        raise_nofile(a.nofile)
        asyncio.run(_serve(a.bind, a.port, a.cc, a.backlog))
        return 0
    return client_main(a.host, a.port, a.n, a.size, a.seeds, a.window, a.timeout, a.rcvbuf)


if __name__ == "__main__":
    sys.exit(main())
