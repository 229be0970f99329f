"""Admission: the server's ordered checks on one request, written once.

Why one place: the server answers with `admit`, the capture decoder explains with the very same
function why a request went unanswered, and tests/capture/test_admission_agree.py checks that
both reach the same verdict on the same requests. A change to what the server accepts goes
here only.

The checks run in this order; the first that fails is the verdict (`Reason`, whose values are the
engine's drop-reason strings, so counters, events and JSON are unchanged):

    frame (SYN flag vs request type)  ->  key epoch  ->  MAC  ->  sealed fields (bad_cont)
    ->  freshness  ->  SACK count  ->  SACK shape and nonce, block by block
    ->  early SLOWSTART  ->  replay  ->  plan

Everything that is not in the request — keys, nonces, the replay table — is passed in as a
`View`, and the clock as `now`: each side brings its own. The server brings its KeyRing, NonceGen
and ReplayHistory; the decoder brings what a capture shows (MAC verdicts computed while decoding,
a replay view rebuilt from the capture, which knows nothing of a server restart). A hook that is
None, or answers None, leaves its stage unjudged (a capture decoded without the secret).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from trickles_kit.core import delta as dl
from trickles_kit.core import events as ev
from trickles_kit.core.cc import MAX_CWND
from trickles_kit.core.names import Name
from trickles_kit.core.plan import Plan
from trickles_kit.core.replay import slowstart_age_bucket
from trickles_kit.wire.continuation import Continuation
from trickles_kit.wire.messages import REQ_FIN, REQ_SLOWSTART, REQ_SYN

__all__ = ["Reason", "Rules", "Verdict", "View", "admit", "bad_cont", "check_sacks",
           "event_kind", "frame_reason", "plan_of", "replay_key", "SACK_REACH"]

U32 = 0xFFFFFFFF
SEQ_LIMIT = U32 - 4 * MAX_CWND  # packet numbers never wrap within a connection
SACK_REACH = 8192  # a SACK block may start at most this many packets below TCPBase
_U64 = struct.Struct("!Q").unpack_from  # the replay key's first 8 MAC bytes


class Reason(Name):
    """Why a request is refused: the engine's drop-reason strings (counter `drop.<reason>`)."""

    PORT = "port"
    SYN_TYPE = "syn_type"
    SYN_FLAG = "syn_flag"
    KEY_EPOCH = "key_epoch"
    MAC = "mac"
    BAD_CONT = "bad_cont"
    FUTURE = "future"
    STALE = "stale"
    SACK_COUNT = "sack_count"
    SACK_SHAPE = "sack_shape"
    NONCE = "nonce"
    EARLY_SLOWSTART = "early_slowstart"
    REPLAY = "replay"
    REPLAY_HORIZON = "replay_horizon"
    PLAN_ACK_BEFORE_EPOCH = "plan.ack_before_epoch"
    PLAN_ACK_BEYOND_WINDOW = "plan.ack_beyond_the_window"
    APP_DROP = "app_drop"
    AMPLIFICATION = "amplification"

    @classmethod
    def of(cls, text: str) -> Reason | str:
        """The member for `text`, or `text` itself (decode.<token>, internal.<Exception>)."""
        try:
            return cls(text)
        except ValueError:
            return text


_KINDS: dict[str, str] = {
    Reason.KEY_EPOCH: ev.MAC_FAIL, Reason.MAC: ev.MAC_FAIL,
    Reason.FUTURE: ev.STALE_DROP, Reason.STALE: ev.STALE_DROP,
    Reason.NONCE: ev.NONCE_FAIL,
    Reason.REPLAY: ev.REPLAY_DROP, Reason.REPLAY_HORIZON: ev.REPLAY_DROP,
}


def event_kind(reason: Reason | str) -> str:
    """The event a refusal is logged as (`drop` unless the reason has its own kind)."""
    return _KINDS.get(reason, ev.DROP)


