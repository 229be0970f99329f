"""The server's per-request fast path: the common request answered in one pass, byte for byte
as the general path (`ServerEngine.receive_slow`, which reaches its verdict through
`core.admission.admit`) answers it.

Why: most requests of a transfer are alike — a NORMAL request on a FULL1 continuation whose one
SACK block covers [TCPBase, seq], answered by the normal step's one or two packets. The general
path builds a Segment, a Continuation, a Request, SACK tuples, a Verdict, a Plan and its Slots
for each; this path reads the fields off one unpack, seals straight from them and builds each
answer's segment in one join, its TCP checksum summed over the parts (issue 17).

Which requests: no event sink attached (events belong to the general path), no delta flags,
a segment with the usual 28-byte header, request type NORMAL, continuation FULL1 in state NORMAL
or BOOTSTRAP with seq >= TCPBase, one SACK block [L, seq] with L <= TCPBase, and an age inside
the freshness limit. It runs the same admission stages as `admit` — key epoch, MAC, sealed
fields, freshness, SACK shape and nonce, replay — inlined, and touches no state (the state cache,
the replay table, a counter) until all but the replay stage passed. Any request it does not
take, or that one of those stages would refuse, goes to the general path untouched, so every
refusal is still `admit`'s. tests/core/test_fastpath.py replays a recorded corpus (a lossy
transfer plus malformed, forged, stale, replayed and badly-SACKed requests) through both paths
and compares every output byte and every counter.

`FastPath` is a class of its own, not a part of `ServerEngine`, so that the compiled build
(mypyc, trickles_kit/native/mypyc_modules.txt) makes it a native class with typed fields while
the engine stays an ordinary Python class whose methods tests, labs and tools may wrap.
"""

from __future__ import annotations

import struct
import traceback
from collections import Counter
from hashlib import blake2s
from hmac import compare_digest
from math import isqrt
from typing import TYPE_CHECKING, Any, Final

from trickles_kit.core.admission import SACK_REACH, SEQ_LIMIT, Reason, event_kind
from trickles_kit.core.cc import MAX_CWND, cwnd
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.minisocket import Minisocket, OutSlot
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.plan import CONTINUE, SPLIT
from trickles_kit.native import speedups
from trickles_kit.wire import segment as sg
from trickles_kit.wire.continuation import (
    BODY_FORMAT,
    FULL1,
    MAC_OFFSET,
    MAC_PSEUDO,
    NORMAL,
    RECOVERY,
)
from trickles_kit.wire.messages import (
    CHUNK_DATA,
    DATA_CHUNK_OVERHEAD,
    FLAG_FIN,
    RANGE,
    REQUEST_HEAD,
    REQUEST_HEAD_LEN,
    RESPONSE_HEADER_LEN,
    SACK_BLOCK,
)
from trickles_kit.wire.segment import ACK, FIN, HEADER_LEN, OPT_EXID, OPT_KIND, SYN, ones_sum

if TYPE_CHECKING:  # (types only: core.server imports this module)
    from trickles_kit.core.replay import ReplayHistory
    from trickles_kit.core.server import ServerConfig, ServerEngine
    from trickles_kit.core.statecache import StateCache

_U32: Final = 0xFFFFFFFF
# a request segment's TCP header (ports, data-offset byte, flags, the option's first word),
# its request head (REQUEST_HEAD: type, FULL continuation, numSacks), then one SACK block and
# the ucont length: what the fast path reads, in one unpack
_REQ: Final = struct.Struct(sg.HEADER_CHECKED.format + REQUEST_HEAD.format[1:]
                            + SACK_BLOCK.format[1:] + "H").unpack_from
