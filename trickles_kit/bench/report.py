"""`trickles bench report`: every experiment's JSON in one HTML page, and the README table.

`headline()` picks the numbers the issue asks for from the results (goodput ratio per rate, Jain's
index, memory slope, CPU per MB, packets/s against the floor); `readme_table()` renders them as
the Markdown table between the README's `bench-table` markers, from the committed full results
(`benchmarks/results/bench_*.json`), and `tests/bench/test_bench_report.py` checks the two agree.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
EXPERIMENTS = ("goodput", "fairness", "memory", "cpu", "loopback")


def load(directory: Path, prefix: str = "") -> dict[str, dict]:
    """Experiment name -> result, from `directory/{prefix}NAME.json`."""
    out = {}
    for name in EXPERIMENTS:
        p = Path(directory) / f"{prefix}{name}.json"
        if p.exists():
            out[name] = json.loads(p.read_text())
    return out


def _f(x: object, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _ratio(a: dict, b: dict, key: str) -> str:
    x, y = a.get(key), b.get(key)
    return _f(x / y) if x and y else "–"


def headline(res: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(measure, Trickles, Linux TCP, ratio or note) rows."""
    rows: list[tuple[str, str, str, str]] = []
    g = res.get("goodput")
    if g:
        by = {(r["rate_mbit"], r["loss"], r["kind"]): r for r in g["table"]}
        for (rate, loss, kind), r in sorted(by.items()):
            if kind != "trickles":
                continue
            reno = by.get((rate, loss, "reno"), {})
            cubic = by.get((rate, loss, "cubic"), {})
            ratio = g["ratios"][f"{rate}mbit_loss{loss:g}"]
            rows.append((f"goodput, {rate} Mbit/s, {loss:.0%} loss (Mbit/s, median)",
                         _f(r.get("goodput_mbit")),
                         f"Reno {_f(reno.get('goodput_mbit'))}, "
                         f"Cubic {_f(cubic.get('goodput_mbit'))}",
                         f"{_f(ratio['trickles_over_reno'])} × Reno; at the bottleneck "
                         f"(wire bytes) {_ratio(r, reno, 'wire_utilisation')} ×"))
            d = by.get((rate, loss, "trickles-delta"))
            if d and d.get("goodput_mbit") is not None:
                rows.append((f"goodput, {rate} Mbit/s, {loss:.0%} loss, delta-encoded "
                             f"continuations (`--delta`)", _f(d.get("goodput_mbit")),
                             f"Reno {_f(reno.get('goodput_mbit'))}",
                             f"{_f(ratio.get('trickles_delta_over_reno'))} × Reno"))
    f = res.get("fairness")
    if f:
        for name in ("1+1", "1+4"):
            m = f["mixes"].get(name, {})
            if "jain" in m:
                rows.append((f"fairness 1 Trickles + {name[2:]} Reno at {f['rate_mbit']:g} "
                             f"Mbit/s (Mbit/s; Jain's index)", _f(m.get("trickles_mbit")),
                             f"Reno mean {_f(m.get('reno_mbit_mean'))}",
                             f"Jain {_f(m.get('jain'), '{:.3f}')}"))
    m = res.get("memory")
    if m and "summary" in m:
        s = m["summary"]
        rows.append(("server memory per connection (bytes, slope)",
                     _f(s.get("trickles_bytes_per_connection"), "{:.0f}"),
                     _f(s.get("tcp_bytes_per_connection"), "{:.0f}"),
                     "RSS; TCP: RSS + kernel socket buffers"))
    c = res.get("cpu")
    if c:
        per = c["cpu_s_per_mb"]
        rows.append(("server CPU per MB served (s)", _f(per.get("trickles"), "{:.4f}"),
                     _f(per.get("reno"), "{:.4f}"),
                     f"{_f(c.get('trickles_over_tcp'), '{:.1f}')} × (TCP: no softirq time)"))
    lo = res.get("loopback")
    if lo and lo.get("server_packets_per_s"):
        rows.append(("loopback: server packets/s vs raw-socket floor (pairs/s)",
                     _f(lo["server_packets_per_s"], "{:,.0f}"),
                     "–", f"floor {_f(lo['floor_pairs_per_s'], '{:,.0f}')}: "
                          f"{_f(lo['server_over_floor'], '{:.0%}')} of it; per CPU second "
                          f"{_f(lo.get('server_over_floor_per_cpu_s'), '{:.0%}')}"))
    return rows


