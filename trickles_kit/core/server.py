"""The stateless server engine: (keys, datagram, now) -> datagrams, plus one bounded replay history.

No object outlives a request. Each valid request becomes one `Minisocket` handed to the
application's handler, which fills the output slots the transport allows; when it returns, the
minisocket is gone. Everything wrong with an input is an event and a counter, never an exception.
"""

from __future__ import annotations

import hashlib
import struct
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from hmac import compare_digest
from typing import Any, NamedTuple

from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.admission import Reason, View, admit, frame_reason
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.minisocket import Minisocket, OutSlot
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.params import DEFAULT_PARAMS, ProtocolParams, resolve
from trickles_kit.core.replay import ReplayHistory
from trickles_kit.core.seal import mac_with, pseudo_header
from trickles_kit.core.server_fast import FastPath
from trickles_kit.core.statecache import StateCache, default_entries
from trickles_kit.wire.continuation import (
    FULL1,
    FULL2,
    MINIMAL,
    NORMAL,
    PAIR,
    Continuation,
    pack_body,
    pack_minimal,
)
from trickles_kit.wire.delta import FLAG_HASHED, FLAG_PAIRED, pack_hashed, unpack_request
from trickles_kit.wire.errors import DecodeError
from trickles_kit.wire.messages import (
    REQ_FIN,
    REQ_NORMAL,
    REQ_SLOWSTART,
    REQ_SYN,
    RESPONSE_HEADER_LEN,
    Request,
    decode_request,
    encode_data_chunk,
    encode_response,
)
from trickles_kit.wire.segment import ACK, FIN, SYN, decode_segment, encode_segment

_U32 = 0xFFFFFFFF
_FINHINT = struct.Struct("!BHI")
_SKIP = struct.Struct("!BHII")
INITIAL_SSTHRESH = 0x3FFF


@dataclass(slots=True)
class ServerConfig:
    # mss, max_gap, slowstart_bucket: the shared protocol parameters (core.params), read from
    # `params`; given here (the old keywords) they override it. None = take params' value
    mss: int | None = None  # data bytes per packet
    initial_cwnd: int = 3
    initial_ssthresh: int = INITIAL_SSTHRESH
    max_sacks: int = 8
    max_gap: int | None = None
    nonce_bits: int = 32
    freshness: float = 120.0  # seconds; older continuations are stale
    future_skew: float = 5.0  # seconds a continuation may be ahead of our clock (replicas)
    replay_entries: int = 1 << 20
    epoch_seconds: float = 60.0
    max_seals: int = 1 << 23  # ignored: key epochs follow the clock only (docs §6.2)
    amplification: int = 3  # bytes out per byte in before an address is validated
    delta: bool = False  # delta-encoded continuations on request (docs/protocol.md §14.3)
    # resend the user continuation the request carried in every answer (the old wire); off, an
    # answer carries a user continuation only when it differs: the client keeps the one it has
    echo_ucont: bool = False
    # s: one SLOWSTART per continuation per age bucket [b * 2^i, b * 2^(i+1))
    slowstart_bucket: float | None = None
    slowstart_min_age: float = 0.1  # s; half the clients' minimum RTO (0.2 s)
    # entries of the verified-continuation cache (core.statecache); 0 = off, the default
    # unless the TRICKLES_STATE_CACHE environment variable says otherwise
    state_cache: int = field(default_factory=default_entries)
    params: ProtocolParams = DEFAULT_PARAMS  # what the client must share (core.params)

    def __post_init__(self) -> None:
        resolve(self)  # type: ignore[arg-type]  # (it settles the None fields to ints)
        if not 1 <= self.initial_cwnd <= 64:
            raise ValueError("initial_cwnd must be in 1..64")
        if self.initial_ssthresh < self.initial_cwnd:
            raise ValueError("initial_ssthresh must be >= initial_cwnd")
        if not 1 <= self.max_sacks <= 64:
            raise ValueError("max_sacks must be in 1..64")


Handler = Callable[[Minisocket], None]


class _Reply(NamedTuple):
    """Where one request's answers go and what they echo: the output context of `_segment`
    (a tuple, built with ``tuple.__new__``: it is made once per request)."""

    cip: bytes
    cport: int
    ucont: bytes  # the user continuation the request carried (echoed with echo_ucont)
    ack: int
    flags: int
    siblings: int  # packets answering the request


_new = tuple.__new__


