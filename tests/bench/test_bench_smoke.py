"""One tiny end-to-end run of the testbed: 1 MB over Trickles and over Reno at 10 Mbit/s.

What `trickles bench goodput --quick` does, at one rate: both transfers byte-exact, both flows
found in the router capture with every response byte, and neither faster than the bottleneck.
"""

from __future__ import annotations

import pytest
from wire_helpers import need_root, need_tool

from trickles_kit.bench.goodput import FlowSpec, run_flows
from trickles_kit.bench.report import headline
from trickles_kit.net.testbed import TestbedConfig

pytestmark = pytest.mark.e2e
SIZE = 1_000_000
RATE = 10.0


@pytest.mark.parametrize("kind", ["trickles", "reno"])
def test_one_megabyte_through_the_bottleneck(kind: str) -> None:
    need_root("network namespaces and raw sockets")
    for tool in ("tc", "iptables", "ethtool", "tcpdump"):
        need_tool(tool)
    r = run_flows(TestbedConfig(rate_mbit=RATE), [FlowSpec(kind, SIZE)], label=kind,
                  timeout=60)
    assert r["all_byte_exact"], r["clients"]
    (f,) = r["flows"]
    assert f["kind"] == kind
    # every body byte (plus the HTTP header) went through the router, as one flow
    assert SIZE < f["unique_bytes"] < SIZE + 300
    assert f["truncated_packets"] == 0
    assert 0 < f["goodput_mbit"] <= RATE * 1.05  # the shaper is the bottleneck
    assert r["testbed"]["delay"].startswith("none") or "netem" in r["testbed"]["delay"]
    assert r["server_cpu_s"][kind] >= 0


def test_headline_of_a_partial_result() -> None:
    res = {"goodput": {"table": [
        {"rate_mbit": 10, "loss": 0.0, "kind": "trickles", "goodput_mbit": 9.0},
        {"rate_mbit": 10, "loss": 0.0, "kind": "reno", "goodput_mbit": 10.0}],
        "ratios": {"10mbit_loss0": {"trickles_over_reno": 0.9, "trickles_over_cubic": None}}}}
    (row,) = headline(res)
    assert row[1] == "9.00" and "0.90" in row[3] and "Cubic –" in row[2]
