"""Issue 20, acceptance for bounded memory, measured as the kernel sees it (VmRSS of a real
process), not as tracemalloc sees one engine:

1. `trickles fetch` against a malicious server over loopback UDP that floods it with garbage
   chunks (echoing the client's token, so its packets are accepted as far as a peer's can be):
   the fetch process's peak RSS stays within FETCH_BOUND of its idle RSS.
2. `trickles gateway` with a TCP client that asks for 3 GB and never reads: its RSS stays
   within GATEWAY_BOUND of its baseline, and returns to within GATEWAY_RETURN of it after the
   client leaves.

Both run the command line in a subprocess; every flood and wait is bounded by bytes and time,
and every process is killed and reaped even when an assertion fails. The assertions are about
memory only; the rates and the byte counts are printed (-s) for the record, never asserted.

Found while building item 1: the client kept state per packet of an epoch (a nonce and a
scoreboard entry, ~80 B a packet, ~57 MB per GB fetched; 656,076 bytes for 5,000 packets below);
fixed in core/scoreboard.py, which keeps only what proofs can still need. (A server window over
64 packets made it raise; fixed: a request asks for at most 64 ranges.)
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import pytest
from helpers_security import drive
from wire_helpers import RssSampler, stop_process

from trickles_kit.wire.continuation import MINIMAL, Continuation
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    DataChunk,
    SkipChunk,
    decode_request,
    decode_response,
    encode_chunks,
    encode_response,
)
from trickles_kit.wire.segment import ACK, decode_segment, encode_segment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

REPO = Path(__file__).resolve().parents[2]
MB = 1 << 20
WINDOW = 8 * MB  # the client's flow-control window (ClientConfig.window)
FETCH_BOUND = 64 * MB  # peak RSS above idle: the 8 MiB window plus interpreter slack
BODY = 4_000_000_000  # the /gen body asked for (a 32-bit stream ends at 4,294,967,295)
FLOOD_BYTES = 1 << 30  # the malicious server's budget ...
FLOOD_SECONDS = 40.0  # ... or this long, whichever ends first (the bytes sent are printed)
QUEUE_LIMIT = 2 * MB  # the flood waits while the client's socket holds more


# ---------------------------------------------------------------------------- process helpers
def anon(pid: int) -> int:
    """RssAnon of `pid` in bytes: its heap and other private memory, without the file-backed
    pages (code of the compiled modules faulted in by a first transfer stays resident but is
    not memory the process holds for anyone)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in bytes: now, and the kernel's own peak since it started."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


