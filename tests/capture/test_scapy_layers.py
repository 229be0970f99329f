"""Scapy layers (`trickles_kit.capture.scapy_layers`) against the codec: the same bytes when
building, the same values when dissecting, readable show()/summary(), and pcaps read back."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("scapy")

from codec_strategies import requests, responses  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import rdpcap  # noqa: E402

# the element classes by module (sl.Continuation, sl.DataChunk...): the codec has classes of the
# same names (wc.Continuation, wm.DataChunk...)
from trickles_kit.capture import scapy_layers as sl  # noqa: E402
from trickles_kit.capture.scapy_layers import (  # noqa: E402
    TricklesRequest,
    TricklesResponse,
    TricklesTCP,
    bind_tcp_port,
    bind_udp_port,
    guess_payload_kind,
    is_trickles_segment,
    unbind_tcp_port,
    unbind_udp_port,
)
from trickles_kit.net.ip import PROTO_TCP, PROTO_TRICKLES, PROTO_UDP, build_ipv4, build_udp  # noqa: E402
from trickles_kit.net.pcap import PcapWriter  # noqa: E402
from trickles_kit.wire import continuation as wc  # noqa: E402
from trickles_kit.wire import messages as wm  # noqa: E402
from trickles_kit.wire import segment as ws  # noqa: E402

SRV, CLI = "10.0.0.1", "10.1.0.2"
SRV_B, CLI_B = socket.inet_aton(SRV), socket.inet_aton(CLI)
SPORT, CPORT, UDP_CPORT = 8080, 40000, 41234

# codec attribute -> scapy field, in wire order (the first six make a MINIMAL continuation)
CONT_FIELDS = [
    ("type", "type"), ("seq", "seq"), ("first_child", "firstChild"),
    ("client_state", "clientState"), ("parent", "parent"),
    ("client_timestamp", "clientTimestamp"), ("timestamp", "timestamp"), ("mrtt", "mrtt"),
    ("state", "state"), ("first_loss", "firstLoss"),
    ("first_bootstrap_seq", "firstBootstrapSeq"), ("start_cwnd", "startCwnd"),
    ("ssthresh", "ssthresh"), ("tcp_base", "TCPBase"), ("conn_id", "connId"),
    ("key_epoch", "keyEpoch"), ("mac", "mac"),
]


# ------------------------------------------------------------------ codec <-> layer helpers
def full_cont(**kw) -> wc.Continuation:
    values = dict(type=wc.FULL1, seq=42, first_child=1, client_state=3, parent=77,
                  client_timestamp=123456, timestamp=987654, mrtt=80, state=wc.NORMAL,
                  first_loss=5, first_bootstrap_seq=6, start_cwnd=4, ssthresh=16383,
                  tcp_base=1, conn_id=0x1122334455667788, key_epoch=29000000,
                  mac=bytes(range(16)))
    values.update(kw)
    return wc.Continuation(**values)


def minimal_cont(**kw) -> wc.Continuation:
    values = dict(type=wc.MINIMAL, seq=43, first_child=1, client_state=3, parent=77,
                  client_timestamp=123456)
    values.update(kw)
    return wc.Continuation(**values)


def layer_cont(c: wc.Continuation) -> sl.Continuation:
    n = len(CONT_FIELDS) if c.is_full else 6
    return sl.Continuation(**{name: getattr(c, attr) for attr, name in CONT_FIELDS[:n]})


def layer_chunk(c):
    if isinstance(c, wm.DataChunk):
        return sl.DataChunk(byteNum=c.byte_num, data=c.data, flags="FIN" if c.fin else 0)
    if isinstance(c, wm.SkipChunk):
        return sl.SkipChunk(byteNum=c.byte_num, len=c.length)
    return sl.FinHint(byteNum=c.byte_num)


def layer_response(r: wm.Response) -> TricklesResponse:
    return TricklesResponse(nonce=r.nonce, numSiblings=r.num_siblings, position=r.position,
                            continuation=layer_cont(r.cont), ucont=r.ucont,
                            chunks=[layer_chunk(c) for c in r.chunks])


def layer_request(q: wm.Request) -> TricklesRequest:
    kw = {}
    if q.type != wm.REQ_SYN:
        kw["continuation"] = layer_cont(q.cont)
    return TricklesRequest(
        type=q.type, sacks=[sl.SackBlock(left=a, right=b, nonceSummary=s) for a, b, s in q.sacks],
        ucont=q.ucont, ranges=[sl.ByteRange(start=a, length=b - a) for a, b in q.ranges],
        app=q.app, **kw)


def assert_cont(layer: sl.Continuation, c: wc.Continuation) -> None:
    assert isinstance(layer, sl.Continuation)
    n = len(CONT_FIELDS) if c.is_full else 6
    for attr, name in CONT_FIELDS[:n]:
        assert layer.getfieldval(name) == getattr(c, attr), name
    assert len(bytes(layer)) == (wc.FULL_LEN if c.is_full else wc.MINIMAL_LEN)


def assert_response(layer: TricklesResponse, r: wm.Response) -> None:
    assert isinstance(layer, TricklesResponse)
    assert (layer.nonce, layer.numSiblings, layer.position) == (
        r.nonce, r.num_siblings, r.position)
    assert layer.ucont_len == len(r.ucont) and layer.ucont == r.ucont
    assert_cont(layer.continuation, r.cont)
    chunks = [c for c in layer.chunks if not isinstance(c, sl.ChunkPad)]
    assert len(chunks) == len(r.chunks)
    for got, want in zip(chunks, r.chunks, strict=True):
        if isinstance(want, wm.DataChunk):
            assert isinstance(got, sl.DataChunk) and got.type == wm.CHUNK_DATA
            assert (got.byteNum, got.data, bool(got.flags & 1)) == want
            assert got.length == len(want.data) + 7
        elif isinstance(want, wm.SkipChunk):
            assert isinstance(got, sl.SkipChunk) and (got.byteNum, got.len) == want
            assert (got.type, got.length) == (wm.CHUNK_SKIP, 11)
        else:
            assert isinstance(got, sl.FinHint) and got.byteNum == want.byte_num
            assert (got.type, got.length) == (wm.CHUNK_FINHINT, 7)


def assert_request(layer: TricklesRequest, q: wm.Request) -> None:
    assert isinstance(layer, TricklesRequest)
    assert layer.type == q.type
    if q.type == wm.REQ_SYN:
        assert "continuation" not in layer.fields
    else:
        assert_cont(layer.continuation, q.cont)
    assert layer.numSacks == len(q.sacks)
    assert [(b.left, b.right, b.nonceSummary) for b in layer.sacks] == [tuple(b) for b in q.sacks]
    assert layer.ucont_len == len(q.ucont) and layer.ucont == q.ucont
    assert layer.nranges == len(q.ranges)
    assert [(r.start, r.start + r.length) for r in layer.ranges] == q.ranges
    assert layer.app == q.app


def assert_message(pkt, msg: wm.Response | wm.Request):
    """`pkt`'s Trickles payload shows `msg`; returns that layer."""
    if isinstance(msg, wm.Response):
        assert_response(pkt[TricklesResponse], msg)
        return pkt[TricklesResponse]
    assert_request(pkt[TricklesRequest], msg)
    return pkt[TricklesRequest]


