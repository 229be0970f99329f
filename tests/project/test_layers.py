"""The layers contract (pyproject.toml [tool.importlinter]) holds, and it has teeth.

docs/architecture.md draws the layers. import-linter checks that no module imports upward;
the cycle test checks what the contract's `:` siblings allow: that the graph between
subpackages is still one-way.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="the dev extra (import-linter) is not installed")

ROOT = Path(__file__).resolve().parents[2]
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


def _lazy_imports() -> list[tuple[str, int, str]]:
    """(file, line, text) of every `trickles_kit` import inside a function."""
    found = []
    for path in sorted((ROOT / "trickles_kit").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] if not node.level else ["trickles_kit"]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                if any(n == "trickles_kit" or n.startswith("trickles_kit.") for n in names):
                    rel = path.relative_to(ROOT).as_posix()
                    found.append((rel, node.lineno, lines[node.lineno - 1].strip()))
    return sorted(set(found))


def test_few_function_level_imports_each_with_a_reason() -> None:
    """Imports inside functions hide the graph: at most 10, each says why (`# lazy: ...`)."""
    lazy = _lazy_imports()
    assert len(lazy) <= 10, "\n".join(f"{f}:{n}: {t}" for f, n, t in lazy)
    silent = [f"{f}:{n}: {t}" for f, n, t in lazy if "# lazy:" not in t]
    assert not silent, "say why with a `# lazy: <reason>` comment:\n" + "\n".join(silent)


def test_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_tests_live_in_layer_folders() -> None:
    """tests/ mirrors the package (docs/architecture.md, "Tests, by layer"): no test module at
    the top, and every folder is a subpackage of trickles_kit or `project`."""
    tests = ROOT / "tests"
    assert sorted(p.name for p in tests.glob("test_*.py")) == []
    layers = {p.name for p in (ROOT / "trickles_kit").iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - layers - {"project"} == set(), folders - layers
    assert all(list(tests.joinpath(f).glob("test_*.py")) for f in folders)
