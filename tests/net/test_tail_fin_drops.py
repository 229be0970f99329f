"""Defects an independent client found (issue 19): the empty tail, FIN retries, uncounted drops
and a decoder that took a client's SYN|ACK for the server's answer.

* After the last byte is asked for, the client sends at most `tail_probes` empty requests in a
  row (their answers are the only packets without data); a 3 MB transfer at 0 % loss ends with
  at most 8 such packets, in the simulator and over UDP.
* A FIN is answered once per continuation per age bucket, so a retry on the same continuation is
  served: a transfer whose first two FIN answers are lost still closes with an answer, and so
  does a one-packet transfer (its only continuation is the handshake's).
* Every drop on the server's path is a `drop.<reason>` counter and a `drop` event: runts, other
  ports, bad checksums, losses injected with `--drop-at`; `trickles serve`'s last line adds up.
* The decoder tells requests from answers by their role, so a capture of SYN|ACK handshakes
  decodes like one of bare SYNs, without `--service-port`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from trickles_kit.apps.fetch import HttpBody
from trickles_kit.apps.generated import Generated, gen_request, generated_bytes
from trickles_kit.apps.sim import LinkConfig, SimNetwork, Simulator, client_address
from trickles_kit.apps.web import WebServer
from trickles_kit.capture.decode import decode_pcap
from trickles_kit.cli.wire import shutdown_line
from trickles_kit.core.client import ClientEngine
from trickles_kit.core.events import EventLog
from trickles_kit.core.server import ServerEngine
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.wire.messages import DataChunk, decode_response
from trickles_kit.wire.segment import ACK, FIN, SYN, checksum, decode_segment

SIZE = 3_000_000
MAX_EMPTY = 8


def empty_after_last_data(answers: list[bytes]) -> tuple[int, int]:
    """(empty packets after the last one with data, empty packets in all) among the server's
    answers in the order it sent them; the handshake and FIN answers do not count."""
    marks = []
    for seg in answers:
        s = decode_segment(seg)
        r = decode_response(s.payload)
        data = any(isinstance(c, DataChunk) and c.data for c in r.chunks)
        if s.flags & SYN or (s.flags & FIN and not r.chunks):
            continue
        marks.append(data)
    last = max((i for i, d in enumerate(marks) if d), default=-1)
    return marks[last + 1:].count(False), marks.count(False)


def sim_web(tmp_path: Path, size: int, seed: int = 1, loss: float = 0.0):
    """A simulated GET /gen over HTTP: the client learns the length from Content-Length."""
    sim = Simulator(seed)
    web = WebServer(tmp_path)
    server = ServerEngine(random.Random(seed).randbytes(32), web, SimNetwork.SERVER_IP, 80)
    web.attach(server)
    net = SimNetwork(sim, server, LinkConfig(loss=loss), LinkConfig(loss=loss))
    answers: list[bytes] = []
    send = net.down.send
    net.down.send = lambda seg, key: (answers.append(seg), send(seg, key))  # type: ignore
    ip, port = client_address(0)
    body = bytearray()
    http = HttpBody(body.extend)

    class Parsing(ClientEngine):  # (a subclass: a compiled engine's read cannot be patched)
        def read(self, now: float | None = None) -> bytes:
            data = super().read(now)  # the application's side of the engine, as `fetch` has it
            http(data)
            return data

    client = Parsing(ip, port, SimNetwork.SERVER_IP, 80, isn=99)
    http.on_length = lambda n: client.set_total(n, sim.now)
    net.add_client(client, f"GET /gen?size={size}&seed={seed} HTTP/1.1\r\n\r\n".encode())
    sim.run(until=300)  # not stopped at `done`: answers still in flight are counted too
    assert client.done and http.status == 200
    assert bytes(body) == generated_bytes(seed, 0, size)
    return client, server, answers


def test_3mb_sim_ends_with_a_handful_of_empty_packets(tmp_path: Path) -> None:
    client, server, answers = sim_web(tmp_path, SIZE)
    after, total = empty_after_last_data(answers)
    assert after <= MAX_EMPTY and total <= MAX_EMPTY, (after, total)
    assert 0 < client.counters["tail_probes"] <= client.cfg.tail_probes
    assert len(answers) < SIZE / 1448 + 20  # every other packet carried data


def test_tail_probes_still_find_a_lost_last_packet(tmp_path: Path) -> None:
    """Loss near the end is repaired (FACK from the probes or the timeout), byte-exact."""
    for seed in (2, 3):
        client, _server, answers = sim_web(tmp_path, 300_000, seed=seed, loss=0.02)
        assert client.phase == "done"


def test_a_client_without_the_length_still_completes() -> None:
    """No Content-Length hint: the client asks past the end until FINHINT tells it (the
    behaviour a raw GEN stream gets); the tail rule must not stall it."""
    from trickles_kit.apps.sim import simulate_transfer

    for size in (1, 1448, 100_000):
        r = simulate_transfer(size, seed=5)
        assert r.ok, r.summary()


# ------------------------------------------------------------------------------- FIN
def sim_fin(size: int, lose_answers: int) -> tuple[ClientEngine, ServerEngine, int]:
    """Transfer `size` bytes, then close; the first `lose_answers` FIN answers are lost."""
    sim = Simulator(4)
    gen = Generated()
    server = ServerEngine(random.Random(4).randbytes(32), gen, SimNetwork.SERVER_IP, 80)
    gen.attach(server)
    net = SimNetwork(sim, server, LinkConfig(rate=None), LinkConfig(rate=None))
    lost = [0]
    send = net.down.send

    def down(seg: bytes, key: object) -> None:
        s = decode_segment(seg)
        if s.flags & FIN and not decode_response(s.payload).chunks and lost[0] < lose_answers:
            lost[0] += 1
            return
        send(seg, key)

    net.down.send = down  # type: ignore[method-assign]
    ip, port = client_address(0)
    client = ClientEngine(ip, port, SimNetwork.SERVER_IP, 80, isn=3)
    net.add_client(client, gen_request(size, 4))
    sim.run(until=60, stop=lambda: client.done)
    assert client.done
    client.close(sim.now)
    net._service(net.clients[(ip, port)], (ip, port))
    sim.run(until=sim.now + 120, stop=lambda: client.phase == "closed")
    return client, server, lost[0]


@pytest.mark.parametrize("size", [50_000, 1])
def test_fin_retries_are_answered(size: int) -> None:
    client, server, lost = sim_fin(size, 2)
    assert lost == 2
    assert client.phase == "closed" and client.counters["fin_answered"] == 1
    assert client.counters["fin_retries"] == 2
    assert server.counters["fin"] == 3 and server.counters["drop.replay"] == 0


def test_one_packet_transfer_retries_its_fin() -> None:
    client, server, lost = sim_fin(1, 1)
    assert (lost, client.counters["fin_answered"], server.counters["fin"]) == (1, 1, 2)
    assert client.counters["requests"] == 2  # both FINs rode the handshake continuation


def test_a_fin_replayed_in_the_same_bucket_is_still_a_replay() -> None:
    """The bucket rule opens retries, not replays: the same FIN twice at once is refused."""
    gen = Generated()
    ip = socket.inet_aton("10.0.0.1")
    server = ServerEngine(b"k" * 32, gen, ip, 80)
    gen.attach(server)
    client = ClientEngine(socket.inet_aton("10.1.0.2"), 4000, ip, 80, isn=1)
    client.connect(0.0, gen_request(1, 1))
    for seg in client.datagrams_to_send():
        for out in server.receive(seg, client.local_ip, 0.01):
            client.receive(out, 0.02)
    assert client.done
    client.close(0.03)
    (fin,) = client.datagrams_to_send()
    assert len(server.receive(fin, client.local_ip, 0.04)) == 1
    assert server.receive(fin, client.local_ip, 0.05) == []
    assert server.counters["drop.replay"] == 1


# ------------------------------------------------------------------------------- drops
def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_drop_is_an_event_and_the_shutdown_line_adds_up(tmp_path: Path) -> None:
    """`trickles serve --drop-at`: runts, another port, a bad checksum, a garbage request and
    the injected losses each give a `drop` event with a stable reason and a counter."""
    from trickles_kit.apps.fetch import fetch

    port = _free_udp_port()
    events = tmp_path / "ev.jsonl"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(os.urandom(60_000))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trickles_kit.cli", "serve", "--root", str(tmp_path / "www"),
         "--transport", "udp", "--port", str(port), "--events", str(events),
         "--drop-at", "0,1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert "trickles serve:" in proc.stdout.readline()
        r = fetch(f"http://127.0.0.1:{port}/f.bin", transport="udp", timeout=30)
        assert r.ok and r.bytes == 60_000
        good = decode_segment(_a_request(port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x01", ("127.0.0.1", port))  # runt: not even the ports
            s.sendto(b"\x00\x01\x02", ("127.0.0.1", port))
            other = bytearray(_a_request(port + 1 if port < 65535 else port - 1))
            s.sendto(bytes(other), ("127.0.0.1", port))  # another Trickles port
            bad = bytearray(_a_request(port))
            bad[16] ^= 0xFF  # checksum
            s.sendto(bytes(bad), ("127.0.0.1", port))
            assert good.dst_port == port
        want = {"decode.short": 2, "port": 1, "decode.checksum": 1, "injected": 2}
        deadline = time.monotonic() + 10
        while True:  # the events reach the file while the server runs (flushed, not at exit)
            got = Counter(json.loads(line)["detail"].get("reason") for line in
                          events.read_text().splitlines() if '"kind":"drop"' in line)
            if all(got[k] >= v for k, v in want.items()) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert all(got[k] == v for k, v in want.items()), got
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    line = next(x for x in out.splitlines() if "stopped;" in x)
    f = line.replace(",", "").replace("(", "").replace(")", "").split()
    requests, packets, dropped = int(f[3]), int(f[5]), int(f[7])
    assert dropped == sum(got[k] for k in got if k) >= 6
    for reason, n in want.items():
        assert f"{reason} {n}" in line
    assert requests >= dropped + 3 and packets >= 40  # the fetch's own requests and answers


def _a_request(dst_port: int) -> bytes:
    """A well-formed SYN from 127.0.0.1 (the test's socket) to the Trickles port `dst_port`."""
    c = ClientEngine(socket.inet_aton("127.0.0.1"), 41000, socket.inet_aton("127.0.0.1"),
                     dst_port, isn=5)
    c.connect(0.0, b"GET / HTTP/1.1\r\n\r\n")
    return c.datagrams_to_send()[0]


def test_shutdown_line_counts_early_drops_as_received() -> None:
    c = Counter({"rx": 10, "tx": 30, "drop": 4, "drop.injected": 2, "drop.port": 1,
                 "drop.syn_shed": 1})
    line = shutdown_line(c)
    assert line.startswith("trickles serve: stopped; 13 requests, 30 packets, 4 dropped (")
    assert "injected 2" in line and "port 1" in line and "syn_shed 1" in line


# ------------------------------------------------------------------------------- decoder
def _synack_client(seg: bytes, cip: bytes, sip: bytes) -> bytes:
    """The client's SYN rewritten as SYN|ACK (checksum fixed), as some clients send it."""
    if not decode_segment(seg).flags & SYN:
        return seg
    b = bytearray(seg)
    b[13] |= ACK
    b[16:18] = b"\0\0"
    b[16:18] = checksum(cip, sip, bytes(b)).to_bytes(2, "big")
    return bytes(b)


@pytest.mark.parametrize("synack", [False, True])
def test_syn_ack_handshakes_decode_without_service_port(tmp_path: Path, synack: bool) -> None:
    sim = Simulator(6)
    gen = Generated()
    log = EventLog()
    secret = random.Random(6).randbytes(32)
    server = ServerEngine(secret, gen, SimNetwork.SERVER_IP, 80, on_event=log)
    gen.attach(server)
    path = tmp_path / "h.pcap"
    pw = PcapWriter(str(path))
    net = SimNetwork(sim, server, LinkConfig(rate=None), LinkConfig(rate=None), pw)
    up = net.up.send
    if synack:
        net.up.send = lambda seg, key: up(  # type: ignore[method-assign]
            _synack_client(seg, key[0], SimNetwork.SERVER_IP), key)
    clients = []
    for i in range(3):
        ip, port = client_address(i)
        c = ClientEngine(ip, port, SimNetwork.SERVER_IP, 80, isn=i + 1)
        net.add_client(c, gen_request(20_000, i), start=0.01 * i)
        clients.append(c)
    sim.run(until=60, stop=lambda: all(c.done for c in clients))
    pw.close()
    assert all(c.done for c in clients) and server.counters["syn"] == 3
    cap = decode_pcap(path, secret)
    assert cap.service_ports == {80}
    assert not [p.error for p in cap.packets if p.error]
    reqs = [p for p in cap.packets if p.direction == "request"]
    assert {p.dport for p in reqs} == {80}
    assert Counter(p.req_type for p in reqs)["SYN"] == 3
    assert all(p.flags & ACK for p in reqs if p.req_type == "SYN") == synack
    kinds = Counter(e.kind for e in cap.events)
    assert kinds["drop"] == 0 and kinds["syn"] == 3
    want = Counter((e.kind, e.pkt, e.ack) for e in log.events if e.kind in ("initial", "split",
                                                                             "continue"))
    assert Counter((e.kind, e.pkt, e.ack) for e in cap.events if e.kind in (
        "initial", "split", "continue")) == want


class _Tap:
    """Wraps the server's transport and keeps every segment it sends, in order."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def fileno(self) -> int:
        return self.inner.fileno()

    def send(self, segment: bytes, dst_ip: bytes, peer) -> bool:
        self.sent.append(segment)
        return self.inner.send(segment, dst_ip, peer)


def test_3mb_udp_ends_with_a_handful_of_empty_packets(tmp_path: Path) -> None:
    """`fetch` over UDP on loopback (the client reads Content-Length, as any HTTP client)."""
    import threading

    from trickles_kit.apps.fetch import fetch
    from trickles_kit.net.ip import aton
    from trickles_kit.net.runner import ServerLoop
    from trickles_kit.net.udp import UdpTransport

    inner = UdpTransport("127.0.0.1", 0)
    tap = _Tap(inner)
    web = WebServer(tmp_path)
    engine = ServerEngine(os.urandom(32), web, aton("127.0.0.1"), inner.port)
    web.attach(engine)
    loop = ServerLoop(engine, tap)  # type: ignore[arg-type]
    th = threading.Thread(target=loop.run, daemon=True)
    th.start()
    body = bytearray()
    try:
        r = fetch(f"http://127.0.0.1:{inner.port}/gen?size={SIZE}&seed=2", transport="udp",
                  timeout=120, sink=body.extend)
        time.sleep(0.3)  # answers to requests still in flight when the last byte came
    finally:
        loop.stop()
        th.join(5)
        inner.close()
    assert r.ok and bytes(body) == generated_bytes(2, 0, SIZE)
    after, total = empty_after_last_data(tap.sent)
    assert after <= MAX_EMPTY, (after, total, len(tap.sent))
