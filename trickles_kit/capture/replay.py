"""Replay a capture in time: its events (or packet rows) at the pace they were captured.

``replay_events(path, speed=1.0)`` yields the decoded events, sleeping so that the gap between
two events is the captured gap divided by `speed` (2.0 = twice as fast). ``speed=0`` or
``float("inf")`` yields everything at once. Timestamps that go backwards (a merged capture) are
yielded immediately, never with a negative sleep. Pacing is measured from the first item, so a
slow consumer does not accumulate drift: a late item is yielded at once.

`source` may be a path or an already decoded `Capture` (to replay it several times).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from trickles_kit.capture.decode import Capture, PacketRow, decode_pcap
from trickles_kit.core.events import Event

T = TypeVar("T", Event, PacketRow)


def _capture(source: str | os.PathLike[str] | Capture, secret: bytes | None,
             service_port: int | None, events: bool) -> Capture:
    if isinstance(source, Capture):
        return source
    return decode_pcap(source, secret=secret, service_port=service_port, events=events)


def _check_speed(speed: float) -> float:
    if speed is None or math.isnan(speed) or speed < 0:
        raise ValueError(f"speed must be >= 0 (0 or inf: as fast as possible), got {speed}")
    return speed


def paced(items: Iterable[T], speed: float = 1.0,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[T]:
    """Yield `items` (each with a `.t` in seconds) at their captured pace scaled by `speed`."""
    speed = _check_speed(speed)
    fast = speed == 0 or math.isinf(speed)
    t0 = start = None
    for item in items:
        if not fast:
            if t0 is None:
                t0, start = item.t, clock()
            else:
                due = start + (item.t - t0) / speed
                wait = due - clock()
                if wait > 0:
                    sleep(wait)
        yield item


def replay_events(source: str | os.PathLike[str] | Capture, speed: float = 1.0,
                  secret: bytes | None = None, service_port: int | None = None, *,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> Iterator[Event]:
    """The capture's events, paced (see the module docstring). Decodes first (eagerly)."""
    _check_speed(speed)
    cap = _capture(source, secret, service_port, True)
    return paced(cap.events, speed, clock, sleep)


def replay_packets(source: str | os.PathLike[str] | Capture, speed: float = 1.0,
                   secret: bytes | None = None, service_port: int | None = None, *,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Iterator[PacketRow]:
    """The capture's packet rows, paced like `replay_events`."""
    _check_speed(speed)
    cap = _capture(source, secret, service_port, False)
    return paced(cap.packets, speed, clock, sleep)


__all__ = ["paced", "replay_events", "replay_packets"]
