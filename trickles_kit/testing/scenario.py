"""Scripted scenarios for one ServerEngine, in the spirit of packetdrill, on a virtual clock.

A scenario plays a minimal, fully scripted client against ONE `ServerEngine` (serving the
`Generated` handler, "GEN <size> <seed>") and checks exactly what the server emits. There is no
network and no real time: the clock only moves when a line says so.

Format — one directive per line, `#` starts a comment, values with spaces go in double quotes::

    [TIME] config KEY=VALUE ...          # ServerConfig fields, before the first request
    [TIME] > REQUEST OPTIONS ...         # send one request to the server (TIME moves the clock)
    [TIME] < PACKET ... [; PACKET ...]   # the next emitted packet(s) must match, in order
    [TIME] < none                        # the server emitted nothing (more) for this request
    [TIME] ! EVENT [FIELD=VALUE ...]     # the server reported this event for this request
    [TIME] ! -EVENT                      # ... and did not report this one
    [TIME] ! app=SYN|REQUEST|FIN         # the application handler saw this minisocket kind
    [TIME] ! -app=REQUEST                # ... or did not

TIME is `+0.020` (relative to the previous line) or `1.5` (absolute seconds); omitted means `+0`.
The server answers instantly, so `<` and `!` lines may only carry `+0`.

Requests (`>`)::

    syn app="GEN 100000 7" [range=0:1448] [pad=N|auto]  SYN (with data when app/range given);
                                                  pad defaults to auto (the real client's rule);
                                                  pad fills the ignored ucont field so the answer
                                                  passes the 3x anti-amplification limit
    ack=K                                         echo the FULL continuation of packet K
        [type=normal|slowstart|fin]               request type (fin also sets the TCP FIN flag)
        [sack=L-R,L-R...]                         SACK blocks; summaries are computed honestly from
                                                  the stored nonces p_j of received packets
        [sack=L-R:0xHEX]                          ... or given explicitly
        [lie]                                     allow blocks that claim packets never received
                                                  (their unknown nonces are guessed as 0)
        [range=A:B,C:D]                           byte ranges asked for, one per output slot
        [app="..."] [ucont=K|none]                request bytes; user continuation (default: the
                                                  one packet K carried)
        [tamper=FIELD[,FIELD]]                    flip the lowest bit of a continuation field on
                                                  the wire (server-owned fields are MAC-covered)
        [client_state=N] [parent=N]               rewrite client-owned fields (not MAC-covered)
    replay                                        resend the previous request's bytes exactly
    from=IP:PORT                                  (any request) send from another client address

Packets (`<`), all keys optional, checked exactly against the next emitted packet::

    pkt=N ack=N flags=SA|A|FA            TCP seq (= packet number, also the continuation's seq),
                                         TCP ack (= the request's k) and flags (S F R P A)
    type=FULL1|FULL2|MINIMAL state=NORMAL|RECOVERY|BOOTSTRAP first_child=N
    tcp_base=N start_cwnd=N ssthresh=N first_loss=N first_bootstrap_seq=N (alias fbs=N)
    timestamp=MS mrtt=N key_epoch=N      server clock (ms), smoothed RTT x8 (ms), key epoch
    siblings=N position=N                the response header fields
    data=A:B|none finhint=N|none         DATA chunk byte range; FINHINT chunk
    kind=initial|continue|split|retransmit|bootstrap|syn|fin   the server's event for the packet
    cwnd=N                               the window the server's event reports for the packet
    lost                                 (not a check) the client never receives this packet:
                                         its continuation and nonce are not stored

A MINIMAL continuation carries only type/seq/firstChild on the wire: the congestion fields of a
retransmission (state RECOVERY, its epoch) are visible only in the server's event for it, so
check them on an event line, e.g. `! retransmit pkt=4 state=RECOVERY tcp_base=1`.

Every packet a request produced must be matched by a `<` line before the next `>` line (or the
end of the script); extra packets are a failure. The run stops at the first failure.

Run files with ``python -m trickles_kit.testing.scenario [-v] FILE...`` (no FILE: every scenario
shipped in ``trickles_kit/scenarios``); ``-v`` prints a transcript of every step, and
``--explore`` accepts unmatched packets, to see what the server does before writing expectations.

A malformed script (bad syntax, a value out of range, a request the scripted client cannot
build) is reported in one line on stderr, ``FILE:LINE: message``, and the run exits with status 2
(1: checks failed, 0: all passed); nothing is allocated before a value is checked. Limits: a
script is at most `MAX_SCRIPT_BYTES` (1 MiB) of UTF-8; every request must fit one UDP datagram
(`MAX_SEGMENT`, 65,507 bytes), so ``pad`` is at most 65,507 bytes less the request; ``config``
values are finite and non-negative, ``replay_entries`` and ``state_cache`` at most 2^20 (the
replay table is allocated whole: 12 MiB); 32-bit fields (``client_state``, ``parent``, SACK
and range bounds) and 16-bit ports are checked against their width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import shlex
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from trickles_kit.apps.generated import Generated
from trickles_kit.core import events as ev
from trickles_kit.core.events import Event
from trickles_kit.core.server import Minisocket, ServerConfig, ServerEngine
from trickles_kit.net.ip import PROTO_TRICKLES
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.wire.continuation import (
    FULL_LEN,
    MAC_LEN,
    MAC_OFFSET,
    STATE_NAMES,
    TYPE_NAMES,
    Continuation,
)
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    MAX_SACKS,
    REQ_FIN,
    REQ_NORMAL,
    REQ_SLOWSTART,
    REQ_SYN,
    DataChunk,
    FinHint,
    Request,
    Response,
    SackBlock,
    decode_response,
)
from trickles_kit.wire.segment import (
    ACK,
    FIN,
    HEADER_LEN,
    PSH,
    RST,
    SYN,
    Segment,
    decode_segment,
    encode_segment,
)

SECRET = b"trickles-kit scenario secret 32b"  # fixed: runs are deterministic
MAX_SCRIPT_BYTES = 1 << 20  # a script larger than this is refused unread
MAX_SEGMENT = 65507  # a request must fit one UDP datagram over IPv4 (65535 - 20 - 8)
MAX_TABLE = 1 << 20  # replay_entries / state_cache: the replay table is allocated whole
_U32 = 0xFFFFFFFF
SERVICE = ("10.0.0.1", 80)
CLIENT = ("10.0.0.2", 40000)
CLIENT_ISN = 1000

# (offset, length) of each field in the 75-byte FULL continuation (see wire/continuation.py)
CONT_FIELDS: dict[str, tuple[int, int]] = {
    "type": (0, 1), "seq": (1, 4), "first_child": (5, 1),
    "client_state": (6, 4), "parent": (10, 4), "client_timestamp": (14, 4),
    "timestamp": (18, 4), "mrtt": (22, 4), "state": (26, 1), "first_loss": (27, 4),
    "first_bootstrap_seq": (31, 4), "start_cwnd": (35, 4), "ssthresh": (39, 4),
    "tcp_base": (43, 4), "conn_id": (47, 8), "key_epoch": (55, 4), "mac": (MAC_OFFSET, MAC_LEN),
}
assert sum(n for _, n in CONT_FIELDS.values()) == FULL_LEN

_FLAG_LETTERS = (("S", SYN), ("F", FIN), ("R", RST), ("P", PSH), ("A", ACK))
_REQ_TYPES = {"normal": REQ_NORMAL, "slowstart": REQ_SLOWSTART, "fin": REQ_FIN}
_STATE_BY_NAME = {v: k for k, v in STATE_NAMES.items()}
_SLOT_KINDS = (ev.INITIAL, ev.CONTINUE, ev.SPLIT, ev.RETRANSMIT, ev.BOOTSTRAP, ev.SYN, ev.FIN)

_REQUEST_KEYS = {"syn", "replay", "ack", "type", "sack", "lie", "range", "app", "ucont", "pad",
                 "tamper", "client_state", "parent", "from"}
_PACKET_KEYS = {"pkt", "ack", "flags", "type", "state", "first_child", "tcp_base", "start_cwnd",
                "ssthresh", "first_loss", "first_bootstrap_seq", "fbs", "siblings", "position",
                "data", "finhint", "kind", "cwnd", "timestamp", "mrtt", "key_epoch", "lost"}
_FLAG_ONLY = {"syn", "replay", "lie", "lost"}


class ScenarioError(Exception):
    """A malformed script, or a request the scripted client cannot build."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


