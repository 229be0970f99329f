"""Every lab notebook runs headless (nbclient) with small parameters and raises nothing.

Each notebook's cell tagged `parameters` gets the small values of PARAMS appended (papermill
style: later assignments win), the notebook runs in a fresh kernel with
`store_widget_state=False` and every Jupyter/IPython directory isolated in tmp_path, and no
cell may error. The notebooks are also checked to be committed with their outputs stripped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
LAB = ("nbformat", "nbclient", "ipykernel", "plotly", "ipywidgets", "pandas")

# small values for the `parameters` cell of each notebook (keys: the name's two-digit prefix)
PARAMS: dict[str, dict[str, object]] = {
    "00": {"SIZE": 50_000},
    "01": {"SIZE": 150_000, "LOSS": 0.01},
    "02": {},
    "03": {"SIZE": 100_000, "ACKS": 40},
    "04": {"SIZE": 120_000, "LOSS": 0.03},
    "05": {"SPEED": 0.0},
    "08": {"SIZE": 40_000, "RECORDS": 60, "N": 4},
    "09": {"SIZE": 200_000},
    "07": {"SIZE": 600_000},  # live (namespaces) only as root; else committed results
    "06": {"LEVELS": (1, 10)},  # live memory run only as root; else committed results
}
CELL_TIMEOUT = 300  # s per cell: a ceiling for a hung cell, not a speed requirement
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # IPython colours its tracebacks


def plain(text: str) -> str:
    """`text` without terminal colour codes (as a traceback should read in a test report)."""
    return ANSI.sub("", text)


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"{module} is missing: make lab-venv (pip install -e '.[lab]')")


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _inject(nb, params: dict[str, object]) -> None:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "each notebook has exactly one cell tagged 'parameters'"
    if params:
        extra = "\n".join(f"{k} = {v!r}" for k, v in params.items())
        cells[0].source = cells[0].source.rstrip("\n") + "\n# injected by the tests\n" + extra


@pytest.fixture
def isolated_jupyter(tmp_path, monkeypatch) -> Path:
    """Keep the kernel's and Jupyter's files out of $HOME."""
    home = tmp_path / "jhome"
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return home


def test_every_notebook_has_small_parameters() -> None:
    found = {p.name[:2] for p in _notebooks()}
    assert found == set(PARAMS), f"notebooks {sorted(found)} vs PARAMS {sorted(PARAMS)}"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_is_stripped_and_well_formed(path: Path) -> None:
    _need("nbformat")
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert nb.cells[0].cell_type == "markdown" and "Learning goals" in nb.cells[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: outputs must be stripped"
            assert cell.execution_count is None, f"{path.name}: execution counts must be stripped"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state must not be committed"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "trickles_kit.labs" in code, "exercises self-check through trickles_kit.labs"
    tail = [c for c in nb.cells if c.cell_type == "code"][-4:]
    assert any("checks." in c.source for c in tail), "the notebook ends with self-checks"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_headless(path: Path, tmp_path: Path, isolated_jupyter: Path) -> None:
    for m in LAB:
        _need(m)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    _inject(nb, PARAMS[path.name[:2]])
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            store_widget_state=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    failure = None
    try:
        client.execute()
    except CellExecutionError as e:  # the traceback names the cell
        failure = f"{path.name} failed:\n{plain(str(e))}"
    if failure:  # outside the except: pytest would print the CellExecutionError again
        pytest.fail(failure, pytrace=False)
    errors = [plain("\n".join(o.traceback)) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, "\n\n".join(errors)
    verdicts = [o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "stream" and o.name == "stdout"
                and o.text.startswith(("OK", "Not yet"))]
    assert verdicts, "the self-check cells printed a verdict"
