"""Which response bytes the client's next request names: missing ones first, then new ones.

New bytes come from the one stream or, with parallel requests, round-robin over reserved
slices ("lanes"), always within the flow-control credit (docs/protocol.md §4.5, §8.7).
"""

from __future__ import annotations

from trickles_kit.core.reassembly import Ranges, Reassembly


class RangePicker:
    __slots__ = ("stream", "mss", "next_new", "lanes", "_turn")

    def __init__(self, stream: Reassembly, mss: int) -> None:
        self.stream, self.mss = stream, mss
        self.next_new = 0  # the first byte never asked for (one stream)
        self.lanes: list[list[int]] = []  # parallel requests: [next, end) per reserved slice
        self._turn = 0

    def set_lanes(self, lanes: list[tuple[int, int]]) -> None:
        spans = sorted(lanes)
        if not spans or any(s >= e or s < 0 or e > 1 << 32 for s, e in spans) or any(
            a[1] > b[0] for a, b in zip(spans, spans[1:], strict=False)
        ):
            raise ValueError("lanes must be disjoint, non-empty slices of [0, 2^32)")
        self.lanes = [[s, e] for s, e in spans]

    def assign(self, n: int) -> Ranges:
        """Byte ranges for n slots: missing bytes first, then new ones (stops when none left)."""
        mss = self.mss
        stream = self.stream
        out: Ranges = []
        while len(out) < n:
            piece = stream.missing.pop_first(mss)
            if piece is not None:
                for s, e in stream.received.gaps(*piece):
                    out.append((s, e))
                    break
                continue
            rng = self.new_range(mss)
            if rng is None:
                break
            out.append(rng)
        return out

    def new_range(self, mss: int) -> tuple[int, int] | None:
        """Bytes never asked for yet: from the one stream, or round-robin over the lanes."""
        stream = self.stream
        mss = min(mss, stream.credit())
        if mss <= 0:
            return None
        top = stream.total if stream.total is not None else 1 << 32
        lanes = self.lanes
        if not lanes:
            rng = self.unreceived(self.next_new, top, mss)
            if rng is not None:
                self.next_new = rng[1]
                stream.ask(*rng)  # counted at once: the next slot sees less credit
            return rng
        n = len(lanes)
        for _ in range(n):
            lane = lanes[self._turn % n]
            self._turn += 1
            rng = self.unreceived(lane[0], min(lane[1], top), mss)
            if rng is not None:
                lane[0] = rng[1]
                stream.ask(*rng)
                return rng
        return None

    def unreceived(self, pos: int, stop: int, mss: int) -> tuple[int, int] | None:
        """Up to `mss` bytes from `pos`, jumping over what already arrived (a SKIP covers
        whole reserved ranges past the frontier in one chunk); None when [pos, stop) is done."""
        received = self.stream.received
        if received.ends_by(pos):  # nothing arrived past pos (the common case)
            return (pos, pos + mss if pos + mss < stop else stop) if pos < stop else None
        got = received.clip(pos, stop)  # past the frontier: only SKIPs, a few runs
        i = 0
        while i < len(got) and got[i][0] <= pos:
            pos = max(pos, got[i][1])
            i += 1
        if pos >= stop:
            return None
        end = min(pos + mss, stop)
        if i < len(got):
            end = min(end, got[i][0])
        return (pos, end)

    def can_ask(self) -> bool:
        """Whether a request now would name any byte: a missing one or one never asked."""
        stream = self.stream
        if stream.missing:
            return True
        if stream.credit() <= 0:
            return False  # the window is full: wait for the application to read
        top = stream.total if stream.total is not None else 1 << 32
        if not self.lanes:
            return self.unreceived(self.next_new, top, 1) is not None
        return any(self.unreceived(lane[0], min(lane[1], top), 1) is not None
                   for lane in self.lanes)


__all__ = ["RangePicker"]
