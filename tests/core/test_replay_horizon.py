"""Issue 20, item 3 (replays at any load): a replay of an evicted request is refused by its
row's horizon whatever the arrival times. tests/core/test_hardening.py fills a server's table to
twice its capacity and replays every request, but on a clock of whole milliseconds; here the
same requests arrive at sub-millisecond offsets, as they do on a real wire.
"""

from __future__ import annotations

import socket

from trickles_kit.apps.generated import Generated, gen_request
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.wire.messages import REQ_NORMAL, decode_request
from trickles_kit.wire.segment import SYN, decode_segment

CIP, SIP = socket.inet_aton("10.1.0.2"), socket.inet_aton("10.0.0.1")
SECRET = bytes(range(32))
ROW = 16  # ReplayHistory.WAYS: a 16-entry table is one row


def _server(entries: int) -> ServerEngine:
    gen = Generated()
    srv = ServerEngine(SECRET, gen, SIP, 80, ServerConfig(replay_entries=entries))
    gen.attach(srv)
    return srv


def _honest_requests(n: int) -> list[tuple[float, bytes]]:
    """The first `n` NORMAL requests of an honest transfer (each on its own continuation),
    with the times they reached its server (virtual clock, whole milliseconds)."""
    srv = _server(1 << 16)
    client = ClientEngine(CIP, 40000, SIP, 80, ClientConfig(), isn=3)
    client.connect(1000.0, gen_request(2_000_000, 1))
    out: list[tuple[float, bytes]] = []
    t = 1000.0
    for _ in range(5000):
        if len(out) >= n or client.done:
            break
        t += 0.001
        segs = client.datagrams_to_send()
        if not segs:
            timer = client.get_timer()
            assert timer is not None
            t = max(t, timer)
            client.handle_timer(t)
            continue
        for seg in segs:
            if not seg[13] & SYN and decode_request(decode_segment(seg).payload).type == REQ_NORMAL:
                out.append((t, seg))
            for ans in srv.receive(seg, CIP, t):
                client.receive(ans, t + 0.001)
    assert len(out) >= n
    return out[:n]


def test_replay_of_an_evicted_request_is_refused_at_any_sub_millisecond_arrival_time() -> None:
    """A one-row table (16 entries): 17 valid requests, so one is evicted (the one sealed
    first, or the newcomer itself when it is as old: accepted, not kept) and the row's horizon
    rises to its seal time; then all 17 are replayed. Whatever the first request's arrival
    offset (0-9 ms, plus 0.05 or 0.95 ms: it moves the table's tick grid) and the replay's
    (0.05 or 0.95 ms), nothing may be answered: the evicted one's replay only the horizon
    stops, the others' their entries."""
    reqs = _honest_requests(ROW + 1)
    answered: list[tuple[int, float, float]] = []
    for shift_ms in range(10):
        for f0 in (0.00005, 0.00095):
            for f1 in (0.00005, 0.00095):
                srv = _server(ROW)
                assert srv.replay.max_entries == ROW
                for i, (t, seg) in enumerate(reqs):
                    at = t + 0.010 + (shift_ms / 1000 + f0 if i == 0 else 0.0005)
                    assert srv.receive(seg, CIP, at), "an honest request was refused"
                assert srv.replay.evicted >= 1  # the first one's entry is gone
                replay_at = int(reqs[-1][0]) + 2.0 + f1
                for i, (_, seg) in enumerate(reqs):
                    if srv.receive(seg, CIP, replay_at):
                        answered.append((i, shift_ms + f0 * 1000, f1 * 1000))
    assert answered == [], f"replays answered (request, first arrival ms, replay ms): {answered}"