def assert_segment(pkt, datagram: bytes) -> None:
    """The TricklesTCP layer shows the codec's header values and a valid checksum."""
    ip = IP(datagram)
    seg = ws.decode_segment(bytes(pkt[TricklesTCP]), socket.inet_aton(ip.src),
                            socket.inet_aton(ip.dst))
    t = pkt[TricklesTCP]
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window) == (
        seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window)
    assert (t.dataofs, t.optkind, t.optlen, t.exid, t.trickles_len) == (
        7, 253, 6, 0x544B, seg.trickles_len)
    assert t.options == [("NOP", None), ("NOP", None)]
    assert t.checksum_ok() is True


# ------------------------------------------------------------------ the sample messages
def resp_example() -> wm.Response:  # the one in the summary() brief
    return wm.Response(0xDEADBEEF, 2, 0, full_cont(), b"", [wm.DataChunk(60816, b"x" * 1448)])


RESPONSES = {
    "full1_data": resp_example(),
    "full2_recovery_skip": wm.Response(
        0x01020304, 3, 2, full_cont(type=wc.FULL2, state=wc.RECOVERY), b"user-cont",
        [wm.DataChunk(1000, b"odd"), wm.SkipChunk(1003, 500), wm.SkipChunk(2000, 7)]),
    "bootstrap_empty": wm.Response(7, 1, 0, full_cont(state=wc.BOOTSTRAP), b"", []),
    "minimal_fin": wm.Response(0, 1, 0, minimal_cont(), b"",
                               [wm.DataChunk(59368, b"y" * 632, True), wm.FinHint(60000)]),
}
RESP_FLAGS = {"minimal_fin": ws.FIN | ws.ACK}