@contextmanager
def child(args: list[str], **kw) -> Iterator[subprocess.Popen]:
    """A subprocess that is killed and reaped however the block ends."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)
    try:
        yield proc
    finally:
        stop_process(proc, kill=True)


def udp_socket_stats(ip: str, port: int) -> tuple[int, int] | None:
    """(rx_queue bytes, drops) of the UDP socket bound to ip:port, from /proc/net/udp."""
    a, b, c, d = (int(x) for x in ip.split("."))
    local = f"{d:02X}{c:02X}{b:02X}{a:02X}:{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 12 and parts[1] == local:
                    return int(parts[4].split(":")[1], 16), int(parts[-1])
    except OSError:
        pass
    return None


def wait_for(cond: Callable[[], bool], timeout: float, every: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return cond()


# ---------------------------------------------------------------------------- item 1: fetch
class FloodServer:
    """A malicious Trickles server on a UDP socket, for one `trickles fetch`.

    It is a real `ServerEngine` serving a 4 GB `/gen` body, behind two changes:

    * byte 0 never goes out (it is cut from every answer that carries it; the packet itself
      arrives, so the client's congestion control sees no loss and keeps its window open):
      nothing is ever delivered, so everything the client accepts stays out of order, held;
    * between answers it floods garbage on the client's address and ports, echoing the
      client's latest token (so it passes every check an on-path peer's packet would), as
      retransmission-form packets: 60 kB datagrams of random bytes outside the window (15
      chunks of 4000 bytes, sweeping the stream from 16 MiB up: a client that kept them would
      keep every byte), and 1 in 8 instead 180 1-byte chunks inside the window or 100 1-byte
      SKIPs there and 40 1-byte chunks anywhere.

    It stops after `budget` bytes or at `deadline`. Flood datagrams wait while the client's
    receive queue (/proc/net/udp) holds more than QUEUE_LIMIT, so the bytes sent are bytes the
    client read, not bytes the kernel dropped; answers to requests never wait.
    """

    def __init__(self, root: Path, seed: int = 20) -> None:
        from trickles_kit.apps.web import WebServer
        from trickles_kit.core.server import ServerConfig, ServerEngine

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.port = self.sock.getsockname()[1]
        self.sip = socket.inet_aton("127.0.0.1")
        app = WebServer(root)
        self.engine = ServerEngine(os.urandom(32), app, self.sip, self.port, ServerConfig())
        app.attach(self.engine)
        self.rng = random.Random(seed)
        self._blocks = [self.rng.randbytes(4000) for _ in range(16)]
        self._sweep = 2 * WINDOW  # where the next out-of-window garbage goes
        self.peer: tuple[str, int] | None = None
        self.cip = b""
        self.cport = 0
        self.owned: tuple[int, int] | None = None  # the client's latest echo token
        self.sent_bytes = 0  # UDP payload bytes sent: answers and flood
        self.flood_bytes = 0
        self.flood_dgrams = 0
        self.answers = 0
        self.requests = 0
        self.cut = 0  # answers byte 0 was cut from
        self.flood_seconds = 0.0

    def _garbage(self, i: int) -> bytes:
        rng, win = self.rng, WINDOW
        if i % 16 == 1:
            chunks = [DataChunk(rng.randrange(1, win), b"g") for _ in range(180)]
        elif i % 16 == 9:
            chunks = [SkipChunk(rng.randrange(1, win), 1) for _ in range(100)]
            chunks += [DataChunk(rng.randrange(1, 1 << 32), b"x") for _ in range(40)]
        else:  # a sweep over the stream past the window: new bytes to a client that keeps them
            blocks, chunks = self._blocks, []
            for k in range(15):
                if self._sweep > (1 << 32) - 4000:
                    self._sweep = 2 * win
                chunks.append(DataChunk(self._sweep, blocks[(i + k) % 16]))
                self._sweep += 4000
        return encode_chunks(chunks)

    def _flood_one(self, i: int) -> None:
        assert self.owned is not None and self.peer is not None
        cs, parent = self.owned
        cb = Continuation(MINIMAL, 0xFFFFFF00 + i % 64, 0, cs, parent, 0).encode()
        payload = encode_response(self.rng.getrandbits(32), 1, 0, cb, b"", self._garbage(i))
        seg = encode_segment(self.sip, self.cip, self.port, self.cport, 1, 0, ACK, payload,
                             8 + len(cb))
        try:
            self.sock.sendto(seg, self.peer)
        except (BlockingIOError, ConnectionRefusedError):
            return
        self.sent_bytes += len(seg)
        self.flood_bytes += len(seg)
        self.flood_dgrams += 1

    def _cut_byte0(self, ans: bytes) -> bytes:
        seg = decode_segment(ans)
        resp = decode_response(seg.payload)
        if not any(isinstance(c, DataChunk) and c.byte_num == 0 for c in resp.chunks):
            return ans
        self.cut += 1
        chunks = [DataChunk(1, c.data[1:], c.fin) if isinstance(c, DataChunk) and
                  c.byte_num == 0 else c for c in resp.chunks]
        chunks = [c for c in chunks if not isinstance(c, DataChunk) or c.data]
        payload = encode_response(resp.nonce, resp.num_siblings, resp.position,
                                  resp.cont.encode(), resp.ucont, encode_chunks(chunks))
        return encode_segment(self.sip, self.cip, seg.src_port, seg.dst_port, seg.seq, seg.ack,
                              seg.flags, payload, seg.trickles_len, seg.window)

    def _serve(self, data: bytes, now: float) -> None:
        try:
            req = decode_request(decode_segment(data).payload)
        except DecodeError:
            return
        self.requests += 1
        if req.cont is not None:
            self.owned = (req.cont.client_state, req.cont.parent)
        for ans in self.engine.receive(data, self.cip, now):
            ans = self._cut_byte0(ans)
            try:
                self.sock.sendto(ans, self.peer)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            self.sent_bytes += len(ans)
            self.answers += 1

    def wait_syn(self, timeout: float) -> bytes | None:
        """Wait for the client's SYN: learn its addresses and token (answer nothing yet)."""
        self.sock.settimeout(timeout)
        try:
            data, peer = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        seg = decode_segment(data)
        req = decode_request(seg.payload)
        if req.cont is not None:
            return None
        self.peer = peer
        self.cip = socket.inet_aton(peer[0])
        self.cport = seg.src_port
        self.owned = struct.unpack("!II", req.ucont[:8])
        self.sock.setblocking(False)
        return data

    def run(self, syn: bytes, deadline: float, budget: int) -> None:
        """Answer the SYN, then serve requests and flood until `budget` bytes or `deadline`."""
        t0 = time.monotonic()
        self._serve(syn, time.time())
        cip, cuport = self.peer  # type: ignore[misc]
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        i = 0
        try:
            while self.sent_bytes < budget and time.monotonic() < deadline:
                for _ in range(64):  # requests first: answered at once, never paced
                    try:
                        data, peer = self.sock.recvfrom(65535)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    if peer == self.peer:
                        self._serve(data, time.time())
                st = udp_socket_stats(cip, cuport)
                if st is None:
                    break  # the client's socket is gone
                if st[0] > QUEUE_LIMIT:  # the client is behind: wait for it or a request
                    sel.select(0.001)
                    continue
                self._flood_one(i)
                i += 1
        finally:
            sel.close()
            self.flood_seconds = time.monotonic() - t0

    def close(self) -> None:
        self.sock.close()


