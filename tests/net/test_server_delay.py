"""`trickles serve --delay`: answers are held, in order, and the capture shows when they left."""

from __future__ import annotations

import pytest

from trickles_kit.net.runner import ServerLoop


class FakeEngine:
    service_port = 80
    on_event = None

    def receive(self, seg: bytes, src_ip: bytes, now: float) -> list[bytes]:
        return [b"A" + seg, b"B" + seg]


class FakeTransport:
    local_ip = b"\x7f\x00\x00\x01"
    ip_proto = 253

    def __init__(self) -> None:
        self.inbox: list[tuple[bytes, bytes, object]] = []
        self.sent: list[tuple[bytes, float]] = []
        self.clock = 0.0

    def recv_batch(self, limit: int = 256):
        out, self.inbox = self.inbox, []
        return out

    def send(self, seg: bytes, dst: bytes, peer: object) -> None:
        self.sent.append((seg, self.clock))

    def udp_ports(self, peer: object, outgoing: bool):
        return None


class FakePcap:
    def __init__(self) -> None:
        self.rows: list[tuple[float, bytes]] = []

    def log(self, t: float, src: bytes, dst: bytes, seg: bytes, proto: int, ports) -> None:
        self.rows.append((t, seg))


def _seg(n: int) -> bytes:
    return b"\x00\x01\x00\x50" + bytes([n]) * 16  # destination port 80 at bytes 2..3


def test_answers_wait_the_delay_and_leave_in_order():
    tr, pcap = FakeTransport(), FakePcap()
    loop = ServerLoop(FakeEngine(), tr, pcap, clock=lambda: tr.clock, delay=0.05)
    tr.inbox = [(_seg(1), b"\x7f\x00\x00\x02", None)]
    loop.step(0.0)
    tr.clock = 0.01
    tr.inbox = [(_seg(2), b"\x7f\x00\x00\x02", None)]
    loop.step(0.0)
    assert tr.sent == []  # nothing before its time
    assert loop.next_due(1.0) == pytest.approx(0.04)
    tr.clock = 0.05
    assert loop.release() == 2  # the first request's two answers
    tr.clock = 0.061  # 0.01 + 0.05 in floating point is a hair over 0.06
    assert loop.release() == 2
    assert [s[:2] for s, _ in tr.sent] == [b"A\x00", b"B\x00", b"A\x00", b"B\x00"]
    assert [s[5] for s, _ in tr.sent] == [1, 1, 2, 2]
    assert [t for _, t in tr.sent] == [0.05, 0.05, 0.061, 0.061]
    # the capture: two requests received, and every answer at the time it really left
    sent_rows = [t for t, seg in pcap.rows if seg[:1] in (b"A", b"B")]
    assert sent_rows == [0.05, 0.05, 0.061, 0.061]
    assert loop.next_due(1.0) == 1.0


def test_no_delay_sends_at_once_and_bad_delays_are_refused():
    tr = FakeTransport()
    loop = ServerLoop(FakeEngine(), tr, clock=lambda: tr.clock)
    tr.inbox = [(_seg(3), b"\x7f\x00\x00\x02", None)]
    loop.step(0.0)
    assert len(tr.sent) == 2
    for bad in (-0.01, 11.0):
        with pytest.raises(ValueError, match="delay"):
            ServerLoop(FakeEngine(), tr, delay=bad)


# ------------------------------------------------------------------ the client host's clock
class _QuietTransport(FakeTransport):
    """A transport whose socket never has anything to read (ClientHost polls it)."""

    def __init__(self) -> None:
        super().__init__()
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def fileno(self) -> int:
        return self.sock.fileno()


def test_client_host_runs_on_the_clock_it_is_given() -> None:
    """Connections start, events and pcap rows are stamped and timers fire by the injected
    clock: nothing in the host reads the wall clock behind it."""
    from trickles_kit.net.runner import ClientHost

    now = [1000.0]
    tr, pcap, events = _QuietTransport(), FakePcap(), []
    host = ClientHost(tr, b"\x7f\x00\x00\x01", 80, pcap=pcap, on_event=events.append,
                      clock=lambda: now[0])
    try:
        conn = host.open(b"GET / HTTP/1.1\r\n\r\n")
        assert conn.started == 1000.0 and len(tr.sent) == 1  # the SYN
        assert [t for t, _ in pcap.rows] == [1000.0]
        assert all(e.t == 1000.0 for e in events)
        host.step(0)
        assert len(tr.sent) == 1  # its timer is not due on this clock
        now[0] += 5.0  # past the SYN's retransmission timeout
        host.step(0)
        assert len(tr.sent) == 2 and pcap.rows[-1][0] == 1005.0
    finally:
        host.shutdown()
        tr.sock.close()
