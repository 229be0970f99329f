"""Live dashboards: plotly FigureWidgets fed with protocol events, for notebooks.

Everything here draws with the pure builders of `viz.figures`, so a live run, a replayed capture
and a static report look the same.

* `LiveDashboard`: `feed(event)` from any thread (LiveSession's reader thread, a sniffer...); one
  asyncio task on the notebook's loop drains the queue at most `max_hz` times a second and
  updates every FigureWidget inside one `batch_update`. Nothing is lost: the last drain takes
  every event fed before the producer was declared finished.
* `LabControls`: loss / size / transport / Start, running a `labs.session.LiveSession` into a
  dashboard, with a banner when raw sockets are not permitted.
* `StepThrough`: pause on each request and show what the server made of it (plan verdict,
  packets emitted, cwnd, the continuation it carried and its SACK nonce checks).
* `ReplayDashboard`: the dashboard over a finished list of events (a decoded capture) with a time
  slider and a Play button.

Incremental drawing. Redrawing every figure from the whole event list costs about 1 s for a
10 MB transfer (~27,000 events), far too slow for 10 Hz. Each figure therefore keeps an
accumulator that appends the new events to its traces exactly as the builder would compute them
from the full list (same points, same order); `tests/test_live.py` checks the live traces equal
the static builder's. The trace styles (names, colours, markers, hover text) are taken from the
builders themselves, never copied.

Threads: only `feed` may be called from another thread. Everything else (widgets, figures,
`flush`, `draw`) belongs to the thread running the asyncio loop — the kernel's main thread.
"""

from __future__ import annotations

import asyncio
import bisect
import html
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from trickles_kit.core import plan as pl
from trickles_kit.core.events import Event
from trickles_kit.labs import session as _session
from trickles_kit.viz import figures as F

__all__ = [
    "FIGURE_KINDS",
    "LabControls",
    "LiveDashboard",
    "ReplayDashboard",
    "Step",
    "StepThrough",
    "build_steps",
    "static_figure",
]

FIGURE_KINDS = ("cwnd", "tree", "timeseq", "goodput")
NO_RAW_BANNER = "running without root: using UDP/simulated transport"
_EVENT_FIELDS = frozenset(f.name for f in fields(Event))


def _as_event(e: Event | Mapping[str, Any]) -> Event:
    if isinstance(e, Event):
        return e
    return Event(**{k: v for k, v in e.items() if k in _EVENT_FIELDS})


def static_figure(kind: str, events: Iterable[Event | Mapping[str, Any]],
                  bin_s: float = 0.1) -> go.Figure:
    """The static figure a dashboard panel mirrors: cwnd | tree | timeseq | goodput."""
    if kind == "cwnd":
        return F.cwnd_figure(events)
    if kind == "tree":
        return F.trickle_tree_figure(events)
    if kind == "timeseq":
        return F.time_sequence_figure(events)
    if kind == "goodput":
        return F.goodput_figure(events, bin_s=bin_s)
    raise ValueError(f"unknown figure kind {kind!r}; choose from {FIGURE_KINDS}")


def _prototype_events() -> list[Event]:
    """A tiny run that makes every builder draw every trace it can (for styles only)."""
    evs = [Event(k, 0.0, "server", 1, i + 1, 0 if i == 0 else i, 2, 10)
           for i, k in enumerate(F.SLOT_KINDS)]
    evs += [Event("terminate", 1.0, "server", 1, -1, 1, 2, 10),
            Event("request", 0.0, "client", 1, -1, 1), Event("timeout", 0.0, "client", 1),
            Event("data", 0.0, "client", 1, detail={"bytes": 1})]
    return evs


# ------------------------------------------------------------------------------ accumulators
class _Acc:
    """Traces of one figure, grown event by event exactly as the builder computes them."""

    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.dirty: set[str] = set()
        self.reset()

    def reset(self) -> None:
        self.x: dict[str, list] = {n: [] for n in self.names}
        self.y: dict[str, list] = {n: [] for n in self.names}
        self.dirty = set(self.names)

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        raise NotImplementedError

    def data(self, name: str) -> dict[str, Any]:
        return {"x": np.asarray(self.x[name], dtype=float),
                "y": np.asarray(self.y[name], dtype=float)}

    def size(self, name: str) -> int:
        return len(self.x[name])


class _CwndAcc(_Acc):
    _WIN = frozenset(("initial", "continue", "split", "bootstrap"))
    _MARK = ("bootstrap", "retransmit", "terminate")
    names = ("cwnd", "ssthresh", *_MARK)

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        x, y, d, win, mark = self.x, self.y, self.dirty, self._WIN, self._MARK
        for e in events:
            if e.side != "server":
                continue
            k = e.kind
            if k in win:
                x["cwnd"].append(e.t)
                y["cwnd"].append(e.cwnd)
                d.add("cwnd")
                if 0 < e.ssthresh < 4096:
                    x["ssthresh"].append(e.t)
                    y["ssthresh"].append(e.ssthresh)
                    d.add("ssthresh")
            if k in mark:
                x[k].append(e.t)
                y[k].append(e.cwnd)
                d.add(k)


