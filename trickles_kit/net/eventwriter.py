"""The JSON-lines event sink the loops and `trickles serve --events` write (one event a line)."""

from __future__ import annotations

import time
from typing import TextIO

from trickles_kit.core.events import Event


class EventWriter:
    """JSON-lines event sink (one event per line).

    Flushed at most `flush_s` after an event (and by the loops when they go idle), because a
    live view follows the file while the run goes on: a plain buffer would hold the last
    events of a transfer until the process exits.
    """

    def __init__(self, path: str, flush_s: float = 0.05) -> None:
        self._f: TextIO = open(path, "w")  # noqa: SIM115 - closed by close()
        self.count = 0
        self.flush_s = flush_s
        self._flushed = time.monotonic()
        self._dirty = False

    def __call__(self, e: Event) -> None:
        self._f.write(e.to_json() + "\n")
        self.count += 1
        self._dirty = True
        now = time.monotonic()
        if now - self._flushed >= self.flush_s:
            self._f.flush()
            self._flushed, self._dirty = now, False

    def flush(self) -> None:
        """Write out what is buffered (cheap when nothing is)."""
        if self._dirty and not self._f.closed:
            self._f.flush()
            self._flushed, self._dirty = time.monotonic(), False

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
