"""Decode a capture into packet rows and the server's protocol events.

``decode_pcap(path, secret=None, service_port=None)`` reads a pcap / pcapng (see `pcapio`) and
returns a `Capture`: ``packets`` (one `PacketRow` per Trickles segment, in capture order),
``events`` (`core.events.Event`, the engine's own vocabulary and fields) and ``errors`` (a
Counter of everything skipped or flagged). ``packets_df()`` / ``events_df()`` give pandas
DataFrames (pandas is imported only then). The packet table is kept flat and ``packets`` builds
its `PacketRow` objects on first access; ``columns()`` / ``packets_df()`` need none.
``PacketStream(path, ...)`` yields the same rows batch by batch and keeps none: memory bounded
whatever the capture's size (what ``trickles decode`` prints packets with).

Packets
-------
* **Carrier.** Each IPv4 datagram is a Trickles segment when it is IP protocol 253, IP protocol
  6 with the Trickles TCP option, or UDP whose payload is a TCP-format segment with the option.
  Anything else (ICMP, plain TCP, other UDP, IP fragments, non-IPv4 frames) is counted as
  ``errors["not_trickles"]`` plus ``errors["not_trickles.<what>"]`` and skipped — never an
  exception. An IP-253 datagram that does not parse is kept as a flagged row.
* **Direction** (request = client to service, response = service to client), first rule that
  applies: (1) ``service_port`` when given: a segment to it is a request, from it a response;
  (2) otherwise the service ports learned from the SYNs seen so far in the capture, by the
  segment's role rather than its flags (a client may send SYN or SYN|ACK): a SYN whose Trickles
  option value is 0 is a request, so its destination port is the service's; one with a header
  length is the server's answer, so its source port is; (3) otherwise the
  payload shape: the Trickles option's value is the response header length in responses and 0 in
  requests, and when the payload does not decode that way the other direction is tried.
* **Rows** hold the TCP header fields, the request type, every continuation field (the
  client-owned ones too), the response header (nonce, siblings, position, ucont_len), the SACK
  blocks ``(L, R, summary)``, the requested byte ranges ``(start, end)``, the DATA chunk
  (``data_start``, ``data_len``, ``fin``) and FINHINT. A segment that fails to decode (bad
  checksum, truncated, unknown type...) is kept with ``error`` = the engine's drop reason
  (``decode.checksum``, ``decode.truncated``, ...; ``snaplen`` when the capture cut the datagram).
  The TCP checksum is verified (pseudo-header protocol 6, as the codec does) unless
  ``checksums=False``. Summed per batch with numpy when it is installed (about 0.1 s per
  200,000 packets), in Python otherwise (about 2 us per full-size segment).
* **Verdicts** with the master secret: ``mac_ok`` for the continuation of every request and every
  FULL continuation of a response (pseudo-header: client IP, service IP, client port, service
  port — the TCP ports of the segment, not the UDP ones); ``nonce_ok`` for a request = every SACK
  summary equals ``r_L ^ r_(R+1)`` (None without blocks), for a response = the packet nonce
  equals ``p_k`` (FULL) or is 0 (MINIMAL: retransmissions and the FIN answer). Without the secret
  both are None. A secret that verifies none of the continuations the server itself sent is
  taken as the wrong secret: ``errors["wrong_secret"]``, a warning, and events derived as
  without a secret (the verdicts stay in the rows). Nonces are checked at 32 bits (pass a
  ``ServerConfig`` as ``config`` for another ``nonce_bits``).

Events
------
Derived from the capture in the engine's vocabulary (``side="server"`` unless noted; ``t`` = the
capture time of the packet that carried the event):

* Responses are paired with the request that produced them: same connection, TCP ``ack`` = the
  request's ``k``, and the same client-owned fields (clientState, parent, clientTimestamp), which
  every response echoes — so two requests on the same ``k`` (a SLOWSTART after a NORMAL, a
  replay) are told apart. Among several such requests the latest one before the response with a
  free matching slot wins; a request whose MAC failed is taken only when no other fits (then
  ``errors["answered_bad_mac"]`` counts it: a wrong secret, or an engine that accepted a bad MAC).
* Each valid request (in capture order) is re-planned with ``core.plan.plan_request`` — the very
  function server and client run — on its echoed continuation and SACK blocks; each response
  packet paired with it gives one event whose kind comes from the plan slot at its ``position``
  (``initial`` / ``continue`` / ``split`` / ``retransmit`` / ``bootstrap``) with ``pkt``,
  ``ack = k``, ``cwnd = plan.cwnd`` and the slot's ``ssthresh`` / ``tcp_base`` / ``state``.
* An answered request also gives ``nonce_ok`` (when it has SACK blocks), ``recovery_start``
  (``plan.recovery_start``), ``slowstart`` (SLOWSTART requests) and, for a FIN request, ``fin``.
  A SLOWSTART request gives ``timeout`` on the client side (``side="client"``) too.
* SYN-ACK -> ``syn`` (fields from its continuation; t of the SYN-ACK).
* A request with a valid plan of zero slots and no answer -> ``terminate``.
* A request answered by nothing although it should have been, in the engine's own check order:
  a decode failure -> ``drop`` ``decode.<reason>``; a SYN/type mismatch -> ``drop``; with the
  secret: key epoch outside current/previous at the capture time -> ``mac_fail`` ``key_epoch``,
  a bad MAC -> ``mac_fail``, too old / from the future -> ``stale_drop``; a bad SACK count or
  shape -> ``drop``; a wrong nonce summary -> ``nonce_fail`` (secret); a continuation already
  used for the same request type -> ``replay_drop`` (the engine's replay key, SLOWSTART buckets
  included); continuation fields no server seals (a window over the engine's limits) ->
  ``drop`` ``bad_cont`` (never planned: planning them could exhaust memory; the engine checks
  this right after the MAC); a rejected plan -> ``drop`` ``plan.<reason>``; anything else ->
  ``drop`` ``unanswered`` (lost after the capture point, or the application dropped it).
  Without the secret, a replay is still recognised when an earlier *answered* request carried
  the same MAC: with the same MAC-covered bytes it is ``replay_drop``; with different ones it
  cannot carry a valid MAC and is ``mac_fail`` (``detail.inferred = True``). Everything else is
  ``drop`` ``unanswered``.

For a capture taken at the server endpoint (``ServerLoop``/``SimNetwork`` pcap taps) the
``initial`` / ``continue`` / ``split`` / ``retransmit`` / ``bootstrap`` / ``terminate`` events —
(kind, pkt, ack, cwnd) — equal the engine's own event log. A capture taken elsewhere (client
side, mid-path) shows what reached that point: a request lost before the capture point never
appears, a response lost after it still does.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from hmac import compare_digest
from itertools import chain, repeat, starmap

from trickles_kit.capture.pcapio import read_pcap
from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.cc import MAX_CWND
from trickles_kit.core.events import Event
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.replay import slowstart_age_bucket
from trickles_kit.core.server import ServerConfig
from trickles_kit.wire.continuation import FULL1, FULL2, FULL_LEN, MINIMAL, MINIMAL_LEN
from trickles_kit.wire.delta import unpack_request
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    REQ_FIN,
    REQ_NAMES,
    REQ_SLOWSTART,
    DataChunk,
    FinHint,
    Request,
    Response,
    decode_request,
    decode_response,
)
from trickles_kit.wire.segment import FIN, SYN, decode_segment

__all__ = ["Capture", "PacketRow", "PacketStream", "decode_pcap", "derive_events",
           "PANDAS_HINT"]

PANDAS_HINT = ("pandas is needed for DataFrames: pip install pandas "
               "(or pip install -e '.[lab]')")

_U32 = 0xFFFFFFFF
_SEQ_LIMIT = _U32 - 4 * MAX_CWND  # the engine's: packet numbers never wrap in a connection
_IP = struct.Struct("!BxHxxHxBxxQ")  # vihl, total, frag, proto, both addresses
_TCP = struct.Struct("!HHIIBBHxxxxBBHH")  # the header + the first option's kind/len/ExID/value
_IPTCP = struct.Struct("!xxHxxHxBxxQHHIIBBHxxxxBBHH")  # both, for IP without options
_RESP_FULL = struct.Struct("!IBBHBIBIIIIIBIIIIIQI16s")  # response header + FULL continuation
_RESP_MIN = struct.Struct("!IBBHBIBIII")  # response header + MINIMAL continuation
_REQ_HEAD = struct.Struct("!BBIBIIIIIBIIIIIQI16sB")  # type + FULL continuation + numSacks
_SACK = struct.Struct("!III")
_RANGE = struct.Struct("!II")
_U32S = struct.Struct("!I")
_PSEUDO = struct.Struct("!4s4sHH")
_RESP_FULL_LEN = 8 + FULL_LEN
_RESP_MIN_LEN = 8 + MINIMAL_LEN
_REQ_HEAD_LEN = _REQ_HEAD.size
_FAST_REQ_TYPES = frozenset((0, 1, 3))  # NORMAL, SLOWSTART, FIN: a FULL continuation follows
_FULL_TYPES = frozenset((FULL1, FULL2))
_REQ_NAME = [REQ_NAMES.get(i) for i in range(256)]
_SACKS_N = [struct.Struct(f"!{3 * i}I").unpack_from for i in range(65)]  # n blocks, flat
_PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 41: "ipv6_in_ip", 47: "gre",
                50: "esp", 89: "ospf", 132: "sctp"}


@dataclass(slots=True)
class PacketRow:
    """One Trickles segment of the capture. Fields that do not apply are None."""

    index: int  # record number in the capture (0-based, counting every record)
    t: float  # capture timestamp, seconds
    direction: str  # "request" (client -> service) | "response"
    src: str
    dst: str
    sport: int  # TCP ports of the segment (the Trickles ports, also under UDP)
    dport: int
    carrier: str  # "ip253" | "tcp" | "udp"
    length: int  # IP datagram length
    seq: int  # TCP seq: packet number (response) / request counter (request)
    ack: int  # TCP ack: k
    flags: int  # TCP flags (FIN 1, SYN 2, RST 4, PSH 8, ACK 16)
    window: int
    trickles_len: int  # the Trickles option's value
    req_type: str | None = None  # NORMAL | SLOWSTART | SYN | FIN (requests)
    cont_type: int | None = None  # MINIMAL 0, FULL1 1, FULL2 2
    cont_seq: int | None = None
    first_child: int | None = None
    client_state: int | None = None
    parent: int | None = None
    client_timestamp: int | None = None
    timestamp: int | None = None
    mrtt: int | None = None
    state: int | None = None
    first_loss: int | None = None
    first_bootstrap_seq: int | None = None
    start_cwnd: int | None = None
    ssthresh: int | None = None
    tcp_base: int | None = None
    conn_id: int | None = None
    key_epoch: int | None = None
    mac: bytes | None = None
    nonce: int | None = None  # response header
    siblings: int | None = None
    position: int | None = None
    ucont_len: int | None = None
    sacks: list | None = None  # [(L, R, summary)]
    ranges: list | None = None  # [(start, end)]
    app_len: int | None = None  # request: application bytes
    data_start: int | None = None  # response: first DATA chunk's byte offset
    data_len: int = 0
    fin: bool = False  # a DATA chunk with the FIN flag
    finhint: int | None = None
    mac_ok: bool | None = None
    nonce_ok: bool | None = None
    error: str | None = None

    @property
    def k(self) -> int | None:
        """The packet number a request acknowledges (its continuation's seq)."""
        return self.cont_seq if self.direction == "request" else self.ack

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in ROW_FIELDS}


