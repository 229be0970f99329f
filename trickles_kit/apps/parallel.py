"""Parallel requests: several pipelined GETs on one connection, one reserved slice each.

The client sends the GETs back to back in its first request (HTTP/1.1 pipelining); the first
carries `X-Trickles-Lanes: <n> <b>`: n requests, slices of 2^b bytes. Response i occupies the
byte slice `[i * 2^b, (i + 1) * 2^b)` of the connection's response space; it fills the slice's
front and the server SKIPs the rest. The client (`ClientEngine.set_lanes`) asks for new bytes
round-robin across the slices, so the n responses are served concurrently, by any replica —
every packet names its bytes by (slice, offset) and the slice's descriptor is in the sealed user
continuation. The stream's total is n * 2^b (FINHINT on every packet). Once the holes are
skipped the client delivers the n complete HTTP responses one after the other, exactly as a
pipelined HTTP/1.1 connection would, and `PipelineSplitter` cuts them apart by Content-Length.

Sub-requests are the WebServer's own (static files, /gen, /mark, errors); a response larger than
its slice is answered 500. `/dyn` inside a pipeline is not supported (it is answered 404).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from trickles_kit.apps.common import SealedRoute
from trickles_kit.apps.fetch import fetch
from trickles_kit.apps.http import Descriptor, parse_response_head
from trickles_kit.net.endpoint import local_address_for, open_transport, parse_url
from trickles_kit.net.ip import aton
from trickles_kit.net.runner import ClientHost

if TYPE_CHECKING:
    from trickles_kit.apps.web import WebServer
    from trickles_kit.core.server import Minisocket

MARK = b"\xfeP"
HEADER = "X-Trickles-Lanes"
MAX_LANES = 64
DEFAULT_SLICE_BITS = 26  # 64 MiB per response
_HEAD = struct.Struct("!2sBB")  # tag, slice bits, n
_U16 = struct.Struct("!H")


def lanes_for(n: int, bits: int = DEFAULT_SLICE_BITS) -> list[tuple[int, int]]:
    """The byte slices of n parallel responses."""
    check_layout(n, bits)
    return [(i << bits, (i + 1) << bits) for i in range(n)]


def check_layout(n: int, bits: int) -> None:
    if not 1 <= n <= MAX_LANES or not 10 <= bits <= 31 or n << bits > 0xFFFFFFFF:
        raise ValueError(f"{n} slices of 2^{bits} bytes do not fit the 32-bit response space "
                         f"(at most {MAX_LANES} slices, 2^10..2^31 bytes each)")


def build_request(host: str, paths: list[str], bits: int = DEFAULT_SLICE_BITS) -> bytes:
    """The pipelined GETs; the first names the slice layout."""
    check_layout(len(paths), bits)
    out = []
    for i, p in enumerate(paths):
        extra = f"{HEADER}: {len(paths)} {bits}\r\n" if i == 0 else ""
        out.append(f"GET {p} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
    return "".join(out).encode()


def split_requests(request: bytes) -> tuple[int, list[bytes]] | None:
    """(slice bits, the requests) of a pipelined request that names its lanes, else None."""
    head, sep, _ = request.partition(b"\r\n\r\n")
    if not sep:
        return None
    want = None
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == HEADER.lower().encode():
            try:
                n, bits = (int(x) for x in v.split())
                check_layout(n, bits)
            except ValueError:
                return None
            want = (n, bits)
    if want is None:
        return None
    reqs = [r + b"\r\n\r\n" for r in request.split(b"\r\n\r\n") if r.strip()]
    return (want[1], reqs) if len(reqs) == want[0] else None


class ParallelRoute(SealedRoute):
    """WebServer route: the pipelined GETs of one connection, served into their slices."""

    MARK = MARK

    def __init__(self, web: WebServer, cache_entries: int = 1024) -> None:
        super().__init__(web, cache_entries)

    def _pack(self, bits: int, descs: list[Descriptor]) -> bytes:
        parts = [_HEAD.pack(MARK, bits, len(descs))]
        for d in descs:
            p = d.pack()
            parts.append(_U16.pack(len(p)) + p)
        return b"".join(parts)

    def _unpack(self, plain: bytes) -> tuple[int, list[Descriptor]] | None:
        if len(plain) < _HEAD.size:
            return None
        tag, bits, n = _HEAD.unpack_from(plain)
        if tag != MARK:
            return None
        try:
            check_layout(n, bits)
        except ValueError:
            return None
        off, descs = _HEAD.size, []
        for _ in range(n):
            if off + 2 > len(plain):
                return None
            (ln,) = _U16.unpack_from(plain, off)
            d = Descriptor.unpack(plain[off + 2 : off + 2 + ln])
            if d is None or d.size > 1 << bits:
                return None
            descs.append(d)
            off += 2 + ln
        return (bits, descs) if off == len(plain) else None

    def __call__(self, msk: Minisocket) -> bool:
        web = self.web
        box = web._box
        assert box is not None
        cid = msk.conn_id
        if msk.ucont:
            sealed = msk.ucont
            state = self._open(msk, self._unpack)
            if state is None:
                return False  # not ours (or forged): WebServer decides
        else:
            found = split_requests(msk.request)
            if found is None:
                return False
            bits, reqs = found
            descs = []
            for r in reqs:
                d = web.describe(r)
                if d.size > 1 << bits:
                    d = Descriptor.error(500)
                web.counters[f"status.{d.status}"] += 1
                descs.append(d)
            state = (bits, descs)
            sealed = MARK + box.seal(self._pack(bits, descs), cid)
            self._remember(cid, sealed, state)
        self.served += 1
        self._fill(msk, state[0], state[1], sealed)
        return True

    def _fill(self, msk: Minisocket, bits: int, descs: list[Descriptor], sealed: bytes) -> None:
        total = len(descs) << bits
        readers: dict[int, Callable[[int, int], bytes]] = {}
        for slot in msk.slots:
            slot.ucont = sealed
            slot.finhint = total  # any packet tells the client where the stream ends
            rng = slot.range
            if rng is None or rng[0] >= total:
                continue
            s = rng[0]
            lane = s >> bits
            base = lane << bits
            d = descs[lane]
            end = min(rng[1], s + slot.budget, base + (1 << bits), base + d.size)
            if s < end:
                read = readers.get(lane)
                if read is None:
                    read = readers[lane] = self.web._reader(d)
                slot.fill(s, read(s - base, end - base))
            if end >= base + d.size and d.size < 1 << bits:
                slot.skips.append((base + d.size, (1 << bits) - d.size))



@dataclass
class Part:
    """One response of a pipeline, as the client got it."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    sha256: str = ""
    complete: bool = False


