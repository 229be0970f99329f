"""A sorted set of disjoint half-open integer ranges [start, end).

The client tracks bytes received, bytes to re-request and packet numbers received with it; all
operations cost O(number of ranges), which stays small (mostly one big run plus a few islands).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator


class RangeSet:
    __slots__ = ("_starts", "_ends")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def __len__(self) -> int:
        return len(self._starts)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)})"

    def total(self) -> int:
        return sum(e - s for s, e in self)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start - 1)  # first range whose end >= start (touching merges)
        n = len(starts)
        if i == n or starts[i] > end:  # (the common cases inline: a new run, at the end or
            starts.insert(i, start)  # between two others)
            ends.insert(i, end)
            return
        j = i
        while j < n and starts[j] <= end:  # (conditionals, not min/max: this runs per packet)
            if starts[j] < start:
                start = starts[j]
            if ends[j] > end:
                end = ends[j]
            j += 1
        if j == i + 1:  # it meets one run: widen it in place
            starts[i] = start
            ends[i] = end
            return
        starts[i:j] = [start]
        ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        if end <= start:
            return
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start)
        if i < len(starts) and starts[i] <= start and end <= ends[i]:
            # within one run (the client's common case: bytes or numbers that just arrived)
            s0, e0 = starts[i], ends[i]
            if s0 == start:
                if end == e0:
                    del starts[i], ends[i]
                else:
                    starts[i] = end
            elif end == e0:
                ends[i] = start
            else:
                starts.insert(i + 1, end)
                ends.insert(i + 1, e0)
                ends[i] = start
            return
        j = i
        new_s: list[int] = []
        new_e: list[int] = []
        while j < len(starts) and starts[j] < end:
            if starts[j] < start:
                new_s.append(starts[j])
                new_e.append(start)
            if ends[j] > end:
                new_s.append(end)
                new_e.append(ends[j])
            j += 1
        starts[i:j] = new_s
        ends[i:j] = new_e

    def remove_from(self, start: int) -> None:
        """Drop everything at or above `start`."""
        self.remove(start, max(start + 1, self._ends[-1] if self._ends else start + 1))

    def contains(self, x: int) -> bool:
        i = bisect_right(self._starts, x) - 1
        return i >= 0 and x < self._ends[i]

    def covers(self, start: int, end: int) -> bool:
        if end <= start:
            return True
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and end <= self._ends[i]

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """Parts of [start, end) not in the set."""
        out = []
        pos = start
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, start) - 1
        if i < 0:
            i = 0
        n = len(starts)
        while pos < end and i < n:
            e = ends[i]
            if e <= pos:
                i += 1
                continue
            s = starts[i]
            if s >= end:
                break
            if s > pos:
                out.append((pos, s))
            pos = e  # (e > pos here)
            i += 1
        if pos < end:
            out.append((pos, end))
        return out

    def clip(self, start: int, end: int) -> list[tuple[int, int]]:
        """Parts of [start, end) that are in the set."""
        out = []
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, start) - 1
        if i < 0:
            i = 0
        n = len(starts)
        while i < n:
            s = starts[i]
            if s >= end:
                break
            if s < start:
                s = start
            e = ends[i]
            if e > end:
                e = end
            if s < e:
                out.append((s, e))
            i += 1
        return out

    def ends_by(self, x: int) -> bool:
        """Nothing in the set at or above `x` (the client's common case: new bytes, new
        packet numbers, past everything seen)."""
        ends = self._ends
        return not ends or ends[-1] <= x

    def first(self) -> tuple[int, int] | None:
        return (self._starts[0], self._ends[0]) if self._starts else None

    def pop_first(self, limit: int) -> tuple[int, int] | None:
        """Remove and return up to `limit` units from the front."""
        if not self._starts:
            return None
        s, e = self._starts[0], self._ends[0]
        if e - s <= limit:
            del self._starts[0], self._ends[0]
            return (s, e)
        self._starts[0] = s + limit
        return (s, s + limit)
