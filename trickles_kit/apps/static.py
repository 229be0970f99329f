"""Static files: the user continuation names the file (path and size) and the offset.

The continuation is not secret, so it travels in clear; because a client can rewrite it, the
path in it is checked against the root exactly like the path of a GET.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from pathlib import Path

from trickles_kit.apps.common import fill_slots, request_words
from trickles_kit.core.server import Minisocket

_HDR = struct.Struct("!cQQ")  # b"F", size, offset, then the path


class StaticFiles:
    """Handler serving files under `root` for requests "GET /path"."""

    def __init__(self, root: str | os.PathLike, max_open: int = 32) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"static root {self.root} is not a directory")
        self._fds: OrderedDict[str, int] = OrderedDict()  # bounded soft state, not per client
        self._max_open = max_open
        self.errors = 0

    def resolve(self, rel: str) -> Path | None:
        try:
            path = (self.root / rel.lstrip("/")).resolve()
            if not path.is_file():
                return None
        except (ValueError, OSError):  # NUL bytes, names too long...: not a file we serve
            return None
        if path != self.root and self.root not in path.parents:
            return None
        return path

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            self._fds[path] = fd
            if len(self._fds) > self._max_open:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(path)
        return fd

    def __call__(self, msk: Minisocket) -> None:
        if msk.kind == "FIN" or (msk.kind == "SYN" and not msk.request):
            return  # nothing to serve yet: a bare SYN only opens the connection
        rel: str | None = None
        if len(msk.ucont) > _HDR.size and msk.ucont[:1] == b"F":
            rel = msk.ucont[_HDR.size :].decode("utf-8", "replace")
        else:
            words = request_words(msk)
            if len(words) >= 2 and words[0] == "GET":
                rel = words[1]
        path = self.resolve(rel) if rel else None
        if path is None:
            self.errors += 1
            for slot in msk.slots:  # an empty stream: the client learns "0 bytes" and stops
                slot.finhint = 0
                slot.ucont = b"E404"
            return
        size = path.stat().st_size
        key = str(path)
        relb = str(path.relative_to(self.root)).encode()
        fd = self._fd(key)
        fill_slots(
            msk, size, lambda s, e: os.pread(fd, e - s, s),
            lambda off: _HDR.pack(b"F", size, off) + relb,
        )
