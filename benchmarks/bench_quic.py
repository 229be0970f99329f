#!/usr/bin/env python3
"""QUIC (aioquic HTTP/3) as the third baseline: goodput per RTT, CPU per MB, memory per
connection and failover, against Trickles and Linux TCP in the same run (`trickles_kit/bench/
quic.py` says how each is measured; `trickles bench quic` runs the same at one RTT).

Needs root (namespaces, raw sockets) and the `quic` extra (aioquic). From the repository root:

    nice -n 19 .venv/bin/python benchmarks/bench_quic.py [--quick] [--rtt 0,20,50] [--record]

Writes reports/quic_baseline.json, or benchmarks/results/quic_baseline.json with --record.
Measures only; the target (Trickles' memory per connection < 5 % of QUIC's) is printed as
met/MISSED.

`--loopback` runs only issue 17's anchor instead, in about a minute and without namespaces:
server MB per CPU-second of Trickles (UDP, and raw IP as root) and QUIC on 127.0.0.1, the
transfers interleaved in one run (`trickles_kit/bench/quic_loopback.py` says how); it writes
reports/quic_loopback.json (benchmarks/results/ with --record). Target: Trickles >= 2.5x QUIC.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trickles_kit.bench import quic, quic_loopback  # noqa: E402
from trickles_kit.bench.meta import close_meta, meta  # noqa: E402
from trickles_kit.services.quic_failover import compare  # noqa: E402

RESULT = "quic_baseline.json"
LOOPBACK_RESULT = "quic_loopback.json"


def loopback(a: argparse.Namespace) -> int:
    """The loopback anchor alone: server MB per CPU-second, Trickles and QUIC, one run."""
    t0 = time.perf_counter()
    cmd = ["benchmarks/bench_quic.py", "--loopback", *(["--quick"] if a.quick else []),
           *([f"--size={a.size}"] if a.size else []),
           *([f"--repeats={a.repeats}"] if a.repeats else [])]
    res = {"meta": meta(cmd, "quick" if a.quick else "full"),
           **quic_loopback.run(a.quick, a.size, a.repeats)}
    close_meta(res, "quick" if a.quick else "full", t0)
    out = (REPO / "benchmarks" / "results" / LOOPBACK_RESULT if a.record
           else a.out.with_name(LOOPBACK_RESULT))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    for k, m in res["median"].items():
        print(f"bench_quic --loopback: {k}: {m['server_mb_per_cpu_s']} MB per server "
              f"CPU-second, {m['mb_per_s']} MB/s", file=sys.stderr)
    for k, r in res["server_mb_per_cpu_s_over_quic"].items():
        print(f"bench_quic --loopback: {k} = {r} (target {res['target_ratio']}: "
              f"{'met' if r >= res['target_ratio'] else 'MISSED'})", file=sys.stderr)
    print(f"bench_quic: wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one rate, one repeat, small levels")
    ap.add_argument("--rtt", default="0", help="comma-separated idle RTTs in ms (default 0)")
    ap.add_argument("--out", type=Path, default=Path("reports") / RESULT)
    ap.add_argument("--record", action="store_true",
                    help=f"write benchmarks/results/{RESULT} instead of --out")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--loopback", action="store_true",
                    help="only server MB per CPU-second on loopback, Trickles and QUIC")
    ap.add_argument("--size", type=int, help="--loopback: bytes per transfer")
    ap.add_argument("--repeats", type=int, help="--loopback: transfers per kind")
    a = ap.parse_args(argv)
    if a.loopback:
        return loopback(a)
    rtts = [float(x) for x in a.rtt.split(",") if x.strip()]
    out = REPO / "benchmarks" / "results" / RESULT if a.record else a.out
    cmd = ["benchmarks/bench_quic.py", *(["--quick"] if a.quick else []),
           *([f"--rtt={a.rtt}"] if rtts != [0.0] else []), *(["--record"] if a.record else [])]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tk-bench-quic-") as d:
        res = quic.run(a.quick, Path(d), a.verbose, failover=compare, rtts=rtts, argv=cmd)
    close_meta(res, "quick" if a.quick else "full", t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    for t in res["targets"]:
        print(f"bench_quic: target {'met' if t['met'] else 'MISSED'}: {t['target']} "
              f"(got {t['got']})", file=sys.stderr)
    print(f"bench_quic: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