class Rules(Protocol):
    """The settings admission reads (a `core.server.ServerConfig` has them all)."""

    freshness: float
    future_skew: float
    max_sacks: int
    max_gap: int
    slowstart_bucket: float
    slowstart_min_age: float


@dataclass(slots=True)
class View:
    """What one side knows beyond the request; a hook that is None is not judged.

    * ``epoch_ok(epoch, now)``: is this key epoch accepted now (the server: `KeyRing.accepts`);
    * ``mac_ok(cont, token)``: does the continuation's MAC verify (lazy: after the epoch check,
      so a bogus epoch never derives a key); None = unknown;
    * ``summary(conn_id, tcp_base, left, right)``: the true nonce summary of a SACK block;
    * ``seen(key, now, sealed, token)``: the replay table: records `key` and answers a
      `Reason` when the continuation was used before (or cannot be told from a reuse).

    `token` is whatever the caller passes to `admit` for its hooks (the server: pseudo-header
    and raw bytes; the decoder: the packet row).
    """

    epoch_ok: Callable[[int, float], bool | None] | None = None
    mac_ok: Callable[[Continuation, Any], bool | None] | None = None
    summary: Callable[[int, int, int, int], int] | None = None
    seen: Callable[[int, float, float, Any], Reason | str | None] | None = None


class Verdict(NamedTuple):
    """The outcome of `admit`: admitted (`reason` None) or refused, and what the checks found.

    A tuple: `admit` builds it with ``tuple.__new__`` (a third of a dataclass's cost, on the
    server's per-request path)."""

    reason: Reason | str | None = None
    age: int = 0  # the continuation's age on `now`'s clock, ms, u32 (>= 2^31: from the future)
    blocks: list[tuple[int, int]] | None = None  # the SACK claims, once their stage passed
    plan: Plan | None = None  # None for FIN and for refusals before the plan
    key: int = 0  # the replay key (0 when refused before the replay stage)

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def kind(self) -> str:
        """The event kind of the refusal (see `event_kind`)."""
        return event_kind(self.reason) if self.reason is not None else ""


def frame_reason(syn_flag: bool, rtype: int) -> Reason | None:
    """The frame check: the TCP SYN flag and a SYN request come together or not at all."""
    if syn_flag:
        return None if rtype == REQ_SYN else Reason.SYN_TYPE
    return Reason.SYN_FLAG if rtype == REQ_SYN else None


def bad_cont(k: int, tcp_base: int, start_cwnd: int, ssthresh: int) -> bool:
    """A (MAC-valid) continuation (seq `k`) with fields this server never seals: another build,
    a leaked key. Refused rather than planned (planning them could ask for billions of slots).
    Scalars, not a Continuation: the decoder asks this of every captured request's fields."""
    return (not 1 <= start_cwnd <= ssthresh or start_cwnd > MAX_CWND or k > SEQ_LIMIT
            or (k == tcp_base - 1 and start_cwnd > 64))


def check_sacks(k: int, base: int, cid: int, sacks: Sequence[tuple[int, int, int]],
                max_sacks: int, summary: Callable[[int, int, int, int], int] | None
                ) -> tuple[list[tuple[int, int]] | None, Reason | None]:
    """Count, then shape and nonce block by block, for a continuation with seq `k`, TCPBase
    `base` and connId `cid`: (the (left, right) claims, None) or (None, the reason). Without
    `summary` the nonces are not judged."""
    if len(sacks) > max_sacks:
        return None, Reason.SACK_COUNT
    low = base - SACK_REACH
    prev = -1
    blocks = []
    for left, right, s in sacks:
        if left <= prev or right < left or right > k or left < low:
            return None, Reason.SACK_SHAPE
        if summary is not None and summary(cid, base, left, right) != s:
            return None, Reason.NONCE
        prev = right
        blocks.append((left, right))
    return blocks, None