ROW_FIELDS = tuple(f.name for f in fields(PacketRow))
NF = len(ROW_FIELDS)
_ERR_AT = ROW_FIELDS.index("error")
_DIR_AT = ROW_FIELDS.index("direction")
_MACOK_AT = ROW_FIELDS.index("mac_ok")
EVENT_FIELDS = tuple(f.name for f in fields(Event))


class Capture:
    """A decoded capture: rows, events and the error counter.

    The decoder stores the packet table flat (`ROW_FIELDS` values per packet, one list; SACK
    blocks and byte ranges in two value lists, see `_ragged`): a quarter-million `PacketRow`
    objects cost more than decoding their fields, and a table (`columns()`, `packets_df()`)
    needs none. `packets` builds the rows on first access and keeps them: from then on they are
    the table (edits to a row show in `packets_df()`).
    """

    def __init__(self, path: str, packets: list[PacketRow] | None = None,
                 events: list[Event] | None = None, errors: Counter | None = None,
                 format: str = "", linktypes: set | None = None, truncated: bool = False,
                 warning: str | None = None, service_ports: set | None = None,
                 secret_used: bool = False, events_derived: bool = False) -> None:
        self.path = path
        self._rows: list[PacketRow] | None = packets if packets is not None else []
        self._flat: list | None = None
        self._ragged: tuple[list, list] = ([], [])
        self.events: list[Event] = events if events is not None else []
        self.errors: Counter = errors if errors is not None else Counter()
        self.format = format
        self.linktypes: set = linktypes if linktypes is not None else set()
        self.truncated = truncated
        self.warning = warning
        self.service_ports: set = service_ports if service_ports is not None else set()
        self.secret_used = secret_used
        self.events_derived = events_derived
        self._n_streamed: int | None = None  # a PacketStream's count (it keeps no rows)

    def __repr__(self) -> str:
        return (f"Capture(path={self.path!r}, packets={self.n_packets}, "
                f"events={len(self.events)}, errors={dict(self.errors)!r})")

    @property
    def packets(self) -> list[PacketRow]:
        """One `PacketRow` per Trickles segment, in capture order (built on first access)."""
        if self._rows is None:
            self._rows = _rows_of(self._flat or [], *self._ragged)
            self._flat, self._ragged = None, ([], [])
        return self._rows

    @packets.setter
    def packets(self, rows: list[PacketRow]) -> None:
        self._rows, self._flat, self._ragged = rows, None, ([], [])

    def _set_flat(self, flat: list, svals: list, rvals: list) -> None:
        self._rows, self._flat, self._ragged = None, flat, (svals, rvals)

    @property
    def n_packets(self) -> int:
        """len(packets), without building the rows (for a `PacketStream`: rows streamed)."""
        if self._n_streamed is not None:
            return self._n_streamed
        return len(self._rows) if self._rows is not None else len(self._flat or ()) // NF

    def columns(self) -> dict[str, list]:
        """The packet table as {field: list of values} in `ROW_FIELDS` order (no row objects)."""
        if self._rows is not None:
            get = _row_getter()
            vals = list(zip(*map(get, self._rows), strict=True)) if self._rows else [()] * NF
            return {f: list(v) for f, v in zip(ROW_FIELDS, vals, strict=True)}
        flat = self._flat or []
        cols = {f: flat[i::NF] for i, f in enumerate(ROW_FIELDS)}
        svals, rvals = self._ragged
        cols["sacks"] = [_ragged(c, svals, 3) for c in cols["sacks"]]
        cols["ranges"] = [_ragged(c, rvals, 2) for c in cols["ranges"]]
        return cols

    def event_counts(self) -> Counter:
        return Counter(e.kind for e in self.events)

    def flagged(self) -> list[PacketRow]:
        return [r for r in self.packets if r.error is not None]

    def packets_df(self):
        pd = _pandas()
        cols = self.columns()
        n = len(cols["index"])
        if not n:
            return pd.DataFrame.from_records([], columns=list(ROW_FIELDS))
        cols["mac"] = [m.hex() if m is not None else None for m in cols["mac"]]
        return pd.DataFrame(cols, columns=list(ROW_FIELDS))

    def events_df(self):
        pd = _pandas()
        rows = [(e.kind, e.t, e.side, e.conn_id, e.pkt, e.ack, e.cwnd, e.ssthresh, e.tcp_base,
                 e.state, e.detail) for e in self.events]
        return pd.DataFrame.from_records(rows, columns=list(EVENT_FIELDS))

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.event_counts().items()))
        errs = ", ".join(f"{k} {n}" for k, n in sorted(self.errors.items()) if "." not in k)
        out = [f"{self.n_packets} Trickles packets"
               + (f", {len(self.events)} events" if self.events_derived else "")]
        if kinds:
            out.append(f"events: {kinds}")
        if errs:
            out.append(f"skipped/flagged: {errs}")
        if self.warning:
            out.append(f"warning: {self.warning}")
        return "\n".join(out)


