"""Plotly figure builders: pure functions from events (or packet rows) to figures.

Every view of the toolkit — live dashboards, replayed captures, reports — draws with these, so a
live run and a decoded capture look the same. Inputs are iterables of `core.events.Event` or of
dicts with the same keys (a DataFrame's `to_dict("records")` works). Nothing here reads files or
sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import plotly.graph_objects as go

from trickles_kit.core.events import Event

SLOT_KINDS = ("initial", "continue", "split", "retransmit", "bootstrap")
KIND_STYLE = {  # colour and marker per event kind, shared by every figure
    "initial": ("#7f7f7f", "circle"),
    "continue": ("#1f77b4", "circle"),
    "split": ("#2ca02c", "triangle-up"),
    "terminate": ("#d62728", "x"),
    "retransmit": ("#ff7f0e", "diamond"),
    "bootstrap": ("#9467bd", "square"),
    "timeout": ("#8c564b", "star"),
    "recovery_start": ("#e377c2", "hexagram"),
}
STATE_NAMES = {0: "NORMAL", 1: "RECOVERY", 2: "BOOTSTRAP"}
TOP_MARGIN_PX = 100  # plotly's default top margin: the title, then up to two legend rows
LEGEND_MAX_PX = 45  # a longer legend scrolls instead of growing over the title or the plot


_GLYPH = {"circle": "●", "triangle-up": "▲", "x": "✕", "diamond": "◆", "square": "■",
          "star": "★", "hexagram": "✶"}


def marker_key_html(kinds: Iterable[str] = ("initial", "continue", "split", "terminate",
                                            "retransmit", "bootstrap", "timeout")) -> str:
    """One line naming the markers of the live panels, in HTML: it needs no plotly.js, so it
    shows at once, before the page has loaded the plotting library."""
    items = []
    for kind in kinds:
        color, symbol = KIND_STYLE[kind]
        items.append(f'<span style="margin-right:14px;white-space:nowrap">'
                     f'<span style="color:{color};font-size:15px">{_GLYPH.get(symbol, "●")}</span>'
                     f" {kind}</span>")
    return ('<div class="trickles-marker-key" style="font:13px sans-serif;margin:2px 0">'
            + "".join(items) + "</div>")


def legend_on_top(fig: go.Figure) -> go.Figure:
    """Title at the top edge, a horizontal legend between it and the plot area.

    Why: plotly's horizontal legend defaults to *below* the plot, onto the x-axis title, and
    a legend growing upward would cover the title. Here the title is pinned to the container's
    top, the legend sits on the plot area's top edge and scrolls past `LEGEND_MAX_PX`, so at any
    width neither covers an axis title, the figure title or the data. Every builder (and the
    lab figures) uses it; trace names and styles are untouched.
    """
    fig.update_layout(
        title={"y": 1.0, "yref": "container", "yanchor": "top", "pad": {"t": 10}},
        legend={"orientation": "h", "x": 0.0, "xanchor": "left", "y": 1.02,
                "yanchor": "bottom", "maxheight": LEGEND_MAX_PX},
        margin={"t": TOP_MARGIN_PX})
    return fig


def _rows(events: Iterable[Event | Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        if isinstance(e, Event):
            out.append({"kind": e.kind, "t": e.t, "side": e.side, "conn_id": e.conn_id,
                        "pkt": e.pkt, "ack": e.ack, "cwnd": e.cwnd, "ssthresh": e.ssthresh,
                        "tcp_base": e.tcp_base, "state": e.state, "detail": e.detail})
        else:
            out.append(dict(e))
    return out


def _server(rows: list[dict], kinds: Iterable[str]) -> list[dict]:
    ks = set(kinds)
    return [r for r in rows if r.get("kind") in ks and r.get("side", "server") == "server"]


def cwnd_figure(events: Iterable[Event | Mapping[str, Any]], x: str = "t",
                title: str = "Congestion window") -> go.Figure:
    """cwnd (and ssthresh when finite) per emitted packet, against time (`x="t"`) or packet
    number (`x="pkt"`); retransmissions, bootstraps and terminations marked."""
    if x not in ("t", "pkt"):
        raise ValueError("x must be 't' or 'pkt'")
    rows = _server(_rows(events), ("initial", "continue", "split", "bootstrap", "terminate",
                                   "retransmit"))
    fig = go.Figure()
    win = [r for r in rows if r["kind"] in ("initial", "continue", "split", "bootstrap")]
    xs = [r[x] if x == "t" else r["pkt"] for r in win]
    fig.add_scatter(x=xs, y=[r["cwnd"] for r in win], mode="lines", name="cwnd",
                    line={"shape": "hv", "color": "#1f77b4"})
    ss = [(xv, r["ssthresh"]) for xv, r in zip(xs, win, strict=True) if 0 < r["ssthresh"] < 4096]
    if ss:
        fig.add_scatter(x=[a for a, _ in ss], y=[b for _, b in ss], mode="lines",
                        name="ssthresh", line={"shape": "hv", "dash": "dot", "color": "#7f7f7f"})
    for kind in ("bootstrap", "retransmit", "terminate"):
        pts = [r for r in rows if r["kind"] == kind]
        if pts:
            color, symbol = KIND_STYLE[kind]
            fig.add_scatter(x=[r[x] if x == "t" else (r["pkt"] if r["pkt"] >= 0 else r["ack"])
                               for r in pts],
                            y=[r["cwnd"] for r in pts], mode="markers", name=kind,
                            marker={"color": color, "symbol": symbol, "size": 8})
    fig.update_layout(title=title, xaxis_title="time (s)" if x == "t" else "packet number",
                      yaxis_title="packets")
    return legend_on_top(fig)


def trickle_lanes(events: Iterable[Event | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Assign every emitted packet to a trickle (lane): a continue keeps its parent's lane, a
    split, initial or bootstrap packet opens a new one, a terminate ends the parent's lane."""
    rows = _server(_rows(events), (*SLOT_KINDS, "terminate"))
    lane_of: dict[int, int] = {}
    lanes = 0
    out = []
    for r in sorted(rows, key=lambda r: (r["t"], r["pkt"])):
        parent = lane_of.get(r["ack"])
        kind = r["kind"]
        if kind == "terminate":
            if parent is not None:
                out.append({**r, "lane": parent, "parent_lane": parent})
            continue
        if kind == "continue" and parent is not None:
            lane = parent
        elif kind == "retransmit":
            lane = parent if parent is not None else -1
        else:
            lane = lanes
            lanes += 1
        if kind != "retransmit":
            lane_of[r["pkt"]] = lane
        out.append({**r, "lane": lane, "parent_lane": parent})
    return out


