"""`make test`'s one skip line: two pytest runs (pure, compiled) log their skips to one file and
tests/skipline.py prints one line for both (issue 18: skips named in one summary line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = "TRICKLES_SKIP_PROBE"


def test_probe() -> None:
    """Skips only inside the subprocess runs below (never in a normal run)."""
    if os.environ.get(PROBE):
        pytest.skip("needs root (probe)")


def _run(log: Path | None, workers: str = "0") -> str:
    env = {**os.environ, PROBE: "1", "TRICKLES_LEAK_CHECK": "0"}
    env.pop("TRICKLES_SKIP_LOG", None)
    if log is not None:
        env["TRICKLES_SKIP_LOG"] = str(log)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", workers,
                        f"{Path(__file__).relative_to(REPO)}::test_probe"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_two_runs_give_one_line_at_the_end(tmp_path: Path) -> None:
    alone = _run(None)
    assert "skipped 1: 1 need root (run: sudo make test)" in alone  # a single run: its own line
    log = tmp_path / "skips"
    first, second = _run(log, "2"), _run(log)  # xdist: logged once, not per worker
    assert "skipped 1:" not in first and "skipped 1:" not in second  # deferred to the end
    p = subprocess.run([sys.executable, str(REPO / "tests" / "skipline.py"), str(log)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "skipped 2: 2 need root (run: sudo make test)"


def test_no_skips_no_line(tmp_path: Path) -> None:
    log = tmp_path / "skips"
    log.write_text("")
    p = subprocess.run([sys.executable, str(REPO / "tests" / "skipline.py"), str(log)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == ""
