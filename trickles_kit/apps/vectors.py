"""Test vectors of docs/protocol.md (Appendix A), computed from the engines themselves.

A second implementation checks itself against these bytes; `tests/wire/test_protocol_vectors.py`
checks that the document and the code agree, byte for byte. Everything is fixed: the master
secret, the clock, the addresses, the client's ISN and the AES-GCM nonces of the user
continuation (a counter here — never on a live server). One connection fetches
`GET /gen?size=6000&seed=7` from the web server with a 256-byte MSS, over a 10 ms path each way:
the handshake, the initial window, one lost packet and its recovery, a blackout that ends in a
SLOWSTART, and the FIN.

    python -m trickles_kit.apps.vectors            # print the appendix block
    python -m trickles_kit.apps.vectors --write docs/protocol.md
"""

from __future__ import annotations

import heapq
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trickles_kit.apps.web import WebServer
from trickles_kit.core.cc import cwnd
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.phase import Phase
from trickles_kit.core.seal import UcontBox
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.wire.messages import REQ_NAMES

SECRET = bytes(range(32))
CLIENT_IP, CLIENT_PORT = "10.1.0.2", 40000
SERVICE_IP, SERVICE_PORT = "10.0.0.1", 80
ISN = 0x01020304
ECHO_KEY = bytes(range(0x20, 0x30))  # the client's echo-token key (os.urandom in real use)
T0 = 120.0  # s: key epoch 2 with 60-second epochs
DELAY = 0.010  # s, one way
MSS = 256
REQUEST = b"GET /gen?size=6000&seed=7 HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"
BEGIN, END = "<!-- vectors:begin -->", "<!-- vectors:end -->"
CWND_TABLE = [  # (n, TCPBase, startCwnd, ssthresh)
    (0, 1, 3, 16383), (1, 1, 3, 16383), (10, 1, 3, 16383), (5, 1, 3, 8), (6, 1, 3, 8),
    (7, 1, 3, 8), (13, 1, 3, 8), (14, 1, 3, 8), (15, 1, 3, 8), (22, 1, 3, 8), (23, 1, 3, 8),
    (100, 1, 3, 8), (10, 10, 2, 2), (11, 10, 2, 2), (12, 10, 2, 2), (13, 10, 2, 2),
    (1000, 50, 4, 4), (10**6, 1, 3, 16383), (10**6, 1, 2, 20),
]
NONCE_TABLE = [  # (connId, TCPBase, L, R)
    (0x0123456789ABCDEF, 1, 0, 0), (0x0123456789ABCDEF, 1, 1, 1), (0x0123456789ABCDEF, 1, 1, 3),
    (0x0123456789ABCDEF, 1, 0, 7), (0x0123456789ABCDEF, 9, 9, 12),
]


@dataclass
class Exchange:
    """One datagram the server received, when, and what it answered."""

    t: float
    request: bytes
    answers: list[bytes]


def _counter_nonces() -> Callable[[int], bytes]:
    n = [0]

    def source(size: int) -> bytes:
        n[0] += 1
        return n[0].to_bytes(size, "big")

    return source


def run_connection() -> list[Exchange]:
    """Play the vectors' connection on a virtual clock; every server exchange, in order."""

    cip, sip = socket.inet_aton(CLIENT_IP), socket.inet_aton(SERVICE_IP)
    web = WebServer(Path(__file__).resolve().parent)  # /gen reads no file
    server = ServerEngine(SECRET, web, sip, SERVICE_PORT, ServerConfig(mss=MSS))
    web.attach(server)
    web._box = UcontBox(server.keys, _counter_nonces())  # reproducible seals (vectors only)
    client = ClientEngine(cip, CLIENT_PORT, sip, SERVICE_PORT, ClientConfig(mss=MSS), isn=ISN,
                          echo_key=ECHO_KEY)
    queue: list[tuple[float, int, str, bytes]] = []
    order = [0]
    out: list[Exchange] = []
    sent_down = [0]
    blackout = [None]  # (start, end) once the recovery is over

    def push(t: float, where: str, seg: bytes) -> None:
        order[0] += 1
        heapq.heappush(queue, (t, order[0], where, seg))

    def lost(seg: bytes, t: float) -> bool:
        sent_down[0] += 1
        pkt = int.from_bytes(seg[4:8], "big")
        if pkt == 5 and sent_down[0] < 12:  # one loss: fast retransmit and the recovery plan
            return True
        b = blackout[0]
        return b is not None and b[0] <= t < b[1]

    def flush(t: float) -> None:
        for seg in client.datagrams_to_send():
            push(t + DELAY, "server", seg)

    client.connect(T0, REQUEST)
    flush(T0)
    closing = False
    while queue:
        t, _, where, seg = heapq.heappop(queue)
        timer = client.get_timer()
        if timer is not None and timer < t:  # the client's timer fires first
            heapq.heappush(queue, (t, _, where, seg))
            client.handle_timer(timer)
            flush(timer)
            continue
        if where == "server":
            answers = server.receive(seg, cip, t)
            out.append(Exchange(t, seg, answers))
            if blackout[0] is None and server.counters["bootstrap"]:
                blackout[0] = (t, t + 0.1)  # everything the server sends for 100 ms is lost
            for a in answers:
                if not lost(a, t):
                    push(t + DELAY, "client", a)
        else:
            client.receive(seg, t)
            flush(t)
        if client.done and not closing:
            closing = True
            client.close(t)
            flush(t)
        if closing and client.phase == Phase.CLOSED:
            break
        if not queue and client.get_timer() is not None:
            timer = client.get_timer()
            client.handle_timer(timer)
            flush(timer)
    if not closing or client.phase != Phase.CLOSED:
        raise RuntimeError("the vectors' connection did not complete")
    return out


