"""The codec (PROTOCOL §2, §3): golden bytes, round trips, hostile input and misuse.

The golden vectors below were derived by hand from the layouts documented in the module
docstrings of `trickles_kit.wire` (a one-off `struct` script, never the code under test) and are
pasted here as literals, so a change to the wire format shows up as a failing test.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct

import pytest
from codec_strategies import U32, continuations, requests, responses, u8, u16, u32
from hypothesis import given, settings
from hypothesis import strategies as st

from trickles_kit.wire import messages as wm
from trickles_kit.wire.continuation import (
    FULL1,
    FULL2,
    FULL_LEN,
    MINIMAL,
    MINIMAL_LEN,
    RECOVERY,
    Continuation,
    decode_continuation,
)
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.segment import (
    ACK,
    FIN,
    HEADER_LEN,
    SYN,
    Segment,
    checksum,
    decode_segment,
    encode_segment,
)

SRC = socket.inet_aton("10.0.0.1")
DST = socket.inet_aton("10.1.0.2")

# ---------------------------------------------------------------------------------------------
# Independent reference: RFC 1071, the straightforward 16-bit word loop with end-around carry.


def rfc1071(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + bytes((0, 6)) + length.to_bytes(2, "big")


def zero_csum(seg: bytes) -> bytes:
    return seg[:16] + b"\0\0" + seg[18:]


# ---------------------------------------------------------------------------------------------
# Golden vectors

GOLD_SEG = bytes.fromhex(
    "00509c40010203040a0b0c0d701112346d890000fd06544b0053010168656c6c6f20747269636b6c6573"
)
GOLD_SEG_ODD = bytes.fromhex("9c410050ffffffff000000007002ffffb98a0000fd06544b000001016f6464")

GOLD_FULL1 = bytes.fromhex(
    "0111223344010000000200000003deadbeef01020304000003200100000064000000c80000000500"
    "00000a000000c90123456789abcdef00000007000102030405060708090a0b0c0d0e0f"
)
GOLD_MIN = bytes.fromhex("000000002a000000000901020304a0b0c0d0")
GOLD_REQ = bytes.fromhex(
    "00"
    "0211223344010000000200000003deadbeef01020304000003200100000064000000c80000000500"
    "00000a000000c90123456789abcdef00000007000102030405060708090a0b0c0d0e0f"
    "02" "0000000100000005aabbccdd" "000000080000000911223344"
    "0002" "5543"
    "02" "00000000000005a8" "00000b50000005a8"
    "474554202f"
)
GOLD_SYN = bytes.fromhex("02" "00" "0000" "01" "00000000000005a8" "47454e203130302031")
GOLD_DATA_FIN = bytes.fromhex("21000a000003e8616263")
GOLD_SKIP = bytes.fromhex("30000b000003eb000001f4")
GOLD_FINHINT = bytes.fromhex("400007000005df")
GOLD_RESP = bytes.fromhex(
    "cafebabe" "02" "01" "0002"
    "0111223344010000000200000003deadbeef01020304000003200100000064000000c80000000500"
    "00000a000000c90123456789abcdef00000007000102030405060708090a0b0c0d0e0f"
    "7879"
    "21000a000003e8616263" "30000b000003eb000001f4" "400007000005df"
)
GOLD_RESP_MIN = bytes.fromhex(
    "01020304" "01" "00" "0000" "000000002a000000000901020304a0b0c0d0" "20000700000000"
)


def gold_full(ctype: int = FULL1) -> Continuation:
    return Continuation(
        type=ctype, seq=0x11223344, first_child=1, client_state=2, parent=3,
        client_timestamp=0xDEADBEEF, timestamp=0x01020304, mrtt=800, state=RECOVERY,
        first_loss=100, first_bootstrap_seq=200, start_cwnd=5, ssthresh=10, tcp_base=201,
        conn_id=0x0123456789ABCDEF, key_epoch=7, mac=bytes(range(16)),
    )


def gold_min() -> Continuation:
    return Continuation(MINIMAL, 42, 0, 9, 0x01020304, 0xA0B0C0D0)


def gold_request() -> wm.Request:
    return wm.Request(
        wm.REQ_NORMAL, gold_full(FULL2),
        [wm.SackBlock(1, 5, 0xAABBCCDD), wm.SackBlock(8, 9, 0x11223344)], b"UC",
        [(0, 1448), (2896, 4344)], b"GET /",
    )


def gold_syn() -> wm.Request:
    return wm.Request(wm.REQ_SYN, None, [], b"", [(0, 1448)], b"GEN 100 1")


def gold_response() -> wm.Response:
    return wm.Response(
        0xCAFEBABE, 2, 1, gold_full(), b"xy",
        [wm.DataChunk(1000, b"abc", True), wm.SkipChunk(1003, 500), wm.FinHint(1503)],
    )


def test_golden_segment():
    seg = encode_segment(SRC, DST, 80, 40000, 0x01020304, 0x0A0B0C0D, ACK | FIN,
                         b"hello trickles", trickles_len=0x53, window=0x1234)
    assert seg.hex() == GOLD_SEG.hex()
    assert len(seg) == HEADER_LEN + 14
    assert decode_segment(GOLD_SEG, SRC, DST) == Segment(
        80, 40000, 0x01020304, 0x0A0B0C0D, ACK | FIN, 0x1234, 0x53, b"hello trickles")


def test_golden_segment_odd_length():
    seg = encode_segment(DST, SRC, 40001, 80, 0xFFFFFFFF, 0, SYN, b"odd", window=0xFFFF)
    assert seg.hex() == GOLD_SEG_ODD.hex()
    assert decode_segment(GOLD_SEG_ODD, DST, SRC) == Segment(
        40001, 80, 0xFFFFFFFF, 0, SYN, 0xFFFF, 0, b"odd")


@pytest.mark.parametrize(
    "seg,src,dst", [(GOLD_SEG, SRC, DST), (GOLD_SEG_ODD, DST, SRC)], ids=["even", "odd"]
)
def test_golden_checksum_against_rfc1071(seg, src, dst):
    expected = rfc1071(pseudo(src, dst, len(seg)) + zero_csum(seg))
    assert int.from_bytes(seg[16:18], "big") == expected
    assert checksum(src, dst, zero_csum(seg)) == expected
    # verifying: the sum over everything, checksum included, is 0xFFFF (so its complement is 0)
    assert rfc1071(pseudo(src, dst, len(seg)) + seg) == 0


def test_golden_full_continuation():
    assert gold_full().encode().hex() == GOLD_FULL1.hex()
    assert len(GOLD_FULL1) == FULL_LEN
    assert gold_full().body() == GOLD_FULL1[:-16]
    assert decode_continuation(GOLD_FULL1) == (gold_full(), FULL_LEN)


def test_golden_minimal_continuation():
    assert gold_min().encode().hex() == GOLD_MIN.hex()
    assert len(GOLD_MIN) == MINIMAL_LEN
    assert decode_continuation(GOLD_MIN) == (gold_min(), MINIMAL_LEN)
    # MINIMAL is a prefix of FULL: the client-owned fields sit at the same offsets
    assert GOLD_FULL1[6:18] == gold_full().encode()[6:18]


def test_golden_request():
    assert gold_request().encode().hex() == GOLD_REQ.hex()
    dec = wm.decode_request(GOLD_REQ)
    assert dec.cont_raw == GOLD_REQ[1 : 1 + FULL_LEN]
    dec.cont_raw = b""
    assert dec == gold_request()


def test_golden_syn_request():
    assert gold_syn().encode().hex() == GOLD_SYN.hex()
    assert wm.decode_request(GOLD_SYN) == gold_syn()


def test_golden_chunks():
    assert wm.encode_data_chunk(1000, b"abc", True).hex() == GOLD_DATA_FIN.hex()
    assert wm.encode_chunks([wm.DataChunk(1000, b"abc", True)]).hex() == GOLD_DATA_FIN.hex()
    assert wm.encode_chunks([wm.SkipChunk(1003, 500)]).hex() == GOLD_SKIP.hex()
    assert wm.encode_chunks([wm.FinHint(1503)]).hex() == GOLD_FINHINT.hex()
    assert wm.decode_chunks(GOLD_DATA_FIN + GOLD_SKIP + GOLD_FINHINT) == gold_response().chunks


def test_golden_response():
    resp = gold_response()
    assert resp.encode().hex() == GOLD_RESP.hex()
    assert wm.decode_response(GOLD_RESP) == resp
    assert resp.header_len() == 8 + FULL_LEN + 2


def test_golden_response_minimal_empty_data():
    resp = wm.Response(0x01020304, 1, 0, gold_min(), b"", [wm.DataChunk(0, b"")])
    assert resp.encode().hex() == GOLD_RESP_MIN.hex()
    assert wm.decode_response(GOLD_RESP_MIN) == resp
    assert resp.header_len() == 8 + MINIMAL_LEN


def test_chunk_padding_bytes_are_skipped():
    assert wm.decode_chunks(b"\0" + GOLD_SKIP + b"\0\0" + GOLD_FINHINT + b"\0") == [
        wm.SkipChunk(1003, 500), wm.FinHint(1503)]


# ---------------------------------------------------------------------------------------------
# Checksum against the reference on random input (odd and even lengths)

ip4 = st.binary(min_size=4, max_size=4)


@settings(max_examples=300, deadline=None)
@given(src=ip4, dst=ip4, data=st.binary(min_size=0, max_size=300))
def test_checksum_matches_rfc1071(src, dst, data):
    assert checksum(src, dst, data) == rfc1071(pseudo(src, dst, len(data)) + data)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 1448, 1449])
def test_checksum_zero_and_ff_payloads(n):
    for fill in (0x00, 0xFF):
        data = bytes([fill]) * n
        assert checksum(SRC, DST, data) == rfc1071(pseudo(SRC, DST, n) + data)


def test_checksum_when_sum_is_all_ones():
    """A segment whose ones'-complement sum is 0xFFFF has checksum 0x0000 (RFC 1071)."""
    base = encode_segment(SRC, DST, 1, 2, 3, 4, ACK, b"\0\0")
    body = zero_csum(base)[:-2]
    # choose the last word w so that sum(pseudo + body) + w == 0xFFFF in ones' complement
    partial = ~rfc1071(pseudo(SRC, DST, len(base)) + body) & 0xFFFF
    w = 0xFFFF - partial
    seg = encode_segment(SRC, DST, 1, 2, 3, 4, ACK, w.to_bytes(2, "big"))
    expected = rfc1071(pseudo(SRC, DST, len(seg)) + zero_csum(seg))
    assert expected == 0
    assert int.from_bytes(seg[16:18], "big") == expected
    assert decode_segment(seg, SRC, DST).payload == w.to_bytes(2, "big")


