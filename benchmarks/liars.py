#!/usr/bin/env python3
"""Goodput of each misbehaving client (trickles_kit/testing/liars.py) against an honest one.

Every client fetches the same generated object from the real ServerEngine in the simulator,
over the same path: `KeyedLossLink`s decide each packet's fate from its bytes, so the honest
client and a liar meet the same losses wherever their traffic is the same (see
tests/core/test_liars.py). Two paths, each at several loss rates:

* `down`:    100 Mb/s, 10 ms each way; loss on the downlink only; uplink lossless, no rate limit.
* `two_way`: the same, with the same loss rate on the uplink too.

Measures and records; never asserts. Run from the repository root:

    .venv/bin/python benchmarks/liars.py            # 5 seeds x 4 loss rates x 2 paths, ~2 min
    .venv/bin/python benchmarks/liars.py --quick    # 1 seed, loss 2 %, 400 KB: a smoke run

Writes reports/benchmarks/liars.json (`--record`: the committed benchmarks/results/liars.json;
command, date, machine, code, options, every run and the per-cell means) and prints a table:
mean goodput (Mb/s, virtual time), ratio to the honest client on the same cells, runs
completed, and what the server counted against the client.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script without an installed package
    sys.path.insert(0, str(REPO))

from trickles_kit.apps.sim import LinkConfig  # noqa: E402
from trickles_kit.bench.meta import add_output_args, write_result  # noqa: E402
from trickles_kit.core.client import ClientEngine  # noqa: E402
from trickles_kit.testing.liars import LIARS, WEAKNESSES, keyed_links, run_client  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import _meta  # noqa: E402

CLIENTS = {"honest": (ClientEngine, {}), **LIARS, **WEAKNESSES}
COUNTED = ("nonce_fail", "drop.nonce", "drop.mac", "drop.sack_shape", "drop.sack_count",
           "drop.replay", "drop.key_epoch", "recovery", "retransmit", "slowstart", "tx")


def _one(name: str, path: str, loss: float, seed: int, size: int) -> dict:
    cls, kw = CLIENTS[name]
    down = LinkConfig(loss=loss)
    up = LinkConfig(loss=loss if path == "two_way" else 0.0, rate=None)
    r = run_client(cls, size, seed, link_factory=keyed_links(down, up, seed), time_limit=120.0,
                   name=name, **kw)
    return {
        "client": name, "path": path, "loss": loss, "seed": seed,
        "ok": r.ok, "exact_prefix": r.exact_prefix, "bytes": r.bytes, "phase": r.phase,
        "seconds": r.seconds, "goodput_bps": r.goodput_bps,
        "server": {k: r.server.get(k, 0) for k in COUNTED},
        "lies": {k: v for k, v in r.client.items() if k.startswith("lie.")},
        "timeouts": r.client.get("timeouts", 0),
        "links_lost": {"down": r.links["down"]["lost"], "up": r.links["up"]["lost"]},
        "wall_seconds": r.wall_seconds,
    }


def _cells(runs: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["path"], r["loss"]) for r in runs})
    for path, loss in keys:
        cell = [r for r in runs if r["path"] == path and r["loss"] == loss]
        honest = statistics.mean(r["goodput_bps"] for r in cell if r["client"] == "honest")
        for name in CLIENTS:
            rs = [r for r in cell if r["client"] == name]
            if not rs:
                continue
            mean = statistics.mean(r["goodput_bps"] for r in rs)
            out.append({
                "path": path, "loss": loss, "client": name, "runs": len(rs),
                "completed": sum(r["ok"] for r in rs),
                "all_delivered_bytes_exact": all(r["exact_prefix"] for r in rs),
                "goodput_mean_mbps": round(mean / 1e6, 3),
                "goodput_per_seed_mbps": [round(r["goodput_bps"] / 1e6, 3) for r in rs],
                "ratio_to_honest": round(mean / honest, 3) if honest else None,
                "weakness": name in WEAKNESSES,
                "server_counted": {k: sum(r["server"][k] for r in rs) for k in COUNTED},
                "lies": {k: sum(r["lies"].get(k, 0) for r in rs)
                         for k in sorted({k for r in rs for k in r["lies"]})},
            })
    return out


def _table(cells: list[dict]) -> str:
    lines = [f"{'path':8} {'loss':>5} {'client':20} {'Mb/s':>7} {'x honest':>8} {'done':>5}  "
             "server counted (summed over seeds)"]
    for c in cells:
        sc = c["server_counted"]
        caught = ", ".join(f"{k}={sc[k]}" for k in ("nonce_fail", "drop.mac", "drop.sack_shape",
                                                     "drop.sack_count", "drop.replay") if sc[k])
        extra = ", ".join(f"{k}={sc[k]}" for k in ("recovery", "retransmit", "slowstart"))
        lines.append(f"{c['path']:8} {c['loss']:5.2f} {c['client']:20} "
                     f"{c['goodput_mean_mbps']:7.2f} {c['ratio_to_honest']:8.2f} "
                     f"{c['completed']:>2}/{c['runs']:<2}  {caught or '-'}  [{extra}]")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_output_args(ap, "liars.json")
    ap.add_argument("--quick", action="store_true",
                    help="1 seed, loss 2 %%, 400 KB, every client on both paths (a smoke run)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--size", type=int, default=1_000_000, help="bytes per transfer")
    ap.add_argument("--losses", default="0,0.01,0.02,0.05", help="comma-separated rates")
    ap.add_argument("--paths", default="down,two_way")
    ap.add_argument("--only", default="", help="comma-separated client names (honest is added)")
    args = ap.parse_args(argv[1:])
    if args.quick:
        args.seeds, args.size, args.losses = 1, 400_000, "0.02"
    losses = [float(x) for x in args.losses.split(",")]
    paths = args.paths.split(",")
    names = list(CLIENTS) if not args.only else ["honest"] + [
        n for n in args.only.split(",") if n != "honest"]
    meta = _meta(argv, "liars")
    t0 = time.perf_counter()
    runs = []
    for path in paths:
        for loss in losses:
            for name in names:
                for seed in range(1, args.seeds + 1):
                    runs.append(_one(name, path, loss, seed, args.size))
            print(f"  {path} loss {loss}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    cells = _cells(runs)
    meta["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res = {
        "meta": meta,
        "options": {"seeds": list(range(1, args.seeds + 1)), "size_bytes": args.size,
                    "losses": losses, "paths": paths, "clients": names,
                    "path_model": "KeyedLossLink both ways; downlink 100 Mb/s, 10 ms, queue 1000; "
                                  "uplink 10 ms, no rate limit; `two_way` loses on the uplink "
                                  "too; goodput = bytes * 8 / virtual seconds to completion "
                                  "(or to the 120 s limit)"},
        "cells": cells,
        "runs": runs,
    }
    write_result(args.out, res, indent=1)
    print(_table(cells))
    print(f"wrote {args.out} ({meta['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
