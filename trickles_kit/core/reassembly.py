"""Response bytes on the client: what was asked, what arrived, what the application may read.

One concern, the byte stream (aioquic's stream receiver): chunks are kept only where a request of
ours named them, out-of-order runs are merged so memory is one object per island, bytes go to
the application in order, and the stream's stated length is final: a length below what was
already delivered is a protocol error, never a silent cut (docs/protocol.md §8.7). Flow control
lives here too: held bytes plus bytes asked and not arrived never exceed the window.
"""

from __future__ import annotations

from collections import Counter

from trickles_kit.core.ranges import RangeSet
from trickles_kit.wire.messages import DataChunk, FinHint, SkipChunk

Ranges = list[tuple[int, int]]


def _within(spans: Ranges, own: Ranges) -> Ranges:
    """The parts of `spans` (disjoint) inside `own` (short, may overlap): disjoint, sorted."""
    out = []
    for s, e in spans:
        for a, b in own:
            lo, hi = max(s, a), min(e, b)
            if lo < hi:
                out.append((lo, hi))
    if len(out) > 1:
        out.sort()
        merged = [out[0]]
        for lo, hi in out[1:]:
            if lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return merged
    return out


class Reassembly:
    """The client's receive side of the response stream."""

    __slots__ = ("window", "max_islands", "counters", "total", "received", "missing", "want",
                 "want_bytes", "held", "deliver", "skips", "app", "_pieces", "_piece_end")

    def __init__(self, window: int, max_islands: int, counters: Counter[str]) -> None:
        self.window, self.max_islands, self.counters = window, max_islands, counters
        self.total: int | None = None  # the stream's length, once stated
        self.received = RangeSet()  # bytes that arrived (or were skipped)
        self.missing = RangeSet()  # bytes to ask again
        self.want = RangeSet()  # bytes asked for and not received yet
        self.want_bytes = 0
        self.held = 0  # bytes in _pieces and app: out of order, or unread
        self.deliver = 0  # bytes handed to `app` so far (the in-order frontier)
        self.skips = RangeSet()  # SKIPped ranges past the frontier
        self.app = bytearray()  # in-order bytes the application has not read
        self._pieces: dict[int, bytearray] = {}  # out-of-order runs, merged: start -> bytes
        self._piece_end: dict[int, int] = {}  # end -> start of each run

    # ------------------------------------------------------------------ state
    @property
    def done(self) -> bool:
        return self.total is not None and self.received.covers(0, self.total)

    def credit(self) -> int:
        """New bytes the window still lets the client ask for."""
        return self.window - self.held - self.want_bytes

    def read(self) -> bytes:
        out = bytes(self.app)
        self.app.clear()
        self.held -= len(out)
        return out

    # ------------------------------------------------------------------ asking
    def ask(self, start: int, end: int) -> None:
        """Record bytes named in a request: only these are accepted when they arrive."""
        want = self.want
        if want.covers(start, end):  # asked already (the picker asks new bytes at once)
            return
        if want.ends_by(start) and self.received.ends_by(start):
            self.want_bytes += end - start  # (new bytes past all others)
            want.add(start, end)
            return
        for s, e in self.received.gaps(start, end):
            for gs, ge in self.want.gaps(s, e):
                self.want_bytes += ge - gs
            self.want.add(s, e)

    def unask(self, start: int, end: int) -> None:
        for s, e in self.want.clip(start, end):
            self.want_bytes -= e - s
        self.want.remove(start, end)

    def settle(self, ranges: Ranges) -> None:
        """Bytes an arrived (or lost) packet should have carried but did not become missing
        (never bytes at or past a known end: asking for them again would only fetch a FINHINT)."""
        top = self.total if self.total is not None else 1 << 32
        for s, e in ranges:
            for gs, ge in self.received.gaps(s, min(e, top)):
                self.missing.add(gs, ge)

    # ------------------------------------------------------------------ the stated length
    def set_total(self, total: int) -> bool:
        """The stream ends at `total` (the least statement wins). False, and nothing changed,
        if bytes at or past it were already delivered: the peer contradicts itself."""
        if total < self.deliver:
            return False
        if self.total is None or total < self.total:
            self.total = total
            self.missing.remove_from(total)
            self.unask(total, 1 << 33)
            self._drop_pieces_from(total)
        return True

    def _drop_pieces_from(self, total: int) -> None:
        """Out-of-order runs wholly at or past the end can never be delivered: free them."""
        for start in [s for s in self._pieces if s >= total]:
            piece = self._pieces.pop(start)
            del self._piece_end[start + len(piece)]
            self.held -= len(piece)

    # ------------------------------------------------------------------ taking chunks
    def take(self, chunks: list, own: Ranges | None) -> bool | None:
        """Keep the bytes we asked for (within the window), below the stream's length; with
        `own`, only those inside the ranges the packet's own slot asked for. Whether any new
        byte arrived; None, and nothing taken, if the packet states a length (FINHINT, a DATA
        chunk with FIN: applied before its data) below the bytes already delivered."""
        stated = None
        for c in chunks:
            if isinstance(c, DataChunk):
                if not c.fin:
                    continue
                t = c.byte_num + len(c.data)
            elif isinstance(c, FinHint):
                t = c.byte_num
            else:
                continue
            if stated is None or t < stated:
                stated = t
        if stated is not None and not self.set_total(stated):
            return None
        got = False
        received = self.received
        cap = self.max_islands
        counters = self.counters
        for c in chunks:
            if isinstance(c, DataChunk):
                start = c.byte_num
                end = start + len(c.data)
                spans = self.want.clip(start, end)
                if own is not None and spans:
                    if len(own) == 1 and len(spans) == 1:  # (the common case, inline)
                        lo, hi = max(spans[0][0], own[0][0]), min(spans[0][1], own[0][1])
                        spans = [(lo, hi)] if lo < hi else []
                    else:
                        spans = _within(spans, own)
                took = False
                for s, e in spans:
                    if len(received) >= cap and not received.contains(s - 1):
                        counters["drop.fragments"] += 1  # a new island past the cap
                        continue
                    # [s, e) lies inside `want` (clipped from it): unask it outright
                    self.want_bytes -= e - s
                    self.want.remove(s, e)
                    self._store(s, c.data[s - start : e - start])
                    received.add(s, e)
                    took = got = True
                if not took and c.data and received.gaps(start, end):
                    counters["drop.unasked"] += 1  # bytes we never asked for (of this packet)
            elif isinstance(c, SkipChunk):
                end = c.byte_num + c.length
                if self.total is not None:
                    end = min(end, self.total)
                for s, e in received.gaps(c.byte_num, end):
                    if len(received) >= cap and not received.contains(s - 1):
                        counters["drop.fragments"] += 1
                        continue
                    self.skips.add(s, e)
                    received.add(s, e)
                    self.unask(s, e)
                    got = True
        return got

    def _store(self, start: int, data: bytes) -> None:
        """Keep an out-of-order run (no longer asked: the caller unasked it), merged with its
        neighbours: memory stays one object per island however small the chunks are."""
        self.held += len(data)
        left = self._piece_end.pop(start, None)
        if left is not None:
            buf = self._pieces[left]
            buf += data
        else:
            left, buf = start, bytearray(data)
            self._pieces[start] = buf
        right = self._pieces.pop(start + len(data), None)
        if right is not None:
            del self._piece_end[start + len(data) + len(right)]
            buf += right
        self._piece_end[left + len(buf)] = left

    def deliver_in_order(self) -> int:
        """Move the runs that now continue the in-order frontier to `app`; the bytes moved."""
        pieces = self._pieces
        n0 = len(self.app)
        top = self.total
        while top is None or self.deliver < top:
            piece = pieces.pop(self.deliver, None)
            if piece is not None:
                del self._piece_end[self.deliver + len(piece)]
                if top is not None and self.deliver + len(piece) > top:  # past the stated end
                    self.held -= self.deliver + len(piece) - top
                    del piece[top - self.deliver :]
                self.app += piece
                self.deliver += len(piece)
                continue
            first = self.skips.first()
            if first is not None and first[0] == self.deliver:
                self.skips.remove(*first)
                self.deliver = first[1]
                continue
            break
        return len(self.app) - n0


__all__ = ["Reassembly"]
