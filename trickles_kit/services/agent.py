"""The client side of a services demo, run inside the client namespace.

    python -m trickles_kit.services.agent trickles|tcp URL --size N --seed S [--mark BYTES]

It fetches `/gen?size=N&seed=S` and prints JSON lines on stdout, with wall-clock times (every
namespace shares the clock, so they line up with the router's captures):

* `{"event": "start", "t": ...}` when the request goes out;
* `{"event": "mark", "t": ..., "bytes": ...}` once `--mark` body bytes have arrived — the
  orchestrator's cue to kill a replica or move a route mid-transfer;
* for TCP, `{"event": "fail", ...}` when the connection dies (reset, early close, timeout) and
  `{"event": "resume", ...}` for the first byte of the Range request that picks up from there;
* `{"event": "done", ...}` with the byte count, whether the body is byte-exact, and the times.

Trickles needs no resume logic: the same connection simply continues.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from trickles_kit.apps.fetch import fetch
from trickles_kit.apps.generated import generated_bytes
from trickles_kit.bench import tcphttp
from trickles_kit.core.client import ClientConfig


def _say(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


class _Body:
    """Counts and hashes body bytes, and says "mark" once."""

    def __init__(self, mark: int | None) -> None:
        self.n = 0
        self.sha = hashlib.sha256()
        self.mark = mark
        self.first_t: float | None = None
        self.last_t: float | None = None

    def __call__(self, data: bytes) -> None:
        now = time.time()
        if self.first_t is None:
            self.first_t = now
        self.last_t = now
        self.n += len(data)
        self.sha.update(data)
        if self.mark is not None and self.n >= self.mark:
            self.mark = None
            _say(event="mark", t=now, bytes=self.n)


def run_trickles(url: str, size: int, seed: int, mark: int | None, local: str | None,
                 mss: int, timeout: float, events: str | None) -> dict:
    body = _Body(mark)
    t0 = time.time()
    _say(event="start", t=t0)
    r = fetch(url, None, "raw", 253, local, None, events, timeout=timeout,
              config=ClientConfig(mss=mss), sink=body)
    return {"ok": r.ok, "status": r.status, "bytes": r.bytes, "sha256": r.sha256,
            "t_start": t0, "t_end": time.time(), "timeouts": r.timeouts,
            "retransmissions": r.retransmissions, "recoveries": r.recoveries, "fails": [],
            # what a slow transfer is made of: losses declared, and those that came after all
            "losses": (r.client or {}).get("losses"),
            "reordered": (r.client or {}).get("reordered")}


def run_tcp(url: str, size: int, seed: int, mark: int | None, timeout: float,
            io_timeout: float) -> dict:
    """GET over Linux TCP; when the connection dies, reconnect with a Range request."""
    parts = urlsplit(url)
    path = parts.path + ("?" + parts.query if parts.query else "")
    body = _Body(mark)
    got = bytearray()
    fails: list[dict] = []
    t0 = time.time()
    _say(event="start", t=t0)
    deadline = time.monotonic() + timeout

    class _Sink(bytearray):
        def __iadd__(self, data):  # type: ignore[override]
            if data and fails and fails[-1]["resumed_t"] is None:
                fails[-1]["resumed_t"] = time.time()  # the Range request's first byte
            body(bytes(data))
            got.extend(data)
            return self

    status = 0
    while time.monotonic() < deadline:
        start = len(got)
        sink = _Sink()
        try:
            status, _ = tcphttp.fetch(parts.hostname or "", parts.port or 80, path, start=start,
                              timeout=io_timeout, sink=sink)
            break
        except OSError as e:  # ConnectionError, reset, timeout, refused
            now = time.time()
            kind = type(e).__name__
            if not fails or fails[-1]["resumed_t"] is not None:
                fails.append({"t": now, "bytes": len(got), "error": kind, "detail": str(e),
                              "last_byte_t": body.last_t, "attempts": 1, "resumed_t": None})
                _say(event="fail", t=now, bytes=len(got), error=kind)
            else:
                fails[-1]["attempts"] += 1
            time.sleep(0.02)
    return {"ok": len(got) == size and status in (200, 206), "status": status,
            "bytes": len(got), "sha256": hashlib.sha256(got).hexdigest(), "t_start": t0,
            "t_end": time.time(), "fails": fails}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trickles_kit.services.agent")
    ap.add_argument("kind", choices=("trickles", "tcp"))
    ap.add_argument("url", help="http://SERVICE:PORT (the path is /gen?size=N&seed=S)")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mark", type=int, help="say 'mark' once this many body bytes arrived")
    ap.add_argument("--local-addr")
    ap.add_argument("--mss", type=int, default=1200)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--io-timeout", type=float, default=5.0,
                    help="TCP: a connection silent this long counts as dead")
    ap.add_argument("--start-at", type=float, help="wall-clock time to start (load runs)")
    ap.add_argument("--events", help="Trickles client events (JSON lines)")
    a = ap.parse_args(argv)
    if a.size <= 0:
        ap.error("--size must be positive")
    url = f"{a.url.rstrip('/')}/gen?size={a.size}&seed={a.seed}"
    if a.start_at:
        time.sleep(max(0.0, a.start_at - time.time()))
    if a.kind == "trickles":
        res = run_trickles(url, a.size, a.seed, a.mark, a.local_addr, a.mss, a.timeout, a.events)
    else:
        res = run_tcp(url, a.size, a.seed, a.mark, a.timeout, a.io_timeout)
    want = hashlib.sha256(generated_bytes(a.seed, 0, a.size)).hexdigest()
    res["byte_exact"] = res["bytes"] == a.size and res["sha256"] == want
    _say(event="done", **res)
    return 0 if res["byte_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
