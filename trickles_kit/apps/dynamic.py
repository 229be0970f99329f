"""`GET /dyn`: dynamic content of unknown length served into reserved byte ranges with SKIP.

The response is a sequence of records whose lengths nobody announces in advance (PROTOCOL §10,
SKIP). Record `i` lives in its own reservation of `reserve` bytes at stream offset
`h + i * reserve` (`h` = header length) whatever the lengths of the records before it, so any
replica can produce any record statelessly, from (seed, i) alone. A record fills the front of its
reservation; the rest is sent as one SKIP chunk and the client advances past it without asking
for it byte by byte. The stream's total length is revealed (FIN flag, FINHINT) only by the
packets that reach the last record; until then the client just keeps asking for the next bytes.

Framing. The HTTP/1.1 response uses `Transfer-Encoding: chunked`: each record is one chunk
(`<hex length>\\r\\n<bytes>\\r\\n`) and the last record is followed by `0\\r\\n\\r\\n`, so the bytes
the client delivers once the holes are skipped are an ordinary chunked response (a TCP gateway
can hand them to curl unchanged).

Request: `GET /dyn?seed=S&records=N&stop=K&reserve=R` — at most N records (1..4096); after each
record the generator stops with probability 1/K (K = 0: never, only at N); R in 256..65536.
Record `i` has `1 + H(seed, i) mod (R - 16)` bytes of `generated_bytes`. The server finds the
last record with a scan of the stop rule, memoised in a small bounded cache (soft state).

The route's user continuation is a sealed (AES-GCM, bound to the connId) spec, prefixed by the
two bytes `MARK` so WebServer can route it without opening it; the plaintext repeats the tag, so
a blob of another route never opens as one of ours.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trickles_kit.apps.common import SealedRoute
from trickles_kit.apps.generated import generated_bytes
from trickles_kit.apps.http import (
    Dechunker,  # noqa: F401 - re-exported: /dyn's framing
    parse_query,
)

if TYPE_CHECKING:
    from trickles_kit.apps.web import WebServer
    from trickles_kit.core.server import Minisocket

MARK = b"\xfeD"
MAX_RECORDS = 4096
MIN_RESERVE, MAX_RESERVE = 256, 65536
DEFAULT_RESERVE = 4096
DEFAULT_STOP = 16
_SPEC = struct.Struct("!2sQHHI")  # tag, seed, records, stop, reserve
_last_cache: OrderedDict[tuple[int, int, int], int] = OrderedDict()


@dataclass(frozen=True, slots=True)
class DynSpec:
    """Everything that determines a /dyn stream."""

    seed: int
    records: int
    stop: int = DEFAULT_STOP
    reserve: int = DEFAULT_RESERVE

    def __post_init__(self) -> None:
        if not 1 <= self.records <= MAX_RECORDS or not 0 <= self.stop <= 0xFFFF:
            raise ValueError(f"records must be in 1..{MAX_RECORDS} and stop in 0..65535")
        if not MIN_RESERVE <= self.reserve <= MAX_RESERVE or not 0 <= self.seed < 1 << 64:
            raise ValueError(f"reserve must be in {MIN_RESERVE}..{MAX_RESERVE}, seed < 2^64")

    def pack(self) -> bytes:
        return _SPEC.pack(MARK, self.seed, self.records, self.stop, self.reserve)

    @classmethod
    def unpack(cls, plain: bytes) -> DynSpec | None:
        if len(plain) != _SPEC.size:
            return None
        tag, seed, records, stop, reserve = _SPEC.unpack(plain)
        try:
            return cls(seed, records, stop, reserve) if tag == MARK else None
        except ValueError:
            return None

    # ------------------------------------------------------------------ content
    @property
    def header(self) -> bytes:
        return dyn_header()

    def _h(self, i: int) -> int:
        return int.from_bytes(hashlib.blake2b(struct.pack("!QQ", self.seed, i),
                                              digest_size=8).digest(), "big")

    def record(self, i: int) -> bytes:
        """The bytes of record i (never empty: an empty chunk would end the response)."""
        n = 1 + self._h(i) % (self.reserve - 16)
        return generated_bytes(self.seed, i * self.reserve, i * self.reserve + n)

    def is_last(self, i: int) -> bool:
        return i == self.records - 1 or (self.stop > 0 and (self._h(i) >> 32) % self.stop == 0)

    def last(self) -> int:
        """Index of the last record: a scan of the stop rule, memoised (bounded soft state)."""
        key = (self.seed, self.records, self.stop)
        found = _last_cache.get(key)
        if found is None:
            found = next(i for i in range(self.records) if self.is_last(i))
            _last_cache[key] = found
            if len(_last_cache) > 256:
                _last_cache.popitem(last=False)
        return found

    def framed(self, i: int) -> bytes:
        """Reservation i's filled bytes: the record as one HTTP chunk (+ the terminator)."""
        data = self.record(i)
        out = b"%x\r\n" % len(data) + data + b"\r\n"
        return out + b"0\r\n\r\n" if i == self.last() else out

    def stream_end(self) -> int:
        last = self.last()
        return len(self.header) + last * self.reserve + len(self.framed(last))

    def body(self) -> bytes:
        """The de-chunked body a client must end up with (for tests and labs)."""
        return b"".join(self.record(i) for i in range(self.last() + 1))

    def delivered(self) -> bytes:
        """The in-order stream with the SKIPped holes removed (header + chunked body)."""
        return self.header + b"".join(self.framed(i) for i in range(self.last() + 1))


