"""Notebook 06's library: results load, figures draw (or say why not), self-checks judge."""

from __future__ import annotations

import json
import shutil
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
