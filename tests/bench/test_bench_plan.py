"""What `trickles bench` runs (issue #15: a full `all` includes the RTT grid and QUIC), and
`--plan`, which says so with the time each took in its last recorded run, without root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trickles_kit.bench.report import EXPERIMENTS
from trickles_kit.cli import main
from trickles_kit.cli.bench import RTT_GRID, plan_text, planned


def test_a_full_all_runs_the_rtt_grid_and_quic_after_the_experiments() -> None:
    names = planned("all", False, {})
    assert names[: len(EXPERIMENTS)] == list(EXPERIMENTS)
    assert names[len(EXPERIMENTS):] == [
        "goodput_rtt20", "goodput_rtt50", "goodput_rtt100", "goodput_rtt200", "quic"]
    assert len(RTT_GRID) == 4
    # quick runs, and runs through one asked RTT, are the experiments alone
    assert planned("all", True, {}) == list(EXPERIMENTS)
    assert planned("all", False, {"rtt_ms": 50.0, "jitter_ms": 0.0}) == list(EXPERIMENTS)
    assert planned("goodput", False, {}) == ["goodput"]


def test_the_plan_sums_the_recorded_wall_times(tmp_path: Path) -> None:
    (tmp_path / "bench_goodput.json").write_text(json.dumps({"wall_s": 600.0}))
    (tmp_path / "bench_goodput_rtt50.json").write_text(json.dumps({"wall_s": 1200.0}))
    (tmp_path / "quic_baseline.json").write_text(json.dumps({"wall_s": 1800.0}))
    text = plan_text(["goodput", "goodput_rtt50", "quic", "memory"], False, {}, tmp_path)
    head, *rows = text.splitlines()
    assert "4 experiments" in head and "about 1.0 h" in head and "+ 1 without" in head
    assert "10.0 min" in rows[0] and "RTT 50 ms" in rows[1] and "20.0 min" in rows[1]
    assert "RTT 0, 20, 50, 100 ms" in rows[2] and "no recorded time" in rows[3]
    # one experiment through an asked RTT reads that RTT's record
    one = plan_text(["goodput"], False, {"rtt_ms": 50.0}, tmp_path)
    assert "RTT 50 ms" in one and "20.0 min" in one


def test_plan_needs_no_root_and_starts_nothing(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """As a user without root, `--plan` prints the plan and exits 0; the run itself refuses."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["bench", "all", "--plan"]) == 0
    out = capsys.readouterr()
    assert "goodput_rtt200" in out.out and "quic" in out.out and "needs root" not in out.err
    assert main(["bench", "all"]) == 2
    assert "needs root" in capsys.readouterr().err
