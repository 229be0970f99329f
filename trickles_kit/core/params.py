"""The protocol parameters both ends must agree on, in one frozen value.

Trickles negotiates none of these on the wire, so a client and a server that differ still talk
but go wrong quietly: a server whose `mss` is smaller than the client's truncates each range the
client asks for (the client then sees a gap and calls it a loss); a different `max_gap` makes the
server refuse SACK blocks the client thinks well-formed (or the client refuse answers the server
thinks fine); a different SLOWSTART age-bucket unit makes the client's spare-continuation timing
disagree with the server's replay key, so its SLOWSTART requests are dropped as replays. The
server and the client configs therefore take one `ProtocolParams` instead of three copies each.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from trickles_kit.core import plan as pl


@dataclass(frozen=True, slots=True)
class ProtocolParams:
    mss: int = 1448  # data bytes per packet (the server's budget, the client's range size)
    max_gap: int = pl.MAX_GAP  # packets a SACK block may skip (core.plan)
    # s: one SLOWSTART per continuation per age bucket [b * 2^i, b * 2^(i+1)) (core.replay)
    slowstart_bucket: float = 0.1

    def __post_init__(self) -> None:
        if not 64 <= self.mss <= 65000:
            raise ValueError("mss must be in 64..65000")
        if self.max_gap < 0:
            raise ValueError("max_gap must be >= 0")
        if not self.slowstart_bucket > 0:
            raise ValueError("slowstart_bucket must be > 0 seconds")


DEFAULT_PARAMS = ProtocolParams()
NAMES = tuple(f.name for f in fields(ProtocolParams))


class HasParams(Protocol):
    """A config that mirrors a ProtocolParams (core.server.ServerConfig, ClientConfig)."""

    params: ProtocolParams
    mss: int
    max_gap: int
    slowstart_bucket: float


def resolve(cfg: HasParams) -> None:
    """Settle `cfg.params` and its flat mirror (`cfg.mss`, …) in a config's __post_init__.

    Keywords given the old way (`ServerConfig(mss=536)`; None = not given) override `params`;
    the flat fields then hold the params' values, as plain attributes so that the per-request
    paths read them at no extra cost. Treat them as read-only: change `params` (with
    `dataclasses.replace` on the config) instead."""
    given: dict[str, Any] = {n: getattr(cfg, n) for n in NAMES if getattr(cfg, n) is not None}
    params = replace(cfg.params, **given) if given else cfg.params
    cfg.params = params
    for n in NAMES:
        setattr(cfg, n, getattr(params, n))


def live(cfg: HasParams) -> ProtocolParams:
    """The parameters a config acts on now (its flat fields, which the engines read)."""
    return ProtocolParams(cfg.mss, cfg.max_gap, cfg.slowstart_bucket)


def require_same(server: HasParams, client: HasParams) -> None:
    """Refuse a server and a client, joined in one process, whose parameters differ: the
    transfer would not fail but silently lose or refuse packets (see the module docstring)."""
    s, c = live(server), live(client)
    if s != c:
        diff = ", ".join(f"{n}: server {getattr(s, n)!r} != client {getattr(c, n)!r}"
                         for n in NAMES if getattr(s, n) != getattr(c, n))
        raise ValueError(f"server and client protocol parameters differ ({diff}); give both "
                         f"configs the same ProtocolParams (params=...)")


__all__ = ["DEFAULT_PARAMS", "ProtocolParams", "require_same", "resolve"]
