"""Figure builders on small event tables, checked through fig.to_dict()."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("plotly", reason="plotly is a lab dependency: make lab-venv")

import plotly.graph_objects as go  # noqa: E402
from helpers_labfigures import events_with_loss, lab_inputs  # noqa: E402

from trickles_kit.apps.sim import LinkConfig, simulate_transfer  # noqa: E402
from trickles_kit.core.events import Event, EventLog  # noqa: E402
from trickles_kit.viz import figures as F  # noqa: E402


def ev(kind: str, t: float, pkt: int, ack: int, cwnd: int, ssthresh: int = 16383,
       state: int = 0, side: str = "server", **detail) -> Event:
    return Event(kind, t, side, conn_id=7, pkt=pkt, ack=ack, cwnd=cwnd, ssthresh=ssthresh,
                 tcp_base=1, state=state, detail=detail)


# a hand-made run: handshake window 1..3, ack 1 continues, ack 2 splits, ack 3 terminates
TINY = [
    ev("initial", 0.0, 1, 0, 3), ev("initial", 0.0, 2, 0, 3), ev("initial", 0.0, 3, 0, 3),
    ev("continue", 0.1, 4, 1, 3), ev("continue", 0.11, 5, 2, 4), ev("split", 0.11, 6, 2, 4),
    ev("terminate", 0.12, -1, 3, 2),
]


def traces(fig) -> dict[str, dict]:
    return {t["name"]: t for t in fig.to_dict()["data"]}


def test_cwnd_figure_plots_every_window_point() -> None:
    tr = traces(F.cwnd_figure(TINY))
    assert list(tr["cwnd"]["y"]) == [3, 3, 3, 3, 4, 4]
    assert list(tr["terminate"]["x"]) == [0.12]
    by_pkt = traces(F.cwnd_figure(TINY, x="pkt"))
    assert list(by_pkt["cwnd"]["x"]) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError):
        F.cwnd_figure(TINY, x="bytes")


def test_trickle_lanes_follow_continue_split_terminate() -> None:
    lanes = {(r["kind"], r.get("pkt")): r for r in F.trickle_lanes(TINY)}
    assert lanes[("continue", 4)]["lane"] == lanes[("initial", 1)]["lane"]
    assert lanes[("continue", 5)]["lane"] == lanes[("initial", 2)]["lane"]
    split = lanes[("split", 6)]
    assert split["lane"] not in {lanes[("initial", p)]["lane"] for p in (1, 2, 3)}
    assert split["parent_lane"] == lanes[("initial", 2)]["lane"]
    assert lanes[("terminate", -1)]["lane"] == lanes[("initial", 3)]["lane"]
    tr = traces(F.trickle_tree_figure(TINY))
    assert len(tr["split"]["x"]) == 1 and len(tr["terminate"]["x"]) == 1


def test_time_sequence_and_goodput() -> None:
    rows = [*TINY, ev("request", 0.05, -1, 1, 3, side="client"),
            ev("data", 0.1, -1, -1, 0, side="client", bytes=1448),
            ev("data", 0.25, -1, -1, 0, side="client", bytes=2896)]
    tr = traces(F.time_sequence_figure(rows))
    assert list(tr["sent: split"]["y"]) == [6]
    assert list(tr["acknowledged (request)"]["y"]) == [1]
    g = traces(F.goodput_figure(rows, bin_s=0.1))["goodput"]
    assert list(g["x"]) == pytest.approx([0.1, 0.2])
    assert list(g["y"]) == pytest.approx([1448 * 8 / 0.1 / 1e6, 2896 * 8 / 0.1 / 1e6])


def test_inspector_highlights_changes_and_verdicts() -> None:
    prev = {"seq": 4, "tcp_base": 1, "state": 0, "ssthresh": 16383}
    row = {"seq": 9, "tcp_base": 9, "state": 2, "ssthresh": 3, "mac_ok": False, "nonce_ok": True}
    cells = F.continuation_inspector(row, prev).to_dict()["data"][0]["cells"]
    names, values = cells["values"]
    assert values[names.index("state")] == "BOOTSTRAP"
    assert values[names.index("mac")] == "FAIL" and values[names.index("nonce")] == "ok"
    colors = cells["fill"]["color"][0]
    assert colors[names.index("tcp_base")] != "white"


def test_nonce_panel_verdicts() -> None:
    t = F.nonce_panel([{"left": 0, "right": 5, "claimed": 1, "expected": 1},
                       {"left": 7, "right": 9, "claimed": 2, "expected": 3}])
    assert list(t.to_dict()["data"][0]["cells"]["values"][3]) == ["ok", "REJECTED"]


def test_figures_from_a_simulated_loss() -> None:
    log = EventLog()
    r = simulate_transfer(300_000, seed=3, down=LinkConfig(loss_pattern=[40], rate=None),
                          up=LinkConfig(rate=None), on_event=log)
    assert r.ok
    cw = traces(F.cwnd_figure(log.events))
    # the figures draw the server's events: its own counts (the report's figures are the
    # client's, which include the requests still on the way when the transfer ended)
    srv = r.server
    assert len(cw["retransmit"]["x"]) == srv.get("retransmit", 0) == r.retransmissions == 1
    assert len(cw["terminate"]["x"]) == srv.get("terminate", 0)
    tree = traces(F.trickle_tree_figure(log.events))
    assert len(tree["split"]["x"]) == srv.get("split", 0)


# ------------------------------------------------------------------ legends and axis titles
def every_figure() -> dict[str, go.Figure]:
    """One figure of every builder that draws axes: viz.figures, notebook 06, 08 and 09."""
    from trickles_kit.labs import benchmark
    from trickles_kit.viz import labfigures as LF

    events = events_with_loss()
    figs = {"cwnd": F.cwnd_figure(events), "tree": F.trickle_tree_figure(events),
            "timeseq": F.time_sequence_figure(events), "goodput": F.goodput_figure(events)}
    figs.update({f"06 {k}": f for k, f in benchmark.figures(benchmark.load_results()).items()})
    cache, dyn, par, comp = lab_inputs()
    figs.update({"08 cache": LF.cache_figure(cache), "08 skip": LF.skip_figure(dyn),
                 "08 timeline": LF.parallel_timeline_figure(par),
                 "09 bytes": LF.continuation_bytes_figure(comp),
                 "09 forms": LF.continuation_forms_figure(comp)})
    return figs


def test_every_legend_sits_above_the_plot_under_the_title() -> None:
    """Structure: a horizontal legend anchored on the plot area's top edge (plotly's default
    for a horizontal legend is below the plot, on the x-axis title) and a title pinned to the
    top of the figure, with the legend's height capped so it cannot grow into the title."""
    for name, fig in every_figure().items():
        lay = fig.layout
        assert lay.legend.orientation == "h" and lay.legend.yanchor == "bottom", name
        assert lay.legend.y >= 1 and lay.legend.maxheight, name
        assert lay.title.yref == "container" and lay.title.yanchor == "top", name
        assert lay.margin.t >= F.TOP_MARGIN_PX, name


