"""Notebook 06's library: load the benchmark results, draw them, run a small one live.

The notebook stays thin: it loads the committed full results (`benchmarks/results/bench_*.json`,
written by `trickles bench NAME --out …`), draws one figure per experiment and, as root, runs a
small memory experiment live. Every figure tolerates a missing experiment (the notebook then
says which file is absent) so a partial set of results still teaches something.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trickles_kit.bench import memory, report
from trickles_kit.labs import cleanup
from trickles_kit.labs.banner import RootBanner
from trickles_kit.labs.checks import _no, _ok
from trickles_kit.net import sysdeps
from trickles_kit.net.privileges import can_create_netns
from trickles_kit.net.topology import Topology

RESULTS = report.RESULTS
SMALL_LEVELS = (1, 10, 50)


def load_results(directory: str | Path = RESULTS) -> dict[str, dict]:
    """Experiment name -> result: `bench_NAME.json` (committed) or `NAME.json` (a fresh run)."""
    return report.load(Path(directory), "bench_") or report.load(Path(directory))


def missing(results: Mapping[str, dict]) -> list[str]:
    """Experiments with no result file, to say so instead of drawing an empty figure."""
    return [n for n in report.EXPERIMENTS if n not in results]


def headline_rows(results: Mapping[str, dict]) -> list[dict[str, str]]:
    """The README's headline table as records (for a DataFrame)."""
    return [{"measure": a, "Trickles": b, "Linux TCP": c, "note": d}
            for a, b, c, d in report.headline(dict(results))]


def jain(xs: Iterable[float]) -> float:
    """Jain's fairness index: (Σx)² / (n·Σx²); 1 when all equal, 1/n when one takes all."""
    v = [float(x) for x in xs]
    sq = sum(x * x for x in v)
    return sum(v) ** 2 / (len(v) * sq) if v and sq else 0.0


# ====================================================================== figures
def spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(median, min, max) of repeated measurements: a figure shows the median, with the
    repetitions as a min–max error bar, never their sum."""
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("no measurements")
    return statistics.median(v), v[0], v[-1]


def _error_bars(stats: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "array": [hi - m for m, _, hi in stats],
            "arrayminus": [m - lo for m, lo, _ in stats], "thickness": 1.5, "width": 4}


def _runs_text(groups: Sequence[Sequence[float]], unit: str) -> list[str]:
    return [f"{len(g)} runs: " + ", ".join(f"{x:g}" for x in g) + f" {unit}" for g in groups]


def goodput_label(rate_mbit: float, loss: float) -> str:
    """The x category of one (rate, loss) cell of the goodput figure."""
    return f"{rate_mbit} Mbit/s, {loss:.0%} loss"


def goodput_medians(g: Mapping[str, Any]) -> dict[tuple[str, float, float], list[float]]:
    """(kind, rate, loss) -> the goodputs of its successful repetitions (runs with an
    "error" are left out); the figure's bar is their median."""
    out: dict[tuple[str, float, float], list[float]] = {}
    for r in g.get("runs", []):
        if "error" in r:
            continue
        out.setdefault((r["kind"], r["rate_mbit"], r["loss"]), []).append(r["goodput_mbit"])
    return out


def _goodput(g: dict) -> Any:
    import plotly.graph_objects as go

    groups = goodput_medians(g)
    if not groups:
        raise ValueError("no successful goodput run")
    cells = sorted({(rate, loss) for _, rate, loss in groups})
    fig = go.Figure()
    for kind in sorted({k for k, _, _ in groups}):
        mine = [(rate, loss) for rate, loss in cells if (kind, rate, loss) in groups]
        runs = [groups[(kind, rate, loss)] for rate, loss in mine]
        stats = [spread(v) for v in runs]
        fig.add_bar(name=kind, x=[goodput_label(rate, loss) for rate, loss in mine],
                    y=[m for m, _, _ in stats], error_y=_error_bars(stats),
                    hovertext=_runs_text(runs, "Mbit/s"),
                    hovertemplate="%{x}<br>median %{y:.2f} Mbit/s<br>%{hovertext}"
                                  "<extra>" + kind + "</extra>")
    n = max(len(v) for v in groups.values())
    fig.update_layout(title=f"Goodput through the bottleneck (median of {n} runs, bar: min–max)",
                      barmode="group", yaxis={"title": "Mbit/s"},
                      xaxis={"title": "bottleneck rate, random loss", "categoryorder": "array",
                             "categoryarray": [goodput_label(r, lo) for r, lo in cells]},
                      template="plotly_white")
    return fig


