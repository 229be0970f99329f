#!/usr/bin/env python3
"""QUIC (aioquic HTTP/3) as the third baseline: goodput per RTT, CPU per MB, memory per
connection and failover, against Trickles and Linux TCP in the same run (`trickles_kit/bench/
quic.py` says how each is measured; `trickles bench quic` runs the same at one RTT).

Needs root (namespaces, raw sockets) and the `quic` extra (aioquic). From the repository root:

    nice -n 19 .venv/bin/python benchmarks/bench_quic.py [--quick] [--rtt 0,20,50] [--record]

Writes reports/quic_baseline.json, or benchmarks/results/quic_baseline.json with --record.
Measures only; the target (Trickles' memory per connection < 5 % of QUIC's) is printed as
met/MISSED.
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

from trickles_kit.bench import quic  # noqa: E402
from trickles_kit.bench.meta import close_meta  # noqa: E402
from trickles_kit.services.quic_failover import compare  # noqa: E402

RESULT = "quic_baseline.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one rate, one repeat, small levels")
    ap.add_argument("--rtt", default="0", help="comma-separated idle RTTs in ms (default 0)")
    ap.add_argument("--out", type=Path, default=Path("reports") / RESULT)
    ap.add_argument("--record", action="store_true",
                    help=f"write benchmarks/results/{RESULT} instead of --out")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
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
