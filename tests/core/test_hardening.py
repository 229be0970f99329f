"""Issue 20, items 1-3: forged answers never reach the application, the client and the gateway
hold a bounded window, and the replay table never answers a replay whatever its load."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from itertools import islice

import pytest
from helpers_security import drive

from trickles_kit.apps.generated import Generated, gen_request, generated_sha256
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.events import EventLog
from trickles_kit.core.replay import ReplayHistory
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.net.ip import aton
from trickles_kit.net.runner import ClientHost, ServerLoop
from trickles_kit.net.udp import UdpTransport
from trickles_kit.wire.continuation import FULL1, NORMAL, Continuation
from trickles_kit.wire.messages import (
    DataChunk,
    FinHint,
    SkipChunk,
    decode_request,
    encode_chunks,
    encode_response,
)
from trickles_kit.wire.segment import ACK, SYN, decode_segment, encode_segment

CIP, SIP = socket.inet_aton("10.1.0.2"), socket.inet_aton("10.0.0.1")
CPORT, SPORT = 40000, 80
SECRET = bytes(range(32))


def forged(cont: Continuation, chunks: list, flags: int = ACK, seq: int = 1,
           src: bytes = SIP, sport: int = SPORT, dport: int = CPORT) -> bytes:
    """A well-formed answer segment (valid checksum, right ports) carrying `cont`."""
    cb = cont.encode()
    payload = encode_response(0, 1, 0, cb, b"", encode_chunks(chunks))
    return encode_segment(src, CIP, sport, dport, seq, 0, flags, payload, 8 + len(cb), 0)


def guess(cont: Continuation, rng: random.Random) -> Continuation:
    """`cont` with the client-owned fields an off-path attacker must guess (it cannot see them)."""
    c = Continuation(**{f: getattr(cont, f) for f in cont.__dataclass_fields__})
    c.client_state, c.parent, c.client_timestamp = (rng.getrandbits(32) for _ in range(3))
    return c


def pair(size: int) -> tuple[ServerEngine, ClientEngine, EventLog]:
    gen = Generated()
    server = ServerEngine(SECRET, gen, SIP, SPORT, ServerConfig())
    gen.attach(server)
    log = EventLog()
    client = ClientEngine(CIP, CPORT, SIP, SPORT, ClientConfig(), isn=7, on_event=log)
    return server, client, log


def shuttle(server: ServerEngine, client: ClientEngine, t: float, inject=None) -> bytes:
    """Run the pair to completion on a virtual clock (no loss), `inject(t)` and the application
    reading after each round of sends: all the application read."""
    got = bytearray(client.read())
    for now in islice(drive(client, lambda seg, now: server.receive(seg, CIP, now), 0.001,
                            start=t), 20000):
        if inject is not None:
            inject(now)
        got.extend(client.read())
        if client.done:
            return bytes(got + client.read())
    raise AssertionError("the transfer did not finish (or the client stalled)")


# ---------------------------------------------------------------------- item 1: forged answers
def test_forged_synack_data_finhint_skip_never_reach_the_application() -> None:
    size, seed = 300_000, 5
    server, client, log = pair(size)
    rng = random.Random(1)
    client.connect(0.0, gen_request(size, seed))
    (syn,) = client.datagrams_to_send()
    (synack,) = server.receive(syn, CIP, 0.001)
    real = decode_segment(synack, SIP, CIP)
    from trickles_kit.wire.messages import decode_response

    cont0 = decode_response(real.payload).cont
    # a fake SYN|ACK first: another connId, carrying attacker data and a FIN at 10 bytes
    fake = guess(cont0, rng)
    fake.conn_id ^= 0xDEAD
    for _ in range(50):
        client.receive(forged(fake, [DataChunk(0, b"EVIL" * 100, True)], SYN | ACK, 0), 0.002)
    assert client.phase == "syn_sent" and client.read() == b""
    client.receive(synack, 0.003)
    assert client.phase == "established" and client.conn_id == cont0.conn_id
    injected = [50]

    def inject(t: float) -> None:  # DATA, FINHINT, SKIP on the real connection's ports
        if injected[0] >= 50 + 3000:
            return
        for j in range(30):
            kind = j % 3
            c = guess(cont0, rng)
            c.seq = rng.randrange(1, 200)
            chunk = [DataChunk(rng.randrange(0, size), b"X" * 1000),
                     FinHint(rng.randrange(1, size)),
                     SkipChunk(rng.randrange(0, size), 50_000)][kind]
            client.receive(forged(c, [chunk], seq=c.seq), t)
            injected[0] += 1

    got = shuttle(server, client, 0.004, inject)
    assert len(got) == size and hashlib.sha256(got).hexdigest() == generated_sha256(size, seed)
    assert injected[0] > 50 + 3 * 10  # forgeries were interleaved with the whole transfer
    assert client.counters["drop.echo"] == injected[0]
    assert client.total == size
    assert sum(1 for e in log.of("drop") if e.detail.get("reason") == "echo") == injected[0]


def test_hashed_answers_the_client_did_not_predict_are_dropped() -> None:
    client = ClientEngine(CIP, CPORT, SIP, SPORT, ClientConfig(hashed=True), isn=3)
    client.connect(0.0, gen_request(1000, 1))
    from trickles_kit.wire.delta import pack_hashed

    cb = pack_hashed(1234, 0, 0, bytes(16))
    payload = encode_response(0, 1, 0, cb, b"", encode_chunks([DataChunk(0, b"Z" * 10)]))
    client.receive(encode_segment(SIP, CIP, SPORT, CPORT, 1, 0, ACK, payload, 8 + len(cb)), 0.1)
    assert client.counters["drop.echo"] == 1 and client.read() == b""


@pytest.fixture
def udp_server() -> Iterator[tuple[ServerLoop, int]]:
    yield from _serve(Generated())


@pytest.fixture
def web_server(tmp_path) -> Iterator[tuple[ServerLoop, int]]:
    from trickles_kit.apps.web import WebServer

    yield from _serve(WebServer(tmp_path))


def _serve(gen) -> Iterator[tuple[ServerLoop, int]]:
    tr = UdpTransport("127.0.0.1", 0)
    eng = ServerEngine(os.urandom(32), gen, aton("127.0.0.1"), tr.port, ServerConfig())
    gen.attach(eng)
    loop = ServerLoop(eng, tr, delay=0.002)
    th = threading.Thread(target=loop.run, daemon=True)
    th.start()
    yield loop, tr.port
    loop.stop()
    th.join(5)
    tr.close()


def _raw_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4+UDP datagram with a spoofed source (loopback only; UDP checksum 0 = none)."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    return ip + udp


def test_udp_injection_from_other_sockets_and_spoofed_source(udp_server) -> None:
    """Over loopback: an attacker's own socket (wrong source) and, as root, a spoofed packet
    from the server's own UDP address (right source, no token) — neither reaches the app."""
    _, port = udp_server
    size, seed = 3_000_000, 11
    tr = UdpTransport("127.0.0.2", 0)
    ch = ClientHost(tr, aton("127.0.0.1"), port, ("127.0.0.1", port))
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.3", 0))
    try:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        raw = None
    rng = random.Random(2)
    sent_own = sent_spoofed = 0
    try:
        body = bytearray()
        conn = ch.open(gen_request(size, seed), body.extend)
        cport = conn.engine.local_port
        cip = aton("127.0.0.2")
        deadline = time.monotonic() + 20
        while conn.finished is None and time.monotonic() < deadline:
            ch.step(0.005)
            if sent_own < 3000:  # bounded flood: 3000 + 3000 datagrams
                for _ in range(30):
                    c = Continuation(FULL1, rng.randrange(1, 500), 1, rng.getrandbits(32),
                                     rng.getrandbits(32), 0, 0, 0, NORMAL, 0, 0, 3, 16383, 1,
                                     conn.engine.conn_id, 0, bytes(16))
                    chunk = [DataChunk(rng.randrange(0, size), b"X" * 1000),
                             FinHint(rng.randrange(1, size)), SkipChunk(0, 100_000)][sent_own % 3]
                    seg = forged(c, [chunk], sport=port, dport=cport, src=aton("127.0.0.1"))
                    seg = seg[:16] + b"\0\0" + seg[18:]
                    from trickles_kit.wire.segment import checksum

                    seg = seg[:16] + struct.pack("!H", checksum(aton("127.0.0.1"), cip, seg)) \
                        + seg[18:]
                    attacker.sendto(seg, ("127.0.0.2", tr.port))
                    sent_own += 1
                    if raw is not None:
                        raw.sendto(_raw_udp(("127.0.0.1", port), ("127.0.0.2", tr.port), seg),
                                   ("127.0.0.2", 0))
                        sent_spoofed += 1
        assert conn.finished is not None and conn.engine.done
        assert len(body) == size
        assert hashlib.sha256(body).hexdigest() == generated_sha256(size, seed)
        drops_src = ch.counters.get("drop.source", 0)
        drops_echo = conn.engine.counters["drop.echo"]
        # every injected datagram that arrived was refused (a few may still be in flight)
        assert drops_src > 0.5 * sent_own
        if raw is not None:
            assert drops_echo > 0.5 * sent_spoofed
        assert drops_src <= sent_own and drops_echo <= sent_spoofed
    finally:
        attacker.close()
        if raw is not None:
            raw.close()
        ch.shutdown()
        tr.close()


