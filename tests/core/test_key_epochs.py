"""Key epochs follow the clock only (issue 20, docs §6.2): no packet input can move them.

The audit pushed 2^23 SYNs into one server, which then sealed in an epoch ahead of the clock, so
a restarted server or a replica with the same secret refused its continuations. Here a server
whose `max_seals` is tiny (the knob that used to force the early epoch) seals far more than that,
and a replica, a restarted server and a fresh KeyRing with the same secret and clock still agree
with it on every key. Each test fails if seal-count rotation comes back.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat

import pytest
from helpers_security import (
    SECRET,
    SERVER_IP,
    SERVER_PORT,
    make_server,
    parse_response,
)

from trickles_kit.apps.generated import gen_request, generated_bytes
from trickles_kit.apps.sim import client_address
from trickles_kit.core.client import ClientEngine
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.server import ServerConfig, ServerEngine

EPOCH = 60.0
LIMIT = 16  # a small seal limit: the old code started a new epoch after this many seals
CFG = ServerConfig(epoch_seconds=EPOCH, max_seals=LIMIT)
START = 10 * EPOCH + 1.0  # epoch 10, so "the clock's epoch" is not simply 0
STEP = 0.0005  # one-way delay of the hand-driven network


def _syn_flood(server: ServerEngine, n: int, start: float, spacing: float = 0.01) -> int:
    """`n` SYNs with requests from distinct hosts (what a flooder sends; each answer is sealed,
    and so is each user continuation). Returns how many sealed continuations came back."""
    sealed = 0
    for i in range(n):
        ip, port = client_address(1000 + i)
        flooder = ClientEngine(ip, port, SERVER_IP, SERVER_PORT, isn=i)
        now = start + i * spacing
        flooder.connect(now, gen_request(1000, i))
        for syn in flooder.datagrams_to_send():
            for seg in server.receive(syn, ip, now):
                sealed += parse_response(seg, ip)[1].cont.is_full
    return sealed


def _transfer(servers: list[ServerEngine], switch_after: int, size: int, now: float,
              index: int = 1) -> tuple[bytes, list[tuple[bytes, float, list[bytes]]], int]:
    """Fetch `size` bytes over the hand-driven network: the first `switch_after` segments go to
    servers[0], the rest to servers[-1] (a restart). Returns the bytes read, every request that
    echoed a continuation as (segment, time, answers) and the sealed continuations answered."""
    ip, port = client_address(index)
    client = ClientEngine(ip, port, SERVER_IP, SERVER_PORT, isn=0xC0FFEE)
    client.connect(now, gen_request(size, 3))
    queue = deque(client.datagrams_to_send())
    requests: list[tuple[bytes, float, list[bytes]]] = []
    sealed = sent = 0
    while queue:
        now += STEP
        seg = queue.popleft()
        server = servers[0] if sent < switch_after else servers[-1]
        sent += 1
        out = server.receive(seg, ip, now)
        if sent > 1:  # the first segment is the SYN: it echoes no continuation
            requests.append((seg, now, out))
        for answer in out:
            sealed += parse_response(answer, ip)[1].cont.is_full
            client.receive(answer, now + STEP)
        queue.extend(client.datagrams_to_send())
    return client.read(), requests, sealed


def test_seals_never_move_the_epoch() -> None:
    """Thousands of seals against a limit of 16: the ring seals in the clock's epoch throughout,
    as a fresh ring (a restart) computes it."""
    ring = KeyRing(SECRET, EPOCH, LIMIT)
    for i in range(4000):
        now = START + i * 0.01  # 40 s, inside epoch 10
        assert ring.sealing_epoch(now) == int(now // EPOCH) == 10
    for now in (START + 59.0, 11 * EPOCH, 11 * EPOCH + 30.0, 12 * EPOCH + 0.5):
        assert ring.sealing_epoch(now) == ring.current(now) == KeyRing(SECRET).current(now)
        assert ring.current(now) == int(now // EPOCH)


def test_2_pow_23_seals_keep_the_clock_epoch() -> None:
    """The audit's number, on the default ring: 2^23 + 1 seals within one epoch."""
    ring = KeyRing(SECRET)
    now = 130.0  # epoch 2 of 60 s
    deque(map(ring.sealing_epoch, repeat(now, (1 << 23) + 1)), maxlen=0)
    assert ring.current(now) == 2
    assert ring.sealing_epoch(now) == 2
    assert ring.accepts(2, now) and ring.accepts(1, now) and not ring.accepts(3, now)


