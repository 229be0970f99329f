"""Replays: the live dashboard over a finished list of events (a decoded capture, a saved log).

A capture holds the server's packets but no client events, so its goodput panel is rebuilt here
from the first transmission of each byte range (`capture_data_events`).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as W

from trickles_kit.core.events import Event
from trickles_kit.viz.accumulators import FIGURE_KINDS, as_event
from trickles_kit.viz.live import LiveDashboard

__all__ = ["ReplayDashboard", "capture_data_events", "nice_bin"]


def nice_bin(span: float, bars: int = 25) -> float:
    """A goodput bin (1, 2 or 5 times a power of ten seconds) giving about `bars` bars."""
    if span <= 0:
        return 0.1
    raw = span / bars
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10 ** exp >= raw:
            return round(m * 10 ** exp, 9)
    return 10 ** (exp + 1)  # pragma: no cover - the loop always returns


def _add_range(covered: list[list[int]], lo: int, hi: int) -> int:
    """Merge [lo, hi) into the sorted disjoint intervals `covered`; returns the new bytes."""
    i = bisect.bisect_left(covered, [lo, lo])
    if i and covered[i - 1][1] >= lo:
        i -= 1
    new, start, end = hi - lo, lo, hi
    j = i
    while j < len(covered) and covered[j][0] <= end:
        a, b = covered[j]
        new -= max(0, min(b, hi) - max(a, lo))
        start, end = min(start, a), max(end, b)
        j += 1
    covered[i:j] = [[start, end]]
    return new


def capture_data_events(packets: Iterable[Any]) -> list[Event]:
    """`data` events for a server-side capture, which holds no client events (the goodput
    panel draws `data` events): the bytes of each response's data range sent for the first
    time, at the time it was sent. A retransmission (old data, new packet number) adds
    nothing, so the bytes add up to the body exactly; the curve leads the client's by about
    half a round trip."""
    covered: dict[tuple, list[list[int]]] = {}
    out: list[Event] = []
    for r in packets:
        get = r.get if isinstance(r, Mapping) else lambda k, _r=r: getattr(_r, k, None)
        if get("direction") != "response" or not get("data_len"):
            continue
        start = int(get("data_start") or 0)
        client = (get("dst"), get("dport"))  # not conn_id: a row may lack it (stale MAC...)
        new = _add_range(covered.setdefault(client, []), start, start + int(get("data_len")))
        if new:
            out.append(Event("data", float(get("t")), "client", conn_id=get("conn_id") or 0,
                             pkt=int(get("seq") or 0), detail={"bytes": new}))
    return out


class ReplayDashboard:
    """A LiveDashboard over a finished event list (a decoded capture, a saved log) with a time
    slider: at slider value t it shows exactly the events with ``e.t <= t``. Play advances the
    slider `speed` times real time, redrawing at most `max_hz` times a second.
    """

    def __init__(self, events: Iterable[Event | Mapping[str, Any]] | Any,
                 kinds: Sequence[str] = FIGURE_KINDS, max_hz: float = 10.0, *,
                 speed: float = 1.0, bin_s: float | None = None,
                 continuous_update: bool = False,
                 plotly_js: str | None = None) -> None:
        extra: list[Event] = []
        if hasattr(events, "events") and not isinstance(events, list | tuple):
            packets = getattr(events, "packets", None)
            events = events.events  # a capture.decode.Capture
            if packets is not None and not any(getattr(e, "kind", None) == "data"
                                               for e in events):
                extra = capture_data_events(packets)  # the goodput the requests report
        evs = sorted([*(as_event(e) for e in events), *extra], key=lambda e: e.t)
        self.events = evs
        self.times = [e.t for e in evs]
        t0 = self.times[0] if evs else 0.0
        t1 = self.times[-1] if evs else 0.0
        if bin_s is None:  # about 25 goodput bars over the capture, on a 1-2-5 step
            bin_s = nice_bin(t1 - t0)
        self.dashboard = LiveDashboard(kinds, max_hz, bin_s=bin_s, transport="replay",
                                       plotly_js=plotly_js, view_kind="replay")
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
        self._finished = -1
        self.slider.observe(lambda ch: self.seek(ch["new"]), names="value")
        self.play_button.observe(self._on_play, names="value")
        self.seek(t0)  # the events at the very first instant

    def _repr_mimebundle_(self, **kw: Any) -> Any:
        return self.widget._repr_mimebundle_(**kw)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
        self.dashboard.display_outputs()
        if self.shown == len(self.events):
            self.dashboard.finish()

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
        if idx == len(self.events) and self._finished != idx:
            self._finished = idx  # at the end: the static copy (once per reach of the end)
            self.dashboard.finish()
        elif idx < len(self.events):
            self._finished = -1

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
