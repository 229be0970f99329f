"""The server's global admission of new handshakes (`ServerLoop`'s SYN bucket)."""

from __future__ import annotations


class SynBucket:
    """The global token bucket that admits new handshakes, in two currencies:

    * count: `rate` SYNs a second, at most `burst` at once (0 = no limit) — bounds the
      handshake answers, whatever they cost;
    * time: `share` of the loop's time (0 = no limit), at most a tenth of a second's worth
      at once — each admitted SYN is charged the time its answer took. A SYN's cost is the
      application's (a web server parsing the request and reading the first bytes of a file,
      say; a flood chooses the dearest), so a count alone does not bound the work.

    Refilled from the caller's clock (a clock that steps back only pauses the refill). One
    bucket per server, none per connection."""

    __slots__ = ("rate", "burst", "tokens", "share", "cap", "budget", "last")

    def __init__(self, rate: float, burst: int, share: float = 0.0) -> None:
        if rate < 0 or burst < 1 or not 0.0 <= share <= 1.0:
            raise ValueError(f"need a SYN rate >= 0, a burst >= 1 and a share in [0, 1], got "
                             f"{rate}, {burst}, {share}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.tokens = float(burst)
        self.share = float(share)
        self.cap = self.share * 0.1
        self.budget = self.cap
        self.last: float | None = None

    def _refill(self, now: float) -> None:
        if self.last is not None and now > self.last:
            dt = now - self.last
            self.tokens = min(float(self.burst), self.tokens + dt * self.rate)
            self.budget = min(self.cap, self.budget + dt * self.share)
        if self.last is None or now > self.last:
            self.last = now

    def allow(self, now: float) -> bool:
        """May one more SYN be answered now? (Then `charge` it.)"""
        self._refill(now)
        return (not self.rate or self.tokens >= 1.0 - 1e-9) and (
            not self.share or self.budget > 0.0)

    def charge(self, seconds: float) -> None:
        """One admitted SYN, whose answer took `seconds`."""
        if self.rate:
            self.tokens = max(0.0, self.tokens - 1.0)
        if self.share:
            self.budget -= seconds  # (may go below zero: the next SYNs wait for it)

    def wait(self, now: float) -> float:
        """Seconds until the next SYN may be admitted."""
        since = max(0.0, now - self.last) if self.last is not None else 0.0
        w = 0.0
        if self.rate and self.tokens < 1.0:
            w = (1.0 - self.tokens) / self.rate
        if self.share and self.budget <= 0.0:
            w = max(w, -self.budget / self.share + 1e-6)
        return max(0.0, w - since)