REQUESTS = {
    "normal": wm.Request(wm.REQ_NORMAL, full_cont(seq=40), [wm.SackBlock(1, 40, 0xCAFEF00D)],
                         b"", [(57920, 59368)]),
    "slowstart": wm.Request(wm.REQ_SLOWSTART, full_cont(type=wc.FULL2, state=wc.RECOVERY),
                            [wm.SackBlock(1, 9, 1), wm.SackBlock(11, 20, 2),
                             wm.SackBlock(22, 40, 0xFFFFFFFF)],
                            b"\x01\x02\x03", [(0, 10), (4096, 8192)], b"app bytes"),
    "fin": wm.Request(wm.REQ_FIN, full_cont(seq=99), [], b"", []),
    "syn": wm.Request(wm.REQ_SYN, None, [], b"\0" * 500, [(0, 1448)], b"GET /x 1000"),
}
REQ_FLAGS = {"fin": ws.FIN | ws.ACK, "syn": ws.SYN}
# every sample message with the flags it travels with
SAMPLES = {**{f"response_{n}": (r, RESP_FLAGS.get(n, ws.ACK)) for n, r in RESPONSES.items()},
           **{f"request_{n}": (q, REQ_FLAGS.get(n, ws.ACK)) for n, q in REQUESTS.items()}}


def response_datagram(r: wm.Response, carrier: int = PROTO_TRICKLES, flags: int = ws.ACK,
                      pkt: int = 42, ack: int = 40) -> bytes:
    seg = ws.encode_segment(SRV_B, CLI_B, SPORT, CPORT, pkt, ack, flags, r.encode(), r.header_len())
    if carrier == PROTO_UDP:
        return build_ipv4(SRV_B, CLI_B, PROTO_UDP, build_udp(SPORT, UDP_CPORT, seg), 9)
    return build_ipv4(SRV_B, CLI_B, carrier, seg, 9)


def request_datagram(q: wm.Request, carrier: int = PROTO_TRICKLES, flags: int = ws.ACK,
                     seq: int = 17, ack: int = 40) -> bytes:
    seg = ws.encode_segment(CLI_B, SRV_B, CPORT, SPORT, seq, ack, flags, q.encode(), 0, 0xFFFF)
    if carrier == PROTO_UDP:
        return build_ipv4(CLI_B, SRV_B, PROTO_UDP, build_udp(UDP_CPORT, SPORT, seg), 9)
    return build_ipv4(CLI_B, SRV_B, carrier, seg, 9)


def codec_datagram(msg: wm.Response | wm.Request, carrier: int, flags: int) -> bytes:
    if isinstance(msg, wm.Response):
        return response_datagram(msg, carrier, flags)
    return request_datagram(msg, carrier, flags)


def scapy_ip(src: str, dst: str, carrier: int, sport: int, dport: int):
    ip = IP(src=src, dst=dst, id=9, flags="DF", proto=carrier)
    return ip / UDP(sport=sport, dport=dport, chksum=0) if carrier == PROTO_UDP else ip


def scapy_datagram(msg: wm.Response | wm.Request, carrier: int, flags: int = ws.ACK):
    """What `response_datagram`/`request_datagram` encode with the codec, built from the scapy
    layers (window, trickles_len, dataofs and checksum left to them)."""
    if isinstance(msg, wm.Response):
        ip = scapy_ip(SRV, CLI, carrier, SPORT, UDP_CPORT)
        tcp = TricklesTCP(sport=SPORT, dport=CPORT, seq=42, ack=40, flags=flags)
        return ip / tcp / layer_response(msg)
    ip = scapy_ip(CLI, SRV, carrier, UDP_CPORT, SPORT)
    tcp = TricklesTCP(sport=CPORT, dport=SPORT, seq=17, ack=40, flags=flags)
    return ip / tcp / layer_request(msg)


CARRIERS = [PROTO_TRICKLES, PROTO_TCP, PROTO_UDP]


# ------------------------------------------------------------------ building
@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("name", SAMPLES)
def test_built_equals_codec_bytes(name, carrier):
    msg, flags = SAMPLES[name]
    # window (0), trickles_len (the header length), dataofs and checksum are all computed
    assert bytes(scapy_datagram(msg, carrier, flags)) == codec_datagram(msg, carrier, flags)


