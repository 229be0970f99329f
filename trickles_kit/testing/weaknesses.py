"""Liars this implementation does not stop — its documented weaknesses (see `testing.liars`).

They run against the real ServerEngine like the caught liars; tests/core/test_liars.py marks them
xfail and benchmarks/liars.py measures what each one gains.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import replace

from trickles_kit.core import plan as pl
from trickles_kit.core.client import ClientEngine
from trickles_kit.core.ranges import RangeSet
from trickles_kit.core.replay import slowstart_age_bucket, slowstart_bucket_end
from trickles_kit.core.server import ServerConfig
from trickles_kit.wire.continuation import MINIMAL, Continuation
from trickles_kit.wire.messages import REQ_NORMAL, REQ_SLOWSTART, Request, SackBlock
from trickles_kit.wire.segment import ACK

_U32 = 0xFFFFFFFF
_BUCKET_MS = ServerConfig().slowstart_bucket * 1000  # the server's default SLOWSTART age unit


def blocks_of(claimed: RangeSet, lo: int, hi: int, max_sacks: int) -> list[tuple[int, int]]:
    """Inclusive SACK blocks for the claimed numbers in [lo, hi], trimmed as the client does."""
    blocks = [(s, e - 1) for s, e in claimed.clip(lo, hi + 1)]
    if len(blocks) > max_sacks:
        blocks = blocks[:1] + blocks[len(blocks) - max_sacks + 1 :]
    return blocks


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
        blocks = blocks_of(self._claim, lo, j - 1, self.cfg.max_sacks) if j > lo else []
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
        return slowstart_age_bucket(max(age_ms, 0.0), _BUCKET_MS)

    def _proof(self, cont: Continuation) -> list[tuple[int, int]]:
        lo = min(cont.tcp_base, cont.seq)
        return blocks_of(self._claim, lo, cont.seq, self.cfg.max_sacks)

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
        blocks = blocks_of(self._known_set, lo, cont.seq, self.cfg.max_sacks)
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
            blocks = blocks_of(self._known_set, lo, hi, m) if hi >= lo else []
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

