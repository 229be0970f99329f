"""The fixed parts inside a Trickles request or response, as scapy layers: the transport
continuation, a SACK block, a byte range and the response chunks (DATA, SKIP, FINHINT, padding,
unknown). `scapy_layers` builds the request, response and TCP-format segment from them and
registers the bindings; importing this module binds nothing.
"""

from __future__ import annotations

from scapy.fields import (
    BitEnumField,
    BitField,
    ByteEnumField,
    ByteField,
    ConditionalField,
    FieldLenField,
    FlagsField,
    IntField,
    ShortField,
    StrField,
    StrLenField,
    XIntField,
    XLongField,
    XStrFixedLenField,
)
from scapy.packet import Packet

from trickles_kit.wire.continuation import FULL1, MAC_LEN, MINIMAL, NORMAL, STATE_NAMES, TYPE_NAMES
from trickles_kit.wire.messages import (
    CHUNK_DATA,
    CHUNK_FINHINT,
    CHUNK_SKIP,
    DATA_CHUNK_OVERHEAD,
)

CHUNK_NAMES = {CHUNK_DATA: "DATA", CHUNK_SKIP: "SKIP", CHUNK_FINHINT: "FINHINT"}


def short_repr(x: bytes, limit: int = 32) -> str:
    """repr of bytes, cut after `limit` bytes with the length (1448-byte DATA stays readable)."""
    if len(x) <= limit + 8:
        return repr(x)
    return f"{x[:limit]!r}... ({len(x)} bytes)"


class BytesLenField(StrLenField):
    def i2repr(self, pkt, x):
        return short_repr(bytes(x or b""))


class BytesField(StrField):
    def i2repr(self, pkt, x):
        return short_repr(bytes(x or b""))


class Element(Packet):
    """A fixed part inside another layer: whatever follows belongs to the enclosing layer."""

    def extract_padding(self, s):
        return b"", s


# ------------------------------------------------------------------ continuation
def _is_full(pkt) -> bool:
    return pkt.type != MINIMAL


class Continuation(Element):
    """Transport continuation: MINIMAL (18 bytes) or FULL1/FULL2 (75 bytes, with the MAC).

    The fields after `clientTimestamp` are ConditionalFields present only when type != MINIMAL.
    """

    name = "Trickles Continuation"
    fields_desc = [
        ByteEnumField("type", FULL1, TYPE_NAMES),
        IntField("seq", 0),
        ByteField("firstChild", 0),
        IntField("clientState", 0),
        IntField("parent", 0),  # see the module docstring: read with getfieldval("parent")
        IntField("clientTimestamp", 0),
        ConditionalField(IntField("timestamp", 0), _is_full),
        ConditionalField(IntField("mrtt", 0), _is_full),
        ConditionalField(ByteEnumField("state", NORMAL, STATE_NAMES), _is_full),
        ConditionalField(IntField("firstLoss", 0), _is_full),
        ConditionalField(IntField("firstBootstrapSeq", 0), _is_full),
        ConditionalField(IntField("startCwnd", 0), _is_full),
        ConditionalField(IntField("ssthresh", 0), _is_full),
        ConditionalField(IntField("TCPBase", 0), _is_full),
        ConditionalField(XLongField("connId", 0), _is_full),
        ConditionalField(IntField("keyEpoch", 0), _is_full),
        ConditionalField(XStrFixedLenField("mac", b"\0" * MAC_LEN, MAC_LEN), _is_full),
    ]

    @property
    def is_full(self) -> bool:
        return self.type != MINIMAL

    def brief(self) -> str:
        """`FULL1 NORMAL base=1 ssthresh=16383` or `MINIMAL`."""
        kind = TYPE_NAMES.get(self.type, f"type{self.type}")
        if not self.is_full:
            return kind
        state = STATE_NAMES.get(self.state, f"state{self.state}")
        return f"{kind} {state} base={self.TCPBase} ssthresh={self.ssthresh}"

    def mysummary(self):
        return f"Continuation seq={self.seq} {self.brief()}"


