"""wire's named layouts and its flat decoder agree with the codec (the decoder's fast path reads
them, so a field changed in wire/ reaches the capture decoder with no second edit)."""

from __future__ import annotations

from codec_strategies import chunks as codec_chunks
from codec_strategies import u32
from hypothesis import given, settings
from hypothesis import strategies as st

from trickles_kit.wire.continuation import FULL1, FULL2, STATE_OFFSET, Continuation
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.flat import flat_request, flat_response
from trickles_kit.wire.messages import (
    REQ_FIN,
    REQ_NORMAL,
    REQ_SLOWSTART,
    REQ_SYN,
    REQUEST_HEAD,
    REQUEST_STATE_AT,
    RESPONSE_FULL,
    RESPONSE_MINIMAL,
    RESPONSE_STATE_AT,
    DataChunk,
    FinHint,
    Request,
    Response,
    SackBlock,
    decode_chunks,
    encode_chunks,
    scan_chunks,
)
from trickles_kit.wire.segment import IPV4_TCP_HEAD, TCP_HEAD, encode_segment


def cont(ctype: int = FULL1, state: int = 1) -> Continuation:
    return Continuation(ctype, 7, 1, 2, 3, 4, 5, 6, state, 8, 9, 10, 11, 12, 0x1122334455667788,
                        13, bytes(range(16)))


def test_layouts_are_the_codecs():
    c = cont()
    req = Request(REQ_NORMAL, c, [SackBlock(1, 2, 3)], b"u", [(5, 9)], b"app").encode()
    assert REQUEST_HEAD.unpack_from(req)[1:18] == tuple(
        getattr(c, f) for f in Continuation.__slots__)
    assert req[REQUEST_STATE_AT] == c.state
    resp = Response(9, 2, 1, c, b"uc", [DataChunk(100, b"xy")]).encode()
    assert RESPONSE_FULL.unpack_from(resp)[:4] == (9, 2, 1, 2)
    assert resp[RESPONSE_STATE_AT] == c.state == c.encode()[STATE_OFFSET]
    small = Response(0, 1, 0, Continuation(0, 7, 1, 2, 3, 4)).encode()
    assert RESPONSE_MINIMAL.unpack_from(small)[4:] == (0, 7, 1, 2, 3, 4)


def test_tcp_layouts_read_the_encoder():
    seg = encode_segment(b"\1\2\3\4", b"\5\6\7\10", 1000, 2000, 5, 6, 0x18, b"p", 77, 9)
    assert TCP_HEAD.unpack_from(seg) == (1000, 2000, 5, 6, 0x70, 0x18, 9, 253, 6, 0x544B, 77)
    ip = bytes((0x45, 0, 0, 20 + len(seg), 0, 0, 0, 0, 64, 253, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8))
    f = IPV4_TCP_HEAD.unpack_from(ip + seg)
    assert f[:3] == (20 + len(seg), 0, 253) and f[3] == 0x0102030405060708
    assert f[4:] == TCP_HEAD.unpack_from(seg)


@settings(max_examples=150, deadline=None)
@given(rtype=st.sampled_from((REQ_NORMAL, REQ_SLOWSTART, REQ_FIN)),
       ctype=st.sampled_from((FULL1, FULL2)),
       sacks=st.lists(st.tuples(u32, u32, u32), max_size=5),
       ranges=st.lists(st.tuples(u32, st.integers(0, 1 << 20)), max_size=4),
       ucont=st.binary(max_size=10), app=st.binary(max_size=10))
def test_flat_request_matches_decode_request(rtype, ctype, sacks, ranges, ucont, app):
    rs = [(s, s + n) for s, n in ranges if s + n <= 1 << 32]
    data = Request(rtype, cont(ctype), [SackBlock(*b) for b in sacks], ucont, rs, app).encode()
    f = flat_request(data, 0, len(data))
    assert f is not None
    assert f[0] == rtype and f[1:18] == REQUEST_HEAD.unpack_from(data)[1:18]
    assert f[18] == len(sacks) and f[19] == tuple(v for b in sacks for v in b)
    assert f[20:22] == (len(ucont), len(rs))
    assert f[22] == tuple(v for r in rs for v in r)
    assert data[f[23]:] == app