def trickle_tree_figure(events: Iterable[Event | Mapping[str, Any]],
                        title: str = "Trickles") -> go.Figure:
    """Each trickle a lane; continues extend it, splits branch off a new lane, terminations end
    it (red x). Hover shows packet, ack, cwnd and state."""
    lanes = trickle_lanes(events)
    fig = go.Figure()
    seg_x: list[float | None] = []
    seg_y: list[float | None] = []
    last_t: dict[int, float] = {}
    for r in lanes:
        src = r["parent_lane"]
        if src is not None and src in last_t:
            seg_x += [last_t[src], r["t"], None]
            seg_y += [src, r["lane"], None]
        if r["kind"] != "terminate":
            last_t[r["lane"]] = r["t"]
    fig.add_scatter(x=seg_x, y=seg_y, mode="lines", name="request → packet",
                    line={"color": "#c7c7c7", "width": 1}, hoverinfo="skip")
    for kind in (*SLOT_KINDS, "terminate"):
        pts = [r for r in lanes if r["kind"] == kind]
        if not pts:
            continue
        color, symbol = KIND_STYLE[kind]
        fig.add_scatter(
            x=[r["t"] for r in pts], y=[r["lane"] for r in pts], mode="markers", name=kind,
            marker={"color": color, "symbol": symbol, "size": 7},
            text=[f"pkt {r['pkt']} ← ack {r['ack']}<br>cwnd {r['cwnd']} "
                  f"{STATE_NAMES.get(r['state'], r['state'])}" for r in pts],
            hovertemplate="%{text}<extra>" + kind + "</extra>")
    fig.update_layout(title=title, xaxis_title="time (s)", yaxis_title="trickle")
    return legend_on_top(fig)


