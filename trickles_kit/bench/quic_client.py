"""The QUIC baseline's clients (HTTP/3 over aioquic), run in the client namespace.

* `fetch`: one GET of `/gen?size=N&seed=S`, the body hashed as it arrives; one JSON line like
  `goodput.tcp_fetch`'s (bytes, sha256, seconds, goodput).
* `agent`: the failover client, JSON lines like `services.agent`'s (start, mark, fail, resume,
  done). A QUIC connection whose server died gets no RST and no ICMP from the standby replica
  (which drops packets for connection IDs it does not know), so it can only notice silence:
  either its own idle timeout (`--idle-timeout`, QUIC's way: the connection fails) or an
  application watchdog (`--io-timeout`: no body byte for that long, as the TCP agent's socket
  timeout). Then it reconnects — a new handshake, to whichever replica the route now names —
  and asks for the rest with `Range: bytes=GOT-`.
* `many`: N connections at once (at most `--window` opening at a time), each fetching one small
  object completely and then staying open, idle: the server's memory is read while they live.
  Prints one JSON line when all are up, then waits for `close` on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence

from trickles_kit.apps.generated import generated_sha256
from trickles_kit.bench.quic_server import (  # the one place aioquic is imported
    PORT,
    ConnectionTerminated,
    DataReceived,
    H3Connection,
    HeadersReceived,
    QuicConnectionProtocol,
    QuicEvent,
    configuration,
    connect,
)


class _Get:
    """One request's state on a client connection."""

    def __init__(self, on_data: Callable[[bytes], None] | None) -> None:
        self.status = 0
        self.length: int | None = None
        self.got = 0
        self.sha = hashlib.sha256()
        self.on_data = on_data
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.last_t = time.monotonic()


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.h3 = H3Connection(self._quic)
        self.gets: dict[int, _Get] = {}
        self.terminated: str | None = None

    def get(self, authority: str, path: str, start: int = 0,
            on_data: Callable[[bytes], None] | None = None) -> _Get:
        sid = self._quic.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"),
                   (b":authority", authority.encode()), (b":path", path.encode())]
        if start:
            headers.append((b"range", f"bytes={start}-".encode()))
        self.h3.send_headers(sid, headers, end_stream=True)
        g = self.gets[sid] = _Get(on_data)
        self.transmit()
        return g

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = f"{event.reason_phrase or 'closed'} (error {event.error_code})"
            for g in self.gets.values():
                if not g.done.done():
                    g.done.set_exception(ConnectionError(f"QUIC connection terminated: "
                                                         f"{self.terminated}"))
        for ev in self.h3.handle_event(event):
            g = self.gets.get(getattr(ev, "stream_id", -1))
            if g is None:
                continue
            if isinstance(ev, HeadersReceived):
                h = dict(ev.headers)
                g.status = int(h.get(b":status", b"0"))
                g.length = int(h[b"content-length"]) if b"content-length" in h else None
            elif isinstance(ev, DataReceived) and ev.data:
                g.got += len(ev.data)
                g.sha.update(ev.data)
                g.last_t = time.monotonic()
                if g.on_data:
                    g.on_data(ev.data)
            if getattr(ev, "stream_ended", False) and not g.done.done():
                g.done.set_result(g)


def _path(size: int, seed: int) -> str:
    return f"/gen?size={size}&seed={seed}"


async def fetch(host: str, port: int, size: int, seed: int, timeout: float) -> dict:
    """One GET over a fresh connection: what `goodput.tcp_fetch` reports, for QUIC."""
    t0 = time.monotonic()
    async with connect(host, port, configuration=configuration(True),
                       create_protocol=H3Client) as c:
        t_conn = time.monotonic()
        g = c.get(f"{host}:{port}", _path(size, seed))  # type: ignore[attr-defined]
        await asyncio.wait_for(g.done, timeout)
    secs = time.monotonic() - t0
    return {"ok": g.status == 200 and g.got == g.length, "bytes": g.got,
            "sha256": g.sha.hexdigest(), "seconds": round(secs, 4),
            "handshake_s": round(t_conn - t0, 4), "goodput_mbit": round(g.got * 8 / secs / 1e6, 4)}


# ------------------------------------------------------------------------------ failover agent
def _say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


async def _watch(c: H3Client, g: _Get, io_timeout: float | None) -> None:
    """Until the body ends: raise TimeoutError after `io_timeout` s without a body byte."""
    while True:
        wait = None if io_timeout is None else max(0.01, g.last_t + io_timeout
                                                   - time.monotonic())
        done, _ = await asyncio.wait({g.done}, timeout=wait)
        if done:
            g.done.result()
            return
        if io_timeout is not None and time.monotonic() - g.last_t >= io_timeout:
            raise TimeoutError(f"no body byte for {io_timeout} s")


