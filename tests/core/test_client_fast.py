"""The client's per-packet fast path (core/client_fast.py) acts exactly as the general path,
and leaves to it, untouched, every answer it does not take.

Two engines alike (same ISN, echo key and inputs), one with the fast path and one without,
take the same answers of a lossy, reordering transfer, plus altered copies of some answers
(each failing one of the fast path's conditions); after every input both must have sent the
same bytes, hold the same counters and have emitted the same events. The altered copies must
be refused by the fast path itself. tests/core/test_client_golden.py compares with the
committed engine's bytes; this file covers the fallbacks and the events.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import socket
import struct
from collections.abc import Callable

import pytest

from trickles_kit.apps.generated import Generated, gen_request, generated_sha256
from trickles_kit.core import client_fast
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.events import EventLog
from trickles_kit.core.ranges import RangeSet
from trickles_kit.core.seal import UcontBox
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.testing.liars import HidingLiar
from trickles_kit.wire import segment as ws
from trickles_kit.wire.segment import ACK, FIN, HEADER_LEN, PSH, decode_segment, encode_segment

SIP = socket.inet_aton("10.0.0.1")
CIP = socket.inet_aton("10.1.0.9")
RESP = HEADER_LEN  # the response header starts after the TCP header
CONT = RESP + 8  # then the continuation


def _resegment(ans: bytes, payload: bytes | None = None, flags: int | None = None,
               dst_port: int | None = None) -> bytes:
    """`ans` with another payload, flags or port, its checksum made right again."""
    seg = decode_segment(ans)
    return encode_segment(SIP, CIP, seg.src_port, seg.dst_port if dst_port is None else dst_port,
                          seg.seq, seg.ack, seg.flags if flags is None else flags,
                          seg.payload if payload is None else payload, seg.trickles_len,
                          seg.window)


def _patch(ans: bytes, at: int, fmt: str, change: Callable[[int], int]) -> bytes:
    """`ans` with the field `fmt` at payload offset `at` changed, checksum right."""
    p = bytearray(decode_segment(ans).payload)
    (v,) = struct.unpack_from(fmt, p, at)
    struct.pack_into(fmt, p, at, change(v))
    return _resegment(ans, bytes(p))


def _chunk_at(ans: bytes) -> int:
    """The payload offset of the answer's first chunk (after the FULL continuation, ucont)."""
    p = decode_segment(ans).payload
    return 8 + 75 + struct.unpack_from("!H", p, 6)[0]


# name -> an altered copy of an in-order data answer that the fast path must leave alone
ALTERED: dict[str, Callable[[bytes], bytes]] = {
    "checksum": lambda a: a[:-1] + bytes((a[-1] ^ 0xFF,)),
    "flags_psh": lambda a: _resegment(a, flags=ACK | PSH),
    "flags_fin": lambda a: _resegment(a, flags=ACK | FIN),
    "port": lambda a: _resegment(a, dst_port=40001),
    "echo_token": lambda a: _patch(a, 8 + 10, "!I", lambda v: v ^ 1),  # parent
    "conn_id": lambda a: _patch(a, 8 + 47, "!Q", lambda v: v ^ 1),
    "state": lambda a: _patch(a, 8 + 26, "!B", lambda v: 3),
    "chunk_fin": lambda a: _patch(a, _chunk_at(a), "!B", lambda v: v | 1),
    "pad_after": lambda a: _resegment(a, decode_segment(a).payload + b"\0"),
    "other_bytes": lambda a: _patch(a, _chunk_at(a) + 3, "!I", lambda v: v + 1),
    "short": lambda a: a[:HEADER_LEN + 60],
}


def _pair(cfg: dict) -> tuple[ClientEngine, ClientEngine, EventLog, EventLog]:
    logs = EventLog(), EventLog()
    fast, slow = (ClientEngine(CIP, 40007, SIP, 80, ClientConfig(**cfg), isn=77,
                               echo_key=bytes(range(16)), on_event=log) for log in logs)
    slow._fast = False
    return fast, slow, logs[0], logs[1]


def _same(a: ClientEngine, b: ClientEngine, la: EventLog, lb: EventLog, what: str) -> list[bytes]:
    sent = a.datagrams_to_send()
    assert sent == b.datagrams_to_send(), what
    assert a.counters == b.counters, what
    assert la.events == lb.events, what
    assert (a.phase, a.cwnd, a.ssthresh, a.ucont) == (b.phase, b.cwnd, b.ssthresh, b.ucont), what
    return sent


