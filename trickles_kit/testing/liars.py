"""Misbehaving Trickles clients, run against the real ServerEngine in the simulator.

Each liar is a `ClientEngine` subclass that changes as little as it can and says what it tries.
The first four are the classic receiver attacks on TCP congestion control (Savage et al., 1999)
rewritten for Trickles; the server must detect them (counters `nonce_fail`, `drop.mac`,
`drop.replay`, `drop.sack_shape`) or they must gain nothing:

* `HidingLiar` (a) claims packets it did not receive, to avoid the window halving. It knows the
  nonce p_j of every packet it received; for a lost packet it must guess p_j (0, what the
  retransmission carries, or a random word). A wrong 32-bit guess makes the request a
  `nonce_fail`; its trickle dies and so, one by one, do the others, until the RTO. (The
  SLOWSTART after the RTO still carries the lie and fails too; the engine then forgets its
  losses, so the next SLOWSTART is honest and the liar limps on at a fraction of the goodput.)
* `OptimisticLiar` (b) tries to acknowledge ahead. In TCP an optimistic ack names data not yet
  received, and the sender grows cwnd for it. In Trickles a request must echo the *continuation*
  of the packet it acknowledges, and that continuation exists only inside packet k, sealed by the
  server (a MAC over seq, TCPBase, startCwnd, ssthresh, connId... and the client's address). So
  what is left to try is: forge the continuation of a future packet (`future`: the MAC fails),
  inflate the window fields of a real one (`inflate`: the MAC fails), claim in the SACK proof
  packets after k (`beyond`: rejected by shape, a block may not pass k), or use a continuation
  before the packets below it arrived and claim them anyway (`ahead`: a nonce guess, as in (a)).
* `AckDivisionLiar` (c) sends several requests on one continuation — a different but valid SACK
  proof, other byte ranges, rewritten client-owned fields — hoping each makes the server emit
  its packets again. The replay history keys on the continuation's MAC, which none of these
  change: every copy after the first is a `replay` drop.
* `DupAckLiar` (d) sends every request several times, as exact duplicates and with rewritten
  client-owned fields (parent, clientTimestamp, optionally clientState), hoping to inflate the
  window or trigger retransmissions. The server has no duplicate-ack logic (retransmissions come
  only from a SACK proof that shows a hole) and the replay history drops the copies.

Three more liars show what this implementation does **not** stop (see `tests/core/test_liars.py`,
marked xfail, and `benchmarks/liars.py`):

* `NonceOracleLiar` learns the nonce of a lost packet from the server itself: nonces are a
  function of (connId, packet number) only, and a SLOWSTART request whose proof ends at j - 1
  makes the server send a fresh packet numbered j (and j + 1), nonce p_j included. With it the
  liar claims the lost packet in every request of the old epoch: no recovery, no halving, and no
  failure is counted (the server only counts one more `slowstart`).
* `SlowstartLiar` asks for SLOWSTART on every continuation. Each such request emits two packets
  whatever the window or the losses, so the window doubles every round trip and never halves;
  with `reuse` it also re-uses each continuation once per SLOWSTART replay bucket (the history
  keys SLOWSTART by the continuation's age bucket, `core.replay.slowstart_age_bucket`).
* `PhantomHoleLiar` shows each request its *own* fake hole: it leaves the last h packets before
  k out of an otherwise honest proof. The server plans every request alone, so every request
  retransmits its "hole" (up to 20 packets, each filled with whatever bytes the client names)
  and, inside the bootstrap range, also clocks out new trickles.

Each liar counts what it did in its `counters` under `lie.*` (`lie.hidden`, `lie.forged`,
`lie.extra`, `lie.oracle`, `lie.slowstart`, `lie.phantom`).

The caught liars live here, the weaknesses in `testing.weaknesses`, and `run_client` /
`keyed_links` (one client against the real server on a simulated path, liar and honest client
on the *same* losses) in `testing.liar_runs`; every name is importable from here.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import replace

from trickles_kit.core import plan as pl
from trickles_kit.core.client import ClientEngine
from trickles_kit.core.ranges import RangeSet
from trickles_kit.testing.liar_runs import ClientRun, KeyedLossLink, keyed_links, run_client
from trickles_kit.testing.weaknesses import (
    NonceOracleLiar,
    PhantomHoleLiar,
    SlowstartLiar,
)
from trickles_kit.testing.weaknesses import blocks_of as _blocks_of
from trickles_kit.wire.continuation import Continuation
from trickles_kit.wire.messages import REQ_NORMAL, Request, SackBlock
from trickles_kit.wire.segment import ACK

_U32 = 0xFFFFFFFF

# ============================================================================ (a) hiding a loss
class HidingLiar(ClientEngine):
    """(a) Claims the packets it lost in its SACK proofs, to avoid the window halving.

    `guess` is what it puts in for the nonce p_j of a packet it never saw: "zero" (what the
    retransmission of j carries) or "random". The claim is made in every request whose proof
    range holds the lost packet, SLOWSTART requests after a timeout included.
    """

    def __init__(self, *args, guess: str = "zero", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if guess not in ("zero", "random"):
            raise ValueError("guess must be 'zero' or 'random'")
        self.guess = guess
        self._guess_rng = random.Random(self.isn)
        self._lied_in: dict[int, int] = {}  # lost packet -> the guess we keep using for it

    def _proof(self, cont: Continuation) -> list[tuple[int, int]]:
        lo = min(cont.tcp_base, cont.seq)
        hidden = [j for j in self._lost if lo <= j <= cont.seq]
        if not hidden:
            return super()._proof(cont)
        claimed = RangeSet()
        for s, e in self._board.clip(lo, cont.seq + 1):
            claimed.add(s, e)
        for j in hidden:
            claimed.add(j, j + 1)
        self.counters["lie.hidden"] += 1
        return _blocks_of(claimed, lo, cont.seq, self.cfg.max_sacks)

    def _summary(self, left: int, right: int) -> int:
        nonce = self._nonce
        if all(j in nonce for j in range(left, right + 1)):
            return super()._summary(left, right)
        acc = 0
        for j in range(left, right + 1):
            n = nonce.get(j)
            if n is None:
                n = self._lied_in.get(j)
                if n is None:
                    n = 0 if self.guess == "zero" else self._guess_rng.getrandbits(32)
                    self._lied_in[j] = n
            acc ^= n
        return acc


# ============================================================================ (b) optimistic acks
class OptimisticLiar(ClientEngine):
    """(b) Tries to acknowledge ahead of what it received (see the module docstring for why a
    true optimistic ack cannot be expressed).

    * `future`: with every request, a second one on a forged continuation for a packet not yet
      received (the real one with `seq` moved ahead by the window) — `drop.mac`.
    * `inflate`: with every request, a second one on the same continuation with startCwnd and
      ssthresh doubled and TCPBase moved back (a bigger window) — `drop.mac`.
    * `beyond`: with every request, a second one whose SACK proof runs `ahead` packets past k,
      as if the next packets had arrived — `drop.sack_shape`.
    * `ahead`: never waits for a hole below a continuation to be decided; uses it at once and
      claims every packet below it, guessing (0) the nonces of those not yet arrived
      — `nonce_fail` whenever the network reorders or loses.

    The extra requests of the first three are sent *besides* the honest one (a liar that sent
    only forgeries would stop at its first request); each asks for bytes not yet requested.
    """

    def __init__(self, *args, mode: str = "future", ahead: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if mode not in ("future", "inflate", "beyond", "ahead"):
            raise ValueError("mode must be future, inflate, beyond or ahead")
        self.mode = mode
        self.ahead = ahead

    # --- ahead: do not hold requests above undecided holes, and claim what is missing below k
    def _pump(self, now: float) -> None:
        if self.mode != "ahead":
            return super()._pump(now)
        if self.phase != "established":
            return
        while self._ready:
            _, _, cont = heapq.heappop(self._ready)
            if self._has_work():
                self._request_for(cont, now)

    def _proof(self, cont: Continuation) -> list[tuple[int, int]]:
        if self.mode != "ahead":
            return super()._proof(cont)
        lo = min(cont.tcp_base, cont.seq)
        if self._board.covers(lo, cont.seq + 1):
            return super()._proof(cont)
        self.counters["lie.forged"] += 1
        return [(lo, cont.seq)]  # everything up to k, received or not

    def _summary(self, left: int, right: int) -> int:
        nonce = self._nonce
        if all(j in nonce for j in range(left, right + 1)):
            return super()._summary(left, right)
        acc = 0
        for j in range(left, right + 1):
            acc ^= nonce.get(j, 0)
        return acc

    # --- future / inflate / beyond: an extra forged request next to every honest one
    def _send_request(self, rtype: int, cont: Continuation, blocks: list[tuple[int, int]],
                      ranges: list[tuple[int, int]], now: float, flags: int = ACK,
                      plan: pl.Plan | None = None) -> None:
        super()._send_request(rtype, cont, blocks, ranges, now, flags, plan)
        if rtype != REQ_NORMAL or self.mode == "ahead":
            return
        k = cont.seq
        mss = self.cfg.mss
        fresh = [(self._next_new + i * mss, self._next_new + (i + 1) * mss) for i in range(2)]
        if self.mode == "future":
            step = max(self.cwnd, 1)
            fake = replace(cont, seq=k + step)
            claim = [(min(cont.tcp_base, k), k + step - 1)]
        elif self.mode == "inflate":
            fake = replace(cont, start_cwnd=cont.start_cwnd * 2, ssthresh=cont.ssthresh * 2,
                           tcp_base=max(cont.tcp_base - 8, 1))
            claim = list(blocks)
        else:  # beyond
            fake = cont
            claim = [(min(cont.tcp_base, k), k + self.ahead)]
        sacks = [SackBlock(lft, rgt, self._guessed(lft, rgt)) for lft, rgt in claim]
        req = Request(REQ_NORMAL, fake, sacks, self.ucont, fresh, b"")
        self._outbox.append(self._segment(req.encode(), fake.seq & _U32, flags))
        self.counters["tx"] += 1
        self.counters["lie.forged"] += 1

    def _guessed(self, left: int, right: int) -> int:
        acc = 0
        for j in range(left, right + 1):
            acc ^= self._nonce.get(j, 0)
        return acc


# ============================================================================ (c) ack division
class AckDivisionLiar(ClientEngine):
    """(c) Re-uses each continuation for `divisions` extra NORMAL requests, hoping the server
    answers every one of them (multiplying its output, like TCP ack division).

    The extras cycle through: the same claims in a different but valid proof (a block split in
    two: other bytes, correct nonces), other byte ranges (the next new bytes), rewritten
    client-owned fields (parent, clientTimestamp), and all three at once.
    """

    KINDS = ("split_sack", "ranges", "owned", "all")

    def __init__(self, *args, divisions: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.divisions = divisions

    def _send_request(self, rtype: int, cont: Continuation, blocks: list[tuple[int, int]],
                      ranges: list[tuple[int, int]], now: float, flags: int = ACK,
                      plan: pl.Plan | None = None) -> None:
        super()._send_request(rtype, cont, blocks, ranges, now, flags, plan)
        if rtype != REQ_NORMAL:
            return
        mss = self.cfg.mss
        for i in range(self.divisions):
            kind = self.KINDS[i % len(self.KINDS)]
            b = list(blocks)
            if kind in ("split_sack", "all") and len(b) < self.cfg.max_sacks:
                b = _split_one(b)
            r = list(ranges)
            if kind in ("ranges", "all"):
                n = max(len(ranges), 1)
                base = self._next_new + i * n * mss
                r = [(base + j * mss, base + (j + 1) * mss) for j in range(n)]
            c = replace(cont)
            if kind in ("owned", "all"):
                c.parent = (c.parent + 1000 + i) & _U32
                c.client_timestamp = (c.client_timestamp + 1 + i) & _U32
            sacks = [SackBlock(lft, rgt, self._summary(lft, rgt)) for lft, rgt in b]
            req = Request(rtype, c, sacks, self.ucont, r, b"")
            self._outbox.append(self._segment(req.encode(), cont.seq, flags))
            self.counters["tx"] += 1
            self.counters["lie.extra"] += 1


def _split_one(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same claims with the first splittable block cut in two (a different, valid proof)."""
    for i, (lft, rgt) in enumerate(blocks):
        if rgt > lft:
            mid = (lft + rgt) // 2
            return blocks[:i] + [(lft, mid), (mid + 1, rgt)] + blocks[i + 1 :]
    return blocks


