"""The client's scoreboard (core/scoreboard.py) keeps proofs' nonces bounded by the window.

Pruning must change nothing on the wire: a client replaying the very inputs a pruning client
got, with pruning off, sends byte for byte the same requests (so every proof's blocks and
summaries are the same), while holding a nonce per packet of the transfer.
"""

from __future__ import annotations

import hashlib
import heapq
import random

import pytest
from wire_helpers import next_client_event

from trickles_kit.apps.generated import Generated, gen_request, generated_bytes
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.scoreboard import Scoreboard
from trickles_kit.core.server import ServerConfig, ServerEngine

CIP, SIP = bytes((10, 1, 0, 2)), bytes((10, 0, 0, 1))
KEY = bytes(range(16))


def _run(size: int, loss: float, seed: int, cfg: ClientConfig) -> tuple[list, ClientEngine,
                                                                          ServerEngine, bytes]:
    """A transfer over a lossy, reordering virtual link; the client's inputs in order."""
    gen = Generated()
    server = ServerEngine(bytes(32), gen, SIP, 80, ServerConfig())
    gen.attach(server)
    client = ClientEngine(CIP, 40000, SIP, 80, cfg, isn=5, echo_key=KEY)
    rng = random.Random(seed)
    trace: list = []
    queue: list = []
    got = bytearray()
    n = 0
    t = 0.0
    client.connect(t, gen_request(size, seed))
    for _ in range(400_000):
        if client.done or client.phase in ("failed", "closed"):
            break
        for seg in client.datagrams_to_send():
            for ans in server.receive(seg, CIP, t + 0.005):
                burst = rng.random() < loss / 20  # now and then a burst: timeouts
                if rng.random() < loss or burst:
                    continue
                n += 1
                heapq.heappush(queue, (t + 0.010 + rng.random() * 0.004, n, ans))
                if burst:
                    queue.clear()
        waiting, ans = len(queue), queue[0][2] if queue else b""  # (the earliest, if it comes)
        step = next_client_event(client, queue, t)
        if step is None:
            break
        t = step
        trace.append(("rx", t, ans) if len(queue) < waiting else ("timer", t, b""))
        got += client.read()
    return trace, client, server, bytes(got)


def _replay(trace: list, size: int, seed: int, cfg: ClientConfig,
            prune: bool) -> tuple[str, ClientEngine]:
    client = ClientEngine(CIP, 40000, SIP, 80, cfg, isn=5, echo_key=KEY)
    client._prunes = prune
    h = hashlib.sha256()
    client.connect(0.0, gen_request(size, seed))
    for kind, t, seg in trace:
        if kind == "rx":
            client.receive(seg, t)
        else:
            client.handle_timer(t)
        client.read()
        for s in client.datagrams_to_send():
            h.update(s)
    return h.hexdigest(), client


@pytest.mark.parametrize(("loss", "seed", "cfg"), [
    (0.0, 1, ClientConfig()),
    (0.02, 2, ClientConfig()),
    (0.05, 3, ClientConfig(dupthresh=2)),
    (0.03, 4, ClientConfig(paired=True)),
    (0.03, 5, ClientConfig(uplink_repair=True)),
], ids=["clean", "lossy", "lossier", "paired", "uplink_repair"])
def test_pruning_changes_nothing_on_the_wire(loss: float, seed: int, cfg: ClientConfig) -> None:
    size = 6_000_000
    trace, client, server, got = _run(size, loss, seed, cfg)
    assert client.done and got == generated_bytes(seed, 0, size)
    assert server.counters["nonce_fail"] == 0
    pruned, a = _replay(trace, size, seed, cfg, True)
    kept, b = _replay(trace, size, seed, cfg, False)
    assert pruned == kept
    packets = b.counters["rx"]
    assert len(b.score.nonce) > packets // 2  # without pruning: a nonce per packet
    assert len(a.score.nonce) + len(a.score.anchors) < 2048 < packets
    assert a.score.trimmed == 0


def test_summaries_below_the_floor_come_from_anchors() -> None:
    """Runs with holes, then a prune: every proof a held continuation can still make sums to
    the XOR of the raw nonces, and a start that has no anchor is moved up, never wrong."""
    rng = random.Random(7)
    nonces = {j: rng.getrandbits(32) for j in range(0, 400)}
    holes = {37, 150, 151, 260}
    sb = Scoreboard()
    for j in range(400):
        if j not in holes:
            sb.claim(j, nonces[j])

    def xor(left: int, right: int) -> int:
        acc = 0
        for j in range(left, right + 1):
            acc ^= nonces[j]
        return acc

    sb.prune(300, [5, 120])  # proofs may start at 5 (a TCPBase) and 120 (another)
    assert sb.floor == 300 and min(sb.nonce) == 300
    for lo, seq in [(5, 350), (120, 399), (5, 300), (120, 300)]:
        blocks = sb.proof(lo, seq, 64)
        assert blocks[0][0] == lo and blocks[-1][1] == seq
        for left, right in blocks:
            assert sb.summary(left, right) == xor(left, right)
    sb.prune(360, [120])  # the floor moves up: anchors run on to it
    assert sb.summary(120, 149) == xor(120, 149) and sb.summary(152, 259) == xor(152, 259)
    assert sb.summary(261, 380) == xor(261, 380)
    blocks = sb.proof(130, 390, 64)  # 130: no anchor (no continuation starts there)
    assert blocks[0] == (152, 259) and sb.trimmed == 1
    assert all(sb.summary(lft, rgt) == xor(lft, rgt) for lft, rgt in blocks)
    sb.cut_above(370)  # a SLOWSTART: numbers above `right` are reused
    assert sb.max_rx == 370 and not sb.board.contains(371) and sb.floor == 360
    assert sb.summary(261, 370) == xor(261, 370)
