#!/usr/bin/env python3
"""Analysis at scale (issue 21): every layer a user touches, columnar vs row decoder vs scapy vs
tshark, on a capture of at least a million packets; memory of a 2 GB capture.

The capture: a simulated lossy bulk transfer logged at the server endpoint (linktype RAW, IP
253), its records repeated — each copy shifted in time past the previous one's end plus the
server's freshness, so a copy is the same transfer again later — up to --packets packets
(default 1,000,000), written to a temporary file and deleted after. Layers (CPU seconds of this
process; best of --repeat, median recorded; columnar and row-decoder runs alternate):

* `records`: the record walk alone (`PcapReader.mapped_batches` + the numpy header read);
* `fast_path` / `fast_path_no_checksums`: ``decode_columns(path, events=False)`` — the columnar
  table, TCP checksums verified (default) or not;
* `rows`: the same + ``cap.packets`` (`PacketRow` objects on demand);
* `packets_df`: the same + ``cap.packets_df()`` — the acceptance figure (>= 1,000,000 pkt/s);
* `events_df`: ``decode_columns(path)`` (events derived) + ``events_df()`` (>= 300,000 pkt/s);
* `events_df_secret`: the same with the master secret (MAC and nonce verdicts);
* `parquet_write`: ``capture.parquet.write_parquet(events=False)`` (streamed) to a temp dir;
* `row_*`: the row decoder (``decode_pcap(columnar=False)``) for the same layers (its
  ``packets_df()``, events);
* `scapy_pcapreader_ethernet`: scapy's PcapReader over the first --baseline-packets packets
  written as Ethernet (scapy does not dissect linktype 101);
* `tshark_fields_lua`: ``tshark -T fields`` with trickles_kit/dissector/trickles.lua (a dozen
  Trickles fields) over the same prefix file (as uid 65534 when root: tshark ignores Lua as
  root).

`memory`: a --big-gb GB capture (default 2; built the same way) decoded in a child process by
``trickles decode --format parquet`` (packets streamed into Parquet): its peak RSS (VmHWM)
and wall time, and DuckDB's count of the rows written. It measures and
records; it never asserts. From the repository root:

    .venv/bin/python benchmarks/bench_decode_scale.py --quick     # a smoke run (seconds)
    .venv/bin/python benchmarks/bench_decode_scale.py --record    # benchmarks/results/...json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trickles_kit.bench.meta import meta as _meta  # noqa: E402
from trickles_kit.capture.columnar import _raw_batches, decode_columns  # noqa: E402
from trickles_kit.capture.columns import arrow_or_none  # noqa: E402
from trickles_kit.capture.decode import decode_pcap as _decode_pcap  # noqa: E402
from trickles_kit.capture.pcapio import read_pcap  # noqa: E402

PACKETS_PER_MB = 1380  # a 1448-byte-MSS bulk transfer: ~690 data packets + ~690 requests per MB
TSHARK_FIELDS = ["frame.number", "trickles.seq", "trickles.ack", "trickles.req.type",
                 "trickles.cont.type", "trickles.cont.seq", "trickles.cont.tcpbase",
                 "trickles.cont.ssthresh", "trickles.resp.nonce", "trickles.sack.left",
                 "trickles.sack.right", "trickles.data.bytenum", "trickles.data.len"]


def decode_pcap(*args, **kw):
    """The row decoder (`decode_pcap`'s default is the columnar path when numpy is there)."""
    return _decode_pcap(*args, columnar=False, **kw)


def secret_of(seed: int) -> bytes:
    return random.Random(seed ^ 0x5EC12E7).randbytes(32)  # simulate_transfer's default


def _once(fn) -> tuple[int, float, float]:
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    count = fn()
    return count, time.process_time() - c0, time.perf_counter() - w0


def _figures(runs: list[tuple[int, float, float]]) -> dict:
    count = runs[-1][0]
    cpus = [c for _, c, _ in runs]
    best, med = min(cpus), statistics.median(cpus)
    return {"packets": count, "cpu_s": round(best, 4), "cpu_s_all": [round(x, 4) for x in cpus],
            "wall_s": round(min(w for _, _, w in runs), 4),
            "packets_per_s_cpu": round(count / best) if best > 0 else None,
            "packets_per_s_cpu_median": round(count / med) if med > 0 else None}


def measure_group(fns: dict, repeat: int) -> dict:
    """Each of `fns` `repeat` times, their runs alternating (A B C, C B A, ...): load on a
    shared machine comes and goes and must hit every side alike."""
    runs: dict[str, list] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeat):
        for k in (names if r % 2 == 0 else names[::-1]):
            runs[k].append(_once(fns[k]))
            print(f"  {k}: {runs[k][-1][1]:.2f} s CPU", file=sys.stderr, flush=True)
    return {k: _figures(v) for k, v in runs.items()}