class _TreeAcc(_Acc):
    """`figures.trickle_lanes` + `trickle_tree_figure`, one row at a time.

    The builder sorts rows by (t, pkt); events normally arrive in that order. One that arrives
    earlier than the last row drawn makes the accumulator start again from the sorted list.
    """

    _KINDS = frozenset((*F.SLOT_KINDS, "terminate"))
    _SEG = "request → packet"
    names = (_SEG, *F.SLOT_KINDS, "terminate")

    def reset(self) -> None:
        super().reset()
        self.text: dict[str, list] = {n: [] for n in self.names}
        self.lane_of: dict[int, int] = {}
        self.lanes = 0
        self.last_t: dict[int, float] = {}
        self.last_key: tuple[float, int] | None = None
        self.rebuilds = 0

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        kinds = self._KINDS
        for i, e in enumerate(events):
            if e.kind not in kinds or e.side != "server":
                continue
            key = (e.t, e.pkt)
            if self.last_key is not None and key < self.last_key:
                # out of order: start again from everything so far, as the builder would sort it
                rebuilds = self.rebuilds + 1
                self.reset()
                self.rebuilds = rebuilds
                n_before = len(everything) - len(events) + i
                prior = [r for r in everything[:n_before]
                         if r.kind in kinds and r.side == "server"]
                rest = [r for r in events[i:] if r.kind in kinds and r.side == "server"]
                for r in sorted(prior + rest, key=lambda r: (r.t, r.pkt)):
                    self._row(r)
                return
            self._row(e)

    def _row(self, e: Event) -> None:
        self.last_key = (e.t, e.pkt)
        kind = e.kind
        parent = self.lane_of.get(e.ack)
        if kind == "terminate":
            if parent is None:
                return
            lane = parent
        elif kind == "continue" and parent is not None:
            lane = parent
        elif kind == "retransmit":
            lane = parent if parent is not None else -1
        else:
            lane = self.lanes
            self.lanes += 1
        if kind not in ("retransmit", "terminate"):
            self.lane_of[e.pkt] = lane
        # the figure: a segment from the parent's last point, then the marker
        if parent is not None and parent in self.last_t:
            sx, sy = self.x[self._SEG], self.y[self._SEG]
            sx += (self.last_t[parent], e.t, None)
            sy += (parent, lane, None)
            self.dirty.add(self._SEG)
        if kind != "terminate":
            self.last_t[lane] = e.t
        self.x[kind].append(e.t)
        self.y[kind].append(lane)
        self.text[kind].append(f"pkt {e.pkt} ← ack {e.ack}<br>cwnd {e.cwnd} "
                               f"{F.STATE_NAMES.get(e.state, e.state)}")
        self.dirty.add(kind)

    def data(self, name: str) -> dict[str, Any]:
        d = super().data(name)  # None (a gap between segments) becomes NaN: a gap too
        if name != self._SEG:
            d["text"] = np.asarray(self.text[name], dtype=object)
        return d


class _TimeSeqAcc(_Acc):
    _SENT = {k: f"sent: {k}" for k in F.SLOT_KINDS}
    _ACK = "acknowledged (request)"
    names = (*_SENT.values(), _ACK, "timeout")

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        x, y, d, sent = self.x, self.y, self.dirty, self._SENT
        for e in events:
            k = e.kind
            name = sent.get(k)
            if name is not None:
                if e.side != "server":
                    continue
                x[name].append(e.t)
                y[name].append(e.pkt)
            elif k == "request" and e.side == "client":
                name = self._ACK
                x[name].append(e.t)
                y[name].append(e.ack)
            elif k == "timeout":
                name = "timeout"
                x[name].append(e.t)
                y[name].append(e.pkt)
            else:
                continue
            d.add(name)


