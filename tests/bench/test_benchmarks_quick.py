"""Every script in `benchmarks/` runs in its quick mode, so none can rot unseen (issue 17).

Each `benchmarks/*.py` (found by globbing: a new script is covered without touching this file)
runs as a subprocess with `--quick --out TMP/NAME.json`, from the repository root, as a user
would. Checked: exit status 0, the JSON it wrote parses and its `command` names the script and
`--quick`, no section of it recorded an `error` (several scripts catch a failing section and
carry on: without this check they would rot behind exit status 0), and `git status` of
`benchmarks/results/` did not move (a quick run never touches the committed results). Nothing
about speed is asserted: the figures are thrown away with the temporary directory.

Root-only scripts (raw sockets, namespaces) and the notebook benchmark (JupyterLab + chromium)
follow the suite's rule: with CI=true nothing skips, elsewhere a missing privilege or tool skips
saying how to get it. The parameters are ordered so that xdist (`-n 2`) starts the two longest
runs on different workers and the short ones fill the gaps (`_scripts`).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wire_helpers import REPO, git_status, need_root, need_tool

from trickles_kit.net.testbed import TOOLS as TESTBED_TOOLS

BENCHMARKS = REPO / "benchmarks"
# scripts that cannot run in CI, with the reason (none today)
EXCLUDED: dict[str, str] = {}
# what each root-only script does with it: need_root says "<script> (<this>) needs root"
ROOT_ONLY = {"bench_wire.py": "raw IP sockets", "storms.py": "raw sockets and namespaces",
             "bench_uplink_loss.py": "network namespaces and raw sockets",
             "bench_quic.py": "network namespaces and raw sockets",
             "bench_delayline.py": "network namespaces and an NFQUEUE delay line"}
TOOLS = {"storms.py": ("ip", "iptables"), "bench_uplink_loss.py": TESTBED_TOOLS,
         "bench_quic.py": TESTBED_TOOLS, "bench_delayline.py": TESTBED_TOOLS}
BROWSER = {"bench_notebooks.py"}
# wall seconds of each quick run in this module under `nice -n 19 ... -n 2` on a 2-core machine
# at load 9-10 (other jobs running; about half that on a quiet one); only the order of the
# parameters uses it, see _scripts
COST = {"bench_quic.py": 123, "bench_notebooks.py": 104, "bench_core.py": 97, "storms.py": 40,
        "bench_flood.py": 34,
        "bench_wire.py": 23, "bench_uplink_loss.py": 14, "bench_cache.py": 10,
        "bench_parallel.py": 10, "liars.py": 10, "bench_decode.py": 9, "fuzz_campaign.py": 9,
        "bench_replay_horizon.py": 9, "bench_delta.py": 6, "bench_decode_scale.py": 20}


def results_status() -> list[str]:
    """`git status --porcelain benchmarks/results`: what a quick run must never change."""
    return git_status("benchmarks/results")


def _scripts() -> list[Path]:
    """The scripts, longest first (one not in COST counts as longest), the 2nd and 3rd swapped.

    xdist's load scheduler (`-n 2`) starts each worker on two consecutive tests and hands out
    the rest one by one as workers free up; the swap puts the two longest runs on different
    workers, and the short ones fill in at the end."""
    found = [p for p in BENCHMARKS.glob("*.py") if p.name not in EXCLUDED]
    order = sorted(found, key=lambda p: (-COST.get(p.name, 1e9), p.name))
    if len(order) >= 4:
        order[1], order[2] = order[2], order[1]
    return order


def _errors(doc: object, where: str = "") -> list[str]:
    """Paths of every non-empty `error` value in the result."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "error" and v:
                out.append(f"{where}: {str(v)[:300]}")
            out += _errors(v, f"{where}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _errors(v, f"{where}[{i}]")
    return out


def _needs(name: str) -> None:
    if name in ROOT_ONLY:
        need_root(f"{name} ({ROOT_ONLY[name]})")
    for tool in TOOLS.get(name, ()):
        need_tool(tool)
    if name in BROWSER:
        sys.path.insert(0, str(REPO / "tests" / "labs"))  # the browser test's own check
        from test_browser import _requirements

        _requirements()


def test_root_only_scripts_are_listed() -> None:
    """A script whose docstring says it needs root is in ROOT_ONLY, so that a user without
    root skips it instead of failing (bench_delayline.py was missing: `make test` as uid 65534
    failed on its testbed's tool check)."""
    said = {p.name for p in BENCHMARKS.glob("*.py")
            if "needs root" in (ast.get_docstring(ast.parse(p.read_text())) or "").lower()}
    assert said, "no benchmark docstring says `Needs root`: has the wording changed?"
    assert said <= set(ROOT_ONLY), sorted(said - set(ROOT_ONLY))


@pytest.mark.e2e
@pytest.mark.parametrize("script", _scripts(), ids=lambda p: p.stem)
def test_benchmark_quick_mode_runs(script: Path, tmp_path: Path) -> None:
    """`SCRIPT --quick --out TMP` as a user runs it: exit 0, a JSON naming its command and
    recording no error, the committed results untouched."""
    _needs(script.name)
    out = tmp_path / f"{script.stem}.json"
    before = results_status()
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))  # this checkout's trickles_kit
    p = subprocess.run([sys.executable, os.path.relpath(script, REPO), "--quick", "--out",
                        str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    tail = f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
    assert p.returncode == 0, tail
    assert out.exists(), f"{script.name} wrote no {out.name}\n{tail}"
    doc = json.loads(out.read_text())
    command = (doc.get("meta") or {}).get("command") or doc.get("command")
    assert command and script.name in command and "--quick" in command, command
    assert not _errors(doc), _errors(doc)
    assert results_status() == before
