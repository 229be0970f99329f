"""Live dashboards without a browser: the drain task runs in a plain loop (`asyncio.run`)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import Counter

import pytest

pytest.importorskip("plotly", reason="plotly is a lab dependency: make lab-venv")
pytest.importorskip("ipywidgets", reason="ipywidgets is a lab dependency: make lab-venv")
pytest.importorskip("anywidget", reason="FigureWidget needs anywidget: make lab-venv")

from trickles_kit.capture import decode_pcap  # noqa: E402
from trickles_kit.core.events import Event, EventLog  # noqa: E402
from trickles_kit.labs import session as session_mod  # noqa: E402
from trickles_kit.labs.session import LiveSession  # noqa: E402
from trickles_kit.net.sim import simulate_transfer  # noqa: E402
from trickles_kit.viz import figures as F  # noqa: E402
from trickles_kit.viz import live as L  # noqa: E402

SECRET = bytes(range(32))


def _norm(v) -> list | None:
    """Trace values as a list; None and NaN are both a gap."""
    if v is None:
        return None
    return [None if x is None or (isinstance(x, float) and math.isnan(x)) else x for x in v]


def assert_same_as_static(dash: L.LiveDashboard, events: list) -> None:
    """Every live figure shows exactly what the static builder draws from `events`."""
    for kind, panel in dash.panels.items():
        static = L.static_figure(kind, events, dash.bin_s)
        live = [t for t in panel.fig.data if t.visible is not False]
        assert [t.name for t in live] == [t.name for t in static.data], kind
        for a, b in zip(live, static.data, strict=True):
            for attr in ("x", "y", "text"):
                assert _norm(getattr(a, attr)) == _norm(getattr(b, attr)), (kind, a.name, attr)
            ja, jb = a.to_plotly_json(), b.to_plotly_json()
            for key in set(ja) | set(jb):
                if key not in ("x", "y", "text", "visible", "uid"):
                    assert ja.get(key) == jb.get(key), (kind, a.name, key)
        for path in ("title.text", "xaxis.title.text", "yaxis.title.text", "legend.orientation"):
            assert panel.fig.layout[path] == static.layout[path], (kind, path)


@pytest.fixture(scope="module")
def big_run():
    """A 10 MB simulated LiveSession drawn live: its thread feeds, the task drains at 10 Hz."""
    dash = L.LiveDashboard(max_hz=10)
    seen: list[Event] = []
    splits = Counter()

    def on_event(e: Event) -> None:  # LiveSession's thread
        seen.append(e)
        if e.kind == "split":
            splits["split"] += 1
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
    return dash, seen, splits["split"], result, time.monotonic() - t0


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
    cwnd = dash.figures["cwnd"].data[0]
    assert cwnd.name == "cwnd"
    assert len(cwnd.x) == len(F.cwnd_figure(seen).data[0].x) > 5000
    assert_same_as_static(dash, seen)


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
    dash = L.LiveDashboard(("cwnd", "timeseq"), max_hz=20)
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
    dash = L.LiveDashboard(("goodput",), max_hz=50)
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
    dash = L.LiveDashboard(("tree", "cwnd"))
    for i in range(0, len(shuffled), 250):  # as if drained in several ticks
        dash.draw(shuffled[i:i + 250])
    assert dash.panels["tree"].acc.rebuilds >= 1
    assert_same_as_static(dash, shuffled)


def test_feed_accepts_json_lines_dicts(big_run):
    evs = big_run[1][:500]
    dash = L.LiveDashboard(("timeseq",))
    dash.feed_many(json.loads(e.to_json()) for e in evs)
    assert dash.flush() == 500
    assert dash.drawn == Counter(e.kind for e in evs)
    assert_same_as_static(dash, evs)


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
    rd = L.ReplayDashboard(events)
    ordered = sorted(events, key=lambda e: e.t)
    t_end = ordered[-1].t
    for t in (t_end / 2, t_end / 7, ordered[1234].t, t_end / 3 * 2):  # forwards and back
        rd.slider.value = t  # what the student's drag does
        upto = [e for e in ordered if e.t <= t]
        assert rd.dashboard.drawn == Counter(e.kind for e in upto), t
        assert len(rd.dashboard.events) == len(upto)
    assert_same_as_static(rd.dashboard, [e for e in ordered if e.t <= rd.time])


def test_replay_of_a_decoded_capture_and_play(small_run):
    _, cap = small_run
    rd = L.ReplayDashboard(cap, max_hz=50)  # a Capture: its events
    assert rd.slider.min == min(e.t for e in cap.events)
    span = rd.slider.max - rd.slider.min
    asyncio.run(rd.play(speed=span * 2))  # about 0.5 s of play
    assert rd.time == rd.slider.max
    assert rd.dashboard.drawn == Counter(e.kind for e in cap.events)
    assert len(rd.dashboard.ticks) >= 3
    assert_same_as_static(rd.dashboard, sorted(cap.events, key=lambda e: e.t))
    rd.seek(rd.slider.min - 1)  # clamped to the first instant
    assert len(rd.dashboard.events) == sum(e.t <= rd.slider.min for e in cap.events)


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
    assert st.inspector.data[0].cells.values[0][0] == "seq"
    assert st.inspector.data[0].cells.values[1][0] == cur.ack
    assert set(st.nonces.data[0].cells.values[3]) == {"ok"}  # SACK summaries checked
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
    names, values = st.inspector.data[0].cells.values
    assert "start_cwnd" in names and "key_epoch" in names
    assert values[names.index("mac")] == "ok" and values[names.index("nonce")] == "ok"
    assert set(st.nonces.data[0].cells.values[3]) == {"ok"}
    assert "plan (core.plan.plan_request" in st.summary.value


# ---------------------------------------------------------------------------- (e) controls
def test_lab_controls_banner_without_raw(monkeypatch):
    monkeypatch.setattr(session_mod, "best_transport", lambda: "udp")
    c = L.LabControls(size=150_000, transport="auto")
    assert L.NO_RAW_BANNER in c.banner.value
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
    assert "transport <b>sim</b>" in c.dashboard.status.value
    c.session.cleanup()


def test_lab_controls_no_banner_with_raw(monkeypatch):
    monkeypatch.setattr(session_mod, "best_transport", lambda: "raw")
    c = L.LabControls()
    assert c.banner.value == "" and c.effective_transport() == "raw"
