"""UDP transport: no privileges. The segment's TCP ports are the Trickles ports; the UDP
ports only carry it, so one client socket serves any number of connections."""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from trickles_kit.native import recv_many, speedups
from trickles_kit.net import gso
from trickles_kit.net.ip import PROTO_UDP, aton
from trickles_kit.net.sniffers import CaptureWatch
from trickles_kit.net.transport import _DROP_ERRNOS, Transport

# a segmented send the kernel cannot make (no UDP_SEGMENT, a segment over the path's MTU):
# from then on this socket sends datagram by datagram
_NO_GSO = {errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP}


class UdpTransport(Transport):
    name = "udp"
    ip_proto = PROTO_UDP
    batch_safe = True  # Transport.send_batch sends exactly what this send would

    def __init__(self, local_ip: str = "127.0.0.1", port: int = 0,
                 reuse_port: bool = False, segment_offload: bool | None = False) -> None:
        """`segment_offload`: True sends runs segmented, False never, None ("auto") only
        while no capture runs on this host (net/sniffers.py)."""
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
        # runs of equal datagrams to one peer in one send (net/gso.py; Linux), and the other
        # way a peer's run read at once, which the compiled recv_many cuts back into its
        # datagrams (pure Python cannot: no GRO there). A capture on this host would record
        # each run as one large datagram (tcpdump -i lo on the sending side; on a NIC with
        # GRO, the receiving side too), which the decoders and Wireshark do not cut apart: in
        # "auto" (None) runs go segmented only while no capture runs here
        self.gso = segment_offload is not False and sys.platform.startswith("linux")
        self.watch = CaptureWatch(local_ip) if segment_offload is None and self.gso else None
        self.gro = False
        if self.gso and speedups is not None:
            try:
                sock.setsockopt(gso.SOL_UDP, gso.UDP_GRO, 1)
                self.gro = True
            except OSError:  # a kernel before UDP_GRO (5.0): one datagram per read
                pass

    def send(self, segment: bytes, dst_ip: bytes, peer: Any) -> bool:
        """`peer` is the (ip, udp_port) to send to."""
        return self._sendto(segment, peer)

    def address(self, dst_ip: bytes, peer: Any) -> Any:
        return peer

    def send_batch(self, items: list[tuple[bytes, Any]]) -> int:
        """As `Transport.send_batch`, with each run of equal datagrams to one peer
        (`gso.runs`) in one segmented send; what lies between the runs goes in one batch."""
        if not self.gso or len(items) < gso.MIN_RUN:
            return super().send_batch(items)
        if self.watch is not None and self.watch.seen():
            self.counters["gso_held.capture"] += 1  # a batch sent plain: a capture runs
            return super().send_batch(items)
        sent = done = 0
        for i, j, size in gso.runs(items):
            if i > done:
                sent += super().send_batch(items[done:i])
            sent += self._send_run(items[i:j], size)
            done = j
        return sent + super().send_batch(items[done:])

    def _send_run(self, run: list[tuple[bytes, Any]], size: int) -> int:
        """One segmented send of `run`; its datagrams are counted (tx, or a drop each) as
        if sent one by one. A refusal that means no offload falls back and turns it off."""
        if not self.gso:
            return super().send_batch(run)
        try:
            self.sock.sendmsg([b"".join([d for d, _ in run])], gso.ancillary(size),
                              socket.MSG_DONTWAIT, run[0][1])
        except OSError as e:
            if e.errno in _NO_GSO:
                self.gso = False
                self.counters["gso_off." + errno.errorcode.get(e.errno, str(e.errno))] += 1
                return super().send_batch(run)
            if e.errno in _DROP_ERRNOS:
                self.counters["send_drop." + errno.errorcode.get(e.errno, str(e.errno))] += \
                    len(run)
                return 0
            raise
        self.counters["tx"] += len(run)
        self.counters["gso_sends"] += 1
        return len(run)

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
