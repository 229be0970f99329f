"""Transport continuation: the connection's congestion state, carried by every packet.

Wire layout (network order). The client-owned fields sit right after the header so the
MINIMAL form is a prefix of the FULL form, and the server-owned fields are one contiguous
slice so the MAC input is two slices of the wire bytes — no re-encoding on verify.

    off  len  field
      0    1  type            MINIMAL=0, FULL1=1, FULL2=2        (server-owned)
      1    4  seq             packet number                      (server-owned)
      5    1  firstChild                                         (server-owned)
      6    4  clientState     client's recovery-epoch counter    (client-owned)
     10    4  parent          client request id                  (client-owned)
     14    4  clientTimestamp client clock, ms, echoed           (client-owned)
    ---- MINIMAL ends here (18 bytes) ----
     18    4  timestamp       server clock, ms
     22    4  mrtt            smoothed RTT x8, ms
     26    1  state           NORMAL=0, RECOVERY=1, BOOTSTRAP=2
     27    4  firstLoss
     31    4  firstBootstrapSeq
     35    4  startCwnd
     39    4  ssthresh
     43    4  TCPBase
     47    8  connId
     55    4  keyEpoch
     59   16  mac             keyed BLAKE2s-128 (see core.seal)
    ---- FULL ends here (75 bytes) ----

Delta encoding (an option, off by default; `wire.delta`, docs/protocol.md §14.3) adds three
forms: PAIR (type 3, the MINIMAL layout on the first packet of a delayed-ack pair), HASHED
(type 4, 24 bytes, server -> client) and COMPACT (type 5, client -> server only).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from trickles_kit.wire.errors import DecodeError

MINIMAL, FULL1, FULL2 = 0, 1, 2
PAIR, HASHED, COMPACT = 3, 4, 5  # delta-encoded forms (wire.delta)
NORMAL, RECOVERY, BOOTSTRAP = 0, 1, 2
TYPE_NAMES = {MINIMAL: "MINIMAL", FULL1: "FULL1", FULL2: "FULL2", PAIR: "PAIR", HASHED: "HASHED",
              COMPACT: "COMPACT"}
STATE_NAMES = {NORMAL: "NORMAL", RECOVERY: "RECOVERY", BOOTSTRAP: "BOOTSTRAP"}

MINIMAL_LEN = 18
FULL_LEN = 75
HASHED_LEN = 24
MAC_LEN = 16
MAC_OFFSET = 59
SERVER_BLOCK = slice(18, 59)  # server-owned fields after the client-owned ones

STATE_OFFSET = 26  # the `state` byte: readers check it (<= BOOTSTRAP) before a one-unpack read
# the fields in wire order (no byte-order prefix): the message layouts of `wire.messages` and the
# capture decoder's fast path are built from these, so a field changes here only
MINIMAL_FORMAT = "BIBIII"
BODY_FORMAT = "BIBIIIIIBIIIIIQI"  # FULL without the MAC
FULL_FORMAT = BODY_FORMAT + f"{MAC_LEN}s"

_MIN = struct.Struct("!" + MINIMAL_FORMAT)
_FULL = struct.Struct("!" + FULL_FORMAT)
_BODY = struct.Struct("!" + BODY_FORMAT)
_HASHED = struct.Struct("!BHIB16s")  # type, parent16, timestamp, epoch8, MAC
# the MAC's pseudo-header (core.seal): client address, service address, client port, service port
MAC_PSEUDO = struct.Struct("!4s4sHH")


@dataclass(slots=True)
class Continuation:
    """One transport continuation. MINIMAL and PAIR ones use only the first six fields; a
    decoded HASHED one holds only parent (16 bits), timestamp, key_epoch (low byte) and mac
    until the client rebuilds it (core.delta)."""

    type: int = FULL1
    seq: int = 0
    first_child: int = 0
    client_state: int = 0
    parent: int = 0
    client_timestamp: int = 0
    timestamp: int = 0
    mrtt: int = 0
    state: int = NORMAL
    first_loss: int = 0
    first_bootstrap_seq: int = 0
    start_cwnd: int = 0
    ssthresh: int = 0
    tcp_base: int = 0
    conn_id: int = 0
    key_epoch: int = 0
    mac: bytes = b"\0" * MAC_LEN

    @property
    def is_full(self) -> bool:
        return self.type == FULL1 or self.type == FULL2

    def body(self) -> bytes:
        """FULL encoding without the MAC (what the sealer signs two slices of)."""
        return _BODY.pack(
            self.type, self.seq, self.first_child, self.client_state, self.parent,
            self.client_timestamp, self.timestamp, self.mrtt, self.state, self.first_loss,
            self.first_bootstrap_seq, self.start_cwnd, self.ssthresh, self.tcp_base,
            self.conn_id, self.key_epoch,
        )

    def encode(self) -> bytes:
        if self.type == MINIMAL or self.type == PAIR:
            return _MIN.pack(
                self.type, self.seq, self.first_child, self.client_state, self.parent,
                self.client_timestamp,
            )
        if self.type == HASHED:
            return _HASHED.pack(HASHED, self.parent & 0xFFFF, self.timestamp, self.key_epoch & 0xFF,
                                self.mac)
        return self.body() + self.mac


pack_body = _BODY.pack  # fast path for the server: FULL fields in wire order, no MAC
pack_minimal = _MIN.pack  # (type=0, seq, firstChild, clientState, parent, clientTimestamp)


def decode_continuation(data: bytes, offset: int = 0) -> tuple[Continuation, int]:
    """Decode one continuation at `offset`; returns it and the offset just past it."""
    if offset >= len(data):
        raise DecodeError("truncated", "continuation missing")
    ctype = data[offset]
    if ctype in (MINIMAL, PAIR):
        if offset + MINIMAL_LEN > len(data):
            raise DecodeError("truncated", "minimal continuation")
        f = _MIN.unpack_from(data, offset)
        return Continuation(*f), offset + MINIMAL_LEN
    if ctype == HASHED:
        if offset + HASHED_LEN > len(data):
            raise DecodeError("truncated", "hashed continuation")
        _, parent, ts, ep, mac = _HASHED.unpack_from(data, offset)
        return Continuation(HASHED, parent=parent, timestamp=ts, key_epoch=ep, mac=mac), (
            offset + HASHED_LEN)
    if ctype in (FULL1, FULL2):
        if offset + FULL_LEN > len(data):
            raise DecodeError("truncated", "full continuation")
        f = _FULL.unpack_from(data, offset)
        if f[8] > BOOTSTRAP:
            raise DecodeError("cont_state", f"state {f[8]}")
        return Continuation(*f), offset + FULL_LEN
    raise DecodeError("cont_type", f"continuation type {ctype}")


def encoded_len(ctype: int) -> int:
    if ctype == HASHED:
        return HASHED_LEN
    return MINIMAL_LEN if ctype in (MINIMAL, PAIR) else FULL_LEN