def replay_key(mac: bytes, rtype: int, age: int, bucket_s: float) -> int:
    """One use per sealed continuation: its verified MAC names it (connId, packet number,
    timestamp, type, epoch...) in 64 unforgeable bits; the tag adds the request type. A
    SLOWSTART or FIN may be retried on one continuation once per age bucket (honest clients
    back off, so their retries fall in distinct buckets: `slowstart_age_bucket`)."""
    tag = rtype
    if rtype in (REQ_SLOWSTART, REQ_FIN):
        tag |= (slowstart_age_bucket(age, bucket_s * 1000) & 0xFFFFFF) << 8
    return _U64(mac)[0] ^ (tag << 32)


# The plan stage: what a request makes the server send — `core.delta.plan_for(ctype, k,
# tcp_base, start_cwnd, ssthresh, state, blocks, slowstart, max_gap)` itself (an alias, so the
# decoder re-plans every captured request at no extra call).
plan_of = dl.plan_for


def plan_reason(plan: Plan) -> Reason | str:
    return Reason.of("plan." + plan.reason.replace(" ", "_"))


def admit(rtype: int, c: Continuation, sacks: Sequence[tuple[int, int, int]], now: float,
          rules: Rules, view: View, token: Any = None, plan: Plan | None = None,
          _new=tuple.__new__) -> Verdict:
    """Run the ordered checks on a decoded non-SYN request (see the module docstring).

    `c` is its FULL continuation, `sacks` its (left, right, summary) blocks, `now` the server's
    clock in seconds. `plan`, when given, is `plan_of` computed already by the caller.
    """
    epoch_ok = view.epoch_ok
    if epoch_ok is not None and epoch_ok(c.key_epoch, now) is False:
        return _new(Verdict, (Reason.KEY_EPOCH, 0, None, None, 0))
    mac_ok = view.mac_ok
    mac = mac_ok(c, token) if mac_ok is not None else None
    if mac is False:
        return _new(Verdict, (Reason.MAC, 0, None, None, 0))
    if bad_cont(c.seq, c.tcp_base, c.start_cwnd, c.ssthresh):
        return _new(Verdict, (Reason.BAD_CONT, 0, None, None, 0))
    now_ms = int(now * 1000)
    age = (now_ms - c.timestamp) & U32
    if mac is not None:  # an unauthenticated timestamp says nothing: not judged
        if age >= 1 << 31:
            if (1 << 32) - age > rules.future_skew * 1000:
                return _new(Verdict, (Reason.FUTURE, age, None, None, 0))
        elif age > rules.freshness * 1000:
            return _new(Verdict, (Reason.STALE, age, None, None, 0))
    blocks, why = check_sacks(c.seq, c.tcp_base, c.conn_id, sacks, rules.max_sacks,
                              view.summary)
    if why is not None or blocks is None:
        return _new(Verdict, (why, age, None, None, 0))
    if rtype == REQ_SLOWSTART and age < rules.slowstart_min_age * 1000:
        # a timeout fires at least one minimum RTO after the newest packet arrived: a younger
        # continuation is a client choosing SLOWSTART to skip a window halving
        return _new(Verdict, (Reason.EARLY_SLOWSTART, age, blocks, None, 0))
    key = replay_key(c.mac, rtype, age, rules.slowstart_bucket)
    seen = view.seen
    if seen is not None:
        # sealed when, in whole milliseconds as sealed: `now - age/1000` would carry now's
        # sub-millisecond fraction and could put a replay one tick above the horizon its own
        # eviction set
        replayed = seen(key, now,
                        (now_ms - (age - (1 << 32) if age >= 1 << 31 else age)) / 1000, token)
        if replayed is not None:
            return _new(Verdict, (replayed, age, blocks, None, key))
    if rtype == REQ_FIN:
        return _new(Verdict, (None, age, blocks, None, key))
    if plan is None:
        plan = plan_of(c.type, c.seq, c.tcp_base, c.start_cwnd, c.ssthresh, c.state, blocks,
                       rtype == REQ_SLOWSTART, rules.max_gap)  # type: ignore[arg-type]
    if plan.verdict == "reject":
        return _new(Verdict, (plan_reason(plan), age, blocks, plan, key))
    return _new(Verdict, (None, age, blocks, plan, key))