def _rows_of(flat: list, svals: list, rvals: list) -> list[PacketRow]:
    """PacketRow objects of a flat table (`NF` values per row)."""
    with _no_gc():
        rows = list(starmap(PacketRow, zip(*[iter(flat)] * NF, strict=False)))
        for r in rows:
            if type(r.sacks) is int:
                r.sacks = _ragged(r.sacks, svals, 3)
                r.ranges = _ragged(r.ranges, rvals, 2)
    return rows


def _ragged(cell, vals: list, width: int):
    """A SACK-block / byte-range cell of the flat table as the row's list of tuples.

    A fast-path request stores ``(offset << 7) | count`` (count <= 64) for `count` tuples of
    `width` values at vals[offset:]; any other cell (None, or a general-path row's list) is the
    value itself.
    """
    if type(cell) is not int:
        return cell
    o, n = cell >> 7, cell & 127
    if n == 1:
        return [tuple(vals[o : o + width])]
    return [tuple(vals[i : i + width]) for i in range(o, o + n * width, width)]


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(PANDAS_HINT) from None
    return pd


def _row_getter():
    from operator import attrgetter

    return attrgetter(*ROW_FIELDS)


# ---------------------------------------------------------------------------- packets
class _Verifier:
    """MAC and nonce checks given the master secret."""

    def __init__(self, secret: bytes, cfg) -> None:
        self.keys = KeyRing(secret, cfg.epoch_seconds, cfg.max_seals)
        self.nonces = NonceGen(self.keys.nonce_key, cfg.nonce_bits)
        self._hashers: dict[int, object] = {}

    def mac_ok(self, pseudo: bytes, raw: bytes, epoch: int) -> bool:
        h = self._hashers.get(epoch)
        if h is None:
            if len(self._hashers) > 64:
                self._hashers.clear()
            h = self.keys.mac_hasher(epoch)
            self._hashers[epoch] = h
        h = h.copy()  # type: ignore[attr-defined]
        h.update(pseudo + raw[0:6] + raw[18:59])
        return compare_digest(h.digest(), raw[59:75])

    def sacks_ok(self, conn_id: int, base: int, sacks: list) -> bool | None:
        if not sacks:
            return None
        summary = self.nonces.range_summary
        return all(summary(conn_id, base, left, right) == s for left, right, s in sacks)


def _default_config():
    return ServerConfig()


def decode_pcap(path: str | os.PathLike[str], secret: bytes | None = None,
                service_port: int | None = None, *, config=None,
                events: bool = True, checksums: bool = True) -> Capture:
    """Decode `path` (pcap or pcapng). See the module docstring for every rule.

    `secret` (the master secret) enables the MAC and nonce verdicts; `service_port` fixes the
    direction rule; `config` (a `ServerConfig`) supplies the server settings the checks depend on
    (max_gap, max_sacks, nonce_bits, freshness, key epochs; defaults otherwise); `events=False`
    skips the event derivation (the fast path: reading + wire decode into the packet table);
    `checksums=False` skips the TCP checksum check.
    Raises `PcapError` for a file that is not a readable capture.

    The capture is read a window at a time (see `pcapio`): memory grows with the Trickles
    packets kept in the table, never with the file's size. `PacketStream` decodes the same rows
    batch by batch without keeping them.
    """
    cfg = config if config is not None else _default_config()
    verifier = _make_verifier(secret, cfg)
    promote = gc.isenabled()
    with read_pcap(path) as reader, _no_gc():
        cap = Capture(str(path), format=reader.format, secret_used=verifier is not None)
        flat, svals, rvals, cap.service_ports = _decode_rows(
            reader.spans(), service_port, verifier, cap.errors, checksums, promote)
        cap._set_flat(flat, svals, rvals)
        _finish(cap, reader)
    if verifier is not None and _wrong_secret(cap):
        _note_wrong_secret(cap)
        verifier = None
    if events:
        with _no_gc():
            cap.events = derive_events(cap.packets, config=cfg, errors=cap.errors,
                                       verifier=verifier)
        cap.events_derived = True
    return cap


class PacketStream:
    """`decode_pcap(path, ..., events=False)` batch by batch, in bounded memory.

    Iterate it for lists of `PacketRow` (one list per batch the reader reads, in capture order):
    the very rows ``decode_pcap(...).packets`` holds, but none is kept, so memory stays bounded
    (a window of the file and one batch of rows) however large the capture. `capture` is a
    `Capture` without rows whose ``errors``, ``warning``, ``truncated``, ``linktypes``,
    ``service_ports`` and ``n_packets`` are final once the iteration has ended — the same
    values, ``summary()`` included, as `decode_pcap` gives. Events are not derived: pairing
    responses with requests needs the whole table (use `decode_pcap`).

    Raises `PcapError` when the file is not a readable capture (at once) and when a corrupt
    record is met (while iterating: the rows before it were yielded). A context manager;
    iterating to the end closes the file.
    """

    def __init__(self, path: str | os.PathLike[str], secret: bytes | None = None,
                 service_port: int | None = None, *, config=None,
                 checksums: bool = True) -> None:
        cfg = config if config is not None else _default_config()
        self._verifier = _make_verifier(secret, cfg)
        self._service_port = service_port
        self._checksums = checksums
        self._reader = read_pcap(path)
        self.capture = Capture(str(path), format=self._reader.format,
                               secret_used=self._verifier is not None)
        self.capture._n_streamed = 0
        self._started = False

    def __iter__(self) -> Iterator[list[PacketRow]]:
        if self._started:
            raise RuntimeError("a PacketStream is iterated once")
        self._started = True
        cap = self.capture
        verifier = self._verifier
        flat: list = []
        svals: list[int] = []
        rvals: list[int] = []
        ports: set[int] = set()
        seen = verified = False  # server-emitted FULL continuations judged / one verified
        batches = _decode_batches(self._reader.spans(), self._service_port, verifier,
                                  cap.errors, self._checksums, False, flat, svals, rvals, ports)
        try:
            while True:
                with _no_gc():
                    if not next(batches, False):
                        break
                    rows = _rows_of(flat, svals, rvals)
                flat.clear()
                svals.clear()
                rvals.clear()
                if verifier is not None and not verified:
                    for r in rows:
                        if r.direction == "response" and r.mac_ok is not None:
                            seen = True
                            if r.mac_ok:
                                verified = True
                                break
                cap._n_streamed += len(rows)
                if rows:
                    yield rows
        finally:
            batches.close()
        cap.service_ports = ({self._service_port} if self._service_port is not None
                             else ports)
        _finish(cap, self._reader)
        if seen and not verified:
            _note_wrong_secret(cap)
        self.close()

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> PacketStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_verifier(secret: bytes | None, cfg) -> _Verifier | None:
    if secret is not None and not isinstance(secret, bytes | bytearray):
        raise TypeError("secret must be bytes (the master secret), e.g. bytes.fromhex(text)")
    return _Verifier(bytes(secret), cfg) if secret is not None else None


def _finish(cap: Capture, reader) -> None:
    """The reader's findings into the capture: link types, truncation, frames skipped."""
    cap.linktypes = set(reader.linktypes)
    cap.truncated = reader.truncated
    cap.warning = reader.warning
    for why, n in reader.skipped.items():
        cap.errors["not_trickles"] += n
        cap.errors["not_trickles." + why] += n
    if reader.truncated:
        cap.errors["truncated_file"] += 1


def _note_wrong_secret(cap: Capture) -> None:
    cap.errors["wrong_secret"] += 1
    note = ("the secret verifies none of the continuations the server sent: wrong secret? "
            "(events derived as without a secret)")
    cap.warning = f"{cap.warning}; {note}" if cap.warning else note


def _wrong_secret(cap: Capture) -> bool:
    """True when server-emitted FULL continuations exist and not one verifies."""
    flat = cap._flat
    pairs = (zip(flat[_DIR_AT::NF], flat[_MACOK_AT::NF], strict=True) if flat is not None
             else ((r.direction, r.mac_ok) for r in cap.packets))
    seen = False
    for direction, ok in pairs:
        if direction == "response" and ok is not None:
            if ok:
                return False
            seen = True
    return seen


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic GC while building many rows: they hold no cycles, and full collections
    over a growing list of containers would otherwise dominate (3x on 200k packets)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _decode_rows(spans: Iterable[tuple], service_port: int | None,
                 verifier: _Verifier | None, errors: Counter,
                 checksums: bool = True, promote: bool = False) -> tuple[list, list, list, set]:
    """The table of every Trickles segment in `spans` (`PcapReader.spans` batches), flat: `NF`
    values per row in `ROW_FIELDS` order, its two value lists and the service ports."""
    flat: list = []
    svals: list[int] = []
    rvals: list[int] = []
    syn_ports: set[int] = set()
    for _ in _decode_batches(spans, service_port, verifier, errors, checksums, promote, flat,
                             svals, rvals, syn_ports):
        pass
    return flat, svals, rvals, ({service_port} if service_port is not None else syn_ports)


