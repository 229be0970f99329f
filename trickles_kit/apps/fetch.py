"""Fetch a URL from a Trickles web server: the engine of `trickles fetch`.

URLs are `http://HOST:PORT/PATH` (or `trickles://...`). The response stream is a whole HTTP/1.1
response; the body goes to a file or a buffer, and the result reports what the protocol did.
An application over the transport (net/), so it lives in apps/.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable

from trickles_kit.apps.http import Dechunker, parse_response_head
from trickles_kit.core.client import ClientConfig
from trickles_kit.core.transfer_report import TransferReport, goodput_bps
from trickles_kit.net.endpoint import local_address_for, open_transport, parse_url
from trickles_kit.net.ip import PROTO_TRICKLES, aton
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.net.runner import ClientHost, EventWriter


class HttpBody:
    """Splits a response stream into status, headers and body; the body goes to `sink`."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._head = bytearray()
        self.sink = sink
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body_bytes = 0
        self.stream_pos = 0  # response stream bytes seen so far
        self.sha = hashlib.sha256()
        self.in_body = False
        self.dechunker = None
        # told the stream's length (header + Content-Length) as soon as the header is in:
        # `fetch` passes it to the engine, which then never asks for bytes past the end
        self.on_length: Callable[[int], None] | None = None

    def __call__(self, data: bytes) -> None:
        self.stream_pos += len(data)
        if not self.in_body:
            self._head += data
            head = parse_response_head(self._head)
            if head is None:
                return
            data = bytes(self._head[head.size :])
            head_len = self.stream_pos - len(self._head) + head.size
            self._head.clear()
            self.in_body = True
            self.status, self.headers = head.status, head.headers
            length = head.content_length
            if head.chunked:
                self.dechunker = Dechunker(self._body)
            elif self.on_length is not None and length is not None:
                self.on_length(head_len + length)
        if data:
            if self.dechunker is not None:
                self.dechunker(data)
            else:
                self._body(data)

    def _body(self, data: bytes) -> None:
        if data:
            self.body_bytes += len(data)
            self.sha.update(data)
            self.sink(data)


FetchResult = TransferReport  # the older name of what fetch returns


class _Progress:
    def __init__(self, conn, enabled: bool) -> None:
        self.conn = conn
        self.enabled = enabled
        self.t0 = time.monotonic()

    def __call__(self) -> None:
        if not self.enabled:
            return
        eng = self.conn.engine
        got = eng.bytes_received
        total = eng.total
        rate = got / max(time.monotonic() - self.t0, 1e-6) / 1e6
        if total:
            pct = 100.0 * got / total
            bar = "#" * int(pct / 4)
            line = (f"\r[{bar:<25}] {got / 1e6:8.2f} / {total / 1e6:.2f} MB {pct:5.1f}%"
                    f" {rate:6.1f} MB/s")
        else:
            line = f"\r{got / 1e6:8.2f} MB {rate:6.1f} MB/s"
        sys.stderr.write(line)
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self()
            sys.stderr.write("\n")


def fetch(url: str, out: str | None = None, transport: str = "udp",
          ip_proto: int = PROTO_TRICKLES, local_ip: str | None = None,
          pcap: str | None = None, events: str | None = None, progress: bool = False,
          timeout: float = 600.0, config: ClientConfig | None = None,
          sink: Callable[[bytes], None] | None = None,
          udp_offload: bool | None = None) -> TransferReport:
    """Fetch `url` over Trickles and write the body to `out` (or `sink`). `udp_offload`:
    None ("auto") reads the server's runs at once and sends runs segmented while no capture
    runs on this host (net/udp.py)."""
    host, port, path = parse_url(url)
    lip = local_ip or local_address_for(host)
    tr = open_transport(transport, lip, ip_proto, udp_offload)
    pw = PcapWriter(pcap) if pcap else None
    ew = EventWriter(events) if events else None
    f = open(out, "wb") if out else None  # noqa: SIM115 - closed below
    try:
        body = HttpBody(sink or (f.write if f else (lambda _b: None)))
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        peer = (host, port) if transport == "udp" else None
        ch = ClientHost(tr, aton(host), port, peer, config, pw, ew)
        t0 = time.monotonic()
        try:
            conn = ch.open(request, body)
            eng = conn.engine
            body.on_length = lambda n: eng.set_total(n, ch.clock())
            prog = _Progress(conn, progress)
            finished = ch.run_until(lambda: conn.finished is not None, timeout, prog)
            prog.finish()
            secs = time.monotonic() - t0
            eng = conn.engine
            ch.close(conn)  # a FIN even after a timeout: the server may tell its handler
        finally:
            ch.shutdown()
        phase = eng.phase if finished else "timed out"
        ok = eng.done and body.in_body and (body.dechunker is None or body.dechunker.done) and (
            "content-length" not in body.headers
            or body.headers["content-length"] == str(body.body_bytes))
        return TransferReport.from_client(
            eng, ok=ok, bytes=body.body_bytes, sha256_received=body.sha.hexdigest(),
            seconds=round(secs, 4), goodput_bps=goodput_bps(body.body_bytes, secs), phase=phase,
            url=url, status=body.status, transport=transport)
    finally:
        tr.close()
        if f:
            f.close()
        if pw:
            pw.close()
        if ew:
            ew.close()
