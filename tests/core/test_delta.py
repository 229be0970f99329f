"""Delta-encoded continuations (docs/protocol.md §10.2): codec, paired plans, transfers, attacks.

Every compressed form must be as safe as the FULL one: a flipped server-owned bit in a COMPACT
request is a counted drop with no output, a flipped bit in a HASHED answer makes the client
rebuild a continuation whose MAC fails (or none at all), replays are counted drops, and
transfers stay byte-exact under loss, reordering and duplication in every mode.
"""

from __future__ import annotations

import contextlib
import random
import socket

import pytest

from trickles_kit.apps.generated import Generated, gen_request, generated_bytes
from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.core import delta as dl
from trickles_kit.core import plan as pl
from trickles_kit.core.cc import cwnd
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.replay import ReplayHistory
from trickles_kit.core.seal import pseudo_header, verify
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.labs import compression
from trickles_kit.wire import delta as wd
from trickles_kit.wire.continuation import (
    BOOTSTRAP,
    COMPACT,
    FULL1,
    FULL2,
    HASHED,
    HASHED_LEN,
    PAIR,
    Continuation,
    decode_continuation,
)
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import decode_response
from trickles_kit.wire.segment import HEADER_LEN, checksum, decode_segment

SECRET = bytes(range(7, 39))
SERVER_IP = socket.inet_aton("10.0.0.1")
CLIENT_IP = socket.inet_aton("10.1.0.9")
SERVER_PORT, CLIENT_PORT = 80, 40009
STEP = 0.010


# ------------------------------------------------------------------ codec
def test_varint_roundtrip_and_bad_input() -> None:
    for v in (0, 1, 127, 128, 16383, 16384, 2**28, 2**32 - 1):
        out = bytearray()
        wd.put_varint(out, v)
        assert wd.get_varint(bytes(out), 0) == (v, len(out))
    with pytest.raises(ValueError):
        wd.put_varint(bytearray(), 2**32)
    with pytest.raises(DecodeError, match="truncated"):
        wd.get_varint(b"\x80\x80", 0)
    with pytest.raises(DecodeError):
        wd.get_varint(b"\xff" * 6, 0)  # longer than 5 bytes
    with pytest.raises(DecodeError):
        wd.get_varint(b"\xff\xff\xff\xff\x7f", 0)  # past 2^32


def _random_cont(rng: random.Random) -> Continuation:
    loss = rng.random() < 0.5
    base = rng.randrange(1, 2**31)
    return Continuation(
        rng.choice((FULL1, FULL2)), base + rng.randrange(-1, 5000), rng.randrange(2),
        rng.randrange(2**32), rng.randrange(2**32), rng.randrange(2**32), rng.randrange(2**32),
        rng.randrange(2**32), rng.choice((0, 2)) if loss else 0,
        max(base - rng.randrange(1, 300), 0) if loss else 0, base if loss else 0,
        rng.randrange(1, 64), rng.randrange(64, 2**14), base, rng.getrandbits(64),
        rng.randrange(2**32), rng.randbytes(16))


def test_compact_roundtrip_and_size() -> None:
    rng = random.Random(5)
    for _ in range(500):
        c = _random_cont(rng)
        packed = wd.pack_compact(c)
        for cur in (c.key_epoch, c.key_epoch + 1):  # the server's epoch: same or next
            full, end = wd.unpack_compact(b"x" + packed + b"rest", 1, c.seq, cur & 0xFFFFFFFF)
            assert full == c.encode()
            assert end == 1 + len(packed)
    typical = Continuation(FULL1, 5000, 0, 0, 700, 123456, 99999, 160, 0, 0, 0, 3, 0x3FFF, 4000,
                           2**63, 28_000_000, b"m" * 16)
    assert len(wd.pack_compact(typical)) <= 45  # vs 75


def test_compact_refuses_non_full_and_bad_bits() -> None:
    with pytest.raises(ValueError):
        wd.pack_compact(Continuation(PAIR))
    good = wd.pack_compact(Continuation(FULL1, 10, 0, start_cwnd=3, ssthresh=9, tcp_base=1))
    for bits in (0x20, 0x0C):  # an unknown bit; state 3
        bad = good[:1] + bytes((bits,)) + good[2:]
        with pytest.raises(DecodeError):
            wd.unpack_compact(bad, 0, 10, 0)
    with pytest.raises(DecodeError, match="truncated"):
        wd.unpack_compact(good[:-1], 0, 10, 0)


