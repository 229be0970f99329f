"""Self-checks for notebook 07: verdicts that start with "OK" or "Not yet", never an exception."""

from __future__ import annotations

from typing import Any

from trickles_kit.labs.checks import NOT_YET, OK


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def check_share(answer: Any, res: dict, replica: str = "s1") -> str:
    """The fraction of response packets `replica` served in a balance result (timeline rows)."""
    v = _num(answer)
    if v is None:
        return f"{NOT_YET} — give a number between 0 and 1 (the fraction, not a percentage)"
    rows = res.get("timeline") or []
    if not rows:
        return f"{NOT_YET} — this result has no packet timeline"
    want = sum(1 for r in rows if r["replica"] == replica) / len(rows)
    if abs(v - want) <= 0.005:
        return f"{OK} — {replica} served {want:.1%} of the responses"
    if abs(v * 100 - want * 100) > 1 and abs(v / 100 - want) <= 0.005:
        return f"{NOT_YET} — that looks like a percentage: give a fraction"
    return f"{NOT_YET} — count rows of packets(res) whose replica is {replica!r}, over all rows"


def check_bound(answer: Any, res: dict) -> str:
    """The failover bound of the issue: one RTO plus one RTT, in seconds, from a result."""
    v = _num(answer)
    if v is None:
        return f"{NOT_YET} — give the bound in seconds"
    rto, rtt = res.get("rto_s"), res.get("rtt_s")
    if rto is None or rtt is None:
        return f"{NOT_YET} — this result has no rto_s / rtt_s (a Trickles failover result has)"
    want = rto + rtt
    if abs(v - want) <= 0.0011:
        ok = "within" if res.get("stall_s", 1e9) <= want else "NOT within"
        return f"{OK} — {want * 1000:.0f} ms; the stall {res.get('stall_s', 0) * 1000:.0f} ms " \
               f"is {ok} it"
    if abs(v - rto) <= 0.0011:
        return f"{NOT_YET} — that is the RTO alone: add the round trip the retransmission takes"
    return f"{NOT_YET} — add res['rto_s'] and res['rtt_s']"
