"""HTTP/1.1 framing: the web app's status lines, error bodies, sealed response descriptor and
query parsing; the clients' response-head parser and chunked-body decoder.

One module so that the routes (apps/dynamic.py, apps/parallel.py) and the server (apps/web.py)
share it without importing each other: web.py imports the routes, the routes import this.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

KIND_STATIC, KIND_GEN, KIND_MARK, KIND_ERROR = 1, 2, 3, 4
MAX_STREAM = 0xFFFFFFFF  # FINHINT and DATA byte numbers are u32: the stream ends at most here
ERROR_TYPE = "text/plain; charset=utf-8"

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    500: "Internal Server Error",
}
# kind u8 | status u16 | header_len u16 | body_len u32 | param 8s | ctype_len u8 | ctype | path
_DESC = struct.Struct("!BHHI8sB")


# ---------------------------------------------------------------------- pure functions
def http_header(status: int, content_type: str, body_len: int) -> bytes:
    """The status line and headers (ending with the empty line) of a response."""
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Length: {body_len}",
        f"Content-Type: {content_type}",
        "Connection: close",
        "X-Trickles: stateless",
    ]
    if status == 405:
        lines.append("Allow: GET")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def error_body(status: int) -> bytes:
    return f"{status} {REASONS[status]}\n".encode("ascii")


# ---------------------------------------------------------------------- descriptor
@dataclass(frozen=True, slots=True)
class Descriptor:
    """Everything that determines a response stream; `header` is rendered from the rest."""

    kind: int
    status: int
    body_len: int
    param: bytes  # 8 bytes: the seed (gen), the mark's 8 bytes (mark), zeros otherwise
    ctype: str
    path: str  # relative to the root, no leading "/" (static and mark)
    header: bytes

    @property
    def size(self) -> int:
        return len(self.header) + self.body_len

    def pack(self) -> bytes:
        ct, path = self.ctype.encode("ascii"), self.path.encode("utf-8")
        return _DESC.pack(self.kind, self.status, len(self.header), self.body_len, self.param,
                          len(ct)) + ct + path

    @classmethod
    def make(cls, kind: int, status: int, body_len: int, ctype: str, param: bytes = bytes(8),
             path: str = "") -> Descriptor:
        if len(param) != 8:
            raise ValueError("the descriptor parameter is 8 bytes")
        return cls(kind, status, body_len, param, ctype, path,
                   http_header(status, ctype, body_len))

    @classmethod
    def error(cls, status: int) -> Descriptor:
        return cls.make(KIND_ERROR, status, len(error_body(status)), ERROR_TYPE)

    @classmethod
    def unpack(cls, plain: bytes) -> Descriptor | None:
        """The descriptor in `plain`, or None when it is not one this server could have made."""
        if len(plain) < _DESC.size:
            return None
        kind, status, hlen, blen, param, clen = _DESC.unpack_from(plain)
        if status not in REASONS or len(plain) < _DESC.size + clen:
            return None
        try:
            ctype = plain[_DESC.size : _DESC.size + clen].decode("ascii")
            path = plain[_DESC.size + clen :].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not ctype.isprintable():
            return None
        if kind == KIND_ERROR:
            if blen != len(error_body(status)) or path:
                return None
        elif kind in (KIND_STATIC, KIND_MARK):
            if status != 200 or not path:
                return None
        elif kind != KIND_GEN or status != 200 or path:
            return None
        d = cls.make(kind, status, blen, ctype, param, path)
        if len(d.header) != hlen or d.size > MAX_STREAM:
            return None  # rendered by another version of this code: refuse, never guess
        return d


def parse_query(query: str) -> dict[str, str] | None:
    """Query parameters, each at most once; None when malformed or repeated."""
    try:
        pairs = parse_qs(query, keep_blank_values=True, errors="strict", max_num_fields=16)
    except (ValueError, UnicodeDecodeError):
        return None
    if any(len(v) != 1 for v in pairs.values()):
        return None
    return {k: v[0] for k, v in pairs.items()}


# ---------------------------------------------------------------------- response heads
MAX_HEAD = 65536  # a longer response head is refused, not buffered without end


class HeadTooLong(ValueError):
    """No end of the response head within the limit (a ValueError, like a bad status line)."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response head: what every client here (fetch, the pipelined splitter, the TCP
    baselines, the labs) needs before the body."""

    status: int
    headers: dict[str, str]  # names lower-cased, values stripped; a repeated name: the last
    size: int  # bytes of the head, status line to the empty line included

    @property
    def content_length(self) -> int | None:
        """The body's length from Content-Length, None when absent or not a number."""
        v = self.headers.get("content-length", "")
        return int(v) if v.isdigit() else None

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding", "").lower() == "chunked"


def parse_response_head(buf: bytes | bytearray, start: int = 0,
                        limit: int = MAX_HEAD) -> ResponseHead | None:
    """The response head at `buf[start:]`, or None while its empty line has not arrived.

    Raises ValueError when the head is longer than `limit` bytes or its status line has no
    numeric status (``HTTP/1.1 200 OK``)."""
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buf) - start > limit:
            raise HeadTooLong(f"response header longer than {limit // 1024} KiB")
        return None
    lines = bytes(buf[start:end]).decode("iso-8859-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise ValueError(f"not an HTTP response: {lines[0]!r}") from None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return ResponseHead(status, headers, end + 4 - start)


# ---------------------------------------------------------------------- chunked bodies
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
