"""The helpers every benchmark script shares: where a result goes (`--out`, `--record`), how it is
written, and how a child process is stopped."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from trickles_kit.bench.meta import REPO, add_output_args, write_result
from trickles_kit.bench.procs import stop_child


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    add_output_args(ap, "x.json")
    return ap


def test_a_run_writes_to_reports_unless_recording() -> None:
    ap = _parser()
    assert Path(ap.parse_args([]).out) == REPO / "reports" / "benchmarks" / "x.json"
    assert Path(ap.parse_args(["--record"]).out) == REPO / "benchmarks" / "results" / "x.json"
    assert ap.parse_args(["--out", "elsewhere.json"]).out == "elsewhere.json"


def test_write_result_makes_the_folder_and_ends_in_one_newline(tmp_path: Path) -> None:
    out = write_result(tmp_path / "new" / "r.json", {"a": [1, 2]}, indent=1)
    text = out.read_text()
    assert out == tmp_path / "new" / "r.json" and text.endswith("}\n") and "\n \"a\"" in text
    assert json.loads(text) == {"a": [1, 2]}
    # what JSON has no type for goes through `default`
    assert json.loads(write_result(tmp_path / "s.json", {"p": Path("x")}, default=str)
                      .read_text()) == {"p": "x"}


def test_stop_child_kills_what_ignores_sigterm() -> None:
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "up\n"
    stop_child(p, 0.5)
    assert p.returncode == -9  # SIGTERM ignored: SIGKILL after the timeout, and collected
