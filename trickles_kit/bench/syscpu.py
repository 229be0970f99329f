"""CPU time that counts the kernel: what a run costs beyond the server process's own time.

A server process's utime + stime (`/proc/PID/stat`) misses much of what Linux TCP costs: ACK
processing, veth delivery and forwarding run in softirq context, charged to no process, and the
router and client namespaces are the same kernel. A user-space protocol (Trickles, QUIC) does
nearly all of its work in the process. To count every protocol the same way, `Meter` reads,
before and after a run:

* the server process (`server_process_s`) and, when given, the client's whole life from its
  rusage (`client_process_s`, start-up included);
* the machine's kernel network work (`kernel_net_s`): irq + softirq of `/proc/stat` (all CPUs)
  plus the `ksoftirqd/N` threads (softirq work deferred to them is charged to them, not to
  the softirq column), minus an **idle baseline** of the same measured just before (the
  testbed built, no traffic) times the run's length. Other jobs on a shared machine are mostly
  CPU-bound and do little networking, so this part stays meaningful under load;
* the machine's whole busy time (`machine_s`: user+nice+system+irq+softirq minus the baseline):
  everything the run caused — but on a machine whose other jobs keep every CPU busy, the run
  only displaces them and this difference goes to zero; `baseline_share_of_raw` near 1 says
  so, and then only the figures above mean anything.

The headline, the same for every protocol: `server_plus_kernel_s` = the server process + all
of the kernel network work (the client's and the router's part of it included: an upper bound
of the server's share). On kernels with tick-based accounting (no CONFIG_IRQ_TIME_ACCOUNTING)
the softirq column is sampled at HZ, so short runs read it coarsely.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


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


def ksoftirqd_s() -> float:
    """CPU seconds of the ksoftirqd/N threads (softirq work the kernel deferred to them)."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        if "(ksoftirqd/" in text:
            f = text[text.rindex(")") + 2 :].split()
            total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


def _sample() -> dict[str, float]:
    return {**busy(proc_stat()), "ksoftirqd": ksoftirqd_s()}


KINDS = ("tasks", "softirq", "irq")  # what `machine_s` adds up (steal: another guest's)
NET = ("softirq", "irq", "ksoftirqd")  # the kernel's network work


@dataclass
class Meter:
    """CPU of one run: the server process, the client, the kernel's network work and the
    machine, against an idle baseline.

        m = Meter(); m.baseline(1.0)     # the testbed built, nothing running through it
        m.start([server_pid]); ...run...; m.stop(client_s=...); m.report(bytes_served)
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
    client_s: float | None = None

    def baseline(self, seconds: float = 1.0) -> dict[str, float]:
        """Measure the machine's idle rates for `seconds` (this process sleeping)."""
        t0, s0 = time.monotonic(), _sample()
        time.sleep(seconds)
        t1, s1 = time.monotonic(), _sample()
        self.base_wall_s = t1 - t0
        self.base_rate = {k: v / self.base_wall_s for k, v in _delta(s0, s1).items()}
        return self.base_rate

    def start(self, pids: Iterable[int] = ()) -> None:
        self.pids = list(pids)
        self._p0 = process_cpu_s(self.pids)
        self._t0, self._s0 = time.monotonic(), _sample()

    def stop(self, client_s: float | None = None) -> None:
        """End of the run (`client_s`: the client's CPU from its rusage, if known)."""
        assert self._s0 is not None, "start() first"
        s1, t1 = _sample(), time.monotonic()
        self.process_s = max(0.0, process_cpu_s(self.pids) - self._p0)
        self.wall_s = t1 - self._t0
        self.raw = _delta(self._s0, s1)
        self.client_s = client_s

    def attributed(self) -> dict[str, float]:
        """Seconds the run caused: raw minus baseline rate x wall, per kind, >= 0."""
        rate = self.base_rate or {}
        return {k: max(0.0, v - rate.get(k, 0.0) * self.wall_s) for k, v in self.raw.items()}

    def report(self, nbytes: int | None = None) -> dict:
        """The run's figures; per MB too when `nbytes` is given."""
        att, rate = self.attributed(), self.base_rate or {}
        net = sum(att.get(k, 0.0) for k in NET)
        raw_busy = sum(self.raw.get(k, 0.0) for k in KINDS)
        out: dict = {
            "wall_s": round(self.wall_s, 3),
            "server_process_s": round(self.process_s, 3),
            "kernel_net_s": round(net, 3),
            "server_plus_kernel_s": round(self.process_s + net, 3),
            "client_process_s": None if self.client_s is None else round(self.client_s, 3),
            "machine_s": round(sum(att.get(k, 0.0) for k in KINDS), 3),
            "raw_s": {k: round(v, 3) for k, v in self.raw.items()},
            "baseline_per_s": {k: round(v, 3) for k, v in rate.items()},
            "baseline_wall_s": round(self.base_wall_s, 2),
            # how much of the raw busy time the baseline took away: near 1, machine_s is noise
            "baseline_share_of_raw": round(sum(rate.get(k, 0.0) for k in KINDS) * self.wall_s
                                           / max(1e-9, raw_busy), 3),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
        if nbytes:
            mb = nbytes / 1e6
            out["per_mb"] = {k: round(out[k] / mb, 5) for k in PER_MB if out[k] is not None}
        return out


PER_MB = ("server_process_s", "kernel_net_s", "server_plus_kernel_s", "client_process_s",
          "machine_s")
COUNTED = ("server_process_s: the server's utime+stime (/proc/PID/stat, all threads); "
           "kernel_net_s: the machine's irq+softirq time (/proc/stat, all CPUs) plus the "
           "ksoftirqd threads' time during the run, minus an idle baseline measured just "
           "before (the testbed built, no traffic) times the run's length: veth delivery, "
           "forwarding, the tbf and both ends' kernel network stacks; server_plus_kernel_s: "
           "the two added (the headline: every protocol counted the same way, an upper bound "
           "of the server's share); client_process_s: the client's rusage (start-up "
           "included); machine_s: all busy time minus the baseline (meaningless when other "
           "jobs keep every CPU busy: see baseline_share_of_raw)")


def from_flows(base_rate: dict[str, float] | None, run: dict, server_s: float | None,
               nbytes: int) -> dict:
    """The same report for a `goodput.run_flows` result, whose `machine_cpu_s` (tasks,
    irq+softirq) and `wall_s` span the clients' run: `base_rate` from `Meter.baseline()`.
    (No ksoftirqd threads here: run_flows does not read them.)"""
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