# ---------------------------------------------------------------------- item 2: flow control
class MaliciousServer:
    """Answers every request of one client engine (it sees the echo token: it is the peer)
    with garbage: bytes never asked for, bytes past the window, 1-byte chunks, fragmenting
    SKIPs, and never byte 0 (so nothing is ever delivered and all would pile up)."""

    def __init__(self, client: ClientEngine, seed: int = 4) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.sent = 0  # chunk bytes sent

    def answer(self, seg: bytes, t: float) -> list[bytes]:
        s = decode_segment(seg, CIP, SIP)
        req = decode_request(s.payload)
        rng = self.rng
        if req.cont is None:  # the SYN: echo its client-owned values in a handshake answer
            cs, parent, cts = struct.unpack("!III", req.ucont[:12])
            cont = Continuation(FULL1, 0, 1, cs, parent, cts, 0, 0, NORMAL, 0, 0, 3, 16383, 1,
                                99, 0, bytes(16))
        else:
            cont = req.cont
        out = []
        ranges = req.ranges or [(0, 1448)]
        for i, (a, b) in enumerate(ranges):
            c = Continuation(**{f: getattr(cont, f) for f in cont.__dataclass_fields__})
            c.seq = cont.seq + 1 + i
            chunks: list = [DataChunk(rng.randrange(1 << 20, 1 << 32), os.urandom(1400))]
            # the asked bytes as 1-byte chunks, every other byte (never byte 0)
            chunks += [DataChunk(x, b"g") for x in range(max(a, 1), b, 2)][:200]
            chunks.append(SkipChunk(rng.randrange(max(a, 2), max(b, 3)), 1))
            payload_chunks = encode_chunks(chunks)
            self.sent += len(payload_chunks)
            cb = c.encode()
            payload = encode_response(rng.getrandbits(32), len(ranges), i, cb, b"",
                                      payload_chunks)
            flags = SYN | ACK if req.cont is None else ACK
            out.append(encode_segment(SIP, CIP, SPORT, CPORT, c.seq, 0, flags, payload,
                                      8 + len(cb)))
        # and a flood of garbage chunks anywhere
        for _ in range(8):
            c = Continuation(**{f: getattr(cont, f) for f in cont.__dataclass_fields__})
            c.seq = cont.seq + 1
            junk = [DataChunk(rng.randrange(0, 1 << 32), os.urandom(1400))]
            payload = encode_response(0, 1, 0, c.encode(), b"", encode_chunks(junk))
            self.sent += 1403
            out.append(encode_segment(SIP, CIP, SPORT, CPORT, c.seq, 0, ACK, payload, 83))
        return out


