"""The client's packet scoreboard for one timeout epoch: which packet numbers arrived, with the
range nonces that let it prove so (SACK blocks, PROTOCOL §6), and which were declared lost.

A proof names runs of received packets [L, R] with the XOR of their nonces. Keeping every
nonce would cost a dict slot per packet for the whole transfer (~57 MB per GB), so the
scoreboard keeps them in two parts (`prune`):

* raw nonces of the packets numbered at or above `floor`, which moves up with the oldest
  continuation the client may still use and the oldest packet it still waits for;
* below it, for each `anchor` L a proof may still start at (a run's first packet, or the
  TCPBase of a continuation held or expected), the XOR of the nonces from L up to the floor
  (or to the end of L's run, if that ends below it).

A proof [L, R] with L below the floor is then the anchor's XOR and the raw nonces from the
floor to R. Packets below the floor arriving late are not claimed (they were decided long
ago). Everything kept is bounded by the window, not by the transfer's length.
"""

from __future__ import annotations

from collections.abc import Iterable

from trickles_kit.core.ranges import RangeSet
from trickles_kit.core.reassembly import Ranges


class Scoreboard:
    __slots__ = ("board", "nonce", "lost", "max_rx", "sums", "floor", "anchors", "trimmed")

    def __init__(self) -> None:
        self.board = RangeSet()  # packet numbers that may be claimed in SACK proofs
        self.nonce: dict[int, int] = {}  # packet number -> its nonce (at or above `floor`)
        self.lost: dict[int, Ranges] = {}  # declared lost -> the bytes its slot asked for
        self.max_rx = -1  # the highest packet number received
        self.sums: dict[int, tuple[int, int]] = {}  # left -> (right, XOR of [left, right])
        self.floor = -1  # numbers below it: decided; raw nonces kept from here up
        self.anchors: dict[int, list[int]] = {}  # L < floor -> [XOR of [L, end), end]
        self.trimmed = 0  # proofs shortened because a start below the floor had no anchor

    def known(self, pkt: int) -> bool:
        """Already claimed, declared lost, or decided long ago (below the floor)."""
        return pkt < self.floor or pkt in self.lost or self.board.contains(pkt)

    def claim(self, pkt: int, nonce: int) -> None:
        self.board.add(pkt, pkt + 1)
        self.nonce[pkt] = nonce
        if pkt > self.max_rx:
            self.max_rx = pkt

    def proof(self, lo: int, seq: int, max_sacks: int) -> list[tuple[int, int]]:
        """The SACK blocks (inclusive) for a continuation acknowledging `seq` whose proof
        starts at `lo`; at most `max_sacks`: the first block and the last ones. The first
        block fixes the first hole (every trickle's recovery plan starts there); the last ones
        make the hole just below `seq` exact, which is what the server sends the new epoch's
        bootstrap packets for. Keeping the first ones instead merged the holes of a
        heavy loss into one wider than `max_gap`: the new epoch's first packets were then never
        sent, looked lost, and halved the window again (4 halvings after one slow-start
        overshoot at RTT 50 ms)."""
        blocks: list[tuple[int, int]] = []
        for s, e in self.board.clip(lo, seq + 1):  # (a loop: it runs per request)
            blocks.append((s, e - 1))
        if blocks and blocks[0][0] < self.floor:
            blocks = self._provable(blocks)
        if len(blocks) > max_sacks:
            blocks = blocks[:1] + blocks[len(blocks) - max_sacks + 1 :]
        return blocks

    def _provable(self, blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Blocks whose XOR is still known: one starting below the floor without an anchor
        starts at the next point that has one (only a packet no request of ours planned can
        lead here; the server then sees a hole, as if it were lost)."""
        out = []
        floor, anchors = self.floor, self.anchors
        for left, right in blocks:
            if left >= floor or self._can_sum(left, right):
                out.append((left, right))
                continue
            self.trimmed += 1
            starts = sorted(a for a in anchors if left < a <= right and self._can_sum(a, right))
            if starts:
                out.append((starts[0], right))
            elif floor <= right:
                out.append((max(left, floor), right))
        return out

    def _can_sum(self, left: int, right: int) -> bool:
        a = self.anchors.get(left)
        return a is not None and (right + 1 == a[1] or (right + 1 > a[1] == self.floor))

    def summary(self, left: int, right: int) -> int:
        """XOR of the nonces of packets [left, right] (all claimed); 0 if not provable."""
        cached = self.sums.get(left)
        if cached is not None and cached[0] <= right:
            r0, acc = cached
        elif left >= self.floor:
            r0, acc = left - 1, 0
        else:
            a = self.anchors.get(left)
            if a is None or right + 1 < a[1]:
                return 0
            acc, r0 = a[0], a[1] - 1
        nonce = self.nonce
        try:
            if r0 + 1 == right:  # (one packet past the last proof from `left`: most requests)
                acc ^= nonce[right]
            else:
                for j in range(r0 + 1, right + 1):
                    acc ^= nonce[j]
        except KeyError:  # not claimed (or pruned): no honest proof asks for it
            return 0
        sums = self.sums
        if len(sums) > 256:
            sums.clear()
        sums[left] = (right, acc)
        return acc

    def cut_above(self, right: int) -> None:
        """A new timeout epoch reuses the numbers above `right`: forget them (and the lost)."""
        self.board.remove_from(right + 1)
        nonce = self.nonce
        for j in [j for j in nonce if j > right]:
            del nonce[j]
        for a in [a for a in self.anchors if a > right]:
            del self.anchors[a]
        self.lost.clear()
        self.sums.clear()
        self.max_rx = right
        self.floor = min(self.floor, right + 1)

    # ------------------------------------------------------------------ pruning
    def prune(self, floor: int, los: Iterable[int]) -> None:
        """Move the floor up to `floor`: no packet below it is awaited or will be claimed
        again, and no proof will end below it but at a run's end. `los` are the points
        proofs may still start at (lo of every continuation held or expected); anything below
        the least of them is forgotten outright."""
        old = self.floor
        if floor <= old:
            return
        los = set(los)
        lo_min = min(los, default=floor)
        points = {p for p in los if old <= p < floor}
        board, nonce, anchors = self.board, self.nonce, self.anchors
        for ps, pe in board.clip(old, floor):
            joins = ps == old and board.contains(old - 1)  # continues a run from below
            marks = points if joins else points | {ps}
            acc = 0
            for j in range(pe - 1, ps - 1, -1):
                acc ^= nonce[j]
                if j in marks:
                    anchors[j] = [acc, pe]
            if joins:
                for a in anchors.values():
                    if a[1] == old:
                        a[0] ^= acc
                        a[1] = pe
        if floor - old > len(nonce):
            self.nonce = {j: n for j, n in nonce.items() if j >= floor}
        else:
            for j in range(old, floor):
                nonce.pop(j, None)
        for lo in [x for x in anchors if x < lo_min]:
            del anchors[lo]
        first = board.first()
        cut = min(lo_min, floor)
        if first is not None and first[0] < cut:
            board.remove(first[0], cut)
        self.lost = {p: r for p, r in self.lost.items() if p >= floor}
        self.sums.clear()
        self.floor = floor


__all__ = ["Scoreboard"]
