"""The client's byte stream (core/reassembly.py): data only where the answering slot asked,
the stated length before the data, and never below what was delivered."""

from __future__ import annotations

from collections import Counter

from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.reassembly import Reassembly
from trickles_kit.wire.messages import DataChunk, FinHint


def stream() -> Reassembly:
    return Reassembly(1 << 20, 1000, Counter())


def test_a_packet_fills_only_its_own_slots_bytes() -> None:
    s = stream()
    s.ask(0, 3000)  # two slots asked [0, 1000) and [1000, 3000)
    assert s.take([DataChunk(0, b"a" * 1000), DataChunk(1000, b"b" * 2000)], [(0, 1000)])
    assert s.deliver_in_order() == 1000 and s.read() == b"a" * 1000
    assert s.counters["drop.unasked"] == 1 and not s.received.contains(1000)
    # overlapping accept ranges (a number planned twice) store each byte once
    assert s.take([DataChunk(1000, b"b" * 2000)], [(1000, 3000), (1000, 2000), (1500, 3000)])
    assert s.deliver_in_order() == 2000 and s.read() == b"b" * 2000 and s.held == 0
    # no slot known (an older timeout epoch): any byte still asked
    s.ask(3000, 4000)
    assert s.take([DataChunk(3000, b"c" * 1000)], None) and s.deliver_in_order() == 1000


def test_the_stated_length_comes_first_and_never_below_the_delivered() -> None:
    s = stream()
    s.ask(0, 2000)
    # the length is stated after the data in the packet, and it cuts that data
    assert s.take([DataChunk(0, b"x" * 1500), FinHint(1000)], [(0, 2000)])
    assert s.total == 1000 and s.deliver_in_order() == 1000 and s.read() == b"x" * 1000
    assert s.take([FinHint(999)], [(0, 2000)]) is None  # below what was delivered
    assert s.total == 1000
    assert s.take([FinHint(1000)], None) is False  # the same length again: fine


def test_the_application_stating_a_length_below_the_delivered_fails_the_connection() -> None:
    client = ClientEngine(bytes((10, 1, 0, 2)), 40000, bytes((10, 0, 0, 1)), 80,
                          ClientConfig(), isn=1)
    client.stream.deliver = 5000  # (as if 5,000 bytes had been delivered)
    client.set_total(4000, 0.0)
    assert client.phase == "failed" and client.counters["drop.total_below_delivered"] == 1
    assert client.counters["protocol_error"] == 1 and client.total is None