# ---------------------------------------------------------------------------------------------
# Round trips (the values: tests/codec_strategies.py)


@settings(max_examples=400, deadline=None)
@given(c=continuations(), prefix=st.binary(max_size=5), suffix=st.binary(max_size=5))
def test_continuation_roundtrip(c, prefix, suffix):
    data = c.encode()
    assert len(data) == (MINIMAL_LEN if c.type == MINIMAL else FULL_LEN)
    assert decode_continuation(data) == (c, len(data))
    assert decode_continuation(prefix + data + suffix, len(prefix)) == (
        c, len(prefix) + len(data))


@settings(max_examples=400, deadline=None)
@given(req=requests())
def test_request_roundtrip(req):
    data = req.encode()
    dec = wm.decode_request(data)
    if req.type == wm.REQ_SYN:
        assert dec.cont_raw == b""
    else:
        assert dec.cont_raw == req.cont.encode()
    dec.cont_raw = b""
    assert dec == req


@settings(max_examples=400, deadline=None)
@given(resp=responses())
def test_response_roundtrip(resp):
    data = resp.encode()
    assert wm.decode_response(data) == resp
    assert len(data) == resp.header_len() + len(wm.encode_chunks(resp.chunks))


@settings(max_examples=400, deadline=None)
@given(src=ip4, dst=ip4, sport=u16, dport=u16, seq=u32, ack=u32, flags=u8, window=u16,
       tlen=u16, payload=st.binary(max_size=400))
