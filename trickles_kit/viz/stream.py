"""The streaming view: one anywidget that draws plotly panels from new points only.

Why not plotly's FigureWidget: each one carries the whole plotly.js bundle as its module (about
5 MB over the kernel websocket per widget), and every update resends whole arrays, so a
four-panel dashboard cost 20 MB before the first frame and fell behind on long transfers.
Here:

* plotly.js reaches the page at most once: by default it is the page's own copy (JupyterLab's
  plotly renderer, served over HTTP; one tiny plotly output makes the renderer load it), and
  where that extension is missing, one `PlotlyRuntime` widget per kernel sends it
  (``plotly_js="send"``, or ``TRICKLES_PLOTLY_JS=send``);
* each update is one custom message whose float64 buffers hold only the points added since the
  last one (`TraceSender` keeps what the page has and sends the difference);
* the page keeps every point per model and draws on its own schedule (stream.js): frames may
  be dropped, points never, and a final message carries a digest of the static builder's
  figures so the page checks that its last frame equals the event log.
"""

from __future__ import annotations

import functools
import html
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import traitlets

from trickles_kit.viz.plotly_bundle import bundle_path

__all__ = ["PanelSpec", "PlotlyRuntime", "StreamView", "TraceSender", "digest", "plotly_js_mode",
           "plotly_output", "show", "static_bundle", "thin"]

_JS = Path(__file__).with_name("stream.js")
_DATA_KEYS = frozenset(("x", "y", "text", "uid", "visible"))
PLOTLY_JS_MODES = ("page", "send")


def plotly_js_mode() -> str:
    """'send' when plotly.js's basic bundle is installed (`viz.plotly_bundle`: the page starts
    four times faster than with the full bundle), else 'page' when JupyterLab's plotly renderer
    is (the page loads the full plotly.js over HTTP), else 'send' with the full bundle.
    `TRICKLES_PLOTLY_JS=page|send` overrides the guess."""
    forced = os.environ.get("TRICKLES_PLOTLY_JS", "").strip().lower()
    if forced in PLOTLY_JS_MODES:
        return forced
    if bundle_path() is not None:
        return "send"
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:  # no Jupyter at all: nothing will render anyway
        return "send"
    for d in jupyter_path("labextensions"):
        if (Path(d) / "jupyterlab-plotly" / "package.json").is_file():
            return "page"
    return "send"


@functools.cache
def _plotly_source() -> str:
    """The basic bundle when installed, else the Python package's full plotly.js."""
    src = bundle_path()
    if src is None:
        import plotly

        src = Path(plotly.__file__).with_name("package_data") / "plotly.min.js"
    return src.read_text(encoding="utf-8") + "\nexport default {};\n"


class PlotlyRuntime(anywidget.AnyWidget):
    """plotly.js as a module, sent once per kernel; evaluating it sets ``window.Plotly``."""

    _instance: PlotlyRuntime | None = None

    @classmethod
    def ensure(cls) -> PlotlyRuntime:
        if cls._instance is None:
            cls._instance = cls(_esm=_plotly_source())
        return cls._instance


@dataclass
class PanelSpec:
    """One panel: its kind, plotly layout and trace styles (everything but the data)."""

    kind: str
    layout: dict[str, Any]
    traces: list[dict[str, Any]]  # {"name", "style", "always"}

    @classmethod
    def from_figure(cls, kind: str, fig: go.Figure, always: frozenset[str] = frozenset(),
                    height: int | None = None) -> PanelSpec:
        """Styles from `fig` (a builder's figure), data stripped."""
        js = json.loads(pio.to_json(fig, validate=False))
        traces = []
        for t in js.get("data", []):
            style = {k: v for k, v in t.items() if k not in _DATA_KEYS}
            traces.append({"name": t.get("name", ""), "style": style,
                           "always": t.get("name", "") in always})
        layout = js.get("layout", {})
        layout["uirevision"] = kind  # keep the student's zoom across updates
        if height:
            layout["height"] = height
        return cls(kind, layout, traces)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "layout": self.layout, "traces": self.traces}


class StreamView(anywidget.AnyWidget):
    """The page side of a live view: panels declared in `spec`, data by custom messages."""

    _esm = _JS
    spec = traitlets.Dict().tag(sync=True)
    status_html = traitlets.Unicode("").tag(sync=True)
    banner_html = traitlets.Unicode("").tag(sync=True)
    view_kind = traitlets.Unicode("dashboard").tag(sync=True)
    uid = traitlets.Unicode("").tag(sync=True)  # the page's key for this view's store

    def __init__(self, panels: Sequence[PanelSpec], *, plotly_js: str | None = None,
                 **kw: Any) -> None:
        mode = plotly_js or plotly_js_mode()
        if mode not in PLOTLY_JS_MODES:
            raise ValueError(f"plotly_js must be one of {PLOTLY_JS_MODES}, not {mode!r}")
        self.plotly_js = mode
        if mode == "send":
            PlotlyRuntime.ensure()
        super().__init__(spec={"panels": [p.as_json() for p in panels]},
                         uid=secrets.token_hex(8), **kw)
        self.sent: list[tuple[dict, list[bytes]]] = []  # what was sent, when `record` is on
        self.record = False

    def push(self, content: dict[str, Any], buffers: Sequence[bytes] = ()) -> None:
        """One custom message to every view of this model (recorded for tests if asked)."""
        if self.record:
            self.sent.append((content, list(buffers)))
        self.send(content, list(buffers) or None)


