"""`trickles bench quic`: QUIC (HTTP/3, aioquic) as the third baseline beside Linux TCP.

QUIC runs its transport in user space, as Trickles does, but keeps state per connection, as TCP
does: the comparison that separates "user-space Python" from "stateless". Four parts, each with
Trickles and Linux TCP (Reno) measured in the same run:

* **goodput** through the `goodput` testbed (client - router - server, tbf bottleneck, the
  NFQUEUE delay line for `--rtt`, checked by the pre-flight first), one flow at a time,
  interleaved within each repeat, every flow by the same `flow()`. Goodput here is the
  client's: body bytes x 8 / (request start, handshake included, to the last byte), the same
  for the three (QUIC's packets are encrypted, so a router capture cannot count its body
  bytes; `trickles bench goodput` has the capture figures of Trickles and Reno).
* **cpu** per MB at 100 Mbit/s, no delay: the server process's utime + stime, and beside it
  the same plus the kernel's network work (softirq, irq, ksoftirqd) against an idle baseline
  (`syscpu`), the client's CPU and the whole machine's.
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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

from trickles_kit.bench import memory, quic_memory, syscpu
from trickles_kit.bench.goodput import (  # the Trickles and Reno ends of its testbed
    FlowSpec,
    _client_argv,
    _client_result,
    _start_servers,
    _wait_line,
    log,
)
from trickles_kit.bench.meta import CHILD_CWD, meta
from trickles_kit.bench.quic_server import PORT as QUIC_PORT
from trickles_kit.bench.rtt import (
    RttPreflightError,
    expected_mbit,
    path_config,
    preflight_path,
)
from trickles_kit.net.testbed import CLIENT, SERVER, SERVER_ADDR, Testbed, TestbedConfig

KINDS = ("trickles", "reno", "quic")
RATES = {True: (10,), False: (10, 50)}
SECONDS = {True: 2.0, False: 8.0}  # target transfer time per goodput run
REPEATS = {True: 1, False: 3}
CPU_RATE = 100.0
CPU_BYTES = {True: 5_000_000, False: 30_000_000}
BASELINE_S = {True: 1.0, False: 2.0}
# QUIC's levels stay small (a handshake costs ms of Python at both ends); Trickles' and TCP's
# reach past where Trickles' fixed-size soft caches fill (`bench.memory`'s docstring)
QUIC_LEVELS = {True: [1, 10, 100, 300], False: [1, 10, 100, 300, 1000]}
TK_LEVELS = {True: [1, 10, 100, 1000], False: memory.FULL_LEVELS}
MEMORY_SHARE = 0.05  # the target: Trickles' bytes per connection under 5 % of QUIC's


def _server(tb: Testbed, kind: str, cfg: TestbedConfig, root: Path) -> subprocess.Popen:
    """The server of `kind` in the server namespace, once it listens."""
    if kind != "quic":
        return _start_servers(tb, cfg, {kind}, root)[kind]
    srv = tb.popen(SERVER, [sys.executable, "-m", "trickles_kit.bench.quic_server", "--bind",
                            SERVER_ADDR, "--port", str(QUIC_PORT)], stdout=subprocess.PIPE,
                   stderr=subprocess.DEVNULL, text=True, cwd=CHILD_CWD)
    _wait_line(srv, "quic_server: serving", "quic_server")
    return srv


def _client(tb: Testbed, kind: str, size: int, timeout: float, out: Path
            ) -> tuple[subprocess.Popen, float | None]:
    """Run the client of `kind` to its end (killed after `timeout` + 30 s); its process and
    its CPU seconds from the kernel's rusage (reaped here, start-up included)."""
    argv = ([sys.executable, "-m", "trickles_kit.bench.quic_client", "fetch", SERVER_ADDR,
             "--port", str(QUIC_PORT), "--size", str(size), "--timeout", str(timeout)]
            if kind == "quic" else _client_argv(FlowSpec(kind, size), timeout))
    with open(out, "w") as o:
        p = tb.popen(CLIENT, argv, stdout=o, stderr=subprocess.STDOUT, cwd=CHILD_CWD)
    end = time.monotonic() + timeout + 30
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p, ru.ru_utime + ru.ru_stime
        if time.monotonic() > end:
            p.kill()
            p.wait()
            return p, None
        time.sleep(0.02)


def _result(kind: str, size: int, out: Path, p: subprocess.Popen) -> dict:
    if kind != "quic":
        c = _client_result(FlowSpec(kind, size), out, p)
        if kind == "trickles":  # its fetch reports bits per second
            c["goodput_mbit"] = round(c.get("goodput_bps", 0) / 1e6, 4) or None
        return c
    text = out.read_text()
    try:
        c = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        c = {"ok": False, "error": f"exit {p.returncode}: {text[-800:]}"}
    c["byte_exact"] = bool(c.get("sha_ok")) and c.get("bytes") == size
    return c


def flow(kind: str, cfg: TestbedConfig, size: int, verbose: bool = False,
         baseline_s: float = 0.0) -> dict:
    """One transfer of `size` generated bytes by `kind` (trickles, reno, quic) through a fresh
    testbed, measured the same way for all three: the client's goodput and byte check, the
    server's and the client's CPU, the kernel's (`syscpu`), the router's counters."""
    timeout = max(60.0, 8 * size * 8 / (cfg.rate_mbit * 1e6) + 30)
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-quic-"))
    os.chmod(tmp, 0o755)
    try:
        with Testbed(cfg, verbose=verbose, tag=f"quic{os.getpid() % 10000}{kind[0]}") as tb:
            srv = _server(tb, kind, cfg, tmp)
            meter = syscpu.Meter()
            if baseline_s:
                meter.baseline(baseline_s)
            meter.start([srv.pid])
            p, client_s = _client(tb, kind, size, timeout, tmp / "client.out")
            meter.stop(client_s)
            router = tb.counters()
            alive = srv.poll() is None
            desc = tb.describe()
        c = _result(kind, size, tmp / "client.out", p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"client": c, "system": meter.report(size), "router": router,
            "server_alive_at_end": alive, "testbed": desc}


def _one(kind: str, cfg: TestbedConfig, size: int, verbose: bool, baseline_s: float) -> dict:
    try:
        return flow(kind, cfg, size, verbose, baseline_s)
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
        try:  # a path that fails its pre-flight is recorded and skipped, not measured wrong
            preflights[f"{rtt:g}"] = preflight_path(rtt, jitter_ms, max(RATES[quick]), verbose)
        except RttPreflightError as e:
            preflights[f"{rtt:g}"] = {"rtt_asked_ms": rtt, "refused": str(e)}
            log(f"[quic goodput] RTT {rtt:g} ms refused by the pre-flight: {e}", True)
            continue
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
    levels = TK_LEVELS[quick]
    q = quic_memory.run(quick, QUIC_LEVELS[quick], verbose)
    with tempfile.TemporaryDirectory(prefix="tk-quic-mem-") as d:
        m = memory.run(quick, Path(d), verbose, levels=levels,
                       argv=["-m", "trickles_kit.bench.memory", "run", "--levels",
                             ",".join(map(str, levels))])
    s = m["summary"]
    tk, qb = s.get("trickles_bytes_per_connection"), q.get("quic_bytes_per_connection")
    return {"levels": {"quic": QUIC_LEVELS[quick], "trickles_tcp": levels}, "quic": q,
            "trickles_tcp_summary": s,
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
