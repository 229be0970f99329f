"""The services demos through a path with propagation delay (`--rtt`, issue #15).

Pure parts everywhere: result names and the README table carry the RTT, bad options are refused.
Live parts as root: `trickles services demo failover --rtt 50` records the RTT it measured, the
transfer survives the replica's death without a handshake, TCP resets and resumes, the
pre-flight refuses a path whose RTT is not the one asked for, and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wire_helpers import REPO, need_root, need_tool

from trickles_kit.net.rttprobe import RttPreflightError, preflight
from trickles_kit.services import report
from trickles_kit.services.replicas import SERVICE, ServiceBed

RTT = 50.0


def _res(asked: float, measured: float | None = None) -> dict:
    return {"scenario": "failover", "kind": "trickles",
            "rtt": {"rtt_asked_ms": asked, "rtt_measured_ms": measured}}


def test_result_names_and_table_carry_the_rtt() -> None:
    assert report.result_path(_res(0.0), Path("d")) == Path("d/services_failover_trickles.json")
    assert report.result_path({"scenario": "failover", "kind": "tcp"}, Path("d")).name == \
        "services_failover_tcp.json"  # results from before the RTT knob
    assert report.result_path(_res(50.0, 50.3), Path("d")).name == \
        "services_failover_trickles_rtt50.json"
    assert report.rtt_words(_res(0.0)) == "—"
    assert report.rtt_words(_res(200.0, 200.4)) == "200 ms (measured 200.4)"
    assert report.table([]).splitlines()[0] == \
        "| scenario | stack | RTT | what happened | file |"


def test_bad_rtt_is_refused() -> None:
    for rtt, jitter in ((-1.0, 0.0), (10.0, 6.0)):
        with pytest.raises(ValueError, match="jitter"):
            ServiceBed("failover", rtt_ms=rtt, jitter_ms=jitter)
    p = subprocess.run([sys.executable, "-m", "trickles_kit.cli", "services", "demo",
                        "failover", "--rtt", "10", "--jitter", "6", "--no-save"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2, p.stderr


# ------------------------------------------------------------------------ live (root)
def _root() -> None:
    need_root("the services scenarios with a delay line (namespaces, NFQUEUE)")
    for tool in ("tcpdump", "iptables"):
        need_tool(tool)


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_failover_demo_with_rtt_records_the_measured_rtt(tmp_path: Path) -> None:
    _root()
    p = subprocess.Popen([sys.executable, "-m", "trickles_kit.cli", "services", "demo",
                          "failover", "--rtt", f"{RTT:g}", "--size", "1500000", "--out",
                          str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=REPO)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, out + err
    assert "RTT 50 ms (measured" in out
    res = json.loads((tmp_path / "services_failover_trickles_rtt50.json").read_text())
    rtt = res["rtt"]
    assert rtt["rtt_asked_ms"] == RTT and abs(rtt["rtt_measured_ms"] - RTT) <= 1.0
    assert rtt["delay_mechanism"].startswith("nfqueue delay line 25 ms each way")
    assert rtt["delay_line_final"]["packets"] > 1000  # the transfer went through the line
    assert rtt["delay_line_final"]["kernel_dropped"] == 0
    assert "--rtt=50" in res["meta"]["command"]
    assert res["byte_exact"] and res["handshakes"] == 1
    assert res["packets"]["s2"]["responses"] > 0
    # the handshake crossed the delay: its RTT is at least the one asked for
    assert res["rtt_s"] >= RTT / 1000
    assert f"tk{p.pid}" not in _namespaces()  # the demo's namespaces (tagged with its pid)


def test_failover_tcp_with_rtt_resets_and_resumes() -> None:
    _root()
    from trickles_kit.services.scenarios import run_failover

    r = run_failover("tcp", size=3_000_000, rate_mbit=40, rtt_ms=RTT)
    assert r["byte_exact"] and r["handshakes"] >= 2, r.get("tcp")
    assert abs(r["rtt"]["rtt_measured_ms"] - RTT) <= 1.0
    # resuming costs at least a new handshake and the Range request's round trip
    assert r["tcp"]["recover_s"] is not None and r["tcp"]["recover_s"] >= 2 * RTT / 1000


def test_preflight_refuses_a_path_that_is_not_the_rtt_asked() -> None:
    _root()
    with ServiceBed("failover", rtt_ms=20.0, tag=f"rt{os.getpid()}") as bed:
        assert abs(bed.rtt["rtt_measured_ms"] - 20.0) <= 1.0
        with pytest.raises(RttPreflightError, match="asked for 40 ms"):
            preflight(bed.topo, delay_ms=20.0, ends=("c", "s1", SERVICE), mechanism="test")
        tag = bed.topo.tag
        ns_r = bed.topo.ns("r")
    assert tag not in _namespaces()
    # the line's rules went with it (the namespace is gone; nothing is left in this one)
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    assert f"tkdl{tag}" not in rules and ns_r not in _namespaces()


def test_failover_against_rtt_rows_and_figure() -> None:
    from trickles_kit.services import lab

    res = [{"scenario": "failover", "kind": "trickles", "stall_s": 0.07, "bound_s": 0.26,
            "handshakes": 1, "rtt": {"rtt_asked_ms": 50.0, "rtt_measured_ms": 50.6}},
           {"scenario": "failover", "kind": "trickles", "stall_s": 0.2, "bound_s": 0.21,
            "handshakes": 1},
           {"scenario": "failover", "kind": "tcp", "tcp": {"recover_s": 0.27},
            "handshakes": 2, "rtt": {"rtt_asked_ms": 50.0, "rtt_measured_ms": 50.5}},
           {"scenario": "balance", "kind": "trickles"}]
    rows = lab.failover_vs_rtt(res)
    assert [(r["kind"], r["rtt_ms"], r["stall_s"]) for r in rows] == [
        ("tcp", 50.0, 0.27), ("trickles", 0.0, 0.2), ("trickles", 50.0, 0.07)]
    fig = lab.failover_rtt_figure(rows)
    assert [list(t.y) for t in fig.data] == [[200.0, 70.0], [270.0], [210.0, 260.0]]
    # the committed results load, whatever RTTs they hold
    assert all(r["kind"] in ("trickles", "tcp") for r in lab.failover_vs_rtt())
