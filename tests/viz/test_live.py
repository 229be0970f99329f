"""Live views without a browser: the drain task runs in a plain loop (`asyncio.run`).

What the page would hold is rebuilt from the messages a dashboard really sent (`Page` applies
them the way viz/stream.js does), so these tests check the wire protocol too: only new points
travel, and the page ends with exactly what the static builders draw from the event log.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("plotly", reason="plotly is a lab dependency: make lab-venv")
pytest.importorskip("ipywidgets", reason="ipywidgets is a lab dependency: make lab-venv")
pytest.importorskip("anywidget", reason="the live view is an anywidget: make lab-venv")

from trickles_kit.apps.sim import simulate_transfer  # noqa: E402
from trickles_kit.capture import decode_pcap  # noqa: E402
from trickles_kit.core.events import Event, EventLog  # noqa: E402
from trickles_kit.labs import controls as C  # noqa: E402
from trickles_kit.labs import session as session_mod  # noqa: E402
from trickles_kit.labs.session import LiveSession  # noqa: E402
from trickles_kit.viz import figures as F  # noqa: E402
from trickles_kit.viz import live as L  # noqa: E402
from trickles_kit.viz import replay as R  # noqa: E402
from trickles_kit.viz import stream as S  # noqa: E402

SECRET = bytes(range(32))


class Page:
    """A Python twin of stream.js's store: traces rebuilt from the messages, in order."""

    def __init__(self, dash: L.LiveDashboard) -> None:
        self.spec = {p["kind"]: p for p in dash.view.spec["panels"]}
        self.traces = {k: [{"x": [], "y": [], "text": None} for _ in p["traces"]]
                       for k, p in self.spec.items()}
        self.final: dict | None = None
        for content, buffers in dash.view.sent:
            self.apply(content, buffers)

    def apply(self, msg: dict, buffers: list[bytes]) -> None:
        if msg["op"] == "reset":
            for ts in self.traces.values():
                for t in ts:
                    t["x"], t["y"] = [], []
                    t["text"] = [] if t["text"] is not None else None
        elif msg["op"] == "data":
            for u in msg["updates"]:
                t = self.traces[u["p"]][u["i"]]
                xs = np.frombuffer(buffers[u["xb"]], dtype=np.float64).tolist()
                ys = np.frombuffer(buffers[u["yb"]], dtype=np.float64).tolist()
                t["x"] = t["x"][:u["from"]] + [None if math.isnan(v) else v for v in xs]
                t["y"] = t["y"][:u["from"]] + [None if math.isnan(v) else v for v in ys]
                if "text" in u:
                    t["text"] = (t["text"] or [])[:u["from"]] + u["text"]
        elif msg["op"] == "final":
            self.final = msg

    def shown(self, kind: str) -> list[tuple[str, dict]]:
        """(name, trace) of the traces the page shows (an empty one is hidden)."""
        return [(s["name"], t) for s, t in zip(self.spec[kind]["traces"], self.traces[kind],
                                               strict=True) if s["always"] or t["x"]]

    def digest_problems(self, digest: dict) -> list[str]:
        """stream.js's checkDigest, in Python."""
        out = []
        for kind, want in digest.items():
            for s, t in zip(self.spec[kind]["traces"], self.traces[kind], strict=True):
                w = want.get(s["name"])
                if w is None:
                    if t["x"]:
                        out.append(f"{kind}/{s['name']}: extra points")
                    continue
                fx = [v for v in t["x"] if v is not None]
                fy = [v for v in t["y"] if v is not None]
                have = [len(t["x"]), len(fx), sum(fx), len(fy), sum(fy)]
                if have[:2] != w[:2] or have[3] != w[3] or not (
                        math.isclose(have[2], w[2], rel_tol=1e-9, abs_tol=1e-9)
                        and math.isclose(have[4], w[4], rel_tol=1e-9, abs_tol=1e-9)):
                    out.append(f"{kind}/{s['name']}: have {have}, want {w}")
        return out


