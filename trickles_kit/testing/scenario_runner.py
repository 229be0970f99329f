"""The scenario runner: a fully scripted client against one `ServerEngine` on a virtual clock.

`Runner.run` plays parsed `Line`s (see `trickles_kit.testing.scenario` for the format): it builds
each request the way the script says (continuations echoed, SACK summaries computed from the
nonces received, fields tampered with), feeds it to the engine and matches what the engine
emits and reports against the expectations, stopping at the first failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Iterable

from trickles_kit.apps.generated import Generated
from trickles_kit.core import events as ev
from trickles_kit.core.events import Event
from trickles_kit.core.server import Minisocket, ServerConfig, ServerEngine
from trickles_kit.net.ip import PROTO_TRICKLES
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.testing.scenario_checks import (
    Check,
    Emitted,
    ScenarioResult,
    Stored,
    describe_event,
    event_mismatch,
    packet_mismatches,
)
from trickles_kit.testing.scenario_script import (
    U32,
    Line,
    ScenarioError,
    config_value,
    in_range,
    ip_bytes,
    parse_int,
    parse_ranges,
)
from trickles_kit.wire.continuation import FULL_LEN, MAC_LEN, MAC_OFFSET
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    MAX_SACKS,
    REQ_FIN,
    REQ_NORMAL,
    REQ_SLOWSTART,
    REQ_SYN,
    Request,
    SackBlock,
    decode_response,
)
from trickles_kit.wire.segment import ACK, FIN, HEADER_LEN, SYN, decode_segment, encode_segment

SECRET = b"trickles-kit scenario secret 32b"  # fixed: runs are deterministic
MAX_SEGMENT = 65507  # a request must fit one UDP datagram over IPv4 (65535 - 20 - 8)
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

_REQ_TYPES = {"normal": REQ_NORMAL, "slowstart": REQ_SLOWSTART, "fin": REQ_FIN}
_SLOT_KINDS = (ev.INITIAL, ev.CONTINUE, ev.SPLIT, ev.RETRANSMIT, ev.BOOTSTRAP, ev.SYN, ev.FIN)


def _encode(no: int, req: Request) -> bytes:
    """The request's bytes; a value its wire fields cannot hold is a script error."""
    try:
        return req.encode()
    except (ValueError, OverflowError, struct.error) as e:
        raise ScenarioError(no, f"the request does not fit the wire format: {e}") from None


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
                self.engine = ServerEngine(SECRET, handler, ip_bytes(SERVICE[0]), SERVICE[1],
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
                self.cfg[k] = config_value(line.no, k, v)
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
                ip_bytes(ip)
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
        cip = ip_bytes(src[0])
        self.last_request = (segment, cip, src)
        self.step_line = line.no
        self.step_events = []
        self.step_app = []
        out = self._engine().receive(segment, cip, self.now)
        if self.pcap is not None:
            sip = ip_bytes(SERVICE[0])
            self.pcap.log(self.now, cip, sip, segment, PROTO_TRICKLES)
            for datagram in out:
                self.pcap.log(self.now, sip, cip, datagram, PROTO_TRICKLES)
        self._log(f"t={self.now:.3f} line {line.no}: > {desc} -> {len(out)} packet(s)")
        emitted = []
        for datagram in out:
            try:
                seg = decode_segment(datagram, ip_bytes(SERVICE[0]), cip)
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
            self._log("    ! " + " ".join(describe_event(e) for e in self.step_events))
        self.pending = emitted

    def _build(self, line: Line, opts: dict[str, str | None],
               src: tuple[str, int]) -> tuple[bytes, str]:
        no = line.no
        app = (opts.get("app") or "").encode()
        ranges = self._opt(no, "range", opts, parse_ranges, [])
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
                n = self._opt(no, "pad", opts, parse_int, 0)
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
        k = self._opt(no, "ack", opts, parse_int, 0)
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
                setattr(cont, fname, in_range(no, fname,
                                              self._opt(no, fname, opts, parse_int, 0), 0, U32))
        sacks = self._sacks(no, opts.get("sack"), "lie" in opts)
        ucont_opt = opts.get("ucont")
        if ucont_opt is None:
            ucont = stored.ucont
        elif ucont_opt == "none":
            ucont = b""
        else:
            src_pkt = self._opt(no, "ucont", opts, parse_int, 0)
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
                left = parse_int(left_s)
                right = parse_int(right_s) if right_s else left
                explicit = parse_int(given) if given else None
            except ValueError:
                raise ScenarioError(no, f"bad SACK block {part!r} (L-R or L-R:0xSUMMARY)") from None
            if not (0 <= left <= U32 and 0 <= right <= U32):  # (R < L: the server's to judge)
                raise ScenarioError(no, f"bad SACK block {part!r}: L and R are 32-bit packet "
                                        "numbers")
            if explicit is not None:
                blocks.append(SackBlock(left, right, explicit & U32))
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
        return encode_segment(ip_bytes(src[0]), ip_bytes(SERVICE[0]), src[1], SERVICE[1],
                              self.req_seq, ack, flags, payload, 0, 0xFFFF)

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
            mismatches = packet_mismatches(g, pkt)
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

    # -------------------------------------------------------------- event expectations
    def _expect_event(self, line: Line) -> bool:
        (head, head_v), *fields = line.groups[0]
        got = " ".join(describe_event(e) for e in self.step_events) or "no events"
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
            problems = [m for k, v in fields if (m := event_mismatch(e, k, v))]
            if not problems:
                return self._check(line, True)
        return self._check(line, False, f"event {head} found, but: {'; '.join(problems)}")
