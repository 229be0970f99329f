"""Notebook 06's library: results load, figures draw (or say why not), self-checks judge."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from trickles_kit.labs import benchmark

COMMITTED = benchmark.RESULTS / "bench_memory.json"


def _memory() -> dict:
    return json.loads(COMMITTED.read_text())


def test_jain_index_bounds() -> None:
    assert benchmark.jain([5, 5, 5]) == pytest.approx(1.0)
    assert benchmark.jain([9, 0, 0]) == pytest.approx(1 / 3)
    assert benchmark.jain([4, 4, 1]) == pytest.approx(81 / 99)
    assert benchmark.jain([]) == 0.0


def test_load_results_prefers_committed_names_then_fresh_ones(tmp_path: Path) -> None:
    assert benchmark.load_results(tmp_path) == {}
    shutil.copy(COMMITTED, tmp_path / "memory.json")  # what `trickles bench memory` writes
    assert set(benchmark.load_results(tmp_path)) == {"memory"}
    assert "memory" not in benchmark.missing(benchmark.load_results(tmp_path))
    assert "memory" in benchmark.load_results()  # the committed full run


def test_committed_memory_result_is_the_full_run_and_all_alive() -> None:
    m = _memory()
    cmd = m["meta"]["command"]
    assert m["meta"]["mode"] == "full" and (
        "trickles_kit.bench.memory" in cmd or "bench memory" in cmd), cmd
    assert [r["connections"] for r in m["trickles"]] == [1, 10, 100, 1000, 10000]
    s = m["summary"]
    assert s["all_alive_at_measure"] and s["all_byte_exact"] and s["tcp_sockstat_inuse_matches"]
    assert m["namespaces_left"] == []


def test_memory_table_and_figures() -> None:
    pytest.importorskip("plotly")
    m = _memory()
    rows = benchmark.memory_table(m)
    assert [r["connections"] for r in rows] == [1, 10, 100, 1000, 10000]
    assert all(r["all alive"] for r in rows)
    figs = benchmark.figures({"memory": m, "goodput": {"runs": [{"kind": "reno"}]}})
    assert set(figs) == {"memory", "goodput"}
    assert len(figs["memory"].data) == 3  # Trickles, TCP + buffers, TCP + structs
    assert figs["goodput"].layout.annotations  # another shape: a note, not an exception
    assert benchmark.headline_rows({"memory": m})[0]["measure"].startswith("server memory")


def _committed(name: str) -> dict:
    return json.loads((benchmark.RESULTS / f"bench_{name}.json").read_text())


def test_goodput_bars_are_the_median_of_the_repetitions_not_their_sum() -> None:
    """The committed runs have 3 repetitions per cell: a bar is their median (the table's
    number), the error bar spans min..max, and no category holds two bars of one protocol."""
    pytest.importorskip("plotly")
    g = _committed("goodput")
    fig = benchmark.figures({"goodput": g})["goodput"]
    table = {(r["kind"], benchmark.goodput_label(r["rate_mbit"], r["loss"])): r
             for r in g["table"]}
    assert fig.layout.barmode != "stack"
    drawn = 0
    for tr in fig.data:
        xs, ys = list(tr.x), list(tr.y)
        assert len(xs) == len(set(xs)), f"{tr.name}: one bar per category, not one per run"
        for x, y, up, down in zip(xs, ys, tr.error_y.array, tr.error_y.arrayminus, strict=True):
            row = table[(tr.name, x)]
            runs = row["goodput_mbit_runs"]
            assert y == pytest.approx(statistics.median(runs)) == pytest.approx(row["goodput_mbit"])
            assert y + up == pytest.approx(max(runs)) and y - down == pytest.approx(min(runs))
            assert y <= row["rate_mbit"], f"{tr.name} at {x}: more than the bottleneck"
            drawn += 1
    assert drawn == len(table)


def test_goodput_figure_leaves_failed_runs_out() -> None:
    pytest.importorskip("plotly")
    runs = [{"kind": "reno", "rate_mbit": 10, "loss": 0.0, "goodput_mbit": v} for v in (9, 7, 8)]
    runs.append({"kind": "reno", "rate_mbit": 10, "loss": 0.0, "error": "timeout"})
    tr = benchmark.figures({"goodput": {"runs": runs}})["goodput"].data[0]
    assert list(tr.y) == [8]
    assert list(tr.error_y.array) == [1] and list(tr.error_y.arrayminus) == [1]
    only_errors = benchmark.figures({"goodput": {"runs": runs[-1:]}})["goodput"]
    assert only_errors.layout.annotations and not only_errors.data  # a note, not empty axes


def test_other_06_figures_show_medians_with_min_max() -> None:
    pytest.importorskip("plotly")
    res = {n: _committed(n) for n in ("fairness", "cpu", "loopback")}
    figs = benchmark.figures(res)
    mixes = res["fairness"]["mixes"]
    for tr, key in zip(figs["fairness"].data, ("trickles_mbit", "reno_mbit_mean"), strict=True):
        for y, up, name in zip(tr.y, tr.error_y.array, mixes, strict=True):
            runs = [r[key] for r in mixes[name]["runs"]]
            assert y == pytest.approx(statistics.median(runs)) == pytest.approx(mixes[name][key])
            assert y + up == pytest.approx(max(runs))
    cpu = figs["cpu"].data[0]
    for kind, y in zip(cpu.x, cpu.y, strict=True):
        runs = [r["cpu_s_per_mb"] for r in res["cpu"]["runs"] if r["kind"] == kind]
        assert y == pytest.approx(statistics.median(runs)) == res["cpu"]["cpu_s_per_mb"][kind]
    lo = figs["loopback"].data[0]
    runs = [r["server_packets_per_s"] for r in res["loopback"]["trickles"]["runs"]]
    assert lo.y[0] == statistics.median(runs) == res["loopback"]["server_packets_per_s"]
    for fig in figs.values():  # legends above the plot area, not over the x-axis title
        assert fig.layout.legend.yanchor == "bottom" and fig.layout.legend.y >= 1


def test_self_checks_judge_answers() -> None:
    m = {"memory": _memory()}
    key = "tcp_bytes_per_connection_with_socket_structs"
    want = m["memory"]["summary"][key]
    assert benchmark.checks.memory_slope(want, m, key).startswith("OK")
    assert benchmark.checks.memory_slope(want * 3, m, key).startswith("Not yet")
    assert benchmark.checks.memory_slope(None, m, key).startswith("Not yet")
    assert benchmark.checks.memory_slope(1, {}, key).startswith("Not yet")
    assert benchmark.checks.jain(0.818, [4, 4, 1]).startswith("OK")
    assert benchmark.checks.jain(0.9, [4, 4, 1]).startswith("Not yet")
    assert benchmark.checks.jain("x", [4, 4, 1]).startswith("Not yet")


def test_run_small_without_root_says_how(monkeypatch) -> None:
    monkeypatch.setattr(benchmark.os, "geteuid", lambda: 1000)
    ok, why = benchmark.can_run_live()
    assert not ok and "sudo" in why
    assert benchmark.run_small() is None
