"""The QUIC baseline (aioquic HTTP/3): byte-exact through the namespace testbed, and Range.

The Range test runs the server in this process on loopback (no root); the testbed test is what
`trickles bench quic` does for one transfer, small. aioquic comes with `make lab-venv` (the
`quic` extra): in CI its absence fails the import, elsewhere it skips saying so.
"""

from __future__ import annotations

import asyncio

import pytest
from wire_helpers import IN_CI, free_port, need_root, need_tool

if not IN_CI:
    pytest.importorskip("aioquic", reason="aioquic is missing: make lab-venv (the quic extra)")

from trickles_kit.apps.generated import generated_bytes, generated_sha256  # noqa: E402
from trickles_kit.bench import quic  # noqa: E402
from trickles_kit.bench.quic_client import H3Client  # noqa: E402
from trickles_kit.bench.quic_server import H3Server, configuration, connect, serve  # noqa: E402
from trickles_kit.net.testbed import TestbedConfig  # noqa: E402

SIZE = 300_000


async def _get(port: int, path: str, start: int) -> tuple[int, bytes]:
    server = await serve("127.0.0.1", port, configuration=configuration(False),
                         create_protocol=H3Server)
    body = bytearray()
    try:
        async with connect("127.0.0.1", port, configuration=configuration(True),
                           create_protocol=H3Client) as c:
            g = c.get(f"127.0.0.1:{port}", path, start=start,  # type: ignore[attr-defined]
                      on_data=body.extend)
            await asyncio.wait_for(g.done, 30)
    finally:
        server.close()
    return g.status, bytes(body)


@pytest.mark.parametrize("start", [0, 123_457])
def test_body_and_range_over_http3(start: int) -> None:
    status, body = asyncio.run(_get(free_port(), f"/gen?size={SIZE}&seed=7", start))
    assert status == (206 if start else 200)
    assert body == generated_bytes(7, start, SIZE)


def test_unknown_path_is_404() -> None:
    status, body = asyncio.run(_get(free_port(), "/nothing", 0))
    assert status == 404 and body == b""


@pytest.mark.e2e
def test_quic_transfer_through_the_testbed_is_byte_exact() -> None:
    need_root("the QUIC baseline's namespace testbed")
    for tool in ("tc", "iptables", "ethtool"):
        need_tool(tool)
    size = 1_000_000
    r = quic.flow("quic", TestbedConfig(rate_mbit=20.0), size, baseline_s=0.2)
    c = r["client"]
    assert c["byte_exact"], c
    assert c["bytes"] == size and c["sha256"] == generated_sha256(size, 1)
    assert 0 < c["goodput_mbit"] <= 20.0 * 1.05  # the shaper is the bottleneck
    assert r["server_alive_at_end"]
    s = r["system"]
    assert s["server_process_s"] > 0 and s["client_process_s"] > 0
    assert all(v >= 0 for v in s["per_mb"].values())


def test_memory_target_is_judged() -> None:
    res = {"memory": {"bytes_per_connection": {"trickles": 40.0, "quic": 1000.0}}}
    (t,) = quic.targets(res)
    assert t["met"] is True and t["got"] == 40.0
    res["memory"]["bytes_per_connection"]["trickles"] = 60.0
    assert quic.targets(res)[0]["met"] is False
    assert quic.targets({}) == []