def dyn_header() -> bytes:
    return ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n"
            "X-Trickles: stateless\r\n\r\n").encode("ascii")


def dyn_target(seed: int, records: int, stop: int = DEFAULT_STOP,
               reserve: int = DEFAULT_RESERVE) -> str:
    return f"/dyn?seed={seed}&records={records}&stop={stop}&reserve={reserve}"


def fill_reserved(msk: Minisocket, spec: DynSpec, ucont: bytes) -> None:
    """Fill each slot from the reservation its range starts in; SKIP the reservation's rest."""
    header = spec.header
    h = len(header)
    r = spec.reserve
    last = spec.last()
    end = spec.stream_end()
    for slot in msk.slots:
        slot.ucont = ucont
        rng = slot.range
        if rng is None or rng[0] >= end:
            slot.finhint = end
            continue
        s, e = rng[0], min(rng[1], rng[0] + slot.budget)
        i = 0 if s < h else (s - h) // r
        res = h + i * r
        frame = spec.framed(i)
        filled = res + len(frame)  # [res, filled) has content, [filled, res + r) is a hole
        if s < filled:
            data = (header + frame)[s:] if i == 0 else frame[s - res :]
            data = data[: e - s]
            slot.fill(s, data, fin=s + len(data) == end)
            reached = s + len(data) >= filled
        else:
            reached = True
        if reached and i != last:
            slot.skips.append((filled, res + r - filled))
        if i == last and e >= end:
            slot.finhint = end


class DynamicRoute(SealedRoute):
    """WebServer route for `/dyn` (see the module docstring)."""

    MARK = MARK

    def __init__(self, web: WebServer, cache_entries: int = 4096) -> None:
        super().__init__(web, cache_entries)

    def __call__(self, msk: Minisocket) -> bool:
        """True when this route took the minisocket (served or dropped it)."""
        web = self.web
        box = web._box
        assert box is not None
        cid = msk.conn_id
        if msk.ucont:
            sealed = msk.ucont
            spec = self._open(msk, DynSpec.unpack)
            if spec is None:
                return False  # not ours (or forged): WebServer decides
        else:
            target = _target(msk.request)
            if target is None or (target != "/dyn" and not target.startswith("/dyn?")):
                return False
            spec = _parse(target)
            if spec is None:
                return False  # WebServer answers it (a 404: no such file)
            sealed = MARK + box.seal(spec.pack(), cid)
            self._remember(cid, sealed, spec)
            web.counters["status.200"] += 1
        self.served += 1
        fill_reserved(msk, spec, sealed)
        return True


def _target(request: bytes) -> str | None:
    """The request target of a `GET <target> HTTP/1.x` first line, or None."""
    line = request.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or not parts[2].startswith(b"HTTP/1."):
        return None
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None


def _parse(target: str) -> DynSpec | None:
    args = parse_query(target.partition("?")[2])
    if args is None or set(args) - {"seed", "records", "stop", "reserve"}:
        return None
    try:
        return DynSpec(int(args.get("seed", "0")), int(args.get("records", "64")),
                       int(args.get("stop", str(DEFAULT_STOP))),
                       int(args.get("reserve", str(DEFAULT_RESERVE))))
    except ValueError:
        return None


__all__ = ["Dechunker", "DynSpec", "DynamicRoute", "dyn_header", "dyn_target", "fill_reserved"]