def _norm(v) -> list | None:
    """Trace values as a list; None and NaN are both a gap."""
    if v is None:
        return None
    return [None if x is None or (isinstance(x, float) and math.isnan(x)) else x for x in v]


def assert_same_as_static(dash: L.LiveDashboard, events: list) -> None:
    """The page holds exactly what the static builder draws from `events`, in its styles."""
    page = Page(dash)
    for kind in dash.kinds:
        static = L.static_figure(kind, events, dash.bin_s)
        shown = page.shown(kind)
        assert [n for n, _ in shown] == [t.name for t in static.data], kind
        styles = {s["name"]: s["style"] for s in page.spec[kind]["traces"]}
        for (name, tr), b in zip(shown, static.data, strict=True):
            assert tr["x"] == _norm(b.x), (kind, name, "x")
            assert tr["y"] == _norm(b.y), (kind, name, "y")
            if b.text is not None:
                assert tr["text"] == list(b.text), (kind, name, "text")
            jb = json.loads(b.to_json())
            for key in set(jb) | set(styles[name]):
                if key not in ("x", "y", "text", "visible", "uid"):
                    assert styles[name].get(key) == jb.get(key), (kind, name, key)
        layout = page.spec[kind]["layout"]
        for path in ("title", "xaxis", "yaxis", "legend"):
            want = json.loads(static.layout.to_json()).get(path)
            assert layout.get(path) == want, (kind, path)
        # and the page's own check against the builder's digest agrees
        assert page.digest_problems({kind: S.digest(static)}) == []


def _recording(*a, **kw) -> L.LiveDashboard:
    dash = L.LiveDashboard(*a, plotly_js="page", **kw)
    dash.view.record = True
    return dash


@pytest.fixture(scope="module")
def big_run():
    """A 10 MB simulated LiveSession drawn live: its thread feeds, the task drains at 10 Hz."""
    dash = _recording(max_hz=10)
    seen: list[Event] = []

    def on_event(e: Event) -> None:  # LiveSession's thread
        seen.append(e)
        dash.feed(e)

    async def main():
        s = LiveSession(10_000_000, 0.01, "sim", pcap=False)
        try:
            s.start(on_event)
            fut = asyncio.get_running_loop().run_in_executor(None, s.wait, 120.0)
            await dash.run_until(fut.done)
            return await fut
        finally:
            s.cleanup()

    t0 = time.monotonic()
    result = asyncio.run(main())
    return dash, seen, sum(e.kind == "split" for e in seen), result, time.monotonic() - t0


# ---------------------------------------------------------------------------- (a) nothing lost
def test_no_event_lost_10mb_live(big_run):
    dash, seen, splits, result, _ = big_run
    assert result.ok and result.transport == "sim"
    assert splits > 100
    assert dash.drawn["split"] == splits
    assert dash.received == len(seen) == result.events == len(dash.events)
    assert dash.drawn == Counter(e.kind for e in seen)
    assert dash.pending == 0
    assert len(dash.ticks) >= 2  # drawn while the transfer ran, not once at the end
    cwnd = Page(dash).shown("cwnd")[0]
    assert cwnd[0] == "cwnd" and len(cwnd[1]["x"]) == len(F.cwnd_figure(seen).data[0].x) > 5000
    assert_same_as_static(dash, seen)


def test_only_new_points_travel(big_run):
    """Each point crosses the websocket about once: the bytes sent grow with the points, not
    with points × updates (the FigureWidget resent whole arrays on every update).
    The 10 MB run's events are drawn in twelve batches, so the number of updates does not depend
    on how fast this machine ran the transfer (the live run's own tick count does)."""
    _, seen, *_ = big_run
    dash = _recording(max_hz=10)
    step = len(seen) // 12 + 1
    for i in range(0, len(seen), step):
        dash.feed_many(seen[i:i + step])
        dash.flush()
    page = Page(dash)
    points = sum(len(t["x"]) for ts in page.traces.values() for t in ts)
    data = [(c, b) for c, b in dash.view.sent if c["op"] == "data"]
    assert len(data) >= 10
    sent_values = sum(len(buf) for _, bufs in data for buf in bufs) // 8
    assert points * 2 <= sent_values <= points * 2 * 1.05 + 2000, (points, sent_values)
    resent = sum(u["from"] < len(page.traces[u["p"]][u["i"]]["x"]) for c, _ in data
                 for u in c["updates"])
    assert resent >= 1  # the goodput bar that is still filling is rewritten, not appended


