"""Notebook 07's library: run a services scenario (live as root) or load the committed result.

The cells stay thin: `run()` returns the scenario's result dict, `figure()` the plotly view of
which replica served each packet (from the router's captures), `packets()` the same as a table.
Without root — or with `live=False` — the committed `benchmarks/results/services_*.json` are
shown instead, so the notebook still teaches on a machine where namespaces are not allowed.
"""

from __future__ import annotations

import json
import os

from trickles_kit.services import report

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


def can_run_live() -> bool:
    return os.geteuid() == 0


def saved(scenario: str, kind: str = "trickles") -> dict:
    """The committed result of a scenario (what `trickles services demo` wrote)."""
    path = report.RESULTS / f"services_{scenario}_{kind}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path.name}: run `sudo trickles services demo {scenario}"
                                f"{' --tcp' if kind == 'tcp' else ''}` to make it")
    return json.loads(path.read_text())


def run(scenario: str, kind: str = "trickles", size: int | None = None,
        live: bool | None = None) -> dict:
    """Run `scenario` now (root; `live=None` means: if allowed) or load its committed result."""
    from trickles_kit.services.scenarios import SCENARIOS

    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}")
    if live is None:
        live = can_run_live()
    if not live:
        res = saved(scenario, kind)
        print(f"(not root: showing the committed result of {res['meta']['command']!r})")
        return res
    kw: dict = {"kind": kind}
    if size is not None:
        kw["size"] = size
    return SCENARIOS[scenario](**kw)


def summary(res: dict) -> str:
    return report.summary(res)


def figure(res: dict):
    return report.make_figure(res)


def packets(res: dict):
    """Responses as a pandas table: time (s), replica, payload bytes, TTL at the router."""
    import pandas as pd

    return pd.DataFrame(res.get("timeline") or [], columns=["t", "replica", "size", "ttl"])
