"""Helpers shared by handlers: parse the request line, fill slots from a byte source."""

from __future__ import annotations

from collections.abc import Callable

from trickles_kit.core.server import Minisocket


def request_words(msk: Minisocket) -> list[str]:
    """Words of the first request line (b"GET /x HTTP/1.1\\r\\n..." -> ["GET", "/x", ...])."""
    line = msk.request.split(b"\n", 1)[0].strip()
    try:
        return line.decode("ascii").split()
    except UnicodeDecodeError:
        return []


def fill_slots(msk: Minisocket, size: int, read: Callable[[int, int], bytes],
               ucont_for: Callable[[int], bytes]) -> None:
    """Fill every slot with its requested range of a `size`-byte stream.

    Each slot gets a FINHINT when it reaches the end (or has nothing to carry) so the client
    learns the length from any packet, and a user continuation naming the offset it carries.
    """
    for slot in msk.slots:
        rng = slot.range
        if rng is None:
            slot.finhint = size
            slot.ucont = ucont_for(size)
            continue
        start, end = rng
        end = min(end, size, start + slot.budget)
        if start < end:
            slot.fill(start, read(start, end), fin=end == size)
        if end >= size or start >= end:
            slot.finhint = size
        slot.ucont = ucont_for(start)
