"""Scapy layers for Trickles: build, show and dissect segments by hand or from a pcap.

Teaching and analysis only: the data path uses the `struct` codec in `trickles_kit.wire`, and
these layers are tested to produce exactly its bytes. Importing this module registers the
bindings (scapy's usual side effect):

* **IP protocol 253** -> `TricklesTCP` (the TCP-format segment) -> request or response.
* **IP protocol 6** -> `TricklesTCP` when the segment carries the Trickles option right after
  the 20-byte header (as every trickles_kit endpoint sends it), on any port; other TCP
  segments stay scapy's plain `TCP`.
* **UDP port 8080** (`bind_udp_port` adds more) -> `TricklesTCP` -> request or response.

Request or response? A payload is a request when it is sent *to* a service port: the UDP
port for UDP (`bind_udp_port`), else the segment's TCP port (`bind_tcp_port`, 8080 by
default). Without a known port, `guess_payload_kind` decides from the bytes (see there).

`TricklesTCP` subclasses scapy's `TCP` (so `pkt[TCP]` and `TCP in pkt` find it) with the option
spelled out as fields (`optkind`, `optlen`, `exid`, `trickles_len`) instead of an opaque
`(253, b'TK..')` tuple, and with the TCP checksum computed with protocol 6 in the pseudo-header
whatever carries the segment (scapy's `TCP` would leave it 0 under UDP). Left unset,
`trickles_len` becomes the response header length (0 in requests) and `window` 0 from the
server and 0xffff from the client, as the codec sends them. IPv4 only, like the project.

Scapy quirk: a `Continuation`'s `parent` field shares its name with scapy's `Packet.parent`
slot (the packet that holds a nested one), so `cont.parent` returns that packet. Use
`cont.getfieldval("parent")` / `Continuation(parent=n)` / `cont.setfieldval("parent", n)`;
show(), summary() and sprintf("%Continuation.parent%") display the field. For the same reason
the SACK block's third word (`summary` in the protocol) is the field `nonceSummary`, since
`Packet.summary()` is a method.
"""

from __future__ import annotations

import socket

from scapy import fields as sf
from scapy.layers.inet import IP, TCP, UDP, TCPOptionsField
from scapy.packet import Packet, bind_layers, bind_top_down, split_bottom_up

# the fixed parts (continuation, SACK block, range, chunks) live in scapy_elements; their names
# stay importable from here
from trickles_kit.capture.scapy_elements import (
    CHUNK_NAMES,
    ByteRange,
    BytesField,
    BytesLenField,
    ChunkPad,
    Continuation,
    DataChunk,
    FinHint,
    SackBlock,
    SkipChunk,
    UnknownChunk,
    chunk_class,
)
from trickles_kit.wire.continuation import FULL1, TYPE_NAMES
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    REQ_NAMES,
    REQ_SYN,
    RESPONSE_HEADER_LEN,
    decode_request,
    decode_response,
)
from trickles_kit.wire.segment import HEADER_LEN, OPT_EXID, OPT_KIND
from trickles_kit.wire.segment import checksum as tcp_checksum

DEFAULT_PORT = 8080  # the service port of `trickles serve` / `fetch`
CLIENT_PORT = 40000  # default client port when building packets by hand
TCP_FLAGS = "FSRPAUECN"
_OPT_PREFIX = bytes((OPT_KIND, 6)) + OPT_EXID.to_bytes(2, "big")

__all__ = [
    "CHUNK_NAMES",
    "ByteRange",
    "ChunkPad",
    "Continuation",
    "DataChunk",
    "FinHint",
    "SackBlock",
    "SkipChunk",
    "TricklesRequest",
    "TricklesResponse",
    "TricklesTCP",
    "UnknownChunk",
    "bind_tcp_port",
    "bind_udp_port",
    "guess_payload_kind",
    "is_trickles_segment",
    "unbind_tcp_port",
    "unbind_udp_port",
]