def test_checksum_uses_protocol_6_whatever_the_carrier():
    r = RESPONSES["full1_data"]
    seg = ws.encode_segment(SRV_B, CLI_B, SPORT, CPORT, 42, 40, ws.ACK, r.encode(), r.header_len())
    want = int.from_bytes(seg[16:18], "big")
    for carrier in CARRIERS:
        pkt = IP(response_datagram(r, carrier))
        assert pkt[TricklesTCP].chksum == want
        # rebuilt from the fields with the checksum left to the layer: the same value
        pkt[TricklesTCP].chksum = None
        assert IP(bytes(pkt))[TricklesTCP].chksum == want
    # scapy's own TCP over IP protocol 6 agrees (its pseudo-header says 6 as well)
    zeroed = seg[:16] + b"\0\0" + seg[18:]
    stock = IP(src=SRV, dst=CLI) / TCP(zeroed)
    stock[TCP].chksum = None
    assert IP(bytes(stock))[TCP].chksum == want == ws.checksum(SRV_B, CLI_B, zeroed)
    # a damaged segment fails the check
    bad = bytearray(response_datagram(r))
    bad[-1] ^= 0xFF
    assert IP(bytes(bad))[TricklesTCP].checksum_ok() is False


def test_defaults_build_valid_segments():
    resp = IP(src=SRV, dst=CLI) / TricklesTCP() / TricklesResponse(
        continuation=sl.Continuation(seq=3, TCPBase=1, ssthresh=100), ucont=b"abc",
        chunks=[sl.DataChunk(byteNum=0, data=b"hello")])
    raw = bytes(resp[TricklesTCP])
    seg = ws.decode_segment(raw, SRV_B, CLI_B)  # raises on a bad checksum
    assert (seg.src_port, seg.dst_port, seg.window, seg.flags) == (SPORT, CPORT, 0, ws.ACK)
    assert seg.trickles_len == 8 + 75 + 3 == resp[TricklesResponse].header_len()
    decoded = wm.decode_response(seg.payload)
    assert decoded.cont.seq == 3 and decoded.chunks == [wm.DataChunk(0, b"hello")]
    assert IP(bytes(resp)).proto == PROTO_TRICKLES

    req = IP(src=CLI, dst=SRV) / UDP() / TricklesTCP() / TricklesRequest(
        continuation=sl.Continuation(seq=3), ranges=[sl.ByteRange(start=0, length=1448)])
    built = IP(bytes(req))
    assert (built[UDP].sport, built[UDP].dport) == (CPORT, SPORT)
    seg = ws.decode_segment(bytes(built[TricklesTCP]), CLI_B, SRV_B)
    assert (seg.src_port, seg.dst_port, seg.window, seg.trickles_len) == (
        CPORT, SPORT, 0xFFFF, 0)
    assert wm.decode_request(seg.payload).ranges == [(0, 1448)]
    assert isinstance(built[TricklesTCP].payload, TricklesRequest)


