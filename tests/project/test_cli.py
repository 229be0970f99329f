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


def test_serve_route_options_choose_the_routes(tmp_path) -> None:
    """--no-dyn / --no-parallel build the web app without those routes (serve and --workers)."""
    import argparse

    from trickles_kit.cli.wire import serve_app

    def names(no_dyn: bool, no_parallel: bool) -> list[str]:
        app = serve_app(argparse.Namespace(root=tmp_path, no_dyn=no_dyn, no_parallel=no_parallel))
        return [type(r).__name__ for r in app.routes]

    assert names(False, False) == ["DynamicRoute", "ParallelRoute"]
    assert names(True, False) == ["ParallelRoute"]
    assert names(False, True) == ["DynamicRoute"]
    assert names(True, True) == []