class TricklesRequest(Packet):
    """Client -> server. SYN requests carry no continuation."""

    name = "Trickles Request"
    fields_desc = [
        sf.ByteEnumField("type", 0, REQ_NAMES),
        sf.ConditionalField(
            sf.PacketField("continuation", Continuation(), Continuation),
            lambda p: p.type != REQ_SYN,
        ),
        sf.FieldLenField("numSacks", None, count_of="sacks", fmt="B"),
        sf.PacketListField("sacks", [], SackBlock, count_from=lambda p: p.numSacks),
        sf.FieldLenField("ucont_len", None, length_of="ucont", fmt="H"),
        BytesLenField("ucont", b"", length_from=lambda p: p.ucont_len),
        sf.FieldLenField("nranges", None, count_of="ranges", fmt="B"),
        sf.PacketListField("ranges", [], ByteRange, count_from=lambda p: p.nranges),
        BytesField("app", b""),
    ]

    def mysummary(self):
        """`Trickles REQ NORMAL ack=40 sacks=[1-40] ranges=1` (ack = the continuation's seq)."""
        try:
            return self._brief(), [TricklesTCP]
        except AttributeError:  # a truncated part dissected as Raw
            return "Trickles REQ (malformed)", [TricklesTCP]

    def _brief(self) -> str:
        parts = ["Trickles REQ", REQ_NAMES.get(self.type, f"type{self.type}")]
        cont = self.continuation if self.type != REQ_SYN else None
        if cont is not None:
            parts.append(f"ack={cont.seq}")
            if cont.type != FULL1:
                parts.append(TYPE_NAMES.get(cont.type, f"type{cont.type}"))
        if self.type != REQ_SYN or self.sacks:
            blocks = ",".join(f"{b.left}-{b.right}" for b in self.sacks)
            parts.append(f"sacks=[{blocks}]")
        parts.append(f"ranges={len(self.ranges)}")
        if self.ucont:
            pad = self.type == REQ_SYN and not self.ucont.strip(b"\0")
            parts.append(f"{'pad' if pad else 'ucont'}={len(self.ucont)}B")
        if self.app:
            parts.append(f"app={len(self.app)}B")
        return " ".join(parts)


class TricklesResponse(Packet):
    """Server -> client: header, continuation, user continuation, then chunks to the end."""

    name = "Trickles Response"
    fields_desc = [
        sf.XIntField("nonce", 0),
        sf.ByteField("numSiblings", 1),
        sf.ByteField("position", 0),
        sf.FieldLenField("ucont_len", None, length_of="ucont", fmt="H"),
        sf.PacketField("continuation", Continuation(), Continuation),
        BytesLenField("ucont", b"", length_from=lambda p: p.ucont_len),
        sf.PacketListField("chunks", [], chunk_class),
    ]

    def header_len(self) -> int:
        """The TCP option's value: response header + continuation + user continuation."""
        return RESPONSE_HEADER_LEN + len(bytes(self.continuation)) + len(self.ucont)

    def mysummary(self):
        """`Trickles RESP pkt=42 ack=40 FULL1 NORMAL base=1 ssthresh=16383 1/2 data 60816+1448`.

        `1/2` is position + 1 / numSiblings (the first of two packets this request produced).
        """
        try:
            return self._brief(), [TricklesTCP]
        except AttributeError:  # a truncated part dissected as Raw
            return "Trickles RESP (malformed)", [TricklesTCP]

    def _brief(self) -> str:
        cont = self.continuation
        tcp = self.underlayer if isinstance(self.underlayer, TCP) else None
        parts = ["Trickles RESP", f"pkt={tcp.seq if tcp is not None else cont.seq}"]
        if tcp is not None:
            parts.append(f"ack={tcp.ack}")
        parts.append(cont.brief())
        parts.append(f"{self.position + 1}/{self.numSiblings}")
        if self.ucont:
            parts.append(f"ucont={len(self.ucont)}B")
        for c in self.chunks:
            if not isinstance(c, ChunkPad):
                brief = getattr(c, "brief", None)
                parts.append(brief() if brief is not None else f"raw {len(c)}B")
        return " ".join(parts)


# ------------------------------------------------------------------ TCP-format segment
class _ExtraOptionsField(TCPOptionsField):
    """TCP options after the 6-byte Trickles option (the two NOPs), padded so the header is
    a multiple of 4 bytes."""

    def getfield(self, pkt, s):
        opsz = max((pkt.dataofs or 7) * 4 - HEADER_LEN + 2, 0)
        return s[opsz:], self.m2i(pkt, s[:opsz])

    def i2m(self, pkt, x):
        # the parent pads (2 + len) to a multiple of 4 with EOL bytes; drop the 2 dummies
        return super().i2m(pkt, [("NOP", None), ("NOP", None)] + list(x or []))[2:]


def is_trickles_segment(data: bytes) -> bool:
    """True if `data` is a TCP-format segment with the Trickles option first (28+ bytes)."""
    return len(data) >= HEADER_LEN and data[12] >> 4 >= 7 and data[20:24] == _OPT_PREFIX


