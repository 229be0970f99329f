"""The server's per-request fast path: the common request answered in one pass, byte for byte
as the general path (`ServerEngine.receive_slow`, which reaches its verdict through
`core.admission.admit`) answers it.

Why: most requests of a transfer are alike — a NORMAL request on a FULL1 continuation whose one
SACK block covers [TCPBase, seq], answered by the normal step's one or two packets. The general
path builds a Continuation, a Request, SACK tuples, a Verdict, a Plan and its Slots for each;
this path reads the fields off one unpack and seals straight from them (issue 17).

Which requests: no event sink attached (events belong to the general path), no delta flags,
request type NORMAL, continuation FULL1 in state NORMAL or BOOTSTRAP with seq >= TCPBase, one
SACK block [L, seq] with L <= TCPBase, and an age inside the freshness limit. It runs the same
admission stages as `admit` — key epoch, MAC, sealed fields, freshness, SACK shape and nonce,
replay — inlined, and touches no state (the state cache, the replay table, a counter) until all
but the replay stage passed. Any request it does not take, or that one of those stages would
refuse, goes to the general path untouched, so every refusal is still `admit`'s.
tests/core/test_fastpath.py replays a recorded corpus (a lossy transfer plus malformed, forged,
stale, replayed and badly-SACKed requests) through both paths and compares every output byte and
every counter.
"""

from __future__ import annotations

import struct
import traceback
from collections import Counter
from hmac import compare_digest
from typing import TYPE_CHECKING

from trickles_kit.core.admission import SACK_REACH, SEQ_LIMIT, Reason, event_kind
from trickles_kit.core.cc import MAX_CWND, cwnd
from trickles_kit.core.minisocket import Minisocket, OutSlot
from trickles_kit.core.plan import CONTINUE, SPLIT
from trickles_kit.wire.continuation import FULL1, MAC_PSEUDO, NORMAL, RECOVERY, pack_body
from trickles_kit.wire.messages import (
    RANGE,
    REQUEST_HEAD,
    REQUEST_HEAD_LEN,
    RESPONSE_HEADER_LEN,
    encode_data_chunk,
)
from trickles_kit.wire.segment import ACK, FIN, SYN, decode_segment, encode_segment

if TYPE_CHECKING:  # (types only)
    from trickles_kit.core.keys import KeyRing
    from trickles_kit.core.nonces import NonceGen
    from trickles_kit.core.replay import ReplayHistory
    from trickles_kit.core.statecache import StateCache

_U32 = 0xFFFFFFFF
_HEAD = REQUEST_HEAD.unpack_from
_RANGES = RANGE.iter_unpack
_RANGE1 = RANGE.unpack_from
_SACK1 = struct.Struct("!IIIH").unpack_from  # one SACK block, then the ucont length
_RESP_HDR = struct.Struct("!IBBH").pack
_SKIP = struct.Struct("!BHII").pack
_FINHINT = struct.Struct("!BHI").pack
_PSEUDO = MAC_PSEUDO.pack
_KEY = struct.Struct("!Q").unpack_from  # the replay key: the MAC's first 8 bytes