def make_template(path: Path, packets: int, seed: int) -> dict:
    from trickles_kit.apps.sim import LinkConfig, simulate_transfer

    size = int(packets / PACKETS_PER_MB * 1e6) + 50_000
    t = time.perf_counter()
    r = simulate_transfer(size, seed=seed, pcap=str(path), down=LinkConfig(rate=None,
                          loss=0.005), up=LinkConfig(rate=None, loss=0.005))
    return {"generator": "trickles_kit.apps.sim.simulate_transfer (server endpoint pcap tap)",
            "transfer_bytes": size, "seed": seed, "loss_each_way": 0.005, "transfer_ok": r.ok,
            "generate_wall_s": round(time.perf_counter() - t, 2)}


def repeat_capture(src: Path, dst: Path, packets: int = 0, size: int = 0) -> dict:
    """`src`'s records (classic pcap, little-endian µs) again and again into `dst` until it has
    `packets` records or `size` bytes; each copy starts 120 s after the previous one ends."""
    data = src.read_bytes()
    head, body = data[:24], memoryview(data)[24:]
    rec = struct.Struct("<IIII")
    offs, o = [], 0
    while o + 16 <= len(body):
        offs.append(o)
        o += 16 + rec.unpack_from(body, o)[2]
    first = rec.unpack_from(body, 0)[0]
    span = rec.unpack_from(body, offs[-1])[0] - first + 120
    n = written = copies = 0
    with open(dst, "wb") as f:
        f.write(head)
        written = 24
        while (packets and n < packets) or (size and written < size):
            shift = copies * span
            out = bytearray()
            for o in offs:
                sec, usec, incl, orig = rec.unpack_from(body, o)
                out += rec.pack(sec + shift, usec, incl, orig)
                out += body[o + 16:o + 16 + incl]
                n += 1
                if packets and n >= packets:
                    break
            f.write(out)
            written += len(out)
            copies += 1
    return {"records": n, "bytes": written, "copies": copies, "copy_period_s": span}


