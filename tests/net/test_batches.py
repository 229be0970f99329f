"""The loops queue sends for `send_batch` only where that sends exactly what `send` would.

A test's loss injector or tap that overrides `send` (by subclassing or by wrapping a transport
and forwarding other attributes) must see every segment: when batched sends bypassed it, a
lossy transfer lost nothing and a tap saw nothing (found by the CI run of the merged tree).
"""

from __future__ import annotations

from typing import Any

from trickles_kit.net.transport import batches
from trickles_kit.net.udp import UdpTransport


class _Dropping(UdpTransport):
    def send(self, segment: bytes, dst_ip: bytes, peer: Any) -> bool:
        return False


class _Wrapper:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def send(self, segment: bytes, dst_ip: bytes, peer: Any) -> bool:
        return False


class _Vouching(_Dropping):
    batch_safe = True

    def send_batch(self, items: list[tuple[bytes, Any]]) -> int:
        return 0


def test_only_transports_whose_send_vouches_for_send_batch_are_batched() -> None:
    plain = UdpTransport("127.0.0.1", 0)
    sub = _Dropping("127.0.0.1", 0)
    both = _Vouching("127.0.0.1", 0)
    try:
        assert batches(plain)
        assert not batches(sub)  # its own send would be bypassed
        assert not batches(_Wrapper(plain))  # forwards send_batch to the inner transport
        assert batches(both)  # overrides both and says so
        assert not batches(object())
    finally:
        for t in (plain, sub, both):
            t.close()
