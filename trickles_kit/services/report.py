"""Results of the services demos: JSON with metadata, plotly figures, the README table.

Files are `benchmarks/results/services_<scenario>_<stack>.json`; the README table between
`<!-- services-table:start -->` and `<!-- services-table:end -->` is generated from whatever JSON
files are there, and `check_readme` says whether it is current. A figure is a function of its
JSON (`make_figure`), so the committed results carry none: `write_figures` draws them on demand
into a git-ignored directory (`trickles services figure`), a user's runs get theirs beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

from trickles_kit.bench.meta import REPO, meta

RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
START, END = "<!-- services-table:start -->", "<!-- services-table:end -->"
ORDER = ("failover", "balance", "load", "anycast")


def result_path(res: dict, out_dir: Path = RESULTS) -> Path:
    """`services_SCENARIO_STACK.json`, with `_rttMS` when a delay was asked for (--rtt)."""
    asked = rtt_asked(res)
    tail = f"_rtt{asked:g}" if asked else ""
    return out_dir / f"services_{res['scenario']}_{res['kind']}{tail}.json"


def rtt_asked(res: dict) -> float:
    return float((res.get("rtt") or {}).get("rtt_asked_ms") or 0.0)


def rtt_words(res: dict) -> str:
    """The path's RTT as asked and as measured by the pre-flight ("—": no delay asked)."""
    r = res.get("rtt") or {}
    if not r.get("rtt_asked_ms"):
        return "—"
    return f"{r['rtt_asked_ms']:g} ms (measured {r.get('rtt_measured_ms')})"


def save(res: dict, argv: list[str], out_dir: Path = RESULTS, figure: bool = True) -> Path:
    """Write `res` with the run's metadata (command, machine, code); with `figure`, the figure
    next to it (never for the committed results: `write_figures` draws those from the JSON)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = result_path(res, out_dir)
    path.write_text(json.dumps({"meta": meta(argv, "services"), **res}, indent=1) + "\n")
    if figure:
        write_figure(res, path.with_suffix(".html"))
    return path


def write_figure(res: dict, out: Path) -> Path | None:
    """`make_figure(res)` as an HTML page at `out` (plotly.js from its CDN); None without
    plotly."""
    fig = make_figure(res)
    if fig is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(out, include_plotlyjs="cdn")
    return out


def write_figures(out_dir: Path, results: Path = RESULTS) -> list[Path]:
    """The figure of every `services_*.json` in `results`, drawn into `out_dir` (same names,
    `.html`): the committed results' figures on demand."""
    written = []
    for p in sorted(results.glob("services_*.json")):
        out = write_figure(json.loads(p.read_text()), out_dir / p.with_suffix(".html").name)
        if out is not None:
            written.append(out)
    return written


def load_results(out_dir: Path = RESULTS) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(out_dir.glob("services_*.json"))]
    return sorted(rows, key=lambda r: (ORDER.index(r["scenario"]) if r["scenario"] in ORDER
                                       else 99, r["kind"] != "trickles", rtt_asked(r)))


# ------------------------------------------------------------------------------- words
def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1000:.0f} ms"


def _yes(b: object) -> str:
    return "yes" if b else "**no**"