def _fairness(f: dict) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    mixes = f.get("mixes", {})
    names = [n for n in mixes if "jain" in mixes[n]]
    if not names:
        raise ValueError("no fairness mix with a Jain index")

    def per_run(name: str, key: str) -> list[float]:
        runs = [r[key] for r in mixes[name].get("runs", []) if key in r]
        return runs or [mixes[name][key]]

    jains = [spread(per_run(n, "jain"))[0] for n in names]
    cats = [f"{n} (Jain {j:.3f})" for n, j in zip(names, jains, strict=True)]
    for key, label in (("trickles_mbit", "Trickles flow"), ("reno_mbit_mean", "Reno flow (mean)")):
        runs = [per_run(n, key) for n in names]
        stats = [spread(v) for v in runs]
        fig.add_bar(name=label, x=cats, y=[m for m, _, _ in stats], error_y=_error_bars(stats),
                    hovertext=_runs_text(runs, "Mbit/s"))
    fig.update_layout(title="Sharing one bottleneck: per-flow goodput (median, bar: min–max) "
                            "and Jain's index", barmode="group", yaxis={"title": "Mbit/s"},
                      xaxis={"title": "flows: 1 Trickles + N Reno (Jain's index, median)"},
                      template="plotly_white")
    return fig


def _cpu(c: dict) -> Any:
    import plotly.graph_objects as go

    per = c.get("cpu_s_per_mb", {})
    kinds = list(per)
    if not kinds:
        raise ValueError("no CPU result")
    runs = [[r["cpu_s_per_mb"] for r in c.get("runs", []) if r.get("kind") == k] or [per[k]]
            for k in kinds]
    stats = [spread(v) for v in runs]
    fig = go.Figure(go.Bar(x=kinds, y=[m for m, _, _ in stats], error_y=_error_bars(stats),
                           text=[f"{m:.4f}" for m, _, _ in stats], textposition="outside",
                           hovertext=_runs_text(runs, "s/MB"), name="CPU s / MB"))
    fig.update_layout(title="Server CPU seconds per MB served (median, bar: min–max)",
                      yaxis={"title": "s / MB"}, xaxis={"title": "server"},
                      template="plotly_white")
    return fig


def _loopback(lo: dict) -> Any:
    import plotly.graph_objects as go

    server = [r["server_packets_per_s"] for r in lo.get("trickles", {}).get("runs", [])
              if "server_packets_per_s" in r] or [lo["server_packets_per_s"]]
    floor = [lo["floor_pairs_per_s"]]
    stats = [spread(server), spread(floor)]
    fig = go.Figure(go.Bar(x=["Trickles server (packets/s)", "raw-socket floor (pairs/s)"],
                           y=[m for m, _, _ in stats], error_y=_error_bars(stats),
                           hovertext=_runs_text([server, floor], "per s"), name="rate"))
    fig.update_layout(title="Loopback: the server against the Python raw-socket floor",
                      yaxis={"title": "per second"}, template="plotly_white")
    return fig


