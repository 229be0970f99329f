"""Figures of notebooks 08 (optimizations) and 09 (compressed continuations).

Pure functions from the dicts the lab functions return (`labs.optimizations.cache_compare`,
`dyn_fetch`, `parallel_compare`; `labs.compression.compare`) to plotly figures, so a notebook
cell stays one call and the numbers a student reads in the dict are the ones drawn. Layout as
every other figure: the legend above the plot area, never over an axis title
(`figures.legend_on_top`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from trickles_kit.viz.figures import legend_on_top

OFF_ON = ("off", "on")
PARALLEL_COLOR = "#2ca02c"
SEQUENTIAL_COLOR = "#7f7f7f"
MODE_LABELS = {"off": "off (default)", "pairs": "pairs", "hash": "hash", "both": "both"}
FORM_COLORS = {  # one colour per continuation form, the same in both panels
    "FULL1": "#7f7f7f", "FULL2": "#1f77b4", "PAIR": "#17becf", "HASHED": "#2ca02c",
    "COMPACT": "#bcbd22", "MINIMAL": "#ff7f0e",
}


# ---------------------------------------------------------------------------- 08
def cache_figure(cache: Mapping[str, Any]) -> go.Figure:
    """State cache off vs on (`cache_compare`): server CPU per request, and what the server
    saw — requests, cache hits (MAC checks skipped) and replay drops (still every duplicate).

    The CPU bars come from one small run on a shared machine and move by tens of percent from
    run to run; the counts are exact. `benchmarks/results/cache.json` has careful CPU figures.
    """
    runs = [cache[k] for k in OFF_ON]
    labels = [f"cache {k}" for k in OFF_ON]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.15)
    fig.add_bar(x=labels, y=[r["server_cpu_us_per_request"] for r in runs],
                name="server CPU per request (µs)", marker={"color": "#1f77b4"}, row=1, col=1)
    counts = (("requests", "requests", "#c7c7c7"),
              ("cache hits (MAC skipped)", "hits", "#2ca02c"),
              ("replay drops", "replay_drops", "#d62728"))
    for name, key, color in counts:
        ys = [r.get(key) if key != "hits" else (r.get("cache") or {}).get("hits", 0)
              for r in runs]
        fig.add_bar(x=labels, y=ys, name=name, marker={"color": color}, row=1, col=2)
    fig.update_layout(title="State cache off and on: one transfer, duplicated requests "
                            "(CPU: one small run, noisy)",
                      barmode="group", template="plotly_white")
    fig.update_yaxes(title_text="server CPU µs per request", row=1, col=1)
    fig.update_yaxes(title_text="requests", row=1, col=2)
    return legend_on_top(fig)


def skip_figure(dyn: Mapping[str, Any]) -> go.Figure:
    """SKIP on vs off for /dyn (`dyn_fetch`): bytes the server must send. Off is derived, not
    run: without SKIP every reservation's unused rest would travel as padding, i.e. the whole
    reserved stream (`stream_bytes`); on is what the client received (`delivered_bytes`)."""
    labels = ["SKIP off (reservations padded)", "SKIP on (measured)"]
    sent = dyn["delivered_bytes"]
    fig = go.Figure()
    fig.add_bar(x=labels, y=[sent, sent], name="records and framing",
                marker={"color": "#1f77b4"})
    fig.add_bar(x=labels, y=[dyn["skipped_bytes"], 0], name="unused reservations",
                marker={"color": "#ff7f0e"})
    # stacked on purpose: the two parts add up to the bytes one transfer sends
    fig.update_layout(title=f"/dyn with {dyn['records']} records: response bytes sent",
                      barmode="stack", yaxis_title="bytes", template="plotly_white")
    return legend_on_top(fig)


def _gantt(fig: go.Figure, rows: Sequence[Mapping[str, Any]], name: str, color: str) -> None:
    done = [r["done_s"] if r["done_s"] is not None else r["start_s"] for r in rows]
    fig.add_bar(orientation="h", y=[f"request {r['request']}" for r in rows],
                base=[r["start_s"] for r in rows],
                x=[d - r["start_s"] for d, r in zip(done, rows, strict=True)],
                name=name, marker={"color": color},
                customdata=[[r["start_s"], d] for r, d in zip(rows, done, strict=True)],
                hovertemplate="%{y}: %{customdata[0]:.3f} s → %{customdata[1]:.3f} s"
                              f"<extra>{name}</extra>")


def parallel_timeline_figure(par: Mapping[str, Any]) -> go.Figure:
    """When each of the N responses reached the application (`parallel_compare`): pipelined
    on one connection against one connection after another. Bars run from the request's
    start to its last byte delivered in order."""
    fig = go.Figure()
    _gantt(fig, par["parallel_timeline"], "parallel (one connection)", PARALLEL_COLOR)
    _gantt(fig, par["sequential_timeline"], "sequential (one connection each)",
           SEQUENTIAL_COLOR)
    reps = par.get("replicas", 1)
    who = "one server" if reps == 1 else f"{reps} replicas"
    fig.update_layout(
        title=f"{par['requests']} requests, {who}: parallel {par['parallel_s']:.3f} s, "
              f"sequential {par['sequential_s']:.3f} s",
        barmode="group", xaxis_title="simulated time (s)",
        yaxis={"title": "response", "autorange": "reversed"}, template="plotly_white")
    return legend_on_top(fig)


# ---------------------------------------------------------------------------- 09
BYTES_SERIES = (
    ("response bytes / data packet", "resp_bytes_per_data_packet", "#1f77b4"),
    ("request bytes / request", "req_bytes_per_request", "#ff7f0e"),
    ("both directions / data packet", "total_per_data_packet", "#2ca02c"),
)


def continuation_bytes_figure(res: Mapping[str, Any]) -> go.Figure:
    """Continuation bytes on the wire per packet, per mode (`compression.compare`), each
    bar labelled with its change against `off`."""
    modes = list(res["modes"])
    fig = go.Figure()
    for name, key, color in BYTES_SERIES:
        rows = [res["modes"][m] for m in modes]
        text = [f"{r[key]:.0f}" + (f" ({-r['reduction_pct'][key]:+.0f}%)"
                                   if r.get("reduction_pct") else "") for r in rows]
        fig.add_bar(x=[MODE_LABELS.get(m, m) for m in modes], y=[r[key] for r in rows],
                    name=name, marker={"color": color}, text=text, textposition="outside",
                    cliponaxis=False)
    fig.update_layout(
        title=f"Continuation bytes per packet: {res['size']:,} bytes, loss {res['loss']:.1%}",
        barmode="group", xaxis_title="mode", yaxis_title="bytes", template="plotly_white")
    return legend_on_top(fig)


def continuation_forms_figure(res: Mapping[str, Any]) -> go.Figure:
    """Which continuation forms travel in each mode: responses and requests by type,
    stacked (the parts add up to all packets of that direction)."""
    modes = list(res["modes"])
    xs = [MODE_LABELS.get(m, m) for m in modes]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12)
    shown: set[str] = set()
    for col, key in ((1, "response_types"), (2, "request_types")):
        forms = sorted({f for m in modes for f in res["modes"][m][key]},
                       key=lambda f: (list(FORM_COLORS).index(f) if f in FORM_COLORS else 99, f))
        for form in forms:
            fig.add_bar(x=xs, y=[res["modes"][m][key].get(form, 0) for m in modes], name=form,
                        legendgroup=form, showlegend=form not in shown,
                        marker={"color": FORM_COLORS.get(form, "#9467bd")}, row=1, col=col)
            shown.add(form)
    fig.update_layout(title="Continuation forms on the wire, per mode", barmode="stack",
                      template="plotly_white")
    fig.update_xaxes(title_text="responses (server → client)", row=1, col=1)
    fig.update_xaxes(title_text="requests (client → server)", row=1, col=2)
    fig.update_yaxes(title_text="packets", row=1, col=1)
    return legend_on_top(fig)


__all__ = ["cache_figure", "continuation_bytes_figure", "continuation_forms_figure",
           "parallel_timeline_figure", "skip_figure"]