def _twin_transfer(cfg: dict, size: int, lanes: int = 0, alter: str = "",
                   read_every: int = 1) -> dict:
    """A transfer in which a fast-path engine and a general-path twin take the same inputs;
    how often the fast path took an answer, refused an altered one, and the bytes received."""
    gen = Generated()
    srv = ServerEngine(bytes(range(32)), gen, SIP, 80, ServerConfig(state_cache=0))
    gen.attach(srv)
    gen._box = UcontBox(srv.keys, nonce_source=lambda n: bytes(n))
    a, b, la, lb = _pair(cfg)
    rng = random.Random(size + lanes)
    got = bytearray()
    stats = {"fast": 0, "general": 0, "refused": 0}
    queue: list[tuple[float, int, bytes]] = []
    t, n, step = 0.0, 0, 0
    req = gen_request(size, 3)
    if lanes:
        w = -(-size // lanes)
        spans = [(i * w, min(size, (i + 1) * w)) for i in range(lanes)]
        a.connect(t, req, spans)
        b.connect(t, req, spans)
    else:
        a.connect(t, req)
        b.connect(t, req)
    sent = _same(a, b, la, lb, "connect")
    while a.phase not in ("done", "failed") and t < 120:
        for seg in sent:
            if rng.random() < 0.02:
                continue
            for ans in srv.receive(seg, CIP, t + 0.004):
                if rng.random() >= 0.03:
                    n += 1
                    heapq.heappush(queue, (t + 0.008 + rng.random() * 0.003, n, ans))
        timer = a.get_timer()
        assert timer == b.get_timer()
        step += 1
        if queue and (timer is None or queue[0][0] <= timer):
            t, _, ans = heapq.heappop(queue)
            if alter and step % 7 == 0 and a.phase == "established":
                bad = ALTERED[alter](ans)  # an altered copy first: the fast path refuses it
                assert not client_fast.receive(a, bad, t), alter
                stats["refused"] += 1
                a.receive(bad, t)
                b.receive(bad, t)
                _same(a, b, la, lb, f"altered ({alter}) at {t}")
            if client_fast.receive(a, ans, t):
                stats["fast"] += 1
            else:
                stats["general"] += 1
                a.receive(ans, t)
            b.receive(ans, t)
        elif timer is not None:
            t = max(t, timer)
            a.handle_timer(t)
            b.handle_timer(t)
        else:
            break
        if step % read_every == 0:
            piece = a.read(t)
            assert piece == b.read(t)
            got += piece
        sent = _same(a, b, la, lb, f"step {step} at {t}")
    got += a.read()
    stats["ok"] = a.done and hashlib.sha256(got).hexdigest() == generated_sha256(size, 3)
    return stats


@pytest.mark.parametrize(("cfg", "lanes", "read_every"), [
    ({}, 0, 1),
    ({"paired": True}, 0, 1),  # FULL2 and PAIR answers: the general path's
    ({"window": 1 << 17}, 0, 9),  # a small window read now and then: credit runs out
    ({"window": 1 << 20}, 3, 1),  # lanes: the ranges come from RangePicker.assign
], ids=["lossy", "paired", "small_window", "lanes"])
def test_fast_path_acts_as_the_general_path(cfg: dict, lanes: int, read_every: int) -> None:
    stats = _twin_transfer(cfg, 400_000, lanes=lanes, read_every=read_every)
    assert stats["ok"], stats
    assert stats["fast"] > stats["general"] > 0, stats  # both paths ran


@pytest.mark.parametrize("alter", sorted(ALTERED))
def test_altered_answers_are_left_to_the_general_path(alter: str) -> None:
    """Some alterations end the transfer (a FIN chunk states the length) or fail it: the two
    engines must agree on that too."""
    stats = _twin_transfer({}, 200_000, alter=alter)
    assert stats["refused"] >= 1, stats


@pytest.mark.parametrize("cfg", [{"uplink_repair": True}, {"hashed": True, "paired": True}])
def test_no_fast_path_where_it_is_not_the_general_paths_twin(cfg: dict) -> None:
    eng = ClientEngine(CIP, 40007, SIP, 80, ClientConfig(**cfg))
    assert not eng._fast
    assert ClientEngine(CIP, 40007, SIP, 80)._fast
    assert not HidingLiar(CIP, 40007, SIP, 80)._fast  # a subclass may override any step


def test_fold_sum_is_the_ones_sum() -> None:
    """The answer checksum's folds (pure Python) give wire.segment's sum for every even length
    up to past a jumbo segment: random bytes, and all ones (where the carries pile up)."""
    rng = random.Random(5)
    for n in [*range(0, 3200, 2), 9000, 65534]:
        for data in (rng.randbytes(n), b"\xff" * n):
            assert client_fast.fold_sum(data) == ws.py_ones_sum(data), n


def test_add_leaves_the_set_as_rangeset_add() -> None:
    """`_add`'s shortcuts at the end of a set (extend, a run past it, the gap before the last
    run filled) leave the set as `RangeSet.add` does, and everything else goes to it."""
    rng = random.Random(9)
    for _ in range(3000):
        fast, ref = RangeSet(), RangeSet()
        for _ in range(rng.randrange(0, 6)):
            s = rng.randrange(0, 60)
            e = s + rng.randrange(1, 8)
            fast.add(s, e)
            ref.add(s, e)
        s = rng.randrange(0, 70)
        e = s + rng.randrange(1, 8)
        client_fast._add(fast, s, e)
        ref.add(s, e)
        assert list(fast) == list(ref)