_RANGES: Final = RANGE.iter_unpack
_RANGE1: Final = RANGE.unpack_from
# the response header (nonce, siblings, position, ucont length: wire.messages) and the FULL
# continuation's body, packed as one
_RESP_BODY: Final = struct.Struct("!IBBH" + BODY_FORMAT).pack
_DATA_HDR: Final = struct.Struct("!BHI").pack  # a DATA chunk's header (wire.messages)
_DATA: Final = CHUNK_DATA << 4
_DATA_FIN: Final = CHUNK_DATA << 4 | FLAG_FIN
_SKIP: Final = struct.Struct("!BHII").pack
_FINHINT: Final = struct.Struct("!BHI").pack
_PSEUDO: Final = MAC_PSEUDO.pack
_KEY: Final = struct.Struct("!Q").unpack_from  # the replay key: the MAC's first 8 bytes
# wire.segment's layout (`encode_segment`, which the general path calls): the 28-byte header
# whose option is the Trickles one (the checksum's pseudo-header is summed, never packed)
_TCP_HDR: Final = sg.HEADER.pack
_OPT_WORD: Final = int.from_bytes(sg.OPT_PREFIX, "big")  # header bytes 20-23: our option
_OFFSET_BYTE: Final = sg.OFFSET_BYTE
_MIN_LEN: Final = HEADER_LEN + REQUEST_HEAD_LEN + 15  # header, head, one SACK, ucont length, ranges
_UCONT_AT: Final = HEADER_LEN + REQUEST_HEAD_LEN + 14  # where the user continuation starts (119)
# what the MAC covers of a FULL continuation (core.seal.mac: body[0:6] + body[18:MAC_OFFSET]),
# where it sits in a request segment (after the header and the request type) and in an answer's
# response header + body
_RQ: Final = HEADER_LEN + 1
_RQ_A: Final = _RQ + 6
_RQ_B: Final = _RQ + 18
_RQ_C: Final = _RQ + MAC_OFFSET
_RS_A: Final = RESPONSE_HEADER_LEN + 6
_RS_B: Final = RESPONSE_HEADER_LEN + 18
_RS_C: Final = RESPONSE_HEADER_LEN + MAC_OFFSET
# the counters' keys as plain strings (the same keys: a StrEnum member hashes and compares as its
# value), which a dict looks up on its fast path for exact strings
_CONTINUE: Final = str(CONTINUE)
_SPLIT: Final = str(SPLIT)
# the imported names the per-request path reads, as Final: the compiled build reads a Final
# module name as a C static, any other global with a dict look-up (~20 per request)
_HEADER_LEN: Final = HEADER_LEN
_SYN: Final = SYN
_ACK: Final = ACK
_FIN: Final = FIN
_FULL1: Final = FULL1
_NORMAL: Final = NORMAL
_RECOVERY: Final = RECOVERY
_RESPONSE_HEADER_LEN: Final = RESPONSE_HEADER_LEN
_DATA_CHUNK_OVERHEAD: Final = DATA_CHUNK_OVERHEAD
_SACK_REACH: Final = SACK_REACH
_MAX_CWND: Final = MAX_CWND
_SEQ_LIMIT: Final = SEQ_LIMIT
_OPT_KIND: Final = OPT_KIND
_OPT_EXID: Final = OPT_EXID
_ones_sum: Final = ones_sum
# the pure build sums a short string (a request, a segment's front) inline, `int.from_bytes`
# and one remainder, without a call into `py_ones_sum` (whose split pays off on long ones)
_PURE_SUM: Final = speedups is None
_compare_digest: Final = compare_digest
_isqrt: Final = isqrt
# the methods called per request on built-in objects, bound once: the compiled build calls a
# Final name directly where `obj.method(...)` looks the method up by name on every call
_B2 = type(blake2s())
_b2_copy: Final = _B2.copy
_b2_update: Final = _B2.update
_b2_digest: Final = _B2.digest
_U16: Final = struct.Struct("!H").pack
_join: Final = b"".join
# a request's fields as `_REQ` unpacks them (typed: the compiled build unboxes them once)
_Head = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int,
              int, int, int, int, int, int, bytes, int, int, int, int, int]


