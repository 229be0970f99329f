"""Thin datagram transports: the same TCP-format segment over UDP or a raw IP socket.

Engines never see a transport. A transport sends a segment to a peer and hands back batches of
(segment, source IP, peer) — `peer` is what `send` needs to answer (an IP for raw sockets, an
(ip, port) pair for UDP). Send failures (EPERM from a firewall, ENOBUFS) are counted drops.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from typing import Any

from trickles_kit.net.ip import aton

RCVBUF = 4 << 20
SNDBUF = 4 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux; not exported by Python's socket module
_DROP_ERRNOS = {errno.EPERM, errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED, errno.EHOSTUNREACH,
                errno.ENETUNREACH, errno.EMSGSIZE}


class Transport:
    """Common parts: the socket, buffers, counters, non-blocking batched receive."""

    name = "base"
    ip_proto = 0

    def __init__(self, sock: socket.socket, local_ip: str) -> None:
        self.sock = sock
        self.local_ip = aton(local_ip)
        self.local_ip_str = local_ip
        self.counters: Counter[str] = Counter()
        for opt, size in ((socket.SO_RCVBUF, RCVBUF), (socket.SO_SNDBUF, SNDBUF)):
            forced = SO_RCVBUFFORCE if opt == socket.SO_RCVBUF else SO_SNDBUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, forced, size)  # root may exceed rmem_max
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _sendto(self, data: bytes, addr: Any) -> bool:
        try:
            self.sock.sendto(data, addr)
        except OSError as e:
            if e.errno in _DROP_ERRNOS:
                self.counters["send_drop." + errno.errorcode.get(e.errno, str(e.errno))] += 1
                return False
            raise
        self.counters["tx"] += 1
        return True

    def send(self, segment: bytes, dst_ip: bytes, peer: Any) -> bool:
        raise NotImplementedError

    def recv_batch(self, limit: int = 256) -> list[tuple[bytes, bytes, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
