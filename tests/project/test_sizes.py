"""Size limits of issue #16: no module in trickles_kit/ over 600 lines, no function over 80.

Small modules named for what they hold and functions that fit on a screen are what lets a
newcomer read the package. Lines are counted as a reader sees them (a module: its lines; a
function or method: from its `def` line to its last line, end_lineno - lineno + 1, decorators
not counted), over every .py file of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "trickles_kit"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# Known offenders, each "path" (a module's length) or "path::Qualified.name" (a function); an
# entry that is within the limits again fails the test, so the list only shrinks.
ALLOWED: frozenset[str] = frozenset()  # every module and function is within the limits


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method, nested ones included."""
    out: list[tuple[str, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + node.name
            assert node.end_lineno is not None
            out.append((name, node.end_lineno - node.lineno + 1))
            out += _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            out += _functions(node, prefix + node.name + ".")
        else:
            out += _functions(node, prefix)
    return out


def offenders() -> dict[str, int]:
    """Every module and function over its limit: {"path" or "path::name": lines}."""
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            found[rel] = n
        for name, lines in _functions(ast.parse(text, str(path))):
            if lines > MAX_FUNCTION_LINES:
                found[f"{rel}::{name}"] = lines
    return found


def test_function_walk_counts_methods_and_nested_functions() -> None:
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n"
                     "        return g\n\n\nasync def h():\n    pass\n")
    assert _functions(tree) == [("A.f", 4), ("A.f.g", 2), ("h", 2)]


def test_no_module_over_600_lines_and_no_function_over_80() -> None:
    found = offenders()
    new = {k: v for k, v in found.items() if k not in ALLOWED}
    assert not new, "over the size limits (module 600 lines, function 80):\n" + "\n".join(
        f"  {k}: {v} lines" for k, v in sorted(new.items()))


def test_the_allow_list_only_names_current_offenders() -> None:
    stale = sorted(ALLOWED - offenders().keys())
    assert not stale, ("within the limits now: remove from ALLOWED in "
                       "tests/project/test_sizes.py:\n"
                       + "\n".join(f"  {k}" for k in stale))
