"""What lab runs leave behind — temporary directories, child processes — removed at exit.

A student rarely reaches the notebook's last cell (`session.cleanup()`): the kernel is shut
down, restarted or culled first, and each tour run would leave megabytes of pcaps and event files
in the temporary directory. Everything registered here goes when the interpreter exits: atexit
covers a normal exit and Jupyter's shutdown request (the kernel exits cleanly); a SIGTERM, which
Jupyter sends when a kernel does not stop in time, runs the same cleanup first and then
terminates as before. Not on a SIGKILL: nothing runs then.

Registration is explicit: a directory is removed only after whoever made it says it is done
(`remove`) or at exit — never because an object was garbage-collected, so a result that still
points into a directory keeps working for the life of the kernel.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
_dirs: set[str] = set()
_procs: list[subprocess.Popen] = []
_sigterm_installed = False


def make(prefix: str) -> Path:
    """A new temporary directory (`tempfile.mkdtemp(prefix=...)`), removed at exit at the latest."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    register(path)
    return path


def register(path: str | os.PathLike[str]) -> None:
    """Remove `path` (a directory) at interpreter exit unless `remove()` does it first."""
    with _lock:
        _dirs.add(os.fspath(path))
    _install_sigterm()


def remove(path: str | os.PathLike[str]) -> None:
    """Remove `path` now (and forget it)."""
    with _lock:
        _dirs.discard(os.fspath(path))
    shutil.rmtree(path, ignore_errors=True)


def track(p: subprocess.Popen) -> None:
    """Terminate `p` at exit if it is still running (a server left by a stopped kernel)."""
    with _lock:
        _procs[:] = [q for q in _procs if q.poll() is None]
        _procs.append(p)
    _install_sigterm()


def run_cleanup() -> None:
    """Stop the tracked processes, then remove the registered directories."""
    with _lock:
        procs, _procs[:] = list(_procs), []
        dirs = list(_dirs)
        _dirs.clear()
    for p in procs:
        with contextlib.suppress(OSError):
            if p.poll() is None:
                p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                p.kill()
                p.wait(timeout=5)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _on_sigterm(signum: int, frame: object) -> None:
    run_cleanup()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # then die of SIGTERM, as without this handler


def _install_sigterm() -> None:
    """Clean up on SIGTERM too, if nobody else handles it (only the main thread may install)."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True


atexit.register(run_cleanup)
