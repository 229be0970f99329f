"""Live views for notebooks: a dashboard fed with protocol events, lab controls, replays.

Everything draws with the pure builders of `viz.figures` (through `viz.accumulators`), so a live
run, a replayed capture and a static report look the same; the page side is one
`viz.stream.StreamView` per dashboard (plotly.js at most once per page, new points only).

* `LiveDashboard`: `feed(event)` from any thread (LiveSession's reader thread, a sniffer...); one
  asyncio task on the notebook's loop drains the queue at most `max_hz` times a second and sends
  the new points of every panel in one message. Nothing is lost: the last drain takes every
  event fed before the producer was declared finished. `finish()` sends a digest of the static
  figures (the page checks its last frame against it) and leaves those figures as ordinary
  outputs, so a saved notebook or `nbconvert --to html` shows the result without a kernel.
* `viz.replay.ReplayDashboard`: the dashboard over a finished list of events (a decoded capture)
  with a time slider and a Play button; `labs.controls.LabControls`: loss / size / transport /
  Start widgets running a `labs.session.LiveSession` into a dashboard (the lab layer: it drives
  transfers, this module only draws).
* `StepThrough` / `build_steps` live in `viz.steps` (re-exported here).

Threads: only `feed` may be called from another thread. Everything else (widgets, `flush`,
`draw`, `finish`) belongs to the thread running the asyncio loop — the kernel's main thread.
"""

from __future__ import annotations

import asyncio
import html
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go

from trickles_kit.core.events import Event
from trickles_kit.viz import figures as F
from trickles_kit.viz.accumulators import (
    FIGURE_KINDS,
    Accumulator,
    as_event,
    make_accumulator,
    prototype_events,
    static_figure,
)
from trickles_kit.viz.steps import Step, StepThrough, build_steps
from trickles_kit.viz.stream import (
    PanelSpec,
    PlotlyRuntime,
    StreamView,
    TraceSender,
    digest,
    plotly_js_mode,
    plotly_output,
    static_bundle,
    thin,
)

__all__ = [
    "FIGURE_KINDS",
    "LiveDashboard",
    "Step",
    "StepThrough",
    "build_steps",
    "marker_key",
    "static_figure",
]

_PACKET_KINDS = frozenset(("initial", "continue", "split", "retransmit", "bootstrap", "request"))


@dataclass
class Tick:
    """One drain of the queue: when (monotonic s), how many events, and what it cost."""

    at: float
    events: int
    drain_s: float  # queue pops + accumulators
    update_s: float  # computing and sending the new points


@dataclass
class _Panel:
    kind: str
    acc: Accumulator
    index: dict[str, int] = field(default_factory=dict)
    spec: PanelSpec | None = None


