"""Notebooks the way students run them: JupyterLab + Debian chromium (Playwright), Run All.

Shared by the browser test (tests/labs/test_browser.py) and the benchmark
(benchmarks/bench_notebooks.py). `Lab` starts an isolated JupyterLab; `run_notebook` opens a
copy of a notebook, presses Run → Run All Cells, waits for every cell and returns what the page
saw: kernel websocket bytes, the live views' frame log (stream.js keeps it in
``window.__tricklesLive``), the longest main-thread stall, the plots on the page and the text of
the outputs. `live_metrics` turns that into the issue's figures (first frame, frames during the
transfer, lag, final frame = event log, blank panels).

Needs playwright (pip; never `playwright install`) and chromium (`make sysdeps`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("TRICKLES_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-quic"]
USER_SETTINGS = {  # JupyterLab user settings: no news toast, no autosave
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}
FILE_BROWSER_PX = 250  # the left sidebar's width when the file browser is open

PAGE_PROBE_JS = Path(__file__).with_name("page_probe.js")  # heartbeat + websocket log

DONE_JS = """n => {
    const ps = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
    return ps.length >= n && ps.slice(0, n).every(p => /\\[\\d+\\]/.test(p.textContent));
}"""

# every plotly plot on the page: whether it is a live panel, its data points, its size
PLOTS_JS = """() => [...document.querySelectorAll('.jp-OutputArea .js-plotly-plot')].map(p => {
    const data = p.data || [];
    let points = 0;
    for (const t of data) {
        if (t.visible === false) continue;
        const n = (t.x && t.x.length) || (t.y && t.y.length) ||
                  (t.cells && t.cells.values && t.cells.values[0] &&
                   t.cells.values[0].length) || 0;
        points += n;
    }
    const panel = p.closest('.trickles-panel');
    const r = p.getBoundingClientRect();
    return {title: (p.layout && p.layout.title && (p.layout.title.text || p.layout.title)) ||
                   ((p.querySelector('.gtitle') || {}).textContent || ''),
            live: !!panel, kind: panel ? panel.dataset.kind : null,
            hidden: r.width === 0 || r.height === 0,
            traces: data.length, points: points, width: r.width, height: r.height};
})"""


def cell_times(messages: list[tuple[float, dict]]) -> list[dict[str, Any]]:
    """Per executed cell (execute_input seen): its code, start and end wall clock (ms)."""
    cells: dict[str, dict[str, Any]] = {}
    for wall, m in messages:
        if m["type"] == "execute_input" and m["parent"]:
            cells[m["parent"]] = {"code": m["code"] or "", "start": wall, "end": None}
        elif (m["type"] == "status" and m["state"] == "idle" and m["parent"] in cells
              and cells[m["parent"]]["end"] is None):
            cells[m["parent"]]["end"] = wall
    return list(cells.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


class Lab:
    """One JupyterLab server in its own process group, state isolated under `home`."""

    def __init__(self, home: Path, notebook_dir: Path, settings: dict | None = None) -> None:
        self.home, self.dir = home, notebook_dir
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ}
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"),
                         ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")):
            (home / sub).mkdir(parents=True, exist_ok=True)
            self.env[var] = str(home / sub)
        user = home / "config" / "lab" / "user-settings"
        for rel, value in {**USER_SETTINGS, **(settings or {})}.items():
            p = user / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(value))
        self.log = home / "lab.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               f"--ServerApp.token={self.token}", f"--ServerApp.port={self.port}",
               "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
               f"--ServerApp.root_dir={self.dir}"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited:\n{self.log.read_text()[-3000:]}")
            try:
                _get(f"{self.base}/api/status", self.token, 1.0)
                return
            except OSError:
                time.sleep(0.25)
        raise RuntimeError(f"jupyter lab did not answer in {timeout} s:\n"
                           f"{self.log.read_text()[-3000:]}")

    def kernel_connected(self, name: str, timeout: float = 120.0) -> dict:
        """Wait until the server says the notebook's kernel is idle and a websocket is
        attached; the page's indicator says 'idle' too early."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                for s in _get(f"{self.base}/api/sessions", self.token):
                    k = s.get("kernel") or {}
                    if (s.get("path", "").endswith(name) and k.get("execution_state") == "idle"
                            and k.get("connections", 0) >= 1):
                        return k
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"no idle, connected kernel for {name} after {timeout} s")

    def shutdown_kernels(self) -> int:
        """End every session (and its kernel): the next notebook starts in a fresh one."""
        n = 0
        try:
            sessions = _get(f"{self.base}/api/sessions", self.token)
        except OSError:
            return 0
        for s in sessions:
            req = urllib.request.Request(f"{self.base}/api/sessions/{s['id']}", method="DELETE",
                                         headers={"Authorization": f"token {self.token}"})
            with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=10):
                n += 1
        return n

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group holds the server and its kernels
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # a kernel that outlived the server
            os.killpg(pgid, signal.SIGKILL)

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def copy_notebook(src: Path, dest: Path, params: dict[str, Any] | None = None) -> int:
    """Copy `src` with `params` appended to its parameters cell; returns its code-cell count."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for i, c in enumerate(nb.cells):  # nbformat 4.5 wants cell ids; the repo's may lack them
        c.setdefault("id", f"cell-{i}")
    if params:
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source += "\n# overridden\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nbformat.write(nb, dest)
    return sum(c.cell_type == "code" for c in nb.cells)


@dataclass
class PageRun:
    """What the page saw during one Run All."""

    notebook: str
    seconds: float
    ws_bytes: int
    ws_frames: int
    stall_ms: float
    live: dict[str, Any]  # window.__tricklesLive: frames, marks, views
    plots: list[dict[str, Any]]
    outputs: str
    errors: list[str] = field(default_factory=list)
    clicked_at: float = 0.0  # wall clock (ms) of Run All
    stalls: list = field(default_factory=list)  # [wall ms, gap ms] of every gap over 150 ms
    cells: list = field(default_factory=list)  # cell_times(): code, start, end (wall ms)
    error_outputs: int = 0  # `error` messages (a cell raised)
    page_check: Any = None  # what run_notebook's `page_check` returned


def launch(p: Any, home: Path) -> Any:
    """Headless Debian chromium, its profile under `home`."""
    return p.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS,
        env={**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "xdg-config"),
             "XDG_CACHE_HOME": str(home / "xdg-cache")})


def run_notebook(browser: Any, lab: Lab, name: str, n_code: int, *, width: int = 1400,
                 height: int = 1800, timeout_s: float = 600.0, file_browser: bool = False,
                 screenshot: Path | None = None, page_check: str | None = None) -> PageRun:
    """Open `name` in a fresh page, Run All, wait for every cell; what the page saw.
    `page_check`: a JS function evaluated at the end (its result in `PageRun.page_check`)."""
    from playwright.sync_api import TimeoutError as PWTimeout

    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.add_init_script(path=str(PAGE_PROBE_JS))
    try:
        # ?reset: a fresh workspace, so a notebook opened by an earlier page is not restored
        page.goto(f"{lab.base}/lab/tree/{name}?reset&token={lab.token}",
                  wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        lab.kernel_connected(name)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                               timeout=60_000)
        if not file_browser:
            with contextlib.suppress(PWTimeout):  # close the left sidebar if it is open
                tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
                if tab.count():
                    tab.first.click(timeout=2_000)
        page.evaluate("() => { window.__tkStall.max = 0; }")
        page.evaluate("() => { window.__tkWs.on = true; }")
        t0 = time.monotonic()
        clicked = page.evaluate("Date.now()")
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        with contextlib.suppress(PWTimeout):  # safety net: a 'Select Kernel' dialog
            page.wait_for_selector(".jp-Dialog", timeout=1_000)
            page.click(".jp-Dialog .jp-mod-accept")
        page.wait_for_function(DONE_JS, arg=n_code, timeout=timeout_s * 1000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                               timeout=60_000)
        # the live views' last frame may trail the cell: wait until every view has drawn it
        with contextlib.suppress(PWTimeout):
            page.wait_for_function(
                """() => { const r = window.__tricklesLive; if (!r) return true;
                   const ids = Object.keys(r.views);
                   return ids.every(id => r.marks.some(m => m.model === id &&
                                                        m.what === 'final-drawn')); }""",
                timeout=30_000)
        seconds = time.monotonic() - t0
        ws = page.evaluate("() => { const r = window.__tkWs; r.on = false; return r; }")
        messages = [(m["wall"], m) for m in ws["msgs"]]
        stall = page.evaluate("() => window.__tkStall.max")
        long_stalls = page.evaluate("() => window.__tkStall.long")
        live = page.evaluate("() => window.__tricklesLive || {frames: [], marks: [], views: {}}")
        plots = page.evaluate(PLOTS_JS)
        outputs = page.text_content(".jp-Notebook") or ""  # offscreen cells too
        checked = page.evaluate(page_check) if page_check else None
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=False)
    finally:
        page.close()
    return PageRun(name, seconds, ws["bytes"], ws["frames"], float(stall), live, plots, outputs,
                   errors, float(clicked), long_stalls, cell_times(messages),
                   sum(m["type"] == "error" for _, m in messages), checked)


def live_metrics(run: PageRun, view_kind: str = "dashboard",
                 transfer_code: str = "await watch(") -> dict[str, Any]:
    """The live figures of one run, for the first view of `view_kind` that finished.

    The transfer cell is the executed cell whose code contains `transfer_code`; the page clock
    of a packet is the run's wall offset (the `end` mark's clock) + its event time.
    first_frame_s: transfer cell starts (its execute_input reaches the page) → first frame with
    data; frames_during_transfer: redraw rounds whose data lie strictly inside the transfer,
    drawn between its first and last packet; lag_s: last packet → the first frame that shows
    it; cell_done_after_transfer_s: last packet → the transfer cell is idle;
    final_matches_log: the page's own check of its data against the builder's digest.
    """
    live = run.live
    views = {mid: v for mid, v in live.get("views", {}).items() if v.get("kind") == view_kind}
    if not views:
        return {"found": False}
    mid, view = next(iter(views.items()))
    frames = sorted((f for f in live.get("frames", []) if f.get("model") == mid),
                    key=lambda f: f["wall"])
    marks = [m for m in live.get("marks", []) if m.get("model") == mid]
    end = next((m for m in marks if m["what"] == "end"), None)
    clock = end.get("clock") if end else None
    t_first, t_last = view.get("t_first"), view.get("t_last")
    cell = next((c for c in run.cells if transfer_code in c["code"]), None)
    start = cell["start"] if cell else next((m["wall"] for m in marks if m["what"] == "start"),
                                            None)
    first_data = next((f["wall"] for f in frames if f["points"] > 0), None)
    out: dict[str, Any] = {"found": True, "events": view.get("events"),
                           "final_matches_log": bool(view.get("match")),
                           "problems": view.get("problems", [])[:5],
                           "frames_total": len({f["seq"] for f in frames if f["points"] > 0})}
    out["first_frame_s"] = (first_data - start) / 1e3 if start and first_data else None
    if clock is not None and t_first is not None and t_last is not None:
        wall_first, wall_last = (clock + t_first) * 1e3, (clock + t_last) * 1e3
        during = {f["seq"] for f in frames if f["points"] > 0 and not f["final"]
                  and f["tHi"] is not None and t_first < f["tHi"] < t_last
                  and wall_first <= f["wall"] <= wall_last}
        out["frames_during_transfer"] = len(during)
        caught = [f["wall"] for f in frames if f["tHi"] is not None and f["tHi"] >= t_last]
        out["lag_s"] = max(0.0, (min(caught) - wall_last) / 1e3) if caught else None
        out["transfer_s"] = t_last - t_first
        if cell and cell["end"] is not None:
            out["cell_done_after_transfer_s"] = (cell["end"] - wall_last) / 1e3
    return out


def plain_tail(text: str, n: int = 3000) -> str:
    """The end of the page's text without terminal colour codes (for assertion messages)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)[-n:]


def blank_panels(run: PageRun) -> list[dict[str, Any]]:
    """Live panels or static figures that ended with no data drawn (hidden panels aside)."""
    return [p for p in run.plots if not p["hidden"] and p["points"] == 0 and p["height"] > 20]