def quic_rows(q: dict) -> list[tuple[str, str, str, str, str]]:
    """(measure, RTT, Trickles, Linux TCP, QUIC and ratio) rows of a QUIC baseline run
    (`benchmarks/bench_quic.py`, `trickles bench quic`): the third baseline of issue #15."""
    rows = []
    for r in q.get("goodput", {}).get("table", []):
        rows.append((f"goodput with QUIC, {r['rate_mbit']} Mbit/s, client-measured "
                     "(Mbit/s, median)", f"{r['rtt_ms']:g} ms", _f(r.get("trickles")),
                     f"Reno {_f(r.get('reno'))}",
                     f"QUIC {_f(r.get('quic'))}; Trickles/QUIC "
                     f"{_f(r.get('trickles_over_quic'))}"))
    per = q.get("cpu", {}).get("per_mb", {})
    if per:
        t, tcp, qu = (per.get(k, {}) for k in ("trickles", "reno", "quic"))
        rows.append(("server CPU per MB incl. the kernel's network work (s)", "none",
                     _f(t.get("server_plus_kernel_s"), "{:.4f}"),
                     _f(tcp.get("server_plus_kernel_s"), "{:.4f}"),
                     f"QUIC {_f(qu.get('server_plus_kernel_s'), '{:.4f}')}"))
    mem = q.get("memory", {}).get("bytes_per_connection", {})
    if mem:
        rows.append(("server memory per connection vs QUIC (bytes)", "none",
                     _f(mem.get("trickles"), "{:.0f}"), _f(mem.get("tcp"), "{:.0f}"),
                     f"QUIC {_f(mem.get('quic'), '{:,.0f}')}"))
    return rows


def _quic_result(results_dir: Path) -> dict | None:
    for name in ("bench_quic.json", "quic_baseline.json"):
        p = Path(results_dir) / name
        if p.exists():
            return json.loads(p.read_text())
    return None


def readme_table(results_dir: Path = RESULTS) -> str:
    """The README's headline table, generated from `results_dir/bench_*.json`: each row with
    the RTT its experiment ran at; then the goodput rows of the runs through a delay
    (`bench_goodput_rttMS.json`, `trickles bench goodput --rtt MS`) at the rates and losses
    the targets name."""
    res = load(results_dir, "bench_")
    lines = ["| measure | RTT | Trickles | Linux TCP | ratio / note |", "|---|---|---|---|---|"]
    for name in EXPERIMENTS:
        if name in res:
            rtt = rtt_words(res[name], name)
            lines += [f"| {a} | {rtt} | {b} | {c} | {d} |" for a, b, c, d in
                      headline({name: res[name]})]
    for g in rtt_results(results_dir):
        rtt = rtt_words(g, "goodput")
        lines += [f"| {a} | {rtt} | {b} | {c} | {d} |" for a, b, c, d in
                  headline({"goodput": g}) if _target_cell(a)]
    q = _quic_result(results_dir)
    if q:
        lines += ["| " + " | ".join(row) + " |" for row in quic_rows(q)]
    dates = sorted({r["meta"]["date_utc"][:10] for r in res.values() if "meta" in r})
    machine = next((r["meta"]["machine"] for r in res.values() if "meta" in r), {})
    lines.append("")
    lines.append(f"Full runs of `trickles bench` ({', '.join(dates) or 'no results'}; "
                 f"{machine.get('cpu_model', '?')}, {machine.get('cpu_count', '?')} CPUs); "
                 f"files `benchmarks/results/bench_*.json`. Delay: "
                 f"{_delay(res)}." + (" Rows with an RTT: `trickles bench goodput --rtt MS` "
                                      "(`bench_goodput_rttMS.json`; its mode in the RTT column)."
                                      if rtt_results(results_dir) else ""))
    return "\n".join(lines)


