"""Raw IPv4 transport on a host's loopback (or inside a namespace).

IP protocol 253 by default: the kernel's TCP never sees the segments, so it sends no RSTs and no
firewall rule is needed. Protocol 6 makes the segments real TCP on the wire (use it inside a
namespace, where the toolkit silences the kernel's RSTs for the Trickles port). The socket is
bound to this endpoint's own address, so the kernel hands it only datagrams addressed to it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any

from trickles_kit.native import recv_many, speedups
from trickles_kit.net.ip import PROTO_TCP, PROTO_TRICKLES, parse_ipv4
from trickles_kit.net.privileges import require_raw
from trickles_kit.net.transport import Transport
from trickles_kit.wire.errors import DecodeError


class RawTransport(Transport):
    name = "raw"
    batch_safe = True  # Transport.send_batch sends exactly what this send would

    def __init__(self, local_ip: str = "127.0.0.1", ip_proto: int = PROTO_TRICKLES) -> None:
        if ip_proto not in (PROTO_TRICKLES, PROTO_TCP):
            raise ValueError("ip_proto must be 253 or 6")
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, ip_proto)
        except PermissionError:
            require_raw("raw")  # raises PrivilegeError with one clear line
            raise
        try:
            sock.bind((local_ip, 0))
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot bind raw socket to {local_ip}: {e.strerror}") from None
        super().__init__(sock, local_ip)
        self.ip_proto = ip_proto
        self._view = memoryview(bytearray(65535))

    def send(self, segment: bytes, dst_ip: bytes, peer: Any = None) -> bool:
        return self._sendto(segment, (socket.inet_ntoa(dst_ip), 0))

    def address(self, dst_ip: bytes, peer: Any = None) -> Any:
        return (socket.inet_ntoa(dst_ip), 0)

    def recv_batch(self, limit: int = 256) -> list[tuple[bytes, bytes, Any]]:
        out = []
        local = self.local_ip
        for data in self._datagrams(limit):
            try:
                ip = parse_ipv4(data)
            except DecodeError:
                self.counters["drop.ip"] += 1
                continue
            if ip.dst != local or ip.proto != self.ip_proto:
                self.counters["drop.not_ours"] += 1
                continue
            out.append((ip.payload, ip.src, ip.src))
        self.counters["rx"] += len(out)
        return out

    def _datagrams(self, limit: int) -> Iterable[bytes | memoryview]:
        """What the socket holds: one recvmmsg call in the compiled build (native/); in pure
        Python views of one reused buffer, read in place (parse_ipv4 copies only the payload)."""
        if speedups is not None:
            return [d for d, _, _ in recv_many(self.sock, limit)]
        return self._views(limit)

    def _views(self, limit: int) -> Iterator[memoryview]:
        recv_into = self.sock.recv_into
        view = self._view
        for _ in range(limit):
            try:
                n = recv_into(view)
            except (BlockingIOError, InterruptedError):
                break
            yield view[:n]

    def udp_ports(self, peer: Any, outgoing: bool) -> None:
        return None
