"""TCP Reno congestion control as a pure function of the packet number (PROTOCOL §4.1).

Every trickle of an epoch evaluates the same `cwnd(n)` from (TCPBase, startCwnd, ssthresh), so the
union of their outputs is the schedule one Reno sender would produce — with no state anywhere.
"""

from __future__ import annotations

from math import isqrt

MAX_CWND = 8191  # packets; keeps every window and packet count small and bounded


def cwnd(n: int, tcp_base: int, start_cwnd: int, ssthresh: int) -> int:
    """Window (packets) after the ack of packet `n`, for the epoch starting at `tcp_base`.

    Slow start below A = B + s - c0 grows by one per ack; congestion avoidance holds the window w
    for w acks, so the largest w with sum(j, j=s..w-1) <= n - A is the exact integer root below.
    `n == tcp_base - 1` (the ack that opened the epoch) is defined as `start_cwnd`.
    """
    if n < tcp_base - 1 or start_cwnd < 1 or ssthresh < start_cwnd:
        raise ValueError(
            f"cwnd needs n >= tcp_base - 1 and 1 <= start_cwnd <= ssthresh "
            f"(n={n}, tcp_base={tcp_base}, start_cwnd={start_cwnd}, ssthresh={ssthresh})"
        )
    a = tcp_base + ssthresh - start_cwnd
    if n < a:
        w = start_cwnd + max(n - tcp_base, 0)
    else:
        k = n - a
        w = (1 + isqrt(1 + 4 * (ssthresh * ssthresh - ssthresh + 2 * k))) // 2
    return w if w < MAX_CWND else MAX_CWND


class RenoStepper:
    """Reference Reno sender stepped ack by ack — the oracle the closed form is tested against.

    Slow start adds one packet per ack until ssthresh; congestion avoidance counts acks and adds
    one packet once a full window of acks has been counted (cwnd += 1/cwnd, in integers).
    """

    def __init__(self, tcp_base: int, start_cwnd: int, ssthresh: int) -> None:
        if start_cwnd < 1 or ssthresh < start_cwnd:
            raise ValueError("RenoStepper needs 1 <= start_cwnd <= ssthresh")
        self.n = tcp_base  # the ack the current window belongs to
        self.cwnd = start_cwnd
        self.ssthresh = ssthresh
        self._count = 0

    def ack(self) -> int:
        """Process the next ack (n + 1) and return the new window."""
        self.n += 1
        if self.cwnd < self.ssthresh:
            self.cwnd += 1
        else:
            self._count += 1
            if self._count >= self.cwnd:
                self.cwnd += 1
                self._count = 0
        if self.cwnd > MAX_CWND:
            self.cwnd = MAX_CWND
        return self.cwnd


def reno_trace(tcp_base: int, start_cwnd: int, ssthresh: int, count: int) -> list[int]:
    """cwnd for acks tcp_base .. tcp_base + count - 1 from the stepper."""
    s = RenoStepper(tcp_base, start_cwnd, ssthresh)
    out = [s.cwnd]
    for _ in range(count - 1):
        out.append(s.ack())
    return out
