#!/usr/bin/env python3
"""Parallel requests: 8 GETs pipelined on one connection (one reserved slice each) against 8
fetches one after another — in the simulator (1 and 2 replicas, with and without loss; virtual
seconds) and over UDP on loopback (wall seconds). Also the SKIP route /dyn, in the simulator.

Measures only, asserts nothing. From the repository root:

    .venv/bin/python benchmarks/bench_parallel.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_core import _meta  # noqa: E402

from trickles_kit.bench.meta import add_output_args, write_result  # noqa: E402
from trickles_kit.labs.optimizations import (  # noqa: E402
    dyn_fetch,
    parallel_compare,
    wire_parallel_compare,
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="100 kB responses, one run of each: a smoke run (a few seconds)")
    add_output_args(ap, "parallel.json")
    a = ap.parse_args(argv)
    size = 100_000 if a.quick else 250_000
    repeats = 1 if a.quick else 5
    t0 = time.perf_counter()
    sim = []
    for replicas in (1, 2):
        for loss in (0.0, 0.01):
            runs = [parallel_compare(8, size, replicas, loss, seed=s, delay=0.010)
                    for s in range(1, repeats + 1)]
            sim.append({
                "replicas": replicas, "loss": loss, "rtt_s": 0.02, "size": size, "requests": 8,
                "parallel_s_median": statistics.median(r["parallel_s"] for r in runs),
                "sequential_s_median": statistics.median(r["sequential_s"] for r in runs),
                "all_ok": all(r["parallel_ok"] and r["sequential_ok"] for r in runs),
                "packets_by_replica_first_run": runs[0]["packets_by_replica"],
                "runs": runs,
            })
    wire = [wire_parallel_compare(8, size) for _ in range(repeats)]
    dyn = [dyn_fetch(seed=s, records=400, stop=0, reserve=4096, loss=loss, sim_seed=s)
           for s, loss in ((1, 0.0), (2, 0.01))]
    res = {
        "meta": _meta([os.path.relpath(__file__), *argv], "quick" if a.quick else "full"),
        "what": "8 GET /gen responses of `size` bytes: pipelined on one connection with one "
                "2^26-byte slice each, served concurrently (parallel), vs 8 connections one "
                "after another (sequential). Simulator: virtual seconds, 100 Mbit/s, 20 ms RTT; "
                "2 replicas = two ServerEngines sharing the secret, requests alternating. "
                "Wire: UDP on 127.0.0.1, server in a thread of the same process, wall seconds.",
        "simulated": sim,
        "udp_loopback": {
            "parallel_s_median": statistics.median(r["parallel_s"] for r in wire),
            "sequential_s_median": statistics.median(r["sequential_s"] for r in wire),
            "all_ok": all(r["parallel_ok"] and r["sequential_ok"] for r in wire),
            "runs": wire,
        },
        "skip_dyn_simulated": dyn,
    }
    res["meta"]["benchmark_wall_s"] = round(time.perf_counter() - t0, 1)
    write_result(a.out, res)
    for s in sim:
        print(f"sim replicas={s['replicas']} loss={s['loss']}: parallel "
              f"{s['parallel_s_median']:.3f} s, sequential {s['sequential_s_median']:.3f} s, "
              f"ok {s['all_ok']}")
    u = res["udp_loopback"]
    print(f"udp loopback: parallel {u['parallel_s_median']:.3f} s, sequential "
          f"{u['sequential_s_median']:.3f} s, ok {u['all_ok']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
