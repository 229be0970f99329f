"""`--rtt MS [--jitter MS]`: the path options `trickles bench` and `trickles services demo` share.

Both put MS/2 each way on the path and check the idle RTT before running; only where the delay
sits differs, so the caller names it (`how`) and the rest of the help and the check are one.
"""

from __future__ import annotations

import argparse


def add_path_arguments(parser: argparse.ArgumentParser, how: str) -> None:
    """--rtt and --jitter on `parser`; `how`: the path and what delays it, for --rtt's help."""
    parser.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                        help=f"idle round-trip time {how}; checked before the run (refused if "
                             "off by more than 1 ms) and recorded; the bottleneck buffers "
                             "max(50 ms, one RTT) of its rate")
    parser.add_argument("--jitter", type=float, default=0.0, metavar="MS",
                        help="+- MS on each one-way delay, slowly varying (order kept); with "
                             "--rtt")


def path_problem(rtt: float, jitter: float) -> str | None:
    """Why --rtt/--jitter cannot be used as given, or None."""
    if rtt < 0 or jitter < 0 or 2 * jitter > rtt:
        return "--rtt and --jitter must be >= 0, with jitter <= rtt/2"
    return None
