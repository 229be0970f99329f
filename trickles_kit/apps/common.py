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
    A user continuation the request did not carry goes on the wire (the engine omits an
    unchanged one), so it takes its room from the data: the packet keeps the size `mss` allows
    and the client asks again for the bytes left out.
    """
    held = msk.ucont
    for slot in msk.slots:
        rng = slot.range
        if rng is None:
            slot.finhint = size
            slot.ucont = ucont_for(size)
            continue
        start, end = rng
        u = ucont_for(start)
        room = slot.budget - len(u) if u != held else slot.budget
        end = min(end, size, start + max(room, 1))
        if start < end:
            slot.fill(start, read(start, end), fin=end == size)
        if end >= size or start >= end:
            slot.finhint = size
        slot.ucont = u


class SealedRoute:
    """A WebServer route whose per-connection state rides in the sealed user continuation,
    behind a 2-byte mark that tells routes apart; opened states are cached (bounded, cleared
    when full) so a connection's packets do not each pay for an AES-GCM open."""

    MARK = b""

    def __init__(self, web, cache_entries: int) -> None:
        self.web = web
        self.cache_entries = cache_entries
        self._opened: dict[tuple[int, bytes], object] = {}
        self.served = 0

    def _open(self, msk: Minisocket, unpack: Callable[[bytes], object | None]) -> object | None:
        """This route's state from `msk.ucont`, or None: another route's, or forged (the
        WebServer then decides what to answer)."""
        sealed, cid = msk.ucont, msk.conn_id
        if sealed[: len(self.MARK)] != self.MARK:
            return None
        state = self._opened.get((cid, sealed))
        if state is None:
            plain = self.web._box.open(sealed[len(self.MARK) :], cid)
            state = unpack(plain) if plain is not None else None
            if state is not None:
                self._remember(cid, sealed, state)
        return state

    def _remember(self, cid: int, sealed: bytes, state: object) -> None:
        if len(self._opened) >= self.cache_entries:
            self._opened.clear()
        self._opened[(cid, sealed)] = state
