"""UDP transport: no privileges. The segment's TCP ports are the Trickles ports; the UDP
ports only carry it, so one client socket serves any number of connections."""

from __future__ import annotations

import socket
from typing import Any

from trickles_kit.native import recv_many, speedups
from trickles_kit.net.ip import PROTO_UDP, aton
from trickles_kit.net.transport import Transport


class UdpTransport(Transport):
    name = "udp"
    ip_proto = PROTO_UDP
    batch_safe = True  # Transport.send_batch sends exactly what this send would

    def __init__(self, local_ip: str = "127.0.0.1", port: int = 0,
                 reuse_port: bool = False) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if reuse_port:  # one of a group sharing the port (net.workers shards it)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((local_ip, port))
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot bind UDP {local_ip}:{port}: {e.strerror}") from None
        super().__init__(sock, local_ip)
        self.port = sock.getsockname()[1]
        self._view = memoryview(bytearray(65535))

    def send(self, segment: bytes, dst_ip: bytes, peer: Any) -> bool:
        """`peer` is the (ip, udp_port) to send to."""
        return self._sendto(segment, peer)

    def address(self, dst_ip: bytes, peer: Any) -> Any:
        return peer

    def recv_batch(self, limit: int = 256) -> list[tuple[bytes, bytes, Any]]:
        if speedups is not None:  # one recvmmsg call (native/)
            ntoa = socket.inet_ntoa
            out = [(d, src, (ntoa(src), port)) for d, src, port in recv_many(self.sock, limit)]
            self.counters["rx"] += len(out)
            return out
        out = []
        recv_into = self.sock.recvfrom_into
        view = self._view
        for _ in range(limit):
            try:
                n, addr = recv_into(view)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:  # ICMP from an earlier send; nothing to read
                continue
            out.append((bytes(view[:n]), aton(addr[0]), addr))
        self.counters["rx"] += len(out)
        return out

    def udp_ports(self, peer: Any, outgoing: bool) -> tuple[int, int]:
        return (self.port, peer[1]) if outgoing else (peer[1], self.port)
