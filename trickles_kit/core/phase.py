"""The client connection's phase: one vocabulary for the engine and everything that reports it.

A `StrEnum`, so a phase compares equal to its old string and serialises as it (JSON unchanged).
"""

from __future__ import annotations

from trickles_kit.core.names import Name


class Phase(Name):
    IDLE = "idle"  # not connected yet
    SYN_SENT = "syn_sent"  # the SYN is out, no answer yet
    ESTABLISHED = "established"  # transferring
    DONE = "done"  # every response byte arrived (the stream's length is known and covered)
    FIN_SENT = "fin_sent"  # closing: the FIN request is out
    CLOSED = "closed"  # closed (FIN answered, or given up on after its tries)
    FAILED = "failed"  # gave up: too many timeouts, or the server broke the protocol


ENDED = (Phase.CLOSED, Phase.FAILED)  # nothing more will happen (a tuple: `in` is identity)

__all__ = ["ENDED", "Phase"]
