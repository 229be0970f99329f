"""nbgrader-ready labs: the generated source notebooks, and the real autograder on them.

The source notebooks come from notebooks/ plus `trickles_kit/labs/grading/<lab>.toml`; with the
solutions stripped they must be the student notebooks again (so the two cannot drift). Then, in a
course directory of its own, `nbgrader generate_assignment` releases a lab and `nbgrader
autograde` grades three submissions made from the release: the spec's answers (full marks), its
wrong answers where it has one (exactly the points of the other exercises) and the untouched
release (zero, yet every cell runs).

Autograded here: 02, 03, 04, 05, 08 and 09 — their answers are values, sets, dicts and functions
checked against the simulator or the reference captures, the same on any machine, and each
autograde costs three notebook runs. 00 (whatever the machine allows), 01 (a live transfer), 06
and 07 (live runs as root) are built and checked for drift like the others, and their source
notebooks run once with nbclient so that every answer of theirs passes its hidden test too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trickles_kit.labs import nbgrader as G

ROOT = Path(__file__).resolve().parents[2]
AUTOGRADED = ("02-anatomy-of-a-continuation", "03-congestion-control", "04-loss-recovery-nonces",
              "05-replaying-captures", "08-optimizations", "09-compressed-continuations")
NOT_AUTOGRADED = tuple(lab for lab in G.labs() if lab not in AUTOGRADED)
# past the test suite's small parameters: committed results, no namespaces, for 06 and 07
OFFLINE = {"06": {"RUN_LIVE": False}, "07": {"LIVE": False}}


def _small_params(lab: str) -> dict[str, object]:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_notebooks import PARAMS

    return {**PARAMS[lab[:2]], **OFFLINE.get(lab[:2], {})}


def _inject_small_params(nb: dict, lab: str) -> None:
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    params["source"] = G.source(params).rstrip("\n") + "\n# injected by the tests\n" + "".join(
        f"{k} = {v!r}\n" for k, v in _small_params(lab).items())


def _need_nbgrader() -> None:
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("nbgrader is missing: pip install -e '.[dev]'")


def _meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def test_every_lab_has_a_spec() -> None:
    assert G.labs() == sorted(p.stem for p in G.NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("lab", G.labs())
def test_source_is_the_student_notebook_plus_grading(lab: str, tmp_path: Path) -> None:
    [path] = G.build(tmp_path, [lab])
    assert path == tmp_path / "source" / lab / f"{lab}.ipynb"
    src = G.read_notebook(path)
    student = G.read_notebook(G.NOTEBOOKS / f"{lab}.ipynb")
    assert G.strip_solutions(src) == student, "the source notebook drifted from notebooks/"

    spec = G.load_spec(lab)
    cells = src["cells"]
    solutions = [i for i, c in enumerate(cells) if _meta(c).get("solution")]
    assert len(solutions) == len(spec) == len(G.exercise_cells(student)) >= 1
    grade_ids = [_meta(c)["grade_id"] for c in cells if _meta(c)]
    assert len(grade_ids) == len(set(grade_ids)) == 2 * len(spec)
    for i, ex in zip(solutions, spec, strict=True):
        sol, test = G.source(cells[i]), cells[i + 1]
        body = sol.split(G.BEGIN + "\n", 1)[1].split("\n" + G.END, 1)[0]
        assert body == ex.answer.strip("\n")
        meta = _meta(test)
        assert meta["grade"] and meta["locked"] and not meta["solution"]
        assert meta["points"] == ex.points > 0
        check = G.check_statement(sol)
        assert check is not None and check[1] == ex.check
        hidden = G.source(test).split(G.BEGIN_HIDDEN + "\n", 1)[1].split(G.END_HIDDEN)[0]
        assert hidden == (f"_verdict = {check[2]}\n"
                          'assert _verdict.startswith("OK"), _verdict\n')
    assert (tmp_path / "nbgrader_config.py").read_text() == G.CONFIG


def test_a_changed_notebook_breaks_its_spec(tmp_path: Path) -> None:
    """The spec names each exercise's self-check: an exercise added, removed or pointed at
    another check is an error, not a silently wrong source notebook."""
    lab = "03-congestion-control"
    nb = G.read_notebook(G.NOTEBOOKS / f"{lab}.ipynb")
    i = G.exercise_cells(nb)[1]
    nb["cells"][i]["source"] = ["MY_SPLITS = None\n", "print(checks.check_cwnd(MY_SPLITS))"]
    G.write_notebook(nb, tmp_path / f"{lab}.ipynb")
    with pytest.raises(G.SpecError, match="exercise 2 prints checks.check_cwnd"):
        G.source_notebook(lab, notebooks=tmp_path)
    del nb["cells"][i]
    G.write_notebook(nb, tmp_path / f"{lab}.ipynb")
    with pytest.raises(G.SpecError, match="2 exercise cells, the spec 3"):
        G.source_notebook(lab, notebooks=tmp_path)


def test_cli_builds_and_samples(tmp_path: Path) -> None:
    lab = "05-replaying-captures"
    run = [sys.executable, "-m", "trickles_kit.labs.nbgrader"]
    out = subprocess.run([*run, "build", str(tmp_path), "--labs", lab], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "source" / lab / f"{lab}.ipynb")
    bad = subprocess.run([*run, "sample", str(tmp_path), lab], capture_output=True, text=True)
    assert bad.returncode == 1 and "release" in bad.stderr  # nothing released yet


def _nbgrader(course: Path, *args: str, env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{r.stdout}\n{r.stderr[-4000:]}"


@pytest.mark.parametrize("lab", AUTOGRADED)
def test_autograde_full_partial_and_zero(lab: str, tmp_path: Path) -> None:
    _need_nbgrader()
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    [src] = G.build(course, [lab])
    # the test suite's small parameters, as in test_notebooks (the graders see the same cells)
    nb = G.read_notebook(src)
    _inject_small_params(nb, lab)
    G.write_notebook(nb, src)

    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "IPYTHONDIR": str(home / "ipython"), "MPLBACKEND": "Agg", "NO_COLOR": "1",
           # nbgrader runs `alembic` (its database migrations) from the venv's bin directory
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    _nbgrader(course, "generate_assignment", lab, "--force", env=env)
    release = G.read_notebook(course / "release" / lab / f"{lab}.ipynb")
    assert G.BEGIN not in str(release) and G.BEGIN_HIDDEN not in str(release)

    # what the students get: their notebook's exercise cells (the empty stub adds a blank line)
    student = G.read_notebook(G.NOTEBOOKS / f"{lab}.ipynb")
    released = [G.source(c) for c in release["cells"] if _meta(c).get("solution")]
    expected = [G.source(student["cells"][i]) for i in G.exercise_cells(student)]
    assert [[ln for ln in s.split("\n") if ln.strip()] for s in released] == \
        [[ln for ln in s.split("\n") if ln.strip()] for s in expected]

    for student_id, answers in (("right", G.sample_submission(release, lab)),
                                ("wrong", G.sample_submission(release, lab, wrong=True)),
                                ("blank", release)):
        G.write_notebook(answers, course / "submitted" / student_id / lab / f"{lab}.ipynb")
    _nbgrader(course, "autograde", lab, "--force", env=env)

    spec = G.load_spec(lab)
    total = sum(ex.points for ex in spec)
    partial = sum(ex.points for ex in spec if not ex.wrong)
    assert 0 < partial < total, "the spec needs a wrong answer and a right one"
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission(lab, s).score for s in ("right", "wrong", "blank")}
        assert gb.find_submission(lab, "right").max_score == total
    assert scores == {"right": total, "wrong": partial, "blank": 0}

    # the unanswered notebook ran to the end: every self-check printed "Not yet"
    graded = G.read_notebook(course / "autograded" / "blank" / lab / f"{lab}.ipynb")
    texts = ["".join(o.get("text", "")) for c in graded["cells"] if _meta(c).get("solution")
             for o in c.get("outputs", [])]
    assert len([t for t in texts if t.startswith("Not yet — ")]) == len(spec), texts


@pytest.mark.parametrize("lab", NOT_AUTOGRADED)
def test_answers_pass_their_hidden_tests(lab: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The labs not autograded above: their source notebook, hidden tests included, runs to the
    end — every answer of the spec gets its self-check's OK."""
    if os.environ.get("CI") != "true":
        pytest.importorskip("nbclient", reason="make lab-venv")
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        (tmp_path / "jupyter" / var.lower()).mkdir(parents=True)
        monkeypatch.setenv(var, str(tmp_path / "jupyter" / var.lower()))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    src = G.source_notebook(lab)
    _inject_small_params(src, lab)
    nb = nbformat.reads(json.dumps(src), as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{lab}: an answer of grading/{lab}.toml fails its hidden test:\n{e}")
    verdicts = [o["text"] for c in nb.cells if _meta(c).get("solution")
                for o in c.outputs if o.get("name") == "stdout"]
    assert len(verdicts) == len(G.load_spec(lab)) and all(v.startswith("OK — ")
                                                          for v in verdicts), verdicts