def test_extra_tcp_options_keep_the_header_aligned():
    pkt = IP(src=SRV, dst=CLI) / TricklesTCP(
        options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / TricklesResponse()
    raw = bytes(pkt)
    assert raw[20 + 12] >> 4 == 10  # 20 + 6 + 2 + 10 = 38, padded to 40 bytes
    seg = ws.decode_segment(raw[20:], SRV_B, CLI_B)
    assert wm.decode_response(seg.payload).cont.type == wc.FULL1
    back = IP(raw)
    assert ("Timestamp", (1, 2)) in back[TricklesTCP].options
    assert isinstance(back[TricklesTCP].payload, TricklesResponse)


# ------------------------------------------------------------------ dissecting
@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("name", SAMPLES)
def test_dissect_codec_datagram(name, carrier):
    msg, flags = SAMPLES[name]
    dg = codec_datagram(msg, carrier, flags)
    pkt = IP(dg)
    assert pkt.proto == carrier
    assert_segment(pkt, dg)
    assert assert_message(pkt, msg).underlayer is pkt[TricklesTCP]
    assert TCP in pkt and pkt[TCP] is pkt[TricklesTCP]  # a TCP subclass scapy tools can find
    pkt.clear_cache()  # rebuilt from the dissected field values: the same bytes
    assert bytes(pkt) == dg


@pytest.mark.parametrize("carrier", [PROTO_TRICKLES, PROTO_TCP])
def test_direction_guessed_without_a_service_port(carrier):
    def moved(dg: bytes) -> bytes:  # both TCP ports away from 8080
        pkt = IP(dg)
        pkt[TricklesTCP].sport, pkt[TricklesTCP].dport = (
            (5555, 6666) if pkt[TricklesTCP].sport == SPORT else (6666, 5555))
        pkt[TricklesTCP].chksum = None
        return bytes(pkt)

    for msg, flags in SAMPLES.values():
        assert_message(IP(moved(codec_datagram(msg, carrier, flags))), msg)


def test_guess_payload_kind():
    for r in RESPONSES.values():
        assert guess_payload_kind(r.encode()) is TricklesResponse
    for q in REQUESTS.values():
        assert guess_payload_kind(q.encode()) is TricklesRequest
    junk = b"\x00\x01" + b"\xee" * 10  # neither decodes: the byte pattern decides
    assert guess_payload_kind(junk) is TricklesRequest
    assert guess_payload_kind(b"\x09\x01" + b"\xee" * 10) is TricklesResponse
    assert guess_payload_kind(junk, window=0) is TricklesResponse
    assert guess_payload_kind(b"\x09" * 12, flags=ws.SYN) is TricklesRequest


def test_service_port_decides_before_the_guess():
    resp_bytes = RESPONSES["full1_data"].encode()
    tcp = TricklesTCP(sport=CPORT, dport=6000)
    assert tcp.guess_payload_class(resp_bytes) is TricklesResponse  # guessed
    bind_tcp_port(6000)
    try:
        assert tcp.guess_payload_class(resp_bytes) is TricklesRequest  # sent to the port
        built = IP(bytes(IP(src=CLI, dst=SRV) / TricklesTCP() / TricklesRequest()))
        assert built[TricklesTCP].dport == 6000  # the last bound port builds
    finally:
        unbind_tcp_port(6000)
    assert tcp.guess_payload_class(resp_bytes) is TricklesResponse
    assert (IP(src=CLI, dst=SRV) / TricklesTCP() / TricklesRequest())[TricklesTCP].dport == SPORT


def test_udp_port_binding():
    q = REQUESTS["normal"]
    seg = ws.encode_segment(CLI_B, SRV_B, CPORT, SPORT, 17, 40, ws.ACK, q.encode(), 0, 0xFFFF)
    dg = build_ipv4(CLI_B, SRV_B, PROTO_UDP, build_udp(UDP_CPORT, 9999, seg))
    assert isinstance(IP(dg)[UDP].payload, Raw)  # 9999 is not bound
    bind_udp_port(9999)
    try:
        pkt = IP(dg)
        assert_request(pkt[TricklesRequest], q)
        # the UDP port decides first: from 9999 means a response whatever the TCP ports say
        udp = UDP(sport=9999, dport=UDP_CPORT)
        tcp = TricklesTCP(sport=CPORT, dport=SPORT)
        udp.add_payload(tcp)
        assert tcp.guess_payload_class(q.encode()) is TricklesResponse
    finally:
        unbind_udp_port(9999)
    assert isinstance(IP(dg)[UDP].payload, Raw)
    # 8080 stays bound
    assert_request(IP(request_datagram(q, PROTO_UDP))[TricklesRequest], q)


def test_other_traffic_is_left_alone():
    http = IP(bytes(IP(src=CLI, dst=SRV) / TCP(sport=CPORT, dport=SPORT, flags="PA")
                    / b"GET / HTTP/1.1\r\n\r\n"))
    assert type(http.payload) is TCP and TricklesTCP not in http
    udp = IP(bytes(IP(src=CLI, dst=SRV) / UDP(sport=CPORT, dport=SPORT) / b"hello world"))
    assert isinstance(udp[UDP].payload, Raw)
    # a Trickles option that is not first (not what trickles_kit sends): plain TCP
    seg = request_datagram(REQUESTS["normal"])[20:]
    odd = seg[:12] + bytes([8 << 4]) + seg[13:20] + b"\x02\x04\x05\xb4" + seg[20:]
    assert ws.decode_segment(odd).trickles_len == 0  # the codec still finds it
    pkt = IP(bytes(IP(src=CLI, dst=SRV, proto=6) / Raw(odd)))
    assert type(pkt.payload) is TCP
    assert not is_trickles_segment(odd) and is_trickles_segment(seg)


def test_response_answers_its_request():
    req = IP(request_datagram(REQUESTS["normal"]))
    resp = IP(response_datagram(RESPONSES["full1_data"], ack=40))
    assert resp.answers(req) and not req.answers(resp)
    assert not IP(response_datagram(RESPONSES["full1_data"], ack=41)).answers(req)


def test_continuation_parent_field_quirk():
    c = sl.Continuation(parent=5)
    assert c.getfieldval("parent") == 5  # `c.parent` is scapy's parent-packet slot
    c.setfieldval("parent", 6)
    assert bytes(c)[10:14] == (6).to_bytes(4, "big")
    assert "parent    = 6" in c.show(dump=True)


# ------------------------------------------------------------------ show / summary
def test_summary_lines():
    pkt = IP(response_datagram(resp_example()))
    assert pkt.summary() == (
        "IP / TCP 10.0.0.1:8080 > 10.1.0.2:40000 A / Trickles RESP pkt=42 ack=40 FULL1 NORMAL "
        "base=1 ssthresh=16383 1/2 data 60816+1448")
    pkt = IP(request_datagram(REQUESTS["normal"]))
    assert pkt.summary().endswith(" A / Trickles REQ NORMAL ack=40 sacks=[1-40] ranges=1")
    pkt = IP(request_datagram(REQUESTS["syn"], flags=ws.SYN))
    assert pkt.summary().endswith(" S / Trickles REQ SYN ranges=1 pad=500B app=11B")
    pkt = IP(request_datagram(REQUESTS["slowstart"]))
    assert pkt[TricklesRequest].mysummary()[0] == (
        "Trickles REQ SLOWSTART ack=42 FULL2 sacks=[1-9,11-20,22-40] ranges=2 ucont=3B app=9B")
    pkt = IP(response_datagram(RESPONSES["minimal_fin"], flags=ws.FIN | ws.ACK, pkt=43, ack=41))
    assert pkt.summary().endswith(
        " FA / Trickles RESP pkt=43 ack=41 MINIMAL 1/1 data 59368+632 FIN finhint 60000")
    pkt = IP(response_datagram(RESPONSES["full2_recovery_skip"]))
    assert pkt.summary().endswith(
        "FULL2 RECOVERY base=1 ssthresh=16383 3/3 ucont=9B data 1000+3 skip 1003+500 "
        "skip 2000+7")
    pkt = IP(response_datagram(RESPONSES["full1_data"], PROTO_UDP))
    assert pkt.summary().startswith("IP / UDP / TCP 10.0.0.1:8080 > 10.1.0.2:40000 A / "
                                    "Trickles RESP pkt=42")


def test_show_every_layer_and_chunk_kind():
    odd = TricklesResponse(continuation=sl.Continuation(type=wc.MINIMAL, seq=3), chunks=[
        sl.DataChunk(byteNum=5, data=b"abc", flags="FIN"), sl.ChunkPad(),
        sl.SkipChunk(byteNum=1, len=2), sl.FinHint(byteNum=9), sl.UnknownChunk(type=9, body=b"zz")])
    pkt = IP(bytes(IP(src=SRV, dst=CLI) / TricklesTCP() / odd))
    chunks = pkt[TricklesResponse].chunks
    assert [type(c) for c in chunks] == [sl.DataChunk, sl.ChunkPad, sl.SkipChunk, sl.FinHint,
                                         sl.UnknownChunk]
    text = pkt.show(dump=True)
    for word in ("Trickles TCP", "exid      = TK", "optkind   = experimental",
                 "trickles_len= 26", "type      = MINIMAL", "DATA chunk", "flags     = FIN",
                 "pad", "SKIP chunk", "FINHINT chunk", "unknown chunk", "body      = b'zz'"):
        assert word in text, word
    assert "timestamp" not in text  # MINIMAL: no server-owned tail
    assert pkt.summary().endswith("MINIMAL 1/1 data 5+3 FIN skip 1+2 finhint 9 "
                                  "chunk(type=9, length=5)")

    for name in RESPONSES:
        dg = response_datagram(RESPONSES[name], flags=RESP_FLAGS.get(name, ws.ACK))
        text = IP(dg).show(dump=True)
        assert "Trickles Continuation" in text and "Trickles Response" in text
        assert "data      = b'xxxxxxxx" not in text or "(1448 bytes)" in text  # long data cut
    for name in REQUESTS:
        text = IP(request_datagram(REQUESTS[name], flags=REQ_FLAGS.get(name, ws.ACK))).show(
            dump=True)
        assert "Trickles Request" in text
        assert ("Trickles Continuation" in text) == (name != "syn")
    full = IP(response_datagram(resp_example()))[TricklesResponse].continuation
    for word in ("firstChild", "clientState", "clientTimestamp", "mrtt", "firstLoss",
                 "firstBootstrapSeq", "startCwnd", "ssthresh", "TCPBase",
                 "connId    = 0x1122334455667788", "keyEpoch", "mac       = 000102"):
        assert word in full.show(dump=True), word
    assert full.summary() == "Continuation seq=42 FULL1 NORMAL base=1 ssthresh=16383"
    assert sl.SackBlock(left=1, right=4).summary() == "SACK 1-4"
    assert sl.ByteRange(start=10, length=5).summary() == "bytes [10, 15)"


def test_truncated_input_never_raises():
    for dg in (response_datagram(RESPONSES["full2_recovery_skip"]),
               request_datagram(REQUESTS["slowstart"])):
        for n in range(20, len(dg)):
            pkt = IP(dg[:n])
            pkt.summary()
            pkt.show(dump=True)


# ------------------------------------------------------------------ pcaps
def test_pcap_writer_records_read_by_rdpcap(tmp_path):
    path = str(tmp_path / "log.pcap")
    w = PcapWriter(path)
    q, r = REQUESTS["normal"], RESPONSES["full2_recovery_skip"]
    qseg = ws.encode_segment(CLI_B, SRV_B, CPORT, SPORT, 17, 40, ws.ACK, q.encode(), 0, 0xFFFF)
    rseg = ws.encode_segment(SRV_B, CLI_B, SPORT, CPORT, 42, 40, ws.ACK, r.encode(), r.header_len())
    for i, proto in enumerate(CARRIERS):
        udp = proto == PROTO_UDP
        w.log(100.0 + i, CLI_B, SRV_B, qseg, proto, (UDP_CPORT, SPORT) if udp else None)
        w.log(100.5 + i, SRV_B, CLI_B, rseg, proto, (SPORT, UDP_CPORT) if udp else None)
    w.close()
    pkts = rdpcap(path)
    assert len(pkts) == 6
    for i, pkt in enumerate(pkts):
        assert pkt.proto == CARRIERS[i // 2]
        if i % 2 == 0:
            assert_request(pkt[TricklesRequest], q)
        else:
            assert_response(pkt[TricklesResponse], r)
        assert pkt[TricklesTCP].checksum_ok() is True


def test_simulated_transfer_pcap_dissects_field_for_field(tmp_path):
    from trickles_kit.apps.sim import simulate_transfer

    path = str(tmp_path / "sim.pcap")
    assert simulate_transfer(60000, loss=0.05, seed=3, pcap=path).ok
    kinds = set()
    for pkt in rdpcap(path):
        t = pkt[TricklesTCP]
        seg = ws.decode_segment(bytes(t), socket.inet_aton(pkt.src), socket.inet_aton(pkt.dst))
        assert t.checksum_ok() and (t.seq, t.ack, int(t.flags)) == (seg.seq, seg.ack, seg.flags)
        if TricklesRequest in pkt:  # port 80 is not bound: the direction is guessed
            q = wm.decode_request(seg.payload)
            assert_request(pkt[TricklesRequest], q)
            kinds.add(wm.REQ_NAMES[q.type])
        else:
            r = wm.decode_response(seg.payload)
            assert_response(pkt[TricklesResponse], r)
            kinds.add("FIN response" if seg.flags & ws.FIN else "response")
        assert pkt.summary()
    assert {"SYN", "NORMAL", "response", "FIN response"} <= kinds


# ------------------------------------------------------------------ property: random messages
# small messages: a request's SACKs, ranges and byte fields, a response's chunks
_requests = requests(max_sacks=4, max_ucont=20, max_ranges=3, max_app=20, range_end=(1 << 32) - 1)
_responses = responses(max_ucont=20, max_chunks=4, max_data=40)


@settings(max_examples=80, deadline=None)
@given(msg=st.one_of(_responses, _requests), carrier=st.sampled_from(CARRIERS))
def test_property_round_trip(msg, carrier):
    dg = codec_datagram(msg, carrier, ws.ACK)
    assert bytes(scapy_datagram(msg, carrier)) == dg
    assert_message(IP(dg), msg)
