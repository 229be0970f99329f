"""The client's per-packet fast path: the common answer taken, and the request it lets go out
built, in one pass each, with the very state changes, counters, events and bytes of the
general path (`ClientEngine.receive`, `RequestSending._request_for`).

Why: most answers of a transfer are alike — an in-order FULL1 data packet of the current
timeout epoch, expected, carrying exactly the bytes its slot asked for. The general path builds
a Segment, a Response, a DataChunk and walks generic range code for each; its request then
builds SackBlocks and a Request before encoding them. Here the answer is read with one unpack
after the header, its bytes go straight to the application buffer, and the request is packed
from the SACK blocks and ranges as they are (issue 17: 31 µs per packet pure Python before).

Which answers (`receive`): an engine of the class itself (no subclass overrides its steps),
ESTABLISHED, without uplink repair or HASHED answers; a segment with the usual 28-byte header,
flags ACK only, the right ports and a good checksum; a FULL1 continuation of this connection
whose echo token is the current epoch's; one DATA chunk without FIN after the user
continuation; a packet expected, not yet known to the scoreboard, whose slot asked for exactly
the chunk's bytes, all of them still wanted, with room for an island. Anything else returns
False before any state changed, and the general path takes the segment untouched (every drop
and every corner case stays its own). Which requests (`request`): on a FULL1 continuation,
without HASHED answers (the general path's predictions) or uplink repair; the byte ranges come
inline while nothing is missing and there are no lanes, from `RangePicker.assign` otherwise.
tests/core/test_client_golden.py holds the bytes the committed engine sent;
tests/core/test_client_fast.py checks the fallbacks.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Final

from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.cc import cwnd
from trickles_kit.core.phase import Phase
from trickles_kit.core.ranges import RangeSet
from trickles_kit.wire import segment as sg
from trickles_kit.wire.continuation import BOOTSTRAP, FULL1, RECOVERY, Continuation
from trickles_kit.wire.messages import (
    CHUNK_DATA,
    DATA_CHUNK_OVERHEAD,
    MAX_RANGES,
    MAX_SACKS,
    REQ_NORMAL,
    RESPONSE_FULL,
    RESPONSE_FULL_LEN,
    Request,
    SackBlock,
)
from trickles_kit.wire.segment import ACK, HEADER_LEN, ones_sum, py_ones_sum

if TYPE_CHECKING:  # (types only: core.client imports this module)
    from trickles_kit.core.client import ClientEngine
    from trickles_kit.core.client_send import RequestSending

_ESTABLISHED: Final = Phase.ESTABLISHED
# wire.segment's layout and wire.messages' response, bound once (the per-packet code calls them)
_PSEUDO, _TCP_HDR = sg.PSEUDO.pack, sg.HEADER.pack
# an answer's head in one read: ports, data-offset byte, flags, the response header and FULL
# continuation
_HEAD = struct.Struct(sg.PORTS_FLAGS.format + f"{HEADER_LEN - sg.PORTS_FLAGS.size}x"
                      + RESPONSE_FULL.format[1:]).unpack_from
_CHUNK = struct.Struct("!BHI").unpack_from  # a DATA chunk's type|flags, length, byteNum
_OPT_PREFIX: Final = sg.OPT_PREFIX
_OFFSET_BYTE: Final = sg.OFFSET_BYTE
_OPT_KIND: Final = sg.OPT_KIND
_OPT_EXID: Final = sg.OPT_EXID
_DATA: Final = CHUNK_DATA << 4  # a DATA chunk without FIN
_U32: Final = 0xFFFFFFFF
_BODY: Final = HEADER_LEN + RESPONSE_FULL_LEN  # where the user continuation starts
_MIN_LEN: Final = _BODY + DATA_CHUNK_OVERHEAD + 1
# a request's type byte (and numSacks, numRanges), its SACK blocks, the ucont length
_TYPE = [bytes((i,)) for i in range(256)]
_SACKS = [struct.Struct(f"!{3 * i}I").pack for i in range(MAX_SACKS + 1)]
_U16 = struct.Struct("!H").pack
_RANGE = struct.Struct("!II").pack
_PRED: dict[str, str] = {k.value: "pred." + k.value for k in pl.SlotKind}  # counter per slot kind
_CONTINUES: Final = _PRED[pl.SlotKind.CONTINUE.value]
_SPLITS: Final = _PRED[pl.SlotKind.SPLIT.value]


# (fold_sum's cuts: multiples of 16 bits, about halving a full segment's number each time)
_CUT1, _CUT2, _CUT3 = 6272, 3200, 1664
_LOW1, _LOW2, _LOW3 = (1 << _CUT1) - 1, (1 << _CUT2) - 1, (1 << _CUT3) - 1


def fold_sum(data: bytes) -> int:
    """`ones_sum` of `data` (even length) in pure Python, for the answers (one per packet).

    Why not one `%`: the remainder of the segment read as one integer costs ~1.5 ns a byte, more
    than reading it. Adding the number's top to its bottom at a cut of 16k bits keeps it the
    same mod 2^16 - 1 (2^16 = 1 there) for a shift, an AND and an add (~0.1 us each); three cuts
    leave a ~200-byte number for the remainder (~0.3 us less per full segment than
    wire.segment's four pieces). A shorter number passes a cut unchanged."""
    x = int.from_bytes(data, "big")
    x = (x >> _CUT1) + (x & _LOW1)
    x = (x >> _CUT2) + (x & _LOW2)
    x = (x >> _CUT3) + (x & _LOW3)
    return x % 0xFFFF


_PURE_SUM: Final = ones_sum is py_ones_sum  # (no compiled build: its C routine is faster)
_rx_ones: Final = fold_sum if _PURE_SUM else ones_sum  # an answer's sum


def sums(local_ip: bytes, local_port: int, server_ip: bytes, server_port: int) -> tuple[int, int]:
    """The parts of the TCP checksums that do not change, folded (mod 2^16 - 1): of an answer's
    pseudo-header without its length, and of a request's pseudo-header and header without
    seq, ack and length (wire.segment sums the same words)."""
    rx = int.from_bytes(_PSEUDO(server_ip, local_ip, 0, 6, 0), "big") % 0xFFFF
    tx = int.from_bytes(_PSEUDO(local_ip, server_ip, 0, 6, 0) + _TCP_HDR(
        local_port, server_port, 0, 0, _OFFSET_BYTE, ACK, 0xFFFF, 0, 0, _OPT_KIND, 6, _OPT_EXID,
        0, 1, 1), "big") % 0xFFFF
    return rx, tx


def receive(eng: ClientEngine, data: bytes, now: float) -> bool:
    """Take `data` if it is the common answer (see the module's docstring); False, with
    nothing changed, if the general path must."""
    n = len(data)
    if n < _MIN_LEN or eng.phase != _ESTABLISHED:
        return False
    (sport, dport, off, flags, nonce, _, _, ulen, ctype, pkt, first_child, cstate, parent, cts,
     ts, mrtt, state, first_loss, fbs, start_cwnd, ssthresh, base, conn_id, key_epoch,
     mac) = _HEAD(data, 0)
    if (off != _OFFSET_BYTE or flags != ACK or sport != eng.server_port
            or dport != eng.local_port or data[20:24] != _OPT_PREFIX):
        return False
    if ctype != FULL1 or state > BOOTSTRAP or conn_id != eng.conn_id:
        return False
    build = eng.build
    epoch = eng.client_state
    if build.hashed or build.tokens.get(cstate << 32 | parent) != epoch:
        return False
    at = _BODY + ulen  # the chunk
    if at + DATA_CHUNK_OVERHEAD >= n:
        return False
    tf, clen, start = _CHUNK(data, at)
    end = start + clen - DATA_CHUNK_OVERHEAD
    if tf != _DATA or at + clen != n:
        return False
    exp = eng.loss.expected.get(pkt)
    if exp is None or len(exp.ranges) != 1 or exp.accept is not exp.ranges \
            or exp.ranges[0] != (start, end):
        return False
    stream = eng.stream
    want = stream.want
    i = bisect_right(want._starts, start) - 1  # (`want.covers(start, end)`, inline)
    if i < 0 or want._ends[i] < end or len(stream.received._starts) >= stream.max_islands:
        return False
    score = eng.score
    board = score.board
    i = bisect_right(board._starts, pkt) - 1  # (`score.known(pkt)`, inline)
    if pkt < score.floor or pkt in score.lost or (i >= 0 and pkt < board._ends[i]):
        return False
    body = data + b"\0" if n & 1 else data
    if (eng._rx_sum + n + _rx_ones(body)) % 0xFFFF:
        return False  # (the general path drops it)
    # taken: from here on, what the general path does with this answer
    eng.counters["rx"] += 1
    _take(eng, data, at + DATA_CHUNK_OVERHEAD, start, end, now)
    if ulen:
        eng.ucont = data[_BODY:at]
    cont = Continuation(ctype, pkt, first_child, epoch, parent, cts, ts, mrtt, state,
                        first_loss, fbs, start_cwnd, ssthresh, base, conn_id, key_epoch, mac)
    _claim(eng, cont, nonce, now)
    eng._backoff = 1
    eng._timeouts_in_row = 0
    rto, most = eng.rtt.rto, eng.cfg.max_rto
    eng._timer = now + (rto if rto <= most else most)  # (_arm with _backoff 1)
    if stream.total is not None:
        eng._check_done(now)
    _pump(eng, now)
    return True


def _pump(eng: ClientEngine, now: float) -> None:
    """`_pump` then `_update_reo`, their `_pending_below` inline."""
    if eng.phase != _ESTABLISHED:
        eng._reo = None
        return
    ready = eng._ready
    loss = eng.loss
    heap, expected = loss.heap, loss.expected
    repairing = eng.repair.under_repair
    probes = eng.cfg.tail_probes
    while True:
        while heap and heap[0] not in expected:
            heappop(heap)
        if not ready:
            break
        pkt = ready[0][0]
        if (heap and heap[0] < pkt) or (repairing and min(repairing) < pkt):
            break
        if eng._probes >= probes and not eng._can_ask():
            break
        cont = heappop(ready)[2]
        if cont.type == FULL1:
            request(eng, cont, now)
        else:
            eng._request_for(cont, now)
    top = eng.score.max_rx
    if eng.gate.steps:
        eng._reo = eng.gate.next_deadline()
    elif (heap and heap[0] < top) or (repairing and min(repairing) < top):
        eng._open_reo(now)
    else:
        eng._reo = None


def _take(eng: ClientEngine, data: bytes, at: int, start: int, end: int, now: float) -> None:
    """`Reassembly.take` of one DATA chunk [start, end) wholly wanted and asked by its own
    slot, then `deliver_in_order`; in order, straight to `app` (with the run that waited
    for it, if one did)."""
    stream = eng.stream
    stream.want_bytes -= end - start
    want = stream.want
    starts, ends = want._starts, want._ends
    if starts and starts[0] == start and end <= ends[0]:  # (RangeSet.remove's result at the
        if end < ends[0]:  # front of the first run: it shrinks, or goes)
            starts[0] = end
        else:
            del starts[0], ends[0]
    else:
        want.remove(start, end)
    if (start == stream.deliver and stream.total is None and start not in stream._piece_end
            and not stream.skips._starts):
        stream.held += end - start
        app = stream.app
        app += data[at:]
        _add(stream.received, start, end)
        piece = stream._pieces.pop(end, None)
        if piece is None:
            stream.deliver = end
        else:  # (runs are kept merged: none starts where this one ends)
            del stream._piece_end[end + len(piece)]
            app += piece
            stream.deliver = end + len(piece)
        moved = stream.deliver - start
    else:
        stream._store(start, data[at:])
        _add(stream.received, start, end)
        # (after every answer no run or skip starts at `deliver`: only bytes that start there
        # can move; the general path calls it all the same)
        moved = stream.deliver_in_order() if start == stream.deliver else 0
    if moved and eng.on_event is not None:
        eng._event(ev.DATA, now, bytes=moved, offset=stream.deliver)


def _claim(eng: ClientEngine, cont: Continuation, nonce: int, now: float) -> None:
    """`ClientEngine._on_packet` for an expected FULL1 packet of the current epoch, not yet
    known, with uplink repair off (its settle is empty: the packet brought its bytes)."""
    pkt = cont.seq
    cts = cont.client_timestamp
    if cts:
        r = ((int(now * 1000) - cts) & _U32) / 1000.0
        if r < 1 << 20:
            eng.rtt.sample(r)
    del eng.loss.expected[pkt]
    score = eng.score
    _add(score.board, pkt, pkt + 1)
    score.nonce[pkt] = nonce
    if pkt > score.max_rx:
        score.max_rx = pkt
    spare = eng.spare
    old = spare.cont
    if old is None or spare.stale or pkt >= old.seq:
        spare.cont = cont
        spare.stale = False
        spare.rx = now
    heappush(eng._ready, (pkt, id(cont), cont))
    if eng.in_recovery and cont.state == BOOTSTRAP and pkt == eng._recovery_base:
        eng.in_recovery = False
        eng._event(ev.RECOVERY_END, now, pkt=pkt, tcp_base=cont.tcp_base)
    loss = eng.loss
    if eng.gate.steps:  # (`_detect_losses` on a path that reorders)
        top = score.max_rx
        eng._declare_below(eng.gate.note(now, top, loss.hole_below(top), eng._reo_srtt()), now)
    else:
        bound = score.max_rx - loss.reordering + 1
        if loss.hole_below(bound):
            eng._declare_below(bound, now)
    if eng._prunes and len(score.nonce) >= eng._next_prune:
        eng._prune()


def _add(rs: RangeSet, start: int, end: int) -> None:
    """`rs.add(start, end)`; inline at the end of the set, where packets and bytes arrive: it
    extends the last run (in order), starts a run past it (one arrived early) or fills the
    gap before it (the one that came late)."""
    ends = rs._ends
    if ends:
        last = ends[-1]
        if last == start:
            ends[-1] = end
            return
        if last < start:
            rs._starts.append(start)
            ends.append(end)
            return
        starts = rs._starts
        if len(ends) > 1 and ends[-2] == start and starts[-1] == end:
            ends[-2] = last
            del starts[-1], ends[-1]
            return
    rs.add(start, end)


def request(eng: RequestSending, cont: Continuation, now: float) -> None:
    """`_request_for` then `_launch` and `_send_request` of a NORMAL request on a FULL1
    continuation, without predictions or uplink repair (the engine checked those)."""
    seq, base = cont.seq, cont.tcp_base
    score = eng.score
    if base <= seq and cont.state != RECOVERY:
        board = score.board
        i = bisect_right(board._starts, base) - 1
        # one run holds [base, seq], provable (below the floor: from base's anchor): the
        # proof is that block, the plan the normal step
        if i >= 0 and board._ends[i] > seq and (base >= score.floor
                                                or score._can_sum(base, seq)):
            _step(eng, cont, now)
            return
    blocks = score.proof(base if base < seq else seq, seq, eng.cfg.max_sacks)
    plan = pl.plan_request(seq, base, cont.start_cwnd, cont.ssthresh, cont.state, blocks, False,
                           eng._max_gap)
    if plan.verdict == "reject":
        eng.counters["unusable_cont"] += 1
        return
    ranges, asked = _assign(eng, min(len(plan.slots), MAX_RANGES))
    stream = eng.stream
    for old in eng.loss.expect(plan, ranges, seq):
        stream.settle(old.ranges)
    note_plan(eng, plan, ranges)
    eng._last_segs, eng._last_wire = [], None
    flat: list[int] = []
    for lft, rgt in blocks:
        flat += (lft, rgt, score.summary(lft, rgt))
    _send(eng, cont, blocks, flat, ranges, asked, now)
    if eng._timer is None:
        eng._arm(now)


def _step(eng: RequestSending, cont: Continuation, now: float) -> None:
    """`request` when the proof is the one block [TCPBase, seq]: `plan_request`'s normal step
    (packets seq + cwnd(seq - 1) on, one per window growth more) without building its Plan
    and Slots, `LossDetector.expect` and `note_plan` of it (issue 17: ~2 us per request)."""
    seq, base, start_cwnd, ssthresh = cont.seq, cont.tcp_base, cont.start_cwnd, cont.ssthresh
    prev = cwnd(seq - 1, base, start_cwnd, ssthresh)
    grow = cwnd(seq, base, start_cwnd, ssthresh) - prev  # SPLIT slots after the CONTINUE one
    ranges, asked = _assign(eng, min(1 + grow, MAX_RANGES))
    stream = eng.stream
    for old in eng.loss.expect_run(seq + prev, 1 + grow, ranges, base):
        stream.settle(old.ranges)
    counters = eng.counters
    if ranges:
        eng._probes = 0
    else:
        eng._probes += 1
        counters["tail_probes"] += 1
    eng.cwnd = prev + grow
    eng.ssthresh = ssthresh
    counters[_CONTINUES] += 1
    if grow:
        counters[_SPLITS] += grow
    eng._last_segs, eng._last_wire = [], None
    _send(eng, cont, [(base, seq)], [base, seq, eng.score.summary(base, seq)], ranges, asked,
          now)
    if eng._timer is None:
        eng._arm(now)


def note_plan(eng: RequestSending, plan: pl.Plan, ranges: list[tuple[int, int]]) -> None:
    """What a request's plan (and the ranges it asks) tell the engine: tail probes in a row,
    the window, a recovery that starts, a counter per slot (`_launch`'s, the fast path's)."""
    slots = plan.slots
    counters = eng.counters
    if ranges:
        eng._probes = 0
    elif slots:
        eng._probes += 1
        counters["tail_probes"] += 1
    if slots:
        eng.cwnd = plan.cwnd
        eng.ssthresh = slots[-1].ssthresh
    if plan.verdict == "recovery" and not eng.in_recovery and plan.first_loss >= 0:
        boot = [s for s in slots if s.kind == pl.BOOT]
        if boot:
            eng.in_recovery = True
            eng._recovery_base = boot[0].tcp_base
            counters["recoveries"] += 1
    for s in slots:
        counters[_PRED[s.kind]] += 1
    if not slots:
        counters["pred.terminate"] += 1


def range_parts(ranges: list[tuple[int, int]]) -> list[bytes] | None:
    """A request's ranges as the wire has them (start, length), or None if one is out of
    the u32 bounds (the encoder refuses it)."""
    parts = []
    for s, e in ranges:
        if not 0 <= s <= _U32 or not s <= e <= _U32 + 1 or e - s > _U32:
            return None
        parts.append(_RANGE(s, e - s))
    return parts


def pack_request(rtype: int, c: Continuation, flat: list[int], ucont: bytes,
                 rparts: list[bytes], app: bytes) -> bytes:
    """A non-SYN request with a FULL continuation, its SACK blocks flat (left, right,
    summary, ...), as `Request.encode` writes it (one pack for the head)."""
    nsacks = len(flat) // 3
    # (the FULL continuation is its body and MAC: one call reads its fields, where a compiled
    # caller would look each field of the interpreted class up by name)
    return b"".join((_TYPE[rtype], c.body(), c.mac, _TYPE[nsacks], _SACKS[nsacks](*flat),
                     _U16(len(ucont)), ucont, _TYPE[len(rparts)], *rparts, app))


def _assign(eng: RequestSending, n: int) -> tuple[list[tuple[int, int]], bool]:
    """`RangePicker.assign(n)`, new bytes of the one stream inline while nothing is missing
    (each asked at once, as `new_range` does); whether every range returned is asked."""
    picker, stream = eng.picker, eng.stream
    out: list[tuple[int, int]] = []
    if stream.missing._starts or picker.lanes:
        return picker.assign(n), False
    mss = picker.mss
    got, wanted = stream.received._ends, stream.want._ends
    top = stream.total if stream.total is not None else 1 << 32
    while len(out) < n:
        m = stream.window - stream.held - stream.want_bytes
        if m > mss:
            m = mss
        if m <= 0:
            break
        pos = picker.next_new
        if pos >= top:
            break
        # (`ends_by(pos)` of both, inline) past every byte received and wanted, or the
        # general steps
        if (got and got[-1] > pos) or (wanted and wanted[-1] > pos):
            return out + picker.assign(n - len(out)), False
        end = pos + m if pos + m < top else top
        picker.next_new = end
        stream.want_bytes += end - pos
        if wanted and wanted[-1] == pos:  # (`want.add`: it extends the last run)
            wanted[-1] = end
        else:
            stream.want.add(pos, end)
        out.append((pos, end))
    return out, True


def _send(eng: RequestSending, c: Continuation, blocks: list[tuple[int, int]], flat: list[int],
          ranges: list[tuple[int, int]], asked: bool, now: float) -> None:
    """`_send_request` of a NORMAL request: the continuation's client-owned fields, the
    ranges asked, the request packed as `encode_request` packs it, its segment (`flat`: the
    SACK blocks with their summaries, left, right, summary, ...)."""
    build = eng.build
    epoch = eng.client_state
    last = build._last  # (RequestBuilder.token's cache, read here)
    tok = last[1] if last[0] == epoch else build.token(epoch)
    c.client_state, c.parent, c.client_timestamp = tok >> 32, tok & _U32, int(now * 1000) & _U32
    stream = eng.stream
    if not asked:
        for s, e in ranges:
            stream.ask(s, e)
    ucont = eng.ucont
    app = eng._request_bytes if not ucont else b""
    if asked:  # (ranges `_assign` made are within the u32 bounds: below 2^32, an MSS long at
        parts: list[bytes] = []  # most; a loop: a comprehension is a call of its own)
        for s, e in ranges:
            parts.append(_RANGE(s, e - s))
        rparts: list[bytes] | None = parts
    else:
        rparts = range_parts(ranges)
    if rparts is None or len(blocks) > MAX_SACKS or len(ucont) > 0xFFFF or len(c.mac) != 16:
        # (encode_request's checks: the encoder refuses it)
        sacks = [SackBlock(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
        payload = Request(REQ_NORMAL, c, sacks, ucont, ranges, app).encode()
    else:
        payload = pack_request(REQ_NORMAL, c, flat, ucont, rparts, app)
    # RequestBuilder.segment: its checksum from the constant part's sum (2^16 = 1 mod 2^16 - 1:
    # seq, ack and the length add as they are)
    seq = build.seq = (build.seq + 1) & _U32
    n = HEADER_LEN + len(payload)
    body = payload + b"\0" if n & 1 else payload
    # (pure Python: the payload read as one number, one remainder for the whole sum)
    csum = ~((eng._tx_sum + seq + c.seq + n + (int.from_bytes(body, "big") if _PURE_SUM
                                                else ones_sum(body))) % 0xFFFF or 0xFFFF) & 0xFFFF
    eng._outbox.append(_TCP_HDR(eng.local_port, eng.server_port, seq, c.seq, _OFFSET_BYTE, ACK,
                                0xFFFF, csum, 0, _OPT_KIND, 6, _OPT_EXID, 0, 1, 1) + payload)
    counters = eng.counters
    counters["requests"] += 1
    counters["tx"] += 1
    if eng.on_event is not None:
        eng._event(ev.REQUEST, now, ack=c.seq, tcp_base=c.tcp_base, state=c.state,
                   req_type=REQ_NORMAL, sacks=[list(b) for b in blocks], ranges=len(ranges))


__all__ = ["receive", "request", "sums"]