def test_flat_request_leaves_other_shapes_to_the_codec():
    syn = Request(REQ_SYN).encode()
    assert flat_request(syn, 0, len(syn)) is None
    data = Request(REQ_NORMAL, cont()).encode()
    assert flat_request(data, 0, len(data) - 1) is None  # truncated: the codec says why
    bad = bytearray(data)
    bad[REQUEST_STATE_AT] = 3
    assert flat_request(bytes(bad), 0, len(bad)) is None


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(codec_chunks(max_data=20), max_size=4))
def test_flat_response_matches_decode_chunks(chunks):
    data = Response(5, 1, 0, cont(), b"", chunks).encode()
    f = flat_response(data, 0, len(data))
    assert f is not None and f[:21] == RESPONSE_FULL.unpack_from(data)
    got = decode_chunks(data, 83)
    datas = [c for c in got if isinstance(c, DataChunk)]
    hints = [c.byte_num for c in got if isinstance(c, FinHint)]
    assert f[21:] == (datas[0].byte_num if datas else None, sum(len(c.data) for c in datas),
                      any(c.fin for c in datas), hints[-1] if hints else None, None)


@given(st.binary(max_size=30))
def test_scan_chunks_reports_the_codecs_reason(raw):
    body = encode_chunks([DataChunk(1, b"ab")]) + raw
    try:
        decode_chunks(body)
        reason = None
    except DecodeError as ex:
        reason = ex.reason
    assert scan_chunks(body, 0, len(body))[4] == reason


@settings(max_examples=100, deadline=None)
@given(rtype=st.sampled_from((REQ_NORMAL, REQ_SLOWSTART, REQ_FIN)),
       sacks=st.lists(st.tuples(u32, u32, u32), max_size=3),
       ranges=st.lists(st.tuples(st.integers(0, 1 << 31), st.integers(0, 1 << 20)), max_size=3),
       app=st.binary(max_size=10))
def test_parse_request_row_by_flat_equals_the_codec_row(rtype, sacks, ranges, app):
    from trickles_kit.capture.parse import request_row, row_from_request
    from trickles_kit.wire.messages import decode_request

    rs = [(s, s + n) for s, n in ranges]
    data = Request(rtype, cont(), [SackBlock(*b) for b in sacks], b"uc", rs, app).encode()
    head = (0, 1.0, "", "10.0.0.1", "10.0.0.2", 1000, 2000, "ip253", 100, 1, 2, 0x18, 0, 0)
    fast = request_row(head, data, 0, len(data), None, b"\n\0\0\1", b"\n\0\0\2", None)
    slow = row_from_request(head, decode_request(data), None, b"\n\0\0\1", b"\n\0\0\2", None)
    assert fast.as_dict() == slow.as_dict()


@settings(max_examples=100, deadline=None)
@given(ucont=st.binary(max_size=8), chunks=st.lists(codec_chunks(max_data=20), max_size=3))
def test_parse_response_row_by_flat_equals_the_codec_row(ucont, chunks):
    from trickles_kit.capture.parse import response_row, row_from_response
    from trickles_kit.wire.messages import decode_response

    data = Response(5, 1, 0, cont(), ucont, chunks).encode()
    head = (0, 1.0, "", "10.0.0.2", "10.0.0.1", 2000, 1000, "ip253", 100, 1, 2, 0x18, 0, 0)
    a, b = b"\n\0\0\1", b"\n\0\0\2"
    fast = response_row(head, data, 0, len(data), None, b, a, None)
    slow = row_from_response(head, decode_response(data), data, 0, None, b, a, None)
    assert fast.as_dict() == slow.as_dict()


def test_response_row_with_a_cut_user_continuation_keeps_the_continuation():
    from trickles_kit.capture.parse import response_row

    data = Response(5, 1, 0, cont(), b"0123456789").encode()[:-4]
    head = (0, 1.0, "", "10.0.0.2", "10.0.0.1", 2000, 1000, "ip253", 100, 1, 2, 0x18, 0, 0)
    row = response_row(head, data, 0, len(data), None, b"\n\0\0\2", b"\n\0\0\1", None)
    assert row.error == "decode.truncated" and row.cont_seq == 7 and row.ucont_len == 10