def test_final_digest_catches_a_lost_point(big_run):
    dash, seen, *_ = big_run
    page = Page(dash)
    digest = {k: S.digest(L.static_figure(k, seen)) for k in dash.kinds}
    assert page.digest_problems(digest) == []
    page.traces["timeseq"][1]["x"].pop()  # one point lost on the way
    page.traces["timeseq"][1]["y"].pop()
    problems = page.digest_problems(digest)
    assert len(problems) == 1 and problems[0].startswith("timeseq/sent: continue")


# ---------------------------------------------------------------------------- (b) ≤ max_hz
def _gaps(dash: L.LiveDashboard) -> list[float]:
    ts = [t.at for t in dash.ticks]
    return [b - a for a, b in zip(ts, ts[1:], strict=False)]


def test_drain_rate_at_most_max_hz(big_run):
    dash, _, _, _, wall = big_run
    assert min(_gaps(dash)) >= 1 / dash.max_hz - 1e-9
    assert len(dash.ticks) <= dash.max_hz * wall + 1
    st = dash.stats()
    assert st["max_rate_hz"] <= dash.max_hz + 1e-6 and st["events"] == len(dash.events)


def test_drain_rate_with_a_steady_producer(big_run):
    events = big_run[1][:6000]
    dash = _recording(("cwnd", "timeseq"), max_hz=20)
    done = threading.Event()

    def produce():  # about 6,000 events a second for one second, from another thread
        for i in range(0, len(events), 60):
            for e in events[i:i + 60]:
                dash.feed(e)
            time.sleep(0.01)
        done.set()

    async def main():
        threading.Thread(target=produce, daemon=True).start()
        t0 = time.monotonic()
        await dash.run_until(done.is_set, timeout=30)
        return time.monotonic() - t0

    wall = asyncio.run(main())
    assert dash.drawn == Counter(e.kind for e in events)
    assert len(dash.ticks) >= 5
    assert min(_gaps(dash)) >= 1 / 20 - 1e-9
    assert len(dash.ticks) <= 20 * wall + 1
    assert_same_as_static(dash, events)


def test_stop_draws_what_is_queued_then_ends():
    dash = _recording(("goodput",), max_hz=50)
    evs = [Event("data", 0.01 * i, "client", detail={"bytes": 1000}) for i in range(50)]

    async def main():
        task = dash.start()
        dash.feed_many(evs)
        dash.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert dash.drawn["data"] == 50
    assert_same_as_static(dash, evs)
    with pytest.raises(RuntimeError, match="no running asyncio loop"):
        dash.start()


def test_out_of_order_events_redraw_the_tree_like_the_builder(big_run):
    evs = [e for e in big_run[1] if e.side == "server"][:3000]
    shuffled = evs[:1000] + evs[1500:2000] + evs[1000:1500] + evs[2000:]
    dash = _recording(("tree", "cwnd"))
    for i in range(0, len(shuffled), 250):  # as if drained in several ticks
        dash.draw(shuffled[i:i + 250])
    assert dash.panels["tree"].acc.rebuilds >= 1
    assert_same_as_static(dash, shuffled)


def test_feed_accepts_json_lines_dicts(big_run):
    evs = big_run[1][:500]
    dash = _recording(("timeseq",))
    dash.feed_many(json.loads(e.to_json()) for e in evs)
    assert dash.flush() == 500
    assert dash.drawn == Counter(e.kind for e in evs)
    assert_same_as_static(dash, evs)


