"""`trickles bench loopback`: the Trickles server's packets/s against the raw-socket floor.

The floor is what Python itself manages on raw IP sockets with no protocol at all (send one
datagram the size of a Trickles data segment, receive one), so the ratio says how much of the
per-packet budget the protocol takes. Both measurements are `benchmarks/bench_wire.py`'s own
functions (imported, not copied), on loopback addresses of their own (127.0.0.61/.62).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from trickles_kit.bench.goodput import log
from trickles_kit.bench.meta import meta

REPO = Path(__file__).resolve().parents[2]
QUICK = {"size": 20_000_000, "repeats": 1, "floor_seconds": 1.0}
FULL = {"size": 100_000_000, "repeats": 3, "floor_seconds": 3.0}


def bench_wire():  # -> module
    """benchmarks/bench_wire.py as a module (it lives beside the package, in the repository)."""
    d = REPO / "benchmarks"
    if not (d / "bench_wire.py").exists():
        raise RuntimeError("benchmarks/bench_wire.py not found: run from a checkout of the "
                           "repository")
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    return importlib.import_module("bench_wire")


def run(quick: bool, out_dir: Path, verbose: bool = False) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    bw = bench_wire()
    t0 = time.monotonic()
    o = dict(QUICK if quick else FULL)
    o.update(floor_size=bw.TRICKLES_DATA_SEGMENT, server_addr="127.0.0.61",
             client_addr="127.0.0.62", port=18650, transfer_timeout=300.0)
    res: dict = {"experiment": "loopback",
                 "meta": meta(["-m", "trickles_kit.cli", "bench", "loopback"]
                              + (["--quick"] if quick else []), "quick" if quick else "full"),
                 "options": o,
                 "method": "floor: bench_wire.bench_floor (one process: send+recv pairs of "
                           f"{bw.TRICKLES_DATA_SEGMENT}-byte datagrams on raw IP 253); server: "
                           "bench_wire.bench_trickles (trickles serve -> trickles fetch, "
                           "server packets sent per second of transfer)"}
    if os.geteuid() != 0:
        res["error"] = "not root: raw IP sockets need root (or CAP_NET_RAW)"
    else:
        tmp = Path(tempfile.mkdtemp(prefix="tk-bench-loop-"))
        os.chmod(tmp, 0o755)
        try:
            log("[loopback 1/2] raw-socket floor ...", True)
            res["floor"] = bw.bench_floor(o)
            log(f"[loopback 2/2] Trickles transfer of {o['size'] / 1e6:.0f} MB ...", True)
            res["trickles"] = bw.bench_trickles(o, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        floor = res["floor"].get("pairs_per_s")
        pps = res["trickles"].get("median_server_packets_per_s")
        res["floor_pairs_per_s"] = floor
        res["server_packets_per_s"] = pps
        res["server_over_floor"] = round(pps / floor, 4) if floor and pps else None
        res["goodput_mb_per_s"] = res["trickles"].get("median_goodput_mb_per_s")
        # per CPU second: less sensitive to what else the machine runs meanwhile
        fc = res["floor"].get("pairs_per_cpu_s")
        sc = res["trickles"].get("median_server_packets_per_cpu_s")
        res["server_packets_per_cpu_s"] = sc
        res["floor_pairs_per_cpu_s"] = fc
        res["server_over_floor_per_cpu_s"] = round(sc / fc, 4) if fc and sc else None
        log(f"    server {pps} packets/s, floor {floor} pairs/s", verbose)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    (out_dir / "loopback.json").write_text(json.dumps(res, indent=1) + "\n")
    return res
