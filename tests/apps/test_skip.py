"""SKIP: /dyn serves records of unknown length into reserved ranges; the client skips the holes.

Byte-exact in the simulator (with loss) and over UDP on loopback; the stream's end is revealed
only by the packets that reach the last record.
"""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from trickles_kit.apps.dynamic import MARK, Dechunker, DynSpec, dyn_header, dyn_target
from trickles_kit.apps.fetch import fetch
from trickles_kit.apps.web import WebServer
from trickles_kit.core.server import Minisocket, OutSlot, ServerEngine
from trickles_kit.labs.optimizations import UdpWebServer, dyn_fetch

SIP = socket.inet_aton("10.0.0.1")


@pytest.fixture
def web(tmp_path) -> WebServer:
    w = WebServer(tmp_path)
    w.attach(ServerEngine(bytes(32), w, SIP, 80))
    return w


def minisocket(request: bytes, ucont: bytes, ranges: list[tuple[int, int]],
               mss: int = 1448) -> Minisocket:
    slots = [OutSlot(i, mss, r) for i, r in enumerate(ranges)]
    return Minisocket("REQUEST", (b"\x0a\x01\x00\x02", 40000), 77, request, ucont, ranges,
                      slots, 1.0)


def get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_records_fit_their_reservations_and_never_end_early() -> None:
    spec = DynSpec(9, 300, 8, 256)
    last = spec.last()
    assert 0 <= last < 300 and spec.is_last(last)
    assert not any(spec.is_last(i) for i in range(last))
    for i in range(last + 1):
        assert len(spec.record(i)) >= 1 and len(spec.framed(i)) <= spec.reserve
    assert spec.delivered().endswith(b"0\r\n\r\n")
    assert DynSpec.unpack(spec.pack()) == spec
    assert DynSpec.unpack(b"\xfeP" + spec.pack()[2:]) is None  # another route's tag
    with pytest.raises(ValueError):
        DynSpec(1, 0)
    with pytest.raises(ValueError):
        DynSpec(1, 5, reserve=100)


def test_dechunker_any_split() -> None:
    spec = DynSpec(4, 20, 0, 512)
    stream = spec.delivered()[len(dyn_header()):]
    for step in (1, 7, 500, len(stream)):
        out = bytearray()
        d = Dechunker(out.extend)
        for i in range(0, len(stream), step):
            d(stream[i : i + step])
        assert d.done and bytes(out) == spec.body()
    with pytest.raises(ValueError, match="chunk-size"):
        Dechunker(lambda b: None)(b"zz\r\n")


def test_length_is_only_revealed_at_the_end(web: WebServer) -> None:
    spec = DynSpec(11, 50, 0, 4096)
    h = len(dyn_header())
    msk = minisocket(get(dyn_target(11, 50, 0, 4096)), b"", [(0, 1448), (1448, 2896)])
    web(msk)
    first = msk.slots[0]
    assert first.data.startswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked")
    assert first.finhint is None and not first.fin  # nothing says where the stream ends
    sealed = first.ucont
    assert sealed is not None and sealed.startswith(MARK)
    # a range in reservation 3, past its record: one SKIP to the reservation's end, no data
    res3 = h + 3 * 4096
    hole = res3 + len(spec.framed(3))
    msk = minisocket(b"", sealed, [(hole + 5, hole + 100), (res3, res3 + 1448)])
    web(msk)
    assert msk.slots[0].data == b"" and msk.slots[0].skips == [(hole, res3 + 4096 - hole)]
    assert msk.slots[1].data == spec.framed(3)[:1448]
    assert msk.slots[0].finhint is None and msk.slots[1].finhint is None
    # the last reservation: data with FIN, and a FINHINT for a range past the end
    end = spec.stream_end()
    last = h + spec.last() * 4096
    msk = minisocket(b"", sealed, [(last, last + 1448), (end + 10, end + 20)])
    web(msk)
    assert msk.slots[0].fin and msk.slots[0].byte_num + len(msk.slots[0].data) == end
    assert msk.slots[1].finhint == end


def test_a_forged_blob_is_not_served(web: WebServer) -> None:
    msk = minisocket(b"", MARK + os.urandom(40), [(0, 1448)])
    web(msk)
    assert msk.dropped and web.bad_ucont == 1


@pytest.mark.parametrize("loss,seed", [(0.0, 1), (0.03, 2), (0.05, 3), (0.1, 4)])
def test_simulated_dyn_is_byte_exact(loss: float, seed: int) -> None:
    r = dyn_fetch(seed=seed, records=300, stop=0, reserve=4096, loss=loss, sim_seed=seed)
    assert r["ok"], r
    assert r["skipped_bytes"] > 0.2 * r["stream_bytes"]  # the holes were really skipped


def test_simulated_dyn_random_end() -> None:
    for seed in range(5):
        r = dyn_fetch(seed=seed, records=4096, stop=32, reserve=1024, loss=0.02, sim_seed=seed)
        assert r["ok"], r


def test_dyn_over_udp_loopback(tmp_path) -> None:
    spec = DynSpec(5, 400, 64, 2048)
    with UdpWebServer(tmp_path) as srv:
        r = fetch(srv.url(dyn_target(5, 400, 64, 2048)), timeout=60)
        bad = fetch(srv.url("/dyn?records=0"), timeout=60)
    assert r.ok and r.status == 200
    assert r.bytes == len(spec.body())
    assert r.sha256 == hashlib.sha256(spec.body()).hexdigest()
    assert bad.status == 404  # a bad /dyn query falls through to the file server
