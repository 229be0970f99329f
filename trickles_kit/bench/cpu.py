"""`trickles bench cpu`: server CPU seconds per MB served, Trickles against Linux TCP (Reno).

One transfer per protocol through the testbed (a bottleneck fast enough that neither server is
held back by it for long). CPU is the server process's utime + stime from /proc/PID/stat, all
threads, read before and after the transfer. For Linux TCP that includes the kernel time spent
in the process's own system calls (sendmsg, the stack below it run in process context); it does
not include softirq work run outside the process (ack processing and veth delivery in softirq
context are booked to whatever runs on that CPU), so TCP's figure is a lower bound. Trickles
runs its protocol in the process (Python), so nearly all of its cost is counted.

Beside it, `syscpu` counts the kernel: the whole machine's busy time during the transfer
(softirq included) minus an idle baseline measured just before each run (`system` per run,
`system_cpu_s_per_mb` in the summary), the same way for both protocols.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trickles_kit.bench import syscpu
from trickles_kit.bench.goodput import FlowSpec, log, run_flows
from trickles_kit.bench.meta import meta
from trickles_kit.bench.rtt import path_config, preflight_path, rtt_argv

RATE = 100.0
SIZES = {True: 10_000_000, False: 50_000_000}
REPEATS = {True: 1, False: 3}
KINDS = ("trickles", "reno")
BASELINE_S = {True: 1.0, False: 2.0}  # idle machine measured before each run (syscpu)


def run(quick: bool, out_dir: Path, verbose: bool = False, rtt_ms: float = 0.0,
        jitter_ms: float = 0.0) -> dict:
    """The transfers through a path of idle RTT `rtt_ms` (`bench.rtt`: checked first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rtt = preflight_path(rtt_ms, jitter_ms, RATE, verbose)
    t0 = time.monotonic()
    size = SIZES[quick]
    runs = []
    todo = [(k, i) for i in range(REPEATS[quick]) for k in KINDS]
    for n, (kind, i) in enumerate(todo, 1):
        log(f"[cpu {n}/{len(todo)}] {kind} {size / 1e6:.0f} MB at {RATE} Mbit/s ...", True)
        base = syscpu.Meter().baseline(BASELINE_S[quick])
        try:
            r = run_flows(path_config(RATE, 0.0, rtt_ms, jitter_ms), [FlowSpec(kind, size)],
                          verbose,
                          f"cpu_{kind}_{i}", series=False)
        except (RuntimeError, OSError, ValueError) as e:
            runs.append({"kind": kind, "error": f"{type(e).__name__}: {e}"})
            continue
        cpu = r["server_cpu_s"].get(kind)
        runs.append({"kind": kind, "repeat": i, "bytes": size, "server_cpu_s": cpu,
                     "cpu_s_per_mb": round(cpu / (size / 1e6), 5) if cpu is not None else None,
                     "machine_cpu_s": r.get("machine_cpu_s"),
                     "machine_cpu_s_per_mb": {k: round(v / (size / 1e6), 5) for k, v in
                                              r.get("machine_cpu_s", {}).items()},
                     "system": syscpu.from_flows(base, r, cpu, size),
                     "goodput_mbit": r["flows"][0].get("goodput_mbit") if r["flows"] else None,
                     "byte_exact": r["all_byte_exact"]})
        log(f"    {runs[-1]['cpu_s_per_mb']} CPU s/MB", verbose)
    per = {}
    for kind in KINDS:
        v = sorted(r["cpu_s_per_mb"] for r in runs if r["kind"] == kind
                   and r.get("cpu_s_per_mb") is not None)
        per[kind] = v[len(v) // 2] if v else None
    system = syscpu.medians_per_mb(runs, KINDS)
    res = {"experiment": "cpu",
           "meta": meta(["-m", "trickles_kit.cli", "bench", "cpu"]
                        + (["--quick"] if quick else []) + rtt_argv(rtt_ms, jitter_ms),
                        "quick" if quick else "full"),
           "rtt": rtt, "rate_mbit": RATE, "bytes": size,
           "counted": "server process utime+stime (/proc/PID/stat, all threads) during the "
                      "transfer; Linux TCP: includes kernel time in its system calls, not "
                      "softirq time outside the process (a lower bound); Trickles: the whole "
                      "protocol runs in the process. machine_cpu_s: the whole machine during "
                      "the transfer (client, server, router, tcpdump; tasks and irq+softirq), "
                      "an upper bound that includes other load on the machine",
           "servers": {"trickles": "trickles serve --transport raw (Python)",
                       "reno": "python -m trickles_kit.bench.tcphttp --cc reno (Python HTTP "
                               "server over kernel TCP)"},
           "counted_system": syscpu.COUNTED,
           "runs": runs, "cpu_s_per_mb": per, "system_cpu_s_per_mb": system,
           "trickles_over_tcp": round(per["trickles"] / per["reno"], 2)
           if per["trickles"] and per["reno"] else None,
           "wall_s": round(time.monotonic() - t0, 1)}
    (out_dir / "cpu.json").write_text(json.dumps(res, indent=1) + "\n")
    return res