@dataclass
class _Shadow:
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    text: list | None = None


def _first_difference(old: list, new: list) -> int:
    """Length of the common prefix (fast path: `new` only appended to `old`)."""
    n = len(old)
    if len(new) >= n and new[:n] == old:
        return n
    lo, hi = 0, min(n, len(new))
    while lo < hi:  # prefixes that match are contiguous: bisect on the boundary
        mid = (lo + hi + 1) // 2
        if new[:mid] == old[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class TraceSender:
    """What the page holds per (panel, trace), and the messages that bring it up to date."""

    def __init__(self) -> None:
        self.shadows: dict[tuple[str, int], _Shadow] = {}
        self.seq = 0

    def reset(self) -> None:
        self.shadows.clear()

    def update(self, panel: str, index: int, x: list, y: list, text: list | None,
               updates: list[dict], buffers: list[bytes]) -> None:
        """Append to `updates`/`buffers` what turns the page's trace into (x, y, text)."""
        sh = self.shadows.setdefault((panel, index), _Shadow())
        start = min(_first_difference(sh.x, x), _first_difference(sh.y, y))
        if text is not None:
            start = min(start, _first_difference(sh.text or [], text))
        if (start == len(x) == len(sh.x) == len(y) == len(sh.y)
                and (text is None or len(text) == len(sh.text or []) == start)):
            return  # the page already has exactly this
        u: dict[str, Any] = {"p": panel, "i": index, "from": start, "xb": len(buffers),
                             "yb": len(buffers) + 1}
        buffers.append(np.asarray(x[start:], dtype=np.float64).tobytes())
        buffers.append(np.asarray(y[start:], dtype=np.float64).tobytes())
        del sh.x[start:], sh.y[start:]
        sh.x.extend(x[start:])
        sh.y.extend(y[start:])
        if text is not None:
            u["text"] = [str(s) for s in text[start:]]
            sh.text = (sh.text or [])[:start] + list(text[start:])
        updates.append(u)

    def current(self, panel: str, index: int) -> _Shadow:
        return self.shadows.get((panel, index), _Shadow())


def _column(values: Any) -> list:
    if values is None:
        return []
    return [None if v is None or (isinstance(v, float) and v != v) else v for v in values]


def _traces(fig: go.Figure | Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    if isinstance(fig, Mapping):
        return [(t.get("name", ""), t.get("x"), t.get("y")) for t in fig.get("data", [])]
    return [(t.name or "", t.x, t.y) for t in fig.data]


def digest(fig: go.Figure | Mapping[str, Any]) -> dict[str, list[float]]:
    """Per trace name: [length, non-null x, sum x, non-null y, sum y] — what stream.js checks
    its final frame against. `fig`: a plotly figure or its plain dict."""
    out: dict[str, list[float]] = {}
    for name, x, y in _traces(fig):
        xs, ys = _column(x), _column(y)
        fx = [float(v) for v in xs if v is not None]
        fy = [float(v) for v in ys if v is not None]
        s_x = 0.0
        for v in fx:  # left to right, as the page sums
            s_x += v
        s_y = 0.0
        for v in fy:
            s_y += v
        out[name] = [len(xs), len(fx), s_x, len(fy), s_y]
    return out


def thin(fig: Mapping[str, Any], cap: int = 5000) -> dict[str, Any]:
    """`fig` (a plain figure dict) with at most about `cap` points per trace, the way a live
    frame thins it (markers: every k-th and the last; lines: per-bucket extremes; separate
    segments: every k-th whole one). Why: a saved copy of a 20 MB run would carry 55,000
    points — megabytes in the notebook file and seconds of page time. A thinned trace says so
    in its legend name."""
    data = []
    for t in fig.get("data", []):
        x, y = t.get("x") or [], t.get("y") or []
        n = len(x)
        if n <= cap:
            data.append(t)
            continue
        mode = t.get("mode", "")
        if mode == "lines" and n >= 3 and x[2] is None:
            step = -(-(n // 3) // (cap // 3))
            idx = [k for s in range(0, n // 3, step) for k in (3 * s, 3 * s + 1, 3 * s + 2)]
        elif mode == "lines":
            idx = _envelope(y, cap)
        else:
            step = -(-n // cap)
            idx = list(range(0, n, step))
            if idx[-1] != n - 1:
                idx.append(n - 1)
        t2 = dict(t, x=[x[k] for k in idx], y=[y[k] for k in idx])
        if t.get("text") is not None:
            t2["text"] = [t["text"][k] for k in idx]
        t2["name"] = f"{t.get('name', '')} ({len(idx):,} of {n:,} points)"
        data.append(t2)
    return {**fig, "data": data}


def _envelope(y: Sequence[Any], cap: int) -> list[int]:
    n, out = len(y), []
    size = -(-n // max(1, cap // 4))
    for a in range(0, n, size):
        b = min(n, a + size)
        seg = range(a, b)
        lo = min(seg, key=lambda k: y[k])
        hi = max(seg, key=lambda k: y[k])
        for k in sorted({a, lo, hi, b - 1}):
            out.append(k)
    return out


_STATIC_JS = """<div class="trickles-static" id="%(id)s"></div>
<script type="text/javascript">
(function () {
  var el = document.getElementById("%(id)s");
  if (!el || el.dataset.drawn) return;
  el.dataset.drawn = "1";
  if ("%(uid)s" && document.querySelector('.trickles-live[data-model="%(uid)s"]')) {
    el.style.display = "none";  // the live view is on this page and shows the same figure
    return;
  }
  var fig = %(fig)s;
  el.style.minHeight = (fig.layout.height || 360) + "px";
  function draw() { window.Plotly.newPlot(el, fig.data, fig.layout, {responsive: true}); }
  function ready() { return window.Plotly && window.Plotly.newPlot; }
  if (ready()) { draw(); return; }
  var waited = 0;  // the kernel's PlotlyRuntime may still be bringing plotly.js: wait a little
  var poll = setInterval(function () {
    waited += 50;
    if (ready()) { clearInterval(poll); draw(); }
    else if (waited >= %(wait_ms)d) { clearInterval(poll); load(); }
  }, 50);
  function load() {
  var s = document.createElement("script");
  s.src = "https://cdn.plot.ly/plotly-%(version)s.min.js";
  s.onload = draw;
  s.onerror = function () { el.textContent = "(plotly.js could not be loaded to draw %(title)s)"; };
  document.head.appendChild(s);
  }
})();
</script>"""


def static_bundle(fig: go.Figure | Mapping[str, Any], live_uid: str = "",
                  name: str = "", wait_ms: int = 0) -> dict[str, Any]:
    """An ordinary output that keeps `fig` in the notebook file: HTML with the figure's JSON
    and a few lines of script. On the page that still shows the live view (`live_uid`) it
    hides itself — the live view already draws the same data, and a second plotly render
    would block the page for seconds on a long run; reopened without a kernel, or converted
    by nbconvert, it draws with the page's plotly.js (waiting up to `wait_ms` for it) or
    loads it from the plotly CDN."""
    import plotly.offline

    if isinstance(fig, Mapping):
        js = json.dumps(fig, separators=(",", ":"), allow_nan=False)
        title = str((fig.get("layout", {}).get("title") or {}).get("text") or name)
    else:
        js = pio.to_json(fig, validate=False)
        title = str(fig.layout.title.text or name)
    js = js.replace("</", "<\\/")  # no early </script>
    title = title or "the figure"
    body = _STATIC_JS % {"id": f"tk-static-{live_uid or secrets.token_hex(4)}-{name}",
                         "uid": live_uid, "fig": js, "title": html.escape(title),
                         "version": plotly.offline.get_plotlyjs_version(), "wait_ms": wait_ms}
    return {"text/html": body, "text/plain": f"<figure: {title}>"}


BASIC_TRACES = frozenset(("scatter", "bar", "pie"))  # what plotly.js's basic bundle draws


def show(fig: go.Figure) -> None:
    """Display a static figure with the plotly.js the live views already use.

    Why not ``fig.show()``: in JupyterLab that loads the full plotly.js (4.6 MB) into the page
    for the first plotly output — about a second with the tab frozen, in the middle of a live
    run. A figure of scatter, bar and pie traces is drawn with the basic bundle the kernel's
    `PlotlyRuntime` sends (once per kernel); any other figure falls back to ``fig.show()``."""
    from IPython.display import display

    kinds = {t.type or "scatter" for t in fig.data}
    if plotly_js_mode() == "send" and bundle_path() is not None and kinds <= BASIC_TRACES:
        PlotlyRuntime.ensure()  # its model's creation makes the page evaluate plotly.js
        display(static_bundle(fig, wait_ms=5000), raw=True)
    else:
        fig.show()


def plotly_output(fig: go.Figure) -> dict[str, Any]:
    """A plain plotly output (no HTML fallback): in "page" mode one such output makes
    JupyterLab's plotly renderer load plotly.js into the page, which the live view then uses.
    Never updated in place: the renderer ignores updates to a graph it has drawn."""
    js = json.loads(pio.to_json(fig, validate=False))
    js["config"] = {"staticPlot": True, "displayModeBar": False}
    return {"application/vnd.plotly.v1+json": js, "text/plain": "<key to the live panels>"}