def test_finish_sends_the_builders_digest_and_the_transfer_span(big_run):
    events = big_run[1]
    dash = _recording()
    dash.feed_many(events)
    figs = dash.finish()
    final = dash.view.sent[-1][0]
    assert final["op"] == "final" and final["events"] == len(events)
    assert final["digest"] == {k: S.digest(f) for k, f in figs.items()}
    # the page is checked against what the static builders draw from the event log
    assert final["digest"] == {k: S.digest(L.static_figure(k, events)) for k in dash.kinds}
    packets = [e.t for e in events if e.kind in ("initial", "continue", "split", "retransmit",
                                                 "bootstrap", "request")]
    assert (final["t_first"], final["t_last"]) == (min(packets), max(packets))
    assert Page(dash).digest_problems(final["digest"]) == []


def test_static_bundle_and_page_figure(big_run):
    events = big_run[1][:3000]
    dash = _recording(("cwnd",))
    dash.draw(events)
    fig = dash.page_figure("cwnd")
    static = L.static_figure("cwnd", events)
    assert [t.name for t in fig.data] == [t.name for t in static.data]
    assert list(fig.data[0].y) == list(static.data[0].y)
    bundle = S.static_bundle(static, dash.view.uid, "cwnd")
    page = bundle["text/html"]
    assert f'data-model="{dash.view.uid}"' in page  # hidden while the live view is shown
    assert "cdn.plot.ly" in page  # nbconvert's copy loads plotly.js itself
    start = page.index("var fig = ") + len("var fig = ")
    fig_json = json.loads(page[start:page.index(";\n", start)].replace("<\\/", "</"))
    assert [t["name"] for t in fig_json["data"]] == [t.name for t in static.data]
    assert "</script>" not in page[start:page.index(";\n", start)]


def test_plotly_js_mode(monkeypatch):
    monkeypatch.setenv("TRICKLES_PLOTLY_JS", "send")
    assert S.plotly_js_mode() == "send"
    monkeypatch.setenv("TRICKLES_PLOTLY_JS", "page")
    assert S.plotly_js_mode() == "page"
    with pytest.raises(ValueError, match="plotly_js"):
        L.LiveDashboard(plotly_js="cdn")
    monkeypatch.setattr(S.PlotlyRuntime, "_instance", None)
    L.LiveDashboard(("cwnd",), plotly_js="send")
    rt = S.PlotlyRuntime._instance
    assert rt is not None and "window.Plotly = Plotly" in rt._esm  # sent once per kernel
    L.LiveDashboard(("cwnd",), plotly_js="send")
    assert S.PlotlyRuntime._instance is rt


# ---------------------------------------------------------------------------- (c) replay
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """400 kB with 5 % loss both ways: recoveries, terminations, a timeout; pcap + secret."""
    pcap = tmp_path_factory.mktemp("live") / "server.pcap"
    log = EventLog()
    r = simulate_transfer(400_000, 0.05, 3, on_event=log, secret=SECRET, pcap=str(pcap))
    assert r.ok and r.recoveries and r.terminations
    return log.events, decode_pcap(pcap, secret=SECRET)


def test_replay_slider_shows_exactly_the_events_up_to_t(big_run):
    events = big_run[1]
    rd = R.ReplayDashboard(events)
    rd.dashboard.view.record = True
    ordered = sorted(events, key=lambda e: e.t)
    t_end = ordered[-1].t
    for t in (t_end / 2, t_end / 7, ordered[1234].t, t_end / 3 * 2):  # forwards and back
        rd.slider.value = t  # what the student's drag does
        upto = [e for e in ordered if e.t <= t]
        assert rd.dashboard.drawn == Counter(e.kind for e in upto), t
        assert len(rd.dashboard.events) == len(upto)
    page_events = [e for e in ordered if e.t <= rd.time]
    # the page was recorded from the first seek on: replay the earlier state through a reset
    assert any(c["op"] == "reset" for c, _ in rd.dashboard.view.sent)
    assert_same_as_static(rd.dashboard, page_events)


