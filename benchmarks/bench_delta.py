#!/usr/bin/env python3
"""Delta-encoded continuations: continuation bytes per data packet and per request, before/after.

One simulated transfer per mode and case (same seed, size and loss), recorded as a pcap of the
server's view; every segment's continuation is measured on the wire (labs.compression). Modes:
`off` (the default format), `pairs` (delayed-ack pairs, FULL2 + 18-byte PAIR), `hash` (HASHED
answers, COMPACT requests), `both`. The target (issue 8) is >= 30 % less.

Measures only, asserts nothing. From the repository root:

    .venv/bin/python benchmarks/bench_delta.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_core import _meta  # noqa: E402

from trickles_kit.labs.compression import compare, table  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 MB instead of 10 MB")
    ap.add_argument("--seed", type=int, default=1)
    # a run writes to reports/ (git-ignored); the committed result changes only with --record
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "delta.json"),
                    help="JSON output path (default: %(default)s)")
    ap.add_argument("--record", dest="out", action="store_const",
                    const=str(REPO / "benchmarks" / "results" / "delta.json"),
                    help="refresh the committed benchmarks/results/delta.json")
    a = ap.parse_args(argv)
    size = 1_000_000 if a.quick else 10_000_000
    res: dict = {"meta": _meta([sys.argv[0], *argv], "quick" if a.quick else "full"),
                 "options": {"size": size, "seed": a.seed}, "cases": {}}
    for loss in (0.0, 0.01):
        t0 = time.perf_counter()
        r = compare(size, loss, a.seed)
        r["wall_seconds"] = round(time.perf_counter() - t0, 2)
        res["cases"][f"loss_{loss:g}"] = r
        print(table(r), flush=True)
        print()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {os.path.relpath(a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
