"""Fault injection for labs: drop received requests at random or by a reproducible pattern.

Middleware in the smoltcp sense: `LossyTransport` wraps any transport and the engines never
know; `DropPattern` is the same decision for the simulator. They exist so a lab can show loss
and recovery on a real loopback wire without netem or firewall rules — and, with a pattern, show
it in *every* run: random loss at 1 % leaves a short transfer loss-free now and then.

A pattern names requests by index, counted per connection (client address and Trickles port):
the SYN starts the count, request 0 is the first one after it. The same indices are dropped in
every run and every connection, so the server drops what it did last time; what the client
sends around them still depends on timing.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from trickles_kit.net.transport import Transport

# The tour's default: request 30 comes after slow start has grown the window to about 33
# packets (so splits precede the loss) and leaves enough of the window in flight that the
# recovery terminates trickles and bootstraps new ones (a transfer of ~90 KB or more).
TOUR_DROP_AT: tuple[int, ...] = (30,)


def tour_drops(loss: float, drop_at: Iterable[int] | None = None) -> tuple[int, ...]:
    """The requests a lab run always drops: `drop_at` if given, else `TOUR_DROP_AT` when the
    run asks for loss at all — so any loss > 0 shows one, and loss 0 stays a clean run."""
    if drop_at is None:
        return TOUR_DROP_AT if loss > 0 else ()
    out = tuple(sorted({int(i) for i in drop_at}))
    if any(i < 0 for i in out):
        raise ValueError("drop_at holds request indices >= 0")
    return out


def parse_indices(text: str) -> tuple[int, ...]:
    """'30,90' -> (30, 90): request indices for --drop-at (empty text: none)."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"request indices are integers >= 0 separated by commas, got {text!r}")
        out.append(int(part))
    return tuple(sorted(set(out)))


def _is_syn(seg: bytes) -> bool:
    """SYN without ACK: a connection's first segment."""
    return len(seg) > 13 and seg[13] & 0x12 == 0x02


class DropPattern:
    """Which requests to drop: the indices in `at`, and (with `seed`) each index whose draw
    from `random.Random(seed)` falls below `loss` — the same indices in every run.

    Call it with each received segment; it counts requests per connection (at most
    `max_conns` remembered, oldest forgotten) and says whether to drop this one. SYNs are
    never dropped: they only restart their connection's count.
    """

    def __init__(self, at: Iterable[int] = (), loss: float = 0.0, seed: int | None = None,
                 max_conns: int = 65536) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        if loss and seed is None:
            raise ValueError("a pattern's loss needs a seed (unseeded loss is random per run)")
        self.at = frozenset(int(i) for i in at)
        if any(i < 0 for i in self.at):
            raise ValueError("request indices must be >= 0")
        self.loss = loss
        self._rng = random.Random(seed)
        self._lost: list[bool] = []  # the seeded verdict of each index, drawn in index order
        self._next: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()
        self.max_conns = max_conns
        self.dropped: list[int] = []  # indices dropped so far (all connections)

    def __bool__(self) -> bool:
        return bool(self.at or self.loss)

    def drops(self, index: int) -> bool:
        """Whether request `index` (of any connection) is dropped."""
        if index in self.at:
            return True
        if not self.loss:
            return False
        lost = self._lost
        while len(lost) <= index:
            lost.append(self._rng.random() < self.loss)
        return lost[index]

    def __call__(self, seg: bytes, src_ip: bytes) -> bool:
        key = (bytes(src_ip), bytes(seg[0:2]))
        counts = self._next
        if _is_syn(seg):
            counts[key] = 0
            counts.move_to_end(key)
        else:
            i = counts.pop(key, 0)  # no SYN seen (a restarted server): count from here
            counts[key] = i + 1
            if self.drops(i):
                self.dropped.append(i)
                return True
        while len(counts) > self.max_conns:
            counts.popitem(last=False)
        return False


class LossyTransport:
    """Delegates to `inner`, dropping received requests.

    Without `seed` or `drop_at` it behaves as it always has: each received datagram is dropped
    with probability `loss`, differently in every run. With `seed`, `loss` becomes a
    `DropPattern` (the same request indices in every run); `drop_at` adds explicit indices.
    `port`, if given, limits the pattern to segments for that service port.
    """

    def __init__(self, inner: Transport, loss: float, seed: int | None = None, *,
                 drop_at: Iterable[int] = (), port: int | None = None) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        self.inner = inner
        self.loss = loss if seed is None else 0.0  # the per-datagram random part
        self._rng = random.Random()
        self.pattern = DropPattern(drop_at, loss if seed is not None else 0.0, seed)
        self._port = None if port is None else port.to_bytes(2, "big")
        self.dropped = 0
        # told of each dropped (segment, source IP): `trickles serve` makes every injected
        # loss a counted drop and an event of the engine's (reason "injected")
        self.on_drop: Callable[[bytes, bytes], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def fileno(self) -> int:
        return self.inner.fileno()

    def _drop(self, seg: bytes, src_ip: bytes) -> bool:
        hit = bool(self.pattern) and (self._port is None or seg[2:4] == self._port) \
            and self.pattern(seg, src_ip)  # counted even when the random part drops it too
        return hit or bool(self.loss and self._rng.random() < self.loss)

    def recv_batch(self, limit: int = 256) -> list[tuple[bytes, bytes, Any]]:
        batch = self.inner.recv_batch(limit)
        if not (self.loss or self.pattern):
            return batch
        keep = []
        for d in batch:
            if not self._drop(d[0], d[1]):
                keep.append(d)
            else:
                self.dropped += 1
                if self.on_drop is not None:
                    self.on_drop(d[0], d[1])
        return keep