def _req_type(seg: bytes) -> str:
    return REQ_NAMES.get(seg[28] & 0x3F, "?") if len(seg) > 28 else "?"


def vectors() -> list[tuple[str, str]]:
    """(name, value) pairs in document order: segments as hex, tables as text."""
    ex = run_connection()
    picks: list[tuple[str, Exchange]] = [("handshake", ex[0]), ("initial_window", ex[1])]
    rec = next(e for e in ex if any(a[36] == 0 and not a[13] & 1 for a in e.answers))
    picks.append(("recovery", rec))
    term = next((e for e in ex[ex.index(rec):] if not e.answers
                 and _req_type(e.request) == "NORMAL"), None)
    if term is not None:
        picks.append(("terminate", term))
    picks.append(("slowstart", next(e for e in ex if _req_type(e.request) == "SLOWSTART")))
    picks.append(("fin", next(e for e in ex if _req_type(e.request) == "FIN")))
    out: list[tuple[str, str]] = []
    for name, e in picks:
        out.append((f"{name}.request t={e.t:.3f}", e.request.hex()))
        for i, a in enumerate(e.answers):
            out.append((f"{name}.answer{i} t={e.t:.3f}", a.hex()))
    keys = KeyRing(SECRET)
    gen = NonceGen(keys.nonce_key)
    for cid, base, left, right in NONCE_TABLE:
        out.append((f"nonce_summary connId={cid:016x} TCPBase={base} L={left} R={right}",
                    f"{gen.range_summary(cid, base, left, right):08x}"))
    for n, b, c0, ss in CWND_TABLE:
        out.append((f"cwnd n={n} TCPBase={b} startCwnd={c0} ssthresh={ss}",
                    str(cwnd(n, b, c0, ss))))
    return out


def render(pairs: list[tuple[str, str]]) -> str:
    """The appendix block: `name` on its own line, the value below, 64 hex digits a line."""
    lines = [BEGIN, "```"]
    for name, value in pairs:
        lines.append(name)
        lines.extend("    " + value[i:i + 64] for i in range(0, max(len(value), 1), 64))
    lines += ["```", END]
    return "\n".join(lines)


def parse(doc: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of the appendix block of `doc` (ValueError if there is none)."""
    if doc.count(BEGIN) != 1 or doc.count(END) != 1:
        raise ValueError("the document needs exactly one vectors block")
    body = doc.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()
    if body[:1] != ["```"] or body[-1:] != ["```"]:
        raise ValueError("the vectors block is one fenced code block")
    pairs: list[tuple[str, str]] = []
    for line in body[1:-1]:
        if line.startswith("    "):
            if not pairs:
                raise ValueError("a value line before any name")
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + line[4:])
        else:
            pairs.append((line, ""))
    return pairs


def mismatches(doc: str, want: list[tuple[str, str]] | None = None) -> list[str]:
    """What differs between the document's vectors and the code's (empty: they agree);
    `want` is `vectors()` when the caller already has it."""
    try:
        got = parse(doc)
    except ValueError as e:
        return [str(e)]
    if want is None:
        want = vectors()
    out = [f"missing or extra vectors: {len(got)} in the document, {len(want)} computed"] if (
        len(got) != len(want)) else []
    for (gn, gv), (wn, wv) in zip(got, want, strict=False):
        if gn != wn:
            out.append(f"name {gn!r}, expected {wn!r}")
        elif gv != wv:
            out.append(f"{gn}: value differs")
    return out


def main(argv: list[str]) -> int:
    block = render(vectors())
    if argv[:1] == ["--write"] and len(argv) == 2:
        path = Path(argv[1])
        doc = path.read_text()
        head, rest = doc.split(BEGIN, 1)
        path.write_text(head + block + rest.split(END, 1)[1])
        return 0
    if argv:
        print("usage: python -m trickles_kit.apps.vectors [--write DOC.md]", file=sys.stderr)
        return 2
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
