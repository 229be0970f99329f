"""What one transfer did, simulated or over a real wire: one report type for both.

`apps.sim.simulate_transfer` and `apps.fetch.fetch` return a `TransferReport`, so a figure means
the same thing wherever it comes from. The protocol figures are the client's: what its own
requests made the server do, as the client engine planned each request
(`ClientEngine.counters["pred.*"]`) — the only view a real client has. A simulated run also
carries the server's counters (`server["retransmit"]`, ...: what the server really sent; they
differ from the client's when requests are lost) and the links'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# the scalar figures of every transfer, in the order reports print them
_FIGURES = ("ok", "bytes", "sha256_sent", "sha256_received", "seconds", "goodput_bps",
            "retransmissions", "splits", "terminations", "recoveries", "timeouts", "final_cwnd",
            "phase")


@dataclass
class TransferReport:
    """One transfer. Optional fields are None where the source cannot know them: `sha256_sent`
    (the bytes the server sent: known in the simulator), `url`/`status`/`transport` (a real
    fetch), `server`/`links`/`wall_seconds`/`sim_events` (the simulator)."""

    ok: bool  # the whole body arrived, byte-exact where the expected bytes are known
    bytes: int  # application bytes received (a fetch: the HTTP body)
    sha256_received: str  # of those bytes
    seconds: float  # connect to done: virtual seconds in the simulator, wall seconds on a wire
    goodput_bps: float  # bytes * 8 / seconds
    retransmissions: int  # packets the client's requests had the server retransmit
    splits: int  # requests answered with one packet more than they acknowledged
    terminations: int  # requests answered with no packet (a trickle ends)
    recoveries: int  # loss recoveries the client entered
    timeouts: int  # retransmission timeouts the client took
    final_cwnd: int  # the client's window at the end (packets)
    phase: str  # the client engine's phase at the end ("done", "failed", ..., "timed out")
    client: dict[str, int] | None = None  # every counter of the client engine
    sha256_sent: str | None = None
    url: str | None = None
    status: int | None = None  # HTTP status
    transport: str | None = None  # "raw" or "udp"
    server: dict[str, int] | None = None  # every counter of the server engine
    links: dict[str, Any] | None = None  # per-direction link statistics
    wall_seconds: float | None = None  # what the simulation took on this machine
    sim_events: int | None = None  # simulator events run

    @classmethod
    def from_client(cls, engine: Any, *, ok: bool, bytes: int, sha256_received: str,
                    seconds: float, goodput_bps: float, phase: str | None = None,
                    **optional: Any) -> TransferReport:
        """A report whose protocol figures are `engine`'s (a ClientEngine) counters."""
        c: Mapping[str, int] = engine.counters
        return cls(ok=ok, bytes=bytes, sha256_received=sha256_received, seconds=seconds,
                   goodput_bps=goodput_bps, retransmissions=c["pred.retransmit"],
                   splits=c["pred.split"], terminations=c["pred.terminate"],
                   recoveries=c["recoveries"], timeouts=c["timeouts"], final_cwnd=engine.cwnd,
                   phase=engine.phase if phase is None else phase, client=dict(c), **optional)

    @property
    def sha256(self) -> str:
        """The older name of `sha256_received` (a fetch's)."""
        return self.sha256_received

    def as_dict(self, brief: bool = False) -> dict[str, Any]:
        """The fields that are known, as JSON. `brief`: the scalar figures only (what the text
        summary prints). Full: also the counters and, as `sha256`, the received digest again
        (the key `trickles fetch --json` always had)."""
        known = {f.name: getattr(self, f.name) for f in fields(self)
                 if getattr(self, f.name) is not None}
        head = {k: known[k] for k in ("url", "ok", "status") if k in known}
        figures = {k: known[k] for k in _FIGURES if k in known and k not in head}
        if "transport" in known:
            figures["transport"] = known["transport"]
        if brief:
            return head | figures
        rest = {k: v for k, v in known.items() if k not in head and k not in figures}
        return head | figures | {"sha256": self.sha256_received} | rest

    def summary(self) -> str:
        """One `name: value` line per figure, names right-aligned."""
        return "\n".join(f"{k:>16}: {v}" for k, v in self.as_dict(brief=True).items())


def goodput_bps(nbytes: int, seconds: float) -> float:
    """Bits per second of `nbytes` over `seconds` (0 for no time), to 0.1."""
    return round(nbytes * 8 / seconds, 1) if seconds > 0 else 0.0
