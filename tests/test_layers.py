"""The layers contract (pyproject.toml [tool.importlinter]) holds, and it has teeth.

docs/architecture.md draws the layers. import-linter checks that no module imports upward;
the cycle test checks what the contract's `:` siblings allow: that the graph between
subpackages is still one-way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="the dev extra (import-linter) is not installed")

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the package found first on sys.path from `cwd` (no cache written)."""
    if not LINT.exists():
        pytest.skip("lint-imports is not next to this Python (install the dev extra)")
    env = dict(os.environ, PYTHONPATH=str(cwd))
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", "pyproject.toml"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_layers_contract_is_kept() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_contract_fails_on_an_upward_import(tmp_path: Path) -> None:
    """A copy of the package with wire/ importing the CLI: the contract must break."""
    shutil.copytree(ROOT / "trickles_kit", tmp_path / "trickles_kit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "trickles_kit" / "wire" / "_probe.py").write_text(
        '"""A deliberately upward import."""\n\nimport trickles_kit.cli  # noqa: F401\n')
    r = _lint(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "trickles_kit.wire._probe -> trickles_kit.cli" in r.stdout


def _subpackage_graph() -> dict[str, set[str]]:
    """Subpackage -> the subpackages it imports (module-level and function-level imports)."""
    graph = grimp.build_graph("trickles_kit", cache_dir=None)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        src = module.split(".")[1] if "." in module else None
        for imported in graph.find_modules_directly_imported_by(module):
            dst = imported.split(".")[1] if "." in imported else None
            if src and dst and src != dst:
                edges.setdefault(src, set()).add(dst)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_cycles_between_subpackages() -> None:
    edges = _subpackage_graph()
    assert {"wire", "core", "net", "apps"} <= set(edges) | {"wire"}
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
