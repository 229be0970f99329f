"""Lab controls: loss, size, transport and Start widgets that run one `LiveSession` into a
`viz.live.LiveDashboard` (the lab layer drives transfers; the view layer only draws them)."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as W

from trickles_kit.labs import session as _session
from trickles_kit.viz.accumulators import FIGURE_KINDS
from trickles_kit.viz.live import LiveDashboard

__all__ = ["NO_RAW_BANNER", "LabControls"]

NO_RAW_BANNER = "running without root: using UDP/simulated transport"


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

    def _repr_mimebundle_(self, **kw: Any) -> Any:
        return self.widget._repr_mimebundle_(**kw)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
        self.dashboard.display_outputs()

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
            dash.finish()
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