class PipelineSplitter:
    """Cuts the delivered stream into consecutive HTTP/1.1 responses (by Content-Length)."""

    def __init__(self, sinks: list[Callable[[bytes], None]] | None = None) -> None:
        self.parts: list[Part] = []
        self.sinks = sinks or []
        self._buf = bytearray()
        self._left = -1  # body bytes due in the current part; -1 = reading a header
        self._sha = hashlib.sha256()

    def __call__(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while buf:
            if self._left < 0:
                head = parse_response_head(buf)
                if head is None:
                    return
                del buf[: head.size]
                part = Part(status=head.status, headers=head.headers)
                if "content-length" not in part.headers:
                    raise ValueError("a pipelined response needs a Content-Length")
                self.parts.append(part)
                self._sha = hashlib.sha256()
                self._left = int(part.headers["content-length"])
                self._finish_if_empty()
                continue
            n = min(self._left, len(buf))
            chunk = bytes(buf[:n])
            del buf[:n]
            part = self.parts[-1]
            part.bytes += n
            self._sha.update(chunk)
            i = len(self.parts) - 1
            if i < len(self.sinks):
                self.sinks[i](chunk)
            self._left -= n
            self._finish_if_empty()

    def _finish_if_empty(self) -> None:
        if self._left == 0:
            part = self.parts[-1]
            part.sha256 = self._sha.hexdigest()
            part.complete = True
            self._left = -1


@dataclass
class ParallelResult:
    mode: str  # "parallel" | "sequential"
    ok: bool
    seconds: float
    parts: list[Part]
    connections: int

    def as_dict(self) -> dict:
        return asdict(self)


def fetch_parallel(urls: list[str], transport: str = "udp", parallel: bool = True,
                   bits: int = DEFAULT_SLICE_BITS, timeout: float = 120.0,
                   local_ip: str | None = None, outs: list[str] | None = None,
                   config=None) -> ParallelResult:
    """Fetch `urls` (one server) over the real wire: pipelined on one connection (one slice
    each), or — `parallel=False` — one connection after another, for comparison."""
    import time


    if not urls:
        raise ValueError("no URLs")
    where = [parse_url(u) for u in urls]
    host, port = where[0][0], where[0][1]
    if any((h, p) != (host, port) for h, p, _ in where):
        raise ValueError("parallel requests share one connection: one server for all URLs")
    files = [open(o, "wb") for o in outs] if outs else []  # noqa: SIM115 - closed below
    try:
        if not parallel:
            t0 = time.monotonic()
            parts = []
            for i, u in enumerate(urls):
                r = fetch(u, transport=transport, local_ip=local_ip, timeout=timeout,
                          config=config, sink=files[i].write if files else None)
                parts.append(Part(r.status, {}, r.bytes, r.sha256, r.ok))
            return ParallelResult("sequential", all(p.complete for p in parts),
                                  round(time.monotonic() - t0, 4), parts, len(urls))
        lip = local_ip or local_address_for(host)
        tr = open_transport(transport, lip)
        try:
            split = PipelineSplitter([f.write for f in files])
            peer = (host, port) if transport == "udp" else None
            ch = ClientHost(tr, aton(host), port, peer, config)
            t0 = time.monotonic()
            try:
                conn = ch.open(build_request(host, [p for _, _, p in where], bits), split,
                               lanes=lanes_for(len(urls), bits))
                ch.run_until(lambda: conn.finished is not None, timeout)
                secs = time.monotonic() - t0
                ch.close(conn)
            finally:
                ch.shutdown()
        finally:
            tr.close()
        ok = conn.engine.done and len(split.parts) == len(urls) and all(
            p.complete for p in split.parts)
        return ParallelResult("parallel", ok, round(secs, 4), split.parts, 1)
    finally:
        for f in files:
            f.close()


__all__ = ["MARK", "fetch_parallel", "ParallelResult", "ParallelRoute", "Part", "PipelineSplitter",
           "build_request", "check_layout", "lanes_for", "split_requests"]
