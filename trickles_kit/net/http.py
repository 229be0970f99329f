"""HTTP/1.1 body framing on the client side: `Transfer-Encoding: chunked` (the /dyn route).

It lives in net/ because the fetch client decodes it, and net/ must not import apps/; the
server side (`apps/dynamic.py`) re-exports it next to the encoder.
"""

from __future__ import annotations

from collections.abc import Callable


class Dechunker:
    """Incremental `Transfer-Encoding: chunked` decoder feeding `sink` the body bytes."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self._buf = bytearray()
        self._left = 0  # body bytes still due in the current chunk
        self._crlf = False  # a chunk's trailing CRLF is due
        self.done = False

    def __call__(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while buf and not self.done:
            if self._left:
                n = min(self._left, len(buf))
                self.sink(bytes(buf[:n]))
                del buf[:n]
                self._left -= n
                if not self._left:
                    self._crlf = True
                continue
            if self._crlf:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("chunked body: a chunk does not end with CRLF")
                del buf[:2]
                self._crlf = False
                continue
            nl = buf.find(b"\r\n")
            if nl < 0:
                if len(buf) > 1024:
                    raise ValueError("chunked body: chunk-size line too long")
                return
            try:
                size = int(bytes(buf[:nl]).split(b";")[0], 16)
            except ValueError:
                raise ValueError("chunked body: bad chunk-size line") from None
            del buf[: nl + 2]
            if size == 0:
                self.done = True  # trailers (none here) and the final CRLF follow
            else:
                self._left = size