def test_syn_flood_does_not_change_the_epoch() -> None:
    """SYNs are packet input: a flood of them (20x the limit, spread over 40 s so that no SYN
    rate limit sheds them) leaves `current(now)` at the clock's epoch, in this epoch and the
    next, and every answer is sealed in it."""
    server = make_server(CFG)
    assert server.keys.current(START) == 10
    sealed = _syn_flood(server, 20 * LIMIT, START, spacing=40.0 / (20 * LIMIT))
    assert sealed > 4 * LIMIT, f"only {sealed} SYNs answered: the flood was not a flood"
    end = START + 40.0
    assert server.keys.current(end) == 10 == KeyRing(SECRET).current(end)
    assert server.keys.sealing_epoch(end) == 10
    after = 11 * EPOCH + 1.0
    assert server.keys.current(after) == 11 == KeyRing(SECRET).current(after)


def test_replica_accepts_every_continuation_after_more_seals_than_the_limit() -> None:
    """The acceptance test: a flood, then a real transfer crossing an epoch boundary, all on one
    server; a second server with the same secret, fed every request at the same clock, accepts
    each one and answers exactly as the first did."""
    primary = make_server(CFG)
    flood = _syn_flood(primary, 10 * LIMIT, START - 1.0, spacing=0.001)
    t0 = 11 * EPOCH - 0.05  # the transfer starts 50 ms before epoch 11
    data, requests, sealed = _transfer([primary], 1 << 30, 300_000, t0)
    assert data == generated_bytes(3, 0, 300_000)
    assert flood + sealed > 20 * LIMIT, (flood, sealed)
    assert primary.counters["drop"] == 0, dict(primary.counters)
    epochs = {parse_response(a, client_address(1)[0])[1].cont.key_epoch
              for _, _, out in requests for a in out
              if parse_response(a, client_address(1)[0])[1].cont.is_full}
    assert epochs == {10, 11}, epochs  # sealed in the clock's epochs only, across the boundary

    replica = make_server(CFG)  # same secret, same clock, has seen nothing of the flood
    ip = client_address(1)[0]
    refused = []
    for i, (seg, now, out) in enumerate(requests):
        drops = replica.counters["drop"]
        again = replica.receive(seg, ip, now)
        if replica.counters["drop"] != drops or again != out:
            refused.append(i)
    assert not refused, f"{len(refused)} of {len(requests)} continuations refused by the replica"
    assert sum(1 for _, _, out in requests if out) > 50  # the transfer really made requests


def test_restart_after_a_flood_continues_the_transfer() -> None:
    """Kill the server mid-transfer, after a flood of seals, and start a new one (a fresh
    KeyRing, same secret): it accepts the continuations the old one sealed and the transfer
    ends byte-exact with no drop."""
    before = make_server(CFG)
    _syn_flood(before, 10 * LIMIT, START, spacing=0.001)
    after = make_server(CFG)  # the restarted process
    size = 300_000
    data, requests, _ = _transfer([before, after], 60, size, START + 1.0)
    assert before.counters["drop"] == 0 and after.counters["drop"] == 0, (
        dict(before.counters), dict(after.counters))
    assert after.counters["tx"] > 100  # the restarted server served most of the transfer
    assert data == generated_bytes(3, 0, size)


def test_user_continuation_keys_are_per_connection() -> None:
    """The AEAD's 2^32-seal budget is per key: one key per connection (docs §6.2), derived from
    the secret, so a replica opens what another sealed and no flood exhausts a shared key."""
    import hashlib

    from trickles_kit.core.seal import UcontBox

    a, b = UcontBox(KeyRing(bytes(range(32)))), UcontBox(KeyRing(bytes(range(32))))
    blob = a.seal(b"descriptor", 0x1122334455667788)
    assert b.open(blob, 0x1122334455667788) == b"descriptor"  # a replica, same secret
    assert b.open(blob, 0x1122334455667789) is None  # bound to its connection
    # the key itself differs per connection: the blob's ciphertext does not open under the
    # neighbouring connection's key even with the right associated data
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    root = KeyRing(bytes(range(32))).ucont_key
    other = AESGCM(hashlib.blake2s((0x1122334455667789).to_bytes(8, "big"), key=root).digest())
    from cryptography.exceptions import InvalidTag

    with pytest.raises(InvalidTag):
        other.decrypt(blob[:12], blob[12:], (0x1122334455667788).to_bytes(8, "big"))
    mine = AESGCM(hashlib.blake2s((0x1122334455667788).to_bytes(8, "big"), key=root).digest())
    assert mine.decrypt(blob[:12], blob[12:], (0x1122334455667788).to_bytes(8, "big")) \
        == b"descriptor"
