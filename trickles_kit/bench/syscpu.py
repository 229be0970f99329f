"""CPU time that counts the kernel: what a run costs the whole machine, beside the process figure.

A server process's utime + stime (`/proc/PID/stat`) misses most of what Linux TCP costs: ACK
processing, veth delivery and forwarding run in softirq context, charged to no process (or to
whichever one happened to run), and the router and client namespaces are the same kernel. A
user-space protocol (Trickles, QUIC) does nearly all of its work in the process. To compare them
the same way, `Meter` reads the machine's `/proc/stat` (all CPUs: user, nice, system, irq,
softirq, steal) before and after a run and subtracts an **idle baseline** measured just before:
the machine's busy rate while the testbed exists but carries nothing, times the run's length.
What is left is what the run caused — server, client, router, capture and the kernel's network
work — softirq reported on its own.

On a machine shared with other work the baseline is only an estimate of what that other work
did during the run, so `Meter` records the baseline's rate and the raw totals too: a result can
be judged by how large the subtraction was. Attributed figures are clamped at zero (and say so).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
KINDS = ("tasks", "softirq", "irq")  # what `machine_s` adds up (steal: another guest's)


def proc_stat() -> dict[str, float]:
    """The machine's CPU seconds so far, per /proc/stat field (all CPUs summed)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return {k: int(v) / CLK_TCK for k, v in zip(FIELDS, first[1:], strict=False)}


def busy(stat: dict[str, float]) -> dict[str, float]:
    """Busy seconds split as reported: tasks (user+nice+system), kernel (irq+softirq), steal."""
    return {"tasks": stat["user"] + stat["nice"] + stat["system"],
            "softirq": stat["softirq"], "irq": stat["irq"], "steal": stat.get("steal", 0.0)}


def process_cpu_s(pids: Iterable[int]) -> float:
    """utime + stime (+ waited-for children) of live processes `pids`, all their threads."""
    total = 0.0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = text[text.rindex(")") + 2 :].split()
        total += sum(int(x) for x in f[11:15]) / CLK_TCK
    return total


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


@dataclass
class Meter:
    """Machine-wide CPU of one run against an idle baseline; server processes beside it.

        m = Meter(); m.baseline(1.0)     # the testbed built, nothing running through it
        m.start(server_pids); ...run...; m.stop(); m.report(bytes_served)
    """

    pids: list[int] = field(default_factory=list)
    base_rate: dict[str, float] | None = None  # busy seconds per wall second, idle
    base_wall_s: float = 0.0
    _s0: dict[str, float] | None = None
    _p0: float = 0.0
    _t0: float = 0.0
    wall_s: float = 0.0
    raw: dict[str, float] = field(default_factory=dict)
    process_s: float = 0.0

    def baseline(self, seconds: float = 1.0) -> dict[str, float]:
        """Measure the machine's idle busy rate for `seconds` (this process sleeping)."""
        t0, s0 = time.monotonic(), busy(proc_stat())
        time.sleep(seconds)
        t1, s1 = time.monotonic(), busy(proc_stat())
        self.base_wall_s = t1 - t0
        self.base_rate = {k: v / self.base_wall_s for k, v in _delta(s0, s1).items()}
        return self.base_rate

    def start(self, pids: Iterable[int] = ()) -> None:
        self.pids = list(pids)
        self._p0 = process_cpu_s(self.pids)
        self._t0, self._s0 = time.monotonic(), busy(proc_stat())

    def stop(self) -> None:
        assert self._s0 is not None, "start() first"
        s1, t1 = busy(proc_stat()), time.monotonic()
        self.process_s = max(0.0, process_cpu_s(self.pids) - self._p0)
        self.wall_s = t1 - self._t0
        self.raw = _delta(self._s0, s1)

    def attributed(self) -> dict[str, float]:
        """Busy seconds the run caused: raw minus baseline rate x wall, per kind, >= 0."""
        rate = self.base_rate or dict.fromkeys(self.raw, 0.0)
        return {k: max(0.0, v - rate.get(k, 0.0) * self.wall_s) for k, v in self.raw.items()}

    def report(self, nbytes: int | None = None) -> dict:
        """The run's figures; per MB too when `nbytes` is given."""
        att = self.attributed()
        rate = self.base_rate or {}
        machine = att["tasks"] + att["softirq"] + att["irq"]
        kernel_net = att["softirq"] + att["irq"]
        out: dict = {
            "wall_s": round(self.wall_s, 3),
            "server_process_s": round(self.process_s, 3),
            "server_process_plus_softirq_s": round(self.process_s + kernel_net, 3),
            "machine_s": round(machine, 3),
            "machine_softirq_irq_s": round(kernel_net, 3),
            "machine_raw_s": {k: round(v, 3) for k, v in self.raw.items()},
            "baseline_busy_per_s": {k: round(v, 3) for k, v in (self.base_rate or {}).items()},
            "baseline_wall_s": round(self.base_wall_s, 2),
            # how much of the raw busy time the baseline took away: near 1, the run is noise
            "baseline_share_of_raw": round(sum(rate.get(k, 0.0) for k in KINDS) * self.wall_s
                                           / max(1e-9, sum(self.raw[k] for k in KINDS)), 3),
            "loadavg": os.getloadavg(),
        }
        if nbytes:
            mb = nbytes / 1e6
            out["per_mb"] = {k: round(out[k] / mb, 5) for k in (
                "server_process_s", "server_process_plus_softirq_s", "machine_s",
                "machine_softirq_irq_s")}
        return out


COUNTED = ("server_process_s: the server's utime+stime (/proc/PID/stat, all threads); "
           "machine_s: the whole machine's busy time (/proc/stat user+nice+system+irq+softirq, "
           "all CPUs) during the run minus an idle baseline measured just before (the testbed "
           "built, no traffic) times the run's length: server, client, router, capture and the "
           "kernel's network work; machine_softirq_irq_s: its irq+softirq part (where veth "
           "delivery, forwarding and Linux TCP's ACK processing run); "
           "server_process_plus_softirq_s: the server process plus all of that kernel network "
           "work (an upper bound of the server's share of it)")


def from_flows(base_rate: dict[str, float] | None, run: dict, server_s: float | None,
               nbytes: int) -> dict:
    """The same report for a `goodput.run_flows` result, whose `machine_cpu_s` (tasks,
    irq+softirq) and `wall_s` span the clients' run: `base_rate` from `Meter.baseline()`."""
    m = Meter(base_rate=base_rate, wall_s=run.get("wall_s", 0.0), process_s=server_s or 0.0)
    raw = run.get("machine_cpu_s") or {}
    m.raw = {"tasks": raw.get("tasks", 0.0), "softirq": raw.get("irq", 0.0), "irq": 0.0}
    if base_rate is not None:  # goodput's "irq" is irq + softirq: compare like with like
        m.base_rate = {**base_rate, "softirq": base_rate.get("softirq", 0.0)
                       + base_rate.get("irq", 0.0), "irq": 0.0}
    return m.report(nbytes)


def medians_per_mb(runs: list[dict], kinds: Iterable[str]) -> dict[str, dict]:
    """kind -> the median over its runs of each per-MB figure of their `system` reports."""
    out: dict[str, dict] = {}
    for kind in kinds:
        reps = [r["system"]["per_mb"] for r in runs
                if r.get("kind") == kind and (r.get("system") or {}).get("per_mb")]
        out[kind] = {k: sorted(p[k] for p in reps)[len(reps) // 2] for k in
                     (reps[0] if reps else {})}
    return out