def test_fetch_rss_bounded_under_a_garbage_flood_from_a_malicious_server(tmp_path) -> None:
    """Bound: the fetch process's peak RSS (sampled every 50 ms, and the kernel's VmHWM) stays
    within FETCH_BOUND (64 MiB) of its idle RSS (after start-up, its SYN sent, before any
    answer), while the server withholds byte 0 of a 4 GB body, serves the rest, and floods
    garbage, until it has sent FLOOD_BYTES (1 GiB) or for FLOOD_SECONDS. The tree before the
    client had a window and dropped unasked bytes (3c36a80^) fails it: +131 MiB in 40 s."""
    srv = FloodServer(tmp_path)
    url = f"http://127.0.0.1:{srv.port}/gen?size={BODY}&seed=1"
    args = [sys.executable, "-m", "trickles_kit.cli", "fetch", url, "--transport", "udp",
            "--timeout", str(FLOOD_SECONDS + 60), "--json"]
    try:
        with child(args) as proc:
            syn = srv.wait_syn(30.0)
            assert syn is not None, "no SYN from trickles fetch"
            time.sleep(0.3)  # the SYN is out: start-up is over; what it holds now is idle
            idle = rss(proc.pid)[0]
            sampler = RssSampler(proc.pid, every=0.05).start()
            try:
                srv.run(syn, time.monotonic() + FLOOD_SECONDS, FLOOD_BYTES)
                time.sleep(0.5)  # what the client still had queued
                alive = proc.poll() is None
                hwm = rss(proc.pid)[1] if alive else 0
                sock = udp_socket_stats(*srv.peer)  # type: ignore[misc]
            finally:
                sampler.stop()
            peak = max(sampler.peak * 1024, hwm)
            print(f"\nfetch: idle {idle / MB:.1f} MiB, peak {peak / MB:.1f} MiB "
                  f"(+{(peak - idle) / MB:.1f} MiB; VmHWM {hwm / MB:.1f} MiB); in "
                  f"{srv.flood_seconds:.1f} s the server sent {srv.sent_bytes / 1e6:.0f} MB: "
                  f"{srv.answers} answers to {srv.requests} requests (byte 0 cut from "
                  f"{srv.cut}) and {srv.flood_bytes / 1e6:.0f} MB of garbage in "
                  f"{srv.flood_dgrams} datagrams; client socket (queue, drops) {sock}")
            assert alive, f"fetch exited early: {proc.returncode}"
            assert srv.sent_bytes >= FETCH_BOUND, "too little was sent to test the bound"
            assert peak - idle <= FETCH_BOUND, (idle, peak)
    finally:
        srv.close()


# ------------------------------------------------------- found while testing item 1 (client)
def _withholding_pair(window: int):
    """A real server (Generated, virtual clock) whose answers never carry byte 0, and a
    client with `window`: the packets keep coming (no loss for congestion control to see),
    the client re-asks byte 0 forever, nothing is ever delivered."""
    from trickles_kit.apps.generated import Generated, gen_request
    from trickles_kit.core.client import ClientConfig, ClientEngine
    from trickles_kit.core.server import ServerConfig, ServerEngine

    cip, sip = socket.inet_aton("10.1.0.2"), socket.inet_aton("10.0.0.1")
    gen = Generated()
    server = ServerEngine(bytes(32), gen, sip, 80, ServerConfig(initial_ssthresh=8))
    gen.attach(server)
    client = ClientEngine(cip, 40000, sip, 80, ClientConfig(window=window), isn=1)
    client.connect(0.0, gen_request((1 << 32) - 2, 1))

    def cut(ans: bytes) -> bytes:
        seg = decode_segment(ans)
        r = decode_response(seg.payload)
        if not any(isinstance(c, DataChunk) and c.byte_num == 0 for c in r.chunks):
            return ans
        chunks = [DataChunk(1, c.data[1:], c.fin) if isinstance(c, DataChunk) and
                  c.byte_num == 0 else c for c in r.chunks]
        payload = encode_response(r.nonce, r.num_siblings, r.position, r.cont.encode(),
                                  r.ucont, encode_chunks(chunks))
        return encode_segment(sip, cip, seg.src_port, seg.dst_port, seg.seq, seg.ack,
                              seg.flags, payload, seg.trickles_len, seg.window)

    steps = drive(client, lambda seg, now: [cut(a) for a in server.receive(seg, cip, now)],
                  0.001, delay=0.0005)

    def run_until_rx(n: int, t: float) -> float:
        # bounded: a round sends at least one request or fires a timer; the clock is the
        # generator's, `t` only says where the previous call stopped
        for t in islice(steps, 50 * n):
            if client.counters["rx"] >= n:
                return t
        raise AssertionError(f"only {client.counters['rx']} packets after {50 * n} rounds "
                             "(or the client stalled)")

    return client, run_until_rx


