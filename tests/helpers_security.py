"""Helpers for tests/core/test_security.py: a hand-driven handshake and segment surgery.

No simulator: segments are passed between one ClientEngine and one ServerEngine by hand with a
manual clock, so a test can capture exact, valid request segments and the server's answers, then
replay, tamper with or forge them against replicas (servers that share the master secret).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from trickles_kit.apps.generated import Generated, gen_request, generated_bytes
from trickles_kit.core.client import ClientEngine
from trickles_kit.core.events import EventSink
from trickles_kit.core.replay import ReplayHistory
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.wire.continuation import Continuation
from trickles_kit.wire.messages import Request, Response, decode_request, decode_response
from trickles_kit.wire.segment import HEADER_LEN, Segment, checksum, decode_segment

SECRET = bytes(range(100, 132))
SERVER_IP = socket.inet_aton("10.0.0.1")
SERVER_PORT = 80
CLIENT_IP = socket.inet_aton("10.1.0.7")
CLIENT_PORT = 40007
OTHER_IP = socket.inet_aton("10.1.0.8")

# where things sit inside a request segment: 28-byte TCP header, request type, FULL continuation
CONT_OFFSET = HEADER_LEN + 1
MAC_COVERED = tuple(range(0, 6)) + tuple(range(18, 75))  # continuation offsets under the MAC
CLIENT_OWNED = tuple(range(6, 18))  # clientState, parent, clientTimestamp

GEN_SIZE = 1_000_000
GEN_SEED = 7
STEP = 0.010  # one-way delay of the hand-driven "network", seconds


def make_server(config: ServerConfig | None = None, log: EventSink | None = None,
                secret: bytes = SECRET, service_ip: bytes = SERVER_IP) -> ServerEngine:
    """A replica: a server engine with the Generated handler, sharing `secret`."""
    gen = Generated()
    server = ServerEngine(secret, gen, service_ip, SERVER_PORT, config, log)
    gen.attach(server)
    return server


def fresh_replay(server: ServerEngine) -> None:
    """Forget every used continuation (what a restarted replica would do)."""
    server.replay = ReplayHistory(server.cfg.freshness, server.cfg.replay_entries)


def fix_checksum(seg: bytes | bytearray, src_ip: bytes, dst_ip: bytes) -> bytes:
    """Recompute the TCP checksum of a (possibly edited) segment for the given addresses."""
    data = bytearray(seg)
    if len(data) < 18:
        return bytes(data)
    data[16:18] = b"\0\0"
    data[16:18] = checksum(src_ip, dst_ip, bytes(data)).to_bytes(2, "big")
    return bytes(data)


def flip_bit(seg: bytes, index: int, bit: int, src_ip: bytes = CLIENT_IP,
             dst_ip: bytes = SERVER_IP) -> bytes:
    """`seg` with one bit flipped and the checksum made valid again."""
    data = bytearray(seg)
    data[index] ^= 1 << bit
    return fix_checksum(data, src_ip, dst_ip)


def with_source_port(seg: bytes, port: int, src_ip: bytes = CLIENT_IP,
                     dst_ip: bytes = SERVER_IP) -> bytes:
    data = bytearray(seg)
    data[0:2] = port.to_bytes(2, "big")
    return fix_checksum(data, src_ip, dst_ip)


def readdress(seg: bytes, src_ip: bytes, dst_ip: bytes = SERVER_IP) -> bytes:
    """The same bytes sent from another address (only the checksum changes)."""
    return fix_checksum(seg, src_ip, dst_ip)


def parse_request(seg: bytes, src_ip: bytes = CLIENT_IP) -> tuple[Segment, Request]:
    s = decode_segment(seg, src_ip, SERVER_IP)
    return s, decode_request(s.payload)


def parse_response(seg: bytes, dst_ip: bytes = CLIENT_IP) -> tuple[Segment, Response]:
    s = decode_segment(seg, SERVER_IP, dst_ip)
    return s, decode_response(s.payload)


@dataclass
class Capture:
    """Everything one hand-driven connection put on the wire.

    requests[k] = (segment, server time it was fed at) for the client's request that echoes the
    continuation of packet k (k = 0 is the SYN-ACK continuation). responses[pkt] = (segment, time)
    for every packet the server sent, including those the client never saw (`lost`).
    """

    config: ServerConfig | None
    syn: bytes = b""
    t_syn: float = 0.0
    requests: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    responses: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    lost: frozenset[int] = frozenset()

    def nonce(self, pkt: int) -> int:
        return parse_response(self.responses[pkt][0])[1].nonce

    def cont(self, pkt: int) -> Continuation:
        return parse_response(self.responses[pkt][0])[1].cont

    def cont_raw(self, pkt: int) -> bytes:
        return self.cont(pkt).encode()

    def ucont(self, pkt: int) -> bytes:
        """The user continuation the client holds at `pkt`: the newest one any packet up to it
        carried (an answer omits one its request already carried)."""
        held = b""
        for k in sorted(self.responses):
            if k > pkt:
                break
            held = parse_response(self.responses[k][0])[1].ucont or held
        return held

    def sealed_at(self, pkt: int) -> float:
        """Server clock (s) at which the continuation of `pkt` was sealed."""
        return self.cont(pkt).timestamp / 1000.0


def run_handshake(config: ServerConfig | None = None, start: float = 1.0, rounds: int = 3,
                  lost: frozenset[int] = frozenset({4})) -> Capture:
    """SYN, SYN-ACK, the request for packet 0, packets 1..3, their requests, packets 4..8.

    Round r: every segment the client has queued goes to the server at one instant, and the
    server's answers reach the client STEP later (except packets in `lost`). With the defaults the
    client receives packets 0..3 and 5..8 and never packet 4.
    """
    server = make_server(config)
    client = ClientEngine(CLIENT_IP, CLIENT_PORT, SERVER_IP, SERVER_PORT, isn=0x1234567)
    cap = Capture(config, lost=lost)
    now = start
    client.connect(now, gen_request(GEN_SIZE, GEN_SEED))
    pending = client.datagrams_to_send()
    for _ in range(rounds):
        now += STEP
        answers = []
        for seg in pending:
            s, req = parse_request(seg)
            if req.cont is None:
                cap.syn, cap.t_syn = seg, now
            else:
                cap.requests.setdefault(req.cont.seq, (seg, now))
            answers += server.receive(seg, CLIENT_IP, now)
        if not answers:
            raise AssertionError(f"handshake stalled: {dict(server.counters)}")
        now += STEP
        for seg in answers:
            pkt = parse_response(seg)[0].seq
            cap.responses.setdefault(pkt, (seg, now - STEP))
            if pkt not in lost:
                client.receive(seg, now)
        pending = client.datagrams_to_send()
    return cap


def run_connection(server: ServerEngine, index: int, now: float, size: int,
                   seed: int = GEN_SEED) -> float:
    """One complete, real connection (handshake + transfer of `size` bytes) with no loss.

    Returns the clock after the last segment; raises AssertionError if the transfer is not
    byte-exact. The client engine is discarded on return.
    """
    from trickles_kit.apps.sim import client_address

    ip, port = client_address(index)
    client = ClientEngine(ip, port, SERVER_IP, SERVER_PORT, isn=(index * 2654435761) & 0xFFFFFFFF)
    client.connect(now, gen_request(size, seed))
    queue = deque(client.datagrams_to_send())
    while queue:
        now += 0.0005
        for seg in server.receive(queue.popleft(), ip, now):
            client.receive(seg, now)
        queue.extend(client.datagrams_to_send())
    data = client.read()
    if not client.done or data != generated_bytes(seed, 0, size):
        raise AssertionError(f"connection {index} failed: phase {client.phase}, "
                             f"{len(data)} of {size} bytes, {dict(client.counters)}")
    return now


def drive(client: ClientEngine, answer, dt: float, delay: float = 0.001,
          start: float = 0.0) -> Iterator[float]:
    """Run `client` against `answer(segment, now) -> segments` from `start`, yielding the time
    after each round of sends (answers arrive `delay` later); ends when the client has nothing
    to send and no timer. Bound it with `itertools.islice`."""
    t = start
    while True:
        t += dt
        out = client.datagrams_to_send()
        if not out:
            timer = client.get_timer()
            if timer is None:
                return
            t = max(t, timer)
            client.handle_timer(t)
            continue
        for seg in out:
            for ans in answer(seg, t):
                client.receive(ans, t + delay)
        yield t
