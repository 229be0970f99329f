"""The bytes of the client's requests: segments addressed to the server, the client-owned
continuation fields (echo tokens, clientTimestamp) and the delta-encoding flags.

The echo tokens (docs/protocol.md §6.1, §15) are 64 unpredictable bits per timeout epoch that
every answer must carry back in clientState|parent: an off-path host cannot guess them, so the
client recognises answers to its own requests and nothing else.
"""

from __future__ import annotations

import hashlib
from typing import Final

from trickles_kit.core import delta as dl
from trickles_kit.core import plan as pl
from trickles_kit.wire.delta import FLAG_HASHED, FLAG_PAIRED, compact_request, flag_request
from trickles_kit.wire.messages import REQ_SLOWSTART, REQ_SYN, Request
from trickles_kit.wire.segment import SYN, encode_segment

_U32 = 0xFFFFFFFF


class RequestBuilder:
    ECHO_EPOCHS: Final = 16  # timeout epochs whose late packets are still recognised (data only)

    __slots__ = ("local_ip", "local_port", "server_ip", "server_port", "seq", "paired",
                 "hashed", "preds", "compact_ok", "_key", "tokens", "_last")

    def __init__(self, local_ip: bytes, local_port: int, server_ip: bytes, server_port: int,
                 isn: int, echo_key: bytes, paired: bool, hashed: bool) -> None:
        self.local_ip, self.local_port = local_ip, local_port
        self.server_ip, self.server_port = server_ip, server_port
        self.seq = isn  # the TCP sequence number of the last segment sent
        self.paired, self.hashed = paired, hashed
        # HASHED answers: what each request will produce, to rebuild their continuations
        self.preds = dl.Predictions() if hashed else None
        self.compact_ok = False  # the server sent a HASHED answer: it expands COMPACT ones
        self._key = echo_key
        # wire token -> epoch, for the last ECHO_EPOCHS epochs: the whole 64 bits (clientState
        # and parent), or with HASHED answers, which echo only `parent`, its high half (the
        # engine's `_owned` sends it in clientState, `_echo_epoch` looks answers up here)
        self.tokens: dict[int, int] = {}
        self._last = (-1, 0)  # (epoch, token): every request of an epoch asks for the same
        self.add_token(0)

    # ------------------------------------------------------------------ echo tokens
    def token(self, epoch: int) -> int:
        last = self._last
        if last[0] == epoch:
            return last[1]
        d = hashlib.blake2b(epoch.to_bytes(4, "big"), key=self._key, digest_size=8)
        tok = int.from_bytes(d.digest(), "big")
        self._last = (epoch, tok)
        return tok

    def add_token(self, epoch: int) -> None:
        tok = self.token(epoch)
        self.tokens[tok >> 32 if self.hashed else tok] = epoch
        old = epoch - self.ECHO_EPOCHS
        if old >= 0:
            t = self.token(old)
            self.tokens.pop(t >> 32 if self.hashed else t, None)

    # ------------------------------------------------------------------ bytes
    def segment(self, payload: bytes, ack: int, flags: int) -> bytes:
        self.seq = (self.seq + 1) & _U32
        return encode_segment(
            self.local_ip, self.server_ip, self.local_port, self.server_port, self.seq,
            ack, flags, payload, 0, 0xFFFF,
        )

    def syn(self, owned: tuple[int, int, int], ranges: list[tuple[int, int]], app: bytes,
            mss: int) -> bytes:
        """The SYN segment. Its ucont field starts with the client-owned values the handshake
        answer echoes (docs §9.2), then zeros: padding so the answer stays within 3x the SYN
        (a data answer is at most mss + 300 bytes, a bare handshake answer under 360)."""
        head = b"".join(v.to_bytes(4, "big") for v in owned)
        req = Request(REQ_SYN, None, [], head, ranges, app)
        payload = req.encode()
        answer = mss + 300 if ranges else 360
        need = answer // 3 + 1 - (len(payload) + 28)
        if need > 0:
            req.ucont = head + b"\0" * need
            payload = req.encode()
        dflags = (FLAG_PAIRED if self.paired else 0) | (FLAG_HASHED if self.hashed else 0)
        if dflags:
            payload = flag_request(payload, dflags)
        return self.segment(payload, 0, SYN)

    def payload(self, req: Request, rtype: int, plan: pl.Plan | None) -> bytes:
        """A request's payload; with HASHED answers, flagged (or COMPACT) and its plan noted."""
        payload = req.encode()
        if self.preds is not None:
            c = req.cont
            assert c is not None
            if plan is not None:
                self.preds.record(c, plan, rtype == REQ_SLOWSTART)
            payload = (compact_request(payload, c, FLAG_HASHED) if self.compact_ok
                       else flag_request(payload, FLAG_HASHED))
        return payload


__all__ = ["RequestBuilder"]
