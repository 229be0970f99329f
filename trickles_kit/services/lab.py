"""Notebook 07's library: run a services scenario (live as root) or load the committed result.

The cells stay thin: `run()` returns the scenario's result dict, `figure()` the plotly view of
which replica served each packet (from the router's captures), `packets()` the same as a table.
Without root, a system tool or namespaces — or with `live=False` — the committed
`benchmarks/results/services_*.json` are shown instead, under a banner saying why, so the notebook
still teaches on a machine where the live runs cannot happen.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from trickles_kit.net import sysdeps
from trickles_kit.net.privileges import can_create_netns
from trickles_kit.services import report
from trickles_kit.services.replicas import TOOLS
from trickles_kit.services.scenarios import SCENARIOS

TOPOLOGY = """\
failover, balance:                    anycast:
  c ── r ──┬── s1  (10.99.0.1 on lo)    c ── r ──┬── s1                 site A (near)
           └── s2  (10.99.0.1 on lo)             └── r2 ── s2          site B (a hop further)

router r, failover:  ip route replace 10.99.0.1/32 via <active replica>   (health check moves it)
router r, balance:   iptables -t mangle -A PREROUTING -d 10.99.0.1 -m statistic --mode nth \\
                         --every 2 --packet K -j MARK --set-mark K+1
                     ip rule add fwmark K+1 table 100+K
                     ip route add 10.99.0.1/32 via sK table 100+K
router r, anycast:   10.99.0.1/32 via s1 metric 10, via r2 metric 20; mid-transfer: delete the first
"""


def live_check() -> tuple[bool, str]:
    """(can the demos run live here?, why not and how to get there): root, the system tools
    and network namespaces, checked before anything is built."""

    if os.geteuid() != 0:
        return False, ("the live runs need root (namespaces, routes, raw sockets): start Jupyter "
                       "as root (sudo make lab)")
    msg = sysdeps.problem(TOOLS, "the live runs")
    if msg:
        return False, msg
    ok, detail = can_create_netns()
    if not ok:
        return False, f"the live runs need network namespaces, which fail here: {detail}"
    return True, "root, tools and namespaces: the demos run live"


def can_run_live() -> bool:
    return live_check()[0]


class Banner:
    """A notice that stands out in a notebook (HTML) and reads as one line anywhere else."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return ("<div class='trickles-fallback-banner' style='padding:10px 14px;border-left:6px "
                "solid #ff7f0e;background:#fff4e5'>" + html.escape(self.text) + "</div>")


def show_banner(text: str) -> None:
    """Display `text` as a banner in a Jupyter kernel, else print it."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is not None and getattr(get_ipython(), "kernel", None) is not None:
        display(Banner(text))
    else:
        print(text)


def _fallback(scenario: str, kind: str, why: str, rtt_ms: float = 0.0) -> dict:
    res = saved(scenario, kind, rtt_ms)
    show_banner(f"Committed result, not a live run — {why}. Showing what "
                f"`{res['meta']['command']}` recorded.")
    return res


def saved(scenario: str, kind: str = "trickles", rtt_ms: float = 0.0) -> dict:
    """The committed result of a scenario (what `trickles services demo ... --record` wrote),
    through a path of idle RTT `rtt_ms` (0: no delay)."""
    path = report.result_path({"scenario": scenario, "kind": kind,
                               "rtt": {"rtt_asked_ms": rtt_ms}}, report.RESULTS)
    if not path.exists():
        raise FileNotFoundError(f"{path.name}: run `sudo trickles services demo {scenario}"
                                f"{' --tcp' if kind == 'tcp' else ''}"
                                f"{f' --rtt {rtt_ms:g}' if rtt_ms else ''} --record` to make it")
    return json.loads(path.read_text())


def run(scenario: str, kind: str = "trickles", size: int | None = None,
        live: bool | None = None, rtt_ms: float = 0.0) -> dict:
    """Run `scenario` now or load its committed result (with a banner saying why); `rtt_ms`:
    the idle RTT of the path (the delay line in the router; 0 = none).

    `live=None`: live when `live_check()` allows it, and a live run that fails falls back to
    the committed result too. `live=True`: run live, and a missing tool raises
    `MissingToolError` (one line naming it and the install command). `live=False`: committed.
    """

    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}")
    kw: dict = {"kind": kind}
    if size is not None:
        kw["size"] = size
    if rtt_ms:
        kw["rtt_ms"] = rtt_ms
    if live is False:
        return _fallback(scenario, kind, "live=False", rtt_ms)
    if live:
        sysdeps.require(TOOLS, f"the live {scenario} demo")
        return SCENARIOS[scenario](**kw)
    ok, why = live_check()
    if not ok:
        return _fallback(scenario, kind, why, rtt_ms)
    try:
        return SCENARIOS[scenario](**kw)
    except (RuntimeError, OSError) as e:  # TopologyError, AgentError, a tool that died, ...
        return _fallback(scenario, kind, f"the live run failed ({type(e).__name__}: "
                                         f"{str(e)[:300]})", rtt_ms)


def summary(res: dict) -> str:
    return report.summary(res)


def figure(res: dict):
    return report.make_figure(res)


def packets(res: dict):
    """Responses as a pandas table: time (s), replica, payload bytes, TTL at the router."""
    import pandas as pd

    return pd.DataFrame(res.get("timeline") or [], columns=["t", "replica", "size", "ttl"])


def failover_vs_rtt(results: list[dict] | None = None) -> list[dict]:
    """What a replica's death cost against the path's RTT, from the failover results (the
    committed ones by default): Trickles' stall at the client and its RTO + RTT bound, TCP's
    time from the kill to the resumed transfer (reset, reconnect, Range request)."""
    rows = []
    for r in results if results is not None else report.load_results():
        if r.get("scenario") != "failover":
            continue
        tcp = r.get("tcp") or {}
        rows.append({"rtt_ms": report.rtt_asked(r), "kind": r["kind"],
                     "measured_rtt_ms": (r.get("rtt") or {}).get("rtt_measured_ms"),
                     "stall_s": r.get("stall_s") if r["kind"] == "trickles"
                     else tcp.get("recover_s"),
                     "bound_s": r.get("bound_s"), "handshakes": r.get("handshakes")})
    return sorted(rows, key=lambda x: (x["kind"], x["rtt_ms"]))


def failover_rtt_figure(rows: list[dict]) -> Any:
    """Failover stall against RTT: Trickles (and its RTO + RTT bound) against TCP's reset and
    reconnect."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind, label in (("trickles", "Trickles: stall at the client"),
                        ("tcp", "Linux TCP: kill to resumed transfer")):
        pts = [r for r in rows if r["kind"] == kind and r["stall_s"] is not None]
        fig.add_scatter(x=[r["rtt_ms"] for r in pts], y=[r["stall_s"] * 1000 for r in pts],
                        mode="lines+markers", name=label)
    b = [r for r in rows if r["kind"] == "trickles" and r["bound_s"] is not None]
    fig.add_scatter(x=[r["rtt_ms"] for r in b], y=[r["bound_s"] * 1000 for r in b],
                    mode="lines", line={"dash": "dot"}, name="RTO + RTT (the bound)")
    fig.update_layout(title="Failover against the path's RTT",
                      xaxis={"title": "idle RTT (ms)"}, yaxis={"title": "ms"},
                      template="plotly_white")
    return fig