MAX_NAMES = 1 << 16  # cached address pairs (a cache: cleared when full, memory stays bounded)


def _decode_batches(spans: Iterable[tuple], service_port: int | None,
                    verifier: _Verifier | None, errors: Counter, checksums: bool, promote: bool,
                    flat: list, svals: list, rvals: list, syn_ports: set
                    ) -> Iterator[bool]:
    """Append the rows of each batch of `spans` to `flat` (`NF` values per row in `ROW_FIELDS`
    order; SACK blocks and ranges of fast-path requests to `svals` / `rvals`), then yield True:
    the caller may take the batch's rows and clear the three lists (offsets in a batch are
    relative to the lists' contents at its start) — or let them grow into one table. Service
    ports learned from SYNs go to `syn_ports`. The hot loop.

    A fast-path row is one tuple extended into the list (nothing per row outlives the loop);
    a row of the general path is a PacketRow flattened the same way. The SACK blocks and byte
    ranges of a fast-path request go to two value lists (`_ragged`), so that no per-row
    container is made: a quarter-million small lists and tuples cost more in allocation and
    garbage-collector passes than decoding them. Offsets are absolute in
    the batch's buffer (datagram = buf[b:e]). TCP checksums of IPv4 datagrams without options
    come precomputed per batch when numpy is there (`_batch_checksums`); any other is summed
    here (`_cksum_ok`).
    """
    extend = flat.extend
    names: dict[int, tuple[str, str, bytes, bytes]] = {}
    ip_unpack = _IP.unpack_from
    tcp_unpack = _TCP.unpack_from
    iptcp_unpack = _IPTCP.unpack_from
    request_row = _request_row
    response_row = _response_row
    req_unpack = _REQ_HEAD.unpack_from
    resp_unpack = _RESP_FULL.unpack_from
    u32_unpack = _U32S.unpack_from
    range_iter = _RANGE.iter_unpack
    sack_unpack = _SACK.unpack_from
    range_unpack = _RANGE.unpack_from
    flatten = _row_getter()
    cksum_ok = _cksum_ok
    fast_req = _FAST_REQ_TYPES
    full_types = _FULL_TYPES
    req_name = _REQ_NAME
    fixed = service_port is not None
    index = -1
    not_trickles = 0
    no_verdicts = repeat(None)
    # svals: SACK block values of fast-path request rows, see `_ragged`; rvals: their byte
    # ranges (start, end)
    svals_extend = svals.extend
    rvals_extend = rvals.extend
    sacks_n = _SACKS_N
    if promote:
        # the table's three lists live as long as the Capture and will hold millions of
        # references: a young-generation collection now (a few thousand objects) moves them,
        # still empty, to the oldest generation, so that no young pass ever walks them — that
        # walk, all items cache-cold, cost about a tenth of the decode
        gc.collect(1)
    for d, tss, starts, ends in spans:
        if len(names) > MAX_NAMES:
            names.clear()
        verdicts = _batch_checksums(d, starts, ends) if checksums else None
        for ts, b, e, ok in zip(tss, starts, ends, verdicts or no_verdicts,
                                strict=False):
            index += 1
            n = e - b
            if n < 20:
                not_trickles += 1
                errors["not_trickles.ip_short"] += 1
                continue
            if d[b] == 0x45 and n >= 48 and d[b + 9] != 17:
                # no IP options, raw IP 253 / TCP: IP and TCP headers in one unpack
                (total, frag, proto, addrs, sport, dport, seq, ack, offb, flags, win, okind,
                 olen, exid, tlen) = iptcp_unpack(d, b)
                p0 = b + 20
                if frag & 0x3FFF or (proto != 253 and proto != 6):
                    not_trickles += 1
                    errors["not_trickles." + ("fragment" if frag & 0x3FFF else _PROTO_NAMES.get(
                        proto, f"proto_{proto}"))] += 1
                    continue
                carrier = "ip253" if proto == 253 else "tcp"
                cut = total > n
                end = e if cut or total < 20 else b + total
                seglen = end - p0
            else:
                ok = None  # (the batch verdicts assume this layout)
                vihl, total, frag, proto, addrs = ip_unpack(d, b)
                ihl = (vihl & 15) << 2
                if vihl >> 4 != 4 or ihl < 20 or ihl > n:
                    not_trickles += 1
                    errors["not_trickles.ip_header"] += 1
                    continue
                if frag & 0x3FFF:
                    not_trickles += 1
                    errors["not_trickles.fragment"] += 1
                    continue
                if proto == 253:
                    carrier = "ip253"
                    p0 = b + ihl
                elif proto == 17:
                    carrier = "udp"
                    p0 = b + ihl + 8
                elif proto == 6:
                    carrier = "tcp"
                    p0 = b + ihl
                else:
                    not_trickles += 1
                    errors["not_trickles." + _PROTO_NAMES.get(proto, f"proto_{proto}")] += 1
                    continue
                cut = total > n
                end = e if cut or total < ihl else b + total
                seglen = end - p0
                if seglen < 26:
                    if carrier != "ip253" or seglen < 4:
                        not_trickles += 1
                        errors["not_trickles." + ("short" if carrier == "ip253" else carrier)] \
                            += 1
                        continue
                    extend(flatten(_bad_row(index, ts, d, p0, end, _names(names, addrs),
                                            carrier, total, "decode.short")))
                    errors["flagged"] += 1
                    errors["flagged.decode.short"] += 1
                    continue
                (sport, dport, seq, ack, offb, flags, win, okind, olen, exid,
                 tlen) = tcp_unpack(d, p0)
            hlen = (offb >> 4) << 2
            if not (okind == 253 and olen == 6 and exid == 0x544B and 28 <= hlen <= seglen):
                # not our encoder's layout: scan the options the codec's way
                if seglen < 20 or hlen < 20 or hlen > seglen:
                    reason = "short" if seglen < 20 else "offset"
                else:
                    try:  # the codec's own option scan (no addresses: no checksum here)
                        tlen = decode_segment(d[p0:end]).trickles_len
                        reason = ""
                    except DecodeError as ex:
                        reason = ex.reason
                if reason:
                    if carrier != "ip253":
                        not_trickles += 1
                        errors["not_trickles." + carrier] += 1
                        continue
                    extend(flatten(_bad_row(index, ts, d, p0, end, _names(names, addrs),
                                            carrier, total, "decode." + reason)))
                    errors["flagged"] += 1
                    errors["flagged.decode." + reason] += 1
                    continue
            if cut:
                err = "snaplen"
            elif not checksums:
                err = None
            else:
                if ok is None:
                    ok = cksum_ok(d, b, p0, end, seglen)
                err = None if ok else "decode.checksum"
            if flags & SYN:
                # the role, not the flags, says which end is the service: a request carries
                # option value 0, an answer its header length (a client may send SYN|ACK)
                syn_ports.add(dport if tlen == 0 else sport)
            nm = names.get(addrs)
            if nm is None:
                nm = _names(names, addrs)
            src, dst, src_b, dst_b = nm
            if fixed:
                by_port = dport == service_port or sport == service_port
                is_req = dport == service_port if by_port else tlen == 0
            elif syn_ports:
                by_port = dport in syn_ports or sport in syn_ports
                is_req = dport in syn_ports if by_port else tlen == 0
            else:
                by_port = False
                is_req = tlen == 0
            p = p0 + hlen
            np = end - p
            # ---- inline fast paths: the two shapes of a bulk transfer (codec layouts, docs §2)
            if is_req:
                if (np >= 77 and d[p] in fast_req and d[p + 1] in full_types
                        and d[p + 27] < 3):
                    (rtype, ctype, cseq, fc, cs, par, cts, sts, mrtt, state, fl, fbs, sc, ss,
                     base, cid, epoch, mac, nsacks) = req_unpack(d, p)
                    q = p + 77 + 12 * nsacks
                    if nsacks <= 64 and q + 3 <= end:
                        # the blocks' values (L, R, summary, L, ...): see `_ragged`
                        sk = sack_unpack(d, p + 77) if nsacks == 1 else sacks_n[nsacks](d, p + 77)
                        ulen = (d[q] << 8) | d[q + 1]
                        o = q + 2 + ulen
                        if o < end:
                            nr = d[o]
                            q = o + 1 + 8 * nr
                            if nr <= 64 and q <= end:
                                if nr == 1:
                                    lo, hi = range_unpack(d, o + 1)
                                    hi += lo
                                    rk = (lo, hi)
                                else:
                                    rk = tuple(chain.from_iterable(
                                        (x, x + y) for x, y in range_iter(d[o + 1 : q])))
                                    hi = max(rk[1::2]) if nr else 0
                                if hi <= 0x100000000:
                                    mac_ok = nonce_ok = None
                                    if verifier is not None:
                                        mac_ok = verifier.mac_ok(
                                            _PSEUDO.pack(src_b, dst_b, sport, dport),
                                            d[p + 1 : p + 76], epoch)
                                        nonce_ok = verifier.sacks_ok(
                                            cid, base, list(zip(*[iter(sk)] * 3, strict=True)))
                                    sacks = (len(svals) << 7) | nsacks
                                    svals_extend(sk)
                                    ranges = (len(rvals) << 7) | nr
                                    rvals_extend(rk)
                                    if err is not None:
                                        errors["flagged"] += 1
                                        errors["flagged." + err] += 1
                                    extend((index, ts, "request", src, dst, sport, dport,
                                            carrier, total, seq, ack, flags, win, tlen,
                                            req_name[rtype], ctype, cseq, fc, cs, par, cts, sts,
                                            mrtt, state, fl, fbs, sc, ss, base, cid, epoch, mac,
                                            None, None, None, ulen, sacks, ranges, end - q, None,
                                            0, False, None, mac_ok, nonce_ok, err))
                                    continue
            elif np >= 83 and d[p + 8] in full_types and d[p + 34] < 3:
                (nonce, sib, pos, ulen, ctype, cseq, fc, cs, par, cts, sts, mrtt, state, fl, fbs,
                 sc, ss, base, cid, epoch, mac) = resp_unpack(d, p)
                c = p + 83 + ulen
                if c <= end:
                    ds = fh = None
                    dl = 0
                    fin = False
                    cerr = None
                    if c < end:
                        tf = d[c]
                        clen = (d[c + 1] << 8) | d[c + 2] if c + 3 <= end else 0
                        if tf >> 4 == 2 and c + clen == end and clen >= 7:  # one DATA chunk
                            ds = u32_unpack(d, c + 3)[0]
                            dl = clen - 7
                            fin = bool(tf & 1)
                        else:
                            ds, dl, fin, fh, cerr = _chunks(d, c, end)
                    if cerr is not None and not by_port:
                        c = -1  # maybe not a response after all: the general path tries both
                    elif err is None:
                        err = cerr
                if 0 <= c <= end:
                    mac_ok = nonce_ok = None
                    if verifier is not None:
                        mac_ok = verifier.mac_ok(_PSEUDO.pack(dst_b, src_b, dport, sport),
                                                 d[p + 8 : p + 83], epoch)
                        nonce_ok = verifier.nonces.packet_nonce(cid, base, cseq) == nonce
                    if err is not None:
                        errors["flagged"] += 1
                        errors["flagged." + err] += 1
                    extend((index, ts, "response", src, dst, sport, dport, carrier, total, seq,
                            ack, flags, win, tlen, None, ctype, cseq, fc, cs, par, cts, sts,
                            mrtt, state, fl, fbs, sc, ss, base, cid, epoch, mac, nonce, sib, pos,
                            ulen, None, None, None, ds, dl, fin, fh, mac_ok, nonce_ok, err))
                    continue
            # ---- the general path (every other shape, errors, the other direction on failure)
            head = (index, ts, "", src, dst, sport, dport, carrier, total, seq, ack, flags, win,
                    tlen)
            if is_req:
                row = request_row(head, d, p, end, err, src_b, dst_b, verifier)
                if row.error is not None and row.error != err and not by_port:
                    alt = response_row(head, d, p, end, err, src_b, dst_b, verifier)
                    if alt.error == err:
                        row = alt
            else:
                row = response_row(head, d, p, end, err, src_b, dst_b, verifier)
                if row.error is not None and row.error != err and not by_port:
                    alt = request_row(head, d, p, end, err, src_b, dst_b, verifier)
                    if alt.error == err:
                        row = alt
            if row.error is not None:
                errors["flagged"] += 1
                errors["flagged." + row.error] += 1
            extend(flatten(row))
        if not_trickles:
            errors["not_trickles"] += not_trickles
            not_trickles = 0
        yield True


