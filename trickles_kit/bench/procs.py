"""Child processes of the experiments (servers, clients, load generators): one way to stop them,
so a failed or finished run leaves none behind."""

from __future__ import annotations

import subprocess


def stop_child(p: subprocess.Popen, timeout: float) -> None:
    """SIGTERM a child process and collect it; SIGKILL when it has not exited within `timeout`
    seconds."""
    p.terminate()
    try:
        p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