def test_hashed_roundtrip_and_epoch() -> None:
    raw = wd.pack_hashed(0x12345, 0xDEADBEEF, 0x1FF, b"k" * 16)
    assert len(raw) == HASHED_LEN
    assert wd.unpack_hashed(raw) == (0x2345, 0xDEADBEEF, 0xFF, b"k" * 16)
    c, end = decode_continuation(b"pad" + raw, 3)
    assert (c.type, c.parent, c.timestamp, c.key_epoch, c.mac, end) == (
        HASHED, 0x2345, 0xDEADBEEF, 0xFF, b"k" * 16, 3 + HASHED_LEN)
    assert c.encode() == raw and not c.is_full
    assert wd.epoch_from_low(1000, 1000 & 0xFF) == 1000
    assert wd.epoch_from_low(1000, 1001 & 0xFF) == 1001
    assert wd.epoch_from_low(0x1FF, 0x00) == 0x200  # across a low-byte wrap
    with pytest.raises(DecodeError, match="truncated"):
        decode_continuation(raw[:-1])


def test_pair_form_is_minimal_layout_but_a_regular_packet() -> None:
    c = Continuation(PAIR, 77, 1, 2, 3, 4)
    raw = c.encode()
    assert len(raw) == 18 and raw[0] == PAIR
    back, _ = decode_continuation(raw)
    assert back.type == PAIR and back.seq == 77 and not back.is_full


# ------------------------------------------------------------------ paired plans
@pytest.mark.parametrize("c0,ss", [(1, 1), (1, 8), (2, 2), (2, 64), (3, 3), (3, 0x3FFF), (4, 9),
                                   (7, 7), (10, 40)])
def test_pair_types_never_deadlock(c0: int, ss: int) -> None:
    """A PAIR packet's successor is FULL2 and is emitted without acknowledging the PAIR."""
    base = 100
    for p in range(base, base + 300):
        if dl.pair_type(p, base, c0, ss) == PAIR:
            assert dl.pair_type(p + 1, base, c0, ss) == FULL2
            assert cwnd(p - 1, base, c0, ss) >= 2
    assert dl.pair_type(base + 200, base, c0, ss) != dl.pair_type(base + 201, base, c0, ss)


@pytest.mark.parametrize("c0,ss", [(1, 1), (2, 2), (3, 0x3FFF), (3, 6), (4, 4), (5, 20)])
def test_paired_schedule_is_the_full1_schedule(c0: int, ss: int) -> None:
    """Without loss, FULL2 requests emit exactly the packets per-packet requests would."""
    base, top = 1, 400
    full1: set[int] = set()
    for a in range(base - 1, top):
        full1.update(s.pkt for s in pl.plan_request(a, base, c0, ss, 0, [(base, a)] if a >= base
                                                     else []).slots)
    paired: set[int] = set()
    types: dict[int, int] = {}
    todo = [(base - 1, FULL2)]
    while todo:
        k, _ = todo.pop()
        plan = dl.plan_paired(k, base, c0, ss, 0, [(base, k)] if k >= base else [])
        assert plan.verdict in ("normal", "handshake")
        for s in plan.slots:
            assert s.pkt not in paired, "emitted twice"
            paired.add(s.pkt)
            types[s.pkt] = s.ctype
            if s.ctype == FULL2 and s.pkt < top:
                todo.append((s.pkt, FULL2))
    below = {p for p in full1 if p < top}
    assert below <= paired
    requests = sum(1 for p in below if types[p] == FULL2)
    assert requests < 0.6 * len(below)  # about half the requests


