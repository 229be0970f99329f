#!/usr/bin/env python3
"""Replay storms and floods against a `trickles serve` process: the long versions.

The same machinery as tests/net/test_storms.py (which it imports), run longer and recorded: the
server runs on raw IP protocol 253 at 127.0.0.1 inside a private network namespace, the load
comes from this process through raw sockets opened in that namespace, and iptables counting
rules measure what crosses the kernel each way. It measures and records; it never asserts.
Needs root. Run from the repository root:

    .venv/bin/python benchmarks/storms.py            # 60 s replay storm, 30 s per flood (~4 min)
    .venv/bin/python benchmarks/storms.py --quick    # 2 s each: a smoke run (~25 s)

Sections: (1) replay storm: every request of one honest fetch resent verbatim at
--replay-rate for --replay-seconds; (2) type flip: captured NORMAL requests resent as SLOWSTART,
each continuation once per 0.1 s bucket (the most an attacker gets out of it), with the
amplification in bytes; (3) garbage flood and (4) SYN flood, flat out from one Python thread for
--flood-seconds, starting once an honest 8 MB fetch is mid-transfer, while honest fetches run one
after another. Each section records the server RSS over time (KiB, sampled every --rss-every
seconds). Results: reports/benchmarks/storms.json (`--record`: the committed
benchmarks/results/storms.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "tests", REPO / "tests" / "net"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_core import _meta  # noqa: E402  (benchmarks/ is sys.path[0] for a script)
from test_storms import (  # noqa: E402
    REQ_SLOWSTART,
    SLOWSTART_BUCKET,
    flood,
    make_www,
    replay_storm,
)

from trickles_kit.bench.meta import add_output_args, write_result  # noqa: E402


def _rss_summary(r: dict) -> dict:
    rss = r["rss_kib"]
    samples = rss["samples"]
    half = [k for _, k in samples[len(samples) // 2 :]]
    return {"before_kib": rss["before"], "after_kib": rss["after"], "peak_kib": rss["peak"],
            "growth_kib": max(rss["after"], rss["peak"]) - rss["before"],
            "second_half_range_kib": max(half) - min(half) if half else None,
            "samples_t_s_kib": samples}


def run_replay(www: Path, tmp: Path, rate: float, seconds: float, every: float) -> dict:
    r = replay_storm(www, tmp, rate=rate, seconds=seconds, rss_every=every, min_sent=0)
    load = r["load"]
    return {
        "what": "every non-SYN request of one honest 200 KB fetch, resent verbatim from the "
                "client's address",
        "target_rate": rate, "achieved_rate": load["rate"],
        # the rate tests/net/test_storms.py once asserted (half the target): recorded, not asserted
        "at_least_half_the_target": load["rate"] >= 0.5 * rate, "seconds": load["seconds"],
        "sent": load["sent"], "reached_server_kernel": r["reached_server"],
        "server_processed": r["server_processed"],
        "server_processed_rate": round(r["server_processed"] / load["seconds"]),
        "replayed_distinct": r["replayed_distinct"], "replayed_types": r["replayed_types"],
        "honest": r["honest"],
        "storm_output_packets": r["storm_output_packets"],
        "storm_output_bytes": r["storm_output_bytes"],
        "server_final": r["server"],
        "rss": _rss_summary(r),
    }


def run_flip(www: Path, tmp: Path, k: int, seconds: float, every: float) -> dict:
    rate = k / SLOWSTART_BUCKET  # each continuation once per bucket, round robin
    r = replay_storm(www, tmp, rate=rate, seconds=seconds, flip_to=REQ_SLOWSTART,
                     flip_count=k, rss_every=every)
    load = r["load"]
    out_b, in_b = r["storm_output_bytes"], r["storm_input_bytes"]
    return {
        "what": f"{k} captured NORMAL requests resent as SLOWSTART (type byte is outside the "
                "MAC), each once per 0.1 s; answers go to the client's address",
        "rate": load["rate"], "seconds": load["seconds"], "sent": load["sent"],
        "answered_packets": r["storm_output_packets"],
        "packets_per_continuation_per_s": round(
            r["storm_output_packets"] / k / load["seconds"], 2),
        "documented_limit_per_continuation_per_s": 2 / SLOWSTART_BUCKET,
        "bytes_in_ip": in_b, "bytes_out_ip": out_b,
        "amplification_bytes": round(out_b / in_b, 2) if in_b else None,
        "rss": _rss_summary(r),
    }


def run_flood(www: Path, tmp: Path, kind: str, seconds: float, every: float) -> dict:
    r = flood(www, tmp, kind, seconds=seconds, rss_every=every, min_sent=0)
    load = r["load"]
    fetches = r["fetches"]
    return {
        "kind": kind,
        "what": "random garbage (1/3 random bytes, 1/3 valid TCP header + random payload, 1/3 "
                "NORMAL requests with forged continuations)" if kind == "garbage" else
                "real client SYNs (request in the SYN, padded for 3x) with random ports/ISNs "
                "from 127.0.0.3",
        "achieved_rate": load["rate"], "seconds": load["seconds"], "sent": load["sent"],
        "sent_bytes": load["bytes"],
        "reached_server_kernel": r["reached_server"],
        "answers_to_flooder": r["answers_to_flooder"],
        "answers_per_s": round(r["answers_to_flooder"] / load["seconds"]),
        "answer_over_flood_bytes": r["answer_bytes_ratio"],
        "syn_ack_probe": r["probe"],
        "honest_during_flood": r["honest_during_flood"],
        "first_fetch_bytes_at_flood_start": r["first_fetch_bytes_at_flood_start"],
        "honest_fetches": fetches,
        "honest_all_byte_exact": bool(fetches) and not r["fetch_failures"]
        and all(f["ok"] for f in fetches),
        "fetch_failures": r["fetch_failures"],
        "server_final": r["server"],
        "rss": _rss_summary(r),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s per section: a smoke run")
    ap.add_argument("--replay-rate", type=float, default=50_000)
    ap.add_argument("--replay-seconds", type=float, default=60.0)
    ap.add_argument("--flip-seconds", type=float, default=20.0)
    ap.add_argument("--flip-count", type=int, default=8)
    ap.add_argument("--flood-seconds", type=float, default=30.0)
    ap.add_argument("--rss-every", type=float, default=0.5)
    ap.add_argument("--only", action="append", choices=("replay", "flip", "garbage", "syn"))
    add_output_args(ap, "storms.json")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("storms.py needs root (raw sockets, network namespaces, iptables): run it with "
              "sudo", file=sys.stderr)
        return 2
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: run `make sysdeps` (as root)", file=sys.stderr)
            return 2
    if args.quick:
        args.replay_seconds = args.flip_seconds = args.flood_seconds = 2.0
    only = set(args.only or ("replay", "flip", "garbage", "syn"))
    result = {"meta": _meta([str(Path(__file__).relative_to(REPO)), *argv],
                            "quick" if args.quick else "full"),
              "params": {k: v for k, v in vars(args).items() if k != "out"}}
    work = Path(tempfile.mkdtemp(prefix="tk-storms-"))
    try:
        www = make_www(work / "www")
        t0 = time.monotonic()
        sections = [
            ("replay", lambda t: run_replay(www, t, args.replay_rate, args.replay_seconds,
                                            args.rss_every)),
            ("flip", lambda t: run_flip(www, t, args.flip_count, args.flip_seconds,
                                        args.rss_every)),
            ("garbage", lambda t: run_flood(www, t, "garbage", args.flood_seconds,
                                            args.rss_every)),
            ("syn", lambda t: run_flood(www, t, "syn", args.flood_seconds, args.rss_every)),
        ]
        for name, fn in sections:
            if name not in only:
                continue
            print(f"== {name} ...", file=sys.stderr, flush=True)
            d = work / name
            d.mkdir()
            result[name] = fn(d)
            short = {k: v for k, v in result[name].items()
                     if k not in ("rss", "honest_fetches", "what")}
            short["rss_growth_kib"] = result[name]["rss"]["growth_kib"]
            print(json.dumps(short), file=sys.stderr, flush=True)
        result["wall_s"] = round(time.monotonic() - t0, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = write_result(args.out, result, indent=1)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