def guess_payload_kind(payload: bytes, flags: int | None = None,
                       window: int | None = None) -> type[Packet]:
    """Request or response, from the payload alone (used when no service port matches).

    The codec is tried both ways: if exactly one decodes, that is the answer. If both (or
    neither) do, the window decides (0 from the server, 0xffff from the client), then a SYN
    without ACK (a request), then the byte pattern: a request type 0..3 followed by a FULL
    continuation type 1/2 at offset 1 is a request, anything else a response.
    """
    try:
        decode_request(payload)
        req_ok = True
    except DecodeError:
        req_ok = False
    try:
        decode_response(payload)
        resp_ok = True
    except DecodeError:
        resp_ok = False
    if req_ok != resp_ok:
        return TricklesRequest if req_ok else TricklesResponse
    if window == 0:
        return TricklesResponse
    if window == 0xFFFF:
        return TricklesRequest
    if flags is not None and flags & 0x12 == 0x02:  # SYN without ACK
        return TricklesRequest
    if len(payload) > 1 and payload[0] <= 3 and payload[1] in (1, 2):
        return TricklesRequest
    return TricklesResponse


_TCP_PORTS: dict[int, None] = {}  # service ports, in binding order (the last one builds)
_UDP_PORTS: dict[int, None] = {}


class TricklesTCP(TCP):
    """The 28-byte TCP-format header: TCP's 20 bytes + option 253 (ExID "TK") + 2 NOPs.

    seq: packet number (server) / request counter (client); ack: the packet number the
    request acknowledged; trickles_len: the option value (response header length, 0 in
    requests). dataofs, window, trickles_len and chksum are computed when left None.
    """

    name = "Trickles TCP"
    match_subclass = True
    fields_desc = [
        sf.ShortField("sport", CLIENT_PORT),
        sf.ShortField("dport", DEFAULT_PORT),
        sf.IntField("seq", 0),
        sf.IntField("ack", 0),
        sf.BitField("dataofs", None, 4),
        sf.BitField("reserved", 0, 3),
        sf.FlagsField("flags", 0x10, 9, TCP_FLAGS),
        sf.ShortField("window", None),
        sf.XShortField("chksum", None),
        sf.ShortField("urgptr", 0),
        sf.ByteEnumField("optkind", OPT_KIND, {OPT_KIND: "experimental"}),
        sf.ByteField("optlen", 6),
        sf.XShortEnumField("exid", OPT_EXID, {OPT_EXID: "TK"}),
        sf.ShortField("trickles_len", None),
        _ExtraOptionsField("options", [("NOP", None), ("NOP", None)]),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt=None, *args, **kargs):
        """Dissect as TricklesTCP only when the Trickles option is there; otherwise hand the
        bytes to what the carrier would have chosen without our binding (plain TCP, ...)."""
        if not _pkt or is_trickles_segment(_pkt):
            return cls
        under = kargs.get("_underlayer")
        if under is None:
            return TCP
        for t in under.aliastypes:
            for fval, upper in t.payload_guess:
                if upper is cls:
                    continue
                try:
                    if all(under.getfieldval(k) == v for k, v in fval.items()):
                        if "dispatch_hook" in upper.__dict__:
                            return upper.dispatch_hook(_pkt, *args, **kargs)
                        return upper
                except AttributeError:
                    pass
        return TCP if isinstance(under, IP) else under.default_payload_class(_pkt)

    def _carrier_ip(self) -> IP | None:
        u = self.underlayer
        while u is not None and not isinstance(u, IP):
            u = u.underlayer
        return u

    def post_build(self, p, pay):
        p += pay
        if self.dataofs is None:
            hlen = HEADER_LEN - 2 + len(self.get_field("options").i2m(self, self.options))
            p = p[:12] + bytes((((hlen // 4) << 4) | (p[12] & 0x0F),)) + p[13:]
        if self.window is None:
            window = 0 if isinstance(self.payload, TricklesResponse) else 0xFFFF
            p = p[:14] + window.to_bytes(2, "big") + p[16:]
        if self.trickles_len is None:
            pl = self.payload
            tlen = pl.header_len() if isinstance(pl, TricklesResponse) else 0
            p = p[:24] + tlen.to_bytes(2, "big") + p[26:]
        if self.chksum is None:
            ip = self._carrier_ip()
            if ip is not None:
                ck = tcp_checksum(socket.inet_aton(ip.src), socket.inet_aton(ip.dst),
                                  p[:16] + b"\0\0" + p[18:])
                p = p[:16] + ck.to_bytes(2, "big") + p[18:]
        return p

    def checksum_ok(self) -> bool | None:
        """Verify the TCP checksum (protocol 6 pseudo-header); None without an IP layer."""
        ip = self._carrier_ip()
        if ip is None:
            return None
        data = bytes(self)
        ck = tcp_checksum(socket.inet_aton(ip.src), socket.inet_aton(ip.dst),
                          data[:16] + b"\0\0" + data[18:])
        return ck == int.from_bytes(data[16:18], "big")

    def guess_payload_class(self, payload):
        udp = self.underlayer if isinstance(self.underlayer, UDP) else None
        if udp is not None:
            to_svc, from_svc = udp.dport in _UDP_PORTS, udp.sport in _UDP_PORTS
            if to_svc != from_svc:
                return TricklesRequest if to_svc else TricklesResponse
        to_svc, from_svc = self.dport in _TCP_PORTS, self.sport in _TCP_PORTS
        if to_svc != from_svc:
            return TricklesRequest if to_svc else TricklesResponse
        return guess_payload_kind(payload, int(self.flags), self.window)

    def answers(self, other):
        """A response answers the request that acknowledged the same packet (same ack)."""
        if not isinstance(other, TricklesTCP):
            return 0
        return int(self.sport == other.dport and self.dport == other.sport
                   and self.ack == other.ack and isinstance(self.payload, TricklesResponse)
                   and isinstance(other.payload, TricklesRequest))

    def mysummary(self):
        ip = self._carrier_ip()
        src, dst = (f"{ip.src}:", f"{ip.dst}:") if ip is not None else ("", "")
        flags = self.sprintf("%TricklesTCP.flags%")
        return f"TCP {src}{self.sport} > {dst}{self.dport} {flags}"


# ------------------------------------------------------------------ bindings
def _bind_first(lower: type[Packet], upper: type[Packet], **fval) -> None:
    """Like bind_bottom_up, but ahead of existing bindings (scapy tries them in order)."""
    entry = (fval, upper)
    lower.payload_guess = [entry] + [e for e in lower.payload_guess if e != entry]


def _refresh_overloads() -> None:
    """Building defaults: IP()/UDP()/TricklesTCP()/Trickles... get the latest bound ports."""
    port = next(reversed(_TCP_PORTS), DEFAULT_PORT)
    bind_top_down(TricklesTCP, TricklesRequest, sport=CLIENT_PORT, dport=port)
    bind_top_down(TricklesTCP, TricklesResponse, sport=port, dport=CLIENT_PORT)
    if _UDP_PORTS:
        bind_top_down(UDP, TricklesTCP, sport=CLIENT_PORT, dport=next(reversed(_UDP_PORTS)))
    else:
        overloads = dict(TricklesTCP._overload_fields)
        overloads.pop(UDP, None)
        TricklesTCP._overload_fields = overloads


def bind_udp_port(port: int) -> None:
    """Dissect UDP to or from `port` as Trickles (sent to it: a request; from it: a response)."""
    _UDP_PORTS.pop(port, None)
    _UDP_PORTS[port] = None
    _bind_first(UDP, TricklesTCP, dport=port)
    _bind_first(UDP, TricklesTCP, sport=port)
    _refresh_overloads()


def unbind_udp_port(port: int) -> None:
    _UDP_PORTS.pop(port, None)
    split_bottom_up(UDP, TricklesTCP, dport=port)
    split_bottom_up(UDP, TricklesTCP, sport=port)
    _refresh_overloads()


def bind_tcp_port(port: int) -> None:
    """Make `port` a service port: a segment sent to it is a request, one from it a response.

    Applies to segments over IP 253, IP 6 and UDP (for UDP the UDP port is asked first).
    """
    _TCP_PORTS.pop(port, None)
    _TCP_PORTS[port] = None
    _refresh_overloads()


def unbind_tcp_port(port: int) -> None:
    _TCP_PORTS.pop(port, None)
    _refresh_overloads()


bind_layers(IP, TricklesTCP, proto=253)
_bind_first(IP, TricklesTCP, proto=6)  # dispatch_hook leaves non-Trickles TCP to scapy's TCP
bind_udp_port(DEFAULT_PORT)
bind_tcp_port(DEFAULT_PORT)
