"""What the server hands an application for one request: the minisocket and its output slots.

A module of their own so that both request paths of the engine (`core.server`'s general one and
`core.server_fast`'s) build them, and applications import them without the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


class OutSlot:
    """One packet the handler may fill: data for `range`, a user continuation, FIN/FINHINT/SKIP."""

    __slots__ = ("pkt", "budget", "range", "byte_num", "data", "data_sum", "fin", "finhint",
                 "skips", "ucont")

    def __init__(self, pkt: int, budget: int, rng: tuple[int, int] | None) -> None:
        self.pkt = pkt
        self.budget = budget
        self.range = rng
        self.byte_num = 0
        self.data = b""
        # int.from_bytes(data, "big") % 0xFFFF when the application knows it (`fill`), else
        # None: the fast path then takes the data's share of the TCP checksum from it
        self.data_sum: int | None = None
        self.fin = False
        self.finhint: int | None = None
        self.skips: list[tuple[int, int]] = []
        self.ucont: bytes | None = None

    def fill(self, byte_num: int, data: bytes, fin: bool = False,
             data_sum: int | None = None) -> None:
        """`data_sum`, if given, must be ``int.from_bytes(data, "big") % 0xFFFF``: an application
        whose bytes are known up front (apps.generated) sums them once, not per packet, and a
        wrong one only spoils its own packets' checksums. (Each call sets it anew; code that
        assigns `data` itself leaves it stale, so it goes through `fill`.)"""
        if len(data) > self.budget:
            raise ValueError(f"slot budget is {self.budget} bytes, got {len(data)}")
        self.byte_num, self.data, self.fin, self.data_sum = byte_num, data, fin, data_sum


@dataclass(slots=True, eq=False)  # eq=False: two requests are never "equal", identity as before
class Minisocket:
    """The application's view of one valid request. Freed when the handler returns."""

    kind: str  # "SYN" | "REQUEST" | "FIN"
    client: tuple[bytes, int]
    conn_id: int
    request: bytes
    ucont: bytes
    ranges: list[tuple[int, int]]
    slots: list[OutSlot]
    now: float
    dropped: bool = False

    def drop(self) -> None:
        self.dropped = True


__all__ = ["Minisocket", "OutSlot"]