def test_malicious_server_cannot_make_the_client_hold_more_than_its_window() -> None:
    """Bound: the engine's traced memory stays under window + 16 MiB while a server sends
    25 MB of garbage chunks (the window is 8 MiB; before the fix it grew with the garbage)."""
    window = 8 << 20
    client = ClientEngine(CIP, CPORT, SIP, SPORT, ClientConfig(window=window, tail_probes=64),
                          isn=1)
    bad = MaliciousServer(client)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        client.connect(0.0, gen_request(1 << 30, 1))
        peak_held = 0
        for t in drive(client, bad.answer, 0.01):
            peak_held = max(peak_held, client.held_bytes + client._want_bytes)
            if bad.sent >= 25_000_000 or t >= 2000:
                break
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert bad.sent >= 25_000_000, bad.sent  # the attack really ran
    assert client.read() == b""  # byte 0 never came: nothing delivered
    assert peak_held <= window
    assert peak <= window + (16 << 20), peak
    assert client.counters["drop.unasked"] > 0 and client.counters["drop.fragments"] >= 0


def test_client_stops_at_the_stated_length_and_ignores_unasked_bytes() -> None:
    size, seed = 300_000, 2
    server, client, _ = pair(size)
    client.connect(0.0, gen_request(size, seed))
    client.set_total(size, 0.0)
    cont = None

    def inject(t: float) -> None:  # past the end, from the real server's answers' echo
        nonlocal cont
        if client._spare is not None:
            c = client._spare
            cs, parent, _ = client._owned(t)
            cont = Continuation(**{f: getattr(c, f) for f in c.__dataclass_fields__})
            cont.client_state, cont.parent = cs, parent
            client.receive(forged(cont, [DataChunk(size, b"P" * 1200)]), t)

    got = shuttle(server, client, 0.001, inject)
    assert len(got) == size and hashlib.sha256(got).hexdigest() == generated_sha256(size, seed)