def test_client_memory_per_packet_is_bounded_once_its_window_is_full() -> None:
    """Once the window is full, more packets must not mean more client memory. A server that
    withholds byte 0 keeps a client re-asking for it forever; from the 3,000th to the 8,000th
    packet, memory traced while it runs must grow by less than 256 KiB (~50 B a packet)."""
    client, run_until_rx = _withholding_pair(64 * 1024)
    t = run_until_rx(3000, 0.0)
    assert client.held_bytes >= 60 * 1024 and client.read() == b""  # full, nothing delivered
    tracemalloc.start()
    try:
        run_until_rx(8000, t)
        grown = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    print(f"\nclient memory for 5,000 packets: {grown:,} bytes traced")
    assert client.phase == "established" and client.read() == b""
    assert grown < 256 * 1024, f"{grown} bytes for 5,000 packets"


def test_a_window_over_64_packets_from_the_server_does_not_crash_the_client() -> None:
    from trickles_kit.core.client import ClientConfig, ClientEngine
    from trickles_kit.wire.continuation import FULL1, NORMAL
    from trickles_kit.wire.segment import SYN

    cip, sip = socket.inet_aton("10.1.0.2"), socket.inet_aton("10.0.0.1")
    client = ClientEngine(cip, 40000, sip, 80, ClientConfig(), isn=1)
    client.connect(0.0, b"GET / HTTP/1.1\r\n\r\n")
    (syn,) = client.datagrams_to_send()
    cs, parent, cts = struct.unpack("!III", decode_request(decode_segment(syn).payload).ucont[:12])
    cont = Continuation(FULL1, 0, 1, cs, parent, cts, 0, 0, NORMAL, 0, 0, 65, 65, 1, 7, 0,
                        bytes(16))
    cb = cont.encode()
    client.receive(encode_segment(sip, cip, 80, 40000, 0, 0, SYN | ACK,
                                  encode_response(1, 1, 0, cb, b"", b""), 8 + len(cb)), 0.01)
    (req,) = client.datagrams_to_send()
    assert len(decode_request(decode_segment(req).payload).ranges) <= 64


# ---------------------------------------------------------------------------- item 2: gateway
GATEWAY_BOUND = 32 * MB  # RSS above baseline with a peer that never reads: window + buffers
# after the peer leaves, RSS is back within this of the baseline. It was +0.3 MiB before the
# client was split into small objects (#16); since then +1.6-2.9 MiB stays (measured 2026-12-07,
# cause not found yet: likely small-object arenas the split's objects leave part-used). Still an
# order of magnitude below the +92 MiB kept before flow control.
GATEWAY_RETURN = 4 * MB
GATEWAY_BODY = 3_000_000_000  # what the TCP peer asks for (and never reads)
STALL_SECONDS = 15.0  # how long the peer sits on its request without reading
RETURN_SECONDS = 15.0  # how long the gateway gets to give its memory back
WARM_UP_BODY = 4_000_000  # one ordinary fetch before the baseline


