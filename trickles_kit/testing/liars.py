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

Three more liars show what this implementation does **not** stop (see `tests/test_liars.py`,
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

`run_client` builds exactly what `simulate_transfer` builds, with any engine class as the client
(and optional link and server hooks). `keyed_links` makes both directions `KeyedLossLink`s, whose
losses are a keyed hash of each packet's bytes, so an honest client and a liar can be compared
on the *same* losses (the shared RNG of the plain links would hand a liar that sends one extra
segment a different loss pattern from then on).
"""

from __future__ import annotations

import hashlib
import heapq
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from trickles_kit.apps.generated import Generated, gen_request, generated_bytes
from trickles_kit.apps.sim import (
    Link,
    LinkConfig,
    SimNetwork,
    Simulator,
    client_address,
    sim_echo_key,
)
from trickles_kit.core import plan as pl
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.events import EventSink
from trickles_kit.core.ranges import RangeSet
from trickles_kit.core.replay import slowstart_age_bucket, slowstart_bucket_end
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.wire.continuation import MINIMAL, Continuation
from trickles_kit.wire.messages import REQ_NORMAL, REQ_SLOWSTART, REQ_SYN, Request, SackBlock
from trickles_kit.wire.segment import ACK

_U32 = 0xFFFFFFFF


def _blocks_of(claimed: RangeSet, lo: int, hi: int, max_sacks: int) -> list[tuple[int, int]]:
    """Inclusive SACK blocks for the claimed numbers in [lo, hi], trimmed as the client does."""
    blocks = [(s, e - 1) for s, e in claimed.clip(lo, hi + 1)]
    if len(blocks) > max_sacks:
        blocks = blocks[: max_sacks - 1] + blocks[-1:]
    return blocks


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


# ============================================================================ weaknesses
ORACLE_TAG = 0xA5170000  # parent field of oracle requests (client-owned, echoed by the server)


class NonceOracleLiar(ClientEngine):
    """Hides every loss with nonces it gets the server to reveal (a real weakness).

    Nonces depend on (connId, packet number) only, and a SLOWSTART request whose proof covers
    exactly [TCPBase, j - 1] makes the server start a new epoch at right + 1 = j and send packets
    j and j + 1 — carrying p_j and p_(j+1). So whenever its proof would show a hole at j (a lost
    packet, or a packet never sent because the request that would have made it was lost or its
    parent was), this client first asks for p_j that way and holds the requests above j; then it
    claims j like a received packet. The server never sees a hole: no recovery, no halving, no
    failed nonce; it counts one `slowstart` per oracle request. The answers carry no data (the
    oracle names no byte ranges) and their continuations are thrown away (recognised by the
    echoed `parent`). Lost bytes are re-requested as usual. What a loss still costs is the one
    trickle it killed (its descendants are holes, learned the same way, every round trip).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._conts: dict[int, Continuation] = {}  # received FULL continuations (this epoch)
        self._learned: dict[int, int] = {}  # p_j revealed by oracle answers
        self._claim = RangeSet()  # board + learned: every number this client can "prove"
        self._asked: dict[int, float] = {}
        self._used: set[tuple[int, int]] = set()  # (seq, SLOWSTART age bucket) already used
        self._epoch_base = 1

    def _echo_epoch(self, cont: Continuation) -> int | None:
        """Oracle answers echo the token's high half and the oracle tag (not the low half)."""
        if cont.parent & 0xFFFF0000 == ORACLE_TAG and not self.cfg.hashed:
            return self.client_state if cont.client_state == self._owned(0.0)[0] else None
        return super()._echo_epoch(cont)

    def _on_packet(self, cont: Continuation, nonce: int, now: float) -> bool:
        if cont.parent & 0xFFFF0000 == ORACLE_TAG:
            if cont.type != MINIMAL and cont.seq not in self._learned:
                self._learned[cont.seq] = nonce
                self._claim.add(cont.seq, cont.seq + 1)
                self.counters["oracle_learned"] += 1
            return False
        if cont.type != MINIMAL:
            if cont.seq >= self._max_rx:
                self._epoch_base = cont.tcp_base
            if len(self._conts) > 4096:
                for key in sorted(self._conts)[:2048]:
                    del self._conts[key]
            self._conts[cont.seq] = replace(cont)
        out = super()._on_packet(cont, nonce, now)
        if cont.type != MINIMAL and self._board.contains(cont.seq):
            self._claim.add(cont.seq, cont.seq + 1)
        return out

    def _slowstart(self, now: float) -> None:
        super()._slowstart(now)  # trims the board above `right`: rebuild board + learned
        self._claim = RangeSet()
        for s, e in self._board:
            self._claim.add(s, e)
        for j in self._learned:
            self._claim.add(j, j + 1)
        self._conts.clear()

    def _holes(self, below: int) -> list[int]:
        """Numbers in [epoch base, below) neither claimable nor still awaited."""
        lo = self._epoch_base
        if below <= lo:
            return []
        return [j for s, e in self._claim.gaps(lo, below) for j in range(s, e)
                if j not in self._expected]

    def _pending_below(self, pkt: int) -> bool:
        return super()._pending_below(pkt) or bool(self._holes(pkt))

    def _pump(self, now: float) -> None:
        if self.phase == "established":
            srtt = self._srtt if self._srtt is not None else self.cfg.initial_rto
            for j in self._holes(self._max_rx):
                t = self._asked.get(j)
                if t is None or now - t > max(1.5 * srtt, 0.11):
                    self._ask(j, now)
        super()._pump(now)

    def _ask(self, j: int, now: float) -> None:
        run = self._claim.clip(0, j)  # the claimed run ending at j - 1 starts at run[-1][0]
        start = run[-1][0] if run and run[-1][1] == j else j
        best = None
        for seq in range(j - 1, j + 256):  # a continuation at or after j - 1 whose epoch
            c = self._conts.get(seq)  # starts inside that run: its proof ends at j - 1
            if (c is not None and start <= c.tcp_base <= j
                    and (seq, self._age_bucket(c, now)) not in self._used):
                best = c
                break
        if best is None:  # an earlier hole is unknown too (asked first), or nothing usable yet
            return
        lo = best.tcp_base
        blocks = _blocks_of(self._claim, lo, j - 1, self.cfg.max_sacks) if j > lo else []
        self._asked[j] = self._asked[j + 1] = now
        self._used.add((best.seq, self._age_bucket(best, now)))
        c = replace(best)
        c.client_state = self._owned(now)[0]  # the echo token's high half: answers pass
        c.parent = ORACLE_TAG | (self.counters["lie.oracle"] & 0xFFFF)
        c.client_timestamp = int(now * 1000) & _U32
        sacks = [SackBlock(lft, rgt, self._summary(lft, rgt)) for lft, rgt in blocks]
        req = Request(REQ_SLOWSTART, c, sacks, self.ucont, [], b"")
        self._outbox.append(self._segment(req.encode(), c.seq, ACK))
        self.counters["tx"] += 1
        self.counters["lie.oracle"] += 1

    def _age_bucket(self, cont: Continuation, now: float) -> int:
        """The server's SLOWSTART replay bucket for `cont` when a request sent now arrives
        (the server's own function, at the default bucket unit)."""
        srtt = self._srtt if self._srtt is not None else 0.0
        age_ms = (now + srtt / 2) * 1000 - cont.timestamp
        return slowstart_age_bucket(max(age_ms, 0.0), ServerConfig.slowstart_bucket * 1000)

    def _proof(self, cont: Continuation) -> list[tuple[int, int]]:
        lo = min(cont.tcp_base, cont.seq)
        return _blocks_of(self._claim, lo, cont.seq, self.cfg.max_sacks)

    def _summary(self, left: int, right: int) -> int:
        cached = self._sum_cache.get(left)
        if cached is not None and cached[0] <= right:
            r0, acc = cached
        else:
            r0, acc = left - 1, 0
        nonce, learned = self._nonce, self._learned
        for j in range(r0 + 1, right + 1):
            n = nonce.get(j)
            acc ^= learned[j] if n is None else n
        if len(self._sum_cache) > 256:
            self._sum_cache.clear()
        self._sum_cache[left] = (right, acc)
        return acc


class _PoolLiar(ClientEngine):
    """Base of the liars that drive the server from a pool of continuations.

    The honest engine's packet-number bookkeeping assumes one coherent epoch; these liars make
    the server start many, so they keep only byte-level reliability: each requested range has a
    deadline, and bytes not received by then are asked again. Every FULL packet's continuation
    goes to the pool and every nonce is remembered (p_j is the same in every epoch).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pool: deque[Continuation] = deque()
        self._later: list[tuple[float, int, Continuation]] = []
        self._known: dict[int, int] = {}
        self._known_set = RangeSet()
        self._inflight: list[tuple[float, int, int]] = []
        self._xor_cache: dict[tuple[int, int], int] = {}

    def _on_packet(self, cont: Continuation, nonce: int, now: float) -> bool:
        if cont.client_timestamp:
            r = ((int(now * 1000) - cont.client_timestamp) & _U32) / 1000.0
            if r < 1 << 20:
                self._sample_rtt(r)
        if cont.type == MINIMAL:
            return False
        if cont.seq not in self._known:
            self._known[cont.seq] = nonce
            self._known_set.add(cont.seq, cont.seq + 1)
        if self._spare is None or cont.timestamp >= self._spare.timestamp:
            self._spare = cont
        self._pool.append(cont)
        return False

    def _summary(self, left: int, right: int) -> int:
        key = (left, right)
        acc = self._xor_cache.get(key)
        if acc is None:
            acc = 0
            known = self._known
            for j in range(left, right + 1):
                acc ^= known[j]
            if len(self._xor_cache) > 65536:
                self._xor_cache.clear()
            self._xor_cache[key] = acc
        return acc

    def _expire(self, now: float) -> None:
        heap = self._inflight
        while heap and heap[0][0] <= now:
            _, s, e = heapq.heappop(heap)
            for gs, ge in self._received.gaps(s, e):
                self._missing.add(gs, ge)

    def _patience(self) -> float:
        srtt = self._srtt if self._srtt is not None else self.cfg.initial_rto
        return max(1.5 * srtt + 4 * self._rttvar, 0.02)

    def _send(self, rtype: int, cont: Continuation, blocks: list[tuple[int, int]], n: int,
              now: float) -> None:
        ranges = self._assign(n)
        deadline = now + self._patience()
        for s, e in ranges:
            heapq.heappush(self._inflight, (deadline, s, e))
        self._send_request(rtype, cont, blocks, ranges, now)

    def _use(self, cont: Continuation, now: float) -> None:
        raise NotImplementedError

    def _pump(self, now: float) -> None:
        if self.phase != "established":
            return
        self._expire(now)
        later = self._later
        while later and later[0][0] <= now:
            self._pool.append(heapq.heappop(later)[2])
        while self._pool:
            cont = self._pool.popleft()
            if self.done:
                continue
            self._use(cont, now)

    def get_timer(self) -> float | None:
        times = [t for t in (self._timer,) if t is not None]
        if self.phase == "established":
            if self._inflight:
                times.append(self._inflight[0][0])
            if self._later:
                times.append(self._later[0][0])
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.phase != "established":
            super().handle_timer(now)  # SYN retries, FIN
            return
        if self._timer is None or now < self._timer:
            self._pump(now)
            return
        # no byte arrived for an RTO: restart from the newest continuation (no epoch change)
        self._timer = None
        self._timeouts_in_row += 1
        if self._timeouts_in_row > self.cfg.max_timeouts or self._spare is None:
            self.phase = "failed"
            return
        self.counters["timeouts"] += 1
        self._backoff = min(self._backoff * 2, 64)
        self._expire(float("inf"))
        self._inflight.clear()
        self._send(REQ_SLOWSTART, self._spare, [], pl.SLOWSTART_CWND, now)
        self._arm(now)


class SlowstartLiar(_PoolLiar):
    """Sends SLOWSTART (empty proof) on every continuation: two packets per request, always.

    SLOWSTART exists for the client's timeout; the server cannot tell a timeout from a choice,
    so the window doubles every round trip and a loss only costs the one trickle it hits.
    With `reuse` > 0 each continuation is also used again `reuse` times, once per SLOWSTART
    replay bucket: the history lets one SLOWSTART per continuation per age bucket through
    (`core.replay.slowstart_age_bucket`, unit b = `ServerConfig.slowstart_bucket`, 0.1 s); it
    aims at the middle of buckets 1, 2, 3... (ages 0.15 s, 0.3 s, 0.6 s...).
    """

    def __init__(self, *args, reuse: int = 0, bucket: float = 0.1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reuse = reuse
        self.bucket = bucket
        self._uses: dict[int, int] = {}

    def _use(self, cont: Continuation, now: float) -> None:
        self.counters["lie.slowstart"] += 1
        # an honest proof of [TCPBase, k] (numbers from any epoch: the nonces are the same), so
        # the new packets are numbered k + 1, k + 2 and no two answers are the same bytes
        lo = min(cont.tcp_base, cont.seq)
        blocks = _blocks_of(self._known_set, lo, cont.seq, self.cfg.max_sacks)
        self._send(REQ_SLOWSTART, cont, blocks, pl.SLOWSTART_CWND, now)
        if self.reuse:
            key = id(cont)
            n = self._uses.get(key, 0)
            if n < self.reuse:
                self._uses[key] = n + 1
                srtt = self._srtt if self._srtt is not None else 0.0
                age = _bucket_middle(n + 1, self.bucket)
                t = cont.timestamp / 1000.0 + age - srtt / 2
                heapq.heappush(self._later, (max(t, now), key, cont))


def _bucket_middle(bucket: int, unit: float) -> float:
    """The middle (seconds) of the server's SLOWSTART replay age bucket `bucket` >= 1."""
    unit_ms = unit * 1000
    start = slowstart_bucket_end(bucket - 1, unit_ms)
    return (start + slowstart_bucket_end(bucket, unit_ms)) / 2000


class PhantomHoleLiar(_PoolLiar):
    """Shows each request its own fake hole: the last h packets before k left out of the proof.

    For every continuation it tries h = 0 (the honest proof) and h = 1 .. max_gap, runs the
    server's own `plan_request` on each and sends the one that makes the most packets while
    keeping at least one FULL continuation (so the trickle lives on). The server retransmits the
    "hole" — up to 20 packets — filled with the bytes this client names: new bytes.
    """

    def _use(self, cont: Continuation, now: float) -> None:
        k, base = cont.seq, cont.tcp_base
        lo = min(base, k)
        m = self.cfg.max_sacks
        best: tuple[tuple[int, int], list[tuple[int, int]], pl.Plan] | None = None
        for h in range(0, min(self.cfg.max_gap, max(k - base, 0)) + 1):
            hi = k - h if h == 0 else k - h - 1
            blocks = _blocks_of(self._known_set, lo, hi, m) if hi >= lo else []
            plan = pl.plan_request(k, base, cont.start_cwnd, cont.ssthresh, cont.state, blocks,
                                   False, self.cfg.max_gap)
            if plan.verdict == "reject":
                continue
            full = sum(1 for s in plan.slots if s.kind != pl.RETRANSMIT)
            score = (min(full, 1), len(plan.slots))
            if best is None or score > best[0]:
                best = (score, blocks, plan)
        if best is None:
            return
        _, blocks, plan = best
        if plan.verdict == "recovery":
            self.counters["lie.phantom"] += 1
        self._send(REQ_NORMAL, cont, blocks, len(plan.slots), now)


# ============================================================================ paired paths
def _fate_bytes(data: bytes, down: bool) -> bytes:
    """What decides a packet's fate: the segment without the TCP request counter, checksum and
    user continuation (the Generated handler seals it with a random AES-GCM nonce, so its
    bytes differ from run to run)."""
    p = data[28:]
    try:
        if down:  # nonce u32, siblings, position, ucont_len u16, continuation, ucont, chunks
            ulen = int.from_bytes(p[6:8], "big")
            end = 8 + (18 if p[8] == MINIMAL else 75)
            return data[4:12] + p[:end] + p[end + ulen:]
        off = 1 if p[0] == REQ_SYN else 76  # type, continuation, SACKs, ucont_len, ucont, ...
        off += 1 + 12 * p[off]
        ulen = int.from_bytes(p[off : off + 2], "big")
        return p[: off + 2] + p[off + 2 + ulen :]
    except IndexError:
        return p


class KeyedLossLink(Link):
    """A `Link` whose loss, reordering and duplication are decided by a keyed hash of the packet
    (`_fate_bytes`, and how many times those bytes were sent before) instead of the simulator's
    shared RNG.

    Two runs that put the same packets on the wire see the same fate for them, whatever else
    either run sends: an honest client and a liar are compared on the *same* losses up to the
    point where their traffic really differs. Exact copies of a packet are decided
    independently (the occurrence count is in the key). The request counter in the TCP header
    is not in the key (a liar's extra segments shift it).
    """

    def __init__(self, sim: Simulator, cfg: LinkConfig, deliver, key: bytes,
                 down: bool) -> None:
        super().__init__(sim, cfg, deliver)
        self.key = key
        self.down = down
        self._seen: dict[bytes, int] = {}

    def _draw(self, tag: bytes, digest: bytes) -> float:
        h = hashlib.blake2b(tag + digest, key=self.key, digest_size=8).digest()
        return int.from_bytes(h, "big") / 2.0**64

    def _draws(self, data: bytes) -> Callable[[bytes], float]:
        body = hashlib.blake2b(_fate_bytes(data, self.down), digest_size=16).digest()
        n = self._seen.get(body, 0)
        self._seen[body] = n + 1
        digest = body + n.to_bytes(4, "big")
        return lambda tag: self._draw(tag, digest)


def keyed_links(down: LinkConfig, up: LinkConfig, seed: int) -> Callable[[SimNetwork], None]:
    """A `link_factory` for `run_client`: both directions become `KeyedLossLink`s."""

    def factory(net: SimNetwork) -> None:
        key = hashlib.blake2b(seed.to_bytes(8, "big"), digest_size=32).digest()
        net.down = KeyedLossLink(net.sim, down, net._to_client, key + b"down", True)
        net.up = KeyedLossLink(net.sim, up, net._to_server, key + b"up", False)

    return factory


# ============================================================================ running one
@dataclass
class ClientRun:
    """What one client (honest or not) got from the real server over the simulated path."""

    name: str
    ok: bool  # every byte, in order, byte-exact
    exact_prefix: bool  # whatever was delivered matches the generated stream
    size: int
    bytes: int
    seconds: float  # virtual: time to completion, or until the run stopped
    goodput_bps: float
    phase: str
    server: dict = field(default_factory=dict)
    client: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    key_epoch: int = 0  # the server's key epoch when the run stopped
    wall_seconds: float = 0.0

    def drops(self, *reasons: str) -> int:
        return sum(self.server.get("drop." + r, 0) for r in reasons)


def run_client(
    engine_cls: type[ClientEngine] = ClientEngine,
    size: int = 300_000,
    seed: int = 1,
    *,
    loss: float = 0.0,
    down: LinkConfig | None = None,
    up: LinkConfig | None = None,
    server_config: ServerConfig | None = None,
    client_config: ClientConfig | None = None,
    time_limit: float = 120.0,
    on_event: EventSink | None = None,
    name: str | None = None,
    link_factory: Callable[[SimNetwork], None] | None = None,
    server_hook: Callable[[ServerEngine], None] | None = None,
    drain: float = 0.0,
    **engine_kwargs,
) -> ClientRun:
    """Fetch `size` generated bytes with an `engine_cls` client, built as `simulate_transfer`
    builds its ClientEngine (same seed, same secret, same address, same draws from the RNG).

    `link_factory(net)` may replace `net.down` / `net.up` before the client starts;
    `server_hook(server)` sees the server engine before the first packet. `drain` runs the
    network that much longer after the client finished, so segments still in flight arrive
    (the server counts what it makes of them); goodput is measured at completion either way.
    """
    sim = Simulator(seed)
    secret = random.Random(seed ^ 0x5EC12E7).randbytes(32)
    gen = Generated()
    server = ServerEngine(secret, gen, SimNetwork.SERVER_IP, SimNetwork.SERVER_PORT,
                          server_config, on_event)
    gen.attach(server)
    if server_hook is not None:
        server_hook(server)
    net = SimNetwork(sim, server, down or LinkConfig(loss=loss), up or LinkConfig(loss=loss))
    if link_factory is not None:
        link_factory(net)
    net.keep_data = True
    ip, port = client_address(0)
    isn = sim.rng.getrandbits(32)
    client = engine_cls(ip, port, SimNetwork.SERVER_IP, SimNetwork.SERVER_PORT, client_config,
                        isn=isn, on_event=on_event, echo_key=sim_echo_key(isn), **engine_kwargs)
    net.add_client(client, gen_request(size, seed))
    t0 = time.perf_counter()
    sim.run(until=time_limit, stop=net.all_finished)
    stopped = sim.now
    if drain > 0:
        sim.run(until=min(sim.now + drain, time_limit))
    wall = time.perf_counter() - t0
    slot = net.clients[(ip, port)]
    data = bytes(net.data[(ip, port)])
    exact = hashlib.sha256(data).digest() == hashlib.sha256(
        generated_bytes(seed, 0, len(data))).digest()
    secs = slot.done_at if slot.done_at is not None else min(stopped, time_limit)
    return ClientRun(
        name=name or engine_cls.__name__,
        ok=client.done and exact and len(data) == size,
        exact_prefix=exact,
        size=size,
        bytes=len(data),
        seconds=round(secs, 6),
        goodput_bps=round(len(data) * 8 / secs, 1) if secs > 0 else 0.0,
        phase=client.phase,
        server=dict(server.counters),
        client=dict(client.counters),
        links={"down": vars(net.down.stats), "up": vars(net.up.stats)},
        key_epoch=server.keys.current(sim.now),
        wall_seconds=round(wall, 4),
    )


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
    "NonceOracleLiar", "OptimisticLiar", "PhantomHoleLiar", "SlowstartLiar", "run_client",
]
