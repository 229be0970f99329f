"""nbgrader versions of the labs, generated from the student notebooks and one small spec each.

The notebooks in ``notebooks/`` stay the only copy of the labs; nothing here is edited by hand
twice. ``grading/<lab>.toml`` lists a lab's exercise cells in order: the self-check each one
prints (``trickles_kit.labs.checks`` and friends), the answer as code, its points and, for the
builder's own tests, an optional wrong answer. The builder turns each exercise cell into

* an nbgrader *solution* cell: the answer between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``, placed just before the self-check — delete the region and the
  student's cell is back, unchanged;
* followed by a locked *grade* cell (its points in the cell metadata) whose
  ``### BEGIN HIDDEN TESTS`` region runs the very same self-check and asserts that its verdict
  starts with "OK": a student who sees "OK — " in the notebook gets the points.

Typical use, in a course directory::

    python -m trickles_kit.labs.nbgrader build COURSE      # source/<lab>/<lab>.ipynb + config
    cd COURSE && nbgrader generate_assignment 03-congestion-control
    nbgrader autograde 03-congestion-control               # submitted/<student>/<lab>/...
    python -m trickles_kit.labs.nbgrader sample COURSE 03-congestion-control --student demo

(``sample`` writes a correct — or with ``--wrong`` a partly wrong — submission, to try the
autograder before the students do.)
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SPECS = Path(__file__).resolve().parent / "grading"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
SCHEMA = 3  # nbgrader's cell-metadata schema version (nbgrader 0.9)
EXERCISES_HEADING = "## Exercises"

# Written next to source/ unless the course already has one. The empty stub gives students the
# cell of notebooks/ back (nbgrader's default stub raises NotImplementedError before the
# self-check could print its hint).
CONFIG = '''\
# nbgrader course configuration, written by `python -m trickles_kit.labs.nbgrader build`
# (kept if it exists: edit it freely).
c = get_config()  # noqa: F821 - nbgrader defines it

# The solution regions sit just before each self-check: an empty stub leaves the student's
# placeholder (MY_ANSWER = None, a function that raises) and the self-check in place.
c.ClearSolutions.code_stub = {"python": ""}
# The labs run simulations and decode captures: allow each cell a few minutes.
c.Execute.timeout = 300
'''


class SpecError(ValueError):
    """A spec that does not match its notebook (the notebook changed: update the spec)."""


@dataclass(frozen=True)
class Exercise:
    check: str  # the callee the exercise cell prints, e.g. "checks.check_cwnd"
    answer: str  # code answering it, placed just before the self-check
    points: int = 1
    wrong: str | None = None  # a wrong answer, for the "wrong" sample submission


# ---------------------------------------------------------------------------- notebooks
def read_notebook(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_notebook(nb: dict[str, Any], path: str | Path) -> Path:
    """Write as Jupyter does (one-space indent, UTF-8), so diffs stay small."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _set_source(cell: dict[str, Any], text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def check_statement(src: str) -> tuple[int, str, str] | None:
    """For a cell ending in ``print(<self-check>(...))``: (0-based line where that statement
    starts, the callee's text, the check expression's text); None for any other cell."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return None
    last = tree.body[-1] if tree.body else None
    if not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
            and isinstance(last.value.func, ast.Name) and last.value.func.id == "print"
            and len(last.value.args) == 1 and isinstance(last.value.args[0], ast.Call)):
        return None
    call = last.value.args[0]
    callee = ast.get_source_segment(src, call.func) or ""
    if "check" not in callee:
        return None
    return last.lineno - 1, callee, ast.get_source_segment(src, call) or ""


def exercise_cells(nb: dict[str, Any]) -> list[int]:
    """Indices of the exercise cells: code cells after the "## Exercises" heading that end by
    printing a self-check."""
    start = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"
                  and source(c).lstrip().startswith(EXERCISES_HEADING)), None)
    if start is None:
        return []
    return [i for i, c in enumerate(nb["cells"]) if i > start and c["cell_type"] == "code"
            and check_statement(source(c)) is not None]


def insert_before_check(src: str, code: str, marked: bool) -> str:
    """`src` with `code` inserted just before its closing self-check (inside the solution
    markers when `marked`): later assignments and definitions win, so the placeholder above
    stays as the student's notebook has it."""
    found = check_statement(src)
    if found is None:
        raise SpecError(f"not an exercise cell (no closing print of a self-check):\n{src}")
    lines = src.split("\n")
    block = code.strip("\n").split("\n")
    if marked:
        block = [BEGIN, *block, END]
    return "\n".join(lines[:found[0]] + block + lines[found[0]:])


# ---------------------------------------------------------------------------- specs
def labs() -> list[str]:
    """The labs with a spec (notebook stems, e.g. "03-congestion-control")."""
    return sorted(p.stem for p in SPECS.glob("*.toml") if (NOTEBOOKS / f"{p.stem}.ipynb").exists())


