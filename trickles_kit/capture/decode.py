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
  (``decode.checksum``, ``decode.truncated``, ...; ``snaplen`` when the capture cut the datagram;
  ``decode.udp_run`` for a UDP datagram that is a run of segments sent in one segmented send and
  captured on the sending host before the kernel cut it apart: net/udp.py sends such runs
  only while no capture runs there, so one appears when a capture starts mid-transfer).
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
* A request answered by nothing although it should have been: judged by
  `core.admission.admit`, the function the server itself runs, so in its order and by its
  rules: a decode failure -> ``drop`` ``decode.<reason>``; a SYN/type mismatch -> ``drop``; with the
  secret: key epoch outside current/previous at the capture time -> ``mac_fail`` ``key_epoch``,
  a bad MAC -> ``mac_fail``, too old / from the future -> ``stale_drop``; a bad SACK count or
  shape -> ``drop``; a wrong nonce summary -> ``nonce_fail`` (secret); a continuation already
  used for the same request type -> ``replay_drop`` (the engine's replay key, SLOWSTART buckets
  included; the replay table is rebuilt from the capture, so a server restart inside it is not
  seen); continuation fields no server seals (a window over the engine's limits) ->
  ``drop`` ``bad_cont`` (right after the MAC, as the engine; never planned: planning them could
  exhaust memory); a SLOWSTART younger than the minimum age -> ``drop`` ``early_slowstart``;
  a rejected plan -> ``drop`` ``plan.<reason>``; anything else ->
  ``drop`` ``unanswered`` (lost after the capture point, or the application dropped it).
  Without the secret, a replay is still recognised when an earlier *answered* request carried
  the same MAC: with the same MAC-covered bytes it is ``replay_drop``; with different ones it
  cannot carry a valid MAC and is ``mac_fail`` (``detail.inferred = True``). Everything else is
  ``drop`` ``unanswered``.

``Capture.verdicts`` holds the verdict on every request row (by its ``index``): ``admitted``
(answered, or valid by every check and silent), ``unanswered``, or the refusal's reason —
tests/capture/test_admission_agree.py holds it equal to a real engine's on the same requests.

For a capture taken at the server endpoint (``ServerLoop``/``SimNetwork`` pcap taps) the
``initial`` / ``continue`` / ``split`` / ``retransmit`` / ``bootstrap`` / ``terminate`` events —
(kind, pkt, ack, cwnd) — equal the engine's own event log. A capture taken elsewhere (client
side, mid-path) shows what reached that point: a request lost before the capture point never
appears, a response lost after it still does.

Where it lives: `capture.rows` (the table), `capture.batches` (the hot loop), `capture.parse`
(the general path, MAC/nonce verdicts), `capture.events` (events through `core.admission` and
`core.pairing`, the server's own checks and the one pairing rule); this module puts them together.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

from trickles_kit.capture.batches import decode_batches, decode_rows
from trickles_kit.capture.events import derive_events
from trickles_kit.capture.parse import Verifier, default_config
from trickles_kit.capture.pcapio import read_pcap
from trickles_kit.capture.rows import (
    DIR_AT,
    EVENT_FIELDS,
    MACOK_AT,
    NF,
    PANDAS_HINT,
    ROW_FIELDS,
    Capture,
    PacketRow,
    no_gc,
    rows_of,
)

__all__ = ["Capture", "PacketRow", "PacketStream", "decode_pcap", "derive_events",
           "PANDAS_HINT", "ROW_FIELDS", "EVENT_FIELDS"]


def decode_pcap(path: str | os.PathLike[str], secret: bytes | None = None,
                service_port: int | None = None, *, config=None,
                events: bool = True, checksums: bool = True,
                columnar: bool | None = None) -> Capture:
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

    `columnar`: decode whole batches with numpy into a `PacketColumns` table
    (`capture.columnar`; the same rows, events and verdicts, tests/capture/test_columnar.py)
    — the default when numpy is installed; False: the row decoder (`capture.batches`), the
    one to read to learn the format.
    """
    if columnar is not False:
        try:
            from trickles_kit.capture import columnar as col  # lazy: needs numpy (optional)
        except ImportError:
            if columnar:
                raise
        else:
            return col.decode_columns(path, secret, service_port, config=config,
                                      events=events, checksums=checksums)
    cfg = config if config is not None else default_config()
    verifier = _make_verifier(secret, cfg)
    promote = gc.isenabled()
    with read_pcap(path) as reader, no_gc():
        cap = Capture(str(path), format=reader.format, secret_used=verifier is not None)
        flat, svals, rvals, cap.service_ports = decode_rows(
            reader.spans(), service_port, verifier, cap.errors, checksums, promote)
        cap._set_flat(flat, svals, rvals)
        _finish(cap, reader)
    if verifier is not None and _wrong_secret(cap):
        _note_wrong_secret(cap)
        verifier = None
    if events:
        with no_gc():
            cap.events = derive_events(cap.packets, config=cfg, errors=cap.errors,
                                       verifier=verifier, verdicts=cap.verdicts)
            _promote_all()
        cap.events_derived = True
    return cap


def _promote_all() -> None:
    """Every object the GC tracks to its oldest generation: ``gc.freeze()`` then
    ``gc.unfreeze()``, two list splices. The rows and events just built with the GC paused
    (a million objects on 200k packets, in no cycle) would otherwise all be walked by the next
    young collection, about a quarter of the decode; a full collection still sees them. Not
    done when something froze objects already (unfreeze would release them too)."""
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()


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
        cfg = config if config is not None else default_config()
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
        batches = decode_batches(self._reader.spans(), self._service_port, verifier,
                                  cap.errors, self._checksums, False, flat, svals, rvals, ports)
        try:
            while True:
                with no_gc():
                    if not next(batches, False):
                        break
                    rows = rows_of(flat, svals, rvals)
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


def _make_verifier(secret: bytes | None, cfg) -> Verifier | None:
    if secret is not None and not isinstance(secret, bytes | bytearray):
        raise TypeError("secret must be bytes (the master secret), e.g. bytes.fromhex(text)")
    return Verifier(bytes(secret), cfg) if secret is not None else None


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
    pairs = (zip(flat[DIR_AT::NF], flat[MACOK_AT::NF], strict=True) if flat is not None
             else ((r.direction, r.mac_ok) for r in cap.packets))
    seen = False
    for direction, ok in pairs:
        if direction == "response" and ok is not None:
            if ok:
                return False
            seen = True
    return seen