def _names(names: dict, addrs: int) -> tuple[str, str, bytes, bytes]:
    """(src, dst, src bytes, dst bytes) of the IPv4 address pair `addrs` (a 64-bit int)."""
    nm = names.get(addrs)
    if nm is None:
        src_b, dst_b = (addrs >> 32).to_bytes(4, "big"), (addrs & _U32).to_bytes(4, "big")
        nm = names[addrs] = (socket.inet_ntoa(src_b), socket.inet_ntoa(dst_b), src_b, dst_b)
    return nm


def _cksum_ok(d, b: int, p0: int, end: int, seglen: int) -> bool:
    """The TCP checksum of segment d[p0:end] of the datagram at d[b:] (pseudo-header protocol
    6, as the codec)."""
    # the ones'-complement sum of 16-bit words is the big-endian integer mod 0xFFFF
    # (2^16 = 1); with no IP options the addresses and the segment are contiguous
    v = int.from_bytes(d[b + 12 if p0 == b + 20 else p0 : end], "big") % 0xFFFF
    if seglen & 1:  # the pad byte: (segment | 0) = segment * 256
        v <<= 8
    if p0 != b + 20:
        v += int.from_bytes(d[b + 12 : b + 20], "big")
    return not (v + 6 + seglen) % 0xFFFF


MIN_NUMPY = 256  # batches smaller than this are summed in Python (no numpy import)


def _batch_checksums(buf, starts: list[int], ends: list[int]) -> list[bool] | None:
    """TCP checksum verdicts of a batch, for the loop's no-IP-options layout, with numpy.

    Per datagram buf[b:e] whose first byte is 0x45 (others get a meaningless value the loop
    ignores): the sum of buf[b+12:end] (addresses + segment), end = b + the IP total length
    unless that is out of bounds (then e), as `_cksum_ok`. 16-bit words summed per segment with
    one ``add.reduceat`` per word alignment, on the buffer itself (the mapped file): a few ns
    per segment instead of about 2 us for Python's big-int conversion of a full-size segment.
    None (the loop sums in Python) when numpy is missing or the batch is small.
    """
    k = len(starts)
    if k < MIN_NUMPY:
        return None
    np = _numpy()
    if np is None:
        return None
    size = len(buf)
    u8 = np.frombuffer(buf, dtype=np.uint8)
    b = np.array(starts, dtype=np.int64)
    e = np.array(ends, dtype=np.int64)
    n = e - b
    hb = np.minimum(b + 3, size - 1)  # the total-length bytes (in bounds for any datagram)
    total = (u8[hb - 1].astype(np.int64) << 8) | u8[hb]
    end = np.where((total > n) | (total < 20), e, b + total)
    start = np.minimum(b + 12, end)  # empty for short datagrams (not judged here)
    words = (end - start) >> 1
    sums = np.zeros(k, dtype=np.int64)
    for par in (0, 1):  # segments at even / odd offsets of the buffer
        sel = np.flatnonzero(((start & 1) == par) & (words > 0))
        if not len(sel):
            continue
        # the batch's part of the buffer only: reduceat's last sum runs to the array's end
        first = int(start[sel[0]])
        base = first - ((first - par) & 1)
        count = min((int(end[sel].max()) - base) >> 1, (size - base) >> 1)
        w = np.frombuffer(buf, dtype="<u2", offset=base, count=count)
        a = (start[sel] - base) >> 1
        idx = np.empty(2 * len(sel), dtype=np.int64)
        idx[0::2] = a
        idx[1::2] = np.minimum(a + words[sel], len(w) - 1)
        # a segment's sum fits 32 bits (at most 32767 words of 0xFFFF)
        s = np.add.reduceat(w, idx, dtype=np.uint32)[0::2].astype(np.int64)
        for i in np.flatnonzero(a + words[sel] == len(w)).tolist():  # ends the buffer
            s[i] = int(w[a[i]:].sum(dtype=np.uint64))
        sums[sel] = s % 0xFFFF
    # little-endian words: the big-endian sum is 256 x the little-endian one (mod 0xFFFF)
    v = sums * 256
    seglen = end - b - 20
    odd = np.flatnonzero((seglen & 1) & (end > start))
    if len(odd):  # the pad byte: the last byte, high half of a word
        v[odd] += u8[end[odd] - 1].astype(np.int64) << 8
    v += seglen + 6
    ok = (v % 0xFFFF) == 0
    return ok.tolist()


