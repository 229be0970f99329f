"""The client's settings (core.client.ClientEngine), checked when made."""

from __future__ import annotations

from dataclasses import dataclass

from trickles_kit.core.params import DEFAULT_PARAMS, ProtocolParams, resolve


@dataclass(slots=True)
class ClientConfig:
    # mss, slowstart_bucket, max_gap: the protocol parameters the server must share
    # (core.params), read from `params`; given here (the old keywords) they override it
    mss: int | None = None
    max_sacks: int = 8
    dupthresh: int = 3
    initial_rto: float = 1.0
    min_rto: float = 0.2  # Linux's floor; the original Trickles used 1 s
    max_rto: float = 60.0
    max_timeouts: int = 15  # consecutive unproductive timeouts before giving up
    slowstart_bucket: float | None = None  # s: the server's SLOWSTART age bucket unit
    max_gap: int | None = None
    syn_data: bool = True  # send the request bytes (and a padded SYN) in the SYN
    # delta encoding (docs/protocol.md §14.3), used only if the server agrees: delayed-ack
    # pairs (FULL2 + PAIR), and HASHED answers / COMPACT requests
    paired: bool = False
    hashed: bool = False
    # empty requests in a row once every byte is asked for (tail probes): their packets keep
    # the ack clock running past the last data packets, so a lost one is found by FACK; every
    # further continuation is held until a loss gives it bytes to ask (docs/protocol.md §8.5)
    tail_probes: int = 2
    fin_tries: int = 4  # FIN requests before the client calls the connection closed anyway
    # flow control: response bytes held (unread by the application, or out of order) plus
    # bytes asked and not yet arrived never exceed this; nothing outside it is asked for or
    # kept, so a server (honest or not) cannot make the client hold more (docs §8.7)
    window: int = 8 << 20
    # request-path loss (docs/protocol.md §8.8), off by default: a lost request then leaves a
    # gap that counts as a loss, as in the paper. On, a NORMAL request none of whose packets
    # came is sent again (the very same datagrams) up to `request_repeats` times before its
    # packets are called lost, and every NORMAL request goes out in as many copies (at most
    # `request_copies`) as the request loss it measures calls for. The server answers one copy
    # of a continuation only (its replay table): copies of an answered request get nothing
    uplink_repair: bool = False
    request_repeats: int = 2
    request_copies: int = 3
    params: ProtocolParams = DEFAULT_PARAMS  # what the server must share (core.params)

    def __post_init__(self) -> None:
        resolve(self)
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        if not 1 <= self.max_sacks <= 64 or self.dupthresh < 1:
            raise ValueError("max_sacks must be in 1..64 and dupthresh >= 1")
        if not 0 <= self.tail_probes <= 64 or not 1 <= self.fin_tries <= 16:
            raise ValueError("tail_probes must be in 0..64 and fin_tries in 1..16")
        if not 2 * self.mss <= self.window <= 1 << 31:
            raise ValueError("window must be in [2 * mss, 2^31] bytes")
        if not 1 <= self.request_repeats <= 8 or not 1 <= self.request_copies <= 4:
            raise ValueError("request_repeats must be in 1..8 and request_copies in 1..4")

    @property
    def max_islands(self) -> int:
        """Out-of-order runs the client keeps: one per packet of a full window, plus slack."""
        return self.window // max(self.mss, 1) + 64


__all__ = ["ClientConfig"]