def rtt_results(results_dir: Path = RESULTS) -> list[dict]:
    """The committed goodput runs through a delay, by RTT."""
    runs = [json.loads(p.read_text()) for p in Path(results_dir).glob("bench_goodput_rtt*.json")]
    return sorted(runs, key=lambda r: (r.get("rtt") or {}).get("rtt_asked_ms") or 0.0)


def _target_cell(measure: str) -> bool:
    """Rows of the cells the targets name (10 and 50 Mbit/s, Trickles' own wire)."""
    return ("delta" not in measure and
            any(measure.startswith(f"goodput, {r} Mbit/s") for r in (10, 50)))


def rtt_words(r: dict, name: str = "") -> str:
    """The RTT an experiment ran at: "0" (no delay), "–" (loopback: no path), or asked
    (measured) with the run's mode when it was not a full run."""
    if name == "loopback":
        return "–"
    rtt = r.get("rtt") or {}
    asked = rtt.get("rtt_asked_ms") or 0.0
    if not asked:
        return "0"
    mode = (r.get("meta") or {}).get("mode")
    tail = f"; {mode}" if mode and mode != "full" else ""
    return f"{asked:g} ms ({rtt.get('rtt_measured_ms')}{tail})"


def _delay(res: dict[str, dict]) -> str:
    g = res.get("goodput", {})
    for r in g.get("runs", []):
        if "testbed" in r:
            return r["testbed"]["delay"]
    return "?"


def readme_block(readme: Path) -> str | None:
    """The text between the markers in `readme` (None if the markers are missing)."""
    text = readme.read_text()
    m = re.search(re.escape(START) + r"\n(.*?)\n?" + re.escape(END), text, re.S)
    return m.group(1).strip() if m else None


def update_readme(readme: Path = REPO / "README.md", results_dir: Path = RESULTS) -> bool:
    """Rewrite the table between the markers; True if the file changed."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme}: no {START} … {END} markers")
    new = re.sub(re.escape(START) + r".*?" + re.escape(END),
                 lambda _m: f"{START}\n{readme_table(results_dir)}\n{END}", text, flags=re.S)
    if new != text:
        readme.write_text(new)
    return new != text


def _table_html(rows: list[tuple[str, str, str, str]]) -> str:
    head = "<tr><th>measure</th><th>Trickles</th><th>Linux TCP</th><th>ratio / note</th></tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table>{head}{body}</table>"


def write_report(directory: Path, out: Path | None = None) -> Path:
    """One HTML page: the headline table, each experiment's summary and links to its figures."""
    directory = Path(directory)
    res = load(directory) or load(directory, "bench_")
    if not res:
        raise FileNotFoundError(f"no experiment JSON ({', '.join(EXPERIMENTS)}) in {directory}")
    out = out or directory / "report.html"
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<title>Trickles vs Linux TCP</title><style>body{font-family:sans-serif;margin:2em;"
             "max-width:1200px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px}pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head>"
             "<body><h1>Trickles against Linux TCP</h1>", _table_html(headline(res))]
    for name, r in res.items():
        meta = r.get("meta", {})
        parts.append(f"<h2>{html.escape(name)}</h2><p>command: <code>"
                     f"{html.escape(str(meta.get('command', '?')))}</code>, "
                     f"{html.escape(str(meta.get('date_utc', '')))}, mode "
                     f"{html.escape(str(meta.get('mode', '')))}</p>")
        for key in ("method", "counted", "target"):
            if key in r:
                parts.append(f"<p><b>{key}</b>: {html.escape(str(r[key]))}</p>")
        fig = directory / f"{name}.html"
        if fig.exists():
            parts.append(f"<p>figures: <a href='{fig.name}'>{fig.name}</a></p>")
        brief = {k: v for k, v in r.items() if k not in ("meta", "runs", "trickles", "tcp",
                                                          "mixes", "floor", "method")}
        parts.append("<pre>" + html.escape(json.dumps(brief, indent=1)[:6000]) + "</pre>")
    parts.append("</body></html>\n")
    out.write_text("".join(parts), encoding="utf-8")
    return out