_NUMPY: list = []


def _numpy():
    """numpy, or None when it is not installed (imported once, on the first large batch)."""
    if not _NUMPY:
        try:
            import numpy
        except ImportError:
            numpy = None
        _NUMPY.append(numpy)
    return _NUMPY[0]


def _bad_row(index, ts, d, p0, end, nm, carrier, total, error) -> PacketRow:
    seg = bytes(d[p0:end]) + b"\0" * 20
    sport, dport, seq, ack = struct.unpack_from("!HHII", seg, 0)
    flags = seg[13]
    return PacketRow(index, ts, "", nm[0], nm[1], sport, dport, carrier, total,
                     seq, ack, flags, int.from_bytes(seg[14:16], "big"), 0, error=error)


def _response_row(head: tuple, d: bytes, p: int, e: int, err: str | None, src_b: bytes,
                  dst_b: bytes, verifier: _Verifier | None) -> PacketRow:
    """Fast path for the common layouts, the codec's decode_response for anything else."""
    n = e - p
    ctype = d[p + 8] if n > 8 else -1
    if ctype in (FULL1, FULL2) and n >= _RESP_FULL_LEN and d[p + 34] <= 2:
        f = _RESP_FULL.unpack_from(d, p)
        off = p + _RESP_FULL_LEN
        full = True
    elif ctype == MINIMAL and n >= _RESP_MIN_LEN:
        f = _RESP_MIN.unpack_from(d, p)
        off = p + _RESP_MIN_LEN
        full = False
    else:
        return _response_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    ulen = f[3]
    c = off + ulen
    if c > e:
        ds, dl, fin, fh, cerr = None, 0, False, None, "decode.truncated"
    else:
        ds, dl, fin, fh, cerr = _chunks(d, c, e)
    if err is None:
        err = cerr
    mac_ok = nonce_ok = None
    if full:
        if verifier is not None:
            raw = d[p + 8 : p + _RESP_FULL_LEN]
            mac_ok = verifier.mac_ok(_PSEUDO.pack(dst_b, src_b, head[6], head[5]), raw, f[19])
            nonce_ok = verifier.nonces.packet_nonce(f[18], f[17], f[5]) == f[0]
        return PacketRow(*head[:2], "response", *head[3:], None, *f[4:21], f[0], f[1], f[2],
                         ulen, None, None, None, ds, dl, fin, fh, mac_ok, nonce_ok, err)
    if verifier is not None:
        nonce_ok = f[0] == 0
    return PacketRow(*head[:2], "response", *head[3:], None, *f[4:10], None, None, None, None,
                     None, None, None, None, None, None, None, f[0], f[1], f[2], ulen, None, None,
                     None, ds, dl, fin, fh, None, nonce_ok, err)


def _chunks(d: bytes, c: int, e: int) -> tuple[int | None, int, bool, int | None, str | None]:
    """Walk the chunks in d[c:e]: (data_start, data_len, fin, finhint, error)."""
    ds = fh = err = None
    dl = 0
    fin = False
    while c < e:
        tf = d[c]
        if tf == 0:  # one-byte pad
            c += 1
            continue
        if c + 3 > e:
            err = "decode.truncated"
            break
        clen = (d[c + 1] << 8) | d[c + 2]
        if clen < 3 or c + clen > e:
            err = "decode.chunk_len"
            break
        ct = tf >> 4
        if ct == 2:
            if clen < 7:
                err = "decode.chunk_len"
                break
            if ds is None:
                ds = _U32S.unpack_from(d, c + 3)[0]
            dl += clen - 7
            if tf & 1:
                fin = True
        elif ct == 3:
            if clen != 11:
                err = "decode.chunk_len"
                break
        elif ct == 4:
            if clen != 7:
                err = "decode.chunk_len"
                break
            fh = _U32S.unpack_from(d, c + 3)[0]
        else:
            err = "decode.chunk_type"
            break
        c += clen
    return ds, dl, fin, fh, err


def _response_row_slow(head, d, p, e, err, src_b, dst_b, verifier) -> PacketRow:
    try:
        resp = decode_response(bytes(d[p:e]))
    except DecodeError as ex:
        return PacketRow(*head[:2], "response", *head[3:], error=err or "decode." + ex.reason)
    return _row_from_response(head, resp, d, p, err, src_b, dst_b, verifier)


def _row_from_response(head, resp: Response, d, p, err, src_b, dst_b, verifier) -> PacketRow:
    c = resp.cont
    row = PacketRow(*head[:2], "response", *head[3:], error=err)
    _fill_cont(row, c)
    row.nonce, row.siblings, row.position, row.ucont_len = (
        resp.nonce, resp.num_siblings, resp.position, len(resp.ucont))
    for ch in resp.chunks:
        if isinstance(ch, DataChunk):
            if row.data_start is None:
                row.data_start = ch.byte_num
            row.data_len += len(ch.data)
            row.fin = row.fin or ch.fin
        elif isinstance(ch, FinHint):
            row.finhint = ch.byte_num
    if verifier is not None:
        if c.is_full:
            raw = bytes(d[p + 8 : p + 8 + FULL_LEN])
            row.mac_ok = verifier.mac_ok(_PSEUDO.pack(dst_b, src_b, head[6], head[5]), raw,
                                         c.key_epoch)
            row.nonce_ok = verifier.nonces.packet_nonce(c.conn_id, c.tcp_base, c.seq) == resp.nonce
        else:
            row.nonce_ok = resp.nonce == 0
    return row


def _fill_cont(row: PacketRow, c) -> None:
    row.cont_type, row.cont_seq, row.first_child = c.type, c.seq, c.first_child
    row.client_state, row.parent, row.client_timestamp = c.client_state, c.parent, \
        c.client_timestamp
    if c.is_full:
        row.timestamp, row.mrtt, row.state, row.first_loss = c.timestamp, c.mrtt, c.state, \
            c.first_loss
        row.first_bootstrap_seq, row.start_cwnd, row.ssthresh, row.tcp_base = (
            c.first_bootstrap_seq, c.start_cwnd, c.ssthresh, c.tcp_base)
        row.conn_id, row.key_epoch, row.mac = c.conn_id, c.key_epoch, bytes(c.mac)


def _request_row(head: tuple, d: bytes, p: int, e: int, err: str | None, src_b: bytes,
                 dst_b: bytes, verifier: _Verifier | None) -> PacketRow:
    """Fast path for NORMAL / SLOWSTART / FIN with a FULL continuation; the codec otherwise."""
    n = e - p
    if not (n >= _REQ_HEAD_LEN and d[p] in (0, 1, 3) and d[p + 1] in (FULL1, FULL2)
            and d[p + 27] <= 2):
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    f = _REQ_HEAD.unpack_from(d, p)
    nsacks = f[18]
    off = p + _REQ_HEAD_LEN
    end = off + 12 * nsacks
    if nsacks > 64 or end + 3 > e:
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    sacks = list(_SACK.iter_unpack(d[off:end])) if nsacks else []
    ulen = (d[end] << 8) | d[end + 1]
    off = end + 2 + ulen
    if off >= e:
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    nr = d[off]
    off += 1
    end = off + 8 * nr
    if nr > 64 or end > e:
        return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
    ranges = []
    if nr:
        for start, length in _RANGE.iter_unpack(d[off:end]):
            if start + length > 0x100000000:
                return _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier)
            ranges.append((start, start + length))
    mac_ok = nonce_ok = None
    if verifier is not None:
        mac_ok = verifier.mac_ok(_PSEUDO.pack(src_b, dst_b, head[5], head[6]),
                                 d[p + 1 : p + 1 + FULL_LEN], f[16])
        nonce_ok = verifier.sacks_ok(f[15], f[14], sacks)
    return PacketRow(*head[:2], "request", *head[3:], REQ_NAMES[f[0]], *f[1:18], None, None,
                     None, ulen, sacks, ranges, e - end, None, 0, False, None, mac_ok, nonce_ok,
                     err)


