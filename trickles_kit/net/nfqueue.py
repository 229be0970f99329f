"""nfnetlink_queue spoken directly: bind a netfilter queue, read packet ids, batch verdicts.

Why by hand: no third-party package and no compiler may be needed, and the delay line uses four
messages only. Layouts are those of include/uapi/linux/netfilter/nfnetlink_queue.h: a
`nlmsghdr` (host order), an `nfgenmsg` whose `res_id` is the queue number (big-endian), then
netlink attributes (`NFQA_*`, 4-byte aligned). Config requests ask for an ACK so a refusal
(EPERM, EBUSY: another listener) surfaces as an OSError; verdicts do not, and an error the
kernel still reports arrives as an NLMSG_ERROR the reader counts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# nfnetlink_queue (include/uapi/linux/netfilter/nfnetlink_queue.h) and netlink constants
NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_TIMESTAMP = 1, 2, 4
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_PACKET = 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # asm-generic/socket.h; Python's socket module does not name it
PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"

PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
_NLH = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid (host order)
_NFG = struct.Struct("!BBH")  # nfgenmsg: family, version, res_id (= queue number, big-endian)
_ATTR = struct.Struct("=HH")  # nlattr: len, type
_U32 = struct.Struct("!I")
_TS = struct.Struct("!QQ")  # nfqnl_msg_packet_timestamp: seconds, microseconds (wall clock)
_ERR = struct.Struct("=i")

RCVBUF = 8 << 20  # ~10k queued messages: a burst at 100 Mbit/s never overflows the socket


def nl_attr(kind: int, payload: bytes) -> bytes:
    n = _ATTR.size + len(payload)
    return _ATTR.pack(n, kind) + payload + bytes(-n % 4)


def nfq_message(msg: int, queue: int, attrs: bytes, seq: int = 0,
                flags: int = NLM_F_REQUEST) -> bytes:
    """One nfnetlink_queue message: nlmsghdr + nfgenmsg(AF_UNSPEC, v0, queue) + attributes."""
    body = _NFG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    return _NLH.pack(_NLH.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def verdict_batch(queue: int, last_id: int) -> bytes:
    """ACCEPT every packet of `queue` whose id is <= `last_id` (NFQNL_MSG_VERDICT_BATCH)."""
    return nfq_message(NFQNL_MSG_VERDICT_BATCH, queue,
                       nl_attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last_id)))


def parse(buf: bytes | bytearray | memoryview, n: int
          ) -> Iterator[tuple[int, int, int, float]]:
    """Messages in `buf[:n]`: (PACKET_TYPE, queue, packet id, kernel arrival time) or
    (NLMSG_ERROR, seq, errno, 0.0). The arrival time (wall clock, seconds) is 0.0 unless the
    kernel stamped the packet, which it does while some socket asks for timestamps
    (`enable_kernel_timestamps`)."""
    off = 0
    while off + _NLH.size <= n:
        length, kind, _flags, seq, _pid = _NLH.unpack_from(buf, off)
        if length < _NLH.size or off + length > n:
            return
        if kind == PACKET_TYPE:
            queue = _NFG.unpack_from(buf, off + 16)[2]
            a, end, pid, ts = off + 20, off + length, -1, 0.0
            while a + 4 <= end:
                alen, atype = _ATTR.unpack_from(buf, a)
                if alen < 4:
                    break
                atype &= 0x3FFF
                if atype == NFQA_PACKET_HDR:
                    pid = _U32.unpack_from(buf, a + 4)[0]
                elif atype == NFQA_TIMESTAMP and alen >= 4 + _TS.size:
                    sec, usec = _TS.unpack_from(buf, a + 4)
                    ts = sec + usec * 1e-6
                    break  # the kernel puts the timestamp after the packet header
                a += (alen + 3) & ~3
            if pid >= 0:
                yield PACKET_TYPE, queue, pid, ts
        elif kind == NLMSG_ERROR and length >= 20:
            # the kernel answers in a message carrying the request's sequence number
            yield NLMSG_ERROR, seq, -_ERR.unpack_from(buf, off + 16)[0], 0.0
        off += (length + 3) & ~3


def enable_kernel_timestamps() -> socket.socket:
    """A socket asking for receive timestamps: while one is open the kernel stamps every
    packet it receives (a machine-wide switch), so queued packets carry NFQA_TIMESTAMP —
    their true arrival, before the listener woke up. Keep the socket open to keep it on."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return s


class NfQueueSocket:
    """A netlink socket bound to nfnetlink_queue queues."""

    def __init__(self, rcvbuf: int = RCVBUF) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:  # root may exceed rmem_max; anyone else gets what rmem_max allows
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, 0))
        self.buf = bytearray(1 << 16)
        self.seq = 0
        self.bound: list[int] = []

    def request(self, msg: int, queue: int, attrs: bytes, timeout: float = 2.0) -> None:
        """Send with NLM_F_ACK and wait for the kernel's answer; OSError if it refuses."""
        self.seq += 1
        self.sock.settimeout(timeout)
        try:
            self.sock.send(nfq_message(msg, queue, attrs, self.seq, NLM_F_REQUEST | NLM_F_ACK))
            end = time.monotonic() + timeout
            while time.monotonic() < end:  # packet messages may come first: skip them
                n = self.sock.recv_into(self.buf)
                for kind, a, b, _ts in parse(self.buf, n):
                    if kind == NLMSG_ERROR and a == self.seq:
                        if b:
                            raise OSError(b, f"nfnetlink_queue queue {queue}: {os.strerror(b)}")
                        return
            raise TimeoutError(f"nfnetlink_queue queue {queue}: no answer in {timeout} s")
        finally:
            self.sock.setblocking(False)

    def bind(self, queue: int, copy_range: int, maxlen: int) -> None:
        self.request(NFQNL_MSG_CONFIG, queue, nl_attr(
            NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)))
        self.bound.append(queue)
        self.request(NFQNL_MSG_CONFIG, queue, nl_attr(
            NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET)))
        self.request(NFQNL_MSG_CONFIG, queue, nl_attr(NFQA_CFG_QUEUE_MAXLEN, _U32.pack(maxlen)))

    def unbind_all(self) -> None:
        while self.bound:
            q = self.bound.pop()
            with contextlib.suppress(OSError):
                self.request(NFQNL_MSG_CONFIG, q, nl_attr(
                    NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, socket.AF_INET)))

    def close(self) -> None:
        self.unbind_all()
        self.sock.close()


def kernel_counters(queues: Sequence[int], text: str | None = None) -> dict[int, dict]:
    """Per queue, from /proc/net/netfilter/nfnetlink_queue (this process's namespace):
    packets waiting, dropped because the queue was full, dropped because the listener's socket
    was full, and the last packet id."""
    if text is None:
        try:
            text = Path(PROC_QUEUES).read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].isdigit() and int(f[0]) in queues:
            out[int(f[0])] = {"listener_portid": int(f[1]), "waiting": int(f[2]),
                              "kernel_dropped": int(f[5]), "user_dropped": int(f[6]),
                              "id_sequence": int(f[7])}
    return out