CHROMIUM = os.environ.get("TRICKLES_CHROMIUM", "/usr/bin/chromium")
_PARTS = {  # what a legend must never cover, as plotly.js draws it
    "legend": ".legend > .bg",
    "title": ".g-gtitle",
    "axis title": ".infolayer g[class^='g-x'][class$='title'], "
                  ".infolayer g[class^='g-y'][class$='title']",
    "plot area": ".nsewdrag",
}
_BOXES_JS = """(parts) => { const out = {};
  for (const [k, sel] of Object.entries(parts)) {
    out[k] = [...document.querySelectorAll(sel)].map(e => e.getBoundingClientRect())
      .filter(r => r.width > 0 && r.height > 0).map(r => [r.left, r.top, r.right, r.bottom]);
  } return out; }"""


def _chromium() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        msg = "playwright is missing (make lab-venv)"
    else:
        if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
            return
        msg = f"chromium ({CHROMIUM}) is missing: make sysdeps"
    if os.environ.get("CI") == "true":
        pytest.fail(msg + " (CI=true: never skip)")
    pytest.skip(msg)


def _overlap(a: list[float], b: list[float]) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5


def test_no_legend_covers_a_title_or_the_plot_in_chromium() -> None:
    """Geometry, as drawn by plotly.js in a real browser, from a narrow dashboard panel to a
    wide notebook: the legend's box intersects no axis title, no figure title, no plot area."""
    _chromium()
    import plotly.io as pio
    from playwright.sync_api import sync_playwright
    from plotly.offline import get_plotlyjs

    figs = every_figure()
    bad: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_content(f"<html><head><script>{get_plotlyjs()}</script></head>"
                             "<body style='margin:0'><div id='g'></div></body></html>")
            for name, fig in figs.items():
                for width, height in ((400, 300), (700, 450), (1100, 450)):
                    spec = json.loads(pio.to_json(fig))
                    spec["layout"].update(width=width, height=height)
                    page.evaluate("(s) => Plotly.newPlot('g', s.data, s.layout)", spec)
                    boxes = page.evaluate(_BOXES_JS, _PARTS)
                    assert boxes["axis title"], f"{name}: no axis title drawn"
                    for legend in boxes["legend"]:
                        for part in ("title", "axis title", "plot area"):
                            if any(_overlap(legend, b) for b in boxes[part]):
                                bad.append(f"{name} at {width}x{height}: legend over {part}")
        finally:
            browser.close()
    assert not bad, bad
