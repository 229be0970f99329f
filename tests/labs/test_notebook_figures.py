"""The figures notebooks 06, 08 and 09 leave as outputs, checked as a student would see them.

Each notebook is copied to tmp_path, given small parameters (06 without the live run) and
executed headless with nbclient; then every plotly output (`application/vnd.plotly.v1+json`)
is read back: no figure and no subplot panel is empty, and 06's goodput bars are the medians
of the committed repetitions in benchmarks/results/bench_goodput.json — not their sum.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
from test_notebooks import _need  # the same skip-or-fail rule for lab packages

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PLOTLY = "application/vnd.plotly.v1+json"
RUNS = {  # notebook -> (small parameters, the number of figures it draws)
    "06-benchmark-vs-linux-tcp": ({"RUN_LIVE": False, "LEVELS": (1, 10)}, 6),
    "08-optimizations": ({"SIZE": 40_000, "RECORDS": 60, "N": 4}, 4),
    "09-compressed-continuations": ({"SIZE": 200_000}, 2),
}
CELL_TIMEOUT = 300


def _run(name: str, params: dict[str, object], work: Path) -> Any:
    """Execute a copy of notebooks/NAME.ipynb in `work` with `params` appended to its
    parameters cell; the executed notebook (the repository's copy is never touched)."""
    import nbformat
    from nbclient import NotebookClient

    path = work / f"{name}.ipynb"
    shutil.copy(NOTEBOOKS / path.name, path)
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n# injected by the tests\n" + "\n".join(f"{k} = {v!r}"
                                                             for k, v in params.items())
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", store_widget_state=False,
                   resources={"metadata": {"path": str(work)}}).execute()
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, Any]:
    """Each notebook run once for all the tests of this module, Jupyter's files kept in tmp."""
    for m in ("nbformat", "nbclient", "ipykernel", "plotly", "pandas"):
        _need(m)
    home = tmp_path_factory.mktemp("jhome")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
            (home / sub).mkdir()
            mp.setenv(var, str(home / sub))
        for name, (params, _) in RUNS.items():
            out[name] = _run(name, params, tmp_path_factory.mktemp(name[:2]))
    return out


def values(v: Any) -> list:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata"} (base64)."""
    if isinstance(v, dict) and "bdata" in v:
        import numpy as np

        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return arr.reshape(v["shape"]).tolist() if "shape" in v else arr.tolist()
    return list(v) if v is not None else []


def figures(nb: Any) -> list[dict]:
    return [o["data"][PLOTLY] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") in ("display_data", "execute_result")
            and PLOTLY in o.get("data", {})]


def has_data(trace: dict) -> bool:
    if trace.get("type") == "table":
        return any(values(col) for col in trace.get("cells", {}).get("values", []))
    return any(x is not None for k in ("x", "y") for x in values(trace.get(k)))


def title(fig: dict) -> str:
    t = fig.get("layout", {}).get("title", {})
    return t.get("text", "") if isinstance(t, dict) else str(t)


@pytest.mark.parametrize("name", list(RUNS))
def test_every_figure_and_panel_has_data(executed, name: str) -> None:
    nb = executed[name]
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, errors
    figs = figures(nb)
    assert len(figs) == RUNS[name][1], [title(f) for f in figs]
    for fig in figs:
        traces = fig.get("data", [])
        assert any(has_data(t) for t in traces), f"{name}: empty figure {title(fig)!r}"
        panels = {"x" + m.group(1) for k in fig.get("layout", {})
                  if (m := re.fullmatch(r"xaxis(\d*)", k))}
        filled = {t.get("xaxis", "x") for t in traces if has_data(t)}
        assert panels <= filled, f"{name}: empty panel(s) {panels - filled} in {title(fig)!r}"


def test_06_goodput_bars_are_the_json_medians(executed) -> None:
    from trickles_kit.labs.benchmark import goodput_label

    res = json.loads((ROOT / "benchmarks/results/bench_goodput.json").read_text())
    runs: dict[tuple[str, str], list[float]] = {}
    for r in res["runs"]:
        if "error" not in r:
            key = (r["kind"], goodput_label(r["rate_mbit"], r["loss"]))
            runs.setdefault(key, []).append(r["goodput_mbit"])
    table = {(r["kind"], goodput_label(r["rate_mbit"], r["loss"])): r for r in res["table"]}
    [fig] = [f for f in figures(executed["06-benchmark-vs-linux-tcp"])
             if title(f).startswith("Goodput through the bottleneck")]
    assert fig["layout"].get("barmode") != "stack"
    bars = {}
    for tr in fig["data"]:
        xs, ys = values(tr["x"]), values(tr["y"])
        assert len(xs) == len(set(xs)), f"{tr['name']}: the repetitions are drawn as bars"
        bars.update({(tr["name"], x): y for x, y in zip(xs, ys, strict=True)})
    assert set(bars) == set(runs) == set(table)
    for key, y in bars.items():
        assert y == pytest.approx(statistics.median(runs[key]))
        assert y == pytest.approx(table[key]["goodput_mbit"])  # the headline table's number
        assert y <= table[key]["rate_mbit"], f"{key}: {y} Mbit/s through a smaller bottleneck"
