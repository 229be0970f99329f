"""`bench_quic --loopback` (trickles_kit/bench/quic_loopback.py) keeps working: one small
transfer from each server over UDP on 127.0.0.1, byte-exact, with the server's CPU read and
the ratio formed. Nothing about speed is asserted."""

from __future__ import annotations

import pytest

from trickles_kit.bench import quic_loopback


def test_loopback_cpu_comparison_runs_both_servers() -> None:
    pytest.importorskip("aioquic", reason="aioquic is missing: make lab-venv (the quic extra)")
    kinds = ("trickles-udp", "quic", "trickles-udp-plain")
    res = quic_loopback.run(True, size=3_000_000, repeats=1, kinds=kinds)
    for kind in kinds:
        (r,) = res["runs"][kind]
        assert r.get("ok") is True, r  # every byte, SHA-256 checked
        assert r["bytes"] == 3_000_000 and r["server_cpu_s"] >= 0
    udp, plain = res["runs"]["trickles-udp"][0], res["runs"]["trickles-udp-plain"][0]
    assert plain["gso_sends"] == 0  # --udp-offload off: one datagram per send
    if udp["capture_on_host"] is False:  # the default (auto) segments runs when nobody captures
        assert udp["gso_sends"] > 0 and udp["gso_held_batches"] == 0
    assert set(res["server_mb_per_cpu_s_over_quic"]) <= {"trickles-udp_over_quic",
                                                       "trickles-udp-plain_over_quic"}
    assert res["target_ratio"] == 2.5