def goodput_vs_rtt(directory: str | Path = RESULTS) -> list[dict[str, Any]]:
    """Goodput against the path's RTT: one record per (RTT, rate, loss, kind) from the
    goodput results of `directory` — the full runs `bench_goodput.json` (no delay) and
    `bench_goodput_rttMS.json` (`trickles bench all`'s RTT grid, --record); while there are
    none through a delay, the quick runs `wan_goodput_rttMS_quick.json` (RTT 0 included),
    so one figure never mixes full and quick runs. The median of each cell's runs, as a share
    of the bottleneck rate too."""
    d = Path(directory)
    files = sorted(d.glob("bench_goodput_rtt*.json"))
    files = (sorted(d.glob("bench_goodput.json")) + files if files
             else sorted(d.glob("wan_goodput_rtt*_quick.json")))
    rows = []
    for f in files:
        g = json.loads(f.read_text())
        rtt = (g.get("rtt") or {}).get("rtt_asked_ms") or 0.0
        for (kind, rate, loss), runs in sorted(goodput_medians(g).items()):
            med = statistics.median(runs)
            rows.append({"rtt_ms": rtt, "rate_mbit": rate, "loss": loss, "kind": kind,
                         "goodput_mbit": round(med, 3), "share_of_rate": round(med / rate, 3),
                         "runs": len(runs), "mode": (g.get("meta") or {}).get("mode")})
    return sorted(rows, key=lambda r: (r["kind"], r["rate_mbit"], r["loss"], r["rtt_ms"]))


def goodput_rtt_figure(rows: Sequence[Mapping[str, Any]], loss: float = 0.0) -> Any:
    """Share of the bottleneck against RTT, one line per protocol and rate, at `loss`."""
    import plotly.graph_objects as go

    fig = go.Figure()
    lines = sorted({(r["kind"], r["rate_mbit"]) for r in rows if r["loss"] == loss})
    for kind, rate in lines:
        pts = sorted((r["rtt_ms"], r["share_of_rate"]) for r in rows
                     if (r["kind"], r["rate_mbit"], r["loss"]) == (kind, rate, loss))
        fig.add_scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines+markers",
                        name=f"{kind} {rate:g} Mbit/s")
    fig.update_layout(title=f"Goodput against RTT ({loss:.0%} random loss)",
                      xaxis={"title": "idle RTT of the path (ms)"},
                      yaxis={"title": "goodput / bottleneck rate", "range": [0, 1.05]},
                      template="plotly_white")
    return fig


def figures(results: Mapping[str, dict]) -> dict[str, Any]:
    """One plotly figure per experiment present in `results` (repetitions as medians with
    min–max bars; legends above the plot, never over an axis title)."""
    from trickles_kit.viz.figures import legend_on_top  # lazy: plotly (lab extra), for figures only

    draw = {"goodput": _goodput, "fairness": _fairness, "memory": memory.figure,
            "cpu": _cpu, "loopback": _loopback}
    out = {}
    for name, fn in draw.items():
        if name in results:
            try:
                out[name] = legend_on_top(fn(results[name]))
            except (KeyError, TypeError, ValueError) as e:  # a result of another shape
                out[name] = _note(f"{name}: cannot draw this result ({type(e).__name__}: {e})")
    return out


def _note(text: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False})
    return fig


# ====================================================================== live
def can_run_live() -> tuple[bool, str]:
    """Whether this kernel may build namespaces and raw sockets (root, the system tools the
    memory experiment runs, namespaces), and how to get there if not."""

    instead = "the committed full results are shown instead."
    if os.geteuid() != 0:
        return False, ("not root: the live run is skipped. Start Jupyter as root "
                       "(sudo .venv/bin/jupyter lab --allow-root notebooks/) or run "
                       "`sudo .venv/bin/trickles bench memory --quick --out reports/bench`; "
                       + instead)
    msg = sysdeps.problem(Topology().tools(), "the live run")
    if msg:
        return False, f"{msg}; {instead}"
    ok, detail = can_create_netns()
    if not ok:
        return False, (f"the live run needs network namespaces, which fail here ({detail}); "
                       + instead)
    return True, "root: the small experiment runs live below"


