"""Result metadata shared by every benchmark: command, machine, code — no absolute paths.

Every result JSON (the scripts under benchmarks/ and `trickles bench`) records how it was made, so
anyone can rerun it and see what machine and which commit produced the numbers. Paths are
relative to the repository, so results name no machine's directories.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trickles_kit
from trickles_kit import native

REPO = Path(__file__).resolve().parents[2]
# where the experiments start their child processes (`python -m trickles_kit...` in the
# namespaces): -m puts the working directory first on sys.path, so a child imports this very
# copy of the package and otherwise inherits the environment as it is (nothing here reads it)
CHILD_CWD = REPO


def _rel(path: str) -> str:
    """A path relative to the repository: results never name this machine's directories."""
    return os.path.relpath(path, REPO) if os.path.isabs(path) else path


def meta(argv: list[str], mode: str) -> dict:
    """What a result needs to be reproduced: the command, the machine, the exact code."""
    def git(*a: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True,
                                  check=True).stdout.rstrip()
        except (OSError, subprocess.CalledProcessError):
            return None

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import cryptography
        crypto = cryptography.__version__
    except ImportError:  # pragma: no cover
        crypto = None

    return {
        "command": shlex.join([os.path.relpath(sys.executable), *argv]),
        "argv": argv,
        "cwd": _rel(os.getcwd()),
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": _rel(sys.executable),
                   "build": " ".join(platform.python_build())},
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "cpu_model": cpu_model, "cpu_count": os.cpu_count(),
                    "cpus_usable": len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity") else None,
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "packages": {"cryptography": crypto},
        "code": {"trickles_kit_path": _rel(str(Path(trickles_kit.__file__).parent)),
                 "build": native.build(),  # pure Python or compiled (and which modules)
                 "git_commit": git("rev-parse", "HEAD"), **_tree_state(git)},
    }


def _tree_state(git) -> dict:
    """Uncommitted changes under trickles_kit/: the files and a hash of the diff, so a run can
    be tied to the exact code it measured (and a tree edited during the run is noticed)."""
    status = git("status", "--porcelain", "--", "trickles_kit")
    if status is None:
        return {"trickles_kit_dirty": None}
    diff = git("diff", "HEAD", "--", "trickles_kit") or ""
    untracked = [ln[3:] for ln in status.splitlines() if ln.startswith("??")]
    h = hashlib.sha256(diff.encode())
    for f in sorted(untracked):
        with contextlib.suppress(OSError):  # e.g. an untracked directory
            h.update(f.encode() + (REPO / f).read_bytes())
    return {"trickles_kit_dirty": bool(status),
            "trickles_kit_changed_files": [ln[3:] for ln in status.splitlines()],
            "trickles_kit_diff_sha256": h.hexdigest() if status else None}


def close_meta(res: dict, mode: str, t0: float, note: str | None = None) -> None:
    """Finish `res["meta"]` at the end of a run: wall time, load average, whether the code
    changed while it ran (a result measured across an edit is flagged), and the user's note."""
    import time

    m = res["meta"]
    m["benchmark_wall_s"] = round(time.perf_counter() - t0, 1)
    m["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    end = meta([], mode)["code"]
    m["code"]["tree_changed_during_run"] = (
        end.get("trickles_kit_diff_sha256") != m["code"].get("trickles_kit_diff_sha256")
        or end.get("git_commit") != m["code"].get("git_commit"))
    if note:
        m["note"] = note


def add_output_args(ap: argparse.ArgumentParser, name: str) -> None:
    """`--out` (default reports/benchmarks/NAME, git-ignored) and `--record` (the committed
    benchmarks/results/NAME), the same in every script: a run changes a committed result only
    when asked to."""
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / name),
                    help="JSON output path (default: %(default)s)")
    ap.add_argument("--record", dest="out", action="store_const",
                    const=str(REPO / "benchmarks" / "results" / name),
                    help=f"refresh the committed benchmarks/results/{name}")


def write_result(out: str | Path, doc: dict, indent: int = 2,
                 default: Callable[[Any], Any] | None = None) -> Path:
    """Write a result JSON (making its folder), one trailing newline; returns its path.
    `default` is `json.dumps`'s (e.g. `str` for values JSON has no type for)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=indent, default=default) + "\n")
    return path