async def agent(host: str, port: int, size: int, seed: int, mark: int | None,
                timeout: float, io_timeout: float | None, idle_timeout: float) -> dict:
    """GET with resume: on a dead connection, reconnect and ask for the rest with Range."""
    got = bytearray()
    fails: list[dict] = []
    marked = mark is None
    t0 = time.time()
    _say(event="start", t=t0)
    deadline = time.monotonic() + timeout
    status = 0

    def on_data(data: bytes) -> None:
        nonlocal marked
        now = time.time()
        if fails and fails[-1]["resumed_t"] is None:
            fails[-1]["resumed_t"] = now
            _say(event="resume", t=now, bytes=len(got))
        got.extend(data)
        fails_last[0] = now
        if not marked and mark is not None and len(got) >= mark:
            marked = True
            _say(event="mark", t=now, bytes=len(got))

    fails_last: list[float | None] = [None]
    while len(got) < size and time.monotonic() < deadline:
        t_try = time.time()
        try:
            async with connect(host, port, configuration=configuration(True, idle_timeout=
                                                                       idle_timeout),
                               create_protocol=H3Client) as c:
                g = c.get(f"{host}:{port}", _path(size, seed),  # type: ignore[attr-defined]
                          start=len(got), on_data=on_data)
                await asyncio.wait_for(_watch(c, g, io_timeout),  # type: ignore[arg-type]
                                       max(0.1, deadline - time.monotonic()))
                status = g.status
                c.close()
        except (OSError, ConnectionError, TimeoutError) as e:
            now = time.time()
            if not fails or fails[-1]["resumed_t"] is not None:
                fails.append({"t": now, "bytes": len(got), "error": type(e).__name__,
                              "detail": str(e) or type(e).__name__,
                              "last_byte_t": fails_last[0], "attempts": 1,
                              "attempt_started_t": t_try, "resumed_t": None})
                _say(event="fail", t=now, bytes=len(got), error=type(e).__name__)
            else:
                fails[-1]["attempts"] += 1
            await asyncio.sleep(0.02)
    want = generated_sha256(size, seed)
    sha = hashlib.sha256(got).hexdigest()
    return {"ok": len(got) == size and status in (200, 206), "status": status,
            "bytes": len(got), "sha256": sha, "byte_exact": sha == want and len(got) == size,
            "t_start": t0, "t_end": time.time(), "fails": fails}


# ------------------------------------------------------------------------------ many
async def many(host: str, port: int, n: int, size: int, seed: int, window: int,
               timeout: float) -> None:
    """`n` live connections, each after one complete GET; close on `close` from stdin."""
    stack = contextlib.AsyncExitStack()
    sem = asyncio.Semaphore(window)
    exact = 0
    want = generated_sha256(size, seed)
    t0 = time.monotonic()
    conns: list[H3Client] = []

    async def one() -> None:
        nonlocal exact
        async with sem:
            c = await stack.enter_async_context(
                connect(host, port, configuration=configuration(True, idle_timeout=timeout),
                        create_protocol=H3Client))
            conns.append(c)  # type: ignore[arg-type]
            g = c.get(f"{host}:{port}", _path(size, seed))  # type: ignore[attr-defined]
            await asyncio.wait_for(g.done, timeout)
            exact += g.sha.hexdigest() == want and g.got == size

    async with stack:
        res = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        errors = [f"{type(e).__name__}: {e}" for e in res if isinstance(e, BaseException)]
        alive = sum(c.terminated is None for c in conns)
        _say(event="parked", connections=n, alive=alive, byte_exact=exact,
             errors=errors[:5], n_errors=len(errors), seconds=round(time.monotonic() - t0, 2))
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        alive = sum(c.terminated is None for c in conns)
        _say(event="closing", command=line.strip(), alive_before_close=alive)
        for c in conns:
            c.close()
    _say(event="closed")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trickles_kit.bench.quic_client")
    ap.add_argument("cmd", choices=("fetch", "agent", "many"))
    ap.add_argument("host")
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--mark", type=int, help="agent: say 'mark' once this many bytes arrived")
    ap.add_argument("--io-timeout", type=float, default=0.0,
                    help="agent: reconnect after this long without a body byte (0: only "
                         "QUIC's idle timeout ends a dead connection)")
    ap.add_argument("--idle-timeout", type=float, default=60.0, help="QUIC idle timeout (s)")
    ap.add_argument("-n", type=int, default=1, help="many: connections")
    ap.add_argument("--window", type=int, default=64, help="many: opening at once")
    a = ap.parse_args(argv)
    if a.cmd == "fetch":
        try:
            r = asyncio.run(fetch(a.host, a.port, a.size, a.seed, a.timeout))
        except (OSError, ConnectionError, TimeoutError) as e:
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        r["sha_ok"] = r.get("sha256") == generated_sha256(a.size, a.seed)
        print(json.dumps(r), flush=True)
        return 0 if r.get("ok") else 1
    if a.cmd == "agent":
        r = asyncio.run(agent(a.host, a.port, a.size, a.seed, a.mark, a.timeout,
                              a.io_timeout or None, a.idle_timeout))
        _say(event="done", **r)
        return 0 if r["byte_exact"] else 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.n + 1024)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    asyncio.run(many(a.host, a.port, a.n, a.size, a.seed, a.window, a.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
