"""A bounded view of a capture file, read a window at a time: what a walk of `pcapio` holds.

A regular file is read with positioned reads (`pread`), so two walks of one file are
independent and memory does not grow with the file; a pipe is read in order, once.
"""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO

from trickles_kit.capture.pcapformat import WINDOW, PcapError


def _seek_read(fd: int, n: int, pos: int) -> bytes:
    os.lseek(fd, pos, os.SEEK_SET)
    return os.read(fd, n)


pread = getattr(os, "pread", None) or _seek_read  # (positioned reads where there are none)


class FileWindow:
    """One walk's bounded view of the file: ``buf`` holds the file bytes [base, end).

    A regular file is read with positioned reads (`os.pread`), so walks are independent and a
    jump forward reads nothing in between; anything else (a pipe) is read in order, once.
    `fill` drops the bytes before an offset and reads a window (`WINDOW` bytes, or a record that
    needs more); `skip_to` jumps past bytes nobody will look at (an oversized record).
    """

    __slots__ = ("buf", "base", "end", "_fd", "_f", "_size", "_path")

    def __init__(self, f: BinaryIO, size: int | None, path: str, first: bytes) -> None:
        self._f = f
        self._size = size
        self._fd = f.fileno() if size is not None else -1
        self._path = path
        self.buf = first
        self.base = 0
        self.end = len(first)

    def _read(self, n: int) -> bytes:
        try:
            if self._fd < 0:
                return self._f.read(n)
            out = pread(self._fd, n, self.end)
            if 0 < len(out) < n:  # a short read before the end of the file: go on
                parts = [out]
                got = len(out)
                while got < n:
                    more = pread(self._fd, n - got, self.end + got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                out = b"".join(parts)
            return out
        except OSError as e:
            raise PcapError(f"{self._path}: {e.strerror or e}") from None

    def fill(self, off: int, need: int) -> bytes:
        """Drop buf[:off] and read on: the new buf holds at least `need` bytes unless the file
        ends first. Reads `WINDOW` bytes (more only for a record that needs more)."""
        self.base += off
        if self._fd >= 0:  # a regular file: read the unfinished record again, copy nothing
            self.buf = b""  # (the old window is freed as soon as the caller lets go of it)
            self.end = self.base
            self.buf = self._read(max(WINDOW, need))
            self.end += len(self.buf)
            return self.buf
        tail = self.buf[off:]
        self.buf = b""
        chunk = self._read(max(WINDOW, need) - len(tail))
        self.end += len(chunk)
        self.buf = tail + chunk if tail else chunk
        return self.buf

    def skip_to(self, target: int) -> tuple[bytes, int] | None:
        """Move to file offset `target`: (buf, offset of `target` in it), or None when the file
        ends before it (then `end` is where it ends)."""
        if target <= self.end:
            return self.buf, target - self.base
        self.buf = b""
        if self._fd >= 0:
            if target > self._size:
                with contextlib.suppress(OSError):  # a capture still being written grows
                    self._size = os.fstat(self._fd).st_size
            if target > self._size:
                self.base = self.end = max(self._size, self.end)
                return None
        else:
            left = target - self.end
            while left > 0:
                chunk = self._read(min(left, WINDOW))
                if not chunk:
                    self.base = self.end
                    return None
                self.end += len(chunk)
                left -= len(chunk)
        self.base = self.end = target
        return self.buf, 0
