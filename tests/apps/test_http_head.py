"""apps.http.parse_response_head: the one parser of a response head."""

from __future__ import annotations

import pytest

from trickles_kit.apps.http import HeadTooLong, http_header, parse_response_head

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Trickles:  stateless \r\n\r\n"


def test_status_headers_length_and_size() -> None:
    h = parse_response_head(HEAD + b"hello")
    assert h is not None
    assert h.status == 200 and h.size == len(HEAD)
    assert h.headers == {"content-length": "5", "x-trickles": "stateless"}
    assert h.content_length == 5 and not h.chunked


def test_incomplete_head_waits() -> None:
    assert parse_response_head(HEAD[:-1]) is None


def test_at_an_offset_in_a_pipelined_stream() -> None:
    stream = HEAD + b"hello" + http_header(404, "text/plain", 0)
    h = parse_response_head(stream, len(HEAD) + 5)
    assert h is not None and h.status == 404 and h.content_length == 0
    assert len(HEAD) + 5 + h.size == len(stream)


def test_chunked_and_no_usable_length() -> None:
    h = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n"
                            b"Content-Length: x\r\n\r\n")
    assert h is not None and h.chunked and h.content_length is None


def test_bad_status_line_and_endless_head_are_refused() -> None:
    with pytest.raises(ValueError, match="not an HTTP response"):
        parse_response_head(b"garbage\r\n\r\n")
    with pytest.raises(HeadTooLong):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + b"a" * 100, limit=64)
    assert parse_response_head(b"HTTP/1.1 200 OK\r\n" + b"a" * 40, limit=64) is None