# ---------------------------------------------------------------------------- results
@dataclass(slots=True)
class Check:
    """One expectation of the script (or an implicit one, such as 'no extra packets')."""

    line: int
    text: str
    passed: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    name: str
    checks: list[Check] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    error: ScenarioError | None = None  # the script is malformed (or cannot be executed)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def report(self) -> str:
        """Readable summary: PASS/FAIL, then each failure with its line, expected and got."""
        n = len(self.checks)
        if not n:
            return f"FAIL {self.name} (the script checks nothing)"
        if self.passed:
            return f"PASS {self.name} ({n} checks)"
        lines = [f"FAIL {self.name} ({n - len(self.failures)}/{n} checks passed)"]
        for c in self.failures:
            lines.append(f"  {self.name}:{c.line}: {c.text}")
            lines.extend("    " + d for d in c.detail.splitlines())
        return "\n".join(lines)


# ---------------------------------------------------------------------------- parsing
@dataclass(slots=True)
class Line:
    no: int
    text: str
    time: float  # offset (relative) or absolute seconds
    relative: bool
    op: str  # "config" | ">" | "<" | "!"
    groups: list[list[tuple[str, str | None]]]  # '<' lines: one group per ';'-separated packet


def _tokens(text: str, no: int) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=";")
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError as e:
        raise ScenarioError(no, f"cannot tokenize: {e}") from None