def outcome(res: dict) -> str:
    """One line: what happened, in the terms of the acceptance points."""
    sc, kind = res["scenario"], res["kind"]
    if sc == "failover" and kind == "trickles":
        ho = (res.get("handover") or {}).get("stall_s")
        return (f"byte-exact {_yes(res['byte_exact'])}; handshakes {res['handshakes']}; stall "
                f"at the client {_ms(res['stall_s'])} (router: last s1 → first s2 packet "
                f"{_ms(ho)}) ≤ RTO + RTT = {_ms(res['bound_s'])}: "
                f"{_yes(res['stall_within_bound'])}"
                + (f" (with the handshake's RTT, {_ms(res['strict_bound_s'])}: "
                   f"{_yes(res['stall_within_strict_bound'])})"
                   if res.get("strict_bound_s") not in (None, res["bound_s"]) else ""))
    if sc in ("failover", "anycast") and kind == "tcp":
        t = res.get("tcp") or {}
        fails = res["client"].get("fails") or []
        what = t.get("what_happened") or (fails[0]["error"] if fails else "no failure")
        rec = t.get("recover_s")
        if rec is None and fails and fails[0].get("resumed_t"):
            rec = fails[0]["resumed_t"] - fails[0]["t"]
        tail = f"; both sites served {_yes(res.get('both_sites_served'))}" if sc == "anycast" \
            else ""
        return (f"connection dies ({what}); Range request recovers in {_ms(rec)}; "
                f"byte-exact {_yes(res['byte_exact'])}; handshakes {res['handshakes']}{tail}")
    if sc == "anycast":
        ttl = ", ".join(f"{k} TTL {'/'.join(map(str, v))}" for k, v in res["response_ttl"].items())
        return (f"byte-exact {_yes(res['byte_exact'])}; handshakes {res['handshakes']}; both "
                f"sites served {_yes(res['both_sites_served'])} ({ttl})")
    if sc == "balance":
        sp = " / ".join(f"{k} {v * 100:.1f} %" for k, v in res["split_responses"].items())
        if res.get("split_packets"):
            sp = " / ".join(f"{k} {v * 100:.1f} %" for k, v in res["split_packets"].items()) \
                + f" (responses {sp})"
        fails = res["client"].get("fails") or []
        extra = "" if kind == "trickles" else \
            f"; failed attempts before one got through {sum(f['attempts'] for f in fails)}"
        what = "packets" if res.get("split_packets") else "responses"
        return (f"{what} {sp}; 45–55 % {_yes(res['split_within_45_55'])}; handshakes "
                f"{res['handshakes']}; byte-exact {_yes(res['byte_exact'])}{extra}")
    if sc == "load":
        q = res["cpu_quota"]["fraction_of_one_cpu"]
        return (f"{res['clients']} clients, {q * 100:.0f} % of a CPU per replica: "
                f"{res['one_replica']['goodput_mbit']:.1f} → "
                f"{res['two_replicas']['goodput_mbit']:.1f} Mbit/s = {res['speedup']:.2f}× "
                f"(≥ 1.6× {_yes(res['speedup_at_least_1_6'])})"
                + (f"; median of {res['repeats']} pairs: "
                   + ", ".join(f"{x:.2f}×" for x in res["speedups_all_pairs"])
                   if res.get("repeats", 1) > 1 else ""))
    if sc == "parallel":
        sp = " / ".join(f"{k} {v * 100:.1f} %" for k, v in sorted(res["split_responses"].items()))
        return (f"{res['requests']} GETs of {res['size'] // 1000} kB on one connection: "
                f"data packets {sp}; both replicas served {_yes(res['both_replicas_served'])}; "
                f"handshakes {res['handshakes']}; {res['parallel']['seconds']:.2f} s pipelined "
                f"vs {res['sequential']['seconds']:.2f} s one after another; byte-exact "
                f"{_yes(res['byte_exact'])}")
    return "?"


def summary(res: dict) -> str:
    rtt = rtt_words(res)
    at = "" if rtt == "—" else f", RTT {rtt}"
    return f"services {res['scenario']} ({res['kind']}{at}): {outcome(res)}"


def table(results: list[dict]) -> str:
    lines = ["| scenario | stack | RTT | what happened | file |", "|---|---|---|---|---|"]
    for r in results:
        name = result_path(r, Path()).name
        lines.append(f"| {r['scenario']} | {r['kind']} | {rtt_words(r)} | {outcome(r)} | "
                     f"[{name}](benchmarks/results/{name}) |")
    return "\n".join(lines)


def render_readme(text: str, tbl: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README has no {START} … {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{tbl}\n{END}{tail}"


def update_readme(readme: Path = README, out_dir: Path = RESULTS) -> bool:
    """Regenerate the table; True if the file changed."""
    text = readme.read_text()
    new = render_readme(text, table(load_results(out_dir)))
    if new != text:
        readme.write_text(new)
        return True
    return False


def check_readme(readme: Path = README, out_dir: Path = RESULTS) -> bool:
    text = readme.read_text()
    return render_readme(text, table(load_results(out_dir))) == text


# ------------------------------------------------------------------------------- figures
COLORS = {"s1": "#1f77b4", "s2": "#ff7f0e", "s3": "#2ca02c", "s4": "#d62728"}


def make_figure(res: dict):
    """Which replica served each packet (a dot per response at its capture time), or the
    goodput bars of the load run. None without plotly."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    if res["scenario"] == "load":
        fig = go.Figure(go.Bar(x=["1 replica", "2 replicas (per-packet)"],
                               y=[res["one_replica"]["goodput_mbit"],
                                  res["two_replicas"]["goodput_mbit"]]))
        fig.update_layout(title=f"{res['clients']} clients, CPU-capped replicas: aggregate "
                                f"goodput ({res['speedup']:.2f}×)", yaxis_title="Mbit/s")
        return fig
    rows = res.get("timeline") or []
    fig = go.Figure()
    for name in sorted({r["replica"] for r in rows}):
        pts = [r for r in rows if r["replica"] == name]
        fig.add_trace(go.Scattergl(x=[r["t"] for r in pts], y=[name] * len(pts), mode="markers",
                                   name=name, marker={"size": 4, "color": COLORS.get(name)}))
    for key, label in (("kill_t", "s1 killed"), ("move_t", "s1 withdrawn")):
        if res.get(key) is not None:
            fig.add_vline(x=res[key], line_dash="dash", annotation_text=label)
    fig.update_layout(title=f"{res['scenario']} ({res['kind']}): which replica served each "
                            "packet", xaxis_title="time (s)", yaxis_title="replica",
                      height=320)
    return fig
