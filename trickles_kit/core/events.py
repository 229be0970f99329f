"""One event vocabulary for engines, pcap decoding and every view (JSON lines on disk).

An event says what a protocol step did — never how it was transported — so a live run, a
simulated run and a decoded capture produce the same stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any

from trickles_kit.core.names import Name


class EventKind(Name):
    """Every kind of event. A StrEnum: members compare and serialize as their plain names, so
    JSON lines, Counter keys and `e.kind == "split"` behave as the strings always did."""

    # server side
    SYN = "syn"
    SPLIT = "split"
    CONTINUE = "continue"
    TERMINATE = "terminate"
    RETRANSMIT = "retransmit"
    BOOTSTRAP = "bootstrap"
    INITIAL = "initial"
    RECOVERY_START = "recovery_start"
    SLOWSTART = "slowstart"
    FIN = "fin"
    NONCE_OK = "nonce_ok"
    NONCE_FAIL = "nonce_fail"
    MAC_FAIL = "mac_fail"
    REPLAY_DROP = "replay_drop"
    STALE_DROP = "stale_drop"
    DROP = "drop"  # any other counted drop (decode, bad SACK, beyond window...), reason in detail
    # client side
    TIMEOUT = "timeout"
    RECOVERY_END = "recovery_end"
    LOSS_DETECTED = "loss_detected"
    REQUEST = "request"
    DATA = "data"
    DONE = "done"


# module-level names: the engines' hot paths read these (a global, not an enum attribute)
SYN, SPLIT, CONTINUE, TERMINATE = (EventKind.SYN, EventKind.SPLIT, EventKind.CONTINUE,
                                   EventKind.TERMINATE)
RETRANSMIT, BOOTSTRAP, INITIAL = EventKind.RETRANSMIT, EventKind.BOOTSTRAP, EventKind.INITIAL
RECOVERY_START, SLOWSTART, FIN = EventKind.RECOVERY_START, EventKind.SLOWSTART, EventKind.FIN
NONCE_OK, NONCE_FAIL, MAC_FAIL = EventKind.NONCE_OK, EventKind.NONCE_FAIL, EventKind.MAC_FAIL
REPLAY_DROP, STALE_DROP, DROP = EventKind.REPLAY_DROP, EventKind.STALE_DROP, EventKind.DROP
TIMEOUT, RECOVERY_END = EventKind.TIMEOUT, EventKind.RECOVERY_END
LOSS_DETECTED, REQUEST, DATA, DONE = (EventKind.LOSS_DETECTED, EventKind.REQUEST,
                                      EventKind.DATA, EventKind.DONE)

KINDS = tuple(EventKind)


@dataclass(slots=True)
class Event:
    kind: str
    t: float
    side: str  # "server" | "client"
    _: KW_ONLY  # the rest by name: ten ints in a row are too easy to pass in the wrong order
    conn_id: int = 0
    pkt: int = -1
    ack: int = -1
    cwnd: int = 0
    ssthresh: int = 0
    tcp_base: int = 0
    state: int = 0
    detail: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Event:
        return cls(**json.loads(line))

    @classmethod
    def make(cls, kind: str, t: float, side: str, /, **kw: Any) -> Event:
        """The one constructor the engines and the decoder use: keyword arguments that name a
        field set it, any other goes into `detail` (so a new detail needs no new field)."""
        fields = {k: v for k, v in kw.items() if k in _FIELDS}
        detail = {k: v for k, v in kw.items() if k not in _FIELDS}
        return cls(kind, t, fields.pop("side", side), detail=detail, **fields)


_FIELDS = frozenset(Event.__dataclass_fields__) - {"kind", "t", "detail"}  # side: an override


EventSink = Callable[[Event], None]


class EventLog:
    """A list sink that also counts kinds; handy for tests, notebooks and the CLI."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e.kind == kind)
