"""Notebook 06's goodput-against-RTT table and figure (trickles_kit.labs.benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from trickles_kit.labs import benchmark


def _goodput(rtt: float | None, trickles: list[float], reno: list[float]) -> dict:
    runs = [{"kind": "trickles", "rate_mbit": 10, "loss": 0.0, "goodput_mbit": g}
            for g in trickles] + [{"kind": "reno", "rate_mbit": 10, "loss": 0.0,
                                   "goodput_mbit": g} for g in reno]
    runs.append({"kind": "trickles", "rate_mbit": 10, "loss": 0.0, "error": "timed out"})
    out = {"runs": runs, "meta": {"mode": "quick"}}
    if rtt is not None:
        out["rtt"] = {"rtt_asked_ms": rtt, "rtt_measured_ms": rtt + 0.4}
    return out


def test_goodput_vs_rtt_reads_every_rtt(tmp_path: Path) -> None:
    (tmp_path / "bench_goodput.json").write_text(json.dumps(_goodput(None, [9.0], [9.5])))
    (tmp_path / "bench_goodput_rtt50.json").write_text(
        json.dumps(_goodput(50.0, [6.0, 8.0, 7.0], [9.0])))
    (tmp_path / "bench_fairness.json").write_text("{}")  # not a goodput result
    rows = benchmark.goodput_vs_rtt(tmp_path)
    tk = [r for r in rows if r["kind"] == "trickles"]
    assert [(r["rtt_ms"], r["goodput_mbit"], r["runs"]) for r in tk] == [(0.0, 9.0, 1),
                                                                         (50.0, 7.0, 3)]
    assert tk[1]["share_of_rate"] == 0.7 and tk[1]["mode"] == "quick"
    fig = benchmark.goodput_rtt_figure(rows)
    assert {t.name for t in fig.data} == {"trickles 10 Mbit/s", "reno 10 Mbit/s"}
    assert list(fig.data[1].x) == [0.0, 50.0] and list(fig.data[1].y) == [0.9, 0.7]
    assert benchmark.goodput_vs_rtt(tmp_path / "none") == []
    # no full run through a delay: the quick runs, RTT 0 included, never mixed with full ones
    quick = tmp_path / "quick"
    quick.mkdir()
    (quick / "bench_goodput.json").write_text(json.dumps(_goodput(None, [9.0], [9.5])))
    for rtt, g in ((0, 8.0), (100, 5.0)):
        (quick / f"wan_goodput_rtt{rtt}_quick.json").write_text(
            json.dumps(_goodput(float(rtt), [g], [9.0])))
    rows = [r for r in benchmark.goodput_vs_rtt(quick) if r["kind"] == "trickles"]
    assert [(r["rtt_ms"], r["goodput_mbit"]) for r in rows] == [(0.0, 8.0), (100.0, 5.0)]
