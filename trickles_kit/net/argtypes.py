"""argparse value types shared by the commands (cli/): probabilities, sizes, packet indices.

Kept below every command so that each subcommand's parser can use them; `indices` parses with
net/faults.py, the drop patterns' own syntax.
"""

from __future__ import annotations

import argparse

from trickles_kit.net.faults import parse_indices


def probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability must be in [0, 1], got {v}")
    return v


def size(text: str) -> int:
    """Bytes, with optional k/M/G suffix (powers of 1000): 10M = 10,000,000."""
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}
    t = text.strip().lower().rstrip("b")
    try:
        v = int(float(t[:-1]) * mult[t[-1]]) if t and t[-1] in mult else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1448, 64k, 10M)") from None
    if v < 0:
        raise argparse.ArgumentTypeError("size must be >= 0")
    return v


def indices(text: str) -> tuple[int, ...]:
    """0-based packet indices, `I,J,...` (net.faults syntax); '' for none."""
    try:
        return parse_indices(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
