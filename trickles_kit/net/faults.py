"""A fault-injecting transport wrapper: drops received datagrams at random (seeded).

Middleware in the smoltcp sense: it wraps any transport and the engines never know. It exists so
a lab can show loss and recovery on a real loopback wire without netem or firewall rules.
"""

from __future__ import annotations

import random
from typing import Any

from trickles_kit.net.transport import Transport


class LossyTransport:
    """Delegates to `inner`, dropping each received datagram with probability `loss`."""

    def __init__(self, inner: Transport, loss: float, seed: int | None = None) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        self.inner = inner
        self.loss = loss
        self._rng = random.Random(seed)
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def fileno(self) -> int:
        return self.inner.fileno()

    def recv_batch(self, limit: int = 256) -> list[tuple[bytes, bytes, Any]]:
        batch = self.inner.recv_batch(limit)
        if not self.loss:
            return batch
        keep = [d for d in batch if self._rng.random() >= self.loss]
        self.dropped += len(batch) - len(keep)
        return keep