def test_replay_of_a_decoded_capture_and_play(small_run):
    _, cap = small_run
    rd = R.ReplayDashboard(cap, max_hz=50)  # a Capture: its events
    rd.dashboard.view.record = True
    rd.seek(rd.slider.min - 1)
    assert rd.slider.min == min(e.t for e in cap.events)
    span = rd.slider.max - rd.slider.min
    asyncio.run(rd.play(speed=span * 2))  # about 0.5 s of play
    assert rd.time == rd.slider.max
    server = Counter(e.kind for e in cap.events)
    drawn = rd.dashboard.drawn
    assert all(drawn[k] == n for k, n in server.items())
    assert len(rd.dashboard.ticks) >= 3
    assert rd.dashboard.view.sent[-1][0]["op"] == "final"  # the end: a static copy
    assert_same_as_static(rd.dashboard, rd.events)


def test_replay_goodput_from_a_capture_is_not_empty(small_run):
    """05's goodput panel was always empty: a capture has no client `data` events."""
    _, cap = small_run
    rd = R.ReplayDashboard(cap)
    data = [e for e in rd.events if e.kind == "data"]
    assert data and all(e.side == "client" for e in data)
    # every byte of the response counted once, retransmissions included (new packet numbers)
    body = max(r.data_start + r.data_len for r in cap.packets
               if r.direction == "response" and r.data_len)
    assert sum(e.detail["bytes"] for e in data) == body
    assert len(L.static_figure("goodput", rd.events).data[0].x) > 3


# ---------------------------------------------------------------------------- (d) step-through
def test_step_through_moves_over_the_requests(small_run):
    events, _ = small_run
    st = L.StepThrough(events, secret=SECRET)
    requests = [e for e in events if e.kind == "request"]
    assert len(st.steps) == len(requests) + 1  # + the SYN, seen by the server only
    assert st.index == 0 and st.current.verdict == "handshake"
    assert st.prev_button.disabled
    st.next()
    s1 = st.current
    assert st.index == 1 and s1.request is requests[0]
    assert s1.verdict == "handshake" and [k for _, k in s1.emitted] == ["initial"] * 3
    assert "handshake" in st.summary.value and "1 initial, 2 initial, 3 initial" in \
        st.summary.value
    st.prev()
    assert st.index == 0
    st.go(len(st.steps) + 5)
    assert st.index == len(st.steps) - 1 and st.next_button.disabled
    # a request that starts a recovery: what the widget shows for it
    i = next(s.index for s in st.steps if "recovery_start" in {e.kind for e in s.server})
    st.slider.value = i
    cur = st.current
    assert cur.verdict == "recovery" and "retransmit" in {k for _, k in cur.emitted}
    assert "recovery" in st.summary.value and "retransmit" in st.summary.value
    assert st.inspector_rows[0][:2] == ("seq", cur.ack)
    assert {v for *_, v in st.nonce_table} == {"ok"}  # SACK summaries checked
    assert "<td" in st.nonces.value and "0x" in st.nonces.value
    lost = [s for s in st.steps if s.verdict == "unanswered"]
    assert lost and all(s.request is not None and not s.server for s in lost)


def test_step_through_shows_the_right_plan(small_run):
    events, cap = small_run
    by_events = L.build_steps(events)
    by_rows = L.build_steps(events, cap.packets)  # re-planned from captured continuations
    requests = [e for e in events if e.kind == "request"]
    answered = [s for s in by_events if s.request is not None and s.verdict != "unanswered"]
    assert len(by_rows) == len(answered) + 1  # what reached the server, + the SYN
    same = {id(s.server[0]): s for s in by_events if s.server}
    checked = Counter()
    for s in by_rows:
        if not s.server:
            continue
        e = same[id(s.server[0])]
        assert (e.verdict, e.emitted, e.cwnd) == (s.verdict, s.emitted, s.cwnd), s.index
        assert s.plan is None or [(x.pkt, x.kind) for x in s.plan.slots] == s.emitted
        checked[s.verdict] += 1
    assert checked["normal"] and checked["recovery"] and checked["terminate"]
    assert sum(checked.values()) == len(requests) - sum(
        s.verdict == "unanswered" for s in by_events)
    # with packet rows the inspector shows the whole continuation and the nonce verdicts
    st = L.StepThrough(events, cap.packets)
    i = next(s.index for s in st.steps if s.row.get("sacks"))
    st.go(i)
    names = [r[0] for r in st.inspector_rows]
    values = dict((r[0], r[1]) for r in st.inspector_rows)
    assert set(F.CONT_FIELDS) <= set(names)  # every field, none scrolled away
    assert values["mac"] == "ok" and values["nonce"] == "ok"
    for f in F.CONT_FIELDS:
        assert f"<td style=\"border:1px solid #ccc;padding:2px 8px;text-align:left;" \
               f"background:white\">{f}</td>" in st.inspector.value
    assert {v for *_, v in st.nonce_table} == {"ok"}
    assert "plan (core.plan.plan_request" in st.summary.value


