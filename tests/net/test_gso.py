"""UDP segmentation offload in UdpTransport.send_batch (asked for: `segment_offload=True`, `serve
--udp-offload`): runs of equal datagrams to one peer go in one segmented send, and every
receiver still gets exactly its datagrams, in order; coalesced reads (UDP_GRO, asked for with
it, in the compiled build) come back apart."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from tests.wire_helpers import need_root
from trickles_kit.net import gso, sniffers
from trickles_kit.net.udp import UdpTransport

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="Linux only")


def _receiver() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.settimeout(2.0)
    return s


def _read(s: socket.socket, n: int) -> list[bytes]:
    return [s.recv(65535) for _ in range(n)]


def test_runs_plan_equal_stretches_to_one_peer() -> None:
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    items = ([(b"x" * 100, a)] * 5 + [(b"y" * 60, a)]  # 5 full + a shorter last: one run
             + [(b"z" * 100, b)] * 2  # too short a run
             + [(b"w" * 100, a)] * 70)  # more than MAX_SEGMENTS: cut
    got = list(gso.runs(items))
    assert got[0] == (0, 6, 100)
    assert all(j - i >= gso.MIN_RUN and j - i <= gso.MAX_SEGMENTS for i, j, _ in got)
    assert (6, 8, 100) not in got
    assert sum(j - i for i, j, _ in got[1:]) == 70  # the 70 in runs of at most 64


def test_runs_respect_the_payload_limit() -> None:
    a = ("127.0.0.1", 1)
    items = [(bytes(1500), a)] * 60  # 90,000 bytes: more than one datagram may carry
    got = list(gso.runs(items))
    assert [j - i for i, j, _ in got] == [43, 17]
    assert all((j - i) * 1500 <= gso.MAX_PAYLOAD for i, j, _ in got)


def test_mixed_batch_arrives_exactly_and_in_order() -> None:
    r1, r2 = _receiver(), _receiver()
    tr = UdpTransport(segment_offload=True)
    try:
        p1, p2 = r1.getsockname(), r2.getsockname()
        items = []
        for k in range(200):  # runs of full datagrams, shorter ones, two peers interleaved
            size = 1400 if k % 37 else 200 + k
            items.append((os.urandom(size), p1 if (k // 20) % 3 else p2))
        assert tr.send_batch(items) == len(items)
        assert tr.counters["tx"] == len(items)
        assert tr.counters["gso_sends"] > 0  # the offload was used (Linux loopback has it)
        for rx, peer in ((r1, p1), (r2, p2)):
            want = [d for d, a in items if a == peer]
            assert _read(rx, len(want)) == want
    finally:
        tr.close()
        r1.close()
        r2.close()


class _NoOffload:
    """A socket stand-in whose kernel refuses segmented sends (EINVAL), as one without
    UDP_SEGMENT or with a segment over the path's MTU does."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.refused = 0

    def sendmsg(self, *a, **k):
        self.refused += 1
        raise OSError(errno.EINVAL, "no segmentation offload")

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_a_refused_offload_falls_back_and_loses_nothing() -> None:
    rx = _receiver()
    tr = UdpTransport(segment_offload=True)
    real = tr.sock
    tr.sock = _NoOffload(real)  # type: ignore[assignment]
    try:
        peer = rx.getsockname()
        items = [(os.urandom(1000), peer) for _ in range(30)]
        assert tr.send_batch(items) == 30
        assert _read(rx, 30) == [d for d, _ in items]
        assert tr.gso is False and tr.sock.refused == 1  # asked once, then never again
        assert tr.counters["gso_off.EINVAL"] == 1
        more = [(os.urandom(1000), peer) for _ in range(10)]
        assert tr.send_batch(more) == 10 and tr.sock.refused == 1
        assert _read(rx, 10) == [d for d, _ in more]
    finally:
        tr.sock = real
        tr.close()
        rx.close()


def test_coalesced_reads_come_back_as_the_datagrams_sent() -> None:
    """Two transports: runs from one arrive coalesced (UDP_GRO) at the other, whose
    recv_batch (compiled) cuts each read back into the datagrams, in order and exact."""
    from trickles_kit.native import speedups

    rx, tx = UdpTransport(segment_offload=True), UdpTransport(segment_offload=True)
    try:
        assert rx.gro is (speedups is not None)  # (pure Python: one datagram per read)
        peer = ("127.0.0.1", rx.port)
        items = []
        for k in range(300):
            size = 1200 if k % 50 else 90 + k  # long runs, a few short ones between
            items.append((os.urandom(size), peer))
        for i in range(0, len(items), 100):
            assert tx.send_batch(items[i:i + 100]) == 100
        got: list[bytes] = []
        for _ in range(200):
            got += [d for d, _, _ in rx.recv_batch()]
            if len(got) >= len(items):
                break
        assert got == [d for d, _ in items]
    finally:
        rx.close()
        tx.close()