def load_spec(lab: str) -> list[Exercise]:
    path = SPECS / f"{lab}.toml"
    if not path.exists():
        raise SpecError(f"no spec {path.name}; labs with one: {', '.join(labs())}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    try:
        return [Exercise(e["check"], e["answer"], int(e.get("points", 1)), e.get("wrong"))
                for e in data["exercise"]]
    except (KeyError, TypeError, ValueError) as e:
        raise SpecError(f"{path.name}: each [[exercise]] needs check and answer ({e})") from e


def _matched(nb: dict[str, Any], lab: str, spec: Sequence[Exercise]) -> list[int]:
    idx = exercise_cells(nb)
    if len(idx) != len(spec):
        raise SpecError(f"{lab}: the notebook has {len(idx)} exercise cells, the spec "
                        f"{len(spec)} exercises")
    for k, (i, ex) in enumerate(zip(idx, spec, strict=True)):
        found = check_statement(source(nb["cells"][i]))
        assert found is not None
        if found[1] != ex.check:
            raise SpecError(f"{lab}: exercise {k + 1} prints {found[1]}(...), the spec says "
                            f"{ex.check}")
    return idx


# ---------------------------------------------------------------------------- build
def _meta(grade_id: str, *, solution: bool, points: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"grade": points is not None, "grade_id": grade_id,
                            "locked": points is not None, "schema_version": SCHEMA,
                            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def _test_source(expr: str, points: int) -> str:
    return "\n".join([
        f"# Autograded, {points} point{'s' if points != 1 else ''}: the self-check above must "
        "answer OK.",
        BEGIN_HIDDEN,
        f"_verdict = {expr}",
        'assert _verdict.startswith("OK"), _verdict',
        END_HIDDEN,
    ])


def source_notebook(lab: str, notebooks: Path = NOTEBOOKS) -> dict[str, Any]:
    """The nbgrader source notebook of `lab`: the student notebook with every exercise cell
    made a solution cell and followed by its grade cell."""
    nb = read_notebook(notebooks / f"{lab}.ipynb")
    spec = load_spec(lab)
    idx = _matched(nb, lab, spec)
    cells: list[dict[str, Any]] = []
    for i, cell in enumerate(nb["cells"]):
        if i not in idx:
            cells.append(cell)
            continue
        k = idx.index(i)
        ex = spec[k]
        src = source(cell)
        sol = copy.deepcopy(cell)
        _set_source(sol, insert_before_check(src, ex.answer, marked=True))
        sol["metadata"]["nbgrader"] = _meta(f"ex{k + 1}", solution=True)
        found = check_statement(src)
        assert found is not None
        test: dict[str, Any] = {"cell_type": "code", "execution_count": None,
                                "metadata": {"nbgrader": _meta(f"ex{k + 1}-test", solution=False,
                                                               points=ex.points)},
                                "outputs": [], "source": []}
        if "id" in cell:
            test["id"] = f"{cell['id']}-test"[:64]
        _set_source(test, _test_source(found[2], ex.points))
        cells += [sol, test]
    return {**nb, "cells": cells}


def build(out: str | Path, which: Iterable[str] | None = None,
          notebooks: Path = NOTEBOOKS) -> list[Path]:
    """Write OUT/source/<lab>/<lab>.ipynb for each lab (all with a spec by default) and
    OUT/nbgrader_config.py unless it exists."""
    root = Path(out)
    written = [write_notebook(source_notebook(lab, notebooks),
                              root / "source" / lab / f"{lab}.ipynb")
               for lab in (list(which) if which else labs())]
    config = root / "nbgrader_config.py"
    if not config.exists():
        config.write_text(CONFIG, encoding="utf-8")
    return written


# ---------------------------------------------------------------------------- checking
def strip_solutions(nb: dict[str, Any]) -> dict[str, Any]:
    """The student notebook inside a source notebook: grade cells, solution regions and the
    nbgrader metadata removed."""
    cells = []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta and meta.get("grade") and not meta.get("solution"):
            continue
        cell = copy.deepcopy(cell)
        if meta:
            del cell["metadata"]["nbgrader"]
            keep, inside = [], False
            for line in source(cell).split("\n"):
                if line.strip() == BEGIN:
                    inside = True
                elif line.strip() == END:
                    inside = False
                elif not inside:
                    keep.append(line)
            _set_source(cell, "\n".join(keep))
        cells.append(cell)
    return {**nb, "cells": cells}


def sample_submission(release: dict[str, Any], lab: str, wrong: bool = False) -> dict[str, Any]:
    """A student's submission from the released notebook: every answer of the spec, or with
    `wrong` each exercise's wrong answer where the spec has one (partial marks)."""
    spec = load_spec(lab)
    nb = copy.deepcopy(release)
    solutions = [c for c in nb["cells"]
                 if c.get("metadata", {}).get("nbgrader", {}).get("solution")]
    if len(solutions) != len(spec):
        raise SpecError(f"{lab}: {len(solutions)} solution cells, the spec has {len(spec)}")
    for cell, ex in zip(solutions, spec, strict=True):
        code = ex.wrong if wrong and ex.wrong else ex.answer
        _set_source(cell, insert_before_check(source(cell), code, marked=False))
    return nb


# ---------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trickles_kit.labs.nbgrader",
                                 description="nbgrader source notebooks of the labs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write COURSE/source/<lab>/<lab>.ipynb (+ nbgrader_config.py)")
    b.add_argument("course", type=Path)
    b.add_argument("--labs", default="", help="comma-separated lab names (default: all)")
    s = sub.add_parser("sample", help="write a sample submission from COURSE/release/LAB")
    s.add_argument("course", type=Path)
    s.add_argument("lab")
    s.add_argument("--student", default="sample")
    s.add_argument("--wrong", action="store_true", help="use the spec's wrong answers")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            which = [x.strip() for x in args.labs.split(",") if x.strip()] or None
            for path in build(args.course, which):
                print(path)
        else:
            release = read_notebook(args.course / "release" / args.lab / f"{args.lab}.ipynb")
            out = args.course / "submitted" / args.student / args.lab / f"{args.lab}.ipynb"
            print(write_notebook(sample_submission(release, args.lab, args.wrong), out))
    except (SpecError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
