"""The paper's optimizations, each against its absence (notebook 08, benchmarks, tests).

* state caching: server CPU per request and hit rate with the verified-continuation cache on and
  off, in the same run (`cache_compare`);
* SKIP: a `/dyn` response whose length is only known at its end, served into reserved ranges
  (`dyn_fetch`);
* parallel requests: n pipelined GETs on one connection against n fetches one after another,
  optionally served by two replicas that share the secret, the link alternating packets
  between them (`parallel_compare`).

Everything runs in the deterministic simulator with the real WebServer; nothing sleeps.
"""

from __future__ import annotations

import random
import tempfile
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from trickles_kit.apps.dynamic import Dechunker, DynSpec, dyn_target
from trickles_kit.apps.generated import generated_sha256
from trickles_kit.apps.http import parse_response_head
from trickles_kit.apps.parallel import PipelineSplitter, build_request, fetch_parallel, lanes_for
from trickles_kit.apps.sim import LinkConfig, SimNetwork, build_world
from trickles_kit.apps.web import WebServer
from trickles_kit.core.client import ClientEngine
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.labs.checks import _as_int, _no, _ok
from trickles_kit.net.ip import aton
from trickles_kit.net.runner import ServerLoop
from trickles_kit.net.udp import UdpTransport

SECRET = bytes(range(32))


class Replicas:
    """Several ServerEngines sharing one secret behind one address; requests alternate."""

    def __init__(self, engines: list[ServerEngine]) -> None:
        self.engines = engines
        self._turn = 0
        self.served = [0] * len(engines)

    def receive(self, segment: bytes, client_ip: bytes, now: float) -> list[bytes]:
        i = self._turn % len(self.engines)
        self._turn += 1
        out = self.engines[i].receive(segment, client_ip, now)
        self.served[i] += len(out)
        return out

    @property
    def counters(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for e in self.engines:
            total.update(e.counters)
        return total


def web_servers(root: str | Path, replicas: int = 1, state_cache: int = 0,
                secret: bytes = SECRET) -> tuple[Replicas, list[WebServer]]:
    """`replicas` WebServer engines on the simulator's service address, one shared secret."""
    engines, webs = [], []
    for _ in range(replicas):
        web = WebServer(root)
        eng = ServerEngine(secret, web, SimNetwork.SERVER_IP, SimNetwork.SERVER_PORT,
                           ServerConfig(state_cache=state_cache))
        web.attach(eng)
        engines.append(eng)
        webs.append(web)
    return Replicas(engines), webs


@dataclass
class SimFetch:
    ok: bool
    data: bytes
    seconds: float
    served_by: list[int]
    server: dict = field(default_factory=dict)
    client: dict = field(default_factory=dict)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, in-order bytes)


