"""The RTT knob of `trickles bench` beyond goodput (issue #15): which experiments take it, the
command a result records, and the client-side delay of the memory experiment's topology (root).
"""

from __future__ import annotations

import argparse
import os

import pytest
from wire_helpers import need_root, need_tool

from trickles_kit.bench.rtt import host_delay, rtt_argv
from trickles_kit.cli.bench import RTT_EXPERIMENTS, _path_kwargs
from trickles_kit.net.topology import Topology


def _args(rtt: float, jitter: float = 0.0) -> argparse.Namespace:
    return argparse.Namespace(rtt=rtt, jitter=jitter)


def test_which_experiments_take_the_rtt(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(RTT_EXPERIMENTS) == {"goodput", "fairness", "cpu", "memory", "quic"}
    assert _path_kwargs(_args(0.0), ["loopback"]) == {}
    assert _path_kwargs(_args(50.0, 5.0), ["cpu"]) == {"rtt_ms": 50.0, "jitter_ms": 5.0}
    # `all`: loopback runs as it is, the others get the RTT
    assert _path_kwargs(_args(50.0), ["goodput", "loopback"]) == {"rtt_ms": 50.0,
                                                                  "jitter_ms": 0.0}
    assert _path_kwargs(_args(50.0), ["loopback"]) is None
    assert "no path to delay" in capsys.readouterr().err
    assert _path_kwargs(_args(10.0, 6.0), ["fairness"]) is None
    assert rtt_argv(50.0, 0.0) == ["--rtt=50"] and rtt_argv(0.0, 0.0) == []
    assert rtt_argv(200.0, 2.5) == ["--rtt=200", "--jitter=2.5"]


def test_host_delay_without_rtt_builds_nothing() -> None:
    with host_delay(None, 0.0, 0.0, "c", "x", ("s", "10.0.0.1")) as rec:
        assert rec["rtt_asked_ms"] == 0.0 and rec["rtt_measured_ms"] is None


def test_host_delay_on_a_direct_link() -> None:
    need_root("network namespaces and NFQUEUE")
    need_tool("iptables")
    with Topology(tag=f"hd{os.getpid() % 100000}") as topo:
        lk = topo.link("c", "s", "10.88.0.1/24", "10.88.0.2/24")
        with host_delay(topo, 20.0, 0.0, "c", lk.dev_a, ("s", "10.88.0.2")) as rec:
            assert abs(rec["rtt_measured_ms"] - 20.0) <= 1.0
            assert rec["delay_mechanism"].startswith("nfqueue delay line 20 ms")
            rules = topo.sh("c", ["iptables", "-S", "OUTPUT"]).stdout
            assert "NFQUEUE" in rules
        # the line stopped with the block: its rule is gone, its counters recorded
        assert "NFQUEUE" not in topo.sh("c", ["iptables", "-S", "OUTPUT"]).stdout
        assert rec["delay_line"]["kernel_dropped"] == 0


def test_rtt_targets_and_where_a_delayed_run_is_recorded(tmp_path) -> None:
    import json

    from trickles_kit.cli.bench import _brief, judge, record

    res = {"rtt": {"rtt_asked_ms": 50.0, "rtt_measured_ms": 50.4}, "table": [],
           "ratio_trickles_over_reno_per_rate": {"10": 0.95},
           "ratios": {"10mbit_loss0": {"trickles_over_reno": 0.95},
                      "10mbit_loss0.01": {"trickles_over_reno": 0.85},
                      "100mbit_loss0": {"trickles_over_reno": 0.3}}}
    brief = _brief("goodput_rtt50", res)
    assert brief["rtt_ms"] == 50.0 and brief["ratios"]["10mbit_loss0"] == 0.95
    got = {t["target"]: t["met"] for t in judge({"goodput_rtt50": brief})}
    assert got == {"goodput Trickles/Reno >= 0.93 at RTT 50 ms, 10 Mbit/s, 0% loss": True,
                   "goodput Trickles/Reno >= 0.9 at RTT 50 ms, 10 Mbit/s, 1% loss": False}
    assert "rtt_ms" not in _brief("goodput", {"ratio_trickles_over_reno_per_rate": {}})
    # `goodput --rtt 50 --record` must not replace the no-delay bench_goodput.json
    out, results = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    results.mkdir()
    (out / "goodput.json").write_text(json.dumps(res))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench-table:start -->\n<!-- bench-table:end -->\n")
    assert [p.name for p in record(["goodput"], out, results, readme)] == [
        "bench_goodput_rtt50.json"]