def live_banner(live: bool) -> RootBanner:
    """What the live cell needs root for and what the notebook shows instead (`live`: whether
    it runs here)."""
    return RootBanner(
        needs="the small memory run, live (two network namespaces and a veth pair)",
        instead="the committed full results (benchmarks/results/bench_*.json, up to 10,000 "
                "connections)",
        live=live, off="Live run switched off (RUN_LIVE = False)",
        how="To run it: start Jupyter as root (sudo .venv/bin/jupyter lab --allow-root "
            "notebooks/), or run `sudo .venv/bin/trickles bench memory --quick --out "
            "reports/bench`.")


def run_small(out_dir: str | Path | None = None,
              levels: Sequence[int] = SMALL_LEVELS, rtt_ms: float = 0.0) -> dict | None:
    """A small memory experiment (a few seconds) as root; None when `can_run_live()` says no.
    `rtt_ms`: the idle RTT of its path (the delay line on the client's way out; 0 = none).

    Without `out_dir` its files go to a temporary directory removed before returning (the
    returned dict is the result), or at interpreter exit if the kernel stops mid-run.
    """
    ok, _ = can_run_live()
    if not ok:
        return None

    if out_dir:
        return memory.run(True, Path(out_dir), levels=list(levels),
                          argv=["notebook 06: run_small"], rtt_ms=rtt_ms)
    out = cleanup.make("tk-bench-small-")
    try:
        return memory.run(True, out, levels=list(levels), argv=["notebook 06: run_small"],
                          rtt_ms=rtt_ms)
    finally:
        cleanup.remove(out)


def memory_table(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per level: Trickles RSS growth, TCP RSS growth, TCP kernel buffers and struct estimate."""
    rows = []
    for t, c in zip(res["trickles"], res["tcp"], strict=True):
        idle = c["server_status_kib_idle"].get("VmRSS", 0) * 1024
        m = c["mid_transfer"]
        rows.append({"connections": t["connections"],
                     "Trickles RSS growth (KiB)": t["server_rss_growth_bytes"] // 1024,
                     "Trickles requests": t["requests_before_measure"],
                     "TCP RSS growth (KiB)": (m["rss_bytes"] - idle) // 1024,
                     "TCP socket buffers (KiB)": m["kernel_buffer_bytes"] // 1024,
                     "TCP socket structs, est. (KiB)": m["socket_structs_estimate_bytes"] // 1024,
                     "all alive": t["all_alive_at_measure"] and c["all_alive_at_measure"]})
    return rows


# ====================================================================== self-checks
def check_jain(answer: Any, rates: Sequence[float]) -> str:
    """Exercise: Jain's index of the given per-flow rates, to three decimals."""
    want = jain(rates)
    try:
        got = float(answer)
    except (TypeError, ValueError):
        return _no(f"answer with a number: the index of these {len(rates)} flows")
    if abs(got - want) <= 5e-3:
        return _ok(f"Jain's index of {list(rates)} is {want:.3f}")
    return _no(f"{got} is {'too high' if got > want else 'too low'}: which is squared, the sum "
               "of the rates or each rate? And what multiplies the sum of squares?")


def check_memory_slope(answer: Any, results: Mapping[str, dict], key: str) -> str:
    """Exercise: read a memory slope (bytes per connection) from the memory result's data."""
    m = results.get("memory")
    if not m:
        return _no("no memory result loaded: run the cell that loads the results first")
    want = m["summary"].get(key)
    try:
        got = float(answer)
    except (TypeError, ValueError):
        return _no("give the slope in bytes per connection (a number)")
    if want is not None and abs(got - want) <= max(50.0, 0.1 * abs(want)):
        return _ok(f"{key} = {want:.0f} bytes per connection")
    return _no("fit a line through (connections, bytes) over the levels: its slope, "
               "not a single level's ratio")


class checks:  # noqa: N801 - a namespace the notebook reads like trickles_kit.labs.checks
    """Self-checks of notebook 06; each returns a verdict starting "OK — " or "Not yet — "."""

    jain = staticmethod(check_jain)
    memory_slope = staticmethod(check_memory_slope)
