"""The server's fast path (core.server_fast) answers exactly as the general path (issue 17).

A request corpus is recorded once: every segment a server took during a lossy transfer (losses
both ways, so recoveries, SLOWSTARTs and FINs are in it), then malformed and hostile requests
made from its valid ones — a MAC bit flipped, a stale and a future-dated copy, a wrong key epoch,
replays, a SACK summary and a SACK shape that lie, a SYN flag on a request, another port,
truncations and random garbage. The corpus is replayed into two fresh servers with the same
secret, one on `receive` (the fast path) and one on `receive_slow` (admission's path), and every
answer must be the same bytes, and the counters and the state cache's the same. The general path
reaches its verdicts through `core.admission.admit`, so this is also the proof that the fast
path's inlined admission gives admission's verdict on every input of the corpus.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator

import pytest
from wire_helpers import drive_client

from trickles_kit.apps.generated import Generated, gen_request
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.seal import UcontBox
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.wire.segment import SYN, decode_segment, encode_segment

SECRET = bytes(range(40, 72))
SIP = socket.inet_aton("10.0.0.1")
CIP = socket.inet_aton("10.1.0.9")
PORT = 80
Corpus = list[tuple[bytes, bytes, float]]  # (segment, client address, server clock)


def _server(cfg: ServerConfig | None = None) -> ServerEngine:
    gen = Generated()
    srv = ServerEngine(SECRET, gen, SIP, PORT, cfg or ServerConfig(state_cache=0))
    gen.attach(srv)
    # the sealed user continuation's AES-GCM nonce from a fixed source: both servers seal alike
    gen._box = UcontBox(srv.keys, nonce_source=lambda n: bytes(n))
    return srv


def _record(size: int = 400_000, loss: float = 0.04, seed: int = 5) -> Corpus:
    """Every segment the server takes during a transfer lossy both ways, with its time."""
    srv = _server()
    cl = ClientEngine(CIP, 40009, SIP, PORT, ClientConfig(), isn=77, echo_key=bytes(16))
    rng = random.Random(seed)
    corpus: Corpus = []
    cl.connect(0.0, gen_request(size, seed))

    def send(seg: bytes, t: float) -> Iterator[tuple[float, bytes]]:
        if rng.random() < loss:
            return
        corpus.append((seg, CIP, t + 0.005))
        for ans in srv.receive_slow(seg, CIP, t + 0.005):
            if rng.random() >= loss:
                yield t + 0.010 + rng.random() * 0.003, ans

    drive_client(cl, send, lambda t, n: cl.read())
    assert cl.done, "the recorded transfer must complete"
    return corpus


def _edit(seg: bytes, at: int, new: bytes, port: int | None = None,
          flags: int | None = None) -> bytes:
    """`seg` with payload bytes at `at` replaced by `new`, re-checksummed (client -> server)."""
    s = decode_segment(seg)
    p = s.payload[:at] + new + s.payload[at + len(new):]
    return encode_segment(CIP, SIP, s.src_port, PORT if port is None else port, s.seq, s.ack,
                          s.flags if flags is None else flags, p, s.trickles_len)


def _hostile(corpus: Corpus, seed: int = 9) -> Corpus:
    """Malformed and hostile requests made from the corpus' valid ones, each right after its
    original (the server's clock moves forward, as a real one does); those that move it 130 s
    on (two key epochs), at the end."""
    rng = random.Random(seed)
    normals = [i for i, (s, _, _) in enumerate(corpus)
               if len(s) > 120 and decode_segment(s).payload[0] == 0]
    after: dict[int, Corpus] = {}
    late: Corpus = []
    for i in sorted(rng.sample(normals, 60)):
        seg, _, t = corpus[i]
        p = decode_segment(seg).payload
        mac_at = 60 + rng.randrange(16)
        after[i] = [
            (_edit(seg, mac_at, bytes((p[mac_at] ^ 1,))), CIP, t),  # bad MAC
            (seg, CIP, t - 10.0),  # sealed in the future (a replica's clock behind)
            (_edit(seg, 56, struct.pack("!I", struct.unpack_from("!I", p, 56)[0] + 5)), CIP,
             t),  # another key epoch (MAC-covered: a MAC failure or an epoch refusal)
            (seg, CIP, t + 0.001),  # a replay
            (seg, CIP, t + 2.0),  # a late replay (stale, with a freshness under 2 s)
            (_edit(seg, 85, bytes((p[85] ^ 0x40,))), CIP, t),  # SACK summary lies (nonce)
            (_edit(seg, 81, struct.pack("!I", struct.unpack_from("!I", p, 81)[0] + 3)), CIP,
             t),  # SACK right past the ack (shape)
            (_edit(seg, 0, b"", flags=SYN | 0x10), CIP, t),  # a SYN flag on a request
            (_edit(seg, 0, b"", port=81), CIP, t),  # another port
            (seg[: rng.randrange(20, len(seg))], CIP, t),  # truncated (checksum, or short)
            (_edit(seg[:28] + p[: rng.randrange(1, 93)], 0, b""), CIP, t),  # short request
            (bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))), CIP, t),  # garbage
            (seg, socket.inet_aton("10.1.0.10"), t),  # another client address: checksum
        ]
        rng.shuffle(after[i])
        after[i].insert(0, corpus[i])  # a forgery first, the original, then the rest
        after[i][0], after[i][1] = after[i][1], after[i][0]
        late.append((seg, CIP, t + 130.0))  # two epochs on: the key epoch (or stale)
    out: Corpus = []
    for i, item in enumerate(corpus):
        out.extend(after.get(i, [item]))
    return out + late


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return _hostile(_record())


def _replay(corpus: Corpus, cfg: ServerConfig | None, fast: bool):
    srv = _server(cfg)
    srv.fast_path = fast
    slow = srv.receive_slow
    calls = [0]

    def counted(seg: bytes, cip: bytes, now: float) -> list[bytes]:
        calls[0] += 1
        return slow(seg, cip, now)

    srv.receive_slow = counted  # type: ignore[method-assign]
    outs = [srv.receive(s, c, t) for s, c, t in corpus]
    sc = srv.state_cache.stats() if srv.state_cache is not None else None
    return outs, dict(srv.counters), sc, calls[0]


@pytest.mark.parametrize("cfg", [
    ServerConfig(state_cache=0),
    ServerConfig(state_cache=64),
    ServerConfig(state_cache=0, echo_ucont=True, max_sacks=4),
    ServerConfig(state_cache=0, freshness=1.5),
], ids=["default", "state_cache", "echo_ucont", "freshness"])
def test_fast_and_slow_paths_answer_byte_for_byte(corpus: Corpus, cfg: ServerConfig) -> None:
    fast, fcount, fsc, to_slow = _replay(corpus, cfg, True)
    slow, scount, ssc, _ = _replay(corpus, cfg, False)
    differ = [i for i, (a, b) in enumerate(zip(fast, slow, strict=True)) if a != b]
    assert not differ, f"{len(differ)} of {len(corpus)} answers differ, first at {differ[:5]}"
    assert fcount == scount
    assert list(fcount) == list(scount)  # the same counters, created in the same order
    assert fsc == ssc
    # the corpus exercises both: most of the transfer's ~250 requests (and the replays of
    # them) take the fast path, the refusals the other
    assert len(corpus) - to_slow > 200
    assert sum(scount[k] for k in scount if k.startswith("drop.")) == scount["drop"] > 700
    reasons = ["mac", "key_epoch", "future", "replay", "nonce", "sack_shape", "syn_type",
               "port", "decode.checksum", "decode.truncated"]
    for reason in reasons + (["stale"] if cfg.freshness < 2 else []):
        assert scount.get("drop." + reason, 0) > 0, reason
    assert scount["recovery"] > 0 and scount.get("slowstart", 0) + scount.get("fin", 0) > 0


def test_the_comparison_has_teeth(corpus: Corpus) -> None:
    """A fast path that answers one field differently is caught by the comparison: here its
    own config echoes the user continuation, the general path's does not. (Its config, not a
    patched module function: the compiled build binds those when it is built.)"""
    import dataclasses

    srv = _server()
    srv._fast.cfg = dataclasses.replace(srv.cfg, echo_ucont=True)
    fast = [srv.receive(s, c, t) for s, c, t in corpus[:200]]
    slow = _replay(corpus[:200], None, False)[0]
    assert srv.counters["continue"] > 20  # (answered, by the fast path)
    assert fast != slow


def test_client_request_encoder_matches_request_encode(corpus: Corpus) -> None:
    """The client's one-pack request encoder (core.client_send.encode_request) gives
    `Request.encode`'s bytes for every request of the corpus, and raises where it raises."""
    from trickles_kit.core.client_send import encode_request
    from trickles_kit.wire.messages import decode_request

    seen = 0
    for seg, _, _ in corpus:
        try:
            req = decode_request(decode_segment(seg).payload)
        except Exception:
            continue
        if req.cont is None:
            continue
        assert encode_request(req) == req.encode()
        seen += 1
        for bad in ([(5, 3)], [(0, 1 << 33)]):  # ranges the encoder refuses
            req.ranges = bad
            with pytest.raises(ValueError):
                encode_request(req)
    assert seen > 200


def test_window_step_matches_cwnd() -> None:
    """The fast path's (cwnd(k - 1), cwnd(k)) in one root, against `core.cc.cwnd` itself: slow
    start, its edge, congestion avoidance and the MAX_CWND cap, over many epochs."""
    from trickles_kit.core.cc import MAX_CWND, cwnd
    from trickles_kit.core.server_fast import _windows

    rng = random.Random(17)
    cases = [(base, c0, ss) for base in (0, 1, 977) for c0 in (1, 2, 3, 10)
             for ss in (c0, c0 + 1, 16, 64, 0x3FFF) if ss >= c0]
    for base, c0, ss in cases:
        ks = list(range(base, base + 300)) + [base + rng.randrange(1 << 26) for _ in range(300)]
        for k in ks:
            assert _windows(k, base, c0, ss) == (cwnd(k - 1, base, c0, ss),
                                                 cwnd(k, base, c0, ss)), (k, base, c0, ss)
    capped = [k for k in range(1 << 25, (1 << 25) + 50) if cwnd(k - 1, 0, 3, 64) == MAX_CWND]
    assert capped  # the cap was reached, and held
