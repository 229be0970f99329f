"""The notebooks the way students run them: JupyterLab + headless Debian chromium, Run All.

The harness is `trickles_kit.testing.browser` (shared with benchmarks/bench_notebooks.py): a
JupyterLab isolated in tmp_path, a copy of each notebook (autosave off, so the repo is never
touched), Run → Run All Cells, and what the page itself saw: the live views' frame log, kernel
websocket bytes, cell start/end times and the plots on the page.

* 01 (notebook defaults): the dashboard draws while the transfer runs, its last frame equals the
  event log (the page checks the builder's digest), no panel is blank, and at 1280 px with the
  file browser open the step-through shows every continuation field and the nonce verdicts.
* 05: the replay ends with a final frame equal to its events, no blank panel.
* every notebook: Run All ends without an error output.

Needs playwright (pip, in the venv — never `playwright install`) and Debian's chromium
(`make sysdeps`). Outside CI a missing piece skips with a message; with CI=true it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trickles_kit.testing import browser as B

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SCREENSHOTS = ROOT / "reports" / "screenshots"

pytestmark = pytest.mark.e2e
# TRICKLES_BROWSER_REPEAT=N runs the 01 and 05 Run All tests N times each (the flakiness loop:
# `TRICKLES_BROWSER_REPEAT=20 .venv/bin/python -m pytest tests/labs/test_browser.py
# -k "tour or replay"`,
# or the whole suite with it set, to loop them inside the full suite).
REPEAT = range(max(1, int(os.environ.get("TRICKLES_BROWSER_REPEAT", "1") or 1)))


def _missing(what: str, hint: str) -> None:
    msg = f"{what} is missing: {hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " (CI=true: browser tests never skip)")
    pytest.skip(msg)


def _requirements() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright", "pip install playwright into the venv (make lab-venv); "
                 "never `playwright install`: the test uses Debian's chromium")
    for mod in ("jupyterlab", "ipykernel", "nbformat", "ipywidgets", "plotly", "anywidget"):
        try:
            __import__(mod)
        except ImportError:
            _missing(mod, "make lab-venv (pip install -e '.[lab]')")
    if not (os.path.isfile(B.CHROMIUM) and os.access(B.CHROMIUM, os.X_OK)):
        _missing(f"chromium ({B.CHROMIUM})", "run make sysdeps (as root: "
                 "scripts/install-browser-deps.sh installs Debian's chromium)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab and one chromium for the module; each test opens its own page."""
    _requirements()
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("browser")
    work = tmp / "nb"
    work.mkdir()
    with B.Lab(tmp / "jhome", work) as jl, sync_playwright() as p:
        browser = B.launch(p, tmp / "jhome")
        try:
            yield jl, browser, work
        finally:
            browser.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _run(lab, name: str, params: dict | None = None, **kw) -> B.PageRun:
    jl, browser, work = lab
    n = B.copy_notebook(NOTEBOOKS / name, work / name, params)
    return B.run_notebook(browser, jl, name, n, **kw)


def _no_errors(run: B.PageRun) -> None:
    assert run.error_outputs == 0, B.plain_tail(run.outputs)
    assert "Traceback (most recent call last)" not in run.outputs, B.plain_tail(run.outputs)
    assert not run.errors, run.errors


STEP_JS = """() => {
    const tables = [...document.querySelectorAll('.jp-OutputArea-output table')];
    const cont = tables.find(t => t.innerText.includes('first_bootstrap_seq'));
    const nonce = tables.find(t => t.innerText.includes('expected'));
    const panel = document.querySelector('.jp-NotebookPanel').getBoundingClientRect();
    const seen = (el) => { if (!el) return null; const r = el.getBoundingClientRect();
        return {left: r.left, right: r.right, width: r.width, panelRight: panel.right}; };
    const cells = (t) => t ? [...t.querySelectorAll('tr')].map(
        tr => [...tr.querySelectorAll('td,th')].map(c => c.innerText.trim())) : [];
    const status = document.querySelector('.trickles-live-status');
    return {cont: seen(cont), nonce: seen(nonce), contRows: cells(cont),
            nonceRows: cells(nonce), status: status ? status.textContent : ''};
}"""


@pytest.mark.parametrize("rep", REPEAT)
def test_tour_streams_live_under_run_all(lab, rep: int) -> None:
    shots = SCREENSHOTS / "01-tour.png"
    run = _run(lab, "01-tour.ipynb", width=1280, height=1400, file_browser=True,
               screenshot=shots, page_check=STEP_JS)
    _no_errors(run)
    m = B.live_metrics(run)
    assert m["found"], run.live
    assert m["final_matches_log"], m["problems"]
    assert m["frames_during_transfer"] >= 2, m  # drawn while the transfer ran
    assert m["first_frame_s"] is not None and m["events"] > 1000, m
    assert not B.blank_panels(run), run.plots
    live = [p for p in run.plots if p["live"]]
    assert {p["kind"] for p in live} == {"cwnd", "tree", "timeseq", "goodput"}
    assert all(p["points"] > 0 and not p["hidden"] for p in live), live
    step = run.page_check
    assert "every point drawn equals the event log" in step["status"], step["status"]
    # the step-through at 1280 px with the file browser open: every field, every column
    fields = [r[0] for r in step["contRows"][1:]]
    for f in ("type", "seq", "first_child", "client_state", "parent", "client_timestamp",
              "timestamp", "mrtt", "state", "first_loss", "first_bootstrap_seq", "start_cwnd",
              "ssthresh", "tcp_base", "conn_id", "key_epoch", "mac", "nonce"):
        assert f in fields, fields
    assert step["cont"]["right"] <= step["cont"]["panelRight"], step["cont"]
    assert step["nonce"]["right"] <= step["nonce"]["panelRight"], step["nonce"]
    assert step["nonceRows"][0] == ["block", "claimed", "expected", "verdict"]
    body = step["nonceRows"][1:]
    assert body and all(all(c for c in row) for row in body), body  # every column filled
    assert {row[3] for row in body} == {"ok"}  # the tour knows its secret: checked


@pytest.mark.parametrize("rep", REPEAT)
def test_replay_ends_with_the_capture(lab, rep: int) -> None:
    run = _run(lab, "05-replaying-captures.ipynb", screenshot=SCREENSHOTS / "05-replay.png")
    _no_errors(run)
    m = B.live_metrics(run, view_kind="replay")
    assert m["found"] and m["final_matches_log"], m
    assert not B.blank_panels(run), run.plots
    live = [p for p in run.plots if p["live"]]
    assert {p["kind"] for p in live} == {"cwnd", "tree", "timeseq", "goodput"}
    assert all(p["points"] > 0 for p in live), live  # the goodput panel too


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_every_notebook_runs_all_without_an_error_output(lab, name: str) -> None:
    from test_notebooks import PARAMS  # the same small parameters as the headless runs

    run = _run(lab, name, PARAMS.get(name[:2]))
    _no_errors(run)
    assert not B.blank_panels(run), run.plots
