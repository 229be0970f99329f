#!/usr/bin/env python3
"""Capture decoding speed: trickles_kit.capture versus scapy's PcapReader, in the same run.

Generates a large capture with the toolkit (a simulated bulk transfer logged at the server
endpoint, linktype RAW, IP protocol 253; >= 200,000 packets by default), then measures:

* `read`: pcapio alone (records -> IPv4 datagrams);
* `fast_path` — the acceptance figure: ``decode_pcap(path, events=False)``, reading + decoding
  every field of every packet into the capture's packet table, TCP checksums verified (the
  default). `decode_pcap` is the columnar path when numpy is installed (`capture.columnar`);
  ``--row-decoder`` times the row decoder (``columnar=False``) instead. The table is what
  `Capture.columns()` / `packets_df()` read; no per-packet Python object is made (numpy
  columns; in the row decoder a fast-path row is one tuple extended into a flat list);
* `fast_path_no_checksums`: the same with ``checksums=False``;
* `fast_path_rows`: the same plus ``cap.packets``, one `PacketRow` object per packet (built on
  first access; what iterating the rows costs);
* `fast_path_df`: the same plus ``cap.packets_df()`` (pandas; skipped without it);
* `with_events`: rows + the derived protocol events (re-planning every request), with and
  without the master secret (MAC and nonce verdicts on every packet);
* `baseline_*` (with ``--baseline FILE``): another decode.py — e.g. the previous one, from
  ``git show REV:trickles_kit/capture/decode.py > /tmp/decode_old.py`` — timed by the same
  harness in the same run, its runs alternating with the current decoder's: the table
  (`baseline_fast_path_table`, when it keeps one), the rows (`baseline_fast_path`, its
  ``decode_pcap(events=False).packets``) and the events with and without the secret;
* `same_run_baseline` (with ``--baseline-tree REV``): the whole package of an older revision
  (``git archive REV trickles_kit``, imported beside this one as `trickles_kit_baseline`) against
  this one on the same capture, layer by layer — `fast_path`, `fast_path_rows`, `fast_path_df`,
  `with_events`, `with_events_and_secret` — in interleaved rounds (baseline, current, current,
  baseline, ...) after one untimed run of each, medians and the ratio current/baseline in
  packets per CPU second. Only this comparison is measured then (``--record`` writes
  benchmarks/results/decode_redesign.json);
* `codec_only`: the project's codec (net.ip.parse_ipv4 + wire decode_segment +
  decode_request/decode_response) on in-memory datagrams, no rows — a reference point;
* `fast_path_ethernet`: the fast path on the same datagrams written as linktype EN10MB;
* `scapy_pcapreader_ethernet`: ``for p in scapy.utils.PcapReader(path): pass`` on that Ethernet
  copy (scapy builds Ether/IP objects; the Trickles payload stays Raw) — the baseline of the
  ratios; `scapy_pcapreader_raw101`: scapy on the original file, where it does not map linktype
  101 and yields undissected Raw packets (cheaper, shown for completeness).

Each figure is the best of --repeat runs (the median is recorded too), in packets per second of
CPU time (the process's own time: less sensitive to other load on a shared machine) and of wall
time. It measures and records; it never asserts. Run from the repository root:

    .venv/bin/python benchmarks/bench_decode.py                 # full run
    .venv/bin/python benchmarks/bench_decode.py --quick         # 4k packets, 1 repeat: a smoke run
    .venv/bin/python benchmarks/bench_decode.py --capture X.pcap  # an existing capture
    .venv/bin/python benchmarks/bench_decode.py --baseline /tmp/decode_old.py  # before/after
    .venv/bin/python benchmarks/bench_decode.py --baseline-tree de00ccf  # whole tree, layers
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trickles_kit.bench.meta import meta as _meta  # noqa: E402
from trickles_kit.capture import decode_pcap, read_pcap  # noqa: E402

PACKETS_PER_MB = 1380  # a 1448-byte-MSS bulk transfer: ~690 data packets + ~690 requests per MB


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def _once(fn) -> tuple[int, float, float]:
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    count = fn()
    c1, w1 = time.process_time(), time.perf_counter()
    return count, c1 - c0, w1 - w0


def measure(fn, repeat: int) -> dict:
    """Best-of-`repeat` (and median) CPU and wall seconds of fn() (fn returns a packet count)."""
    runs = [_once(fn) for _ in range(repeat)]
    return _figures(runs)


def measure_pair(fn, base, repeat: int) -> tuple[dict, dict]:
    """`measure` of fn and of its baseline, their runs alternating (fn, base, base, fn, ...):
    load on a shared machine comes and goes, and must hit both sides alike."""
    runs: tuple[list, list] = ([], [])
    for r in range(repeat):
        for side in ((0, 1) if r % 2 == 0 else (1, 0)):
            runs[side].append(_once((fn, base)[side]))
    return _figures(runs[0]), _figures(runs[1])


def _figures(runs: list[tuple[int, float, float]]) -> dict:
    count = runs[-1][0]
    cpus = [c for _, c, _ in runs]
    walls = [w for _, _, w in runs]
    best_cpu, best_wall = min(cpus), min(walls)
    med_cpu = statistics.median(cpus)
    return {
        "packets": count,
        "cpu_s": round(best_cpu, 4),
        "wall_s": round(best_wall, 4),
        "cpu_s_all": [round(x, 4) for x in cpus],
        "packets_per_s_cpu": round(count / best_cpu) if best_cpu > 0 else None,
        "packets_per_s_wall": round(count / best_wall) if best_wall > 0 else None,
        "packets_per_s_cpu_median": round(count / med_cpu) if med_cpu > 0 else None,
    }


def load_baseline(path: str):
    """A decode.py file as a module (its own imports resolve against this checkout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("decode_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def load_tree(rev: str):
    """The `trickles_kit.capture` of git revision `rev`, importable beside this checkout's: its
    whole package is read from ``git archive`` and written under the name
    `trickles_kit_baseline` with every import of `trickles_kit` renamed, so that the decoder,
    its codec and every module it calls are the old ones."""
    import importlib
    import io
    import re
    import subprocess
    import tarfile

    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "trickles_kit"],
                         capture_output=True, check=True, timeout=120).stdout
    root = Path(tempfile.mkdtemp(prefix="bench_decode_baseline_"))
    atexit.register(shutil.rmtree, root, True)  # no tree left in the temp dir
    rename = re.compile(r"\btrickles_kit\b")
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for m in tf.getmembers():
            src = tf.extractfile(m) if m.isfile() else None
            if src is None:
                continue
            dst = root / rename.sub("trickles_kit_baseline", m.name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            data = src.read()
            if m.name.endswith(".py"):
                data = rename.sub("trickles_kit_baseline", data.decode()).encode()
            dst.write_bytes(data)
    sys.path.insert(0, str(root))
    return importlib.import_module("trickles_kit_baseline.capture")


def _layers(mod, path: Path, secret: bytes | None, row: bool = False) -> dict:
    """The figures `compare_tree` times, for one package's `capture` module `mod`: each
    function decodes `path` and returns the packet count (the same calls on both sides);
    `row`: this checkout's row decoder (`columnar=False`, the --row-decoder comparison)."""
    dp = functools.partial(mod.decode_pcap, columnar=False) if row else mod.decode_pcap
    out = {"fast_path": lambda: dp(path, events=False).n_packets,
           "fast_path_rows": lambda: len(dp(path, events=False).packets)}
    if _version("pandas") is not None:
        out["fast_path_df"] = lambda: len(dp(path, events=False).packets_df())
    out["with_events"] = lambda: dp(path).n_packets
    if secret is not None:
        out["with_events_and_secret"] = lambda: dp(path, secret=secret).n_packets
    return out


def compare_tree(base, path: Path, secret: bytes | None, rounds: int, row: bool = False
                 ) -> dict:
    """Each layer of the baseline package's decoder (`base`, from `load_tree`) against this
    checkout's on one capture: `rounds` rounds, the two sides' runs adjacent and their order
    alternating (baseline first in even rounds), so load on a shared machine and warm caches
    hit both alike. Medians (and best) of packets per CPU second; ratio = current / baseline."""
    from trickles_kit import capture as current

    sides = {"baseline": _layers(base, path, secret),
             "current": _layers(current, path, secret, row)}
    cpu: dict = {layer: {"baseline": [], "current": []} for layer in sides["current"]}
    count: dict = {}
    for per_side in sides.values():  # one untimed run each: imports (numpy, pandas), caches
        for fn in per_side.values():
            fn()
    for r in range(rounds):
        for layer, per in cpu.items():
            for side in ("baseline", "current") if r % 2 == 0 else ("current", "baseline"):
                n, c, _w = _once(sides[side][layer])
                count.setdefault(layer, {})[side] = n
                per[side].append(c)
            print(f"  round {r + 1}/{rounds} {layer:<24} baseline {per['baseline'][-1]:.3f} s"
                  f"  current {per['current'][-1]:.3f} s", file=sys.stderr, flush=True)
    out = {}
    for layer, per in cpu.items():
        n = count[layer]["current"]
        med = {s: statistics.median(v) for s, v in per.items()}
        best = {s: min(v) for s, v in per.items()}
        out[layer] = {
            "packets": count[layer],
            "baseline_pps_median": round(n / med["baseline"]),
            "current_pps_median": round(n / med["current"]),
            "ratio_median": round(med["baseline"] / med["current"], 3),
            "baseline_pps_best": round(n / best["baseline"]),
            "current_pps_best": round(n / best["current"]),
            "ratio_best": round(best["baseline"] / best["current"], 3),
            "cpu_s": {s: [round(x, 4) for x in v] for s, v in per.items()},
        }
    return out


def write_compare(args, path: Path, secret: bytes | None, gen_info: dict, t_start: float,
                  load0: tuple) -> int:
    """The --baseline-tree run: `compare_tree`'s figures and how they were made, to args.out."""
    base = load_tree(args.baseline_tree)
    print(f"baseline {args.baseline_tree} against this checkout, {args.compare_rounds} "
          f"interleaved rounds ...", file=sys.stderr)
    res = compare_tree(base, path, secret, args.compare_rounds, args.row_decoder)
    meta = _meta([sys.argv[0], *sys.argv[1:]], "decode_redesign")
    meta["machine"]["loadavg_at_start"] = [round(x, 2) for x in load0]
    meta["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["packages"].update(numpy=_version("numpy"), pandas=_version("pandas"))
    meta["benchmark_wall_s"] = round(time.perf_counter() - t_start, 1)
    meta["note"] = args.note
    out = {
        "meta": meta,
        "baseline": args.baseline_tree,
        "capture": {"path": str(path) if (args.capture or args.keep) else "(temporary)",
                    "records": sum(1 for _ in read_pcap(path).datagrams()),
                    "bytes": path.stat().st_size, **gen_info},
        "unit": "packets per CPU second (process time) of each layer; median and best of the "
                "rounds; ratio = current / baseline (above 1: the current decoder is faster)",
        "rounds": args.compare_rounds,
        "order": "per layer and round the two sides run back to back, baseline first in even "
                 "rounds, current first in odd ones",
        "same_run_baseline": res,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for layer, r in res.items():
        print(f"{layer:<24} baseline {r['baseline_pps_median']:>9,} current "
              f"{r['current_pps_median']:>9,} pkt/s (median)  x{r['ratio_median']:.3f} "
              f"(best x{r['ratio_best']:.3f})")
    print(f"written: {args.out}", file=sys.stderr)
    return 0


def make_capture(path: Path, packets: int, seed: int) -> dict:
    from trickles_kit.apps.sim import LinkConfig, simulate_transfer

    size = int(packets / PACKETS_PER_MB * 1e6 * 1.03) + 100_000
    t = time.perf_counter()
    r = simulate_transfer(size, seed=seed, pcap=str(path),
                          down=LinkConfig(rate=None, loss=0.002), up=LinkConfig(rate=None))
    return {"generator": "trickles_kit.apps.sim.simulate_transfer (server endpoint pcap tap)",
            "transfer_bytes": size, "seed": seed, "downlink_loss": 0.002,
            "transfer_ok": r.ok, "retransmissions": r.retransmissions,
            "generate_wall_s": round(time.perf_counter() - t, 2)}


def write_ethernet_copy(src: Path, dst: Path) -> None:
    """`src` (any capture) rewritten as linktype EN10MB, streaming."""
    import struct

    head = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"
    rec = struct.Struct("<IIII")
    with open(dst, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, d in read_pcap(src).datagrams():
            sec = int(ts)
            f.write(rec.pack(sec, int(round((ts - sec) * 1e6)) % 1_000_000, len(d) + 14,
                             len(d) + 14))
            f.write(head)
            f.write(d)


def secret_of(seed: int) -> bytes:
    return random.Random(seed ^ 0x5EC12E7).randbytes(32)  # simulate_transfer's default


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=None,
                    help="minimum packets in the generated capture (default 200000; "
                         "--quick: 4000)")
    ap.add_argument("--capture", help="measure this capture instead of generating one")
    ap.add_argument("--keep", help="keep the generated capture at this path")
    ap.add_argument("--keep-ether", action="store_true",
                    help="keep the Ethernet copy (NAME_ether.pcap) next to the capture")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per figure; best is kept (default 3; --quick: 1)")
    ap.add_argument("--scapy-packets", type=int, default=0,
                    help="iterate only this many packets with scapy (0 = the whole capture)")
    ap.add_argument("--quick", action="store_true",
                    help="4,000 packets, 1 repeat: a smoke run (every step, a few seconds)")
    ap.add_argument("--seed", type=int, default=11)
    # a run writes to reports/ (git-ignored); the committed result changes only with --record
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "decode.json"),
                    help="JSON output path (default: %(default)s)")
    ap.add_argument("--record", action="store_true",
                    help="refresh the committed benchmarks/results/decode.json "
                         "(decode_redesign.json with --baseline-tree)")
    ap.add_argument("--note", default="", help="free text stored in the JSON")
    ap.add_argument("--baseline", help="another decode.py to time the same way (before/after)")
    ap.add_argument("--baseline-label", default="",
                    help="what --baseline is, stored in the JSON (e.g. its git revision)")
    ap.add_argument("--baseline-tree", metavar="REV",
                    help="only compare this checkout's decoder, layer by layer, with the whole "
                         "package at git revision REV (e.g. de00ccf), interleaved in one run")
    ap.add_argument("--row-decoder", action="store_true",
                    help="time decode_pcap(columnar=False), the row decoder (default: "
                         "decode_pcap's default, the columnar path when numpy is installed)")
    ap.add_argument("--compare-rounds", type=int, default=None,
                    help="interleaved rounds of --baseline-tree (default 7; --quick: 1)")
    args = ap.parse_args(argv)
    name = "decode_redesign.json" if args.baseline_tree else "decode.json"
    if args.record:
        args.out = str(REPO / "benchmarks" / "results" / name)
    elif args.out == ap.get_default("out"):
        args.out = str(Path(args.out).with_name(name))
    if args.compare_rounds is None:
        args.compare_rounds = 1 if args.quick else 7
    if args.packets is None:
        args.packets = 4_000 if args.quick else 200_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    tmpdir = None
    gen_info: dict = {}
    secret = None
    if args.capture:
        path = Path(args.capture)
        sf = path.with_suffix(".secret")
        if sf.exists():
            secret = bytes.fromhex(sf.read_text().strip())
    else:
        if args.keep:
            path = Path(args.keep)
        else:
            tmpdir = tempfile.TemporaryDirectory(prefix="bench_decode_")
            path = Path(tmpdir.name) / "bulk.pcap"
        print(f"generating a capture of >= {args.packets:,} packets ...", file=sys.stderr)
        gen_info = make_capture(path, args.packets, args.seed)
        secret = secret_of(args.seed)
        if args.keep:  # found again by --capture
            path.with_suffix(".secret").write_text(secret.hex() + "\n")
    if args.baseline_tree:
        try:
            return write_compare(args, path, secret, gen_info, t_start, load0)
        finally:
            if tmpdir is not None:
                tmpdir.cleanup()
    try:
        n_records = sum(1 for _ in read_pcap(path).datagrams())
        results: dict = {}

        base = load_baseline(args.baseline) if args.baseline else None

        def step(name: str, fn, base_name: str = "", base_fn=None) -> None:
            """One figure; with a baseline, its figure too, the runs alternating."""
            print(f"  {name} ...", file=sys.stderr, flush=True)
            if base is not None and base_fn is not None:
                results[name], results[base_name] = measure_pair(fn, base_fn, args.repeat)
            else:
                results[name] = measure(fn, args.repeat)
            for n in (name, base_name) if base_name in results else (name,):
                r = results[n]
                print(f"  {n:<28} {r['packets_per_s_cpu']:>10,} pkt/s cpu "
                      f"{r['packets_per_s_wall']:>10,} pkt/s wall", file=sys.stderr)

        # the decoder imports numpy (if installed) on its first large capture: once per
        # process, outside the figures; its cost is recorded here
        t_np = time.process_time()
        with contextlib.suppress(ImportError):
            import numpy  # noqa: F401
        results_extra = {"numpy_import_cpu_s": round(time.process_time() - t_np, 4)}
        step("read", lambda: sum(1 for _ in read_pcap(path).datagrams()))
        dec = (functools.partial(decode_pcap, columnar=False) if args.row_decoder
               else decode_pcap)
        # a flat-table baseline has the same figure as fast_path; an older one built the rows
        flat = base is not None and hasattr(base.Capture, "n_packets")
        step("fast_path", lambda: dec(path, events=False).n_packets,
             "baseline_fast_path_table", (lambda: base.decode_pcap(path, events=False)
                                          .n_packets) if flat else None)
        step("fast_path_no_checksums",
             lambda: dec(path, events=False, checksums=False).n_packets)
        step("fast_path_rows", lambda: len(dec(path, events=False).packets),
             "baseline_fast_path", lambda: len(base.decode_pcap(path, events=False).packets))
        if _version("pandas") is not None:
            step("fast_path_df", lambda: len(dec(path, events=False).packets_df()))
        if base is not None:
            step("baseline_fast_path_no_checksums", lambda: len(
                base.decode_pcap(path, events=False, checksums=False).packets))
        step("with_events", lambda: dec(path).n_packets,
             "baseline_with_events", lambda: len(base.decode_pcap(path).packets))
        if secret is not None:
            step("with_events_and_secret", lambda: dec(path, secret=secret).n_packets,
                 "baseline_with_events_and_secret",
                 lambda: len(base.decode_pcap(path, secret=secret).packets))

        datagrams = [d for _, d in read_pcap(path).datagrams()]

        def codec() -> int:
            from trickles_kit.net.ip import parse_ipv4
            from trickles_kit.wire.messages import decode_request, decode_response
            from trickles_kit.wire.segment import decode_segment

            n = 0
            for d in datagrams:
                ip = parse_ipv4(d)
                seg = decode_segment(ip.payload, ip.src, ip.dst)
                if seg.trickles_len == 0:
                    decode_request(seg.payload)
                else:
                    decode_response(seg.payload)
                n += 1
            return n

        step("codec_only", codec)
        datagrams.clear()
        # the same datagrams behind an Ethernet header (linktype 1): scapy does not map
        # linktype 101 and would yield undissected Raw packets, which is not a fair baseline
        eth = path.with_name(path.stem + "_ether.pcap")
        write_ethernet_copy(path, eth)
        step("fast_path_ethernet", lambda: dec(eth, events=False).n_packets)
        scapy_version = _version("scapy")
        if scapy_version is not None:
            import logging

            from scapy.utils import PcapReader

            logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
            limit = args.scapy_packets or None

            def scapy_iter(p: Path) -> int:
                n = 0
                with PcapReader(str(p)) as rd:
                    for _ in rd:
                        n += 1
                        if limit is not None and n >= limit:
                            break
                return n

            step("scapy_pcapreader_ethernet", lambda: scapy_iter(eth))
            step("scapy_pcapreader_raw101", lambda: scapy_iter(path))
        else:
            print("scapy is not installed: pip install scapy (no comparison)", file=sys.stderr)
        eth_size = eth.stat().st_size
        if not args.keep_ether:
            eth.unlink()
        fast = results["fast_path"]["packets_per_s_cpu"]
        ratios = {}
        sc = results.get("scapy_pcapreader_ethernet", {}).get("packets_per_s_cpu")
        if sc:
            for k in ("fast_path", "fast_path_no_checksums", "fast_path_rows", "fast_path_df",
                      "fast_path_ethernet", "baseline_fast_path",
                      "baseline_fast_path_no_checksums", "with_events",
                      "with_events_and_secret", "read"):
                if k in results:
                    ratios[f"{k}_vs_scapy"] = round(results[k]["packets_per_s_cpu"] / sc, 2)
        if "baseline_fast_path" in results:
            # fast_path against the baseline's table when it has one (else its rows: older
            # decoders built them always), fast_path_rows against its rows
            pairs = {"fast_path": results.get("baseline_fast_path_table",
                                              results["baseline_fast_path"]),
                     "fast_path_no_checksums": results["baseline_fast_path_no_checksums"],
                     "fast_path_rows": results["baseline_fast_path"],
                     "with_events": results.get("baseline_with_events"),
                     "with_events_and_secret": results.get("baseline_with_events_and_secret")}
            for k, b in pairs.items():
                if b is not None and k in results:
                    ratios[f"{k}_vs_baseline"] = round(
                        results[k]["packets_per_s_cpu"] / b["packets_per_s_cpu"], 3)
        size = path.stat().st_size
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    meta = _meta([sys.argv[0], *sys.argv[1:]], "decode")
    meta["machine"]["loadavg_at_start"] = [round(x, 2) for x in load0]
    meta["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["packages"].update(scapy=scapy_version, numpy=_version("numpy"),
                            pandas=_version("pandas"))
    meta["benchmark_wall_s"] = round(time.perf_counter() - t_start, 1)
    meta["note"] = args.note
    if args.baseline:
        meta["baseline"] = {"file": os.path.basename(args.baseline),
                            "label": args.baseline_label}
    out = {
        "meta": meta,
        "capture": {"path": str(path) if (args.capture or args.keep) else "(temporary)",
                    "records": n_records, "bytes": size, "ethernet_copy_bytes": eth_size,
                    **gen_info},
        "options": {"repeat": args.repeat, "scapy_packets": args.scapy_packets or n_records},
        "unit": "packets per second; *_cpu = process CPU time, *_wall = elapsed; best of repeat",
        "target": {"fast_path_packets_per_s": 200_000,
                   "met_cpu": bool(fast and fast >= 200_000),
                   "met_cpu_median": bool(results["fast_path"]["packets_per_s_cpu_median"]
                                          >= 200_000)},
        "results": results,
        "one_time": results_extra,
        "ratios_cpu": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"records": n_records, **{k: v["packets_per_s_cpu"]
                                                for k, v in results.items()}, **ratios},
                     indent=1))
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
