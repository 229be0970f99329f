"""Batched datagram I/O (recvmmsg/sendmmsg in native/speedups.c) hands over exactly what the
one-call-per-datagram loops of native/fallback.py do, and `trickles doctor` says which build
is active. The compiled twins are loaded directly (see tests/wire/test_native.py)."""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from wire_helpers import IN_CI, REPO

from trickles_kit.native import fallback
from trickles_kit.net.doctor import run_doctor
from trickles_kit.net.udp import UdpTransport


def compiled():
    try:
        from trickles_kit.native import _speedups  # type: ignore[attr-defined]
    except ImportError:
        msg = "the compiled build is not there: make native (needs a C compiler)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return _speedups


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
    yield socks[0], socks[1]
    for s in socks:
        s.close()


def _drain(recv, sock: socket.socket, want: int) -> list[tuple[bytes, bytes, int]]:
    got: list[tuple[bytes, bytes, int]] = []
    for _ in range(1000):  # bounded: loopback delivers at once, this only absorbs scheduling
        got += recv(sock, 256)
        if len(got) >= want:
            break
    return got


@pytest.mark.parametrize("sender", ["compiled", "fallback"])
@pytest.mark.parametrize("receiver", ["compiled", "fallback"])
def test_batched_send_and_receive_equal_one_by_one(pair, sender: str, receiver: str) -> None:
    c = compiled()
    a, b = pair
    rng = random.Random(5)
    datas = [rng.randbytes(rng.choice([0, 1, 57, 1476, 9000, 65000])) for _ in range(40)]
    send = c.send_many if sender == "compiled" else fallback.send_many
    recv = c.recv_many if receiver == "compiled" else fallback.recv_many
    assert send(a, [(d, b.getsockname()) for d in datas]) == []
    got = _drain(recv, b, len(datas))
    port = a.getsockname()[1]
    assert got == [(d, bytes((127, 0, 0, 1)), port) for d in datas]
    assert recv(b, 256) == []  # nothing left, and no blocking


def test_limit_is_kept_and_the_rest_stays_queued(pair) -> None:
    c = compiled()
    a, b = pair
    c.send_many(a, [(bytes([i]), b.getsockname()) for i in range(10)])
    first = c.recv_many(b, 4)
    assert [d for d, _, _ in first] == [bytes([i]) for i in range(4)]
    rest = _drain(fallback.recv_many, b, 6)
    assert [d for d, _, _ in rest] == [bytes([i]) for i in range(4, 10)]


def test_failed_datagrams_are_reported_and_the_others_sent(pair) -> None:
    c = compiled()
    a, b = pair
    dst = b.getsockname()
    items = [(b"one", dst), (b"x" * 70000, dst), (b"three", dst)]  # over UDP's 65507
    for send in (c.send_many, fallback.send_many):
        assert send(a, items) == [(1, errno.EMSGSIZE)]
        assert [d for d, _, _ in _drain(fallback.recv_many, b, 2)] == [b"one", b"three"]


def test_udp_transport_receives_through_the_switch(pair) -> None:
    a, _ = pair
    with UdpTransport("127.0.0.1") as tr:
        a.sendto(b"seg", ("127.0.0.1", tr.port))
        got = []
        for _ in range(1000):
            got += tr.recv_batch()
            if got:
                break
        assert got == [(b"seg", bytes((127, 0, 0, 1)), ("127.0.0.1", a.getsockname()[1]))]
        assert tr.counters["rx"] == 1


def test_doctor_names_the_build() -> None:
    build = next(c for c in run_doctor() if c.name == "build")
    assert build.ok is True
    assert build.detail.startswith(("pure Python", "compiled (checksum and batched I/O in C"))


def test_doctor_json_says_pure_under_trickles_pure() -> None:
    env = {**os.environ, "TRICKLES_PURE": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "trickles_kit.cli", "doctor", "--json"], env=env,
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert json.loads(p.stdout)["build"] == "pure Python (TRICKLES_PURE=1)"


def test_transport_send_batch_counts_drops_and_raises_the_rest(pair) -> None:
    """`Transport.send_batch` (whichever build is active) sends in order, counts a datagram the
    kernel refuses for a drop errno as `send` does, and raises any other error after sending
    the rest."""
    _, b = pair
    dst = b.getsockname()
    with UdpTransport("127.0.0.1") as tr:
        sent = tr.send_batch([(b"one", dst), (b"x" * 70000, dst), (b"three", dst)])
        assert sent == 2
        assert tr.counters["tx"] == 2 and tr.counters["send_drop.EMSGSIZE"] == 1
        with pytest.raises(OSError) as e:
            tr.send_batch([(b"four", dst), (b"bad", ("127.0.0.1", 0))])  # port 0: EINVAL
        assert e.value.errno == errno.EINVAL
        got = [d for d, _, _ in _drain(fallback.recv_many, b, 3)]
        assert got == [b"one", b"three", b"four"]
        assert tr.send_batch([]) == 0
