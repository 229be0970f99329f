"""The client's round-trip estimator (RFC 6298): smoothed RTT, its variation and the RTO.

Kept apart from the engine so loss detection, repair waits and timers read one estimate.
"""

from __future__ import annotations


class RttEstimator:
    __slots__ = ("srtt", "rttvar", "rto", "min_rto", "max_rto")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None  # no sample yet
        self.rttvar = 0.0
        self.rto = initial_rto
        self.min_rto, self.max_rto = min_rto, max_rto

    def sample(self, r: float) -> None:
        """One RTT measurement in seconds (negative ones, from a clock step, are ignored)."""
        if r < 0:
            return
        srtt = self.srtt
        if srtt is None:
            srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(srtt - r)
            srtt = 0.875 * srtt + 0.125 * r
        self.srtt = srtt
        rto = srtt + 4 * self.rttvar
        # min(max(rto, min_rto), max_rto) as conditionals: it runs per packet
        if rto < self.min_rto:
            rto = self.min_rto
        if rto > self.max_rto:
            rto = self.max_rto
        self.rto = rto


__all__ = ["RttEstimator"]