def test_segment_roundtrip(src, dst, sport, dport, seq, ack, flags, window, tlen, payload):
    seg = encode_segment(src, dst, sport, dport, seq, ack, flags, payload, tlen, window)
    assert len(seg) == HEADER_LEN + len(payload)
    expected = Segment(sport, dport, seq, ack, flags, window, tlen, payload)
    assert decode_segment(seg, src, dst) == expected
    assert decode_segment(seg) == expected
    assert rfc1071(pseudo(src, dst, len(seg)) + seg) == 0


def test_option_found_by_scan_when_not_first():
    """A header whose Trickles option follows other options (NOP, MSS) is still parsed."""
    hdr = struct.pack("!HHIIBBHHH", 5, 6, 7, 8, (32 // 4) << 4, ACK, 9, 0, 0)
    opts = bytes((1, 1)) + bytes((2, 4, 5, 0xB4)) + bytes((253, 6, 0x54, 0x4B, 0x01, 0x02))
    seg = hdr + opts + b"xyz"
    csum = rfc1071(pseudo(SRC, DST, len(seg)) + seg)
    seg = seg[:16] + csum.to_bytes(2, "big") + seg[18:]
    assert decode_segment(seg, SRC, DST) == Segment(5, 6, 7, 8, ACK, 9, 0x0102, b"xyz")


# ---------------------------------------------------------------------------------------------
# Hostile input: decode or DecodeError, nothing else


def _seg_with(payload: bytes) -> bytes:
    return encode_segment(SRC, DST, 40000, 80, 1, 2, ACK, payload)


DECODERS = {
    "request": wm.decode_request,
    "response": wm.decode_response,
    "chunks": wm.decode_chunks,
    "continuation": decode_continuation,
    "continuation@3": lambda d: decode_continuation(d, 3),
    "segment": decode_segment,
    "segment+csum": lambda d: decode_segment(d, SRC, DST),
}

SAMPLES = {
    "request": [GOLD_REQ, GOLD_SYN, wm.Request(wm.REQ_FIN, gold_full(), [], b"", [], b"").encode(),
                wm.Request(wm.REQ_SLOWSTART, gold_full(), [wm.SackBlock(0, 0, 0)] * wm.MAX_SACKS,
                           b"u" * 40, [(1, 2)] * 3, b"").encode()],
    "response": [GOLD_RESP, GOLD_RESP_MIN],
    "chunks": [GOLD_DATA_FIN + GOLD_SKIP + GOLD_FINHINT, b"\0" + GOLD_FINHINT],
    "continuation": [GOLD_FULL1, GOLD_MIN],
    "continuation@3": [b"abc" + GOLD_FULL1, b"abc" + GOLD_MIN],
    "segment": [GOLD_SEG, GOLD_SEG_ODD, _seg_with(GOLD_REQ)],
    "segment+csum": [GOLD_SEG, _seg_with(GOLD_REQ), _seg_with(GOLD_RESP)],
}


def _decode_or_decode_error(decoder, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decoder(data)
    # anything else (IndexError, struct.error, ...) propagates and fails the test


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_every_truncation(name):
    decoder = DECODERS[name]
    for sample in SAMPLES[name]:
        decoder(sample)  # the full sample is valid
        for n in range(len(sample)):
            _decode_or_decode_error(decoder, sample[:n])


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_random_mutations(name):
    decoder = DECODERS[name]
    rng = random.Random(f"mutations-{name}")
    for sample in SAMPLES[name]:
        for _ in range(1500):
            data = bytearray(sample)
            for _ in range(rng.choice((1, 1, 2, 3, 8))):
                op = rng.random()
                pos = rng.randrange(len(data)) if data else 0
                if op < 0.6 and data:
                    data[pos] = rng.randrange(256)
                elif op < 0.7 and data:
                    data[pos] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, 0x02, 0x03, 0x40))
                elif op < 0.85:
                    data[pos:pos] = rng.randbytes(rng.randrange(1, 4))
                elif data:
                    del data[pos : pos + rng.randrange(1, 4)]
            _decode_or_decode_error(decoder, bytes(data))


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_random_garbage(name):
    decoder = DECODERS[name]
    rng = random.Random(f"garbage-{name}")
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(0, 120))
        if data and rng.random() < 0.5:  # steer past the first checks now and then
            data = bytes((rng.randrange(5),)) + data[1:]
        _decode_or_decode_error(decoder, data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_hypothesis_garbage(data):
    for decoder in DECODERS.values():
        _decode_or_decode_error(decoder, data)


def test_wrong_checksum_is_rejected():
    bad = bytearray(GOLD_SEG)
    bad[-1] ^= 0x01
    with pytest.raises(DecodeError) as ei:
        decode_segment(bytes(bad), SRC, DST)
    assert ei.value.reason == "checksum"
    decode_segment(bytes(bad))  # no addresses: no checksum check
    with pytest.raises(DecodeError) as ei:
        decode_segment(GOLD_SEG, SRC, socket.inet_aton("10.1.0.3"))  # wrong address
    assert ei.value.reason == "checksum"
    with pytest.raises(DecodeError) as ei:
        decode_segment(GOLD_SEG[:16] + b"\0\0" + GOLD_SEG[18:], SRC, DST)
    assert ei.value.reason == "checksum"


@pytest.mark.parametrize(
    "opts",
    [b"", bytes((1, 1, 1, 1)), bytes((2, 4, 5, 0xB4, 1, 1, 1, 0)),
     bytes((253, 6, 0x12, 0x34, 0, 0, 1, 1)), bytes((254, 6, 0x54, 0x4B, 0, 0, 1, 1))],
    ids=["no-options", "nops", "mss", "other-exid", "other-kind"],
)
def test_segment_without_trickles_option(opts):
    hdr = struct.pack("!HHIIBBHHH", 80, 40000, 1, 2, ((20 + len(opts)) // 4) << 4, ACK, 0, 0, 0)
    seg = hdr + opts + b"payload"
    csum = rfc1071(pseudo(SRC, DST, len(seg)) + seg)
    seg = seg[:16] + csum.to_bytes(2, "big") + seg[18:]
    for args in ((), (SRC, DST)):
        with pytest.raises(DecodeError) as ei:
            decode_segment(seg, *args)
        assert ei.value.reason == "option"


def test_decode_error_reasons():
    with pytest.raises(DecodeError) as ei:
        decode_segment(GOLD_SEG[:19])
    assert ei.value.reason == "short"
    with pytest.raises(DecodeError) as ei:
        wm.decode_request(bytes((9,)) + GOLD_REQ[1:])
    assert ei.value.reason == "req_type"
    with pytest.raises(DecodeError) as ei:
        wm.decode_request(bytes((wm.REQ_NORMAL,)) + GOLD_MIN + GOLD_REQ[1 + FULL_LEN :])
    assert ei.value.reason == "minimal_request"
    with pytest.raises(DecodeError) as ei:
        decode_continuation(bytes((7,)) + GOLD_FULL1[1:])
    assert ei.value.reason == "cont_type"
    bad_state = bytearray(GOLD_FULL1)
    bad_state[26] = 3
    with pytest.raises(DecodeError) as ei:
        decode_continuation(bytes(bad_state))
    assert ei.value.reason == "cont_state"
    with pytest.raises(DecodeError) as ei:
        too_many = wm.MAX_SACKS + 1
        wm.decode_request(GOLD_SYN[:1] + bytes((too_many,)) + bytes(12 * too_many))
    assert ei.value.reason == "sack_count"
    with pytest.raises(DecodeError) as ei:
        wm.decode_chunks(bytes((0x50, 0, 3)))
    assert ei.value.reason == "chunk_type"
    assert isinstance(ei.value, ValueError)


# ---------------------------------------------------------------------------------------------
# Encoding misuse


@pytest.mark.parametrize(
    "req",
    [
        wm.Request(wm.REQ_NORMAL, None),
        wm.Request(wm.REQ_SLOWSTART, None),
        wm.Request(wm.REQ_FIN, None),
        wm.Request(wm.REQ_NORMAL, gold_min()),
        wm.Request(9, gold_full()),
        wm.Request(wm.REQ_NORMAL, gold_full(), [wm.SackBlock(0, 0, 0)] * (wm.MAX_SACKS + 1)),
        wm.Request(wm.REQ_NORMAL, gold_full(), ranges=[(0, 1)] * (wm.MAX_RANGES + 1)),
        wm.Request(wm.REQ_NORMAL, gold_full(), ranges=[(5, 4)]),
        wm.Request(wm.REQ_NORMAL, gold_full(), ranges=[(-1, 4)]),
        wm.Request(wm.REQ_NORMAL, gold_full(), ranges=[(0, (1 << 32) + 1)]),
        wm.Request(wm.REQ_NORMAL, gold_full(), ranges=[(1 << 32, 1 << 32)]),
        wm.Request(wm.REQ_NORMAL, gold_full(), ucont=bytes(0x10000)),
        wm.Request(wm.REQ_SYN, None, ucont=bytes(0x10000)),
    ],
    ids=["normal-no-cont", "slowstart-no-cont", "fin-no-cont", "minimal-cont", "bad-type",
         "65-sacks", "65-ranges", "reversed-range", "negative-range", "range-past-2^32",
         "empty-range-at-2^32", "ucont-too-long", "syn-ucont-too-long"],
)
def test_request_misuse_raises_value_error(req):
    with pytest.raises(ValueError):
        req.encode()


def test_limits_are_inclusive():
    req = wm.Request(wm.REQ_NORMAL, gold_full(), [wm.SackBlock(1, 2, 3)] * wm.MAX_SACKS,
                     bytes(0xFFFF), [(0, U32), (1, 1 << 32)] + [(1, 1)] * (wm.MAX_RANGES - 2))
    dec = wm.decode_request(req.encode())
    dec.cont_raw = b""
    assert dec == req


def test_data_chunk_length_limit():
    data = bytes(range(256)) * 256
    ok = wm.encode_data_chunk(7, data[:65528])
    assert len(ok) == 65535
    assert wm.decode_chunks(ok) == [wm.DataChunk(7, data[:65528], False)]
    with pytest.raises(ValueError):
        wm.encode_data_chunk(7, data[:65529])
    with pytest.raises(ValueError):
        wm.encode_chunks([wm.DataChunk(7, data[:65529], True)])
    with pytest.raises(ValueError):
        wm.Response(1, 1, 0, gold_full(), b"", [wm.DataChunk(0, data[:65529])]).encode()


def test_not_a_chunk_raises_value_error():
    with pytest.raises(ValueError):
        wm.encode_chunks([("DATA", 0, b"x")])


def test_response_ucont_too_long_raises_value_error():
    with pytest.raises(ValueError):
        wm.Response(1, 1, 0, gold_full(), bytes(0x10000)).encode()
