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

from trickles_kit.native import send_many
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

    def address(self, dst_ip: bytes, peer: Any) -> Any:
        """The socket address `send(segment, dst_ip, peer)` sends to (for `send_batch`)."""
        raise NotImplementedError

    def send_batch(self, items: list[tuple[bytes, Any]]) -> int:
        """Send each (segment, socket address from `address`) in order: one `sendmmsg` call per
        256 in the compiled build (native/), a `sendto` each in pure Python. The loops queue
        their answers and send them this way: one system call for many datagrams is most of
        what a loopback datagram costs past the protocol. Returns how many were sent; failures
        are counted drops as in `send` (and any other error is raised, after the rest went)."""
        if not items:
            return 0
        failed = send_many(self.sock, items)
        sent = len(items) - len(failed)
        self.counters["tx"] += sent
        other = 0
        for _, err in failed:
            if err in _DROP_ERRNOS:
                self.counters["send_drop." + errno.errorcode.get(err, str(err))] += 1
            else:
                other = other or err
        if other:
            raise OSError(other, f"send: {errno.errorcode.get(other, other)}")
        return sent

    def recv_batch(self, limit: int = 256) -> list[tuple[bytes, bytes, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batches(transport: Any) -> bool:
    """Whether the loops may queue sends for `transport.send_batch` instead of calling `send`.

    Only when a class vouches that `send_batch` sends what `send` would (`batch_safe = True` in
    its own body) and no class below it overrides `send`: a subclass that overrides `send`
    alone (a loss injector, a tap) or a wrapper that forwards other attributes to an inner
    transport would otherwise have its `send` silently bypassed."""
    for cls in type(transport).__mro__:
        if "batch_safe" in cls.__dict__:
            return bool(cls.__dict__["batch_safe"]) and hasattr(transport, "send_batch")
        if "send" in cls.__dict__:
            return False
    return False