def _pairs(tokens: Sequence[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for t in tokens:
        if "=" in t:
            k, v = t.split("=", 1)
            out.append((k, v))
        else:
            out.append((t, None))
    return out


def parse_scenario(text: str) -> list[Line]:
    """Parse a script into lines; raises ScenarioError with the line number on bad syntax."""
    lines: list[Line] = []
    for no, raw in enumerate(text.splitlines(), 1):
        toks = _tokens(raw, no)
        if not toks:
            continue
        time, relative = 0.0, True
        first = toks[0]
        if first[0] in "+0123456789." and first not in (">", "<", "!"):
            try:
                time = float(first)
            except ValueError:
                raise ScenarioError(no, f"bad time {first!r}") from None
            relative = first.startswith("+")
            if not math.isfinite(time):
                raise ScenarioError(no, f"bad time {first!r}: not a finite number")
            if time < 0:
                raise ScenarioError(no, "time must not be negative")
            toks = toks[1:]
        if not toks:
            raise ScenarioError(no, "a time alone is not a directive")
        op, rest = toks[0], toks[1:]
        if op not in ("config", ">", "<", "!"):
            raise ScenarioError(no, f"unknown directive {op!r} (config, >, <, !)")
        if op in ("<", "!") and not (relative and time == 0):
            raise ScenarioError(no, f"'{op}' lines happen when the request is sent: use +0")
        groups: list[list[tuple[str, str | None]]] = [[]]
        for t in rest:
            if t == ";":
                if op != "<":
                    raise ScenarioError(no, "';' only separates packets on '<' lines")
                groups.append([])
            else:
                groups[-1].extend(_pairs([t]))
        if any(not g for g in groups) and not (op == "config" and len(groups) == 1):
            raise ScenarioError(no, f"empty '{op}' directive")
        _validate(no, op, groups)
        text_clean = " ".join(toks)
        lines.append(Line(no, text_clean, time, relative, op, groups))
    return lines


def _validate(no: int, op: str, groups: list[list[tuple[str, str | None]]]) -> None:
    if op == "config":
        names = {f.name for f in dataclasses.fields(ServerConfig)}
        for k, v in groups[0]:
            if k not in names or v is None:
                raise ScenarioError(no, f"config wants ServerConfig fields as k=v, got {k!r}")
    elif op == ">":
        for k, v in groups[0]:
            if k not in _REQUEST_KEYS:
                raise ScenarioError(no, f"unknown request option {k!r}")
            if (v is None) != (k in _FLAG_ONLY):
                raise ScenarioError(no, f"option {k!r} " + ("takes no value" if v is not None
                                                           else "needs a value"))
        keys = {k for k, _ in groups[0]}
        if len(keys & {"syn", "replay", "ack"}) != 1:
            raise ScenarioError(no, "a request is exactly one of: syn, ack=K, replay")
    elif op == "<":
        for g in groups:
            if g == [("none", None)]:
                if len(groups) != 1:
                    raise ScenarioError(no, "'none' stands alone")
                continue
            for k, v in g:
                if k not in _PACKET_KEYS:
                    raise ScenarioError(no, f"unknown packet field {k!r}")
                if (v is None) != (k in _FLAG_ONLY):
                    raise ScenarioError(no, f"packet field {k!r} needs a value")
    else:  # "!"
        head = groups[0][0]
        if head[1] is None:
            name = head[0].lstrip("-")
            if name not in ev.KINDS:
                raise ScenarioError(no, f"unknown event kind {name!r}")
        elif head[0] not in ("app", "-app"):
            raise ScenarioError(no, "'!' wants an event kind, -kind, app=KIND or -app=KIND first")
        for k, v in groups[0][1:]:
            if v is None:
                raise ScenarioError(no, f"event field {k!r} needs a value (FIELD=VALUE)")


# ---------------------------------------------------------------------------- helpers
def _ip(s: str) -> bytes:
    parts = s.split(".")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {s}")
    return bytes(int(p) for p in parts)


def _int(v: str) -> int:
    """Decimal (leading zeros allowed) or 0x/0o/0b-prefixed."""
    try:
        return int(v, 0)
    except ValueError:
        return int(v, 10)


def _checked(no: int, key: str, v: int, lo: int, hi: int) -> int:
    if not lo <= v <= hi:
        raise ScenarioError(no, f"{key}={v} is out of range ({lo}..{hi})")
    return v


def _ranges(v: str) -> list[tuple[int, int]]:
    if v == "none":
        return []
    out = []
    for part in v.split(","):
        a, b = part.split(":")
        out.append((_int(a), _int(b)))
    return out


def _encode(no: int, req: Request) -> bytes:
    """The request's bytes; a value its wire fields cannot hold is a script error."""
    try:
        return req.encode()
    except (ValueError, OverflowError, struct.error) as e:
        raise ScenarioError(no, f"the request does not fit the wire format: {e}") from None


def _config_value(no: int, key: str, v: str) -> int | float:
    """A config value: an integer where ServerConfig has one, finite and non-negative; the
    fields that size an allocation at most `MAX_TABLE`."""
    default = getattr(ServerConfig(), key)
    try:
        val: int | float = _int(v)
    except ValueError:
        try:
            val = float(v)
        except ValueError:
            raise ScenarioError(no, f"config {key}: not a number: {v}") from None
    if isinstance(default, int) and not isinstance(val, int):
        raise ScenarioError(no, f"config {key}: wants an integer, got {v}")
    if isinstance(default, bool) and val not in (0, 1):
        raise ScenarioError(no, f"config {key}: wants 0 or 1, got {v}")
    if not math.isfinite(val) or val < 0:
        raise ScenarioError(no, f"config {key}: wants a finite number >= 0, got {v}")
    if isinstance(val, int):
        _checked(no, f"config {key}", val, 0, MAX_TABLE if key in ("replay_entries",
                                                                   "state_cache") else _U32)
    return val


def _flags_str(flags: int) -> str:
    return "".join(letter for letter, bit in _FLAG_LETTERS if flags & bit) or "."


@dataclass(slots=True)
class Stored:
    """What the scripted client keeps of one received FULL packet."""

    cont: Continuation
    raw: bytes
    ucont: bytes


@dataclass(slots=True)
class Emitted:
    """One packet the server emitted, decoded, with the server event that produced it."""

    seg: Segment
    resp: Response
    raw_cont: bytes
    event: Event | None
    line: int  # the '>' line that produced it
    # the user continuation this packet stands for: its own, or (omitted because unchanged)
    # the one its request carried
    ucont: bytes = b""

    def describe(self) -> str:
        c, r = self.resp.cont, self.resp
        parts = [f"pkt={self.seg.seq}", f"ack={self.seg.ack}",
                 f"flags={_flags_str(self.seg.flags)}", f"type={TYPE_NAMES.get(c.type, c.type)}"]
        if c.seq != self.seg.seq:
            parts.append(f"cont.seq={c.seq}")
        if c.is_full:
            parts += [f"state={STATE_NAMES.get(c.state, c.state)}", f"tcp_base={c.tcp_base}",
                      f"start_cwnd={c.start_cwnd}", f"ssthresh={c.ssthresh}"]
            if c.first_loss or c.first_bootstrap_seq:
                parts += [f"first_loss={c.first_loss}", f"fbs={c.first_bootstrap_seq}"]
        parts += [f"siblings={r.num_siblings}", f"position={r.position}",
                  f"data={_data_str(r)}"]
        fh = [ch.byte_num for ch in r.chunks if isinstance(ch, FinHint)]
        if fh:
            parts.append(f"finhint={fh[0]}")
        if self.event is not None:
            parts += [f"kind={self.event.kind}", f"cwnd={self.event.cwnd}"]
        return " ".join(parts)


def _data_str(r: Response) -> str:
    spans = [f"{ch.byte_num}:{ch.byte_num + len(ch.data)}" for ch in r.chunks
             if isinstance(ch, DataChunk)]
    return ",".join(spans) or "none"


def _describe_event(e: Event) -> str:
    bits = [e.kind]
    if e.pkt >= 0:
        bits.append(f"pkt={e.pkt}")
    if "reason" in e.detail:
        bits.append(f"reason={e.detail['reason']}")
    return "(" + " ".join(bits) + ")" if len(bits) > 1 else e.kind


# ---------------------------------------------------------------------------- runner
class Runner:
    """Executes parsed lines against one fresh ServerEngine."""

    def __init__(self, name: str = "<scenario>", verbose: bool = False,
                 explore: bool = False, pcap: PcapWriter | None = None) -> None:
        self.name = name
        self.pcap = pcap  # an endpoint log of every request sent and packet received
        self.verbose = verbose
        self.explore = explore  # accept (and store) unmatched packets: for writing new scripts
        self.now = 0.0
        self.cfg: dict[str, int | float] = {}
        self.cfg_line = 0  # the last config line (its errors may show only with the engine)
        self.engine: ServerEngine | None = None
        self.result = ScenarioResult(name)
        self.fulls: dict[int, Stored] = {}  # packet number -> newest FULL continuation received
        self.last_ucont = b""  # the user continuation of the newest request built
        self.nonces: dict[int, int] = {}  # packet number -> nonce field p_k
        self.req_seq = CLIENT_ISN
        self.last_request: tuple[bytes, bytes, tuple[str, int]] | None = None
        self.pending: list[Emitted] = []
        self.step_line = 0
        self.step_events: list[Event] = []
        self.step_app: list[str] = []
        self.events: list[Event] = []

    # -------------------------------------------------------------- engine
    def _engine(self) -> ServerEngine:
        if self.engine is None:
            gen = Generated()

            def handler(msk: Minisocket) -> None:
                self.step_app.append(msk.kind)
                gen(msk)

            try:
                self.engine = ServerEngine(SECRET, handler, _ip(SERVICE[0]), SERVICE[1],
                                           ServerConfig(**self.cfg), on_event=self._on_event)
            except (ArithmeticError, TypeError, ValueError) as e:
                raise ScenarioError(self.cfg_line, f"bad config: {e}") from None
            gen.attach(self.engine)
        return self.engine

    def _on_event(self, e: Event) -> None:
        self.step_events.append(e)
        self.events.append(e)

    def _log(self, msg: str) -> None:
        self.result.trace.append(msg)
        if self.verbose:
            print(msg)

    def _check(self, line: Line, ok: bool, detail: str = "", text: str | None = None) -> bool:
        self.result.checks.append(Check(line.no, text or line.text, ok, detail))
        return ok

    # -------------------------------------------------------------- main loop
    def run(self, lines: Iterable[Line]) -> ScenarioResult:
        last = 0
        for line in lines:
            last = line.no
            self.now = self.now + line.time if line.relative else line.time
            try:
                ok = self._step(line)
            except ScenarioError as e:
                ok = self._check(line, False, f"script error: {e.message}")
                self.result.error = e.with_traceback(None)  # (its frames hold the engine)
            except Exception as e:  # a bug, not the script's: say where it happened
                with contextlib.suppress(AttributeError):
                    e.scenario_line = line.no  # type: ignore[attr-defined]
                raise
            if not ok:
                return self.result
        self._flush(last)
        return self.result

    def _step(self, line: Line) -> bool:
        if line.op == "config":
            if self.engine is not None:
                raise ScenarioError(line.no, "config must come before the first request")
            for k, v in line.groups[0]:
                assert v is not None
                self.cfg[k] = _config_value(line.no, k, v)
            try:
                ServerConfig(**self.cfg)
            except (TypeError, ValueError) as e:
                raise ScenarioError(line.no, f"bad config: {e}") from None
            self.cfg_line = line.no
            return True
        if line.op == ">":
            if not self._flush(line.no):
                return False
            self._send(line)
            return True
        if line.op == "<":
            return self._expect_packets(line)
        return self._expect_event(line)

    def _flush(self, at_line: int) -> bool:
        """Implicit check: every packet of the previous request was matched by a '<' line."""
        if not self.pending:
            return True
        extra = self.pending
        self.pending = []
        if self.explore:
            for p in extra:
                self._store(p)
            return True
        detail = "\n".join("got: " + p.describe() for p in extra)
        text = f"(request on line {extra[0].line}) no packets beyond the '<' lines"
        self.result.checks.append(
            Check(extra[0].line, text, False,
                  f"{len(extra)} unexpected packet(s), packetdrill-style exact match:\n{detail}"))
        return False

    # -------------------------------------------------------------- requests
    def _send(self, line: Line) -> None:
        opts = dict(line.groups[0])
        src = CLIENT
        if opts.get("from"):
            ip, _, port = opts["from"].rpartition(":")
            try:
                _ip(ip)
                src = (ip, int(port))
                if not 0 <= src[1] <= 0xFFFF:
                    raise ValueError(port)
            except ValueError:
                raise ScenarioError(line.no, f"from wants IP:PORT (port 0..65535), got "
                                             f"{opts['from']!r}") from None
        if "replay" in opts:
            if self.last_request is None:
                raise ScenarioError(line.no, "replay: no request was sent before")
            segment, _, src0 = self.last_request
            if "from" not in opts:
                src = src0
            desc = "replay of the previous request"
        else:
            segment, desc = self._build(line, opts, src)
        cip = _ip(src[0])
        self.last_request = (segment, cip, src)
        self.step_line = line.no
        self.step_events = []
        self.step_app = []
        out = self._engine().receive(segment, cip, self.now)
        if self.pcap is not None:
            sip = _ip(SERVICE[0])
            self.pcap.log(self.now, cip, sip, segment, PROTO_TRICKLES)
            for datagram in out:
                self.pcap.log(self.now, sip, cip, datagram, PROTO_TRICKLES)
        self._log(f"t={self.now:.3f} line {line.no}: > {desc} -> {len(out)} packet(s)")
        emitted = []
        for datagram in out:
            try:
                seg = decode_segment(datagram, _ip(SERVICE[0]), cip)
                resp = decode_response(seg.payload)
            except DecodeError as e:
                raise ScenarioError(line.no, f"server emitted an undecodable packet: {e}") from None
            from_ev = [e for e in self.step_events if e.kind in _SLOT_KINDS and e.pkt == seg.seq]
            raw = seg.payload[8 : 8 + (FULL_LEN if resp.cont.is_full else 18)]
            emitted.append(Emitted(seg, resp, raw, from_ev[0] if from_ev else None, line.no,
                                   resp.ucont or self.last_ucont))
        for p in emitted:
            self._log("    < " + p.describe())
        if self.step_events:
            self._log("    ! " + " ".join(_describe_event(e) for e in self.step_events))
        self.pending = emitted

    def _build(self, line: Line, opts: dict[str, str | None],
               src: tuple[str, int]) -> tuple[bytes, str]:
        no = line.no
        app = (opts.get("app") or "").encode()
        ranges = self._opt(no, "range", opts, _ranges, [])
        if "syn" in opts:
            for bad in ("type", "sack", "lie", "ucont", "tamper", "client_state", "parent"):
                if bad in opts:
                    raise ScenarioError(no, f"{bad} makes no sense on a SYN")
            req = Request(REQ_SYN, None, [], b"", ranges, app)
            self.last_ucont = b""
            payload = _encode(no, req)
            pad = opts.get("pad", "auto")
            if pad == "auto":  # what the real client sends: its answer stays within 3x
                mss = int(self.cfg.get("mss", ServerConfig().mss))
                answer = mss + 300 if ranges else 360
                n = max(answer // 3 + 1 - (len(payload) + 28), 0)
            else:
                n = self._opt(no, "pad", opts, _int, 0)
                room = MAX_SEGMENT - HEADER_LEN - len(payload)
                if not 0 <= n <= room:  # checked before anything is allocated
                    raise ScenarioError(no, f"pad={n} is out of range: 0..{max(room, 0)} bytes "
                                            f"(the SYN must fit one {MAX_SEGMENT}-byte datagram)")
            if n:
                req.ucont = b"\0" * n
                payload = _encode(no, req)
            return self._segment(no, payload, 0, SYN, src), "syn"
        if "pad" in opts:
            raise ScenarioError(no, "pad is for SYNs only")
        k = self._opt(no, "ack", opts, _int, 0)
        stored = self.fulls.get(k)
        if stored is None:
            have = sorted(self.fulls)
            raise ScenarioError(no, f"ack={k}: no FULL continuation of packet {k} was received "
                                    f"(have {have})")
        rtype_name = opts.get("type") or "normal"
        if rtype_name not in _REQ_TYPES:
            raise ScenarioError(no, f"type must be normal, slowstart or fin, not {rtype_name!r}")
        rtype = _REQ_TYPES[rtype_name]
        cont = dataclasses.replace(stored.cont)
        for fname in ("client_state", "parent"):
            if fname in opts:
                setattr(cont, fname, _checked(no, fname, self._opt(no, fname, opts, _int, 0),
                                              0, _U32))
        sacks = self._sacks(no, opts.get("sack"), "lie" in opts)
        ucont_opt = opts.get("ucont")
        if ucont_opt is None:
            ucont = stored.ucont
        elif ucont_opt == "none":
            ucont = b""
        else:
            src_pkt = self._opt(no, "ucont", opts, _int, 0)
            if src_pkt not in self.fulls:
                raise ScenarioError(no, f"ucont={src_pkt}: packet not received")
            ucont = self.fulls[src_pkt].ucont
        req = Request(rtype, cont, sacks, ucont, ranges, app)
        self.last_ucont = ucont
        payload = bytearray(_encode(no, req))
        for fname in (opts.get("tamper") or "").split(","):
            if not fname:
                continue
            if fname not in CONT_FIELDS:
                raise ScenarioError(no, f"tamper: unknown field {fname!r} "
                                        f"(one of {', '.join(CONT_FIELDS)})")
            off, n = CONT_FIELDS[fname]
            byte = 1 + off + (0 if fname == "mac" else n - 1)  # the field's lowest bit
            payload[byte] ^= 1
        flags = FIN | ACK if rtype == REQ_FIN else ACK
        return self._segment(no, bytes(payload), k, flags, src), " ".join(
            f"{a}={b}" if b is not None else a for a, b in line.groups[0])

    @staticmethod
    def _opt(no: int, key: str, opts: dict[str, str | None], conv, default):
        v = opts.get(key)
        if v is None:
            return default
        try:
            return conv(v)
        except ValueError:
            raise ScenarioError(no, f"bad value for {key}: {v!r}") from None

    def _sacks(self, no: int, spec: str | None, lie: bool) -> list[SackBlock]:
        if not spec or spec == "none":
            return []
        parts = spec.split(",")
        if len(parts) > MAX_SACKS:
            raise ScenarioError(no, f"{len(parts)} SACK blocks: at most {MAX_SACKS} fit a request")
        blocks = []
        for part in parts:
            try:
                rng, _, given = part.partition(":")
                left_s, _, right_s = rng.partition("-")
                left = _int(left_s)
                right = _int(right_s) if right_s else left
                explicit = _int(given) if given else None
            except ValueError:
                raise ScenarioError(no, f"bad SACK block {part!r} (L-R or L-R:0xSUMMARY)") from None
            if not (0 <= left <= _U32 and 0 <= right <= _U32):  # (R < L: the server's to judge)
                raise ScenarioError(no, f"bad SACK block {part!r}: L and R are 32-bit packet "
                                        "numbers")
            if explicit is not None:
                blocks.append(SackBlock(left, right, explicit & _U32))
                continue
            # the work is bounded by the packets received, not by the block's span
            known = [j for j in self.nonces if left <= j <= right]
            if not lie and len(known) != max(right - left + 1, 0):
                j = left
                while j in self.nonces:
                    j += 1
                raise ScenarioError(
                    no, f"SACK {left}-{right} claims packet {j}, which the client never "
                        "received (add 'lie' to claim it with a guessed nonce)")
            summary = 0
            for j in known:  # an unreceived packet's nonce is guessed as 0
                summary ^= self.nonces[j]
            blocks.append(SackBlock(left, right, summary))
        return blocks

    def _segment(self, no: int, payload: bytes, ack: int, flags: int,
                 src: tuple[str, int]) -> bytes:
        if HEADER_LEN + len(payload) > MAX_SEGMENT:
            raise ScenarioError(no, f"the request is {HEADER_LEN + len(payload)} bytes: more than "
                                    f"one {MAX_SEGMENT}-byte datagram")
        self.req_seq += 1
        return encode_segment(_ip(src[0]), _ip(SERVICE[0]), src[1], SERVICE[1], self.req_seq, ack,
                              flags, payload, 0, 0xFFFF)

    # -------------------------------------------------------------- packet expectations
    def _expect_packets(self, line: Line) -> bool:
        if line.groups == [[("none", None)]]:
            if self.pending:
                return self._check(line, False, "expected no (more) packets\n" + "\n".join(
                    "got: " + p.describe() for p in self.pending))
            return self._check(line, True)
        for g in line.groups:
            text = "< " + " ".join(f"{a}={b}" if b is not None else a for a, b in g)
            if not self.pending:
                return self._check(line, False, "expected a packet, but the request on line "
                                   f"{self.step_line} produced no more packets", text)
            pkt = self.pending.pop(0)
            mismatches = self._compare(g, pkt)
            if mismatches:
                return self._check(line, False, "\n".join(
                    [f"expected: {' '.join(text.split()[1:])}", f"got:      {pkt.describe()}"]
                    + [f"mismatch: {m}" for m in mismatches]), text)
            self._check(line, True, "", text)
            if ("lost", None) not in g:
                self._store(pkt)
        return True

    def _store(self, p: Emitted) -> None:
        c = p.resp.cont
        self.nonces[c.seq] = p.resp.nonce
        if c.is_full:
            self.fulls[c.seq] = Stored(c, p.raw_cont, p.ucont)

    def _compare(self, spec: list[tuple[str, str | None]], p: Emitted) -> list[str]:
        out: list[str] = []
        c, r, e = p.resp.cont, p.resp, p.event

        def num(key: str, got: int | None, want: str, where: str = "") -> None:
            try:
                w = _int(want)
            except ValueError:
                out.append(f"{key}: expected a number, the script says {want!r}")
                return
            if got is None:
                out.append(f"{key}: expected {w}, got nothing{where}")
            elif got != w:
                out.append(f"{key}: expected {w}, got {got}{where}")

        for key, want in spec:
            if want is None:  # "lost"
                continue
            if key == "fbs":
                key = "first_bootstrap_seq"
            if key == "pkt":
                num("pkt (TCP seq)", p.seg.seq, want)
                num("pkt (continuation seq)", c.seq, want)
            elif key == "ack":
                num("ack", p.seg.ack, want)
            elif key == "flags":
                got = _flags_str(p.seg.flags)
                letters = dict(_FLAG_LETTERS)
                if set(want.upper()) - set(letters):
                    out.append(f"flags: unknown letters in {want!r} (use S F R P A)")
                elif set(want.upper()) != set(got):
                    out.append(f"flags: expected {want}, got {got}")
            elif key == "type":
                got = TYPE_NAMES.get(c.type, str(c.type))
                if want.upper() != got:
                    out.append(f"type: expected {want}, got {got}")
            elif key in ("state", "tcp_base", "start_cwnd", "ssthresh", "first_loss",
                         "first_bootstrap_seq", "timestamp", "mrtt", "key_epoch") and not c.is_full:
                out.append(f"{key}: not carried by a MINIMAL continuation (check the server's "
                           f"event instead: ! {e.kind if e else 'retransmit'} pkt={c.seq} "
                           f"{key}=...)")
            elif key == "state":
                got = STATE_NAMES.get(c.state, str(c.state))
                if want.upper() != got:
                    out.append(f"state: expected {want}, got {got}")
            elif key in ("first_child", "tcp_base", "start_cwnd", "ssthresh", "first_loss",
                         "first_bootstrap_seq", "timestamp", "mrtt", "key_epoch"):
                num(key, getattr(c, key), want)
            elif key == "siblings":
                num(key, r.num_siblings, want)
            elif key == "position":
                num(key, r.position, want)
            elif key == "data":
                got = _data_str(r)
                try:
                    wanted = ",".join(f"{a}:{b}" for a, b in _ranges(want)) or "none"
                except ValueError:
                    out.append(f"data: expected A:B or none, the script says {want!r}")
                    continue
                if wanted != got:
                    out.append(f"data: expected {wanted}, got {got}")
            elif key == "finhint":
                hints = [ch.byte_num for ch in r.chunks if isinstance(ch, FinHint)]
                if want == "none":
                    if hints:
                        out.append(f"finhint: expected none, got {hints[0]}")
                else:
                    num(key, hints[0] if hints else None, want)
            elif key == "kind":
                got = e.kind if e is not None else "none"
                if want != got:
                    out.append(f"kind: expected {want}, got {got}")
            elif key == "cwnd":
                num(key, e.cwnd if e is not None else None, want, " (server event)")
        return out

    # -------------------------------------------------------------- event expectations
    def _expect_event(self, line: Line) -> bool:
        (head, head_v), *fields = line.groups[0]
        got = " ".join(_describe_event(e) for e in self.step_events) or "no events"
        if head in ("app", "-app"):
            assert head_v is not None
            saw = ", ".join(self.step_app) or "nothing"
            want = head == "app"
            ok = (head_v.upper() in self.step_app) == want
            return self._check(line, ok, "" if ok else (
                f"expected the handler {'' if want else 'not '}to see a {head_v.upper()} "
                f"minisocket, it saw: {saw}"))
        if head.startswith("-"):
            kind = head[1:]
            bad = [e for e in self.step_events if e.kind == kind]
            return self._check(line, not bad, "" if not bad else (
                f"expected no {kind} event, got: {got}"))
        matching = [e for e in self.step_events if e.kind == head]
        if not matching:
            return self._check(line, False, f"expected event {head}, got: {got}")
        problems = []
        for e in matching:
            problems = [m for k, v in fields if (m := _event_mismatch(e, k, v))]
            if not problems:
                return self._check(line, True)
        return self._check(line, False, f"event {head} found, but: {'; '.join(problems)}")


def _event_mismatch(e: Event, key: str, want: str | None) -> str:
    if hasattr(e, key) and key != "detail":
        got = getattr(e, key)
    elif key in e.detail:
        got = e.detail[key]
    else:
        return f"{key}: the event has no such field"
    if key == "state" and isinstance(got, int):
        got = STATE_NAMES.get(got, got)
        return "" if str(want).upper() == got else f"state: expected {want}, got {got}"
    if isinstance(got, int) and want is not None:
        try:
            ok = got == _int(want)
        except ValueError:
            ok = False
    else:
        ok = str(got) == want
    return "" if ok else f"{key}: expected {want}, got {got}"


# ---------------------------------------------------------------------------- entry points
def run_scenario(text: str, name: str = "<scenario>", verbose: bool = False,
                 explore: bool = False, pcap: PcapWriter | None = None) -> ScenarioResult:
    """Parse and run one script; syntax errors become a failing check (never an exception).

    `explore` accepts packets no '<' line matched (they count as received): with `verbose`, a
    way to see what the server does before writing the expectations.
    """
    try:
        lines = parse_scenario(text)
    except ScenarioError as e:
        return ScenarioResult(name, [Check(e.line, "(syntax)", False, e.message)], error=e)
    return Runner(name, verbose, explore, pcap).run(lines)


def read_script(path: str | Path) -> str:
    """The script's text: at most `MAX_SCRIPT_BYTES` of UTF-8 (ScenarioError otherwise, line
    0 for the file as a whole); OSError when it cannot be read."""
    with open(path, "rb") as f:
        data = f.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise ScenarioError(0, f"larger than {MAX_SCRIPT_BYTES} bytes: not a scenario script")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(data.count(b"\n", 0, e.start) + 1,
                            f"not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def run_file(path: str | Path, verbose: bool = False, explore: bool = False) -> ScenarioResult:
    """Run one script file; a malformed one gives a failed result with `error` set."""
    p = Path(path)
    try:
        text = read_script(p)
    except ScenarioError as e:
        return ScenarioResult(p.name, [Check(e.line, "(file)", False, e.message)], error=e)
    return run_scenario(text, p.name, verbose, explore)


def scenario_paths() -> list[Path]:
    """The scenario files shipped in the trickles_kit package (trickles_kit/scenarios/*.txt)."""
    root = resources.files("trickles_kit") / "scenarios"
    return sorted(Path(str(root)).glob("*.txt"))


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}" if line > 0 else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """PASS/FAIL per file on stdout; a malformed script: one line on stderr. Exit status 0 (all
    passed), 1 (checks failed) or 2 (a script is malformed or could not be read or run)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m trickles_kit.testing.scenario [-v] [--explore] [FILE...]\n"
              "Runs Trickles server scenarios (no FILE: the shipped ones); prints PASS/FAIL.\n"
              "  -v           print a transcript of every request, packet and event\n"
              "  --explore    accept packets no '<' line matches (to draft a new script)\n"
              "  --traceback  let an internal error raise (instead of one line on stderr)\n"
              "Exit status: 0 all passed, 1 checks failed, 2 a script is malformed.")
        return 0
    verbose = "-v" in args
    explore = "--explore" in args
    traceback = "--traceback" in args
    args = [a for a in args if a not in ("-v", "--explore", "--traceback")]
    paths = [Path(a) for a in args] or scenario_paths()
    failed = broken = 0
    result: ScenarioResult | None = None
    for i, p in enumerate(paths):
        if i:
            result = None
            # the previous file's engine (its replay table: 12 MiB by default) sits in a cycle
            # with its handler: free it before the next one, so a run's memory is one file's
            gc.collect()
        if verbose:
            print(f"== {p}")
        try:
            result = run_file(p, verbose, explore)
        except OSError as e:
            print(f"{p}: cannot read: {e.strerror or e}", file=sys.stderr)
            broken += 1
            continue
        except Exception as e:  # not the script's fault: a bug here or in the server
            if traceback:
                raise
            where = _where(p, getattr(e, "scenario_line", 0))
            print(f"{where}: internal error: {type(e).__name__}: {e} (--traceback for details)",
                  file=sys.stderr)
            broken += 1
            continue
        if result.error is not None:
            print(f"{_where(p, result.error.line)}: {result.error.message}", file=sys.stderr)
            broken += 1
            continue
        print(result.report())
        failed += not result.passed
    return 2 if broken else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
