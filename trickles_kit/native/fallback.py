"""Pure-Python twins of the compiled batched I/O (speedups.c): same signatures, same results.

One system call per datagram; the compiled `recv_many`/`send_many` make one `recvmmsg` /
`sendmmsg` call per batch instead. Transports call whichever `native.recv_many` names.
"""

from __future__ import annotations

import array
import socket
import struct
from typing import Any

_LIMIT = 256  # the compiled twin takes at most this many datagrams a call


class _Buffer:
    """One receive buffer per process: a datagram is copied out right-sized."""

    view = memoryview(bytearray(65536))


def recv_many(sock: socket.socket, limit: int) -> list[tuple[bytes, bytes, int]]:
    """(data, source IPv4 address as 4 bytes, source port) of what `sock` holds now, up to
    `limit` datagrams, without blocking. An ICMP error left by an earlier send uses up one read,
    as a plain `recvfrom` loop would."""
    out = []
    recv = sock.recvfrom_into
    view = _Buffer.view
    aton = socket.inet_aton
    for _ in range(min(limit, _LIMIT)):
        try:
            n, addr = recv(view, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        except ConnectionRefusedError:
            continue
        out.append((bytes(view[:n]), aton(addr[0]), addr[1]))
    return out


def send_many(sock: socket.socket, items: list[tuple[bytes, Any]]) -> list[tuple[int, int]]:
    """Send each (data, (host, port)) in order; (index, errno) of the ones that failed."""
    failed = []
    sendto = sock.sendto
    for i, (data, addr) in enumerate(items):
        try:
            sendto(data, socket.MSG_DONTWAIT, addr)
        except OSError as e:
            failed.append((i, e.errno or 0))
    return failed


def record_offsets(buf: Any, off: int, safe: int, max_records: int, max_record: int,
                   big_endian: bool) -> tuple[bytes, int, bool]:
    """The fast part of a classic-pcap record walk (capture/pcapio.py `mapped_batches`): from
    `off` while ``off < safe`` and fewer than `max_records` are taken, note each record's
    offset and step over it; stop before a record that claims more than `max_record` bytes.
    Returns the offsets (native int64 bytes), where the walk stopped, and whether it took
    `max_records` (the batch is full)."""
    u32 = struct.Struct(">I" if big_endian else "<I").unpack_from
    safe = min(safe, len(buf) - 12)
    offs = array.array("q")
    add = offs.append
    for _ in range(max_records):
        if off >= safe:
            break
        incl = u32(buf, off + 8)[0]
        if incl > max_record:
            break
        add(off)
        off += 16 + incl
    return offs.tobytes(), off, len(offs) == max_records
