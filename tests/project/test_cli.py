"""The `trickles` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trickles_kit.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trickles_kit.cli", *args], capture_output=True, text=True,
        timeout=120,
    )


def test_sim_json_reports_every_figure() -> None:
    p = run_cli("sim", "--size", "200k", "--loss", "0.02", "--seed", "3", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    for key in ("bytes", "sha256_sent", "sha256_received", "seconds", "goodput_bps",
                "retransmissions", "splits", "terminations", "recoveries", "timeouts",
                "final_cwnd"):
        assert key in d
    assert d["bytes"] == 200_000 and d["sha256_sent"] == d["sha256_received"]


def test_sim_text_summary_and_events(tmp_path) -> None:
    events = tmp_path / "ev.jsonl"
    p = run_cli("sim", "--size", "50000", "--events", str(events))
    assert p.returncode == 0, p.stderr
    assert "sha256_received" in p.stdout and "goodput_bps" in p.stdout
    lines = events.read_text().splitlines()
    kinds = {json.loads(line)["kind"] for line in lines}
    assert {"syn", "initial", "continue", "split", "request", "done"} <= kinds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sim", "--loss", "1.5"], "probability"),
        (["sim", "--size", "lots"], "not a size"),
        (["sim", "--loss", "x"], "not a number"),
    ],
)
def test_bad_arguments_are_clear(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_sim(capsys) -> None:
    assert main([]) == 2
    assert "sim" in capsys.readouterr().out
