"""UDP segmentation offload (Linux `UDP_SEGMENT`): a run of datagrams of one size to one peer
leaves in one `sendmsg`, and the kernel cuts it back into those datagrams — after the stack on
loopback, in software at a device that has no offload. The receiver sees ordinary datagrams.

Why: a server answers a batch of requests with runs of equal full-size packets to the same
client, and a datagram's own way through the send path was most of what a loopback packet cost
past the protocol: with it on both sides the loopback server's MB per CPU-second went from 74
to 135 (`benchmarks/bench_quic.py --loopback`: benchmarks/results/quic_loopback.json).

`runs` only plans; `UdpTransport.send_batch` sends, and turns this off for good (falling back
to `sendmmsg`) the first time the kernel refuses a segmented send (no `UDP_SEGMENT`, or a
segment that would not fit the path's MTU).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104  # (receive side: native/speedups.c recv_many cuts a coalesced read apart)
MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS (the kernel refuses more in one send)
MAX_PAYLOAD = 65507  # one IPv4 UDP datagram: what a segmented send may carry in all
MIN_RUN = 3  # shorter runs go with the other datagrams in one sendmmsg
SIZE = struct.Struct("=H").pack  # the cmsg's u16 segment size, in host order


def runs(items: list[tuple[bytes, Any]]) -> Iterator[tuple[int, int, int]]:
    """(start, end, size) of each stretch of `items` worth one segmented send: at least
    MIN_RUN datagrams to one address, all `size` bytes but possibly a shorter last one (the
    kernel cuts at every `size` bytes), at most MAX_SEGMENTS and MAX_PAYLOAD bytes. In order;
    the datagrams between the stretches are not named."""
    n = len(items)
    i = 0
    while i < n:
        data, addr = items[i]
        size = total = len(data)
        j = i + 1
        while j < n and j - i < MAX_SEGMENTS:
            d, a = items[j]
            m = len(d)
            if m > size or a != addr or total + m > MAX_PAYLOAD:
                break
            total += m
            j += 1
            if m < size:  # a shorter one can only end a run
                break
        if j - i >= MIN_RUN:
            yield i, j, size
        i = j


def ancillary(size: int) -> list[tuple[int, int, bytes]]:
    """The control message that asks the kernel to cut the payload every `size` bytes."""
    return [(SOL_UDP, UDP_SEGMENT, SIZE(size))]
