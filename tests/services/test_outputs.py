"""Running a demo or a benchmark changes nothing tracked.

A user's runs go to `reports/` (git-ignored) or `--out`; the committed results under
`benchmarks/results/` — and the README tables made from them — change only with `--record`.
Checked on the code that picks the directory: every `trickles services demo` and `trickles bench
… --quick` with the experiment itself replaced by a stand-in that writes what it would (the real
ones need root and minutes each; their own tests run them), every `benchmarks/*.py` through its
`--help`, and one quick benchmark for real. `git status` of the tracked results and the README
must not move.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wire_helpers import REPO, git_status

from trickles_kit import cli

RESULTS = REPO / "benchmarks" / "results"
SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if '"--out"' in p.read_text())


def tracked_status() -> list[str]:
    """What a run could wrongly touch: the results and the README."""
    return git_status("benchmarks/results", "README.md")


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The CLI believes it is root; the working directory is a scratch one (reports/ there)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- services demos
def _services_runs() -> list[tuple[str, bool]]:
    from trickles_kit.cli.services import CHOICES

    return [(s, tcp) for s in CHOICES for tcp in (False, True)
            if not (tcp and s in ("load", "parallel"))]


def _canned(scenario: str, kind: str) -> dict:
    """The committed result without its metadata: what the scenario would return."""
    res = json.loads((RESULTS / f"services_{scenario}_{kind}.json").read_text())
    res.pop("meta", None)
    return res


@pytest.mark.parametrize(("scenario", "tcp"), _services_runs(),
                         ids=lambda x: x if isinstance(x, str) else ("tcp" if x else "trickles"))
def test_services_demo_writes_to_reports(scenario: str, tcp: bool, as_root: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from trickles_kit.services import scenarios

    kind = "tcp" if tcp else "trickles"
    monkeypatch.setitem(scenarios.SCENARIOS, scenario, lambda **kw: _canned(scenario, kind))
    before = tracked_status()
    rc = cli.main(["services", "demo", scenario, *(["--tcp"] if tcp else [])])
    assert rc == 0
    out = as_root / "reports" / "services" / f"services_{scenario}_{kind}.json"
    assert out.exists(), sorted(as_root.rglob("*"))
    command = json.loads(out.read_text())["meta"]["command"]
    assert f"services demo {scenario}" + (" --tcp" if tcp else "") in command, command
    assert tracked_status() == before


def test_services_demo_record_refreshes_results_and_table(as_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys) -> None:
    from trickles_kit.services import report, scenarios

    results, readme = as_root / "results", as_root / "README.md"
    shutil.copytree(RESULTS, results)
    shutil.copy(REPO / "README.md", readme)
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "README", readme)
    res = _canned("balance", "trickles")
    res["split_responses"] = {"s1": 0.4, "s2": 0.6}  # a different outcome: the table changes
    monkeypatch.setitem(scenarios.SCENARIOS, "balance", lambda **kw: res)
    before = tracked_status()
    assert cli.main(["services", "demo", "balance", "--record"]) == 0
    assert "README services table updated" in capsys.readouterr().out
    assert "s1 40.0 % / s2 60.0 %" in readme.read_text()
    assert json.loads((results / "services_balance_trickles.json").read_text())["meta"][
        "command"].endswith("--record")
    assert not (as_root / "reports").exists()
    assert not list(results.glob("*.html"))  # the committed results carry no figure
    assert tracked_status() == before
    assert cli.main(["services", "demo", "balance", "--record", "--out", "x"]) == 2


def test_services_figure_draws_each_committed_result(as_root: Path) -> None:
    """`trickles services figure`: one HTML page per committed result, drawn from its JSON."""
    pytest.importorskip("plotly")
    before = tracked_status()
    assert cli.main(["services", "figure"]) == 0
    drawn = sorted(p.name for p in (as_root / "reports" / "services").glob("*.html"))
    assert drawn == sorted(p.with_suffix(".html").name for p in RESULTS.glob("services_*.json"))
    assert tracked_status() == before


# --------------------------------------------------------------------------- trickles bench
class _Stand_in:  # noqa: N801 - plays a trickles_kit.bench.NAME module
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, quick: bool, out: Path, verbose: bool = False) -> dict:
        out.mkdir(parents=True, exist_ok=True)
        res = json.loads((RESULTS / f"bench_{self.name}.json").read_text())
        (out / f"{self.name}.json").write_text(json.dumps(res))
        return res


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    from trickles_kit.cli import bench as bench_cli
    from trickles_kit.net import sysdeps

    monkeypatch.setattr(bench_cli, "_module", _Stand_in)
    monkeypatch.setattr(sysdeps, "problem", lambda tools, what: None)


@pytest.mark.parametrize("experiment", ["all", "goodput", "fairness", "memory", "cpu",
                                        "loopback"])
def test_bench_quick_writes_to_reports(experiment: str, as_root: Path, stand_ins) -> None:
    before = tracked_status()
    assert cli.main(["bench", experiment, "--quick"]) == 0
    out = as_root / "reports" / "bench"
    names = ["goodput", "fairness", "memory", "cpu", "loopback"] if experiment == "all" \
        else [experiment]
    for name in names:
        assert (out / f"{name}.json").exists(), sorted(out.iterdir())
    assert (out / "summary.json").exists()
    assert tracked_status() == before


def test_bench_record_refreshes_results_and_table(as_root: Path, stand_ins,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from trickles_kit.bench import report

    results = as_root / "results"
    results.mkdir()
    shutil.copy(REPO / "README.md", as_root / "README.md")
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "REPO", as_root)
    before = tracked_status()
    assert cli.main(["bench", "memory", "--quick", "--record"]) == 2  # full runs only
    assert not list(results.iterdir())
    assert cli.main(["bench", "memory", "--record"]) == 0
    assert (results / "bench_memory.json").exists()
    assert "server memory per connection" in report.readme_block(as_root / "README.md")
    assert tracked_status() == before


# --------------------------------------------------------------------------- benchmarks/*.py
# runs a benchmark script up to its argument parsing: its --out default, whether it has --record
_PARSE_ONLY = """
import argparse, json, runpy, sys
parse = argparse.ArgumentParser.parse_args
def only_parse(self, args=None, namespace=None):
    if "--out" not in self._option_string_actions:
        return parse(self, args, namespace)
    ns = parse(self, [], namespace)
    print(json.dumps({"out": str(ns.out), "record": "--record" in self._option_string_actions}))
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = only_parse
sys.argv = [sys.argv[1]]
sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])  # as when run as a script
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_scripts_default_to_reports(script: Path) -> None:
    p = subprocess.run([sys.executable, "-c", _PARSE_ONLY, str(script)], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    out = Path(got["out"])
    assert (REPO / "reports" in out.parents or out.parts[0] == "reports"), \
        f"{script.name} writes {out} by default: reports/ (git-ignored) is the place"
    assert got["record"], f"{script.name}: no --record to refresh the committed result"


def test_a_quick_benchmark_run_leaves_git_clean() -> None:
    """bench_delta --quick (about a second) for real, with its defaults."""
    out = REPO / "reports" / "benchmarks" / "delta.json"
    kept = out.read_bytes() if out.exists() else None
    made = [d for d in (out.parent.parent, out.parent) if not d.exists()]
    before = tracked_status()
    try:
        p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_delta.py"),
                            "--quick"], capture_output=True, text=True, timeout=300, cwd=REPO)
        assert p.returncode == 0, p.stderr
        assert json.loads(out.read_text())["meta"]["command"]
        assert tracked_status() == before
    finally:  # the checkout's reports/ as it was
        if kept is None:
            out.unlink(missing_ok=True)
        else:
            out.write_bytes(kept)
        for d in reversed(made):
            d.rmdir()
