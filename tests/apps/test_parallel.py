"""Parallel requests: pipelined GETs on one connection, one reserved slice each, served together.

Byte-exact per response in the simulator (with loss, and with two replicas that share the
secret, the link alternating packets between them) and over UDP on loopback.
"""

from __future__ import annotations

import socket

import pytest

from trickles_kit.apps import parallel
from trickles_kit.apps.generated import generated_sha256
from trickles_kit.apps.sim import LinkConfig
from trickles_kit.apps.web import WebServer
from trickles_kit.core.client import ClientEngine
from trickles_kit.core.server import Minisocket, OutSlot, ServerEngine
from trickles_kit.labs.optimizations import UdpWebServer, gen_paths, parallel_compare

SIP = socket.inet_aton("10.0.0.1")
CIP = socket.inet_aton("10.1.0.2")


def test_request_layout_round_trip() -> None:
    req = parallel.build_request("h", ["/a", "/b", "/c"], 20)
    bits, reqs = parallel.split_requests(req)
    assert bits == 20 and [r.split(b" ")[1] for r in reqs] == [b"/a", b"/b", b"/c"]
    assert parallel.split_requests(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n") is None  # a plain request
    assert parallel.lanes_for(3, 20) == [(0, 1 << 20), (1 << 20, 2 << 20), (2 << 20, 3 << 20)]
    with pytest.raises(ValueError, match="32-bit"):
        parallel.lanes_for(64, 26)
    with pytest.raises(ValueError, match="disjoint"):
        ClientEngine(CIP, 1, SIP, 80).set_lanes([(0, 10), (5, 20)])


def test_client_asks_every_lane_at_once() -> None:
    """Round-robin: the first window's new bytes come from different slices."""
    cl = ClientEngine(CIP, 1, SIP, 80)
    cl.connect(0.0, b"x", lanes=parallel.lanes_for(8, 20))
    picked = cl._assign(8)  # the ranges the next request would name
    assert sorted({s >> 20 for s, _ in picked}) == list(range(8))
    assert (0, 1448) not in picked  # the SYN already asked for the first bytes


def test_server_fills_the_slice_and_skips_the_rest(tmp_path) -> None:
    web = WebServer(tmp_path)
    web.attach(ServerEngine(bytes(32), web, SIP, 80))
    paths = ["/gen?size=100&seed=1", "/nope", "/gen?size=99999999&seed=1"]
    req = parallel.build_request("h", paths, 20)
    slots = [OutSlot(0, 1448, (0, 1448)), OutSlot(1, 1448, ((1 << 20) + 900, (1 << 20) + 910)),
             OutSlot(2, 1448, (2 << 20, (2 << 20) + 1448))]
    msk = Minisocket("REQUEST", (CIP, 1), 5, req, b"", [s.range for s in slots], slots, 1.0)
    web(msk)
    a, b, c = msk.slots
    size0 = a.byte_num + len(a.data)
    assert a.data.startswith(b"HTTP/1.1 200 OK") and a.skips == [(size0, (1 << 20) - size0)]
    nope = web.describe(b"GET /nope HTTP/1.1")
    assert nope.status == 404 and nope.size < 900
    assert b.data == b"" and b.skips == [((1 << 20) + nope.size, (1 << 20) - nope.size)]
    assert c.data.startswith(b"HTTP/1.1 500")  # larger than its slice
    assert {s.finhint for s in msk.slots} == {3 << 20}


def test_splitter_any_split() -> None:
    stream = b"".join(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(x) + x
        for x in (b"one", b"", b"three" * 100))
    for step in (1, 3, 64, len(stream)):
        got = [bytearray(), bytearray(), bytearray()]
        sinks = [g.extend for g in got]
        sp = parallel.PipelineSplitter(sinks)
        for i in range(0, len(stream), step):
            sp(stream[i : i + step])
        assert [p.bytes for p in sp.parts] == [3, 0, 500] and all(p.complete for p in sp.parts)
        assert [bytes(g) for g in got] == [b"one", b"", b"three" * 100]


@pytest.mark.parametrize("replicas,loss,seed", [(1, 0.0, 1), (1, 0.03, 2), (2, 0.0, 3),
                                                (2, 0.03, 4)])
def test_simulated_parallel_is_byte_exact(replicas: int, loss: float, seed: int) -> None:
    r = parallel_compare(n=8, size=60_000, replicas=replicas, loss=loss, seed=seed, bits=20)
    assert r["parallel_ok"] and r["sequential_ok"], r
    if replicas == 2:
        assert min(r["packets_by_replica"]) > 0  # both replicas served the one connection


def test_parallel_over_udp_loopback(tmp_path) -> None:
    (tmp_path / "f.txt").write_bytes(b"static bytes\n" * 5000)
    with UdpWebServer(tmp_path) as srv:
        urls = [srv.url(p) for p in gen_paths(7, 50_000)] + [srv.url("/f.txt")]
        r = parallel.fetch_parallel(urls, "udp", True, bits=20, timeout=60)
        with pytest.raises(ValueError, match="one server"):
            parallel.fetch_parallel([srv.url("/a"), "http://127.0.0.9:1/b"])
    assert r.ok and r.mode == "parallel" and r.connections == 1
    want = [generated_sha256(50_000, 100 + i) for i in range(7)]
    assert [p.sha256 for p in r.parts[:7]] == want
    assert r.parts[7].bytes == 13 * 5000 and r.parts[7].status == 200


def test_parallel_under_reorder() -> None:
    from trickles_kit.labs.optimizations import sim_fetch

    link = LinkConfig(reorder=0.2, duplicate=0.05)
    r = sim_fetch(parallel.build_request("s", gen_paths(8, 30_000), 20),
                  lanes=parallel.lanes_for(8, 20), link=link, seed=7)
    sp = parallel.PipelineSplitter()
    sp(r.data)
    assert r.ok and [p.sha256 for p in sp.parts] == [generated_sha256(30_000, 100 + i)
                                                     for i in range(8)]