class FastPath:
    """`ServerEngine.receive`: the fast path, or the engine's general path for anything else.

    It keeps the engine's long-lived parts (keys, nonces, counters, addresses, config) and the
    parts that may be swapped while it runs (handler, replay table, state cache, event sink,
    the `fast_path` switch), which the engine's properties of those names set here: read per
    request from this object's own fields, not looked up on the engine."""

    def __init__(self, eng: ServerEngine) -> None:
        self.eng = eng
        self.keys: KeyRing = eng.keys
        self.nonces: NonceGen = eng.nonces
        self.counters: Counter[str] = eng.counters
        self.cfg: ServerConfig = eng.cfg  # (its fields are read per request: they may change)
        self.sip: bytes = eng.service_ip
        self.sport: int = eng.service_port
        # the service address's words and the protocol (6): the part of every TCP checksum's
        # pseudo-header this server's segments share
        self._sip6: int = int.from_bytes(self.sip, "big") % 0xFFFF + 6
        self.handler: Any = None  # the swappable parts, set through the engine's properties
        self.on_event: Any = None
        self.state_cache: StateCache | None = None
        self.replay: ReplayHistory | None = None
        self.fast_path = True
        # the MAC state of the last epoch asked for: an epoch's key never changes (HKDF of the
        # secret and the epoch), so this saves a call into the key ring on most requests
        self._h_epoch = -1
        self._hasher: Any = None

    def receive(self, segment: bytes, client_ip: bytes, now: float) -> list[bytes]:
        """Process one TCP-format segment from `client_ip`; never raises on bad input."""
        if self.on_event is not None or not self.fast_path:
            return self.eng.receive_slow(segment, client_ip, now)
        try:  # (an exception here, a decode error included, leaves the request to it too)
            n = len(segment)
            sip = self.sip
            if n < _MIN_LEN or n & 1:
                return self.eng.receive_slow(segment, client_ip, now)
            # the TCP header, the request's head and its one SACK block in one unpack, read in
            # place (offsets below count from the segment's start)
            f: _Head = _REQ(segment, 0)
            cport, dport, off, tflags, opt, rtype, ctype, k, _fc, _cs, _pa, _ct, ts, _mr, \
                state, _fl, _fb, c0, ss, base, cid, epoch, mac, nsacks, left, right, summary, \
                ulen = f
            # the TCP checksum: the pseudo-header's words (both addresses, protocol 6, the
            # length) added to the segment's, no pseudo-header built
            ipsum: int = int.from_bytes(client_ip, "big") if _PURE_SUM else _ones_sum(client_ip)
            if (dport != self.sport or off != _OFFSET_BYTE or tflags & _SYN
                    or opt != _OPT_WORD or rtype or ctype != _FULL1 or state > 2 or nsacks != 1
                    or len(client_ip) != 4
                    or (self._sip6 + ipsum + n + (int.from_bytes(segment, "big") if _PURE_SUM
                                                  else _ones_sum(segment))) % 0xFFFF):
                return self.eng.receive_slow(segment, client_ip, now)
            cfg = self.cfg
            age: int = (int(now * 1000) - ts) & _U32
            # the plan's shape (the normal step) and admission's stages short of the replay table,
            # pure: a request any of them would refuse or plan otherwise takes the general path
            if (state == _RECOVERY or k < base or right != k or left > base
                    or left < base - _SACK_REACH or cfg.max_sacks < 1
                    or not 1 <= c0 <= ss or c0 > _MAX_CWND or k > _SEQ_LIMIT
                    or age >= 1 << 31 or age > cfg.freshness * 1000
                    or not self.keys.accepts(epoch, now)
                    or self.nonces.range_summary(cid, base, left, right) != summary):
                return self.eng.receive_slow(segment, client_ip, now)
            uend: int = _UCONT_AT + ulen
            if uend >= n:
                return self.eng.receive_slow(segment, client_ip, now)
            nr = segment[uend]
            rend = uend + 1 + 8 * nr
            if nr > 64 or rend > n:
                return self.eng.receive_slow(segment, client_ip, now)
            ranges: list[tuple[int, int]] = []
            start: int
            length: int  # (typed: the compiled build adds and compares them unboxed)
            if nr == 1:  # (the common case)
                start, length = _RANGE1(segment, uend + 1)
                if start + length > _U32 + 1:
                    return self.eng.receive_slow(segment, client_ip, now)
                ranges.append((start, start + length))
            elif nr:
                for start, length in _RANGES(segment[uend + 1:rend]):
                    if start + length > _U32 + 1:
                        return self.eng.receive_slow(segment, client_ip, now)
                    ranges.append((start, start + length))
            pseudo: bytes = _PSEUDO(client_ip, sip, cport, self.sport)
            # the MAC covers the continuation's type, seq and firstChild and its server block
            covered: bytes = pseudo + segment[_RQ:_RQ_A] + segment[_RQ_B:_RQ_C]
            sc = self.state_cache
            if sc is not None and covered + mac in sc:
                sc.lookup(covered + mac)  # (refreshes it and counts the hit, as admission's hook)
            else:
                h = _b2_copy(self._hasher if epoch == self._h_epoch else self._mac_state(epoch))
                _b2_update(h, covered)
                if not _compare_digest(_b2_digest(h), mac):
                    return self.eng.receive_slow(segment, client_ip, now)
                if sc is not None:
                    sc.lookup(covered + mac)  # the miss admission's hook counts
                    sc.add(covered + mac)
        except Exception:
            return self.eng.receive_slow(segment, client_ip, now)
        # committed: from here on this request is this path's
        return self._answer(f, segment, client_ip, ipsum, pseudo, ranges, uend, rend, age, now)

    def _mac_state(self, epoch: int) -> Any:
        """`KeyRing.mac_hasher(epoch)`, remembered for the last epoch asked for."""
        if epoch != self._h_epoch:
            self._hasher = self.keys.mac_hasher(epoch)
            self._h_epoch = epoch
        return self._hasher

    def _answer(self, f: _Head, segment: bytes, cip: bytes, ipsum: int, pseudo: bytes,
                ranges: list[tuple[int, int]], uend: int, rend: int, age: int,
                now: float) -> list[bytes]:
        """The replay stage, the handler and the seal of an admitted-so-far request (`f`: its
        fields as `_REQ` unpacks them from `segment`)."""
        eng = self.eng
        counters = self.counters
        counters["rx"] += 1
        try:
            counters["nonce_ok"] += 1
            table = self.replay  # its `seen` hook, inlined
            assert table is not None  # (set with the engine)
            refused = table.refused
            if not table.check_and_add(_KEY(f[22])[0], now, (int(now * 1000) - age) / 1000):
                why = "replay_horizon" if table.refused > refused else "replay"
                return eng._drop(why, now, event_kind(why))
            k, c0, ss, base = f[7], f[17], f[18], f[19]  # (k >= base, 1 <= c0 <= ss: checked)
            prev, cur = _windows(k, base, c0, ss)
            first = k + prev
            count = cur - prev + 1
            nranges = len(ranges)
            mss: int = self.cfg.mss  # type: ignore[assignment]  # (resolved: never None)
            if count == 1:  # (the common case)
                slots = [OutSlot(first, mss, ranges[0] if nranges else None)]
            else:
                slots = [OutSlot(first + i, mss, ranges[i] if i < nranges else None)
                         for i in range(count)]
            ucont = segment[_UCONT_AT:uend]
            msk = Minisocket("REQUEST", (cip, f[0]), f[20], segment[rend:], ucont, ranges, slots,
                             now)
            self.handler(msk)
            if msk.dropped:
                return eng._drop(Reason.APP_DROP, now)
            return self._seal_fast(f, slots, first, count, cip, ipsum, pseudo, ucont, age, now)
        except Exception as e:  # a handler bug must not take the server down
            counters["handler_error"] += 1
            eng.last_error = traceback.format_exc()  # kept for `trickles serve` to report
            return eng._drop("internal." + type(e).__name__, now)

    def _seal_fast(self, f: _Head, slots: list[OutSlot], first: int, count: int,
                   cip: bytes, ipsum: int, pseudo: bytes, ucont: bytes, age: int,
                   now: float) -> list[bytes]:
        """`ServerEngine._seal` and `_segment` for the normal step's slots (one function: a
        call with a dozen arguments per packet costs the pure build ~0.3 us)."""
        cport, _dp, _off, _tf, _opt, _t, _c, k, _fc, cs, parent, cts, _ts, mrtt, _st, _fl, _fb, \
            c0, ss, base, cid, _ep, _mac, _ns, _left, _right, _sum, _ulen = f
        # (= keys.current(now), the sealing epoch: `receive` called keys.accepts(epoch, now),
        # which moved the ring's epoch to the clock's at `now` if it was behind)
        sealing = self.keys._epoch
        keyed = self._hasher if sealing == self._h_epoch else self._mac_state(sealing)
        ts_now = int(now * 1000) & _U32
        mrtt = (age * 8 if mrtt == 0 else mrtt - (mrtt >> 3) + age) & _U32
        nonces = self.nonces
        sport = self.sport
        echo = ucont if self.cfg.echo_ucont else b""
        psum = self._sip6 + ipsum  # the TCP pseudo-header's words but the length's
        counters = self.counters
        out = []
        for i in range(count):
            pkt = first + i
            slot = slots[i]
            u = slot.ucont
            if u is None or u == ucont:  # the client holds it already (it sent it)
                u = echo
            if len(u) > 0xFFFF:
                raise ValueError("user continuation longer than 65535 bytes")
            # the response header and the continuation's body in one pack; the MAC covers the
            # body's type, seq and firstChild (6 bytes at 8) and its server block (41 at 26)
            x = _RESP_BODY(nonces.packet_nonce(cid, base, pkt), count, i, len(u), _FULL1, pkt,
                           i == 0, cs, parent, cts, ts_now, mrtt, _NORMAL, 0, 0, c0, ss, base,
                           cid, sealing)
            h = _b2_copy(keyed)
            _b2_update(h, pseudo + x[_RESPONSE_HEADER_LEN:_RS_A] + x[_RS_B:_RS_C])
            flags = _ACK
            data = slot.data
            head = x + _b2_digest(h) + u
            if data or slot.fin:
                if len(data) > 0xFFFF - _DATA_CHUNK_OVERHEAD:
                    raise ValueError("DATA chunk too long")
                head += _DATA_HDR(_DATA_FIN if slot.fin else _DATA,
                                  _DATA_CHUNK_OVERHEAD + len(data), slot.byte_num)
                if slot.fin:
                    flags = _ACK | _FIN
            tail = b""
            if slot.skips:
                tail = b"".join(_SKIP(0x30, 11, s, m) for s, m in slot.skips)
            if slot.finhint is not None:
                tail += _FINHINT(0x40, 7, slot.finhint)
            # `wire.segment.encode_segment` of the payload head + data + tail, joined once: the
            # checksum sums the parts apart when each starts on a 16-bit word (the usual case)
            hdr = _TCP_HDR(sport, cport, pkt & _U32, k & _U32, _OFFSET_BYTE, flags, 0, 0, 0,
                           _OPT_KIND, 6, _OPT_EXID, _RESPONSE_HEADER_LEN + 75 + len(u), 1, 1)
            seglen = _HEADER_LEN + len(head) + len(data) + len(tail)
            if not len(head) & 1 and not len(data) & 1:
                ds = slot.data_sum  # (the application's sum of the data, when it gave one)
                c = psum + seglen \
                    + (int.from_bytes(hdr + head, "big") if _PURE_SUM
                       else _ones_sum(hdr) + _ones_sum(head)) \
                    + (_ones_sum(data) if ds is None else ds)
                if tail:
                    c += _ones_sum(tail + b"\0" if len(tail) & 1 else tail)
            else:
                rest = hdr + head + data + tail
                c = psum + seglen + _ones_sum(rest + b"\0" if len(rest) & 1 else rest)
            c = (~((c % 0xFFFF) or 0xFFFF)) & 0xFFFF
            out.append(_join((hdr[:16], _U16(c), hdr[18:], head, data, tail)))
            counters[_CONTINUE if i == 0 else _SPLIT] += 1
        counters["tx"] += count
        return out


def _windows(k: int, base: int, c0: int, ss: int) -> tuple[int, int]:
    """(cwnd(k - 1), cwnd(k)) of `core.cc` for k >= base and 1 <= c0 <= ss. In congestion
    avoidance (both acks past slow start, A = base + ss - c0) cwnd(n) is the largest w with
    w(w - 1) <= ss(ss - 1) + 2(n - A), capped at MAX_CWND, and the step from k - 1 to k adds
    at most one packet: one root and one comparison instead of two calls. tests/core/
    test_fastpath.py compares it with `cwnd` itself."""
    a = base + ss - c0
    if k <= a:  # k - 1 in slow start (or at its edge)
        return cwnd(k - 1, base, c0, ss), cwnd(k, base, c0, ss)
    room = ss * (ss - 1) + 2 * (k - a)  # (for k; k - 1 has 2 less)
    prev = (1 + _isqrt(4 * room - 7)) // 2  # cwnd(k - 1): isqrt(1 + 4 * (room - 2))
    if prev >= _MAX_CWND:
        return _MAX_CWND, _MAX_CWND
    return (prev, prev + 1) if prev * (prev + 1) <= room else (prev, prev)


__all__ = ["FastPath"]