def time_sequence_figure(events: Iterable[Event | Mapping[str, Any]],
                         title: str = "Time–sequence (packet numbers)") -> go.Figure:
    """Stevens-style: packets sent (by kind) and packets acknowledged, against time."""
    rows = _rows(events)
    fig = go.Figure()
    for kind in SLOT_KINDS:
        pts = _server(rows, (kind,))
        if pts:
            color, symbol = KIND_STYLE[kind]
            fig.add_scatter(x=[r["t"] for r in pts], y=[r["pkt"] for r in pts], mode="markers",
                            name=f"sent: {kind}", marker={"color": color, "symbol": symbol,
                                                          "size": 5})
    acks = [r for r in rows if r["kind"] == "request" and r.get("side") == "client"]
    if acks:
        fig.add_scatter(x=[r["t"] for r in acks], y=[r["ack"] for r in acks], mode="markers",
                        name="acknowledged (request)",
                        marker={"color": "#17becf", "symbol": "line-ew-open", "size": 6})
    for kind in ("timeout",):
        pts = [r for r in rows if r["kind"] == kind]
        if pts:
            color, symbol = KIND_STYLE[kind]
            fig.add_scatter(x=[r["t"] for r in pts], y=[r.get("pkt", 0) for r in pts],
                            mode="markers", name=kind,
                            marker={"color": color, "symbol": symbol, "size": 12})
    fig.update_layout(title=title, xaxis_title="time (s)", yaxis_title="packet number")
    return legend_on_top(fig)


def goodput_figure(events: Iterable[Event | Mapping[str, Any]], bin_s: float = 0.1,
                   title: str = "Goodput") -> go.Figure:
    """In-order bytes delivered to the application per time bin (client `data` events)."""
    if bin_s <= 0:
        raise ValueError("bin_s must be positive")
    rows = [r for r in _rows(events) if r["kind"] == "data"]
    bins: dict[int, int] = {}
    for r in rows:
        b = int(r["t"] // bin_s)
        bins[b] = bins.get(b, 0) + int(r["detail"].get("bytes", 0))
    xs = sorted(bins)
    fig = go.Figure()
    fig.add_bar(x=[b * bin_s for b in xs], y=[bins[b] * 8 / bin_s / 1e6 for b in xs],
                name="goodput", marker={"color": "#1f77b4"})
    fig.update_layout(title=title, xaxis_title="time (s)", yaxis_title="Mbit/s", bargap=0)
    return legend_on_top(fig)


CONT_FIELDS = ("type", "seq", "first_child", "client_state", "parent", "client_timestamp",
               "timestamp", "mrtt", "state", "first_loss", "first_bootstrap_seq", "start_cwnd",
               "ssthresh", "tcp_base", "conn_id", "key_epoch")


def continuation_inspector(row: Mapping[str, Any], previous: Mapping[str, Any] | None = None,
                           title: str = "Continuation") -> go.Figure:
    """A table of one packet's continuation fields; fields that changed since `previous` are
    highlighted, and MAC / nonce verdicts (when present: True/False/None) coloured."""
    names, values, colors = [], [], []
    for f in CONT_FIELDS:
        if f not in row:
            continue
        v = row[f]
        names.append(f)
        values.append(STATE_NAMES.get(v, v) if f == "state" else v)
        changed = previous is not None and previous.get(f) != v
        colors.append("#fff3b0" if changed else "white")
    for f in ("mac_ok", "nonce_ok"):
        if f in row and row[f] is not None:
            names.append(f.replace("_ok", ""))
            values.append("ok" if row[f] else "FAIL")
            colors.append("#c7f0c7" if row[f] else "#f7c6c6")
    fig = go.Figure(go.Table(
        header={"values": ["field", "value"], "fill_color": "#e8e8e8"},
        cells={"values": [names, values], "fill_color": [colors, colors]}))
    fig.update_layout(title=title)
    return fig


def nonce_panel(blocks: Iterable[Mapping[str, Any]], title: str = "Nonce checks") -> go.Figure:
    """Per SACK block: the range claimed, the summary sent, the summary expected, the verdict.
    Each item: {"left", "right", "claimed", "expected"} (ints); verdict = claimed == expected."""
    items = list(blocks)
    verdict = ["ok" if b["claimed"] == b["expected"] else "REJECTED" for b in items]
    color = ["#c7f0c7" if v == "ok" else "#f7c6c6" for v in verdict]
    fig = go.Figure(go.Table(
        header={"values": ["block", "claimed", "expected", "verdict"], "fill_color": "#e8e8e8"},
        cells={"values": [[f"[{b['left']}, {b['right']}]" for b in items],
                          [f"{b['claimed']:#010x}" for b in items],
                          [f"{b['expected']:#010x}" for b in items], verdict],
               "fill_color": ["white", "white", "white", color]}))
    fig.update_layout(title=title)
    return fig