class FastRequests:
    """`ServerEngine.receive`: the fast path, or the general path for anything else."""

    if TYPE_CHECKING:
        cfg: object
        keys: KeyRing
        nonces: NonceGen
        state_cache: StateCache | None
        counters: Counter[str]
        service_ip: bytes
        service_port: int
        on_event: object
        handler: object
        last_error: str | None
        fast_path: bool
        _replay: ReplayHistory

        def receive_slow(self, segment: bytes, client_ip: bytes, now: float) -> list[bytes]: ...
        def _drop(self, reason: str, now: float, kind: str = ...) -> list[bytes]: ...

    def receive(self, segment: bytes, client_ip: bytes, now: float) -> list[bytes]:
        """Process one TCP-format segment from `client_ip`; never raises on bad input."""
        if self.on_event is not None or not self.fast_path:
            return self.receive_slow(segment, client_ip, now)
        try:  # (an exception here, a decode error included, leaves the request to it too)
            seg = decode_segment(segment, client_ip, self.service_ip)
            p = seg.payload
            n = len(p)
            if (seg.dst_port != self.service_port or seg.flags & SYN or n < REQUEST_HEAD_LEN + 15
                    or p[0] or p[1] != FULL1 or p[27] > 2 or p[76] != 1):
                return self.receive_slow(segment, client_ip, now)
            f = _HEAD(p, 0)
            k, state, start_cwnd, ssthresh, base, cid, epoch = (f[2], f[9], f[12], f[13], f[14],
                                                                  f[15], f[16])
            left, right, summary, ulen = _SACK1(p, REQUEST_HEAD_LEN)
            cfg = self.cfg
            age = (int(now * 1000) - f[7]) & _U32
            # the plan's shape (the normal step) and admission's stages short of the replay table,
            # pure: a request any of them would refuse or plan otherwise takes the general path
            if (state == RECOVERY or k < base or right != k or left > base
                    or left < base - SACK_REACH or cfg.max_sacks < 1  # type: ignore[attr-defined]
                    or not 1 <= start_cwnd <= ssthresh or start_cwnd > MAX_CWND or k > SEQ_LIMIT
                    or age >= 1 << 31 or age > cfg.freshness * 1000  # type: ignore[attr-defined]
                    or not self.keys.accepts(epoch, now)
                    or self.nonces.range_summary(cid, base, left, right) != summary):
                return self.receive_slow(segment, client_ip, now)
            uend = REQUEST_HEAD_LEN + 14 + ulen
            if uend >= n:
                return self.receive_slow(segment, client_ip, now)
            nr = p[uend]
            rend = uend + 1 + 8 * nr
            if nr > 64 or rend > n:
                return self.receive_slow(segment, client_ip, now)
            if nr == 1:  # (the common case)
                start, length = _RANGE1(p, uend + 1)
                if start + length > _U32 + 1:
                    return self.receive_slow(segment, client_ip, now)
                ranges = [(start, start + length)]
            else:
                ranges = []
                for start, length in _RANGES(p[uend + 1:rend]) if nr else ():
                    if start + length > _U32 + 1:
                        return self.receive_slow(segment, client_ip, now)
                    ranges.append((start, start + length))
            cport = seg.src_port
            pseudo = _PSEUDO(client_ip, self.service_ip, cport, self.service_port)
            covered = pseudo + p[1:7] + p[19:60]
            mac = f[17]
            sc = self.state_cache
            if sc is not None and covered + mac in sc:
                sc.lookup(covered + mac)  # (refreshes it and counts the hit, as admission's hook)
            else:
                h = self.keys.mac_hasher(epoch).copy()
                h.update(covered)
                if not compare_digest(h.digest(), mac):
                    return self.receive_slow(segment, client_ip, now)
                if sc is not None:
                    sc.lookup(covered + mac)  # the miss admission's hook counts
                    sc.add(covered + mac)
        except Exception:
            return self.receive_slow(segment, client_ip, now)
        # committed: from here on this request is this path's
        return self._answer(f, p, client_ip, cport, pseudo, ranges, uend, rend, age, now)

    def _answer(self, f: tuple, p: bytes, cip: bytes, cport: int, pseudo: bytes,
                ranges: list[tuple[int, int]], uend: int, rend: int, age: int,
                now: float) -> list[bytes]:
        """The replay stage, the handler and the seal of an admitted-so-far request (`f`: its
        fields as `REQUEST_HEAD` unpacks them, `p` its payload)."""
        counters = self.counters
        counters["rx"] += 1
        try:
            counters["nonce_ok"] += 1
            table = self._replay  # its `seen` hook, inlined
            refused = table.refused
            if not table.check_and_add(_KEY(f[17])[0], now, (int(now * 1000) - age) / 1000):
                why = "replay_horizon" if table.refused > refused else "replay"
                return self._drop(why, now, event_kind(why))
            k = f[2]
            base, c0, ss = f[14], f[12], f[13]  # (k >= base, 1 <= c0 <= ss: checked in receive)
            prev, cur = cwnd(k - 1, base, c0, ss), cwnd(k, base, c0, ss)
            first = k + prev
            count = cur - prev + 1
            nranges = len(ranges)
            mss = self.cfg.mss  # type: ignore[attr-defined]
            slots = [OutSlot(first + i, mss, ranges[i] if i < nranges else None)
                     for i in range(count)]
            ucont = p[REQUEST_HEAD_LEN + 14:uend]
            msk = Minisocket("REQUEST", (cip, cport), f[15], p[rend:], ucont, ranges, slots,
                             now)
            self.handler(msk)  # type: ignore[operator]
            if msk.dropped:
                return self._drop(Reason.APP_DROP, now)
            return self._seal_fast(f, slots, first, count, cip, cport, pseudo, ucont, age, now)
        except Exception as e:  # a handler bug must not take the server down
            counters["handler_error"] += 1
            self.last_error = traceback.format_exc()  # kept for `trickles serve` to report
            return self._drop("internal." + type(e).__name__, now)

    def _seal_fast(self, f: tuple, slots: list[OutSlot], first: int, count: int, cip: bytes,
                   cport: int, pseudo: bytes, ucont: bytes, age: int,
                   now: float) -> list[bytes]:
        """`ServerEngine._seal` and `_segment` for the normal step's slots."""
        (_, _, k, _, cs, parent, cts, _, mrtt, _, _, _, start_cwnd, ssthresh, base, cid, _, _,
         _) = f
        keys = self.keys
        sealing = keys.sealing_epoch(now)
        keyed = keys.mac_hasher(sealing)
        ts_now = int(now * 1000) & _U32
        mrtt = (age * 8 if mrtt == 0 else mrtt - (mrtt >> 3) + age) & _U32
        packet_nonce = self.nonces.packet_nonce
        sip, sport = self.service_ip, self.service_port
        echo = ucont if self.cfg.echo_ucont else b""  # type: ignore[attr-defined]
        counters = self.counters
        out = []
        for i in range(count):
            pkt = first + i
            body = pack_body(FULL1, pkt, i == 0, cs, parent, cts, ts_now, mrtt, NORMAL, 0, 0,
                             start_cwnd, ssthresh, base, cid, sealing)
            h = keyed.copy()
            h.update(pseudo + body[0:6] + body[18:59])
            cbytes = body + h.digest()
            slot = slots[i]
            u = slot.ucont
            if u is None or u == ucont:  # the client holds it already (it sent it)
                u = echo
            flags = ACK
            chunks = b""
            if slot.data or slot.fin:
                chunks = encode_data_chunk(slot.byte_num, slot.data, slot.fin)
                if slot.fin:
                    flags = ACK | FIN
            if slot.skips:
                chunks += b"".join(_SKIP(0x30, 11, s, m) for s, m in slot.skips)
            if slot.finhint is not None:
                chunks += _FINHINT(0x40, 7, slot.finhint)
            if len(u) > 0xFFFF:
                raise ValueError("user continuation longer than 65535 bytes")
            payload = b"".join((_RESP_HDR(packet_nonce(cid, base, pkt), count, i, len(u)),
                                cbytes, u, chunks))
            out.append(encode_segment(sip, cip, sport, cport, pkt, k, flags, payload,
                                      RESPONSE_HEADER_LEN + 75 + len(u)))
            counters[CONTINUE if i == 0 else SPLIT] += 1
        counters["tx"] += count
        return out


__all__ = ["FastRequests"]
