"""What a scenario checks and how it reports: results, the packets the server emitted, and the
comparison of an expectation ('<' and '!' lines) with what happened."""

from __future__ import annotations

from dataclasses import dataclass, field

from trickles_kit.core.events import Event
from trickles_kit.testing.scenario_script import ScenarioError, parse_int, parse_ranges
from trickles_kit.wire.continuation import STATE_NAMES, TYPE_NAMES, Continuation
from trickles_kit.wire.messages import DataChunk, FinHint, Response
from trickles_kit.wire.segment import ACK, FIN, PSH, RST, SYN, Segment

FLAG_LETTERS = (("S", SYN), ("F", FIN), ("R", RST), ("P", PSH), ("A", ACK))


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


def flags_str(flags: int) -> str:
    return "".join(letter for letter, bit in FLAG_LETTERS if flags & bit) or "."


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
                 f"flags={flags_str(self.seg.flags)}", f"type={TYPE_NAMES.get(c.type, c.type)}"]
        if c.seq != self.seg.seq:
            parts.append(f"cont.seq={c.seq}")
        if c.is_full:
            parts += [f"state={STATE_NAMES.get(c.state, c.state)}", f"tcp_base={c.tcp_base}",
                      f"start_cwnd={c.start_cwnd}", f"ssthresh={c.ssthresh}"]
            if c.first_loss or c.first_bootstrap_seq:
                parts += [f"first_loss={c.first_loss}", f"fbs={c.first_bootstrap_seq}"]
        parts += [f"siblings={r.num_siblings}", f"position={r.position}",
                  f"data={data_str(r)}"]
        fh = [ch.byte_num for ch in r.chunks if isinstance(ch, FinHint)]
        if fh:
            parts.append(f"finhint={fh[0]}")
        if self.event is not None:
            parts += [f"kind={self.event.kind}", f"cwnd={self.event.cwnd}"]
        return " ".join(parts)


def data_str(r: Response) -> str:
    spans = [f"{ch.byte_num}:{ch.byte_num + len(ch.data)}" for ch in r.chunks
             if isinstance(ch, DataChunk)]
    return ",".join(spans) or "none"


def describe_event(e: Event) -> str:
    bits = [e.kind]
    if e.pkt >= 0:
        bits.append(f"pkt={e.pkt}")
    if "reason" in e.detail:
        bits.append(f"reason={e.detail['reason']}")
    return "(" + " ".join(bits) + ")" if len(bits) > 1 else e.kind


def packet_mismatches(spec: list[tuple[str, str | None]], p: Emitted) -> list[str]:
    """What differs between a '<' group and the packet the server emitted (empty: a match)."""
    out: list[str] = []
    c, r, e = p.resp.cont, p.resp, p.event

    def num(key: str, got: int | None, want: str, where: str = "") -> None:
        try:
            w = parse_int(want)
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
            got = flags_str(p.seg.flags)
            letters = dict(FLAG_LETTERS)
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
            got = data_str(r)
            try:
                wanted = ",".join(f"{a}:{b}" for a, b in parse_ranges(want)) or "none"
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


def event_mismatch(e: Event, key: str, want: str | None) -> str:
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
            ok = got == parse_int(want)
        except ValueError:
            ok = False
    else:
        ok = str(got) == want
    return "" if ok else f"{key}: expected {want}, got {got}"