def sim_fetch(request: bytes, *, lanes: list[tuple[int, int]] | None = None, replicas: int = 1,
              loss: float = 0.0, seed: int = 1, link: LinkConfig | None = None,
              state_cache: int = 0, root: str | Path | None = None,
              time_limit: float = 600.0) -> SimFetch:
    """One connection asking `request` of a simulated WebServer (or replicas); the bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        reps, _ = web_servers(root or tmp, replicas, state_cache)
        down = link or LinkConfig(loss=loss)
        up = LinkConfig(delay=down.delay, rate=down.rate, loss=down.loss)
        world = build_world(seed, reps, request, down=down, up=up,  # type: ignore[arg-type]
                            keep_data=True, engine_cls=_TimedReads)  # (replicas: duck-typed)
        cl, sim = world.client, world.sim
        assert isinstance(cl, _TimedReads)
        if lanes:
            cl.set_lanes(lanes)
        arrivals: list[tuple[float, int]] = []
        cl.arrivals, cl.clock = arrivals, lambda: sim.now
        world.run(time_limit)
        return SimFetch(cl.done, bytes(world.net.data[world.address]), round(world.seconds(), 6),
                        reps.served, dict(reps.counters), dict(cl.counters), arrivals)


class _TimedReads(ClientEngine):
    """A client that notes when each in-order piece reached the application (a subclass, not
    a patched `read`: the compiled engine's methods cannot be replaced on an instance)."""

    arrivals: list[tuple[float, int]]
    clock: Callable[[], float]

    def read(self, now: float | None = None) -> bytes:
        chunk = super().read(now)
        if chunk:
            self.arrivals.append((self.clock(), len(chunk)))
        return chunk


def response_times(data: bytes, arrivals: list[tuple[float, int]],
                   offset: float = 0.0) -> list[dict]:
    """When each pipelined response's first and last byte reached the application.

    `arrivals` are a SimFetch's (time, bytes) in-order deliveries of `data`; the stream is cut
    into HTTP responses as `PipelineSplitter` does. Times are shifted by `offset` (a sequential
    fetch starts when the previous one is done); `done_s` is None for an incomplete response.
    """
    ends = list(accumulate(n for _, n in arrivals))  # stream position after each delivery

    def at(pos: int) -> float | None:  # when the byte at `pos` was delivered
        i = bisect_right(ends, pos)
        return round(offset + arrivals[i][0], 6) if i < len(arrivals) else None

    split = PipelineSplitter()
    split(data)
    out: list[dict] = []
    start = 0
    for i, part in enumerate(split.parts):
        head = parse_response_head(data, start)
        end = start + (head.size if head else 0) + part.bytes
        out.append({"request": i, "start_s": round(offset, 6), "first_byte_s": at(start),
                    "done_s": at(end - 1) if part.complete else None})
        start = end
    return out


# ---------------------------------------------------------------------- SKIP
def dyn_fetch(seed: int = 3, records: int = 200, stop: int = 0, reserve: int = 4096,
              loss: float = 0.0, sim_seed: int = 1) -> dict:
    """Fetch /dyn in the simulator: byte-exact against the spec, with how much was skipped."""
    spec = DynSpec(seed, records, stop, reserve)
    target = dyn_target(seed, records, stop, reserve)
    r = sim_fetch(f"GET {target} HTTP/1.1\r\nHost: sim\r\n\r\n".encode(), loss=loss,
                  seed=sim_seed)
    head = parse_response_head(r.data)
    body = bytearray()
    dech = Dechunker(body.extend)
    dech(r.data[head.size :] if head else b"")
    end = spec.stream_end()
    return {
        "ok": r.ok and r.data == spec.delivered() and bytes(body) == spec.body() and dech.done,
        "records": spec.last() + 1,
        "body_bytes": len(body),
        "stream_bytes": end,
        "delivered_bytes": len(r.data),
        "skipped_bytes": end - len(r.data),
        "seconds": r.seconds,
        "server_packets": r.server.get("tx", 0),
    }


# ---------------------------------------------------------------------- parallel
def gen_paths(n: int, size: int, seed: int = 100) -> list[str]:
    return [f"/gen?size={size}&seed={seed + i}" for i in range(n)]


def parallel_compare(n: int = 8, size: int = 100_000, replicas: int = 1, loss: float = 0.0,
                     seed: int = 1, delay: float = 0.010, bits: int = 26) -> dict:
    """n GETs pipelined on one connection (one slice each) against n connections in a row.

    Sequential: each fetch starts when the previous one is done (a fresh handshake and slow
    start each time), so its time is the sum. Times are simulated seconds; the two
    `*_timeline` lists say when each response started and reached the application in full.
    """
    paths = gen_paths(n, size)
    link = LinkConfig(delay=delay, loss=loss)
    req = build_request("sim", paths, bits)
    par = sim_fetch(req, lanes=lanes_for(n, bits), replicas=replicas, link=link, seed=seed)
    split = PipelineSplitter()
    split(par.data)
    want = [generated_sha256(size, 100 + i) for i in range(n)]
    par_ok = par.ok and [p.sha256 for p in split.parts] == want and all(
        p.complete and p.status == 200 for p in split.parts)
    seq_secs, seq_ok = 0.0, True
    seq_timeline: list[dict] = []
    for i, p in enumerate(paths):
        r = sim_fetch(f"GET {p} HTTP/1.1\r\nHost: sim\r\n\r\n".encode(), replicas=replicas,
                      link=link, seed=seed + i)
        one = PipelineSplitter()
        one(r.data)
        seq_ok &= r.ok and len(one.parts) == 1 and one.parts[0].sha256 == want[i]
        seq_timeline += [{**row, "request": i}
                         for row in response_times(r.data, r.arrivals, offset=seq_secs)]
        seq_secs += r.seconds
    return {
        "requests": n, "size": size, "replicas": replicas, "loss": loss, "rtt_s": 2 * delay,
        "parallel_s": par.seconds, "sequential_s": round(seq_secs, 6),
        "speedup": round(seq_secs / par.seconds, 3) if par.seconds else None,
        "parallel_ok": par_ok, "sequential_ok": seq_ok,
        "packets_by_replica": par.served_by,
        # per request: start, first and last byte at the application (simulated seconds)
        "parallel_timeline": response_times(par.data, par.arrivals),
        "sequential_timeline": seq_timeline,
    }


# ---------------------------------------------------------------------- state cache
def cache_compare(size: int = 300_000, duplicate: float = 0.3, seed: int = 5,
                  entries: int = 4096) -> dict:
    """The same simulated transfer with the cache off and on: hit rate and server CPU.

    `duplicate` makes the uplink deliver requests twice: the second copy of a continuation is
    the case a verified-continuation cache can answer (it is then dropped as a replay).
    """
    out: dict = {}
    for name, n in (("off", 0), ("on", entries)):
        with tempfile.TemporaryDirectory() as tmp:
            reps, _ = web_servers(tmp, 1, n)
            eng = reps.engines[0]
            world = build_world(seed, eng, f"GET /gen?size={size}&seed=1 HTTP/1.1\r\n\r\n"
                                .encode(), down=LinkConfig(), up=LinkConfig(duplicate=duplicate),
                                isn=random.Random(seed).getrandbits(32))
            recv = eng.receive
            spent = [0.0]

            def timed(seg: bytes, cip: bytes, now: float, recv=recv, spent=spent) -> list:
                t0 = time.process_time()
                try:
                    return recv(seg, cip, now)
                finally:
                    spent[0] += time.process_time() - t0

            eng.receive = timed  # type: ignore[method-assign]
            world.run(600)
            c = eng.counters
            sc = eng.state_cache.stats() if eng.state_cache is not None else None
            out[name] = {"ok": world.client.done, "requests": c["rx"],
                         "replay_drops": c["drop.replay"],
                         "server_cpu_us_per_request": round(spent[0] / max(c["rx"], 1) * 1e6, 2),
                         "cache": sc}
    return out


__all__ = ["Replicas", "SimFetch", "UdpWebServer", "cache_compare", "checks", "dyn_fetch",
           "gen_paths", "parallel_compare", "response_times", "sim_fetch", "web_servers",
           "wire_parallel_compare"]


# ---------------------------------------------------------------------- real wire (UDP)
class UdpWebServer:
    """A WebServer on UDP 127.0.0.1:<ephemeral> in a thread (tests, benchmarks, notebook)."""

    def __init__(self, root: str | Path, state_cache: int = 0) -> None:
        import os
        import threading


        self.tr = UdpTransport("127.0.0.1", 0)
        self.port = self.tr.port
        self.web = WebServer(root)
        self.engine = ServerEngine(os.urandom(32), self.web, aton("127.0.0.1"), self.port,
                                   ServerConfig(state_cache=state_cache))
        self.web.attach(self.engine)
        self.loop = ServerLoop(self.engine, self.tr)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def url(self, target: str) -> str:
        return f"http://127.0.0.1:{self.port}{target}"

    def stop(self) -> None:
        self.loop.stop()
        self.thread.join(5)
        self.tr.close()
        self.web.close()

    def __enter__(self) -> UdpWebServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wire_parallel_compare(n: int = 8, size: int = 200_000, timeout: float = 60.0) -> dict:
    """n GETs over UDP loopback: pipelined on one connection vs one connection after another."""
    want = [generated_sha256(size, 100 + i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp, UdpWebServer(tmp) as srv:
        urls = [srv.url(p) for p in gen_paths(n, size)]
        par = fetch_parallel(urls, "udp", True, timeout=timeout)
        seq = fetch_parallel(urls, "udp", False, timeout=timeout)
    return {
        "requests": n, "size": size,
        "parallel_s": par.seconds, "sequential_s": seq.seconds,
        "speedup": round(seq.seconds / par.seconds, 3) if par.seconds else None,
        "parallel_ok": par.ok and [p.sha256 for p in par.parts] == want,
        "sequential_ok": seq.ok and [p.sha256 for p in seq.parts] == want,
    }


# ---------------------------------------------------------------------- notebook self-checks
# Hints point at where to look or ask a question; they never print the expected value.
def _check_cache_hits(answer: object, result: dict) -> str:
    """How many cache hits did the cache-on run have (the duplicated requests it recognised)?"""
    want = (result.get("on", {}).get("cache") or {}).get("hits")
    if answer is None:
        return _no("set MY_HITS to the number of hits of the cache-on run")
    if _as_int(answer) is None:
        return _no(f"answer with a whole number of requests, not {answer!r}")
    if answer == want:
        return _ok(f"{want} hits, exactly the {result['on']['replay_drops']} replay drops: "
                   "every hit was a duplicate, and each one was still dropped")
    return _no(f"{answer!r} is not it. The cache-on run keeps statistics of its cache "
               "(cache['on']): which of them counts requests the cache recognised?")


def _check_skipped(answer: object, result: dict) -> str:
    """How many stream bytes were skipped rather than sent?"""
    if answer is None:
        return _no("set MY_SKIPPED to a whole number of bytes")
    if _as_int(answer) is None:
        return _no(f"answer with a whole number of bytes, not {answer!r}")
    want = result["skipped_bytes"]
    if answer == want:
        return _ok(f"{answer} bytes of reservations were never sent, one SKIP per record")
    return _no(f"{answer!r} is {'too many' if answer > want else 'too few'}. How long is the "
               "whole reserved stream, and how many of its bytes did the client receive? "
               "(both are fields of dyn)")


def _check_faster(answer: object, result: dict) -> str:
    """Which was faster, 'parallel' or 'sequential'?"""
    want = "parallel" if result["parallel_s"] < result["sequential_s"] else "sequential"
    if answer not in ("parallel", "sequential"):
        return _no("set MY_FASTER to 'parallel' or 'sequential'")
    if answer == want:
        return _ok(f"{want}: one handshake and one window instead of {result['requests']}")
    return _no("which run's last response reached the application first? Read the end of "
               "each row in the timeline figure (or the two *_s times of par)")


class checks:  # noqa: N801 - a namespace the notebook reads like trickles_kit.labs.checks
    """Self-checks of notebook 08; each returns a verdict starting "OK — " or "Not yet — "."""

    check_cache_hits = staticmethod(_check_cache_hits)
    check_skipped = staticmethod(_check_skipped)
    check_faster = staticmethod(_check_faster)
