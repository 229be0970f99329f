"""The Trickles client child of `bench.memory`: many connections in one ClientHost, parked.

`python -m trickles_kit.bench.memory trickles-client ...` runs `trickles_client` in the client
namespace. It opens every connection, parks each one as soon as its first body bytes arrive
(its segments held in the process, its timers stopped: the server sees a client that stopped
asking) and says so on stdout; on "resume" it lets them finish and counts the byte-exact bodies;
on "close" it closes them. One JSON line per phase, the protocol `tcpmany.client_main` speaks
for TCP.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from trickles_kit.apps.fetch import HttpBody
from trickles_kit.apps.generated import generated_sha256
from trickles_kit.net.ip import aton
from trickles_kit.net.raw import RawTransport
from trickles_kit.net.runner import ClientHost, Connection

SEEDS = 8  # the clients ask for SEEDS different objects (the web app caches one entry each)


class ParkingHost(ClientHost):
    """A ClientHost whose connections can be parked: their segments are held in the process and
    their timers stopped, as if the application had stopped reading; `unpark` hands the held
    segments over in order and restarts the timers."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.parked: dict[int, tuple[Connection, list]] = {}

    def dispatch(self, batch: list[tuple[bytes, bytes, Any]]) -> None:
        if self.parked:
            live = []
            for item in batch:
                seg = item[0]
                held = self.parked.get(int.from_bytes(seg[2:4], "big")) if len(seg) >= 4 else None
                if held is None:
                    live.append(item)
                else:
                    held[1].append(item)
            batch = live
        super().dispatch(batch)

    def park(self, conn: Connection) -> None:
        port = conn.engine.local_port
        if self.conns.pop(port, None) is not None:
            self.parked[port] = (conn, [])

    def unpark(self, k: int) -> int:
        """Hand `k` parked connections back (oldest first); returns how many."""
        items = [(p, self.parked.pop(p)) for p in list(self.parked)[:k]]
        for port, (conn, _) in items:
            self.conns[port] = conn
            conn.timer_at = None  # its heap entries were dropped while parked
        for port, (conn, held) in items:
            if held:
                super().dispatch(held)
            else:
                self._service(port, conn)
        return len(items)


def trickles_client(server: str, local: str, port: int, n: int, size: int, window: int,
                    timeout: float) -> int:
    """The Trickles side of the protocol `tcpmany.client_main` speaks for TCP."""

    if n > 20000:
        raise SystemExit("at most 20,000 connections (the Trickles port space of one host)")
    tr = RawTransport(local)
    host = ParkingHost(tr, aton(server), port)
    seeds = [1 + i % SEEDS for i in range(n)]
    bodies, conns = _open_and_park(host, tr, server, seeds, size, window, timeout)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "resume":
            print(json.dumps(_resume(host, tr, conns, bodies, seeds, size, window, timeout)),
                  flush=True)
        elif cmd == "close":
            break
    host.close(linger=1.0)
    host.shutdown()
    tr.close()
    print(json.dumps({"phase": "closed"}), flush=True)
    return 0


def _open_and_park(host: ParkingHost, tr: RawTransport, server: str, seeds: list[int],
                   size: int, window: int, timeout: float
                   ) -> tuple[list[HttpBody], list[Connection]]:
    """Open a connection per seed, `window` at a time, each parked as soon as its first body
    bytes arrive; prints the "parked" line. The bodies and the connections, in order."""
    n = len(seeds)
    bodies: list[HttpBody] = []
    conns: list[Connection] = []
    to_park: list[Connection] = []

    def sink_for(i: int) -> Callable[[bytes], None]:
        def sink(data: bytes) -> None:
            h = bodies[i]
            before = h.body_bytes
            try:
                h(data)
            except ValueError:
                conns[i].engine.phase = "failed"
                return
            if before == 0 < h.body_bytes < size:
                to_park.append(conns[i])
        return sink

    t0 = time.monotonic()
    end = t0 + timeout
    opened = 0
    while time.monotonic() < end:
        active = sum(1 for c in host.conns.values() if c.finished is None)
        while opened < n and active < window:
            bodies.append(HttpBody(lambda _b: None))
            conns.append(host.open(f"GET /gen?size={size}&seed={seeds[opened]} HTTP/1.1\r\n"
                                   f"Host: {server}\r\n\r\n".encode(), sink_for(opened)))
            opened += 1
            active += 1
        if opened == n and not active:
            break
        host.step(0.05)
        for c in to_park:
            if not c.done and c.engine.phase != "failed":
                host.park(c)
        to_park.clear()
    states: dict[str, int] = {}
    for c in conns:
        st = ("parked" if c.engine.local_port in host.parked else
              "done" if c.done else "failed" if c.failed else "in_progress")
        states[st] = states.get(st, 0) + 1
    print(json.dumps({"phase": "parked", "in_time": time.monotonic() < end,
                      "open_s": round(time.monotonic() - t0, 3), "states": states,
                      "alive": states.get("parked", 0), "requests_sent": tr.counters["tx"],
                      "segments_received": tr.counters["rx"],
                      "held_segments": sum(len(h) for _, h in host.parked.values()),
                      "body_bytes_read": sum(b.body_bytes for b in bodies)}), flush=True)
    return bodies, conns


def _resume(host: ParkingHost, tr: RawTransport, conns: list[Connection],
            bodies: list[HttpBody], seeds: list[int], size: int, window: int,
            timeout: float) -> dict:
    """Resume the parked connections in waves, as they were opened; read every body to the
    end and count the byte-exact ones: the "idle" line."""
    t1 = time.monotonic()
    tx0 = tr.counters["tx"]
    ok = False
    end = t1 + timeout
    while time.monotonic() < end:
        active = sum(1 for c in host.conns.values() if c.finished is None)
        if host.parked and active < window:
            host.unpark(window - active)
        elif not active:
            ok = True
            break
        host.step(0.05)
    exact = {s: generated_sha256(size, s) for s in set(seeds)}
    good = sum(1 for i, c in enumerate(conns) if c.done and bodies[i].status == 200
               and bodies[i].body_bytes == size
               and bodies[i].sha.hexdigest() == exact[seeds[i]])
    return {"phase": "idle", "in_time": ok, "resume_s": round(time.monotonic() - t1, 3),
            "byte_exact": good, "requests_sent_resume": tr.counters["tx"] - tx0}
