"""The scenario script language: lines, tokens and the values a line may carry.

`parse_scenario` turns a script (the format is described in `trickles_kit.testing.scenario`)
into `Line`s and rejects bad syntax and out-of-range values with a `ScenarioError` naming the
line, before anything is allocated; the value helpers here are shared with the runner, which
checks a request's values when it builds it.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from trickles_kit.core import events as ev
from trickles_kit.core.server import ServerConfig

MAX_SCRIPT_BYTES = 1 << 20  # a script larger than this is refused unread
MAX_TABLE = 1 << 20  # replay_entries / state_cache: the replay table is allocated whole
U32 = 0xFFFFFFFF

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
def ip_bytes(s: str) -> bytes:
    parts = s.split(".")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {s}")
    return bytes(int(p) for p in parts)


def parse_int(v: str) -> int:
    """Decimal (leading zeros allowed) or 0x/0o/0b-prefixed."""
    try:
        return int(v, 0)
    except ValueError:
        return int(v, 10)


def in_range(no: int, key: str, v: int, lo: int, hi: int) -> int:
    if not lo <= v <= hi:
        raise ScenarioError(no, f"{key}={v} is out of range ({lo}..{hi})")
    return v


def parse_ranges(v: str) -> list[tuple[int, int]]:
    if v == "none":
        return []
    out = []
    for part in v.split(","):
        a, b = part.split(":")
        out.append((parse_int(a), parse_int(b)))
    return out


def config_value(no: int, key: str, v: str) -> int | float:
    """A config value: an integer where ServerConfig has one, finite and non-negative; the
    fields that size an allocation at most `MAX_TABLE`."""
    default = getattr(ServerConfig(), key)
    try:
        val: int | float = parse_int(v)
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
        in_range(no, f"config {key}", val, 0,
                 MAX_TABLE if key in ("replay_entries", "state_cache") else U32)
    return val
