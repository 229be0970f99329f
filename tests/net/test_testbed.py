"""The benchmark testbed leaves nothing behind, and the capture analysis reads what it should.

Root tests build the real client/router/server namespaces (skipped outside CI without root); the
flow-analysis tests run on synthetic LINUX_SLL2 captures and need nothing.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from wire_helpers import REPO, need_root, need_tool, signal_child

from trickles_kit.bench import flows as fl
from trickles_kit.net.testbed import (
    CLIENT,
    ROUTER,
    SERVER_ADDR,
    Testbed,
    TestbedConfig,
)
from trickles_kit.net.topology import list_namespaces

CLIENT_ADDR = "10.77.1.2"


# ---------------------------------------------------------------------------- synthetic pcaps
def _ip(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    total = 20 + len(payload)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, proto, 0,
                       bytes(int(x) for x in src.split(".")),
                       bytes(int(x) for x in dst.split("."))) + payload


def _tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes,
         option: bytes = b"") -> bytes:
    doff = (20 + len(option)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) \
        + option + payload


def _tk_response(sport: int, dport: int, pkt: int, byte_num: int, n: int) -> bytes:
    hdr = bytes(40)  # stands for nonce, siblings, continuation...: only its length matters
    opt = struct.pack("!BBHH", 253, 6, fl.TK_EXID, len(hdr)) + b"\x01\x01"
    chunk = struct.pack("!BHI", 2 << 4, 7 + n, byte_num) + bytes(n)
    return _tcp(sport, dport, pkt, 0, 0x10, hdr + chunk, opt)


class Pcap:
    """A classic pcap in LINUX_SLL2, as tcpdump -i any -y LINUX_SLL2 writes it."""

    def __init__(self) -> None:
        self.recs: list[bytes] = []

    def add(self, t: float, ifindex: int, outgoing: bool, ip: bytes, snap: int = 256) -> None:
        frame = struct.pack("!HHIHBB8s", 0x0800, 0, ifindex, 1, 4 if outgoing else 0, 6,
                            bytes(8)) + ip
        cap = frame[:snap]
        self.recs.append(struct.pack("<IIII", int(t), int(round((t % 1) * 1e6)), len(cap),
                                     len(frame)) + cap)

    def write(self, path: Path) -> Path:
        hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, fl.LINKTYPE_LINUX_SLL2)
        path.write_bytes(hdr + b"".join(self.recs))
        return path


TO_SERVER, TO_CLIENT = 7, 5


def test_tcp_flow_goodput_retransmission_drop_and_in_flight(tmp_path: Path) -> None:
    p = Pcap()
    isn = 1000
    # the client's SYN enters at t=1; the server's SYN/ACK
    p.add(1.0, TO_CLIENT, False, _ip(CLIENT_ADDR, SERVER_ADDR, 6, _tcp(40000, 8001, 5, 0, 2,
                                                                         b"")))
    p.add(1.001, TO_SERVER, False, _ip(SERVER_ADDR, CLIENT_ADDR, 6,
                                       _tcp(8001, 40000, isn, 6, 0x12, b"")))
    seg = 1000
    t = 1.012
    for i in range(10):  # 10 segments; segment 3 dropped in the router, then retransmitted
        ip = _ip(SERVER_ADDR, CLIENT_ADDR, 6, _tcp(8001, 40000, isn + 1 + i * seg, 6, 0x10,
                                                   bytes(seg)))
        p.add(t, TO_SERVER, False, ip)
        if i != 3:
            p.add(t + 0.05, TO_CLIENT, True, ip)
        t += 0.01
    rtx = _ip(SERVER_ADDR, CLIENT_ADDR, 6, _tcp(8001, 40000, isn + 1 + 3 * seg, 6, 0x10,
                                                bytes(seg)))
    p.add(1.203, TO_SERVER, False, rtx)
    p.add(1.253, TO_CLIENT, True, rtx)
    flows = fl.parse_capture(p.write(tmp_path / "t.pcap"), SERVER_ADDR, TO_SERVER, TO_CLIENT)
    (f,) = flows.values()
    assert f.kind == "tcp" and f.client_port == 40000 and f.server_port == 8001
    r = fl.analyse(f, 1.0, bin_s=0.05)
    assert r["unique_bytes"] == 10 * seg
    assert r["retransmitted_packets"] == 1 and r["retransmitted_bytes"] == seg
    assert r["dropped_packets"] == 1
    assert r["start_s"] == 0.0 and r["end_s"] == pytest.approx(0.253)
    assert r["goodput_mbit"] == pytest.approx(10 * seg * 8 / 0.253 / 1e6, rel=1e-3)
    assert r["router_delay_ms_median"] == pytest.approx(50, abs=0.01)
    s = r["series"]
    assert sum(b * 0.05 / 8 * 1e6 for b in s["goodput"]["mbit"]) == pytest.approx(10 * seg)
    assert max(s["in_flight"]["bytes"]) == 5 * seg  # 50 ms in the router, 10 ms apart
    assert s["time_sequence"]["sent"]["rtx"].count(True) == 1


def test_trickles_flow_by_byte_range_in_protocol_253_and_6(tmp_path: Path) -> None:
    p = Pcap()
    for proto, cport in ((253, 41000), (6, 42000)):
        req = _ip(CLIENT_ADDR, SERVER_ADDR, proto,
                  _tcp(cport, 8080, 1, 0, 2, b"", struct.pack("!BBHH", 253, 6, fl.TK_EXID, 0)
                       + b"\x01\x01"))
        p.add(2.0, TO_CLIENT, False, req)
        p.add(2.0001, TO_SERVER, True, req)  # the same request leaving: counted once
        for k in range(5):
            ip = _ip(SERVER_ADDR, CLIENT_ADDR, proto, _tk_response(8080, cport, k + 1,
                                                                   k * 1200, 1200))
            p.add(2.01 + k * 0.01, TO_SERVER, False, ip)
            p.add(2.02 + k * 0.01, TO_CLIENT, True, ip)
    flows = fl.parse_capture(p.write(tmp_path / "k.pcap"), SERVER_ADDR, TO_SERVER, TO_CLIENT)
    assert {k[0] for k in flows} == {"trickles"} and len(flows) == 2
    for f in flows.values():
        r = fl.analyse(f, 2.0, series=False)
        assert r["unique_bytes"] == 6000 and r["retransmitted_packets"] == 0
        assert r["requests"] == 1 and r["truncated_packets"] == 0


def test_truncated_trickles_header_is_counted_not_guessed(tmp_path: Path) -> None:
    p = Pcap()
    ip = _ip(SERVER_ADDR, CLIENT_ADDR, 253, _tk_response(8080, 41000, 1, 0, 1200))
    p.add(3.0, TO_SERVER, False, ip, snap=20 + 20 + 28 + 10)  # cut inside the header
    flows = fl.parse_capture(p.write(tmp_path / "x.pcap"), SERVER_ADDR, TO_SERVER, TO_CLIENT)
    (f,) = flows.values()
    assert f.truncated == 1 and not f.sent


def test_not_a_testbed_capture_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"hello")
    with pytest.raises(fl.CaptureError, match="not a classic pcap"):
        list(fl.read_sll2(bad))
    raw = tmp_path / "raw.pcap"
    raw.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    with pytest.raises(fl.CaptureError, match="LINUX_SLL2"):
        list(fl.read_sll2(raw))


def test_jain() -> None:
    assert fl.jain([5, 5]) == 1.0
    assert fl.jain([10, 0]) == 0.5
    assert fl.jain([]) is None


@pytest.mark.parametrize("kw", [{"rate_mbit": 0}, {"loss": 1.0}, {"loss": -0.1},
                                {"queue_ms": 0}, {"initcwnd": 0}])
def test_bad_config_is_refused(kw: dict) -> None:
    with pytest.raises(ValueError):
        TestbedConfig(**kw)


# ---------------------------------------------------------------------------- root: cleanup
def _left(tag: str) -> tuple[list[str], str]:
    ns = [n for n in list_namespaces() if n.startswith(f"tk{tag}")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return ns, "\n".join(ln for ln in links.splitlines() if f"v{tag}" in ln)


def _need() -> None:
    need_root("network namespaces")
    for tool in ("tc", "iptables", "ethtool"):
        need_tool(tool)


def test_testbed_is_built_and_fully_undone(tmp_path: Path) -> None:
    _need()
    tag = f"T{int(time.time() * 1000) % 100000}"
    with Testbed(TestbedConfig(rate_mbit=10, loss=0.05), tag=tag) as tb:
        ns, links = _left(tag)
        assert len(ns) == 3 and links == ""  # veths live inside the namespaces
        qd = tb.sh(ROUTER, ["tc", "qdisc", "show", "dev", tb.devs["router_to_client"]]).stdout
        assert "tbf" in qd and "rate 10Mbit" in qd
        rules = tb.sh(ROUTER, ["iptables", "-S", "FORWARD"]).stdout
        assert "statistic --mode random --probability 0.0499" in rules
        route = tb.sh("s", ["ip", "route", "show", "default"]).stdout
        assert "initcwnd 3" in route
        assert tb.describe()["delay"].startswith("none")
        p = tb.popen(CLIENT, ["sleep", "60"])
    assert p.poll() is not None  # the process in the namespace was stopped
    assert _left(tag) == ([], "")


def test_failed_run_leaves_nothing() -> None:
    _need()
    tag = f"F{int(time.time() * 1000) % 100000}"
    with pytest.raises(RuntimeError, match="mid-run"), Testbed(TestbedConfig(loss=0.01), tag=tag):
        assert len(_left(tag)[0]) == 3
        raise RuntimeError("mid-run failure")
    assert _left(tag) == ([], "")


def test_build_error_leaves_nothing() -> None:
    _need()
    tag = f"B{int(time.time() * 1000) % 100000}"
    # veth takes no MTU above 65535: the build fails halfway, after the namespaces
    from trickles_kit.net.topology import TopologyError

    with pytest.raises(TopologyError):
        Testbed(TestbedConfig(mtu=100000), tag=tag).__enter__()
    assert _left(tag) == ([], "")


CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from trickles_kit.net.testbed import Testbed, TestbedConfig
with Testbed(TestbedConfig(rate_mbit=5, loss=0.02), tag={tag!r}) as tb:
    p = tb.popen("s", ["sleep", "120"])
    print("ready", p.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_nothing(sig: signal.Signals) -> None:
    _need()
    tag = f"S{sig.value}{int(time.time() * 1000) % 10000}"

    def set_up() -> None:
        assert len(_left(tag)[0]) == 3

    rc, sleeper = signal_child(CHILD.format(repo=str(REPO), tag=tag), sig, 20, set_up)
    assert rc != 0
    assert _left(tag) == ([], "")
    assert not Path(f"/proc/{sleeper}").exists() or \
        "Z" in Path(f"/proc/{sleeper}/stat").read_text().split()[2]


def test_figures_of_a_flow(tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    p = Pcap()
    for k in range(4):
        ip = _ip(SERVER_ADDR, CLIENT_ADDR, 253, _tk_response(8080, 41000, k + 1, k * 1000, 1000))
        p.add(4.0 + k * 0.01, TO_SERVER, False, ip)
        p.add(4.005 + k * 0.01, TO_CLIENT, True, ip)
    (f,) = fl.parse_capture(p.write(tmp_path / "f.pcap"), SERVER_ADDR, TO_SERVER,
                            TO_CLIENT).values()
    fig = fl.figures([fl.analyse(f, 4.0, bin_s=0.01)], "one flow")
    names = [t.name for t in fig.data]
    assert names == ["trickles 10.77.1.2:41000", "trickles 10.77.1.2:41000 delivered",
                     "trickles 10.77.1.2:41000 in flight"]
