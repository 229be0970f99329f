#!/usr/bin/env python3
"""Capture decoding speed: trickles_kit.capture versus scapy's PcapReader, in the same run.

Generates a large capture with the toolkit (a simulated bulk transfer logged at the server
endpoint, linktype RAW, IP protocol 253; >= 200,000 packets by default), then measures:

* `read`: pcapio alone (records -> IPv4 datagrams);
* `fast_path`: ``decode_pcap(events=False)`` — reading + wire decode into PacketRow objects, TCP
  checksums verified (the default), and the same with ``checksums=False``;
* `with_events`: rows + the derived protocol events (re-planning every request), with and
  without the master secret (MAC and nonce verdicts on every packet);
* `codec_only`: the project's codec (net.ip.parse_ipv4 + wire decode_segment +
  decode_request/decode_response) on in-memory datagrams, no rows — a reference point;
* `fast_path_ethernet`: the fast path on the same datagrams written as linktype EN10MB;
* `scapy_pcapreader_ethernet`: ``for p in scapy.utils.PcapReader(path): pass`` on that Ethernet
  copy (scapy builds Ether/IP objects; the Trickles payload stays Raw) — the baseline of the
  ratios; `scapy_pcapreader_raw101`: scapy on the original file, where it does not map linktype
  101 and yields undissected Raw packets (cheaper, shown for completeness).

Each figure is the best of --repeat runs, in packets per second of CPU time (the process's own
time: less sensitive to other load on a shared machine) and of wall time. It measures and
records; it never asserts. Run from the repository root:

    .venv/bin/python benchmarks/bench_decode.py                 # full run
    .venv/bin/python benchmarks/bench_decode.py --quick         # 40k packets, 1 repeat
    .venv/bin/python benchmarks/bench_decode.py --capture X.pcap  # an existing capture
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trickles_kit.capture import decode_pcap, read_pcap  # noqa: E402

PACKETS_PER_MB = 1380  # a 1448-byte-MSS bulk transfer: ~690 data packets + ~690 requests per MB


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def measure(fn, repeat: int) -> dict:
    """Best-of-`repeat` CPU and wall seconds of fn() (fn returns a packet count)."""
    best_cpu = best_wall = float("inf")
    count = 0
    for _ in range(repeat):
        gc.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        count = fn()
        c1, w1 = time.process_time(), time.perf_counter()
        best_cpu, best_wall = min(best_cpu, c1 - c0), min(best_wall, w1 - w0)
    return {
        "packets": count,
        "cpu_s": round(best_cpu, 4),
        "wall_s": round(best_wall, 4),
        "packets_per_s_cpu": round(count / best_cpu) if best_cpu > 0 else None,
        "packets_per_s_wall": round(count / best_wall) if best_wall > 0 else None,
    }


def make_capture(path: Path, packets: int, seed: int) -> dict:
    from trickles_kit.net.sim import LinkConfig, simulate_transfer

    size = int(packets / PACKETS_PER_MB * 1e6 * 1.03) + 100_000
    t = time.perf_counter()
    r = simulate_transfer(size, seed=seed, pcap=str(path),
                          down=LinkConfig(rate=None, loss=0.002), up=LinkConfig(rate=None))
    return {"generator": "trickles_kit.net.sim.simulate_transfer (server endpoint pcap tap)",
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
    ap.add_argument("--packets", type=int, default=200_000,
                    help="minimum packets in the generated capture (default 200000)")
    ap.add_argument("--capture", help="measure this capture instead of generating one")
    ap.add_argument("--keep", help="keep the generated capture at this path")
    ap.add_argument("--keep-ether", action="store_true",
                    help="keep the Ethernet copy (NAME_ether.pcap) next to the capture")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; best is kept")
    ap.add_argument("--scapy-packets", type=int, default=0,
                    help="iterate only this many packets with scapy (0 = the whole capture)")
    ap.add_argument("--quick", action="store_true", help="40k packets, 1 repeat")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "decode.json"))
    ap.add_argument("--note", default="", help="free text stored in the JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.packets, args.repeat = 40_000, 1
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
    try:
        n_records = sum(1 for _ in read_pcap(path).datagrams())
        results: dict = {}

        def step(name: str, fn) -> None:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            results[name] = measure(fn, args.repeat)
            r = results[name]
            print(f"  {name:<28} {r['packets_per_s_cpu']:>10,} pkt/s cpu "
                  f"{r['packets_per_s_wall']:>10,} pkt/s wall", file=sys.stderr)

        step("read", lambda: sum(1 for _ in read_pcap(path).datagrams()))
        step("fast_path", lambda: len(decode_pcap(path, events=False).packets))
        step("fast_path_no_checksums",
             lambda: len(decode_pcap(path, events=False, checksums=False).packets))
        step("with_events", lambda: len(decode_pcap(path).packets))
        if secret is not None:
            step("with_events_and_secret", lambda: len(decode_pcap(path, secret=secret).packets))

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
        step("fast_path_ethernet", lambda: len(decode_pcap(eth, events=False).packets))
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
            for k in ("fast_path", "fast_path_no_checksums", "fast_path_ethernet",
                      "with_events", "with_events_and_secret", "read"):
                if k in results:
                    ratios[f"{k}_vs_scapy"] = round(results[k]["packets_per_s_cpu"] / sc, 2)
        size = path.stat().st_size
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    out = {
        "meta": {
            "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]),
            "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "machine": {"platform": platform.platform(), "cpu_model": _cpu_model(),
                        "cpu_count": os.cpu_count(),
                        "loadavg_at_start": [round(x, 2) for x in load0],
                        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
            "packages": {"scapy": scapy_version, "cryptography": _version("cryptography")},
            "git_commit": _git_commit(),
            "benchmark_wall_s": round(time.perf_counter() - t_start, 1),
            "note": args.note,
        },
        "capture": {"path": str(path) if (args.capture or args.keep) else "(temporary)",
                    "records": n_records, "bytes": size, "ethernet_copy_bytes": eth_size,
                    **gen_info},
        "options": {"repeat": args.repeat, "scapy_packets": args.scapy_packets or n_records},
        "unit": "packets per second; *_cpu = process CPU time, *_wall = elapsed; best of repeat",
        "target": {"fast_path_packets_per_s": 200_000,
                   "met_cpu": bool(fast and fast >= 200_000)},
        "results": results,
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
