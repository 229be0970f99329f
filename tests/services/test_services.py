"""Network services: failover, per-packet balancing, anycast (trickles_kit/services).

The pure parts (packet attribution from a pcap, the split/handshake/stall arithmetic, the README
table, the notebook checks) run everywhere. The scenarios build namespaces and need root
(`need_root`): small transfers, a few seconds each. The last test interrupts a run with SIGINT
and checks that no namespace and no cgroup is left.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wire_helpers import MACHINE_PATH, REPO, need_root, need_tool

from trickles_kit.services import capture as cap
from trickles_kit.services import checks, report
from trickles_kit.services.cgroup import CpuGroup, stale_groups
from trickles_kit.services.replicas import SERVICE, ServiceBed

SVC = bytes(int(x) for x in SERVICE.split("."))
CLIENT = bytes((10, 70, 0, 2))


# ------------------------------------------------------------------------ pure parts
def _ip(src: bytes, dst: bytes, flags: int, seq: int, payload: int, ttl: int = 64,
        proto: int = 253) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 8080, 20000, seq, 0, 7 << 4, flags, 0, 0, 0) + bytes(8)
    total = 20 + len(tcp) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, ttl, proto, 0, src, dst)
    return ip + tcp + bytes(payload)


def _pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)  # LINKTYPE_RAW
    for t, data in packets:
        out += struct.pack("<IIII", int(t), int(round((t % 1) * 1e6)), len(data), len(data))
        out += data
    path.write_bytes(out)


def test_capture_attribution_and_arithmetic(tmp_path: Path) -> None:
    t = 1000.0
    s1 = [(t, _ip(CLIENT, SVC, cap.SYN, 7, 0)), (t + 0.001, _ip(SVC, CLIENT, 0x10, 1, 1200)),
          (t + 0.002, _ip(CLIENT, SVC, 0x10, 8, 0)), (t + 0.003, _ip(SVC, CLIENT, 0x10, 2, 1200)),
          (t + 0.004, _ip(bytes((10, 1, 1, 1)), CLIENT, 0x10, 2, 1200))]  # not the service
    s2 = [(t + 0.3, _ip(CLIENT, SVC, 0x10, 9, 0)), (t + 0.301, _ip(SVC, CLIENT, 0x10, 3, 1200,
                                                                    ttl=63)),
          (t + 0.302, _ip(SVC, CLIENT, 0x10, 4, 1200, ttl=63))]
    _pcap(tmp_path / "s1.pcap", s1)
    _pcap(tmp_path / "s2.pcap", s2)
    pkts = cap.merge([cap.read_capture(tmp_path / "s1.pcap", "s1", SERVICE),
                      cap.read_capture(tmp_path / "s2.pcap", "s2", SERVICE)])
    assert len(pkts) == 7 and [p.replica for p in pkts].count("s2") == 3
    assert cap.handshakes(pkts) == 1
    assert cap.split(pkts) == {"s1": 0.5, "s2": 0.5}
    assert cap.split(pkts, to_service=True) == {"s1": round(2 / 3, 4), "s2": round(1 / 3, 4)}
    ho = cap.handover(pkts, "s1", "s2")
    assert ho is not None and abs(ho["stall_s"] - 0.298) < 1e-5
    assert cap.handover(pkts, "s2", "s1") is None
    gap, a, b = cap.largest_gap(pkts)
    assert abs(gap - 0.298) < 1e-5 and a < b
    assert {r["ttl"] for r in cap.timeline(pkts) if r["replica"] == "s2"} == {63}
    # a truncated segment and a non-IPv4 frame are not service packets
    assert cap.parse_ip(t, "x", _ip(CLIENT, SVC, 0, 1, 0)[:30], SVC) is None
    assert cap.parse_ip(t, "x", b"\x60" + bytes(59), SVC) is None


def test_readme_table_matches_results() -> None:
    results = report.load_results()
    assert {(r["scenario"], r["kind"]) for r in results} >= {
        ("failover", "trickles"), ("failover", "tcp"), ("balance", "trickles"),
        ("balance", "tcp"), ("load", "trickles"), ("anycast", "trickles"), ("anycast", "tcp")}
    for r in results:
        assert r["meta"]["command"] and "services" in r["meta"]["argv"]
        assert not MACHINE_PATH.search(json.dumps(r))
    assert report.check_readme(), "README table is stale: run `trickles services table`"


def test_render_readme_needs_the_block() -> None:
    with pytest.raises(ValueError, match="services-table"):
        report.render_readme("no table here", "| x |")
    text = f"a\n{report.START}\nold\n{report.END}\nb"
    assert report.render_readme(text, "new") == f"a\n{report.START}\nnew\n{report.END}\nb"


def test_notebook_checks() -> None:
    res = {"timeline": [{"replica": "s1"}, {"replica": "s2"}, {"replica": "s1"},
                        {"replica": "s2"}], "rto_s": 0.2, "rtt_s": 0.002, "stall_s": 0.05}
    assert checks.check_share(0.5, res).startswith("OK")
    assert checks.check_share(50, res).startswith("Not yet")
    assert checks.check_share(None, res).startswith("Not yet")
    assert checks.check_bound(0.202, res).startswith("OK")
    assert checks.check_bound(0.2, res).startswith("Not yet")
    assert checks.check_bound("x", {}).startswith("Not yet")


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        ServiceBed("mirror")
    with pytest.raises(ValueError):
        ServiceBed("failover", n=3)
    with pytest.raises(ValueError):
        CpuGroup("x", 0.0)
    p = subprocess.run([sys.executable, "-m", "trickles_kit.cli", "services", "demo", "nope"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "invalid choice" in p.stderr


# ------------------------------------------------------------------------ live (root)
def _root() -> None:
    need_root("the services scenarios (namespaces, routes, raw sockets)")
    need_tool("tcpdump")
    need_tool("iptables")


def test_failover_trickles_continues_without_handshake() -> None:
    _root()
    from trickles_kit.services.scenarios import run_failover

    r = run_failover("trickles", size=1_500_000, rate_mbit=40)
    assert r["byte_exact"] and r["kill_at_bytes"]
    assert r["handshakes"] == 1
    assert r["packets"]["s2"]["responses"] > 0  # the standby served the rest
    assert r["stall_within_bound"], (r["stall_s"], r["bound_s"])


def test_failover_tcp_is_reset_and_resumes_with_range() -> None:
    _root()
    from trickles_kit.services.scenarios import run_failover

    r = run_failover("tcp", size=1_500_000, rate_mbit=40)
    assert r["byte_exact"] and r["client"]["status"] == 206
    assert r["handshakes"] >= 2 and r["tcp"]["failures"] >= 1
    assert r["tcp"]["recover_s"] is not None


def test_balance_splits_one_connection() -> None:
    _root()
    from trickles_kit.services.scenarios import run_balance

    r = run_balance("trickles", size=1_000_000)
    assert r["byte_exact"] and r["handshakes"] == 1
    assert r["split_within_45_55"], r["split_packets"]
    shares = r["split_packets"].values()
    assert len(shares) == 2 and all(0.45 <= s <= 0.55 for s in shares), r["split_packets"]
    assert len(r["split_responses"]) == 2, r["split_responses"]  # both replicas answered


def test_parallel_requests_served_by_both_replicas() -> None:
    _root()
    from trickles_kit.services.scenarios import run_parallel

    r = run_parallel("trickles", size=100_000, requests=8)
    assert r["byte_exact"] and r["parallel"]["connections"] == 1 and r["handshakes"] == 1
    assert r["sequential"]["connections"] == 8
    assert r["both_replicas_served"], r["split_responses"]


def test_anycast_route_change_mid_transfer() -> None:
    _root()
    from trickles_kit.services.scenarios import run_anycast

    r = run_anycast("trickles", size=1_500_000, rate_mbit=40)
    assert r["byte_exact"] and r["handshakes"] == 1 and r["both_sites_served"]
    assert r["response_ttl"]["s2"] == [63] and r["response_ttl"]["s1"] == [64]


def test_cpu_group_caps_and_is_removed() -> None:
    _root()
    with CpuGroup(f"t{os.getpid()}", 0.3) as g:
        assert g.path.exists() and g.describe()["quota_us"] > 0
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            g.add(p.pid)
            assert str(p.pid) in (g.path / "cgroup.procs").read_text()
        finally:
            p.kill()
            p.wait()
    assert not g.path.exists()


def test_a_small_share_gets_a_longer_period_not_a_refusal() -> None:
    """The kernel refuses a quota under 1 ms: 5 % of a CPU is 1 ms in 20 ms, not 0.25 in 5."""
    from trickles_kit.services.cgroup import period_for

    assert (period_for(0.2), period_for(0.05), period_for(0.01)) == (5_000, 20_000, 100_000)
    _root()
    with CpuGroup(f"s{os.getpid()}", 0.05) as g:
        d = g.describe()
        assert (d["quota_us"], d["period_us"]) == (1_000, 20_000)
        if g.version == 2:
            assert (g.path / "cpu.max").read_text().split() == ["1000", "20000"]
    assert not g.path.exists()


_CHILD = """
import sys, time
from trickles_kit.services.replicas import ServiceBed
with ServiceBed("balance", "trickles", n=2, cpu_fraction=0.5) as bed:
    bed.start_replicas()
    bed.balance()
    bed.start_capture()
    print("ready", flush=True)
    time.sleep(60)
"""


def test_sigint_leaves_nothing_behind() -> None:
    _root()
    p = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = p.stdout.readline() if p.stdout else ""
        assert line.strip() == "ready", p.stderr.read() if p.stderr else ""
        tag = f"tk{p.pid}"
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert tag in names
        assert any(str(p.pid) in g.name for g in stale_groups())
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    time.sleep(0.2)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in names
    assert not any(str(p.pid) in g.name for g in stale_groups())


def test_lab_shows_committed_results_without_live_runs() -> None:
    from trickles_kit.services import lab

    res = lab.run("balance", live=False)
    assert res["scenario"] == "balance" and res["meta"]["command"]
    assert set(lab.packets(res)["replica"]) == {"s1", "s2"}
    assert checks.check_share((lab.packets(res).replica == "s1").mean(), res).startswith("OK")
    pytest.importorskip("plotly")
    assert len(lab.figure(res).data) == 2
    with pytest.raises(ValueError):
        lab.run("mirror", live=False)