def write_ethernet_prefix(src: Path, dst: Path, limit: int) -> int:
    head = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"
    rec = struct.Struct("<IIII")
    n = 0
    with open(dst, "wb") as f, read_pcap(src) as r:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, d in r.datagrams():
            sec = int(ts)
            f.write(rec.pack(sec, int(round((ts - sec) * 1e6)) % 1_000_000, len(d) + 14,
                             len(d) + 14) + head + d)
            n += 1
            if n >= limit:
                break
    return n


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="tk-decode-scale-"))
    doc: dict = {}
    try:
        template = tmp / "template.pcap"
        gen = make_template(template, args.template_packets, args.seed)
        path = tmp / "scale.pcap"
        gen["capture"] = repeat_capture(template, path, packets=args.packets)
        gen["capture"]["mb"] = round(path.stat().st_size / 1e6, 1)
        secret = secret_of(args.seed)
        warm_up(template, tmp)
        doc["capture"] = gen
        doc["layers"] = layers(path, secret, args.repeat, tmp)
        doc["baselines"] = baselines(path, tmp, args)
        doc["memory"] = memory(template, tmp, args.big_gb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc["targets"] = targets(doc)
    given = sys.argv[1:] if argv is None else argv
    out = {"meta": _meta([os.path.relpath(__file__), *given], "decode_scale")} | doc
    out["meta"] |= {"benchmark_wall_s": round(time.perf_counter() - t_start, 1),
                    "loadavg_at_start": list(load0), "loadavg_at_end": list(os.getloadavg()),
                    "note": args.note}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(doc["targets"], indent=2))
    print(f"wrote {args.out}")
    return 0


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=None,
                    help="packets in the measured capture (default 1,000,000; --quick 30,000)")
    ap.add_argument("--template-packets", type=int, default=None,
                    help="packets of the simulated run repeated (default 40,000; --quick 6,000)")
    ap.add_argument("--baseline-packets", type=int, default=None,
                    help="packets scapy and tshark read (default 100,000; --quick 3,000)")
    ap.add_argument("--big-gb", type=float, default=None,
                    help="size of the memory run's capture, GB (default 2; --quick 0.03)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per figure (3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of every step")
    ap.add_argument("--seed", type=int, default=11)
    # where the JSON goes: reports/ (git-ignored) unless --record (the committed result)
    run, kept = (str(REPO / d / "decode_scale.json") for d in ("reports/benchmarks",
                                                               "benchmarks/results"))
    ap.add_argument("--out", default=run, help="JSON output path (default: %(default)s)")
    ap.add_argument("--record", dest="out", action="store_const", const=kept,
                    help="refresh the committed benchmarks/results/decode_scale.json")
    ap.add_argument("--note", default="", help="free text stored in the JSON")
    args = ap.parse_args(argv)
    q = args.quick
    for name, full, quick in (("packets", 1_000_000, 30_000), ("template_packets", 40_000, 6_000),
                              ("baseline_packets", 100_000, 3_000), ("big_gb", 2.0, 0.03),
                              ("repeat", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    return args


def warm_up(template: Path, tmp: Path) -> None:
    """Imports (numpy, pandas, pyarrow) and first-call costs outside the figures."""
    from trickles_kit.capture.parquet import write_parquet

    cap = decode_columns(template)
    cap.packets_df()
    cap.events_df()
    decode_pcap(template).packets_df()
    with contextlib.suppress(ImportError):  # (no pyarrow: parquet_write is not measured)
        write_parquet(template, tmp / "warm", events=False)


def layers(path: Path, secret: bytes, repeat: int, tmp: Path) -> dict:
    from trickles_kit.capture.parquet import write_parquet

    def records() -> int:
        with read_pcap(path) as r:
            return sum(len(b[1]) for b in _raw_batches(r))

    def col(**kw):
        return decode_columns(path, events=False, **kw).n_packets

    def col_rows() -> int:
        return len(decode_columns(path, events=False).packets)

    def df(decode):
        return lambda: len(decode(path, events=False).packets_df())

    def events(decode, s=None):
        """`decode` with the events derived, then `events_df()` (the user's table)."""
        def run() -> int:
            cap = decode(path, s)
            cap.events_df()
            return cap.n_packets
        return run

    def parquet() -> int:
        out = tmp / "pq"
        shutil.rmtree(out, ignore_errors=True)
        return write_parquet(path, out, events=False)["packets"]

    res = measure_group({"records": records, "fast_path": col,
                         "fast_path_no_checksums": lambda: col(checksums=False),
                         "row_fast_path": lambda: decode_pcap(path, events=False).n_packets},
                        repeat)
    group = {"rows": col_rows, "packets_df": df(decode_columns),
             "row_packets_df": df(decode_pcap)}
    if arrow_or_none() is not None:
        group["parquet_write"] = parquet
    res |= measure_group(group, repeat)
    res.setdefault("parquet_write", {"skipped": "pyarrow is not installed (the parquet extra)"})
    res |= measure_group({"events_df": events(decode_columns),
                          "row_events_df": events(decode_pcap)}, repeat)
    res |= measure_group({"events_df_secret": events(decode_columns, secret),
                          "row_events_df_secret": events(decode_pcap, secret)},
                         max(1, repeat - 1))
    return res


def baselines(path: Path, tmp: Path, args) -> dict:
    """scapy and tshark on the first --baseline-packets packets of the capture (and, for the
    ratio, the columnar table of that same prefix)."""
    out: dict = {}
    prefix = tmp / "prefix.pcap"
    repeat_capture(path, prefix, packets=args.baseline_packets)
    out["prefix_packets"] = args.baseline_packets
    out |= measure_group({"packets_df_prefix": lambda: len(
        decode_columns(prefix, events=False).packets_df())}, args.repeat)
    try:
        import logging

        from scapy.utils import PcapReader

        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        eth = tmp / "prefix_ether.pcap"
        write_ethernet_prefix(prefix, eth, args.baseline_packets)

        def scapy_iter() -> int:
            n = 0
            with PcapReader(str(eth)) as r:
                for _ in r:
                    n += 1
            return n

        out |= measure_group({"scapy_pcapreader_ethernet": scapy_iter}, 1)
    except ImportError:
        out["scapy_pcapreader_ethernet"] = {"skipped": "scapy is not installed"}
    out["tshark_fields_lua"] = tshark_fields(prefix, tmp)
    return out


def tshark_fields(pcap: Path, tmp: Path) -> dict:
    """Wall and child CPU seconds of tshark -T fields with the Lua dissector."""
    exe = shutil.which("tshark")
    if exe is None:
        return {"skipped": "tshark is not installed (make sysdeps)"}
    d = tmp / "tshark"
    d.mkdir()
    os.chmod(tmp, 0o755)
    os.chmod(d, 0o755)
    lua = d / "trickles.lua"
    shutil.copy(REPO / "trickles_kit" / "dissector" / "trickles.lua", lua)
    copy = d / "in.pcap"
    shutil.copy(pcap, copy)
    for p in (lua, copy):
        os.chmod(p, 0o644)
    argv = [exe, "-n", "-X", f"lua_script:{lua}", "-r", str(copy), "-T", "fields"]
    for f in TSHARK_FIELDS:
        argv += ["-e", f]
    if os.geteuid() == 0:  # tshark ignores Lua scripts as root
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = dict(os.environ, HOME=str(d), XDG_CONFIG_HOME=str(d))
    t0, r0 = time.perf_counter(), os.times()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=d, timeout=3600)
    wall, r1 = time.perf_counter() - t0, os.times()
    cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    lines = p.stdout.count("\n")
    filled = sum(1 for line in p.stdout.splitlines() if line.split("\t")[1:2] != [""])
    if p.returncode != 0:
        return {"error": p.stderr[-500:]}
    return {"packets": lines, "rows_with_trickles_fields": filled, "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3), "packets_per_s_cpu": round(lines / cpu) if cpu else None,
            "fields": TSHARK_FIELDS}


def memory(template: Path, tmp: Path, gb: float) -> dict:
    """A `gb` GB capture into Parquet in a child process: its peak RSS; DuckDB counts the rows."""
    big = tmp / "big.pcap"
    info = repeat_capture(template, big, size=int(gb * 1e9))
    out = tmp / "bigpq"
    # the peak is the child's VmHWM (its own address space): ru_maxrss would also count the
    # pages of this process the child was forked with, before its exec
    code = ("import re, sys, time; from trickles_kit.cli import main;"
            " t = time.perf_counter();"
            " rc = main(['decode', sys.argv[1], '--format', 'parquet', '-o', sys.argv[2]]);"
            " hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1];"
            " print(rc, hwm, time.perf_counter() - t)")
    p = subprocess.run([sys.executable, "-c", code, str(big), str(out)], capture_output=True,
                       text=True, cwd=REPO, timeout=3600,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                           [str(REPO), os.environ.get("PYTHONPATH", "")])))
    big.unlink()
    if p.returncode != 0:
        return {"error": p.stderr[-800:]}
    rc, rss_kb, wall = p.stdout.split()[-3:]
    res = {"capture_bytes": info["bytes"], "capture_records": info["records"],
           "command": "trickles decode BIG.pcap --format parquet -o OUT/",
           "exit": int(rc), "peak_rss_mb": round(int(rss_kb) / 1024, 1),
           "wall_s": round(float(wall), 2)}
    try:
        import duckdb

        res["duckdb_rows"] = duckdb.sql(
            f"select count(*) from read_parquet('{out}/packets/*/*.parquet')").fetchall()[0][0]
    except ImportError:
        res["duckdb_rows"] = None
    return res


def targets(doc: dict) -> dict:
    lay, mem = doc["layers"], doc.get("memory", {})
    n = doc["capture"]["capture"]["records"]

    def rate(k):
        return lay[k]["packets_per_s_cpu"]

    return {
        "capture_packets": n,
        "packets_df_pkt_s": rate("packets_df"), "packets_df_met": rate("packets_df") >= 1e6,
        "events_df_pkt_s": rate("events_df"), "events_df_met": rate("events_df") >= 3e5,
        "fast_path_pkt_s": rate("fast_path"), "fast_path_met": rate("fast_path") >= 5e5,
        "fast_path_no_checksums_pkt_s": rate("fast_path_no_checksums"),
        "packets_df_vs_row_decoder": round(rate("packets_df") / rate("row_packets_df"), 2),
        "events_df_vs_row_decoder": round(rate("events_df") / rate("row_events_df"), 2),
        "at_least_1m_packets": n >= 1_000_000,
        "big_capture_rss_mb": mem.get("peak_rss_mb"),
        "big_capture_under_512mb": (mem.get("peak_rss_mb") or 1e9) < 512,
    }


if __name__ == "__main__":
    raise SystemExit(main())
