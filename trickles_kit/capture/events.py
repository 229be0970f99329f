"""The server's events, derived from a decoded capture's rows (rules: `capture.decode`).

Why this is short: the protocol is not re-stated here. Responses are paired with their requests
by `core.pairing`; every request is re-planned by `core.admission.plan_of` and, when nothing
answered it, judged by `core.admission.admit` — the server's own ordered checks — with what the
capture shows in place of the server's state (`_CaptureView`): the MAC verdicts the decoder
computed, the key epochs the server was seen sealing, and a replay table rebuilt from the
capture itself (a capture knows nothing of a server restart, and without the secret it can only
recognise a replay by its MAC-covered bytes).
"""

from __future__ import annotations

from collections import Counter
from operator import itemgetter

from trickles_kit.capture.parse import Verifier, default_config
from trickles_kit.capture.rows import PacketRow
from trickles_kit.core import events as ev
from trickles_kit.core.admission import (
    U32,
    Reason,
    View,
    admit,
    bad_cont,
    check_sacks,
    frame_reason,
    plan_of,
    replay_key,
)
from trickles_kit.core.events import Event
from trickles_kit.core.pairing import Pairing, Pending
from trickles_kit.core.plan import Plan
from trickles_kit.wire.continuation import Continuation
from trickles_kit.wire.messages import REQ_FIN, REQ_NORMAL, REQ_SLOWSTART, REQ_SYN
from trickles_kit.wire.segment import FIN, SYN

__all__ = ["ADMITTED", "UNANSWERED", "Derivation", "derive_events", "row_cont", "row_type"]

_TYPES = {"NORMAL": REQ_NORMAL, "SLOWSTART": REQ_SLOWSTART, "SYN": REQ_SYN, "FIN": REQ_FIN}


def row_type(row: PacketRow) -> int:
    """The request type number of a request row."""
    return _TYPES.get(row.req_type or "", -1)


def row_cont(row: PacketRow) -> Continuation:
    """The continuation a request row echoes (the row holds its fields in wire order)."""
    return Continuation(row.cont_type, row.cont_seq, row.first_child, row.client_state,
                        row.parent, row.client_timestamp, row.timestamp, row.mrtt, row.state,
                        row.first_loss, row.first_bootstrap_seq, row.start_cwnd, row.ssthresh,
                        row.tcp_base, row.conn_id, row.key_epoch, row.mac)


def covered(row: PacketRow, response: bool = False) -> tuple:
    """What the MAC covers: the pseudo-header and the server-owned continuation fields."""
    client = (row.dst, row.src, row.dport, row.sport) if response else (
        row.src, row.dst, row.sport, row.dport)
    return (*client, row.cont_type, row.cont_seq,
            row.first_child, row.timestamp, row.mrtt, row.state, row.first_loss,
            row.first_bootstrap_seq, row.start_cwnd, row.ssthresh, row.tcp_base, row.conn_id,
            row.key_epoch)


def _event(kind: str, t: float, side: str, conn_id: int, pkt: int, ack: int, cwnd: int,
           ssthresh: int, tcp_base: int, state: int, detail: dict, _new=object.__new__,
           _cls=Event, _init=Event.__init__) -> Event:
    """An `Event` from all its fields in order: the decoder makes one per response and per
    SACKed request. Calling the class with keywords (Event is keyword-only) builds a dict of
    them for every event (type.__call__ -> __init__), twice the cost of this direct call."""
    e = _new(_cls)
    _init(e, kind, t, side, conn_id=conn_id, pkt=pkt, ack=ack, cwnd=cwnd, ssthresh=ssthresh,
          tcp_base=tcp_base, state=state, detail=detail)
    return e


def _cont_event(kind: str, row: PacketRow, pkt: int = -1, cwnd: int = 0, **detail) -> Event:
    """A server event from a request row: the continuation's fields, `pkt` and `cwnd`, the
    rest of the keywords its detail (as `Event.make` would file them)."""
    return _event(kind, row.t, "server", row.conn_id or 0, pkt, row.cont_seq,  # type: ignore
                  cwnd, row.ssthresh or 0, row.tcp_base or 0, row.state or 0, detail)


def _timeout_event(row: PacketRow, plan: Plan) -> Event:
    return _event(ev.TIMEOUT, row.t, "client", row.conn_id or 0, row.cont_seq, -1, 0, 0, 0, 0,
                  {"right": plan.slots[0].pkt - 1} if plan.slots else {})  # type: ignore[arg-type]