# ------------------------------------------------------------------ transfers
MODES = ("pairs", "hash", "both")
CASES = {
    "clean": {},
    "loss3": {"loss": 0.03},
    "reorder_dup": {"loss": 0.01, "reorder": 0.05, "duplicate": 0.02},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_transfer_byte_exact_in_every_mode(mode: str, case: str) -> None:
    sc, cc = compression.configs(mode)
    for seed in (1, 2):
        link = LinkConfig(**CASES[case])
        link2 = LinkConfig(**CASES[case])
        r = simulate_transfer(300_000, seed=seed, down=link, up=link2, server_config=sc,
                              client_config=cc)
        assert r.ok, (mode, case, seed, r.summary())
        drops = {k: v for k, v in r.server.items() if k.startswith("drop.")}
        assert not {k for k in drops if k in ("drop.mac", "drop.nonce", "drop.bad_cont")}, drops
        assert r.client.get("delta_unknown", 0) == 0


def test_default_wire_is_unchanged_and_flags_fall_back() -> None:
    off = compression.measure(200_000, 0.0, "off")
    assert set(off["response_types"]) <= {"FULL1", "MINIMAL"}
    assert set(off["request_types"]) == {"FULL1"}
    # a client asking for delta encoding from a server without the option gets the plain format
    r = simulate_transfer(200_000, 0.02, 3, client_config=ClientConfig(paired=True, hashed=True))
    assert r.ok and r.server.get("drop", 0) == 0
    assert r.client.get("delta_unknown", 0) == 0


def test_lab_compare_meets_the_target() -> None:
    res = compression.compare(300_000, 0.0, modes=("both",))
    both = res["modes"]["both"]
    assert both["ok"] and res["modes"]["off"]["ok"]
    red = both["reduction_pct"]
    assert red["resp_bytes_per_data_packet"] >= 30
    assert red["req_bytes_per_request"] >= 30
    assert red["req_bytes_per_data_packet"] >= 30
    assert "both" in compression.table(res)
    with pytest.raises(ValueError):
        compression.configs("nope")


# ------------------------------------------------------------------ attacks
def _server(delta: bool = True) -> ServerEngine:
    gen = Generated()
    s = ServerEngine(SECRET, gen, SERVER_IP, SERVER_PORT, ServerConfig(delta=delta))
    gen.attach(s)
    return s


def _drive(rounds: int = 4):
    """Hand-driven connection, both delta forms: (client, requests[(seg, t)], answers[(seg, t)])."""
    server = _server()
    client = ClientEngine(CLIENT_IP, CLIENT_PORT, SERVER_IP, SERVER_PORT,
                          ClientConfig(paired=True, hashed=True), isn=0x777)
    now = 1.0
    client.connect(now, gen_request(2_000_000, 3))
    pending = client.datagrams_to_send()
    reqs, answers = [], []
    for _ in range(rounds):
        now += STEP
        out = []
        for seg in pending:
            reqs.append((seg, now))
            out += server.receive(seg, CLIENT_IP, now)
        assert out, dict(server.counters)
        now += STEP
        for seg in out:
            answers.append((seg, now))
            client.receive(seg, now)
        pending = client.datagrams_to_send()
    assert client.read() == generated_bytes(3, 0, client._deliver)
    return client, reqs, answers


def _flip(seg: bytes, index: int, bit: int, src: bytes, dst: bytes) -> bytes:
    data = bytearray(seg)
    data[index] ^= 1 << bit
    data[16:18] = b"\0\0"
    data[16:18] = checksum(src, dst, bytes(data)).to_bytes(2, "big")
    return bytes(data)


def _compact_fields(payload: bytes) -> tuple[set[int], set[int], set[int]]:
    """Payload offsets of the COMPACT form: all of it, the client-owned fixed bytes
    (clientTimestamp) and the client-owned varint bytes (clientState, parent)."""
    start = 1
    end = start + wd.request_cont_len(payload)[1]
    fixed = set(range(start + 7, start + 11))
    varint: set[int] = set()
    off = start + wd.COMPACT_FIXED_LEN
    for _ in range(2):
        _, nxt = wd.get_varint(payload, off)
        varint.update(range(off, nxt))
        off = nxt
    return set(range(start, end)), fixed, varint


def test_compact_requests_tampered_bits_are_refused() -> None:
    _, reqs, _ = _drive()
    compact = [(s, t) for s, t in reqs if len(s) > HEADER_LEN + 1 and s[HEADER_LEN + 1] == COMPACT]
    assert len(compact) >= 3
    server = _server()
    checked = 0
    for seg, now in compact[:3]:
        payload = seg[HEADER_LEN:]
        fields, fixed, varint = _compact_fields(payload)
        for off in sorted(fields):
            for bit in range(8):
                if off in fixed or (off in varint and bit < 7):
                    continue  # client-owned value bits (outside the MAC, like the FULL form)
                server.replay = ReplayHistory(120.0, 1 << 20)
                drops = server.counters["drop"]
                out = server.receive(_flip(seg, HEADER_LEN + off, bit, CLIENT_IP, SERVER_IP),
                                     CLIENT_IP, now)
                assert not out and server.counters["drop"] == drops + 1, (off, bit)
                checked += 1
        server.replay = ReplayHistory(120.0, 1 << 20)
        assert server.receive(seg, CLIENT_IP, now), "control: the untouched request is served"
    assert checked > 3 * 8 * 30
    assert server.counters["drop.mac"] > 0


def test_compact_replays_are_counted_drops_and_share_the_full_key() -> None:
    _, reqs, _ = _drive()
    seg, now = next((s, t) for s, t in reqs if s[HEADER_LEN + 1] == COMPACT)
    server = _server()
    assert server.receive(seg, CLIENT_IP, now)
    assert server.receive(seg, CLIENT_IP, now + 0.001) == []
    assert server.counters["drop.replay"] == 1
    # the same continuation in FULL form is the same sealed continuation: one use in all
    s = decode_segment(seg, CLIENT_IP, SERVER_IP)
    keys = KeyRing(SECRET)
    _, plain = wd.unpack_request(s.payload, s.ack, keys.current(now), True)
    full = bytearray(seg[:HEADER_LEN] + plain)
    full[16:18] = b"\0\0"
    full[16:18] = checksum(CLIENT_IP, SERVER_IP, bytes(full)).to_bytes(2, "big")
    assert server.receive(bytes(full), CLIENT_IP, now + 0.002) == []
    assert server.counters["drop.replay"] == 2
    # a server without the option cannot expand it: a counted decode drop
    off = _server(delta=False)
    assert off.receive(seg, CLIENT_IP, now) == []
    assert off.counters["drop.decode.delta_off"] == 1


def test_hashed_answers_tampered_bits_never_rebuild_a_valid_continuation() -> None:
    client, _, answers = _drive(rounds=3)
    keys = KeyRing(SECRET)
    keys.current(2.0)
    pseudo = pseudo_header(CLIENT_IP, CLIENT_PORT, SERVER_IP, SERVER_PORT)
    preds = client._preds
    assert preds is not None and len(preds) > 0
    hashed = []
    for seg, _ in answers:
        s = decode_segment(seg, SERVER_IP, CLIENT_IP)
        if len(s.payload) > 8 and s.payload[8] == HASHED:
            hashed.append(s)
    assert len(hashed) >= 3
    checked = 0
    for s in hashed[:4]:
        resp = decode_response(s.payload)
        good = preds.rebuild(resp.cont, s.seq, resp.position, client.conn_id)
        assert good is not None and good.type in (FULL1, FULL2)
        assert verify(keys, pseudo, good.encode(), good.key_epoch), "control: rebuilt = sealed"
        for off in range(9, 8 + HASHED_LEN):  # every field after the type byte
            for bit in range(8):
                data = bytearray(s.payload)
                data[off] ^= 1 << bit
                r2 = decode_response(bytes(data))
                c = preds.rebuild(r2.cont, s.seq, r2.position, client.conn_id)
                assert c is None or not verify(keys, pseudo, c.encode(), c.key_epoch), (off, bit)
                checked += 1
        for bit in range(8):  # the type byte: never decodes to a usable FULL continuation
            data = bytearray(s.payload)
            data[8] ^= 1 << bit
            with contextlib.suppress(DecodeError):
                assert not decode_response(bytes(data)).cont.is_full
    assert checked == 4 * (HASHED_LEN - 1) * 8


def test_bootstrap_fields_survive_compaction() -> None:
    c = Continuation(FULL2, 900, 1, 0, 5, 6, 7, 8, BOOTSTRAP, 850, 880, 4, 4, 880, 99, 3, b"z" * 16)
    full, _ = wd.unpack_compact(wd.pack_compact(c), 0, 900, 3)
    assert full == c.encode()


def test_lab_checks_give_verdicts() -> None:
    res = {"modes": {"off": {"total_per_data_packet": 140.0, "requests": 100},
                     "pairs": {"total_per_data_packet": 80.0, "requests": 50},
                     "both": {"total_per_data_packet": 40.0, "requests": 50}}}
    ck = compression.checks
    assert ck.check_smallest(None, res).startswith("Not yet")
    assert ck.check_smallest("pairs", res).startswith("Not yet")
    assert ck.check_smallest("both", res).startswith("OK")
    assert ck.check_request_ratio(None, res).startswith("Not yet")
    assert ck.check_request_ratio(3.0, res).startswith("Not yet")
    assert ck.check_request_ratio(2.0, res).startswith("OK")
