"""CPU quotas for replicas: a cgroup per replica, always removed.

The balancing benchmark needs CPU-bound servers on a 2-core machine whose clients also need CPU;
an honest way is a hard quota per replica (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` in the v1
`cpu` hierarchy — whichever this machine has writable). Group names carry the toolkit prefix
and the run's tag, so `stale_groups()` finds what a killed run left.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PREFIX = "tk-svc-"
PERIOD_US = 5_000  # short: a long period throttles in bursts that reorder the replicas
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller quota (cpu.max, cfs_quota_us)


def period_for(fraction: float) -> int:
    """PERIOD_US, or the shortest longer period whose quota the kernel takes: `--cpu 0.05`
    throttles in 20-ms periods (1 ms each) instead of being refused."""
    return max(PERIOD_US, -(-MIN_QUOTA_US * 1_000_000 // round(fraction * 1_000_000)))


class CgroupError(RuntimeError):
    """No writable CPU controller (or a write failed); the message says which."""


def cpu_root() -> tuple[Path, int]:
    """(directory to create groups in, cgroup version) for the CPU controller."""
    v2 = ROOT / "cgroup.controllers"
    if v2.exists() and "cpu" in v2.read_text().split():
        ctl = ROOT / "cgroup.subtree_control"
        if "cpu" not in ctl.read_text().split():
            try:
                ctl.write_text("+cpu")
            except OSError as e:
                raise CgroupError(f"cannot enable the cpu controller in {ctl}: {e}") from e
        return ROOT, 2
    v1 = ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1, 1
    raise CgroupError(f"no cgroup CPU controller under {ROOT} (v2 cpu or v1 cpu hierarchy)")


def stale_groups() -> list[Path]:
    """Groups of this toolkit that still exist (a killed run, or a bug)."""
    try:
        base, _ = cpu_root()
    except (CgroupError, OSError):
        return []
    return sorted(p for p in base.glob(PREFIX + "*") if p.is_dir())


class CpuGroup:
    """A cgroup whose processes together get `fraction` of one CPU; a context manager."""

    def __init__(self, name: str, fraction: float) -> None:
        if not 0.01 <= fraction <= 64:
            raise ValueError(f"CPU fraction {fraction} out of range [0.01, 64]")
        base, self.version = cpu_root()
        self.path = base / f"{PREFIX}{name}"
        self.fraction = fraction
        try:
            self.path.mkdir()
        except FileExistsError:
            raise CgroupError(f"{self.path} exists (a killed run?): rmdir it") from None
        except OSError as e:
            raise CgroupError(f"cannot create {self.path}: {e}") from e
        self.period = period_for(fraction)
        quota = int(fraction * self.period)
        try:
            if self.version == 2:
                (self.path / "cpu.max").write_text(f"{quota} {self.period}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(self.period))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as e:
            self.close()
            raise CgroupError(f"cannot set the quota of {self.path}: {e}") from e

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def describe(self) -> dict:
        return {"cgroup_version": self.version, "cpu_fraction": self.fraction,
                "quota_us": int(self.fraction * self.period), "period_us": self.period}

    def close(self) -> None:
        """Move leftover processes to the parent, then remove the group (retrying briefly:
        a process just killed leaves the group a moment later)."""
        if not self.path.exists():
            return
        parent = self.path.parent / "cgroup.procs"
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    parent.write_text(pid)
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def __enter__(self) -> CpuGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