def test_window_holds_until_the_application_reads() -> None:
    """A reader that never reads: the client asks at most `window` bytes, then waits (without
    timing out); once it reads, the transfer completes byte-exact."""
    size, seed, window = 2_000_000, 9, 256 * 1024
    gen = Generated()
    server = ServerEngine(SECRET, gen, SIP, SPORT, ServerConfig())
    gen.attach(server)
    client = ClientEngine(CIP, CPORT, SIP, SPORT, ClientConfig(window=window), isn=5)
    client.connect(0.0, gen_request(size, seed))
    t = 0.0
    steps = drive(client, lambda seg, now: server.receive(seg, CIP, now), 0.001)
    for i, now in enumerate(steps, 1):  # no reads
        t = now
        if i >= 3000:
            break
    assert client.held_bytes <= window and client.bytes_received <= window
    assert client.phase == "established" and client.counters["timeouts"] == 0
    got = bytearray(client.read(t))
    while not client.done:
        t += 0.001
        for seg in client.datagrams_to_send():
            for ans in server.receive(seg, CIP, t):
                client.receive(ans, t + 0.001)
        got.extend(client.read(t))
        timer = client.get_timer()
        if timer is not None and timer <= t:
            client.handle_timer(t)
        assert client.held_bytes <= window
    got.extend(client.read(t))
    assert hashlib.sha256(got).hexdigest() == generated_sha256(size, seed)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_gateway_memory_bounded_with_a_reader_that_never_reads(web_server) -> None:
    """A TCP client asks for 1 GB and never reads: the gateway (and its engine) stays bounded;
    after the client leaves, the connection and its buffers are gone."""
    from trickles_kit.apps.gateway import Gateway

    _, port = web_server

    async def main() -> tuple[int, int, int, int]:
        gw = Gateway("127.0.0.1", port, "udp", local_addr="127.0.0.2",
                     config=ClientConfig(window=4 << 20))
        host, lport = await gw.start("127.0.0.1", 0)
        try:
            base = _rss()
            r, w = await asyncio.open_connection(host, lport)
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            w.write(f"GET /gen?size={1 << 30}&seed=3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await w.drain()
            await asyncio.sleep(3.0)  # the gateway fetches what the peer's window allows
            assert gw.host is not None
            held = sum(c.engine.held_bytes for c in gw.host._h.conns.values())
            got = sum(c.engine.bytes_received for c in gw.host._h.conns.values())
            grown = _rss() - base
            w.close()
            await asyncio.sleep(2.0)  # the peer left: the gateway closes the Trickles side
            return held, got, grown, gw.host.connections
        finally:
            await gw.aclose()

    held, got, grown, left = asyncio.run(main())
    # the engine's window, plus what the response buffer, the gateway's writes and the kernel's
    # socket buffers took: megabytes, not the 1 GB asked for
    assert held <= 4 << 20 and got <= 24 << 20, (held, got)
    assert grown <= 64 << 20, grown
    assert left == 0


# ---------------------------------------------------------------------- item 3: replays
def test_replay_table_at_twice_its_capacity_answers_no_replay() -> None:
    """Fill the table with 2x its capacity of valid (distinct, fresh) requests, then replay
    every one of them: none is accepted; the honest requests refused by a horizon are counted."""
    h = ReplayHistory(freshness=120.0, max_entries=4096)
    rng = random.Random(8)
    n = 2 * h.max_entries
    keys = [rng.getrandbits(64) for _ in range(n)]
    accepted = []
    for i, k in enumerate(keys):  # sealed over 60 s, arriving 10 ms after sealing
        sealed = i * 60.0 / n
        if h.check_and_add(k, sealed + 0.01, sealed):
            accepted.append((k, sealed))
    assert h.evicted > 0 and len(accepted) + h.refused == n
    replayed = sum(h.check_and_add(k, 61.0, s) for k, s in accepted)
    assert replayed == 0
    assert h.refused > 0  # (the price of safety: counted, recovered by the client's timeout)


def test_rows_come_from_a_keyed_hash() -> None:
    """Without the table's key an attacker cannot aim keys at one row (`key % rows` could)."""
    a = ReplayHistory(max_entries=1 << 12, hash_key=b"k" * 16)
    b = ReplayHistory(max_entries=1 << 12, hash_key=b"j" * 16)
    keys = [i * a._nb for i in range(64)]  # all in row 0 under an unkeyed modulo
    assert len({a.row(k) for k in keys}) > 32 and [a.row(k) for k in keys] != [
        b.row(k) for k in keys]


def test_server_counts_horizon_refusals_and_never_answers_a_replay() -> None:
    """End to end on the server: a tiny table, many requests, then every request again."""
    size = 2_000_000
    gen = Generated()
    server = ServerEngine(SECRET, gen, SIP, SPORT, ServerConfig(replay_entries=64))
    gen.attach(server)
    client = ClientEngine(CIP, CPORT, SIP, SPORT, ClientConfig(), isn=2)
    client.connect(0.0, gen_request(size, 1))
    sent: list[tuple[float, bytes]] = []

    def answer(seg: bytes, now: float) -> list[bytes]:
        sent.append((now, seg))
        return server.receive(seg, CIP, now)

    for _ in islice(drive(client, answer, 0.001), 5000):
        client.read()
        if client.done:
            break
    t = sent[-1][0]
    requests = [seg for _, seg in sent if seg[13] & SYN == 0]
    assert len(requests) > 2 * 64  # the table (64 entries) overflowed
    drops = server.counters["drop"]
    answered = sum(1 for seg in requests if server.receive(seg, CIP, t + 0.01))
    assert answered == 0 and server.counters["drop"] - drops == len(requests)
    assert server.counters["drop.replay_horizon"] > 0  # the overflow was felt, and counted