def test_the_transport_alone_does_not_offload() -> None:
    """A bare UdpTransport sends datagram by datagram (serve and fetch ask for "auto")."""
    rx = _receiver()
    tr = UdpTransport()
    try:
        assert tr.gso is False and tr.gro is False
        peer = rx.getsockname()
        items = [(os.urandom(1000), peer) for _ in range(10)]
        assert tr.send_batch(items) == 10 and tr.counters["gso_sends"] == 0
        assert _read(rx, 10) == [d for d, _ in items]
    finally:
        tr.close()
        rx.close()


_HEAD = "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n"


def _packet_file(tmp_path, *rows: tuple[str, int]) -> str:
    """A /proc/net/packet with one socket per (proto hex, ifindex)."""
    p = tmp_path / "packet"
    p.write_text(_HEAD + "".join(f"000000001234abcd 3      3    {proto}   {iface}     1 0      "
                                 f"0      {100 + i}\n" for i, (proto, iface) in enumerate(rows)))
    return str(p)


def test_what_counts_as_a_capture(tmp_path) -> None:
    lo = frozenset((0, 1))
    assert sniffers.capturing(lo, _packet_file(tmp_path)) is False
    assert sniffers.capturing(lo, _packet_file(tmp_path, ("0003", 1))) is True  # tcpdump -i lo
    assert sniffers.capturing(lo, _packet_file(tmp_path, ("0003", 0))) is True  # -i any
    # a DHCP client's ETH_P_ALL socket on another interface, an ETH_P_IP one on lo: not ours
    assert sniffers.capturing(lo, _packet_file(tmp_path, ("0003", 2), ("0800", 1))) is False
    assert sniffers.capturing(None, _packet_file(tmp_path, ("0003", 2))) is True
    assert sniffers.capturing(lo, str(tmp_path / "missing")) is None


def test_the_watch_reads_at_most_every_recheck(tmp_path) -> None:
    now = [100.0]
    path = _packet_file(tmp_path)
    w = sniffers.CaptureWatch("127.0.0.1", recheck_s=0.25, path=path, clock=lambda: now[0])
    assert w.seen() is False and w.readings == 1
    _packet_file(tmp_path, ("0003", 1))  # a capture starts
    now[0] += 0.1
    assert w.seen() is False and w.readings == 1  # (the last reading still stands)
    now[0] += 0.2
    assert w.seen() is True and w.readings == 2
    blind = sniffers.CaptureWatch("127.0.0.1", path=str(tmp_path / "missing"))
    assert blind.seen() is True  # a host that cannot tell: offload stays off


def test_auto_offload_holds_back_while_a_capture_runs(tmp_path) -> None:
    """"auto" (None, what serve and fetch start with): segmented runs while nobody captures,
    datagram by datagram while a capture runs, every datagram delivered either way."""
    rx = _receiver()
    tr = UdpTransport(segment_offload=None)
    try:
        assert tr.gso is True and tr.watch is not None
        peer = rx.getsockname()
        for capture, want_held in (((), 0), ((("0003", 1),), 1)):
            tr.watch = sniffers.CaptureWatch("127.0.0.1", path=_packet_file(tmp_path, *capture))
            before = tr.counters["gso_sends"]
            items = [(os.urandom(1300), peer) for _ in range(20)]
            assert tr.send_batch(items) == 20
            assert _read(rx, 20) == [d for d, _ in items]
            assert tr.counters["gso_held.capture"] == want_held
            assert (tr.counters["gso_sends"] > before) is (not want_held)
    finally:
        tr.close()
        rx.close()


def test_a_real_capture_on_lo_turns_auto_offload_off() -> None:
    """A packet socket as tcpdump -i lo opens it (root): the host's own /proc/net/packet."""
    need_root("opening a packet socket")
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(sniffers.ETH_P_ALL))
    sniff.bind(("lo", 0))
    rx = _receiver()
    tr = UdpTransport(segment_offload=None)
    try:
        assert sniffers.capturing(sniffers.loopback_ifindexes()) is True
        items = [(os.urandom(1300), rx.getsockname()) for _ in range(20)]
        assert tr.send_batch(items) == 20
        assert tr.counters["gso_held.capture"] == 1 and tr.counters["gso_sends"] == 0
        assert _read(rx, 20) == [d for d, _ in items]
    finally:
        tr.close()
        rx.close()
        sniff.close()