# ------------------------------------------------------------------ request
class SackBlock(Element):
    """Claim: packets left..right (inclusive) arrived; nonceSummary = r_left XOR r_(right+1).

    (The protocol calls the third word `summary`; that name is scapy's `Packet.summary()`.)
    """

    name = "SACK block"
    fields_desc = [IntField("left", 0), IntField("right", 0), XIntField("nonceSummary", 0)]

    def mysummary(self):
        return f"SACK {self.left}-{self.right}"


class ByteRange(Element):
    """The byte range the client wants in one output slot: [start, start + length)."""

    name = "Byte range"
    fields_desc = [IntField("start", 0), IntField("length", 0)]

    def mysummary(self):
        return f"bytes [{self.start}, {self.start + self.length})"


# ------------------------------------------------------------------ response chunks
class Chunk(Element):
    """A DATA, SKIP or FINHINT chunk: scapy's one-line summary is its `brief()`."""

    def brief(self) -> str:
        raise NotImplementedError

    def mysummary(self):
        return self.brief()


_FIXED_CHUNK_LEN = {CHUNK_SKIP: 11, CHUNK_FINHINT: 7}


def _fixed_head(kind: int) -> list:
    """The chunk header (type 4 bits, flags 4 bits, length 16 bits) of a fixed-length chunk."""
    return [BitEnumField("type", kind, 4, CHUNK_NAMES), BitField("flags", 0, 4),
            ShortField("length", _FIXED_CHUNK_LEN[kind])]


class DataChunk(Chunk):
    name = "DATA chunk"
    fields_desc = [
        BitEnumField("type", CHUNK_DATA, 4, CHUNK_NAMES),
        FlagsField("flags", 0, 4, ["FIN", "f1", "f2", "f3"]),
        FieldLenField("length", None, length_of="data", fmt="H",
                      adjust=lambda p, n: n + DATA_CHUNK_OVERHEAD),
        IntField("byteNum", 0),
        BytesLenField("data", b"",
                       length_from=lambda p: max(p.length - DATA_CHUNK_OVERHEAD, 0)),
    ]

    def brief(self) -> str:
        fin = " FIN" if self.flags & 1 else ""
        return f"data {self.byteNum}+{len(self.data)}{fin}"


class SkipChunk(Chunk):
    name = "SKIP chunk"
    fields_desc = [*_fixed_head(CHUNK_SKIP), IntField("byteNum", 0), IntField("len", 0)]

    def brief(self) -> str:
        return f"skip {self.byteNum}+{self.len}"


class FinHint(Chunk):
    name = "FINHINT chunk"
    fields_desc = [*_fixed_head(CHUNK_FINHINT), IntField("byteNum", 0)]

    def brief(self) -> str:
        return f"finhint {self.byteNum}"


class ChunkPad(Element):
    """A 0 byte between chunks: one byte of padding."""

    name = "pad"
    fields_desc = [ByteField("pad", 0)]

    def brief(self) -> str:
        return "pad"


class UnknownChunk(Element):
    """A chunk of an unknown type, or one whose length does not fit its type."""

    name = "unknown chunk"
    fields_desc = [
        BitField("type", 0xF, 4),
        BitField("flags", 0, 4),
        FieldLenField("length", None, length_of="body", fmt="H", adjust=lambda p, n: n + 3),
        BytesLenField("body", b"", length_from=lambda p: max(p.length - 3, 0)),
    ]

    def brief(self) -> str:
        return f"chunk(type={self.type}, length={self.length})"


_CHUNK_CLASSES = {CHUNK_DATA: DataChunk, CHUNK_SKIP: SkipChunk, CHUNK_FINHINT: FinHint}


def chunk_class(m: bytes, _parent=None) -> Packet:
    """PacketListField class callback: pick the chunk class from the type nibble."""
    if m[0] == 0:
        return ChunkPad(m, _parent=_parent)
    ctype = m[0] >> 4
    cls = _CHUNK_CLASSES.get(ctype, UnknownChunk)
    if len(m) < 3:
        cls = UnknownChunk
    else:
        clen = int.from_bytes(m[1:3], "big")
        fixed = _FIXED_CHUNK_LEN.get(ctype)
        if (fixed is not None and clen != fixed) or (
            ctype == CHUNK_DATA and clen < DATA_CHUNK_OVERHEAD
        ):
            cls = UnknownChunk
    return cls(m, _parent=_parent)
