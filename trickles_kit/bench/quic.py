"""`trickles bench quic`: QUIC (HTTP/3, aioquic) as the third baseline beside Linux TCP.

QUIC runs its transport in user space, as Trickles does, but keeps state per connection, as TCP
does: the comparison that separates "user-space Python" from "stateless". Four parts, each with
Trickles and Linux TCP (Reno) measured in the same run:

* **goodput** through the `goodput` testbed (client - router - server, tbf bottleneck, the
  NFQUEUE delay line for `--rtt`, checked by the pre-flight first), one flow at a time,
  interleaved within each repeat. Goodput here is the client's: body bytes x 8 / (request start,
  handshake included, to the last byte), the same for the three (QUIC's packets are encrypted,
  so the router capture cannot count its body bytes); Trickles' and Reno's capture figure is
  recorded beside it.
* **cpu** per MB at 100 Mbit/s, no delay: the server process's utime + stime, and the whole
  machine's busy time against an idle baseline (`syscpu`: softirq included).
* **memory** per live connection: `quic_memory` (QUIC) and `memory` (Trickles, TCP) at the
  same levels, fresh servers per level.
* **failover** (when given a runner: `services.quic_failover.compare`, one layer up): a QUIC
  connection whose replica dies, against Trickles and TCP in the same replica set.

The acceptance target printed by `trickles bench`: Trickles server memory per connection
< 5 % of QUIC's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

from trickles_kit.bench import memory, quic_memory, syscpu
from trickles_kit.bench.goodput import FlowSpec, _wait_line, log, run_flows
from trickles_kit.bench.meta import CHILD_CWD, meta
from trickles_kit.bench.quic_server import PORT as QUIC_PORT
from trickles_kit.bench.rtt import expected_mbit, path_config, preflight_path
from trickles_kit.net.testbed import CLIENT, SERVER, SERVER_ADDR, Testbed, TestbedConfig

KINDS = ("trickles", "reno", "quic")
RATES = {True: (10,), False: (10, 50)}
SECONDS = {True: 2.0, False: 8.0}  # target transfer time per goodput run
REPEATS = {True: 1, False: 3}
CPU_RATE = 100.0
CPU_BYTES = {True: 5_000_000, False: 30_000_000}
BASELINE_S = {True: 1.0, False: 2.0}
MEMORY_LEVELS = {True: [1, 10, 100], False: [1, 10, 100, 300, 1000]}
MEMORY_SHARE = 0.05  # the target: Trickles' bytes per connection under 5 % of QUIC's


def quic_flow(cfg: TestbedConfig, size: int, timeout: float, verbose: bool = False,
              baseline_s: float = 0.0) -> dict:
    """One HTTP/3 transfer through a fresh testbed: the client's JSON, CPU, router counters."""
    with Testbed(cfg, verbose=verbose, tag=f"q{int(time.time() * 10) % 100000}") as tb:
        srv = tb.popen(SERVER, [sys.executable, "-m", "trickles_kit.bench.quic_server",
                                "--bind", SERVER_ADDR, "--port", str(QUIC_PORT)],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                       cwd=CHILD_CWD)
        _wait_line(srv, "quic_server: serving", "quic_server")
        meter = syscpu.Meter()
        if baseline_s:
            meter.baseline(baseline_s)
        meter.start([srv.pid])
        cli = tb.popen(CLIENT, [sys.executable, "-m", "trickles_kit.bench.quic_client",
                                "fetch", SERVER_ADDR, "--port", str(QUIC_PORT), "--size",
                                str(size), "--timeout", str(timeout)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       cwd=CHILD_CWD)
        try:
            out, err = cli.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            cli.kill()
            out, err = cli.communicate()
        meter.stop()
        router = tb.counters()
        srv.terminate()
        desc = tb.describe()
    try:
        j = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        j = {"ok": False, "error": f"exit {cli.returncode}: {(out + err)[-800:]}"}
    j["byte_exact"] = bool(j.get("sha_ok")) and j.get("bytes") == size
    return {"client": j, "system": meter.report(size), "router": router, "testbed": desc}


def _tk_tcp_flow(kind: str, cfg: TestbedConfig, size: int, verbose: bool,
                 baseline_s: float) -> dict:
    """The same measurement for Trickles or Reno (through `goodput.run_flows`)."""
    base = syscpu.Meter().baseline(baseline_s) if baseline_s else None
    r = run_flows(cfg, [FlowSpec(kind, size)], verbose, f"quic_cmp_{kind}", series=False)
    c = r["clients"][0]
    app = c.get("goodput_mbit") if kind != "trickles" else \
        round(c.get("goodput_bps", 0) / 1e6, 4) or None
    f = r["flows"][0] if r["flows"] else {}
    cpu = (r.get("server_cpu_s") or {}).get(kind)
    return {"client": {**c, "goodput_mbit": app}, "capture_goodput_mbit": f.get("goodput_mbit"),
            "system": syscpu.from_flows(base, r, cpu, size), "router": r.get("router"),
            "testbed": r["testbed"]}


def _one(kind: str, cfg: TestbedConfig, size: int, verbose: bool, baseline_s: float) -> dict:
    timeout = max(60.0, 8 * size * 8 / (cfg.rate_mbit * 1e6) + 30)
    try:
        if kind == "quic":
            return quic_flow(cfg, size, timeout, verbose, baseline_s)
        return _tk_tcp_flow(kind, cfg, size, verbose, baseline_s)
    except (RuntimeError, OSError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def _med(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return round(statistics.median(v), 5) if v else None


def goodput(quick: bool, rtts: Sequence[float], jitter_ms: float = 0.0,
            verbose: bool = False) -> dict:
    """Goodput of the three at each RTT and rate, 0 % loss, median of the repeats."""
    runs, preflights = [], {}
    for rtt in rtts:
        preflights[f"{rtt:g}"] = preflight_path(rtt, jitter_ms, max(RATES[quick]), verbose)
        todo = [(rate, rep, k) for rate in RATES[quick] for rep in range(REPEATS[quick])
                for k in KINDS]
        for i, (rate, rep, kind) in enumerate(todo, 1):
            size = int(expected_mbit(rate, rtt, 0.0) * 1e6 / 8 * SECONDS[quick])
            log(f"[quic goodput RTT {rtt:g} ms {i}/{len(todo)}] {kind} {rate} Mbit/s "
                f"{size / 1e6:.1f} MB ...", True)
            r = _one(kind, path_config(rate, 0.0, rtt, jitter_ms), size, verbose, 0.0)
            c = r.get("client", {})
            runs.append({"rtt_ms": rtt, "rate_mbit": rate, "kind": kind, "repeat": rep,
                         "size": size, "goodput_mbit": c.get("goodput_mbit"),
                         "capture_goodput_mbit": r.get("capture_goodput_mbit"),
                         "byte_exact": c.get("byte_exact"),
                         "server_cpu_s": r.get("system", {}).get("server_process_s"),
                         "delay": (r.get("testbed") or {}).get("delay"),
                         **({"error": r["error"]} if "error" in r else {})})
    table = []
    for rtt in rtts:
        for rate in RATES[quick]:
            row: dict = {"rtt_ms": rtt, "rate_mbit": rate}
            for kind in KINDS:
                rs = [r for r in runs if (r["rtt_ms"], r["rate_mbit"], r["kind"]) ==
                      (rtt, rate, kind)]
                row[kind] = _med([r["goodput_mbit"] for r in rs])
                row[f"{kind}_byte_exact"] = bool(rs) and all(r["byte_exact"] for r in rs)
            row["quic_over_reno"] = round(row["quic"] / row["reno"], 3) \
                if row["quic"] and row["reno"] else None
            row["trickles_over_quic"] = round(row["trickles"] / row["quic"], 3) \
                if row["trickles"] and row["quic"] else None
            table.append(row)
    return {"rtt_preflight": preflights, "table": table, "runs": runs}


def cpu(quick: bool, verbose: bool = False) -> dict:
    """CPU per MB of the three at 100 Mbit/s: the process figure and the machine's."""
    size, runs = CPU_BYTES[quick], []
    todo = [(rep, k) for rep in range(REPEATS[quick]) for k in KINDS]
    for i, (rep, kind) in enumerate(todo, 1):
        log(f"[quic cpu {i}/{len(todo)}] {kind} {size / 1e6:.0f} MB at {CPU_RATE:g} Mbit/s",
            True)
        r = _one(kind, TestbedConfig(rate_mbit=CPU_RATE), size, verbose, BASELINE_S[quick])
        runs.append({"kind": kind, "repeat": rep, "bytes": size,
                     "byte_exact": r.get("client", {}).get("byte_exact"),
                     "goodput_mbit": r.get("client", {}).get("goodput_mbit"),
                     "system": r.get("system"),
                     **({"error": r["error"]} if "error" in r else {})})
    per = syscpu.medians_per_mb(runs, KINDS)
    return {"rate_mbit": CPU_RATE, "bytes": size, "counted": syscpu.COUNTED,
            "per_mb": per, "runs": runs}


def mem(quick: bool, out_dir: Path, verbose: bool = False) -> dict:
    """Bytes per live connection: QUIC, and Trickles and TCP at the same levels."""
    levels = MEMORY_LEVELS[quick]
    q = quic_memory.run(quick, levels, verbose)
    with tempfile.TemporaryDirectory(prefix="tk-quic-mem-") as d:
        m = memory.run(quick, Path(d), verbose, levels=levels,
                       argv=["-m", "trickles_kit.bench.memory", "run", "--levels",
                             ",".join(map(str, levels))])
    s = m["summary"]
    tk, qb = s.get("trickles_bytes_per_connection"), q.get("quic_bytes_per_connection")
    return {"levels": levels, "quic": q, "trickles_tcp_summary": s,
            "bytes_per_connection": {"trickles": tk, "quic": qb,
                                     "tcp": s.get("tcp_bytes_per_connection")},
            "trickles_share_of_quic": round(tk / qb, 5) if tk is not None and qb else None,
            "note": "Trickles and TCP parked mid-transfer (bench.memory); QUIC idle after one "
                    "complete request (quic_memory: its floor)"}


def targets(res: dict) -> list[dict]:
    """The issue's QUIC target, as `trickles bench` prints them."""
    bpc = (res.get("memory") or {}).get("bytes_per_connection") or {}
    tk, qb = bpc.get("trickles"), bpc.get("quic")
    if tk is None or not qb:
        return []
    return [{"target": f"Trickles server memory per connection < {MEMORY_SHARE:.0%} of "
                       f"QUIC's ({qb} B)", "got": tk, "met": tk < MEMORY_SHARE * qb}]


def run(quick: bool, out_dir: Path, verbose: bool = False, rtt_ms: float = 0.0,
        jitter_ms: float = 0.0, failover: Callable[[bool, bool], dict] | None = None,
        rtts: Sequence[float] | None = None, argv: Sequence[str] | None = None) -> dict:
    """Every part; writes `out_dir/quic.json` and returns it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rtts = list(rtts) if rtts else [rtt_ms]
    t0 = time.monotonic()
    cmd = list(argv) if argv else (["-m", "trickles_kit.cli", "bench", "quic"]
                                   + (["--quick"] if quick else [])
                                   + ([f"--rtt={rtt_ms:g}"] if rtt_ms else [])
                                   + ([f"--jitter={jitter_ms:g}"] if jitter_ms else []))
    res: dict = {"experiment": "quic", "meta": meta(cmd, "quick" if quick else "full"),
                 "method": (__doc__ or "").split("\n\n", 1)[1].strip(),
                 "quic": _versions(), "loadavg_at_start": _loadavg()}
    for name, part in (("goodput", lambda: goodput(quick, rtts, jitter_ms, verbose)),
                       ("cpu", lambda: cpu(quick, verbose)),
                       ("memory", lambda: mem(quick, out_dir, verbose)),
                       ("failover", (lambda: failover(quick, verbose)) if failover else None)):
        if part is None:
            res[name] = {"skipped": "no failover runner given (trickles bench quic gives it)"}
            continue
        t1 = time.monotonic()
        try:
            res[name] = part()
        except (RuntimeError, OSError, ValueError) as e:
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        res[name]["wall_s"] = round(time.monotonic() - t1, 1)
    res["targets"] = targets(res)
    res["loadavg_at_end"] = _loadavg()
    res["wall_s"] = round(time.monotonic() - t0, 1)
    (out_dir / "quic.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    return res


def _versions() -> dict:
    return {"aioquic": version("aioquic"), "congestion_control": "reno",
            "datagram_bytes": 1472, "flow_control_window_bytes": 16 << 20}


def _loadavg() -> list[float]:
    return list(os.getloadavg())
