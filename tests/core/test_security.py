"""Security properties of the stateless server (PROTOCOL §3, §6, §7), attacked by hand.

A ClientEngine and a ServerEngine run the handshake with segments passed by hand (no simulator),
so every test starts from exact, valid request segments and attacks them against replicas that
share the master secret: tampering (MAC), key epochs, replay and staleness, range nonces, memory
that must not grow with the number of connections, and malformed input.
"""

from __future__ import annotations

import gc
import random
import sys
import time
import tracemalloc
from collections import Counter

import pytest
from helpers_security import (
    CLIENT_IP,
    CLIENT_OWNED,
    CLIENT_PORT,
    CONT_OFFSET,
    MAC_COVERED,
    OTHER_IP,
    SERVER_IP,
    SERVER_PORT,
    STEP,
    Capture,
    fix_checksum,
    flip_bit,
    fresh_replay,
    make_server,
    parse_request,
    parse_response,
    readdress,
    run_connection,
    run_handshake,
    with_source_port,
)

from trickles_kit.core import events as ev
from trickles_kit.core.events import EventLog
from trickles_kit.core.server import ServerConfig
from trickles_kit.wire.continuation import BOOTSTRAP, FULL1, FULL2
from trickles_kit.wire.messages import REQ_NORMAL, Request, SackBlock
from trickles_kit.wire.segment import ACK, HEADER_LEN, SYN, encode_segment

REQUESTS = (0, 1, 2, 3)  # request for the SYN-ACK continuation, then for packets 1..3


@pytest.fixture(scope="module")
def cap() -> Capture:
    c = run_handshake()
    assert set(c.requests) == {0, 1, 2, 3}
    assert set(c.responses) >= {0, 1, 2, 3, 4, 5, 6, 7, 8}
    return c


def _feed(server, seg: bytes, now: float, ip: bytes = CLIENT_IP, log: EventLog | None = None):
    """receive() plus what it changed: (output, drop-counter delta, new events)."""
    drops = server.counters["drop"]
    n = len(log.events) if log is not None else 0
    out = server.receive(seg, ip, now)
    new = log.events[n:] if log is not None else []
    return out, server.counters["drop"] - drops, new


def _kinds(events: list[ev.Event]) -> list[str]:
    return [e.kind for e in events]


def _refused_for_key_epoch(out: list[bytes], drops: int, new: list[ev.Event]) -> None:
    """`_feed`'s result for a continuation sealed under a key that is no longer accepted."""
    assert out == [] and drops == 1
    assert _kinds(new) == [ev.MAC_FAIL] and new[0].detail["reason"] == "key_epoch"


def _verdicts(events: list[ev.Event]) -> list[str]:
    """Event kinds minus nonce_ok (the SACK proof is checked, and reported, before replay)."""
    return [e.kind for e in events if e.kind != ev.NONCE_OK]


# ------------------------------------------------------------------------------- 1. tampering
@pytest.mark.parametrize("k", REQUESTS)
def test_tampering_mac_covered_bits_rejected(cap: Capture, k: int) -> None:
    """Every single-bit flip of a MAC-covered byte is dropped: mac_fail, or a decode drop when
    the flipped type/state byte no longer decodes. No output, one counted drop each."""
    seg, now = cap.requests[k]
    log = EventLog()
    server = make_server(log=log)
    bad: list[str] = []
    n_mac = n_decode = 0
    for off in MAC_COVERED:
        for bit in range(8):
            mutated = flip_bit(seg, CONT_OFFSET + off, bit)
            fresh_replay(server)  # the original was never accepted here: only the MAC can reject
            out, drops, new = _feed(server, mutated, now, log=log)
            ctype, state = mutated[CONT_OFFSET], mutated[CONT_OFFSET + 26]
            undecodable = ctype not in (FULL1, FULL2) or state > BOOTSTRAP
            if undecodable:
                ok = (_kinds(new) == [ev.DROP]
                      and new[0].detail.get("reason", "").startswith("decode."))
                n_decode += 1
            else:
                ok = _kinds(new) == [ev.MAC_FAIL]
                n_mac += 1
            if out or drops != 1 or not ok:
                bad.append(f"cont byte {off} bit {bit}: out={len(out)} drops={drops} "
                           f"events={[(e.kind, e.detail) for e in new]}")
    assert not bad, "\n".join(bad[:20])
    assert n_mac + n_decode == len(MAC_COVERED) * 8
    assert n_decode == 8 + 6  # every flip of the type byte; state bits 2..7 (state > BOOTSTRAP)
    assert server.counters["drop"] == len(MAC_COVERED) * 8
    # control: the untouched request is accepted by the same replica
    fresh_replay(server)
    out, drops, _ = _feed(server, seg, now, log=log)
    assert out and drops == 0