def _request_row_slow(head, d, p, e, err, src_b, dst_b, verifier) -> PacketRow:
    payload = bytes(d[p:e])
    try:
        if payload and payload[0] & 0xC0:  # delta-encoding flags (docs/protocol.md §14.3)
            # read it as a server with the option on would: flags off, a COMPACT form expanded
            # (its key epoch is the current or previous one; the capture's clock gives which)
            epoch_s = verifier.keys.epoch_seconds if verifier else _default_config().epoch_seconds
            _, payload = unpack_request(payload, head[10], int(head[1] // epoch_s), True)
        req = decode_request(payload)
    except DecodeError as ex:
        return PacketRow(*head[:2], "request", *head[3:], error=err or "decode." + ex.reason)
    return _row_from_request(head, req, err, src_b, dst_b, verifier)


def _row_from_request(head, req: Request, err, src_b, dst_b, verifier) -> PacketRow:
    row = PacketRow(*head[:2], "request", *head[3:], REQ_NAMES[req.type], error=err)
    row.ucont_len = len(req.ucont)
    row.sacks = [tuple(b) for b in req.sacks]
    row.ranges = list(req.ranges)
    row.app_len = len(req.app)
    if req.cont is not None:
        _fill_cont(row, req.cont)
        if verifier is not None:
            row.mac_ok = verifier.mac_ok(_PSEUDO.pack(src_b, dst_b, head[5], head[6]),
                                         req.cont_raw, req.cont.key_epoch)
            row.nonce_ok = verifier.sacks_ok(req.cont.conn_id, req.cont.tcp_base, row.sacks)
    return row


# ---------------------------------------------------------------------------- events
class _Req:
    """A request awaiting its answers while the capture is walked."""

    __slots__ = ("row", "plan", "filled", "answered", "plan_error")

    def __init__(self, row: PacketRow, plan: pl.Plan | None) -> None:
        self.row = row
        self.plan = plan
        self.plan_error: str | None = None
        self.filled = [False] * len(plan.slots) if plan is not None else [False]
        self.answered = 0


def _sack_problem(row: PacketRow, cfg) -> str | None:
    """The engine's SACK shape checks (no secret needed): 'sack_count' | 'sack_shape' | None."""
    sacks = row.sacks or []
    if len(sacks) > cfg.max_sacks:
        return "sack_count"
    k = row.cont_seq
    low = row.tcp_base - 8192
    prev = -1
    for left, right, _ in sacks:
        if left <= prev or right < left or right > k or left < low:
            return "sack_shape"
        prev = right
    return None


def _bad_cont(row: PacketRow) -> bool:
    """The engine's refusal of a (MAC-valid) continuation with fields it never produces."""
    c0 = row.start_cwnd
    return (not 1 <= c0 <= row.ssthresh or c0 > MAX_CWND or row.cont_seq > _SEQ_LIMIT
            or (row.cont_seq == row.tcp_base - 1 and c0 > 64))


def _covered(row: PacketRow, response: bool = False) -> tuple:
    """What the MAC covers: the pseudo-header and the server-owned continuation fields."""
    client = (row.dst, row.src, row.dport, row.sport) if response else (
        row.src, row.dst, row.sport, row.dport)
    return (*client, row.cont_type, row.cont_seq,
            row.first_child, row.timestamp, row.mrtt, row.state, row.first_loss,
            row.first_bootstrap_seq, row.start_cwnd, row.ssthresh, row.tcp_base, row.conn_id,
            row.key_epoch)


def derive_events(rows: list[PacketRow], secret: bytes | None = None, config=None,
                  errors: Counter | None = None, verifier: _Verifier | None = None
                  ) -> list[Event]:
    """The engine's events, derived from decoded rows (see the module docstring)."""
    cfg = config if config is not None else _default_config()
    if verifier is None and secret is not None:
        verifier = _Verifier(bytes(secret), cfg)
    errors = errors if errors is not None else Counter()
    out: list[tuple[int, int, Event]] = []  # (capture index, order within it, event)
    pending: dict[tuple, list[_Req]] = {}
    syns: dict[tuple, list[PacketRow]] = {}
    answered_syns: set[int] = set()
    genuine: dict[bytes, tuple] = {}  # MAC -> covered fields, from server-emitted continuations
    reqs: list[_Req | PacketRow] = []
    max_gap = cfg.max_gap
    plan_request = pl.plan_request
    max_epoch = -1

    def cont_event(kind: str, row: PacketRow, **kw) -> Event:
        e = Event(kind, row.t, "server", row.conn_id or 0, -1, row.cont_seq,
                  0, row.ssthresh or 0, row.tcp_base or 0, row.state or 0)
        for key, val in kw.items():
            if key in ("pkt", "cwnd", "ack", "side"):
                setattr(e, key, val)
            else:
                e.detail[key] = val
        return e

    # ---- pass 1: requests register, responses find their request (slot events)
    for row in rows:
        if row.direction == "request":
            if row.error is not None or row.req_type == "SYN" or row.flags & SYN:
                reqs.append(row)
                if row.error is None and row.req_type == "SYN" and row.flags & SYN:
                    syns.setdefault((row.src, row.sport, row.dst, row.dport), []).append(row)
                continue
            plan = None
            plan_error = None
            if row.req_type != "FIN" and _bad_cont(row):
                # fields no server seals: the engine refuses them ("bad_cont") before planning;
                # planning them could ask for billions of slots (a corrupt capture's
                # start_cwnd) and exhaust memory
                plan_error = "bad_cont"
            elif row.req_type != "FIN" and _sack_problem(row, cfg) is None:
                blocks = [(lft, rgt) for lft, rgt, _ in row.sacks or ()]
                try:
                    plan = plan_request(row.cont_seq, row.tcp_base, row.start_cwnd,
                                        row.ssthresh, row.state, blocks,
                                        row.req_type == "SLOWSTART", max_gap)
                except Exception as e:  # impossible fields (never sealed by a server)
                    plan_error = "internal." + type(e).__name__
            entry = _Req(row, plan)
            entry.plan_error = plan_error
            reqs.append(entry)
            key = (row.src, row.sport, row.dst, row.dport, row.cont_seq, row.client_state,
                   row.parent, row.client_timestamp)
            pending.setdefault(key, []).append(entry)
            continue
        if row.error is not None:
            continue
        if row.key_epoch is not None:
            if row.key_epoch > max_epoch:
                max_epoch = row.key_epoch
            # a continuation the server emitted is genuine: remember what its MAC covers
            genuine[row.mac] = _covered(row, response=True)
        if row.flags & SYN:
            # the SYN-ACK carries the handshake continuation: the engine's syn event
            lst = syns.get((row.dst, row.dport, row.src, row.sport))
            if lst:
                answered_syns.add(lst.pop().index)
            else:
                errors["orphan_synack"] += 1
            out.append((row.index, 0, Event(
                ev.SYN, row.t, "server", row.conn_id or 0, row.seq, row.cont_seq or 0,
                row.start_cwnd or 0, row.ssthresh or 0, row.tcp_base or 0, row.state or 0)))
            continue
        key = (row.dst, row.dport, row.src, row.sport, row.ack, row.client_state, row.parent,
               row.client_timestamp)
        cands = pending.get(key)
        if not cands:
            errors["orphan_response"] += 1
            continue
        hit, slot_i, dup = _pair(cands, row, errors, False)
        if hit is None:  # only requests whose MAC failed: a wrong secret, or an engine bug
            hit, slot_i, dup2 = _pair(cands, row, errors, True)
            dup = dup or dup2
        if hit is None:
            errors["duplicate_response" if dup else "plan_mismatch"] += 1
            continue
        hit.filled[slot_i] = True
        hit.answered += 1
        req = hit.row
        if hit.plan is None:  # the FIN answer
            out.append((req.index, 5, cont_event(ev.FIN, req, pkt=req.cont_seq)))
            continue
        s = hit.plan.slots[slot_i]
        out.append((row.index, 0, Event(s.kind, row.t, "server", req.conn_id or 0, s.pkt,
                                        req.cont_seq, hit.plan.cwnd, s.ssthresh, s.tcp_base,
                                        s.state)))

    # ---- pass 2: each request in capture order: what the engine did with it
    history: dict[int, tuple[float, tuple, bool]] = {}  # replay key -> (t, covered, answered)
    fresh = cfg.freshness
    bucket = cfg.slowstart_bucket
    for entry in reqs:
        if isinstance(entry, PacketRow):  # decode failures and SYNs
            row = entry
            if row.error is not None:
                if row.error == "snaplen":
                    errors["unjudged_snaplen"] += 1
                else:
                    out.append((row.index, 1, Event(ev.DROP, row.t, "server",
                                                    detail={"reason": row.error})))
            elif row.flags & SYN and row.req_type != "SYN":
                out.append((row.index, 1, Event(ev.DROP, row.t, "server",
                                                detail={"reason": "syn_type"})))
            elif row.req_type == "SYN" and not row.flags & SYN:
                out.append((row.index, 1, Event(ev.DROP, row.t, "server",
                                                detail={"reason": "syn_flag"})))
            elif row.index not in answered_syns:
                out.append((row.index, 1, Event(ev.DROP, row.t, "server", detail={
                    "reason": "unanswered", "req_type": "SYN"})))
            continue
        row = entry.row
        plan = entry.plan
        i = row.index
        rtype = REQ_SLOWSTART if row.req_type == "SLOWSTART" else (
            REQ_FIN if row.req_type == "FIN" else 0)
        tag = rtype
        if rtype in (REQ_SLOWSTART, REQ_FIN):  # the engine's key: the continuation's age bucket
            tag |= (slowstart_age_bucket(_age_ms(row), bucket * 1000) & 0xFFFFFF) << 8
        rkey = int.from_bytes(row.mac[:8], "big") ^ (tag << 32)
        prev = history.get(rkey)
        if prev is not None and row.t - prev[0] > fresh + fresh / 12:
            prev = None
        if entry.answered:
            if row.mac_ok is False:
                errors["answered_bad_mac"] += 1
            if row.nonce_ok is False:
                errors["answered_bad_nonce"] += 1
            history[rkey] = (row.t, _covered(row), True)
            if row.sacks:
                out.append((i, 1, cont_event(ev.NONCE_OK, row,
                                             blocks=[[lft, rgt] for lft, rgt, _ in row.sacks])))
            if plan is None:
                continue  # FIN: its event came with the answer
            if rtype == REQ_SLOWSTART:
                out.append((i, 0, _timeout_event(row, plan)))
            if plan.recovery_start:
                out.append((i, 3, cont_event(ev.RECOVERY_START, row, cwnd=plan.cwnd,
                                             first_loss=plan.first_loss)))
            if plan.verdict == "slowstart":
                out.append((i, 4, cont_event(ev.SLOWSTART, row, cwnd=plan.cwnd,
                                             new_ssthresh=plan.slots[0].ssthresh)))
            if entry.answered < len(entry.filled):
                errors["partly_answered"] += 1
            continue
        # unanswered: why?
        kind, reason, extra = _why_unanswered(row, plan, prev, verifier, cfg, max_epoch,
                                              genuine)
        if kind is None:  # valid: the engine recorded its use
            if prev is None:
                history[rkey] = (row.t, _covered(row), False)
            # without the secret, only a plan verdict presumes the checks passed
            by_plan = plan is not None and not plan.slots
            if row.sacks and (verifier is not None or by_plan):
                out.append((i, 1, cont_event(ev.NONCE_OK, row,
                                             blocks=[[lft, rgt] for lft, rgt, _ in row.sacks])))
            if rtype == REQ_SLOWSTART and plan is not None and plan.slots:
                out.append((i, 0, _timeout_event(row, plan)))
            if plan is not None and not plan.slots and plan.verdict != "reject":
                out.append((i, 5, cont_event(ev.TERMINATE, row, cwnd=plan.cwnd,
                                             first_loss=plan.first_loss)))
                continue
            if plan is not None and plan.verdict == "reject":
                kind, reason = ev.DROP, "plan." + plan.reason.replace(" ", "_")
            elif entry.plan_error is not None:  # the engine's catch-all for a failing step
                kind, reason = ev.DROP, entry.plan_error
            else:
                kind, reason = ev.DROP, "unanswered"
        if kind == ev.REPLAY_DROP and row.sacks:  # the engine checks SACKs before history
            out.append((i, 1, cont_event(ev.NONCE_OK, row,
                                         blocks=[[lft, rgt] for lft, rgt, _ in row.sacks])))
        out.append((i, 2, cont_event(kind, row, reason=reason, **extra)))
    out.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in out]


def _pair(cands: list[_Req], row: PacketRow, errors: Counter, bad_mac: bool
          ) -> tuple[_Req | None, int, bool]:
    """The latest request in `cands` with a free slot for response `row`: (entry, slot, dup).

    `bad_mac` False considers requests whose MAC did not fail; True only those whose MAC did.
    """
    pos = row.position
    seq = row.seq
    dup = False
    for entry in reversed(cands):
        if (entry.row.mac_ok is False) != bad_mac or entry.row.index > row.index:
            continue
        plan = entry.plan
        if plan is None:
            if entry.row.req_type == "FIN" and row.flags & FIN and seq == entry.row.cont_seq:
                if entry.filled[0]:
                    dup = True
                    continue
                return entry, 0, dup
            continue
        slots = plan.slots
        if pos is not None and pos < len(slots) and slots[pos].pkt == seq:
            if entry.filled[pos]:
                dup = True
                continue
            return entry, pos, dup
        for i, s in enumerate(slots):
            if s.pkt == seq and not entry.filled[i]:
                errors["position_mismatch"] += 1
                return entry, i, dup
    return None, -1, dup


def _timeout_event(row: PacketRow, plan: pl.Plan) -> Event:
    return Event(ev.TIMEOUT, row.t, "client", row.conn_id or 0, row.cont_seq,
                 detail={"right": plan.slots[0].pkt - 1} if plan.slots else {})


def _age_ms(row: PacketRow) -> int:
    """The continuation's age on the server's clock (capture time - its timestamp), in ms."""
    return (int(row.t * 1000) - row.timestamp) & _U32


def _why_unanswered(row: PacketRow, plan, prev, verifier, cfg, max_epoch, genuine
                    ) -> tuple[str | None, str, dict]:
    """(kind, reason, extra detail) of the engine's drop, or (None, '', {}) when it was valid."""
    if verifier is None:
        known = genuine.get(row.mac)
        if known is not None and known != _covered(row):
            return ev.MAC_FAIL, "mac", {"inferred": True}
    else:
        slot = int(row.t // cfg.epoch_seconds)
        epoch = row.key_epoch
        if epoch < slot - 1 or (epoch > slot and epoch > max_epoch):
            return ev.MAC_FAIL, "key_epoch", {}
        if row.mac_ok is False:
            return ev.MAC_FAIL, "mac", {}
        age = (int(row.t * 1000) - row.timestamp) & _U32
        if age >= 1 << 31:
            if (1 << 32) - age > cfg.future_skew * 1000:
                return ev.STALE_DROP, "future", {}
        elif age > cfg.freshness * 1000:
            return ev.STALE_DROP, "stale", {}
    problem = _sack_problem(row, cfg)
    if problem is not None and (problem == "sack_count" or verifier is None):
        return ev.DROP, problem, {}
    if verifier is not None:
        summary = verifier.nonces.range_summary
        k, low, last = row.cont_seq, row.tcp_base - 8192, -1
        for left, right, s in row.sacks or ():
            if left <= last or right < left or right > k or left < low:
                return ev.DROP, "sack_shape", {}
            if summary(row.conn_id, row.tcp_base, left, right) != s:
                return ev.NONCE_FAIL, "nonce", {}
            last = right
    if row.req_type == "SLOWSTART" and _age_ms(row) < cfg.slowstart_min_age * 1000:
        return ev.DROP, "early_slowstart", {}
    if prev is not None:
        if verifier is not None or prev[1] == _covered(row):
            return ev.REPLAY_DROP, "replay", {}
        if prev[2]:  # an answered request proved this MAC belongs to other bytes
            return ev.MAC_FAIL, "mac", {"inferred": True}
    return None, "", {}