class LiveDashboard:
    """Panels (cwnd, trickle tree, time-sequence, goodput) that follow an event stream.

    ``dash.feed(event)`` from any thread; ``dash.start()`` on the running loop (a notebook cell)
    or ``await dash.run_until(predicate)``; ``dash.finish()`` when the run is over. Display
    ``dash`` itself (``dash.view`` is the widget); ``dash.drawn`` counts the events drawn per
    kind, ``dash.events`` lists them in arrival order and ``dash.ticks`` records every update.
    `plotly_js`: "page" or "send" (see `viz.stream.plotly_js_mode`; None guesses).
    """

    def __init__(self, kinds: Sequence[str] = FIGURE_KINDS, max_hz: float = 10.0, *,
                 transport: str = "", banner: str = "", bin_s: float = 0.1,
                 height: int | None = None, plotly_js: str | None = None,
                 view_kind: str = "dashboard") -> None:
        if not 0 < max_hz <= 60:
            raise ValueError("max_hz must be in (0, 60]")
        if (plotly_js or plotly_js_mode()) == "send":
            # first: the page evaluates plotly.js while the panels are prepared below, not
            # after, so the first frame of a transfer started right after is not kept waiting
            PlotlyRuntime.ensure()
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
        self.final_figures: dict[str, dict[str, Any]] = {}
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._received = 0
        self._stop = False
        self._until: Callable[[], bool] | None = None
        self._task: asyncio.Task | None = None
        self._last_tick = -math.inf
        self._t_hi: float | None = None
        self._seq = 0
        self._sender = TraceSender()
        self._outputs: list[Any] = []  # IPython display handles of the static copies
        proto = prototype_events()
        self.panels: dict[str, _Panel] = {}
        specs = []
        for kind in kinds:
            acc = make_accumulator(kind, bin_s)
            fig = static_figure(kind, proto, bin_s)
            always = frozenset(t.name for t in static_figure(kind, [], bin_s).data)
            spec = PanelSpec.from_figure(kind, fig, always, height)
            index = {t["name"]: i for i, t in enumerate(spec.traces)}
            missing = set(index) ^ set(acc.names)
            if missing:  # a builder grew or lost a trace: the live view must follow it
                raise RuntimeError(f"live {kind} figure out of step with the builder: {missing}")
            self.panels[kind] = _Panel(kind, acc, index, spec)
            specs.append(spec)
        self.view = StreamView(specs, plotly_js=plotly_js, view_kind=view_kind)
        self.widget = self.view
        self._update_status()

    # ------------------------------------------------------------------ access
    @property
    def received(self) -> int:
        """Events fed so far (drawn or still queued)."""
        return self._received

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def status(self) -> str:
        """The status line (HTML) the page shows above the panels."""
        return self.view.status_html

    @property
    def figures(self) -> dict[str, go.Figure]:
        """What the page holds now, as ordinary figures (one per panel)."""
        return {k: self.page_figure(k) for k in self.kinds}

    def page_figure(self, kind: str) -> go.Figure:
        """The panel as the page has it: every point sent so far, in the builder's styles."""
        p = self.panels[kind]
        assert p.spec is not None
        fig = go.Figure(layout=p.spec.layout)
        for i, t in enumerate(p.spec.traces):
            sh = self._sender.current(kind, i)
            if not (t["always"] or sh.x):
                continue
            tr = dict(t["style"], x=list(sh.x), y=list(sh.y))
            if sh.text is not None:
                tr["text"] = list(sh.text)
            fig.add_trace(tr)
        return fig

    def _repr_mimebundle_(self, **kw: Any) -> Any:
        return self.view._repr_mimebundle_(**kw)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.view)
        self.display_outputs()

    def display_outputs(self) -> None:
        """Placeholders under the view for the final static figures (`finish` fills them),
        after, in "page" mode, the tiny plotly output that makes the page load plotly.js."""
        from IPython.display import display

        if self.view.plotly_js == "page":
            display(plotly_output(marker_key()), raw=True)
        else:
            display({"text/html": F.marker_key_html(), "text/plain": "<key to the live panels>"},
                    raw=True)
        self._outputs = [display({"text/plain": ""}, raw=True, display_id=True)
                         for _ in self.kinds]

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
        if self.view.status_html != text:
            self.view.status_html = text
        banner = (f'<div style="background:#fff3b0;padding:4px 8px;border-radius:4px">'
                  f"{html.escape(self.banner)}</div>" if self.banner else "")
        if self.view.banner_html != banner:
            self.view.banner_html = banner

    def reset(self) -> None:
        """Forget every event (queued ones too) and empty the panels."""
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
        self._t_hi = None
        for p in self.panels.values():
            p.acc.reset()
            p.acc.dirty.clear()
        self._sender.reset()
        self.view.push({"op": "reset"})
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
        new = [as_event(e) for e in new]
        self.events.extend(new)
        for p in self.panels.values():
            p.acc.add(new, self.events)
        self.drawn.update(e.kind for e in new)
        if new:
            hi = max(e.t for e in new)
            self._t_hi = hi if self._t_hi is None else max(self._t_hi, hi)
        return new

    def _render(self) -> None:
        """Send every panel's new points in one message (float64 buffers, text as JSON)."""
        updates: list[dict] = []
        buffers: list[bytes] = []
        for p in self.panels.values():
            acc = p.acc
            for name in sorted(acc.dirty, key=p.index.__getitem__):
                x, y, text = acc.series(name)
                self._sender.update(p.kind, p.index[name], x, y, text, updates, buffers)
            acc.dirty.clear()
        if updates:
            self._seq += 1
            self.view.push({"op": "data", "seq": self._seq, "t_hi": self._t_hi,
                            "events": len(self.events), "updates": updates}, buffers)

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

    def mark(self, what: str, **info: Any) -> None:
        """A timestamped mark in the page's log (start / end of a transfer), for benchmarks."""
        self.view.push({"op": "mark", "what": what, "events": len(self.events), **info})

    def transfer_span(self) -> tuple[float | None, float | None]:
        """(first, last) packet time of the events drawn: requests and packets sent."""
        ts = [e.t for e in self.events if e.kind in _PACKET_KINDS]
        return (min(ts), max(ts)) if ts else (None, None)

    def final_figure(self, kind: str) -> dict[str, Any]:
        """The panel as a plain plotly figure dict, from its accumulator: the builder's traces
        (tests/viz/test_live.py proves them equal) without plotly's validation of every point,
        which costs seconds on a long run."""
        p = self.panels[kind]
        assert p.spec is not None
        data = []
        for t in p.spec.traces:
            x, y, text = p.acc.series(t["name"])
            if not (t["always"] or x):
                continue
            tr = dict(t["style"], x=list(x), y=list(y))
            if text is not None:
                tr["text"] = list(text)
            data.append(tr)
        return {"data": data, "layout": p.spec.layout}

    def finish(self) -> dict[str, dict[str, Any]]:
        """The run is over: draw what is queued, send the static builder's digest (the page
        draws every point and checks its last frame against it) and fill the static copies
        under the view (saved with the notebook; hidden while the live view shows)."""
        self.flush()
        figs = {k: self.final_figure(k) for k in self.kinds}
        first, last = self.transfer_span()
        for h, (kind, fig) in zip(self._outputs, figs.items(), strict=False):
            h.update(static_bundle(thin(fig), self.view.uid, kind), raw=True)
        # last: the page starts its full redraw a moment after this, by when the cell's end
        # (sent right after) has reached it
        self.view.push({"op": "final", "digest": {k: digest(f) for k, f in figs.items()},
                        "events": len(self.events), "t_first": first, "t_last": last})
        self.final_figures = figs
        return figs

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


def marker_key() -> go.Figure:
    """One line that names the markers of the panels (a key shown under the live view)."""
    kinds = ("initial", "continue", "split", "terminate", "retransmit", "bootstrap", "timeout")
    fig = go.Figure()
    for i, kind in enumerate(kinds):
        color, symbol = F.KIND_STYLE[kind]
        fig.add_scatter(x=[i], y=[0], mode="markers+text", text=[kind],
                        textposition="middle right", marker={"color": color,
                                                             "symbol": symbol, "size": 10},
                        showlegend=False, hoverinfo="skip")
    fig.update_layout(height=44, margin={"t": 4, "b": 4, "l": 10, "r": 10},
                      xaxis={"visible": False, "range": [-0.2, len(kinds)]},
                      yaxis={"visible": False}, plot_bgcolor="rgba(0,0,0,0)")
    return fig