@pytest.mark.parametrize("k", REQUESTS)
def test_tampering_client_owned_bits_accepted(cap: Capture, k: int) -> None:
    """clientState, parent and clientTimestamp are not under the MAC: flips are accepted and
    echoed into the new continuations."""
    seg, now = cap.requests[k]
    server = make_server()
    bad: list[str] = []
    for off in CLIENT_OWNED:
        for bit in range(8):
            mutated = flip_bit(seg, CONT_OFFSET + off, bit)
            fresh_replay(server)
            out, drops, _ = _feed(server, mutated, now)
            sent = parse_request(mutated)[1].cont
            echoed = [parse_response(o)[1].cont for o in out]
            if (not out or drops != 0 or any(
                    (c.client_state, c.parent, c.client_timestamp)
                    != (sent.client_state, sent.parent, sent.client_timestamp) for c in echoed)):
                bad.append(f"cont byte {off} bit {bit}: out={len(out)} drops={drops}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("k", REQUESTS)
def test_tampering_pseudo_header(cap: Capture, k: int) -> None:
    """The MAC binds the client address and port and the service address."""
    seg, now = cap.requests[k]
    log = EventLog()
    server = make_server(log=log)
    attempts = {
        "other client address": (readdress(seg, OTHER_IP), OTHER_IP),
        "other client port": (with_source_port(seg, CLIENT_PORT + 1), CLIENT_IP),
    }
    for what, (forged, ip) in attempts.items():
        out, drops, new = _feed(server, forged, now, ip=ip, log=log)
        assert out == [] and drops == 1, what
        assert _kinds(new) == [ev.MAC_FAIL] and new[0].detail["reason"] == "mac", what
    # another service address (same secret) and another secret: same verdict
    other_service = bytes((10, 0, 0, 2))
    s2 = make_server(log=log, service_ip=other_service)
    out, drops, new = _feed(s2, readdress(seg, CLIENT_IP, other_service), now, log=log)
    assert out == [] and drops == 1 and _kinds(new) == [ev.MAC_FAIL]
    s3 = make_server(log=log, secret=bytes(32))
    out, drops, new = _feed(s3, seg, now, log=log)
    assert out == [] and drops == 1 and _kinds(new) == [ev.MAC_FAIL]
    # control: rejected forgeries left no replay trace; the genuine request is accepted
    out, drops, _ = _feed(server, seg, now, log=log)
    assert out and drops == 0


# ------------------------------------------------------------------------------ 2. key epochs
EPOCH = 10.0


@pytest.mark.parametrize("k", REQUESTS)
def test_key_epochs_by_clock(k: int) -> None:
    """Sealed in epoch e: accepted in e and e + 1, rejected (mac_fail, key_epoch) in e + 2.

    The connection runs in epoch 1 (t = 11 s with 10 s epochs), so the SYN-ACK continuation is
    sealed in epoch 1 too and must say so."""
    cfg = ServerConfig(epoch_seconds=EPOCH, freshness=100.0)
    c = run_handshake(cfg, start=EPOCH + 1.0)
    seg, now = c.requests[k]
    sealed = c.responses[k][1]
    epoch = int(sealed // EPOCH)
    assert epoch == 1
    assert c.cont(k).key_epoch == epoch, "continuation not labelled with its sealing epoch"
    for shift, accepted in ((0.0, True), (EPOCH, True), (2 * EPOCH, False)):
        log = EventLog()
        replica = make_server(cfg, log=log)
        out, drops, new = _feed(replica, seg, now + shift, log=log)
        if accepted:
            assert out and drops == 0, f"epoch {epoch} continuation refused at +{shift}s: " \
                f"{[(e.kind, e.detail) for e in new]}"
            fresh = [parse_response(o)[1].cont for o in out]
            assert all(x.key_epoch == int((now + shift) // EPOCH) for x in fresh if x.is_full)
        else:
            _refused_for_key_epoch(out, drops, new)


@pytest.mark.parametrize("k", REQUESTS)
def test_key_epochs_by_rotation(cap: Capture, k: int) -> None:
    """keys.rotate(): the old epoch stays valid for one rotation, not for two."""
    seg, now = cap.requests[k]
    log = EventLog()
    replica = make_server(log=log)
    assert replica.keys.current(now) == cap.cont(k).key_epoch == 0
    replica.keys.rotate()
    out, drops, _ = _feed(replica, seg, now, log=log)
    assert out and drops == 0
    assert all(parse_response(o)[1].cont.key_epoch == 1 for o in out
               if parse_response(o)[1].cont.is_full)
    replica.keys.rotate()
    fresh_replay(replica)
    _refused_for_key_epoch(*_feed(replica, seg, now, log=log))


# ---------------------------------------------------------------------------------- 3. replay
@pytest.mark.parametrize("k", REQUESTS)
def test_replay_rejected_within_freshness(cap: Capture, k: int) -> None:
    seg, now = cap.requests[k]
    log = EventLog()
    server = make_server(log=log)
    out, drops, _ = _feed(server, seg, now, log=log)
    assert out and drops == 0
    out, drops, new = _feed(server, seg, now + 0.5, log=log)
    assert out == [] and drops == 1 and _verdicts(new) == [ev.REPLAY_DROP]
    # rewriting the client-owned fields does not make a new continuation
    disguised = flip_bit(flip_bit(seg, CONT_OFFSET + 13, 0), CONT_OFFSET + 17, 3)
    out, drops, new = _feed(server, disguised, now + 1.0, log=log)
    assert out == [] and drops == 1 and _verdicts(new) == [ev.REPLAY_DROP]
    assert server.counters["drop.replay"] == 2


@pytest.mark.parametrize("k", REQUESTS)
def test_stale_after_freshness(cap: Capture, k: int) -> None:
    seg, _ = cap.requests[k]
    fresh_s = 5.0
    cfg = ServerConfig(freshness=fresh_s)
    sealed = cap.sealed_at(k)
    inside = make_server(cfg)
    out, drops, _ = _feed(inside, seg, sealed + fresh_s - 0.25)
    assert out and drops == 0
    log = EventLog()
    late = make_server(cfg, log=log)  # a fresh replica: no replay history can be the reason
    out, drops, new = _feed(late, seg, sealed + fresh_s + 0.25, log=log)
    assert out == [] and drops == 1
    assert _kinds(new) == [ev.STALE_DROP] and new[0].detail["reason"] == "stale"


# ---------------------------------------------------------------------------------- 4. nonces
def _claim_lost_packet(c: Capture, trials: int, bits: int, seed: int):
    """Requests on packet 5's continuation claiming [1, 4] (packet 4 was lost) plus [5, 5].

    The best lie: p1 ^ p2 ^ p3 (known) XOR a random guess of p4. Returns (accepted, server)."""
    assert 4 in c.lost
    cont = c.cont(5)
    ucont = c.ucont(5)
    now = c.responses[5][1] + 2 * STEP
    known = c.nonce(1) ^ c.nonce(2) ^ c.nonce(3)
    p5 = c.nonce(5)
    sink = Counter()
    server = make_server(c.config, log=lambda e: sink.update((e.kind,)))

    def segment(summary: int, seq: int) -> bytes:
        req = Request(REQ_NORMAL, cont, [SackBlock(1, 4, summary), SackBlock(5, 5, p5)], ucont,
                      [(100_000, 101_448)], b"")
        return encode_segment(CLIENT_IP, SERVER_IP, CLIENT_PORT, SERVER_PORT, seq, cont.seq, ACK,
                              req.encode(), 0, 0xFFFF)

    # control: the true summary (the client never saw p4; we did) is accepted
    out, drops, _ = _feed(server, segment(known ^ c.nonce(4), 1), now)
    assert out and drops == 0, "the honest claim must pass, else this test proves nothing"
    fresh_replay(server)
    base = Counter(server.counters)
    sink.clear()
    rng = random.Random(seed)
    accepted = 0
    for i in range(trials):
        out = server.receive(segment(known ^ rng.getrandbits(bits), 2 + i), CLIENT_IP, now)
        if out:
            accepted += 1
            fresh_replay(server)  # so the next lucky guess is judged on its nonce alone
    delta = server.counters - base
    assert delta["rx"] == trials
    assert delta["nonce_fail"] == delta["drop.nonce"] == sink[ev.NONCE_FAIL] == trials - accepted
    assert delta["nonce_ok"] == accepted
    assert delta["drop"] == trials - accepted
    return accepted


def test_nonce_guess_32_bit_always_rejected(cap: Capture) -> None:
    assert _claim_lost_packet(cap, 10_000, 32, seed=1) == 0


def test_nonce_guess_8_bit_rate() -> None:
    c = run_handshake(ServerConfig(nonce_bits=8))
    trials = 20_000
    accepted = _claim_lost_packet(c, trials, 8, seed=2)
    rate = accepted / trials
    # expected 1/256 (78 of 20,000, sd about 8.8): the band is more than 4 sd wide either way
    assert 0.5 / 256 <= rate <= 1.6 / 256, f"{accepted} of {trials} accepted"


# ---------------------------------------------------------------------------- 5. statelessness
def _deep_size(obj: object) -> int:
    """sys.getsizeof summed over everything reachable from `obj` (classes excluded)."""
    seen: set[int] = set()
    stack = [obj]
    total = 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return total


REPLAY_CAP = 2_000
CONN_BYTES = 2_000


@pytest.fixture(scope="module")
def stateless_run() -> dict:
    """1,000 then 10,000 real connections (handshake + 2,000 bytes) against one server.

    After each batch (clients discarded, gc run): total traced memory, and the part of it held by
    the server's bounded soft-state structures (replay history, nonce cache, and the generated
    handler's cache of already-opened user continuations)."""
    server = make_server(ServerConfig(replay_entries=REPLAY_CAP))
    now = run_connection(server, 60_000, 1.0, CONN_BYTES)  # warm module-level caches
    gc.collect()
    tracemalloc.start()
    try:
        res: dict = {"server": server}
        done = 0
        t0 = time.perf_counter()
        for target in (1_000, 10_000):
            while done < target:
                now = run_connection(server, done, now, CONN_BYTES)
                done += 1
            gc.collect()
            total = tracemalloc.get_traced_memory()[0]
            replay = _deep_size(server.replay)
            nonce_cache = _deep_size(server.nonces._cache)
            app_cache = _deep_size(server.handler._opened)
            res[target] = {"total": total, "replay": replay, "nonce_cache": nonce_cache,
                           "app_cache": app_cache, "app_entries": len(server.handler._opened),
                           "other": total - replay - nonce_cache - app_cache,
                           "entries": len(server.replay)}
        res["seconds"] = time.perf_counter() - t0
    finally:
        tracemalloc.stop()
    return res


def test_statelessness_memory_flat(stateless_run: dict) -> None:
    r1, r10 = stateless_run[1_000], stateless_run[10_000]
    server = stateless_run["server"]
    assert server.counters["syn"] == 10_001
    assert r10["entries"] == REPLAY_CAP and server.replay.evicted > 0
    growth = r10["total"] - r1["total"] - (r10["app_cache"] - r1["app_cache"])
    assert growth <= server.replay.memory_bound_bytes(), (r1, r10)
    # the application's cache is bounded by its own cap, whatever the number of connections
    assert r10["app_entries"] <= server.handler.cache_entries
    assert r10["app_cache"] <= server.handler.cache_entries * 200, (r1, r10)
    # stricter: outside the bounded structures nothing grows with connections
    # (16 KiB over 9,000 connections is under 2 bytes per connection)
    assert abs(r10["other"] - r1["other"]) <= 16 * 1024, (r1, r10)


def test_replay_history_memory_within_declared_bound(stateless_run: dict) -> None:
    """ReplayHistory.memory_bound_bytes() claims an upper bound; check it at the cap."""
    server = stateless_run["server"]
    r10 = stateless_run[10_000]
    assert r10["entries"] == REPLAY_CAP
    assert r10["replay"] <= server.replay.memory_bound_bytes(), (
        f"{r10['replay']} bytes held by {REPLAY_CAP} entries "
        f"({r10['replay'] / REPLAY_CAP:.0f} B/entry) > declared "
        f"{server.replay.memory_bound_bytes()} ({server.replay.ENTRY_BYTES} B/entry)")


# ------------------------------------------------------------------------------- 6. bad input
N_BAD = 100_000


def _mutate(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    op = rng.randrange(7)
    if op == 0:  # bit flips anywhere
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # bit flips in the Trickles payload only
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(HEADER_LEN, len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == 2:  # truncation
        del data[rng.randrange(len(data)):]
    elif op == 3:  # extension
        data += rng.randbytes(rng.randint(1, 300))
    elif op == 4:  # SYN flag toggle
        data[13] ^= SYN
    elif op == 5:  # one payload byte set to a random value (type, counts, lengths...)
        i = rng.randrange(HEADER_LEN, min(len(data), HEADER_LEN + 100))
        data[i] = rng.randrange(256)
    else:  # random payload tail after a valid prefix
        cut = rng.randrange(HEADER_LEN, len(data))
        data[cut:] = rng.randbytes(rng.randint(0, 400))
    if rng.random() < 0.95:
        return fix_checksum(data, CLIENT_IP, SERVER_IP)
    return bytes(data)


def test_bad_input_never_raises_and_is_counted(cap: Capture) -> None:
    rng = random.Random(6)
    sink = Counter()
    server = make_server(log=lambda e: sink.update((e.kind,)))
    bases = [cap.requests[k][0] for k in REQUESTS]
    syn = cap.syn
    now = cap.requests[3][1]
    header = bases[0][:HEADER_LEN]
    accepted = terminated = mutated = 0
    bad: list[str] = []
    for i in range(N_BAD):
        roll = rng.random()
        if roll < 0.4:  # garbage of random length
            seg = rng.randbytes(rng.randint(0, 2000))
        elif roll < 0.5:  # a valid header and checksum over a random payload
            seg = fix_checksum(header + rng.randbytes(rng.randint(0, 2000)), CLIENT_IP,
                               SERVER_IP)
        elif roll < 0.52:  # a SYN whose flag is cleared
            mutated += 1
            data = bytearray(syn)
            data[13] &= ~SYN & 0xFF
            seg = fix_checksum(data, CLIENT_IP, SERVER_IP)
        else:
            mutated += 1
            seg = _mutate(rng, rng.choice(bases))
        drops, terms = server.counters["drop"], server.counters["terminate"]
        out = server.receive(seg, CLIENT_IP, now)
        dd, dt = server.counters["drop"] - drops, server.counters["terminate"] - terms
        if out:
            accepted += 1
            ok = dd == 0 and dt == 0
        elif dt:
            terminated += 1
            ok = dd == 0 and dt == 1
        else:
            ok = dd == 1
        if not ok and len(bad) < 20:
            bad.append(f"#{i}: out={len(out)} drop+={dd} terminate+={dt} {seg.hex()}")
    c = server.counters
    assert not bad, "\n".join(bad)
    assert c["rx"] == N_BAD
    assert c["drop"] + accepted + terminated == N_BAD
    # still-valid mutations: each continuation is usable once (replay), so a handful at most
    assert accepted + terminated <= 0.002 * mutated, (accepted, terminated, mutated)
    drop_events = sum(sink[k] for k in (ev.DROP, ev.MAC_FAIL, ev.NONCE_FAIL, ev.REPLAY_DROP,
                                        ev.STALE_DROP))
    assert drop_events == c["drop"]
    internal = {k: v for k, v in c.items() if k.startswith("drop.internal")}
    assert not internal and c["handler_error"] == 0, internal
