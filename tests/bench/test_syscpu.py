"""`bench.syscpu`: the machine-wide CPU accounting beside the process figure is sane.

A known busy loop (a child that spins for 0.5 s of its own CPU time) must show up in the
process figure and in the machine's raw busy time; every attributed figure is non-negative
whatever the machine's other load (the baseline subtraction is clamped); the arithmetic of the
baseline subtraction is checked on made-up numbers. Nothing about speed is asserted.
"""

from __future__ import annotations

import subprocess
import sys

from trickles_kit.bench import syscpu

SPIN = ("import sys, time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.5:\n"
        "    pass\n"
        "print('spun', flush=True)\n"
        "sys.stdin.read()\n")
TICK = 1 / syscpu.CLK_TCK


def test_a_busy_loop_is_counted() -> None:
    m = syscpu.Meter()
    m.baseline(0.2)
    p = subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        m.start([p.pid])
        assert p.stdout is not None and p.stdout.readline().strip() == "spun"
        m.stop()
    finally:
        p.communicate("", timeout=30)
    r = m.report(1_000_000)
    # the loop's 0.5 s, less the ticks of start-up before start() (a few: interpreter start)
    assert 0.4 <= r["server_process_s"] <= 5.0, r
    # the machine-wide counters saw at least what the process did (all CPUs, ticks)
    assert m.raw["tasks"] >= r["server_process_s"] - 4 * TICK, (m.raw, r)
    for k in ("kernel_net_s", "server_plus_kernel_s", "machine_s", "server_process_s"):
        assert r[k] >= 0, (k, r)
    assert all(v >= 0 for v in r["per_mb"].values())
    assert r["server_plus_kernel_s"] >= r["server_process_s"]


def test_baseline_subtraction() -> None:
    m = syscpu.Meter(base_rate={"tasks": 1.0, "softirq": 0.1, "irq": 0.0, "ksoftirqd": 0.0},
                     wall_s=2.0, process_s=0.5)
    m.raw = {"tasks": 3.0, "softirq": 0.5, "irq": 0.0, "ksoftirqd": 0.1}
    r = m.report(2_000_000)
    assert r["kernel_net_s"] == 0.4  # 0.5 - 0.1 x 2 + 0.1
    assert r["machine_s"] == 1.3  # (3 - 2) + (0.5 - 0.2)
    assert r["server_plus_kernel_s"] == 0.9
    assert r["per_mb"]["server_plus_kernel_s"] == 0.45
    m.raw = {"tasks": 1.0, "softirq": 0.0, "irq": 0.0, "ksoftirqd": 0.0}  # busier baseline
    r = m.report()
    assert r["machine_s"] == 0.0 and r["kernel_net_s"] == 0.0
    assert r["baseline_share_of_raw"] == 2.2


def test_from_flows_and_medians() -> None:
    run = {"wall_s": 1.0, "machine_cpu_s": {"tasks": 2.0, "irq": 0.3}}
    r = syscpu.from_flows({"tasks": 1.0, "softirq": 0.05, "irq": 0.05}, run, 0.2, 1_000_000)
    assert r["kernel_net_s"] == 0.2 and r["server_plus_kernel_s"] == 0.4
    runs = [{"kind": "a", "system": {"per_mb": {"x": v}}} for v in (3.0, 1.0, 2.0)]
    assert syscpu.medians_per_mb(runs, ["a", "b"]) == {"a": {"x": 2.0}, "b": {}}
