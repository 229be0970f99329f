#!/usr/bin/env python3
"""State caching: server CPU per request with the verified-continuation cache on vs off.

Same run, same pooled requests (bench_core.build_pool: NORMAL requests in congestion avoidance,
one 1448-byte packet each), fresh servers, rounds interleaved off/on so machine noise hits both:

1. `fresh`   — every continuation once (a real transfer): the cache can only miss;
2. `replayed` — every request delivered twice (a duplicating link, a replay flood): the second
   copy hits, skips the MAC and is dropped as a replay;
3. `derived` — the other soft-state cache the paper's servers keep, state re-derived from a
   connection's user continuation: the handler's cache of opened (AES-GCM) ucont blobs, on vs
   off (the continuation cache off in both).

Measures only, asserts nothing. From the repository root:

    .venv/bin/python benchmarks/bench_cache.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_core  # noqa: E402
from bench_core import CLIENT_IP, SECRET, SERVER_IP, SERVER_PORT, _meta, build_pool  # noqa: E402

from trickles_kit.apps.generated import Generated  # noqa: E402
from trickles_kit.bench.meta import add_output_args, write_result  # noqa: E402
from trickles_kit.core.server import ServerConfig, ServerEngine  # noqa: E402


class _NoCache(dict):
    """A dict that never keeps anything: the handler re-opens every user continuation."""

    def __setitem__(self, key, value) -> None:
        pass


def _server(entries: int, app_cache: bool = True) -> ServerEngine:
    gen = Generated()
    if not app_cache:
        gen._opened = _NoCache()
    srv = ServerEngine(SECRET, gen, SERVER_IP, SERVER_PORT,
                       ServerConfig(initial_ssthresh=64, state_cache=entries))
    gen.attach(srv)
    return srv


def _run(items: list[tuple[bytes, float]], entries: int, app_cache: bool = True) -> dict:
    srv = _server(entries, app_cache)
    recv = srv.receive
    gc.collect()
    gc.disable()
    try:
        c0 = time.process_time()
        for seg, t in items:
            recv(seg, CLIENT_IP, t)
        dc = time.process_time() - c0
    finally:
        gc.enable()
    c = srv.counters
    out = {"cpu_us_per_request": dc / len(items) * 1e6, "tx": c["tx"],
           "replay_drops": c["drop.replay"], "other_drops": c["drop"] - c["drop.replay"]}
    if srv.state_cache is not None:
        out["cache"] = srv.state_cache.stats()
    return out


def _compare(items: list, rounds: int, a: dict, b: dict) -> dict:
    ra, rb = [], []
    last = {}
    for _ in range(rounds):
        x = _run(items, **a)
        y = _run(items, **b)
        ra.append(x["cpu_us_per_request"])
        rb.append(y["cpu_us_per_request"])
        last = {"a": x, "b": y}
    ma, mb = statistics.median(ra), statistics.median(rb)
    for r in last.values():
        r.pop("cpu_us_per_request")
    return {
        "requests": len(items),
        "rounds": rounds,
        "a_median_cpu_us": round(ma, 3), "b_median_cpu_us": round(mb, 3),
        "a_rounds_us": [round(x, 3) for x in ra], "b_rounds_us": [round(x, 3) for x in rb],
        "saving_pct": round((ma - mb) / ma * 100, 2),
        "a_counters": last["a"], "b_counters": last["b"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2,000 requests, 2 rounds: a smoke run (a few seconds)")
    ap.add_argument("--entries", type=int, default=4096, help="cache entries when on")
    add_output_args(ap, "cache.json")
    a = ap.parse_args(argv)
    n, rounds = (2_000, 2) if a.quick else (30_000, 7)
    t0 = time.perf_counter()
    # bench_core asks for GEN 2^32, one byte over Generated's limit (its SYN is dropped and the
    # pool comes back empty); the largest valid size gives the same workload
    bench_core.GEN_SIZE = min(bench_core.GEN_SIZE, Generated().max_size)
    pool, info = build_pool(n)
    if not pool:
        raise SystemExit(f"no pooled requests: {info}")
    replayed = [x for item in pool for x in (item, (item[0], item[1] + 1e-6))]
    off, on = {"entries": 0}, {"entries": a.entries}
    res = {
        "meta": _meta([os.path.relpath(__file__), *argv], "quick" if a.quick else "full"),
        "unit": "process CPU microseconds per request, median of interleaved rounds "
                "(a = baseline, b = optimization)",
        "pool": info,
        "fresh": {"a": "cache off", "b": f"cache on ({a.entries} entries)",
                  **_compare(pool, rounds, off, on)},
        "replayed": {"a": "cache off", "b": f"cache on ({a.entries} entries)",
                     "what": "each request twice; the second copy is a replay",
                     **_compare(replayed, rounds, off, on)},
        "derived": {"a": "handler ucont cache off", "b": "handler ucont cache on",
                    "what": "the Generated handler's cache of opened user continuations "
                            "(AES-GCM open skipped on a hit); continuation cache off",
                    **_compare(pool, rounds, {"entries": 0, "app_cache": False}, off)},
    }
    res["meta"]["benchmark_wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(a.out, res)
    for k in ("fresh", "replayed", "derived"):
        r = res[k]
        print(f"{k:>9}: {r['a']}: {r['a_median_cpu_us']:.2f} us, {r['b']}: "
              f"{r['b_median_cpu_us']:.2f} us ({r['saving_pct']:+.1f} % saved)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
