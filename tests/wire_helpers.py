"""Helpers the tests share: privilege, tool and module gates, server processes and their
memory, unprivileged runs, git status of the tracked results."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
# an absolute path under a machine's own roots (a result file must name repo-relative paths)
MACHINE_PATH = re.compile(r"(?<![\w.:])/(?:work|root|home|usr|opt|srv|mnt)/")


def unavailable(msg: str) -> NoReturn:
    """Skip outside CI; in CI, where the set-up provides every tool, module and privilege, a
    missing one is a failure."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def need_root(what: str) -> None:
    """Skip outside CI without root (saying how to run it); in CI a missing privilege fails."""
    if os.geteuid() != 0:
        unavailable(f"{what} needs root (or CAP_NET_RAW/CAP_NET_ADMIN): run the suite with sudo")


def need_tool(name: str, hint: str = "run `make sysdeps` (as root) to install it") -> str:
    """The tool's path, or `unavailable` saying how to get it."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed: {hint}")
    return path


def need_module(name: str, hint: str = "make lab-venv installs it") -> ModuleType:
    """The module (an optional dependency), or `unavailable` saying how to get it."""
    try:
        return import_module(name)
    except ImportError:
        unavailable(f"{name} missing: {hint}")


def git_status(*paths: str) -> list[str]:
    """`git status --porcelain -- PATHS` of the checkout: what a run must not have changed."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        unavailable("git and a git checkout are needed to watch the tracked files")
    p = subprocess.run([git, "status", "--porcelain", "--", *paths], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def trickles_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "trickles_kit.cli", *args]


@contextlib.contextmanager
def server_process(argv: list[str], ready: str = "trickles serve:",
                   timeout: float = 20.0) -> Iterator[subprocess.Popen]:
    """Start `argv`, wait for its first stdout line containing `ready`, always stop it."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=REPO)
    try:
        end = time.monotonic() + timeout
        line = ""
        while time.monotonic() < end:
            line = p.stdout.readline() if p.stdout else ""
            if ready in line or p.poll() is not None:
                break
        if ready not in line:
            p.kill()
            out, err = p.communicate(timeout=5)
            raise AssertionError(f"server did not start: {line!r} {out!r} {err!r}")
        yield p
    finally:
        stop_process(p)


def stop_process(p: subprocess.Popen, kill: bool = False) -> None:
    """End `p` (SIGTERM, or SIGKILL with `kill`) if it still runs and reap it, its pipes
    drained; SIGKILL after 10 s."""
    if p.poll() is None and kill:
        p.kill()
    elif p.poll() is None:
        p.terminate()
    try:
        p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(timeout=5)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's RSS (KiB) every `every` seconds in a thread, from `start` (or
    entering the block) until `stop` (or leaving it): (seconds since `t0`, KiB) pairs."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self._th = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((round(time.monotonic() - self.t0, 2), rss_kib(self.pid)))
            except (OSError, AssertionError):
                return  # the process is gone
            self._stop.wait(self.every)

    def start(self) -> RssSampler:
        self._th.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._th.join(timeout=5)

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def peak(self) -> int:
        return max((k for _, k in self.samples), default=0)


# `python -c PEAK_RSS_DRIVER.format(...) HWM ARGS...`: `main(ARGS)` of a module, its exit
# status the process's; at exit the process's peak RSS (VmHWM, kB) is written into HWM
PEAK_RSS_DRIVER = r"""
import atexit, sys
def _hwm(path=sys.argv[1]):
    with open("/proc/self/status") as f:
        kb = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    with open(path, "w") as g:
        g.write(str(kb))
atexit.register(_hwm)
{preload}
from {module} import main
sys.exit(main(sys.argv[2:]))
"""


@contextlib.contextmanager
def world_readable_copy() -> Iterator[Path]:
    """A copy of the package in a directory any user can read (for runs as nobody)."""
    d = Path(tempfile.mkdtemp(prefix="tk-nobody-"))
    try:
        shutil.copytree(REPO / "trickles_kit", d / "trickles_kit",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for root, _dirs, files in os.walk(d):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        os.chmod(d, 0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def private_netns(tag: str) -> Iterator[list[str]]:
    """A fresh network namespace with only loopback (up), deleted on exit with every rule made
    in it; yields the argv prefix that runs a command inside it. For tests that change the
    firewall: the host's own tables never see their rules."""
    need_root("a network namespace")
    need_tool("ip")
    name = f"tk{tag}{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        prefix = ["ip", "netns", "exec", name]
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True,
                       capture_output=True, timeout=30)
        yield prefix
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def nobody_argv(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]


def signal_child(code: str, sig: signal.Signals, timeout: float,
                 before: Callable[[], None] | None = None) -> tuple[int, int]:
    """Run ``python -c code`` until it prints ``ready N``, call `before` (a check while it
    holds what it set up), send it `sig` and wait up to `timeout` s for its end (killed
    otherwise): (its return code, N). What the tests of clean-up on a signal share."""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("ready"), (line, child.stderr.read() if child.stderr else "")
        n = int(line.split()[1])
        if before is not None:
            before()
        child.send_signal(sig)
        child.wait(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, n


def next_client_event(cl: Any, queue: list[tuple[float, int, bytes]], t: float) -> float | None:
    """One step of an in-process transfer's clock: deliver the earliest queued answer
    (heap of (due, n, segment)) or fire the client's timer, whichever comes first; the new
    time, or None when nothing is left to happen."""
    timer = cl.get_timer()
    if queue and (timer is None or queue[0][0] <= timer):
        t, _, ans = heapq.heappop(queue)
        cl.receive(ans, t)
        return t
    if timer is not None:
        t = max(t, timer)
        cl.handle_timer(t)
        return t
    return None


def drive_client(cl: Any, send: Callable[[bytes, float], Iterable[tuple[float, bytes]]],
                 read: Callable[[float, int], object], t: float = 0.0) -> None:
    """Run a connected client engine in process until it is closed or failed (or 300 s): each
    segment it sends at time t goes to `send(seg, t)`, which yields the answers that come back
    as (arrival time, segment); after each event `read(t, answers so far)` takes the bytes.
    The order of the calls is fixed, so a seeded `send` gives the same transfer every time."""
    queue: list[tuple[float, int, bytes]] = []
    n = 0
    while cl.phase not in ("failed", "closed") and t < 300:
        if cl.done and cl.phase != "fin_sent":
            cl.close(t)
        for seg in cl.datagrams_to_send():
            for due, ans in send(seg, t):
                n += 1
                heapq.heappush(queue, (due, n, ans))
        t = next_client_event(cl, queue, t)
        if t is None:
            break
        read(t, n)



def sack_proof(received: set[int], base: int, k: int,
               max_sacks: int = 8) -> list[tuple[int, int]]:
    """The client's SACK proof for ack k: runs of the `received` packets from `base`, the first
    and the last ones when there are more than `max_sacks` (the recovery tests' requests)."""
    runs: list[tuple[int, int]] = []
    for p in range(base, k + 1):
        if p in received:
            if runs and runs[-1][1] == p - 1:
                runs[-1] = (runs[-1][0], p)
            else:
                runs.append((p, p))
    return runs if len(runs) <= max_sacks else runs[:1] + runs[len(runs) - max_sacks + 1:]