def test_step_through_fills_every_nonce_column_on_first_display(small_run):
    """The block column was empty until Next; with the secret every column has a value."""
    events, cap = small_run
    first = next(i for i, s in enumerate(L.build_steps(events, cap.packets))
                 if s.row.get("sacks"))
    st = L.StepThrough(events, cap.packets, secret=SECRET)
    st.go(first)
    assert st.nonce_table and all(all(cell for cell in row) for row in st.nonce_table)
    assert "no secret to check" not in st.nonce_note.value
    bundle = st._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert st.nonce_table[0][0] in data["text/html"]  # nbconvert's copy of the current step


# ---------------------------------------------------------------------------- (e) controls
def test_lab_controls_banner_without_raw(monkeypatch):
    monkeypatch.setattr(session_mod, "best_transport", lambda: "udp")
    c = C.LabControls(size=150_000, transport="auto")
    assert C.NO_RAW_BANNER in c.banner.value
    assert c.effective_transport() == "udp"
    children = c.widget.children
    assert c.banner in children and c.dashboard.widget in children
    c.transport.value = "raw"
    assert asyncio.run(c.run()) is None
    assert "not permitted" in c.result_html.value
    c.transport.value = "sim"
    c.loss.value = 0.02
    res = asyncio.run(c.run())
    assert res is not None and res.ok and res.transport == "sim"
    assert len(c.dashboard.events) == res.events == c.dashboard.received
    assert "✔" in c.result_html.value and not c.start_button.disabled
    assert "transport <b>sim</b>" in c.dashboard.status
    assert set(c.dashboard.final_figures) == set(L.FIGURE_KINDS)
    c.session.cleanup()


def test_lab_controls_no_banner_with_raw(monkeypatch):
    monkeypatch.setattr(session_mod, "best_transport", lambda: "raw")
    c = C.LabControls()
    assert c.banner.value == "" and c.effective_transport() == "raw"


def test_replay_picks_about_25_goodput_bars(small_run):
    assert [R.nice_bin(s) for s in (0.23, 1.0, 3.7, 60.0, 0.0)] == [0.01, 0.05, 0.2, 5.0, 0.1]
    _, cap = small_run
    rd = R.ReplayDashboard(cap)
    span = rd.slider.max - rd.slider.min
    assert 10 <= span / rd.dashboard.bin_s <= 50


def test_saved_copies_are_thinned_past_5000_points(big_run):
    dash = _recording(("cwnd", "tree", "timeseq"))
    dash.draw(big_run[1])
    for kind in dash.kinds:
        full = dash.final_figure(kind)
        saved = S.thin(full)
        for a, b in zip(full["data"], saved["data"], strict=True):
            n = len(a["x"])
            if n <= 5000:
                assert b is a  # untouched
                continue
            assert len(b["x"]) <= 5100 and b["name"].endswith(f"of {n:,} points)")
            assert b["x"][-1] == a["x"][-1]  # the last point is always there
            if a.get("mode") == "lines" and a["x"][2] is not None:  # a line keeps its extremes
                ys = [v for v in a["y"] if v is not None]
                assert max(b["y"]) == max(ys) and min(b["y"]) == min(ys)
