"""Pairing responses with the requests that produced them — one rule for every observer.

Why here (core, below capture and viz): the capture decoder pairs to derive the server's events,
and a view that steps through a capture pairs to show what each request made; both must agree on
which response answers which request. The rule follows from the protocol: a response goes back on
the request's address pair, acknowledges its k (TCP ack = the continuation's seq) and echoes its
client-owned fields (clientState, parent, clientTimestamp) — so two requests on the same k (a
SLOWSTART after a NORMAL, a replay) are told apart. Among several candidates the latest request
before the response with a free matching slot wins; requests whose MAC failed are taken only when
no other fits (the server never answers them: a wrong secret, or an engine bug).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from trickles_kit.core.plan import Plan

__all__ = ["Pairing", "Pending", "request_key", "response_key"]


def request_key(src: Hashable, sport: int, dst: Hashable, dport: int, k: int,
                client_state: int, parent: int, client_timestamp: int) -> tuple:
    """What every answer to this request carries back (addresses as the request has them)."""
    return (src, sport, dst, dport, k, client_state, parent, client_timestamp)


def response_key(src: Hashable, sport: int, dst: Hashable, dport: int, ack: int,
                 client_state: int, parent: int, client_timestamp: int) -> tuple:
    """`request_key` of the request a response answers (its addresses swapped back)."""
    return (dst, dport, src, sport, ack, client_state, parent, client_timestamp)


class Pending:
    """A request awaiting its answers: one slot per packet its plan makes (one for a FIN)."""

    __slots__ = ("item", "index", "k", "fin", "bad_mac", "plan", "plan_error", "filled",
                 "answered")

    def __init__(self, item: Any, index: int, k: int, fin: bool, bad_mac: bool,
                 plan: Plan | None, plan_error: str | None = None) -> None:
        self.item = item  # the caller's request (a capture row, a view's step)
        self.index = index  # its position in the capture: answers come after it
        self.k = k
        self.fin = fin
        self.bad_mac = bad_mac
        self.plan = plan
        self.plan_error = plan_error
        self.filled = [False] * len(plan.slots) if plan is not None else [False]
        self.answered = 0


class Pairing:
    """Requests by the key their answers carry, and the SYNs awaiting a SYN-ACK.

    `answer` returns ``(request, slot, note)``: the request and the slot the response fills, and
    a note for the caller's error counter — None, ``position_mismatch`` (paired, but not at the
    position it claims), or when unpaired ``orphan_response`` (no request with this key),
    ``duplicate_response`` (every fitting slot was answered already) or ``plan_mismatch``.
    """

    def __init__(self) -> None:
        self.pending: dict[tuple, list[Pending]] = {}
        self.syns: dict[tuple, list[Any]] = {}

    def add(self, req: Pending, src: Hashable, sport: int, dst: Hashable, dport: int,
            client_state: int, parent: int, client_timestamp: int) -> None:
        """Register request `req` (its k in `req.k`) sent from (src, sport) to (dst, dport)."""
        key = (src, sport, dst, dport, req.k, client_state, parent, client_timestamp)
        self.pending.setdefault(key, []).append(req)

    def add_syn(self, src: Hashable, sport: int, dst: Hashable, dport: int, item: Any) -> None:
        self.syns.setdefault((src, sport, dst, dport), []).append(item)

    def answer_syn(self, src: Hashable, sport: int, dst: Hashable, dport: int) -> Any | None:
        """The latest unanswered SYN a SYN-ACK from (src, sport) to (dst, dport) answers."""
        lst = self.syns.get((dst, dport, src, sport))
        return lst.pop() if lst else None

    def answer(self, src: Hashable, sport: int, dst: Hashable, dport: int, ack: int,
               client_state: int, parent: int, client_timestamp: int, index: int, seq: int,
               position: int | None, fin: bool) -> tuple[Pending | None, int, str | None]:
        """Pair the response from (src, sport) to (dst, dport) acknowledging `ack` and echoing
        the client-owned fields, at capture `index`, carrying packet `seq` (claiming `position`
        among its siblings; `fin`: its FIN flag), and mark its slot filled."""
        # its request's key (`response_key`, inlined: this runs for every response)
        cands = self.pending.get((dst, dport, src, sport, ack, client_state, parent,
                                  client_timestamp))
        if not cands:
            return None, -1, "orphan_response"
        hit, slot, dup, note = _pick(cands, index, seq, position, fin, False)
        if hit is None:  # only requests whose MAC failed are left
            hit, slot, dup2, note = _pick(cands, index, seq, position, fin, True)
            dup = dup or dup2
        if hit is None:
            return None, -1, "duplicate_response" if dup else "plan_mismatch"
        hit.filled[slot] = True
        hit.answered += 1
        return hit, slot, note


def _pick(cands: list[Pending], index: int, seq: int, position: int | None, fin: bool,
          bad_mac: bool) -> tuple[Pending | None, int, bool, str | None]:
    """The latest request in `cands` (MAC failed or not, as `bad_mac`) with a free slot for
    the response: (request, slot, a filled fitting slot was seen, note)."""
    dup = False
    for req in reversed(cands):
        if req.bad_mac != bad_mac or req.index > index:
            continue
        plan = req.plan
        if plan is None:
            if req.fin and fin and seq == req.k:
                if req.filled[0]:
                    dup = True
                    continue
                return req, 0, dup, None
            continue
        slots = plan.slots
        if position is not None and position < len(slots) and slots[position].pkt == seq:
            if req.filled[position]:
                dup = True
                continue
            return req, position, dup, None
        for i, s in enumerate(slots):
            if s.pkt == seq and not req.filled[i]:
                return req, i, dup, "position_mismatch"
    return None, -1, dup, None