def _nonce_ok(row: PacketRow) -> Event:
    return _event(ev.NONCE_OK, row.t, "server", row.conn_id or 0, -1, row.cont_seq,  # type: ignore[arg-type]
                  0, row.ssthresh or 0, row.tcp_base or 0, row.state or 0,
                  {"blocks": [[lft, rgt] for lft, rgt, _ in row.sacks]})  # type: ignore[union-attr]


class _CaptureView:
    """The server's state as the capture shows it: admission's `View` for the decoder."""

    def __init__(self, cfg, verifier: Verifier | None) -> None:
        self.cfg = cfg
        self.verifier = verifier
        self.max_epoch = -1  # the newest key epoch the server was seen sealing with
        # MAC -> the last server-sent row carrying it (what it covers: `covered(row, True)`,
        # computed only when a request with that MAC is judged)
        self.genuine: dict[bytes, PacketRow] = {}
        # replay key -> (t, covered fields, answered)
        # (the request row, not its covered fields: those are compared only on a repeat)
        self.history: dict[int, tuple[float, PacketRow, bool]] = {}
        self.inferred = False  # the last refusal was inferred without the secret

    def view(self) -> View:
        """Admission's hooks: this view's bound methods. Not kept on the view itself: that
        cycle would leave its tables (two entries a request) to a full GC pass to free."""
        return View(self.epoch_ok if self.verifier else None, self.mac_ok,
                    self.verifier.nonces.range_summary if self.verifier else None, self.seen)

    def epoch_ok(self, epoch: int, now: float) -> bool:
        """Current or previous epoch on the capture's clock; a later one only when the server
        was seen sealing with it (a server clock ahead of the capture's)."""
        slot = int(now // self.cfg.epoch_seconds)
        return not (epoch < slot - 1 or (epoch > slot and epoch > self.max_epoch))

    def mac_ok(self, cont: Continuation, row: PacketRow) -> bool | None:
        if self.verifier is not None:
            return row.mac_ok
        known = self.genuine.get(row.mac)  # type: ignore[arg-type]
        if known is not None and covered(known, response=True) != covered(row):
            self.inferred = True  # a MAC the server sealed over other bytes
            return False
        return None

    def seen(self, key: int, now: float, sealed: float, row: PacketRow) -> Reason | None:
        prev = self.history.get(key)
        fresh = self.cfg.freshness
        if prev is not None and now - prev[0] > fresh + fresh / 12:
            prev = None
        if prev is None:
            self.history[key] = (now, row, False)
            return None
        if self.verifier is not None or covered(prev[1]) == covered(row):
            return Reason.REPLAY
        if prev[2]:  # an answered request proved this MAC belongs to other bytes
            self.inferred = True
            return Reason.MAC
        return None

ADMITTED = "admitted"  # a request verdict: answered, or valid by every check
UNANSWERED = "unanswered"  # valid by every check the capture can judge, yet not answered


def derive_events(rows: list[PacketRow], secret: bytes | None = None, config=None,
                  errors: Counter | None = None, verifier: Verifier | None = None,
                  verdicts: dict[int, str] | None = None) -> list[Event]:
    """The engine's events, derived from decoded rows (see `capture.decode`'s docstring).

    `verdicts`, when given, receives the verdict on every request row (by its `index`):
    `ADMITTED`, `UNANSWERED` or the refusal's reason (`core.admission.Reason` values,
    ``decode.<token>``) — what the server's admission decided, as far as the capture shows.
    """
    cfg = config if config is not None else default_config()
    if verifier is None and secret is not None:
        verifier = Verifier(bytes(secret), cfg)
    d = Derivation(cfg, verifier, errors if errors is not None else Counter())
    if verdicts is not None:
        d.verdicts = verdicts
    d.walk(rows)  # pass 1: requests register, responses find their request
    return [e for _, _, e in d.finish()]


class Derivation:
    """The state of one `derive_events` run (also the columnar derivation's path for the
    requests it does not take: `capture.events_columns`)."""

    def __init__(self, cfg, verifier: Verifier | None, errors: Counter) -> None:
        self.cfg = cfg
        self.verifier = verifier
        self.errors = errors
        self.out: list[tuple[int, int, Event]] = []  # (capture index, order within it, event)
        self.pairing = Pairing()
        self.answered_syns: set[int] = set()
        self.reqs: list[Pending | PacketRow] = []
        self.cv = _CaptureView(cfg, verifier)
        self.view = self.cv.view()
        self.verdicts: dict[int, str] = {}

    def request(self, row: PacketRow) -> None:
        if row.error is not None or row.req_type == "SYN" or row.flags & SYN:
            self.reqs.append(row)
            if row.error is None and row.req_type == "SYN" and row.flags & SYN:
                self.pairing.add_syn(row.src, row.sport, row.dst, row.dport, row)
            return
        rtype = _TYPES.get(row.req_type, -1)  # type: ignore[arg-type]
        k, base, c0, ss = row.cont_seq, row.tcp_base, row.start_cwnd, row.ssthresh
        plan = plan_error = None
        if rtype != REQ_FIN and bad_cont(k, base, c0, ss):  # type: ignore[arg-type]
            # fields no server seals: admission refuses them before planning; planning them
            # could ask for billions of slots (a corrupt capture's start_cwnd)
            plan_error = Reason.BAD_CONT
        elif rtype != REQ_FIN:
            blocks, why = check_sacks(k, base, row.conn_id, row.sacks or (),  # type: ignore
                                      self.cfg.max_sacks, None)
            if why is None:
                try:
                    plan = plan_of(row.cont_type, k, base, c0, ss, row.state,  # type: ignore
                                   blocks, rtype == REQ_SLOWSTART, self.cfg.max_gap)
                except Exception as e:  # impossible fields (never sealed by a server)
                    plan_error = "internal." + type(e).__name__
        entry = Pending(row, row.index, row.cont_seq, rtype == REQ_FIN,  # type: ignore[arg-type]
                        row.mac_ok is False, plan, plan_error)
        self.reqs.append(entry)
        self.pairing.add(entry, row.src, row.sport, row.dst, row.dport, row.client_state,
                         row.parent, row.client_timestamp)

    def walk(self, rows: list[PacketRow]) -> None:
        """Pass 1, in capture order: requests register (`request`), each response is paired
        with its request and gives the event of the plan slot it fills."""
        cv, out, errors = self.cv, self.out, self.errors
        answer = self.pairing.answer
        for row in rows:
            if row.direction == "request":
                self.request(row)
                continue
            if row.error is not None:
                continue
            if row.key_epoch is not None:
                if row.key_epoch > cv.max_epoch:
                    cv.max_epoch = row.key_epoch
                # a continuation the server emitted is genuine: remember what its MAC covers
                cv.genuine[row.mac] = row  # type: ignore[index]
            if row.flags & SYN:
                self.synack(row)
                continue
            hit, slot, note = answer(
                row.src, row.sport, row.dst, row.dport, row.ack, row.client_state, row.parent,
                row.client_timestamp, row.index, row.seq, row.position, bool(row.flags & FIN))
            if note is not None:
                errors[note] += 1
            if hit is None:
                continue
            req = hit.item
            if hit.plan is None:  # the FIN answer
                out.append((req.index, 5, _cont_event(ev.FIN, req, pkt=req.cont_seq)))
                continue
            s = hit.plan.slots[slot]
            out.append((row.index, 0, _event(s.kind, row.t, "server", req.conn_id or 0, s.pkt,
                                             req.cont_seq, hit.plan.cwnd, s.ssthresh,
                                             s.tcp_base, s.state, {})))

    def finish(self) -> list[tuple[int, int, Event]]:
        """Pass 2, each request in capture order: what the engine did with it. The events as
        (capture index, order within it, event), sorted."""
        for entry in self.reqs:
            if type(entry) is not Pending:
                self.judge_frame(entry)
            elif entry.answered:
                self.answered(entry, entry.item)
            else:
                self.judge(entry)
        self.out.sort(key=itemgetter(0, 1))  # (capture index, order within it); stable
        return self.out

    def synack(self, row: PacketRow) -> None:
        """The SYN-ACK carries the handshake continuation: the engine's syn event."""
        syn = self.pairing.answer_syn(row.src, row.sport, row.dst, row.dport)
        if syn is not None:
            self.answered_syns.add(syn.index)
        else:
            self.errors["orphan_synack"] += 1
        self.out.append((row.index, 0, Event(
            ev.SYN, row.t, "server", conn_id=row.conn_id or 0, pkt=row.seq,
            ack=row.cont_seq or 0, cwnd=row.start_cwnd or 0, ssthresh=row.ssthresh or 0,
            tcp_base=row.tcp_base or 0, state=row.state or 0)))

    def judge_frame(self, row: PacketRow) -> None:
        """Decode failures, SYN/type mismatches and SYNs: the frame stage."""
        if row.error is not None:
            if row.error == "snaplen":
                self.errors["unjudged_snaplen"] += 1
                return
            reason: str = row.error
        else:
            why = frame_reason(bool(row.flags & SYN), row_type(row))
            if why is None and row.index in self.answered_syns:
                self.verdicts[row.index] = ADMITTED
                return
            reason = why or UNANSWERED
        self.verdicts[row.index] = reason
        detail = {"reason": str(reason)}
        if reason == "unanswered":
            detail["req_type"] = "SYN"
        self.out.append((row.index, 1, Event(ev.DROP, row.t, "server", detail=detail)))

    def judge(self, entry: Pending) -> None:
        """An unanswered request: `admit` says why (or that it was valid)."""
        row = entry.item
        cv = self.cv
        cv.inferred = False
        try:
            v = admit(row_type(row), row_cont(row), row.sacks or (), row.t, self.cfg, self.view,
                      row, entry.plan)
        except Exception as e:  # the engine's catch-all for a failing step
            self._emit(row, ev.DROP, "internal." + type(e).__name__)
            return
        self.verdicts[row.index] = UNANSWERED if v.reason is None else str(v.reason)
        i = row.index
        plan = v.plan
        judged = self.verifier is not None or v.reason in (Reason.REPLAY, Reason.REPLAY_HORIZON)
        if v.blocks is not None and row.sacks and (
                judged or (plan is not None and not plan.slots)):
            self.out.append((i, 1, _nonce_ok(row)))
        if v.reason is not None:
            extra = {"inferred": True} if cv.inferred else {}
            self._emit(row, v.kind, v.reason, **extra)
            return
        if row_type(row) == REQ_SLOWSTART and plan is not None and plan.slots:
            self.out.append((i, 0, _timeout_event(row, plan)))
        if plan is not None and not plan.slots:
            self.out.append((i, 5, _cont_event(ev.TERMINATE, row, cwnd=plan.cwnd,
                                               first_loss=plan.first_loss)))
            self.verdicts[i] = ADMITTED  # nothing to send: valid, and silent
            return
        self._emit(row, ev.DROP, UNANSWERED)  # lost after the capture point, or the app

    def _emit(self, row: PacketRow, kind: str, reason: str, **extra) -> None:
        reason = str(reason)  # a `Reason` is its string: events hold plain text, as the engine's
        self.verdicts[row.index] = reason
        self.out.append((row.index, 2, _cont_event(kind, row, reason=reason, **extra)))

    def answered(self, entry: Pending, row: PacketRow) -> None:
        """An answered request: admitted; the server recorded its continuation's use."""
        if row.mac_ok is False:
            self.errors["answered_bad_mac"] += 1
        if row.nonce_ok is False:
            self.errors["answered_bad_nonce"] += 1
        age = (int(row.t * 1000) - row.timestamp) & U32  # type: ignore[operator]
        key = replay_key(row.mac, _TYPES[row.req_type], age,  # type: ignore[arg-type,index]
                         self.cfg.slowstart_bucket)
        self.cv.history[key] = (row.t, row, True)
        i = row.index
        self.verdicts[i] = ADMITTED
        if row.sacks:
            self.out.append((i, 1, _nonce_ok(row)))
        plan = entry.plan
        if plan is None:
            return  # FIN: its event came with the answer
        if row.req_type == "SLOWSTART":
            self.out.append((i, 0, _timeout_event(row, plan)))
        if plan.recovery_start:
            self.out.append((i, 3, _cont_event(ev.RECOVERY_START, row, cwnd=plan.cwnd,
                                               first_loss=plan.first_loss)))
        if plan.verdict == "slowstart":
            self.out.append((i, 4, _cont_event(ev.SLOWSTART, row, cwnd=plan.cwnd,
                                               new_ssthresh=plan.slots[0].ssthresh)))
        if entry.answered < len(entry.filled):
            self.errors["partly_answered"] += 1