class _Held:
    """An engine attribute that its fast path holds: reads and writes go to the FastPath field
    of the same name (`ServerEngine._fast`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, eng: ServerEngine | None, owner: type | None = None) -> Any:
        return self if eng is None else getattr(eng._fast, self.name)

    def __set__(self, eng: ServerEngine, value: Any) -> None:
        setattr(eng._fast, self.name, value)


class ServerEngine:
    """Answers Trickles requests statelessly. `receive` returns the segments to send back: the
    fast path (core.server_fast) for the common request, `receive_slow` for everything else."""

    def __init__(
        self,
        secret: bytes,
        handler: Handler,
        service_ip: bytes,
        service_port: int,
        config: ServerConfig | None = None,
        on_event: ev.EventSink | None = None,
    ) -> None:
        if len(service_ip) != 4:
            raise ValueError("service_ip must be a packed IPv4 address (4 bytes)")
        self.cfg = config or ServerConfig()
        self.keys = KeyRing(secret, self.cfg.epoch_seconds, self.cfg.max_seals)
        self.nonces = NonceGen(self.keys.nonce_key, self.cfg.nonce_bits)
        self.service_ip = service_ip
        self.service_port = service_port
        self.counters: Counter[str] = Counter()
        self.last_error: str | None = None
        # the fast path holds the parts below (the properties further down read and set them)
        self._fast = FastPath(self)
        self.replay = ReplayHistory(self.cfg.freshness, self.cfg.replay_entries)
        self.state_cache = StateCache(self.cfg.state_cache) if self.cfg.state_cache > 0 else None
        self.handler = handler
        self.on_event = on_event
        self.fast_path = True  # False: every request takes `receive_slow` (tests compare them)
        # the fast path's own method, bound on the instance: one call less per request (and a
        # wrapper assigned over it, as tools and tests do, still replaces it)
        self.receive = self._fast.receive  # type: ignore[method-assign]

    def receive(self, segment: bytes, client_ip: bytes, now: float) -> list[bytes]:
        """Process one TCP-format segment from `client_ip`; never raises on bad input (the
        fast path, `core.server_fast.FastPath.receive`)."""
        return self._fast.receive(segment, client_ip, now)

    def _hooks(self) -> View:
        """What admission needs beyond the request: this server's keys, nonces and history."""
        return View(self._epoch_ok, self._mac_ok, self.nonces.range_summary, self._replay.seen)

    # The parts a test, a tool or an operator may swap while the engine runs live in the fast
    # path's own fields (read there per request without a look-up on the engine): `_Held`
    # names them on the engine; the replay table's setter also rebuilds admission's hooks.
    # `on_event`: with a sink attached every request takes the general path; `fast_path`
    # False: every request takes `receive_slow` (tests compare the two paths).
    handler: Handler = _Held()  # type: ignore[assignment]
    on_event: ev.EventSink | None = _Held()  # type: ignore[assignment]
    state_cache: StateCache | None = _Held()  # type: ignore[assignment]
    fast_path: bool = _Held()  # type: ignore[assignment]

    @property
    def replay(self) -> ReplayHistory:
        """The replay history (soft state: a test or an operator may swap in a fresh one)."""
        return self._replay

    @replay.setter
    def replay(self, table: ReplayHistory) -> None:
        self._replay = self._fast.replay = table
        self._view = self._hooks()

    # ------------------------------------------------------------------ admission hooks
    def _epoch_ok(self, epoch: int, now: float) -> bool:
        return self.keys.accepts(epoch, now)  # looked up per call: instrumentable, swappable

    def _mac_ok(self, cont: Continuation, token: tuple[bytes, bytes]) -> bool:
        pseudo, raw = token
        sc = self.state_cache
        if sc is None:
            return compare_digest(mac_with(self.keys.mac_hasher(cont.key_epoch), pseudo, raw),
                                  raw[59:])
        # a hit: these exact MAC-covered bytes (and MAC) verified before
        ckey = pseudo + raw[0:6] + raw[18:]
        if sc.lookup(ckey):
            return True
        if not compare_digest(mac_with(self.keys.mac_hasher(cont.key_epoch), pseudo, raw),
                              raw[59:]):
            return False
        sc.add(ckey)
        return True

    # ------------------------------------------------------------------ helpers
    def _event(self, kind: str, now: float, cont: Continuation | None = None, **kw) -> None:
        if self.on_event is None:
            return
        if cont is not None:
            kw = {"conn_id": cont.conn_id, "ack": cont.seq, "ssthresh": cont.ssthresh,
                  "tcp_base": cont.tcp_base, "state": cont.state} | kw
        self.on_event(ev.Event.make(kind, now, "server", **kw))

    def note_drop(self, reason: str, now: float) -> None:
        """Count a datagram dropped before it reached `receive` (a runt, another port, a loss
        injected on purpose, a shed SYN): the loops call this so that every drop, wherever it
        happens, is a counter `drop.<reason>` and a `drop` event like the engine's own."""
        self._drop(reason, now)

    def _drop(self, reason: str, now: float, kind: str = ev.DROP,
              cont: Continuation | None = None) -> list[bytes]:
        reason = str(reason)  # a `Reason` is its string: counters and events hold plain text
        self.counters["drop"] += 1
        self.counters["drop." + reason] += 1
        self._event(kind, now, cont, reason=reason)
        return []

    # ------------------------------------------------------------------ entry point
    def receive_slow(self, segment: bytes, client_ip: bytes, now: float) -> list[bytes]:
        """Process one TCP-format segment from `client_ip`; never raises on bad input. The
        general path: any request, verdicts from `core.admission.admit`."""
        self.counters["rx"] += 1
        try:
            seg = decode_segment(segment, client_ip, self.service_ip)
            if seg.dst_port != self.service_port:
                return self._drop(Reason.PORT, now)
            payload = seg.payload
            dflags = 0
            if payload and payload[0] & 0xC0:  # delta-encoding flags (wire.delta)
                dflags, payload = unpack_request(payload, seg.ack, self.keys.current(now),
                                                 self.cfg.delta)
            req = decode_request(payload)
        except DecodeError as e:
            return self._drop("decode." + e.reason, now)
        except Exception as e:  # a decoder bug must not take the server down either
            return self._drop("internal." + type(e).__name__, now)
        try:
            if seg.flags & SYN or req.type == REQ_SYN:  # a handshake, if the frame agrees
                why = frame_reason(bool(seg.flags & SYN), req.type)
                if why is not None:
                    return self._drop(why, now)
                return self._syn(req, client_ip, seg.src_port, seg.seq, len(segment), now,
                                 dflags)
            return self._request(req, client_ip, seg.src_port, seg.seq, now, dflags)
        except Exception as e:  # a handler bug must not take the server down
            self.counters["handler_error"] += 1
            self.last_error = traceback.format_exc()  # kept for `trickles serve` to report
            return self._drop("internal." + type(e).__name__, now)

    # ------------------------------------------------------------------ SYN
    def _syn(self, req: Request, cip: bytes, cport: int, isn: int, in_len: int,
             now: float, dflags: int = 0) -> list[bytes]:
        cfg = self.cfg
        self.counters["syn"] += 1
        bucket = int(now // 8)
        conn_id = int.from_bytes(
            hashlib.blake2s(
                cip + struct.pack("!HIQ", cport, isn, bucket), key=self.keys.conn_key,
                digest_size=8,
            ).digest(), "big")
        base = 1
        # the client-owned values are the first 12 bytes of the SYN's ucont field (zeros when
        # shorter): echoed like any request's, so the client can tell its own handshake answer
        # from a forged one (docs §9.2); nothing is stored
        owned = req.ucont[:12].ljust(12, b"\0")
        cs, parent, cts = struct.unpack("!III", owned)
        cont = Continuation(
            FULL2 if dflags & FLAG_PAIRED else FULL1, base - 1, 1, cs, parent, cts,
            int(now * 1000) & _U32, 0, NORMAL, 0, 0,
            cfg.initial_cwnd, cfg.initial_ssthresh, base, conn_id, self.keys.sealing_epoch(now),
        )
        mss: int = cfg.mss  # type: ignore[assignment]  # (settled by resolve)
        slot = OutSlot(base - 1, mss, req.ranges[0] if req.ranges else None)
        # a SYN's ucont field is padding only (anti-amplification), never application state
        msk = Minisocket("SYN", (cip, cport), conn_id, req.app, b"", req.ranges, [slot], now)
        self.handler(msk)
        self._event(ev.SYN, now, cont, pkt=base - 1, cwnd=cfg.initial_cwnd)
        if msk.dropped:
            return self._drop(Reason.APP_DROP, now, cont=cont)
        pseudo = pseudo_header(cip, cport, self.service_ip, self.service_port)
        reply = _new(_Reply, (cip, cport, b"", 0, SYN | ACK, 1))
        out = self._seal_one(cont, pseudo, reply, slot)
        limit = cfg.amplification * in_len
        if len(out) > limit and (slot.data or slot.finhint is not None or slot.skips):
            # anti-amplification: an unvalidated address gets the handshake but not the data
            self.counters["amplification_trim"] += 1
            self._event(ev.DROP, now, cont, reason="amplification_trim", pkt=base - 1,
                        bytes=len(slot.data), limit=limit)
            slot.data, slot.fin, slot.finhint, slot.skips = b"", False, None, []
            out = self._seal_one(cont, pseudo, reply, slot)
        if len(out) > limit:  # the client must pad its SYN; we never amplify more than 3x
            return self._drop(Reason.AMPLIFICATION, now, cont=cont)
        self.counters["tx"] += 1
        return [out]

    # ------------------------------------------------------------------ requests
    def _request(self, req: Request, cip: bytes, cport: int, rseq: int,
                 now: float, dflags: int = 0) -> list[bytes]:
        """admit -> plan -> seal: `core.admission` decides, this method only acts on it."""
        cont = req.cont
        assert cont is not None  # decode_request guarantees a FULL continuation
        pseudo = pseudo_header(cip, cport, self.service_ip, self.service_port)
        v = admit(req.type, cont, req.sacks, now, self.cfg,  # type: ignore[arg-type]
                  self._view, (pseudo, req.cont_raw))
        reason, age, blocks, plan, _ = v
        counters = self.counters
        if blocks is not None and req.sacks:
            counters["nonce_ok"] += 1
            if self.on_event is not None:
                self._event(ev.NONCE_OK, now, cont, blocks=[list(b) for b in blocks])
        if reason is not None:
            if reason is Reason.NONCE:
                counters["nonce_fail"] += 1
            return self._drop(reason, now, v.kind, cont)
        if req.type == REQ_FIN:
            return self._fin(req, cont, cip, cport, now)
        assert plan is not None  # admitted non-FIN requests carry their plan
        if not plan.slots:
            counters["terminate"] += 1
            self._event(ev.TERMINATE, now, cont, cwnd=plan.cwnd, first_loss=plan.first_loss)
            return []
        ranges = req.ranges
        nr = len(ranges)
        mss: int = self.cfg.mss  # type: ignore[assignment]  # (settled by resolve)
        pslots = plan.slots
        slots = [OutSlot(s.pkt, mss, ranges[i] if i < nr else None) for i, s in enumerate(pslots)]
        msk = Minisocket("REQUEST", (cip, cport), cont.conn_id, req.app, req.ucont, ranges, slots,
                         now)
        self.handler(msk)
        if msk.dropped:
            return self._drop(Reason.APP_DROP, now, cont=cont)
        if plan.recovery_start:
            counters["recovery"] += 1
            self._event(ev.RECOVERY_START, now, cont, cwnd=plan.cwnd, first_loss=plan.first_loss)
        if plan.verdict == "slowstart":
            counters["slowstart"] += 1
            self._event(ev.SLOWSTART, now, cont, cwnd=plan.cwnd, new_ssthresh=pslots[0].ssthresh)
        reply = _new(_Reply, (cip, cport, req.ucont, cont.seq, ACK, len(pslots)))
        return self._seal(cont, plan, slots, age, req.type, pseudo, reply, now, dflags)

    def _seal(self, cont: Continuation, plan: pl.Plan, slots: list[OutSlot], age: int,
              rtype: int, pseudo: bytes, reply: _Reply, now: float,
              dflags: int) -> list[bytes]:
        """One sealed segment per planned slot, each continuation under the current epoch."""
        keys = self.keys
        epoch = keys.sealing_epoch(now)
        keyed = keys.mac_hasher(epoch)
        ts = int(now * 1000) & _U32
        # server-side RTT estimate (x8, ms): `core.delta.next_mrtt`, which the client replays,
        # inlined on this per-request path
        sample = age if age < 1 << 31 else 0
        mrtt = cont.mrtt
        mrtt = (sample * 8 if rtype == REQ_SLOWSTART or mrtt == 0
                else mrtt - (mrtt >> 3) + sample) & _U32
        cs, parent, cts, cid = cont.client_state, cont.parent, cont.client_timestamp, cont.conn_id
        counters = self.counters
        on_event = self.on_event
        packet_nonce = self.nonces.packet_nonce
        pslots = plan.slots
        n = len(pslots)
        out = []
        for i in range(n):
            s = pslots[i]
            pkt = s.pkt
            if s.ctype == MINIMAL or s.ctype == PAIR:
                cbytes = pack_minimal(s.ctype, pkt, i == 0, cs, parent, cts)
            else:
                body = pack_body(s.ctype, pkt, i == 0, cs, parent, cts, ts, mrtt, s.state,
                                 s.first_loss, s.first_bootstrap_seq, s.start_cwnd, s.ssthresh,
                                 s.tcp_base, cid, epoch)
                cbytes = body + mac_with(keyed, pseudo, body)
                if dflags & FLAG_HASHED:  # the client rebuilds the rest from its prediction
                    cbytes = pack_hashed(parent, ts, epoch, cbytes[59:])
            # a retransmission (MINIMAL) carries nonce 0: it can never be claimed in a proof,
            # so a client cannot hide the loss it was sent to repair (its nonce stays secret);
            # PAIR and HASHED packets are regular ones: real nonces, claimable
            nonce = packet_nonce(cid, s.tcp_base, pkt) if cbytes[0] != MINIMAL else 0
            out.append(self._segment(reply, pkt, cbytes, nonce, slots[i], i))
            counters[s.kind] += 1
            if on_event is not None:
                on_event(ev.Event(s.kind, now, "server", conn_id=cid, pkt=pkt, ack=cont.seq,
                                  cwnd=plan.cwnd, ssthresh=s.ssthresh, tcp_base=s.tcp_base,
                                  state=s.state))
        counters["tx"] += n
        return out

    def _fin(self, req: Request, cont: Continuation, cip: bytes, cport: int,
             now: float) -> list[bytes]:
        self.counters["fin"] += 1
        msk = Minisocket("FIN", (cip, cport), cont.conn_id, req.app, req.ucont, [], [], now)
        self.handler(msk)
        self._event(ev.FIN, now, cont, pkt=cont.seq)
        c = Continuation(MINIMAL, cont.seq, 1, cont.client_state, cont.parent,
                         cont.client_timestamp)
        reply = _new(_Reply, (cip, cport, b"", cont.seq, FIN | ACK, 1))  # echoes no ucont
        self.counters["tx"] += 1
        return [self._segment(reply, cont.seq, c.encode(), 0, OutSlot(cont.seq, 0, None), 0)]

    # ------------------------------------------------------------------ output
    def _seal_one(self, c: Continuation, pseudo: bytes, reply: _Reply, slot: OutSlot) -> bytes:
        """Seal a FULL `c` (the handshake's) and build its segment — the slow, general path."""
        body = c.body()
        cbytes = body + mac_with(self.keys.mac_hasher(c.key_epoch), pseudo, body)
        nonce = self.nonces.packet_nonce(c.conn_id, c.tcp_base, c.seq)
        return self._segment(reply, c.seq, cbytes, nonce, slot, 0)

    def _segment(self, reply: _Reply, pkt: int, cbytes: bytes, nonce: int, slot: OutSlot,
                 position: int) -> bytes:
        """The segment answering `reply`'s request: packet `pkt` carrying `cbytes` and what
        the handler put in `slot`."""
        cip, cport, req_ucont, ack, flags, siblings = reply
        ucont = slot.ucont
        if ucont is None or ucont == req_ucont:  # the client holds it already (it sent it)
            ucont = req_ucont if self.cfg.echo_ucont else b""
        chunks = b""
        if slot.data or slot.fin:
            chunks = encode_data_chunk(slot.byte_num, slot.data, slot.fin)
        if slot.skips:
            chunks += b"".join(_SKIP.pack(0x30, 11, s, n) for s, n in slot.skips)
        if slot.finhint is not None:
            chunks += _FINHINT.pack(0x40, 7, slot.finhint)
        if slot.fin:
            flags |= FIN
        payload = encode_response(nonce, siblings, position, cbytes, ucont, chunks)
        return encode_segment(
            self.service_ip, cip, self.service_port, cport, pkt, ack, flags, payload,
            RESPONSE_HEADER_LEN + len(cbytes) + len(ucont),
        )


__all__ = ["Minisocket", "OutSlot", "ServerConfig", "ServerEngine", "REQ_NORMAL"]