class _GoodputAcc(_Acc):
    names = ("goodput",)

    def __init__(self, bin_s: float = 0.1) -> None:
        if bin_s <= 0:
            raise ValueError("bin_s must be positive")
        self.bin_s = bin_s
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.bins: dict[int, int] = {}

    def add(self, events: Sequence[Event], everything: Sequence[Event]) -> None:
        bins, bin_s = self.bins, self.bin_s
        for e in events:
            if e.kind == "data":
                b = int(e.t // bin_s)
                bins[b] = bins.get(b, 0) + int(e.detail.get("bytes", 0))
                self.dirty.add("goodput")

    def data(self, name: str) -> dict[str, Any]:
        xs = sorted(self.bins)
        bin_s, bins = self.bin_s, self.bins
        return {"x": np.asarray([b * bin_s for b in xs], dtype=float),
                "y": np.asarray([bins[b] * 8 / bin_s / 1e6 for b in xs], dtype=float)}

    def size(self, name: str) -> int:
        return len(self.bins)


def _make_acc(kind: str, bin_s: float) -> _Acc:
    if kind == "cwnd":
        return _CwndAcc()
    if kind == "tree":
        return _TreeAcc()
    if kind == "timeseq":
        return _TimeSeqAcc()
    if kind == "goodput":
        return _GoodputAcc(bin_s)
    raise ValueError(f"unknown figure kind {kind!r}; choose from {FIGURE_KINDS}")


# ------------------------------------------------------------------------------ dashboard
@dataclass
class Tick:
    """One drain of the queue: when (monotonic s), how many events, and what it cost."""

    at: float
    events: int
    drain_s: float  # queue pops + accumulators
    update_s: float  # the batch_update of every figure


@dataclass
class _Panel:
    kind: str
    fig: go.FigureWidget
    acc: _Acc
    index: dict[str, int] = field(default_factory=dict)
    always: frozenset[str] = frozenset()


class LiveDashboard:
    """FigureWidgets (cwnd, trickle tree, time-sequence, goodput) that follow an event stream.

    ``dash.feed(event)`` from any thread; ``dash.start()`` on the running loop (a notebook cell)
    or ``await dash.run_until(predicate)``. ``dash.widget`` is the ipywidgets layout (displaying
    ``dash`` itself works too), ``dash.drawn`` counts the events drawn per kind, ``dash.events``
    lists them in arrival order and ``dash.ticks`` records every update.
    """

    def __init__(self, kinds: Sequence[str] = FIGURE_KINDS, max_hz: float = 10.0, *,
                 transport: str = "", banner: str = "", bin_s: float = 0.1,
                 height: int | None = None) -> None:
        if not 0 < max_hz <= 60:
            raise ValueError("max_hz must be in (0, 60]")
        kinds = tuple(kinds)
        if not kinds or len(set(kinds)) != len(kinds):
            raise ValueError("kinds must be a non-empty list of distinct figure kinds")
        self.kinds = kinds
        self.max_hz = float(max_hz)
        self.bin_s = bin_s
        self.transport = transport
        self.banner = banner
        self.drawn: Counter[str] = Counter()
        self.events: list[Event] = []
        self.ticks: list[Tick] = []
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._received = 0
        self._stop = False
        self._until: Callable[[], bool] | None = None
        self._task: asyncio.Task | None = None
        self._last_tick = -math.inf
        proto = _prototype_events()
        self.panels: dict[str, _Panel] = {}
        for kind in kinds:
            acc = _make_acc(kind, bin_s)
            fig = go.FigureWidget(static_figure(kind, proto, bin_s))
            always = frozenset(t.name for t in static_figure(kind, [], bin_s).data)
            panel = _Panel(kind, fig, acc, {t.name: i for i, t in enumerate(fig.data)}, always)
            missing = set(panel.index) ^ set(acc.names)
            if missing:  # a builder grew or lost a trace: the live view must follow it
                raise RuntimeError(f"live {kind} figure out of step with the builder: {missing}")
            with fig.batch_update():
                fig.layout.uirevision = kind  # keep the student's zoom across updates
                if height:
                    fig.layout.height = height
            self.panels[kind] = panel
        self._clear_figures()
        self.status = W.HTML()
        self.banner_html = W.HTML()
        self.widget = W.VBox([self.banner_html, self.status,
                              *[p.fig for p in self.panels.values()]])
        self._update_status()

    # ------------------------------------------------------------------ access
    @property
    def figures(self) -> dict[str, go.FigureWidget]:
        return {k: p.fig for k, p in self.panels.items()}

    @property
    def received(self) -> int:
        """Events fed so far (drawn or still queued)."""
        return self._received

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def stats(self) -> dict[str, float]:
        """Update count, mean / max drain and update times (ms), highest rate observed (Hz)."""
        ts = self.ticks
        if not ts:
            return {"updates": 0, "events": 0}
        gaps = [b.at - a.at for a, b in zip(ts, ts[1:], strict=False)]
        return {
            "updates": len(ts),
            "events": sum(t.events for t in ts),
            "drain_ms_mean": 1e3 * sum(t.drain_s for t in ts) / len(ts),
            "drain_ms_max": 1e3 * max(t.drain_s for t in ts),
            "update_ms_mean": 1e3 * sum(t.update_s for t in ts) / len(ts),
            "update_ms_max": 1e3 * max(t.update_s for t in ts),
            "min_gap_s": min(gaps) if gaps else math.inf,
            "max_rate_hz": 1 / min(gaps) if gaps and min(gaps) > 0 else 0.0,
        }

    # ------------------------------------------------------------------ producer side
    def feed(self, event: Event | Mapping[str, Any]) -> None:
        """Queue one event; safe from any thread (e.g. as LiveSession's `on_event`)."""
        with self._lock:
            self._received += 1
        self._queue.put(event)  # type: ignore[arg-type]

    __call__ = feed  # a dashboard is an EventSink

    def feed_many(self, events: Iterable[Event | Mapping[str, Any]]) -> None:
        for e in events:
            self.feed(e)

    # ------------------------------------------------------------------ the loop side
    def set_status(self, transport: str | None = None, banner: str | None = None) -> None:
        if transport is not None:
            self.transport = transport
        if banner is not None:
            self.banner = banner
        self._update_status()

    def _update_status(self) -> None:
        last = self.ticks[-1] if self.ticks else None
        parts = [f"events received <b>{self.received}</b>",
                 f"drawn <b>{len(self.events)}</b>"]
        if self.transport:
            parts.append(f"transport <b>{html.escape(self.transport)}</b>")
        if last is not None:
            parts.append(f"updates {len(self.ticks)} "
                         f"(last {1e3 * (last.drain_s + last.update_s):.0f} ms)")
        for kind in ("split", "retransmit", "terminate", "timeout"):
            if self.drawn[kind]:
                parts.append(f"{kind} {self.drawn[kind]}")
        text = " · ".join(parts)
        if self.status.value != text:
            self.status.value = text
        banner = (f'<div style="background:#fff3b0;padding:4px 8px;border-radius:4px">'
                  f"{html.escape(self.banner)}</div>" if self.banner else "")
        if self.banner_html.value != banner:
            self.banner_html.value = banner

    def _clear_figures(self) -> None:
        empty = np.zeros(0)
        for p in self.panels.values():
            with p.fig.batch_update():
                for tr in p.fig.data:
                    tr.x, tr.y = empty, empty
                    if tr.text is not None:
                        tr.text = np.zeros(0, dtype=object)
                    tr.visible = None if tr.name in p.always else False

    def reset(self) -> None:
        """Forget every event (queued ones too) and empty the figures."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            self._received = 0
        self.events = []
        self.drawn = Counter()
        self.ticks = []
        for p in self.panels.values():
            p.acc.reset()
        self._clear_figures()
        self._update_status()

    def _drain(self) -> list[Event]:
        out = []
        get = self._queue.get_nowait
        for _ in range(self._queue.qsize()):
            try:
                out.append(get())
            except queue.Empty:  # pragma: no cover - single consumer
                break
        return out

    def _apply(self, new: list) -> list[Event]:
        new = [_as_event(e) for e in new]
        self.events.extend(new)
        for p in self.panels.values():
            p.acc.add(new, self.events)
        self.drawn.update(e.kind for e in new)
        return new

    def _render(self) -> None:
        for p in self.panels.values():
            acc = p.acc
            if not acc.dirty:
                continue
            with p.fig.batch_update():
                for name in acc.dirty:
                    tr = p.fig.data[p.index[name]]
                    d = acc.data(name)
                    tr.x, tr.y = d["x"], d["y"]
                    if "text" in d:
                        tr.text = d["text"]
                    tr.visible = None if (name in p.always or acc.size(name)) else False
            acc.dirty.clear()

    def _tick(self, new: list | None = None) -> int:
        t0 = time.monotonic()
        new = self._drain() if new is None else new
        self._apply(new)
        t1 = time.monotonic()
        self._render()
        t2 = time.monotonic()
        self.ticks.append(Tick(t0, len(new), t1 - t0, t2 - t1))
        self._last_tick = t0
        self._update_status()
        return len(new)

    def flush(self) -> int:
        """Draw everything queued now (no pacing); for scripts without a running loop."""
        return self._tick() if not self._queue.empty() else 0

    def draw(self, events: Iterable[Event | Mapping[str, Any]], reset: bool = False) -> None:
        """Draw these events at once (replays); `reset` first forgets everything drawn."""
        if reset:
            self.reset()
        evs = list(events)
        with self._lock:
            self._received += len(evs)
        self._tick(evs)

    def _should_stop(self) -> bool:
        return self._stop or (self._until is not None and bool(self._until()))

    async def _loop(self) -> None:
        interval = 1.0 / self.max_hz
        while True:
            stop = self._should_stop()  # first: every event fed before this is in the queue
            wait = self._last_tick + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if not self._queue.empty():
                self._tick()
                if stop and self._stop:  # stop(): one last drain of what is queued, then out
                    break
                continue
            if stop:
                break
            await asyncio.sleep(min(interval, 0.05))

    def start(self) -> asyncio.Task:
        """Schedule the drain task on the running loop (in Jupyter: the kernel's)."""
        if self._task is not None and not self._task.done():
            return self._task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("no running asyncio loop: call start() from a notebook cell, or "
                               "use `asyncio.run(dash.run_until(...))` in a script") from None
        self._stop = False
        self._task = loop.create_task(self._loop())
        return self._task

    def stop(self) -> asyncio.Task | None:
        """Ask the task to draw what is queued and end; `await dash.join()` waits for it."""
        self._stop = True
        return self._task

    async def join(self) -> None:
        if self._task is not None:
            await self._task

    async def run_until(self, predicate: Callable[[], bool],
                        timeout: float | None = None) -> None:
        """Drain until `predicate()` is true and the queue is empty (nothing fed before the
        predicate turned true is lost), then end. Uses the task of `start()` if it runs."""
        self._until = predicate
        try:
            task = self.start()
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                self.stop()
                await task
            else:
                task.result()
        finally:
            self._until = None


# ------------------------------------------------------------------------------ controls
class LabControls:
    """Loss rate, file size, transport and Start: one LiveSession drawn into a LiveDashboard.

    ``controls.widget`` is the layout; the Start button schedules ``controls.run()`` on the
    running loop (``await controls.run()`` does the same from code). ``controls.session`` and
    ``controls.result`` hold the last run.
    """

    def __init__(self, size: int = 1_000_000, loss: float = 0.0, transport: str = "auto", *,
                 kinds: Sequence[str] = FIGURE_KINDS, max_hz: float = 10.0, seed: int = 1,
                 pcap: bool = True, timeout: float = 300.0) -> None:
        self.best = _session.best_transport()
        self.seed, self.pcap, self.timeout = seed, pcap, timeout
        self.loss = W.FloatSlider(value=loss, min=0.0, max=0.3, step=0.005, description="loss",
                                  readout_format=".3f", continuous_update=False)
        self.size = W.BoundedIntText(value=size, min=0, max=2_000_000_000, step=100_000,
                                     description="size (B)")
        self.transport = W.Dropdown(options=["auto", "raw", "udp", "sim"], value=transport,
                                    description="transport")
        self.start_button = W.Button(description="Start", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.banner_text = "" if self.best == "raw" else NO_RAW_BANNER
        self.banner = W.HTML()
        self.result_html = W.HTML()
        self.dashboard = LiveDashboard(kinds, max_hz)
        self.widget = W.VBox([
            W.HBox([self.size, self.loss, self.transport, self.start_button, self.stop_button]),
            self.banner, self.dashboard.widget, self.result_html])
        self.session: _session.LiveSession | None = None
        self.result: _session.LiveResult | None = None
        self._task: asyncio.Task | None = None
        self.start_button.on_click(lambda _b: self.start())
        self.stop_button.on_click(lambda _b: self.stop())
        self._show_banner()

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def _show_banner(self) -> None:
        self.banner.value = (
            f'<div style="background:#fff3b0;padding:4px 8px;border-radius:4px">'
            f"⚠ {html.escape(self.banner_text)} (raw sockets need root or CAP_NET_RAW)</div>"
            if self.banner_text else "")

    def effective_transport(self) -> str:
        t = self.transport.value
        return self.best if t == "auto" else t

    def start(self) -> asyncio.Task:
        """Schedule `run()` on the running loop (what the Start button does)."""
        if self._task is not None and not self._task.done():
            return self._task
        self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    def stop(self) -> None:
        if self.session is not None:
            self.session.stop()
        self.dashboard.stop()

    async def run(self) -> _session.LiveResult | None:
        """One transfer with the current control values; returns its LiveResult."""
        transport = self.effective_transport()
        if transport == "raw" and self.best != "raw":
            self.result_html.value = ("<b>raw sockets are not permitted here</b>: choose udp or "
                                      "sim (or run the kernel as root)")
            return None
        self.start_button.disabled = True
        self.stop_button.disabled = False
        self.result_html.value = "running…"
        dash = self.dashboard
        dash.reset()
        shown = f"{self.transport.value} → {transport}" if self.transport.value == "auto" \
            else transport
        dash.set_status(transport=shown, banner="")
        try:
            s = _session.LiveSession(self.size.value, self.loss.value, transport, seed=self.seed,
                                     pcap=self.pcap)
            self.session = s
            s.start(dash.feed)
            fut = asyncio.get_running_loop().run_in_executor(None, s.wait, self.timeout)
            await dash.run_until(fut.done)
            self.result = res = await fut
            dash.flush()  # after a Stop: whatever was still queued
            self.result_html.value = self._result_table(res)
            return res
        except Exception as exc:  # shown to the student, never a dead button
            self.result_html.value = f"<b>the run failed</b>: {html.escape(repr(exc))}"
            raise
        finally:
            self.start_button.disabled = False
            self.stop_button.disabled = True

    def _result_table(self, res: _session.LiveResult) -> str:
        rows = [("ok", "✔" if res.ok else "✘"), ("transport", res.transport),
                ("events", res.events), ("events drawn", len(self.dashboard.events))]
        rows += [(k, v) for k, v in res.fetch.items()
                 if isinstance(v, int | float | str | bool) and not k.startswith("sha256")]
        if res.server_pcap:
            rows.append(("server pcap", res.server_pcap))
        cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                        for k, v in rows)
        return f"<table>{cells}</table>"


# ------------------------------------------------------------------------------ step-through
_DROPS = frozenset(("mac_fail", "nonce_fail", "replay_drop", "stale_drop", "drop"))
_OUT = frozenset((*F.SLOT_KINDS, "terminate"))
_REQUEST_KINDS = _DROPS | _OUT | {"nonce_ok", "recovery_start", "slowstart", "syn", "fin"}
_REQ_TYPES = {0: "NORMAL", 1: "SLOWSTART", 2: "SYN", 3: "FIN"}
_CONT_FROM_ROW = {"type": "cont_type", "seq": "cont_seq"}
_EPS = 2e-6  # pcap timestamps are whole microseconds; engine events are not


@dataclass
class Step:
    """One request and what the server made of it."""

    index: int
    t: float
    conn_id: int
    ack: int  # k: the packet number the request acknowledges
    request: Event | None = None  # the client's `request` event
    row: dict | None = None  # the request's packet row (capture)
    server: list[Event] = field(default_factory=list)  # the server's events for it
    responses: list[dict] = field(default_factory=list)  # response rows paired with it
    verdict: str = "unanswered"  # normal | handshake | recovery | slowstart | terminate |
    #                              reject | dropped | fin | unanswered
    reason: str = ""
    emitted: list[tuple[int, str]] = field(default_factory=list)  # (pkt, kind)
    cwnd: int | None = None  # the window the plan computed
    plan: pl.Plan | None = None  # re-planned from the captured continuation (rows only)

    @property
    def req_type(self) -> str:
        if self.row is not None:
            return str(self.row.get("req_type"))
        if self.request is not None:
            return _REQ_TYPES.get(self.request.detail.get("req_type", 0), "?")
        return "SYN" if any(e.kind == "syn" for e in self.server) else "?"


def _rank(kind: str) -> int:
    if kind in ("nonce_ok", "syn"):
        return 0
    if kind in _DROPS or kind == "fin":
        return 1
    if kind in ("recovery_start", "slowstart"):
        return 2
    return 3


def _new_group(group: list[Event], e: Event, window: float) -> bool:
    if not group:
        return True
    last = group[-1]
    if (e.conn_id, e.ack) != (last.conn_id, last.ack) or e.t - group[0].t > window:
        return True
    if last.kind in _DROPS or last.kind in ("syn", "fin", "terminate"):
        return True  # those end what the server does with a request
    r, rl = _rank(e.kind), _rank(last.kind)
    if r < rl or (r == rl and r < 3):
        return True
    return e.kind == "terminate" and rl == 3


def _server_groups(events: Sequence[Event], window: float) -> list[list[Event]]:
    groups: list[list[Event]] = []
    cur: list[Event] = []
    for e in sorted((e for e in events if e.side == "server" and e.kind in _REQUEST_KINDS),
                    key=lambda e: e.t):
        if _new_group(cur, e, window):
            cur = [e]
            groups.append(cur)
        else:
            cur.append(e)
    return groups


def _verdict_from_events(step: Step) -> None:
    g = step.server
    kinds = [e.kind for e in g]
    step.emitted = [(e.pkt, e.kind) for e in g if e.kind in F.SLOT_KINDS]
    for e in g:
        if e.kind in _OUT or e.kind in ("recovery_start", "slowstart"):
            step.cwnd = e.cwnd
            break
    drops = [e for e in g if e.kind in _DROPS]
    if not g:
        step.verdict, step.reason = "unanswered", "the server logged nothing for it (lost?)"
    elif "syn" in kinds:
        step.verdict, step.reason = "handshake", "SYN: the handshake continuation"
        step.emitted = [(g[0].pkt, "syn-ack")]
        step.cwnd = g[0].cwnd
    elif drops:
        reason = str(drops[0].detail.get("reason", drops[0].kind))
        step.verdict = "reject" if reason.startswith("plan.") else "dropped"
        step.reason = f"{drops[0].kind}: {reason}"
    elif "fin" in kinds:
        step.verdict, step.reason = "fin", "the client closes"
    elif "slowstart" in kinds:
        step.verdict, step.reason = "slowstart", "restart after a timeout"
    elif "terminate" in kinds:
        e = g[kinds.index("terminate")]
        step.verdict = "terminate"
        step.reason = ("a recovery continuation ends its trickle" if e.state == 1
                       else "no packet for this request: its trickle ends")
    elif "recovery_start" in kinds or any(k in ("retransmit", "bootstrap") for k in kinds):
        step.verdict = "recovery"
        fl = next((e.detail.get("first_loss") for e in g if e.kind == "recovery_start"), None)
        step.reason = f"first loss at {fl}" if fl is not None else "inside a recovery"
    elif "initial" in kinds:
        step.verdict, step.reason = "handshake", "the initial window"
    elif "continue" in kinds or "split" in kinds:
        step.verdict, step.reason = "normal", "every packet up to k acknowledged"
    else:
        step.verdict, step.reason = "unanswered", "checked, but nothing sent"


def _row_dict(r: Any) -> dict:
    if isinstance(r, Mapping):
        return dict(r)
    as_dict = getattr(r, "as_dict", None)
    if callable(as_dict):
        return as_dict()
    return dict(vars(r))


def _steps_from_rows(rows: list[dict], events: Sequence[Event], config: Any) -> list[Step]:
    reqs = [r for r in rows if r.get("direction") == "request"]
    pending: dict[tuple, list[Step]] = {}
    syns: dict[tuple, list[Step]] = {}
    steps: list[Step] = []
    max_gap = getattr(config, "max_gap", pl.MAX_GAP)
    for r in reqs:
        st = Step(len(steps), r["t"], r.get("conn_id") or 0, r.get("cont_seq")
                  if r.get("cont_seq") is not None else -1, row=r)
        steps.append(st)
        quad = (r["src"], r["sport"], r["dst"], r["dport"])
        if r.get("error") is not None:
            st.verdict, st.reason = "dropped", f"drop: {r['error']}"
            continue
        if r.get("req_type") == "SYN":
            syns.setdefault(quad, []).append(st)
            st.verdict, st.reason = "handshake", "SYN: no SYN-ACK seen"
            continue
        key = (*quad, r["cont_seq"], r["client_state"], r["parent"], r["client_timestamp"])
        if r.get("req_type") != "FIN":
            sacks = r.get("sacks") or []
            blocks = [(lft, rgt) for lft, rgt, _ in sacks]
            st.plan = pl.plan_request(r["cont_seq"], r["tcp_base"], r["start_cwnd"],
                                      r["ssthresh"], r["state"], blocks,
                                      r.get("req_type") == "SLOWSTART", max_gap)
        if r.get("mac_ok") is not False:
            pending.setdefault(key, []).append(st)
    order = {id(r): i for i, r in enumerate(rows)}
    for r in rows:
        if r.get("direction") != "response" or r.get("error") is not None:
            continue
        quad = (r["dst"], r["dport"], r["src"], r["sport"])
        if r.get("flags", 0) & 2:  # SYN-ACK
            lst = syns.get(quad)
            if lst:
                st = lst.pop()
                st.responses.append(r)
                st.reason = "SYN: the handshake continuation"
                st.emitted = [(r["seq"], "syn-ack")]
                st.cwnd = r.get("start_cwnd")
            continue
        key = (*quad, r["ack"], r.get("client_state"), r.get("parent"),
               r.get("client_timestamp"))
        for st in reversed(pending.get(key, [])):
            if order[id(st.row)] < order[id(r)]:
                st.responses.append(r)
                break
    by_req: dict[tuple[int, int], list[Event]] = {}
    for e in events:
        if e.side == "server" and e.kind in _REQUEST_KINDS:
            by_req.setdefault((e.conn_id, e.ack), []).append(e)
    for st in steps:
        r = st.row
        assert r is not None
        if r.get("error") is not None or r.get("req_type") == "SYN":
            continue
        t_end = max([x["t"] for x in st.responses], default=st.t) + _EPS
        st.server = [e for e in by_req.get((st.conn_id, st.ack), ())
                     if st.t - _EPS <= e.t <= t_end]
        plan = st.plan
        if r.get("req_type") == "FIN":
            st.verdict = "fin" if st.responses else "unanswered"
            st.reason = "the client closes"
            st.emitted = [(x["seq"], "fin") for x in st.responses]
            continue
        assert plan is not None
        st.cwnd = plan.cwnd
        kinds = {s.pkt: s.kind for s in plan.slots}
        st.emitted = [(x["seq"], kinds.get(x["seq"], "?")) for x in st.responses]
        if st.responses or not plan.slots:
            st.verdict, st.reason = plan.verdict, plan.reason
            if plan.recovery_start:
                st.reason = f"first loss at {plan.first_loss}"
            continue
        drops = [e for e in st.server if e.kind in _DROPS]
        if drops:
            reason = str(drops[0].detail.get("reason", drops[0].kind))
            st.verdict = "dropped"
            st.reason = f"{drops[0].kind}: {reason} (the plan would have been {plan.verdict})"
        else:
            st.verdict = "unanswered"
            st.reason = f"no answer in the capture (the plan: {plan.verdict})"
    return steps


def build_steps(events: Iterable[Event | Mapping[str, Any]] = (),
                packets: Iterable[Any] | None = None, *, config: Any = None,
                window: float = 0.005) -> list[Step]:
    """The requests of a run, each with what the server made of it.

    With `packets` (rows of `capture.decode_pcap`): one step per captured request, its plan
    recomputed with `core.plan.plan_request` from the continuation it carried, the responses
    paired as the decoder pairs them. Otherwise from events: one step per client `request`
    event (the server's events for it attached: same connection and ack, the latest request
    sent before them), plus server-only groups (SYN, or a capture's events without client
    events) — `window` (s) bounds how far apart one request's server events may be.
    """
    evs = [_as_event(e) for e in events]
    if packets is not None:
        return _steps_from_rows([_row_dict(r) for r in packets], evs, config)
    groups = _server_groups(evs, window)
    requests = sorted((e for e in evs if e.kind == "request" and e.side == "client"),
                      key=lambda e: e.t)
    by_ack: dict[int, list[Event]] = {}
    for e in requests:
        by_ack.setdefault(e.ack, []).append(e)
    claimed: set[int] = set()
    owner: dict[int, list[Event]] = {}
    lone: list[list[Event]] = []
    for g in groups:
        g0 = g[0]
        hit = None
        for q in reversed(by_ack.get(g0.ack, ())):
            if id(q) in claimed or q.t > g0.t:
                continue
            if q.conn_id and g0.conn_id and q.conn_id != g0.conn_id:
                continue
            hit = q
            break
        if hit is None:
            lone.append(g)
        else:
            claimed.add(id(hit))
            owner[id(hit)] = g
    steps = [Step(0, q.t, q.conn_id, q.ack, request=q, server=owner.get(id(q), []))
             for q in requests]
    steps += [Step(0, g[0].t, g[0].conn_id, g[0].ack, server=g) for g in lone]
    steps.sort(key=lambda s: s.t)
    for i, st in enumerate(steps):
        st.index = i
        _verdict_from_events(st)
    return steps


class StepThrough:
    """Pause on each request: Prev / Next and a slider over the requests; for the current one,
    the server's verdict (plan, packets emitted with their kinds, cwnd), the continuation it
    carried (`figures.continuation_inspector`, changes since the previous request highlighted)
    and its SACK nonce checks (`figures.nonce_panel`).

    `packets`: rows of `capture.decode_pcap` (exact continuations, re-planned); `secret`: the
    server's master secret, to compute the expected nonce summaries.
    """

    def __init__(self, events: Iterable[Event | Mapping[str, Any]] = (),
                 packets: Iterable[Any] | None = None, *, secret: bytes | None = None,
                 config: Any = None) -> None:
        from trickles_kit.core.server import ServerConfig

        self.config = config or ServerConfig()
        self.steps = build_steps(events, packets, config=self.config)
        self._nonces = None
        if secret is not None:
            from trickles_kit.core.keys import KeyRing
            from trickles_kit.core.nonces import NonceGen

            keys = KeyRing(bytes(secret), self.config.epoch_seconds, self.config.max_seals)
            self._nonces = NonceGen(keys.nonce_key, self.config.nonce_bits)
        n = len(self.steps)
        self.prev_button = W.Button(description="Prev", icon="step-backward")
        self.next_button = W.Button(description="Next", icon="step-forward")
        self.slider = W.IntSlider(value=0, min=0, max=max(n - 1, 0), description="request",
                                  continuous_update=False)
        self.summary = W.HTML()
        self.inspector = go.FigureWidget(F.continuation_inspector({}, title="Continuation"))
        self.nonces = go.FigureWidget(F.nonce_panel([]))
        self.nonce_note = W.HTML()
        self.widget = W.VBox([
            W.HBox([self.prev_button, self.next_button, self.slider]), self.summary,
            W.HBox([self.inspector, W.VBox([self.nonces, self.nonce_note])])])
        self.prev_button.on_click(lambda _b: self.prev())
        self.next_button.on_click(lambda _b: self.next())
        self.slider.observe(lambda ch: self._show(ch["new"]), names="value")
        self._show(0)

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    @property
    def index(self) -> int:
        return self.slider.value

    @property
    def current(self) -> Step | None:
        return self.steps[self.index] if self.steps else None

    def go(self, i: int) -> Step | None:
        if self.steps:
            self.slider.value = max(0, min(i, len(self.steps) - 1))
        return self.current

    def next(self) -> Step | None:
        return self.go(self.index + 1)

    def prev(self) -> Step | None:
        return self.go(self.index - 1)

    # ------------------------------------------------------------------ what is shown
    def continuation_row(self, i: int) -> dict:
        """The continuation fields of request i, as much as the data tells."""
        st = self.steps[i]
        if st.row is not None:
            r = st.row
            out = {f: r.get(_CONT_FROM_ROW.get(f, f)) for f in F.CONT_FIELDS}
            out = {k: v for k, v in out.items() if v is not None}
            out["mac_ok"], out["nonce_ok"] = r.get("mac_ok"), r.get("nonce_ok")
            return out
        out: dict[str, Any] = {"seq": st.ack, "conn_id": st.conn_id}
        src = next((e for e in st.server if e.kind not in _OUT), None)  # carries the input
        if src is not None:
            out.update(state=src.state, ssthresh=src.ssthresh, tcp_base=src.tcp_base)
        elif st.request is not None:
            out.update(state=st.request.state, tcp_base=st.request.tcp_base)
        kinds = {e.kind for e in st.server}
        if "mac_fail" in kinds:
            out["mac_ok"] = False
        elif any(e.ack >= 0 for e in st.server):  # the server opened the continuation
            out["mac_ok"] = True
        else:
            out["mac_ok"] = None
        out["nonce_ok"] = (False if "nonce_fail" in kinds else
                           True if "nonce_ok" in kinds else None)
        return out

    def nonce_blocks(self, i: int) -> tuple[list[dict], list[str]]:
        """(blocks for nonce_panel, notes on blocks whose summaries are unknown)."""
        st = self.steps[i]
        blocks: list[dict] = []
        notes: list[str] = []
        gen = self._nonces
        if st.row is not None:
            ok = st.row.get("nonce_ok")
            for left, right, claimed in st.row.get("sacks") or []:
                if gen is not None:
                    expected = gen.range_summary(st.conn_id, st.row.get("tcp_base", 0), left,
                                                 right)
                elif ok is True:
                    expected = claimed  # the decoder checked it with the secret
                else:
                    notes.append(f"[{left}, {right}] claimed {claimed:#010x}: no secret to check")
                    continue
                blocks.append({"left": left, "right": right, "claimed": claimed,
                               "expected": expected})
            return blocks, notes
        kinds = {e.kind for e in st.server}
        pairs: list = []
        for e in st.server:
            if e.kind == "nonce_ok":
                pairs = e.detail.get("blocks") or []
        if not pairs and st.request is not None:
            pairs = st.request.detail.get("sacks") or []
        for left, right in pairs:
            if "nonce_ok" in kinds and gen is not None:
                base = st.request.tcp_base if st.request is not None else 0
                s = gen.range_summary(st.conn_id, base, left, right)  # the server found them ok
                blocks.append({"left": left, "right": right, "claimed": s, "expected": s})
            else:
                verdict = ("ok (the server's nonce_ok)" if "nonce_ok" in kinds else
                           "REJECTED (nonce_fail)" if "nonce_fail" in kinds else "not checked")
                notes.append(f"[{left}, {right}]: {verdict}")
        if pairs and gen is None and "nonce_ok" in kinds:
            notes.append("summaries are not in the event log: pass secret= (or packet rows) to "
                         "show them")
        return blocks, notes

    def _show(self, i: int) -> None:
        n = len(self.steps)
        self.prev_button.disabled = i <= 0
        self.next_button.disabled = i >= n - 1
        if not n:
            self.summary.value = "<i>no requests in these events</i>"
            return
        st = self.steps[i]
        self.summary.value = self._summary_html(st)
        prev = self.continuation_row(i - 1) if i > 0 else None
        self._replace(self.inspector, F.continuation_inspector(
            self.continuation_row(i), prev, title=f"Continuation carried by request {i}"))
        blocks, notes = self.nonce_blocks(i)
        self._replace(self.nonces, F.nonce_panel(blocks, title=f"Nonce checks, request {i}"))
        if not blocks and not notes:
            notes = ["no SACK blocks in this request"]
        self.nonce_note.value = "<br>".join(html.escape(s) for s in notes)

    @staticmethod
    def _replace(fw: go.FigureWidget, fig: go.Figure) -> None:
        new = fig.data[0]
        with fw.batch_update():
            fw.data[0].header = new.header
            fw.data[0].cells = new.cells
            fw.layout.title = fig.layout.title

    def _summary_html(self, st: Step) -> str:
        n = len(self.steps)
        esc = html.escape
        head = (f"<b>request {st.index + 1}/{n}</b> · t = {st.t:.6f} s · {esc(st.req_type)}"
                f" · acknowledges k = {st.ack}")
        if st.request is not None:
            sacks = st.request.detail.get("sacks")
            if sacks:
                head += f" · SACK {esc(str(sacks))}"
        elif st.row is not None and st.row.get("sacks"):
            head += f" · SACK {esc(str([(a, b) for a, b, _ in st.row['sacks']]))}"
        color = {"normal": "#2ca02c", "recovery": "#ff7f0e", "terminate": "#d62728",
                 "dropped": "#d62728", "reject": "#d62728", "slowstart": "#8c564b"}.get(
                     st.verdict, "#1f77b4")
        verdict = (f'server: <b style="color:{color}">{esc(st.verdict)}</b>'
                   + (f" — {esc(st.reason)}" if st.reason else ""))
        if st.cwnd is not None:
            verdict += f" · cwnd {st.cwnd}"
        sent = ", ".join(f"{p} {k}" for p, k in st.emitted) or "nothing"
        lines = [head, verdict, f"packets emitted: {esc(sent)}"]
        if st.plan is not None and st.plan.slots:
            planned = ", ".join(f"{s.pkt} {s.kind}" for s in st.plan.slots)
            lines.append(f"plan (core.plan.plan_request on the captured continuation): "
                         f"{esc(planned)}")
        return "<br>".join(lines)


# ------------------------------------------------------------------------------ replay
class ReplayDashboard:
    """A LiveDashboard over a finished event list (a decoded capture, a saved log) with a time
    slider: at slider value t it shows exactly the events with ``e.t <= t``. Play advances the
    slider `speed` times real time, redrawing at most `max_hz` times a second.
    """

    def __init__(self, events: Iterable[Event | Mapping[str, Any]] | Any,
                 kinds: Sequence[str] = FIGURE_KINDS, max_hz: float = 10.0, *,
                 speed: float = 1.0, bin_s: float = 0.1, continuous_update: bool = False) -> None:
        if hasattr(events, "events") and not isinstance(events, list | tuple):
            events = events.events  # a capture.decode.Capture
        evs = sorted((_as_event(e) for e in events), key=lambda e: e.t)
        self.events = evs
        self.times = [e.t for e in evs]
        t0 = self.times[0] if evs else 0.0
        t1 = self.times[-1] if evs else 0.0
        self.dashboard = LiveDashboard(kinds, max_hz, bin_s=bin_s, transport="replay")
        self.shown = 0  # events[:shown] are drawn
        step = (t1 - t0) / 1000 if t1 > t0 else 0.001
        self.slider = W.FloatSlider(value=t0, min=t0, max=max(t1, t0 + step), step=step,
                                    description="t (s)", readout_format=".3f",
                                    continuous_update=continuous_update,
                                    layout=W.Layout(width="70%"))
        self.play_button = W.ToggleButton(description="Play", icon="play", value=False)
        self.speed = W.FloatText(value=speed, description="speed ×", layout=W.Layout(
            width="160px"))
        self.widget = W.VBox([W.HBox([self.play_button, self.speed, self.slider]),
                              self.dashboard.widget])
        self._task: asyncio.Task | None = None
        self.slider.observe(lambda ch: self.seek(ch["new"]), names="value")
        self.play_button.observe(self._on_play, names="value")
        self.seek(t0)  # the events at the very first instant

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    @property
    def time(self) -> float:
        return self.slider.value

    def seek(self, t: float) -> None:
        """Move the slider to t and draw exactly the events with e.t <= t (the slider clamps t
        to its range)."""
        if self.slider.value != t:
            self.slider.value = t  # the observer comes back here with the slider's value
            return
        idx = bisect.bisect_right(self.times, t)
        if idx > self.shown:
            self.dashboard.draw(self.events[self.shown:idx])
        elif idx < self.shown:
            self.dashboard.draw(self.events[:idx], reset=True)
        self.shown = idx

    def _on_play(self, change: dict) -> None:
        if change["new"]:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self.play())
        elif self._task is not None:
            self._task.cancel()

    async def play(self, speed: float | None = None) -> None:
        """Advance the slider to its end (speed × real time) at most max_hz times a second."""
        if speed is not None:
            self.speed.value = speed
        interval = 1.0 / self.dashboard.max_hz
        self.play_button.icon = "pause"
        try:
            if self.slider.value >= self.slider.max:
                self.seek(self.slider.min)
            last = time.monotonic()
            while self.slider.value < self.slider.max:
                await asyncio.sleep(interval)
                now = time.monotonic()
                t = min(self.slider.value + max(self.speed.value, 0.0) * (now - last),
                        self.slider.max)
                last = now
                self.seek(t)
        finally:
            self.play_button.icon = "play"
            if self.play_button.value:
                self.play_button.value = False