def fetch_through(port: int, size: int) -> int:
    """GET /gen?size=SIZE through the gateway on `port`, read whole: the body's length."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET /gen?size={size}&seed=4 HTTP/1.1\r\nHost: x\r\nConnection: close"
                  "\r\n\r\n".encode())
        data = bytearray()
        while chunk := s.recv(1 << 16):
            data += chunk
    return len(data) - data.index(b"\r\n\r\n") - 4


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[int]:
    """A real Trickles web server over UDP on 127.0.0.1 (a thread of this process): its port."""
    from trickles_kit.apps.web import WebServer
    from trickles_kit.core.server import ServerConfig, ServerEngine
    from trickles_kit.net.ip import aton
    from trickles_kit.net.runner import ServerLoop
    from trickles_kit.net.udp import UdpTransport

    tr = UdpTransport("127.0.0.1", 0)
    app = WebServer(tmp_path)
    eng = ServerEngine(os.urandom(32), app, aton("127.0.0.1"), tr.port, ServerConfig())
    app.attach(eng)
    loop = ServerLoop(eng, tr)
    th = threading.Thread(target=loop.run, daemon=True)
    th.start()
    try:
        yield tr.port
    finally:
        loop.stop()
        th.join(5)
        tr.close()


def test_gateway_rss_bounded_with_a_peer_that_never_reads_and_returns_after(upstream) -> None:
    """`trickles gateway` in a subprocess; a TCP peer asks for 3 GB and never reads. Bounds:
    the gateway's peak RSS stays within GATEWAY_BOUND (32 MiB) of its baseline (after start-up
    and one ordinary 4 MB fetch, before the peer connects) for STALL_SECONDS, and within
    RETURN_SECONDS after the peer leaves its anonymous RSS is back within GATEWAY_RETURN
    (4 MiB) of the baseline's, and stays there. The
    gateway before flow control (3c36a80^) fails the first (+98 MiB in 20 s, +92 MiB kept);
    the one without `release_freed_memory` (3c36a80) the second (+6.4 MiB kept)."""
    args = [sys.executable, "-m", "trickles_kit.cli", "gateway", "--listen", "127.0.0.1:0",
            "--upstream", f"127.0.0.1:{upstream}", "--transport", "udp"]
    with child(args, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, f"the gateway did not start: {line!r}"
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        # the baseline is a gateway that has served one ordinary fetch: what a first transfer
        # sets up for good (code paths, allocator arenas, caches) is not held for the peer
        assert fetch_through(port, WARM_UP_BODY) == WARM_UP_BODY
        time.sleep(0.5)
        base, base_anon = rss(proc.pid)[0], anon(proc.pid)
        sampler = RssSampler(proc.pid, every=0.1).start()
        try:
            peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect)
            try:
                peer.connect(("127.0.0.1", port))
                peer.sendall(f"GET /gen?size={GATEWAY_BODY}&seed=3 HTTP/1.1\r\nHost: x\r\n"
                             "\r\n".encode())
                t_open = time.monotonic() - sampler.t0
                time.sleep(STALL_SECONDS)  # never reads
                stalled = rss(proc.pid)[0]
            finally:
                # unread bytes in its buffer: closing sends a reset, the gateway sees it at once
                peer.close()
            t_left = time.monotonic() - sampler.t0
            came_back = wait_for(lambda: anon(proc.pid) - base_anon <= GATEWAY_RETURN,
                                 RETURN_SECONDS, every=0.25)
            t_back = time.monotonic() - sampler.t0
            time.sleep(2.0)  # and it stays there
            after, hwm = rss(proc.pid)
            after_anon = anon(proc.pid)
        finally:
            sampler.stop()
        peak = max(sampler.peak * 1024, hwm)
        timeline, next_t = [], 0.0
        for t, kib in sampler.samples:  # one a second: (s since the request, MiB above)
            if t >= next_t:
                timeline.append((round(t - t_open), round((kib * 1024 - base) / MB, 1)))
                next_t = t + 1.0
        print(f"\ngateway: baseline {base / MB:.1f} MiB; peak +{(peak - base) / MB:.1f} MiB "
              f"(VmHWM {hwm / MB:.1f} MiB); +{(stalled - base) / MB:.1f} MiB after "
              f"{STALL_SECONDS:.0f} s of the peer not reading; it left at "
              f"{t_left - t_open:.1f} s; "
              + (f"within {GATEWAY_RETURN / MB:.0f} MiB of the baseline {t_back - t_left:.1f} s "
                 "later" if came_back else f"not within {GATEWAY_RETURN / MB:.0f} MiB of the "
                 f"baseline after {RETURN_SECONDS:.0f} s")
              + f", {(after - base) / MB:+.1f} MiB 2 s after that "
              f"({(after_anon - base_anon) / MB:+.1f} MiB of it anonymous); "
              f"timeline (s, MiB above baseline): {timeline}")
        assert proc.poll() is None, "the gateway exited"
        assert peak - base <= GATEWAY_BOUND, (base, peak)
        assert came_back and after_anon - base_anon <= GATEWAY_RETURN, (base_anon, after_anon)