# ============================================================================ (d) duplicate acks
class DupAckLiar(ClientEngine):
    """(d) Sends every request `copies` more times byte for byte, and `rewrites` more times with
    rewritten client-owned fields (parent, clientTimestamp; clientState too when
    `rewrite_state`), hoping duplicates inflate the window or trigger retransmissions (TCP's
    fast retransmit and fast-recovery inflation run on duplicate acks).
    """

    def __init__(self, *args, copies: int = 3, rewrites: int = 3, rewrite_state: bool = False,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.copies = copies
        self.rewrites = rewrites
        self.rewrite_state = rewrite_state

    def _send_request(self, rtype: int, cont: Continuation, blocks: list[tuple[int, int]],
                      ranges: list[tuple[int, int]], now: float, flags: int = ACK,
                      plan: pl.Plan | None = None) -> None:
        super()._send_request(rtype, cont, blocks, ranges, now, flags, plan)
        seg = self._outbox[-1]
        self._outbox.extend([seg] * self.copies)
        for i in range(self.rewrites):
            c = replace(cont)
            c.parent = (c.parent + 7919 * (i + 1)) & _U32
            c.client_timestamp = (c.client_timestamp + i + 1) & _U32
            if self.rewrite_state:
                c.client_state = (c.client_state + i + 1) & _U32
            sacks = [SackBlock(lft, rgt, self._summary(lft, rgt)) for lft, rgt in blocks]
            app = self._request_bytes if not self.ucont else b""
            req = Request(rtype, c, sacks, self.ucont, ranges, app)
            self._outbox.append(self._segment(req.encode(), cont.seq, flags))
        n = self.copies + self.rewrites
        self.counters["tx"] += n
        self.counters["lie.extra"] += n


LIARS: dict[str, tuple[type[ClientEngine], dict]] = {
    "hiding_zero": (HidingLiar, {"guess": "zero"}),
    "hiding_random": (HidingLiar, {"guess": "random"}),
    "optimistic_future": (OptimisticLiar, {"mode": "future"}),
    "optimistic_inflate": (OptimisticLiar, {"mode": "inflate"}),
    "optimistic_beyond": (OptimisticLiar, {"mode": "beyond"}),
    "optimistic_ahead": (OptimisticLiar, {"mode": "ahead"}),
    "ack_division": (AckDivisionLiar, {"divisions": 4}),
    "dup_ack": (DupAckLiar, {"copies": 3, "rewrites": 3}),
    "dup_ack_state": (DupAckLiar, {"copies": 1, "rewrites": 2, "rewrite_state": True}),
}
"""The four attacks of the issue, with their variants: each must be caught or gain nothing."""

WEAKNESSES: dict[str, tuple[type[ClientEngine], dict]] = {
    "nonce_oracle": (NonceOracleLiar, {}),
    "slowstart": (SlowstartLiar, {}),
    "slowstart_reuse": (SlowstartLiar, {"reuse": 3}),
    "phantom_holes": (PhantomHoleLiar, {}),
}
"""Liars this implementation does not stop (documented, xfail in the tests)."""

__all__ = [
    "LIARS", "WEAKNESSES", "AckDivisionLiar", "ClientRun", "DupAckLiar", "HidingLiar",
    "KeyedLossLink", "NonceOracleLiar", "OptimisticLiar", "PhantomHoleLiar", "SlowstartLiar",
    "keyed_links", "run_client",
]
