"""A user-space delay line: netfilter queues each packet, this process releases it after a delay.

Why it exists: kernels without netem (this one has no netem, fq or etf) still have
`iptables -j NFQUEUE`. The line runs in a router namespace; one rule per direction sends packets
to a netfilter queue, the kernel copies only their first 64 bytes to this process, which keeps
`(due, packet id)` in a FIFO per queue and releases everything due with one batch ACCEPT
verdict. The packets never leave the kernel: Python handles ids, not bytes.

Built around what was measured (issue #15):
* with no listener the kernel drops every queued packet, so the process binds its queues
  *before* it adds its rules and removes them before it unbinds; no `--queue-bypass`, which
  would silently remove the delay if the process died;
* the kernel's default queue (1024) overflows at speed: the length is set explicitly
  (NFQA_CFG_QUEUE_MAXLEN) and the kernel's drop counters are read before unbinding;
* without real-time priority a busy machine adds milliseconds: SCHED_FIFO when allowed;
* independent per-packet jitter that keeps order drifts the mean upward, so jitter is a slowly
  varying offset whose slope stays below 1: release times never go backwards.

Netlink is spoken directly (`net.nfqueue`: messages packed with `struct`). The process is
`python -m trickles_kit.net.delayline --config JSON`; `DelayLine` starts it in a namespace, waits
until its rules are in, and stops it (by closing its stdin) collecting its counters. It stops on
stdin EOF, SIGINT, SIGTERM, an exception or its time limit, always removing its rules first.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import re
import resource
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trickles_kit.net.nfqueue import (
    NLMSG_ERROR,
    PACKET_TYPE,
    PROC_QUEUES,
    NfQueueSocket,
    enable_kernel_timestamps,
    kernel_counters,
    parse,
    verdict_batch,
)

COPY_RANGE = 64  # bytes of each packet the kernel copies to us (ids are all we need)
JITTER_PERIOD = 10.0  # knots of the jitter process are this many jitter amplitudes apart...
JITTER_MIN_PERIOD_S = 0.05  # ...and at least 50 ms: slope <= 0.2, so order is kept
IDLE_WAKE_S = 0.5  # wake this often with nothing held (time limit, stdin)
LEAD_GAIN = 0.2  # per batch: the lead follows the mean oversleep over ~5 wake-ups
LEAD_MAX_S = 0.002  # never release more than 2 ms early, whatever the scheduler did
STAMP_MAX_LAG_S = 1.0  # a kernel stamp older than this (or in the future) is a clock step
DRAIN_MAX = 4096  # messages read per wake-up before releasing again (a flood cannot starve it)
READY, STATS, STOPPED = "delayline: ready ", "delayline: stats ", "delayline: stopped "
_TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,28}$")


class DelayLineError(RuntimeError):
    """The line could not start or stop as asked; str() is one line."""


# ------------------------------------------------------------------------------ configuration
@dataclass
class Direction:
    """One way through the line: packets matching `match` (iptables arguments, e.g.
    `["-i", "veth0"]`) go to netfilter queue `queue` and are held `delay_ms` (± `jitter_ms`)."""

    name: str
    match: list[str]
    queue: int
    delay_ms: float
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.queue <= 65535:
            raise ValueError(f"queue must be in 0..65535, not {self.queue}")
        if not 0 <= self.delay_ms <= 10_000 or not 0 <= self.jitter_ms <= 10_000:
            raise ValueError("delay_ms and jitter_ms must be in 0..10000")


@dataclass
class LineConfig:
    """What the line process does; travels to it as JSON."""

    directions: list[Direction]
    queue_len: int = 4096  # NFQA_CFG_QUEUE_MAXLEN per queue: beyond it the kernel drops
    chain: str = "FORWARD"
    copy_range: int = COPY_RANGE
    late_ms: float = 1.0  # a release later than this past its due time counts as late
    rt_priority: int = 10  # SCHED_FIFO priority; 0 = do not ask
    seed: int = 1  # the jitter process
    tag: str = "tkdl"  # iptables comment on this line's rules: how they are found and removed
    max_seconds: float = 6 * 3600.0  # the process stops by itself after this long
    stop_on_stdin_eof: bool = True

    def __post_init__(self) -> None:
        self.directions = [d if isinstance(d, Direction) else Direction(**d)
                           for d in self.directions]
        if not self.directions:
            raise ValueError("a delay line needs at least one direction")
        if len({d.queue for d in self.directions}) != len(self.directions):
            raise ValueError("each direction needs its own queue number")
        if not 1 <= self.queue_len <= 1 << 20:
            raise ValueError(f"queue_len must be in 1..{1 << 20}, not {self.queue_len}")
        if not _TAG_RE.match(self.tag):
            raise ValueError(f"tag must be 1-28 of [A-Za-z0-9_-], not {self.tag!r}")
        if self.max_seconds <= 0:
            raise ValueError("max_seconds must be > 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> LineConfig:
        return cls(**json.loads(text))


def queue_len_for(rate_mbit: float, rtt_ms: float, buffer_bytes: int, mtu: int = 1500,
                  minimum: int = 1024) -> int:
    """Queue length (packets) for one direction of a line in front of a bottleneck.

    A window-limited sender has at most one bandwidth-delay product plus the bottleneck's
    buffer in flight, and slow start can overshoot that by up to 2x before the first loss. Every
    packet in the line is in flight, so 2 x (BDP + buffer) in full-sized packets (acks are
    fewer than data packets) is never reached; the kernel's 1024 is the floor.
    """
    bdp = rate_mbit * 1e6 / 8 * rtt_ms / 1000
    return max(minimum, int(2 * (bdp + buffer_bytes) / mtu) + 64)


# ------------------------------------------------------------------------------ the line
class SlowJitter:
    """A slowly varying offset in [-amp, +amp]: linear between random knots `period` apart.

    Its slope is at most 2 amp / period (0.2 by default), so release times keep the arrival
    order without clamping — what keeps the mean delay equal to the delay asked for.
    """

    def __init__(self, amp_s: float, rng: random.Random, period_s: float | None = None) -> None:
        self.amp = amp_s
        self.period = period_s or max(JITTER_PERIOD * amp_s, JITTER_MIN_PERIOD_S)
        self.rng = rng
        self.t0: float | None = None
        self.a = self.b = 0.0

    def at(self, t: float) -> float:
        if self.amp <= 0:
            return 0.0
        if self.t0 is None or t - self.t0 > 8 * self.period:  # first use, or after a long idle
            self.t0, self.b = t, self.rng.uniform(-self.amp, self.amp)
            self.a = self.rng.uniform(-self.amp, self.amp)
        while t - self.t0 >= self.period:
            self.t0 += self.period
            self.a, self.b = self.b, self.rng.uniform(-self.amp, self.amp)
        return self.a + (self.b - self.a) * (t - self.t0) / self.period


class _Queue:
    __slots__ = ("d", "delay", "jitter", "fifo", "last_due", "packets", "late", "late_max",
                 "batches", "held_max", "released_at_stop")

    def __init__(self, d: Direction, rng: random.Random) -> None:
        self.d = d
        self.delay = d.delay_ms / 1000
        self.jitter = SlowJitter(d.jitter_ms / 1000, rng)
        self.fifo: deque[tuple[float, int]] = deque()
        self.last_due = 0.0
        self.packets = self.late = self.batches = self.held_max = self.released_at_stop = 0
        self.late_max = 0.0


class Line:
    """The FIFOs and the loop: receive ids, release what is due with one verdict per queue."""

    def __init__(self, cfg: LineConfig, nfq: NfQueueSocket) -> None:
        self.cfg, self.nfq = cfg, nfq
        rng = random.Random(cfg.seed)
        self.queues = {d.queue: _Queue(d, rng) for d in cfg.directions}
        self.late_s = cfg.late_ms / 1000
        self.verdict_errors = self.enobufs = 0
        # How early to wake and release: the scheduler's mean oversleep, learnt from each
        # batch's head (an integral controller on its lateness). Without it every packet is
        # late by one wake-up (0.1-0.3 ms a way on a 2-core VM), and the idle RTT drifts
        # towards the pre-flight's 1 ms tolerance.
        self.lead = 0.0
        self.stamped, self.stamp_lag_max = 0, 0.0

    def receive(self) -> None:
        """Read what the kernel queued (at most DRAIN_MAX messages); stamp each with its due."""
        sock, buf, queues = self.nfq.sock, self.nfq.buf, self.queues
        for _ in range(DRAIN_MAX):
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:  # the socket overflowed: the kernel counts it
                    raise
                self.enobufs += 1
                continue
            now = time.monotonic()
            wall_minus_mono = time.time() - now
            for kind, a, b, ts in parse(buf, n):
                if kind == PACKET_TYPE:
                    q = queues.get(a)
                    if q is None:
                        continue
                    # from the kernel's arrival stamp when there is one: the wake-up that
                    # read the packet (0.1-0.3 ms) is not part of the delay asked for
                    t = ts - wall_minus_mono if ts else now
                    lag = now - t
                    if 0.0 <= lag < STAMP_MAX_LAG_S:
                        self.stamped += 1
                        if lag > self.stamp_lag_max:
                            self.stamp_lag_max = lag
                    else:  # no stamp, or a clock step: the read time is the arrival
                        t = now
                    due = max(t + q.delay + q.jitter.at(t), q.last_due, now)
                    q.last_due = due
                    q.fifo.append((due, b))
                    q.packets += 1
                    if len(q.fifo) > q.held_max:
                        q.held_max = len(q.fifo)
                elif kind == NLMSG_ERROR and b:
                    self.verdict_errors += 1

    def release(self, now: float) -> float | None:
        """ACCEPT everything due (one batch verdict per queue); the next due time, if any."""
        nxt, edge = None, now + self.lead
        for q in self.queues.values():
            fifo = q.fifo
            if fifo and fifo[0][0] <= edge:
                head = now - fifo[0][0]
                self.lead = min(LEAD_MAX_S, max(0.0, self.lead + LEAD_GAIN * head))
                last = 0
                while fifo and fifo[0][0] <= edge:
                    due, last = fifo.popleft()
                    late = now - due
                    if late > self.late_s:
                        q.late += 1
                    if late > q.late_max:
                        q.late_max = late
                self._verdict(q.d.queue, last)
                q.batches += 1
            if fifo and (nxt is None or fifo[0][0] < nxt):
                nxt = fifo[0][0]
        return nxt

    def _verdict(self, queue: int, last_id: int) -> None:
        try:
            self.nfq.sock.send(verdict_batch(queue, last_id))
        except OSError:
            self.verdict_errors += 1

    def flush(self) -> None:
        """ACCEPT everything still held (at stop: released early rather than dropped)."""
        for q in self.queues.values():
            if q.fifo:
                q.released_at_stop += len(q.fifo)
                self._verdict(q.d.queue, q.fifo[-1][1])
                q.fifo.clear()

    def run(self, stop_fd: int | None, deadline: float,
            on_input: Callable[[], None] | None = None) -> str:
        """Until stdin closes or the deadline passes; returns why it stopped. A line on stdin
        calls `on_input` (the controller asking for the counters mid-run)."""
        sock_fd = self.nfq.sock.fileno()
        fds = [sock_fd] + ([stop_fd] if stop_fd is not None else [])
        while True:
            now = time.monotonic()
            nxt = self.release(now)
            if now >= deadline:
                return "time limit"
            wait = min(deadline - now,
                       IDLE_WAKE_S if nxt is None else max(0.0, nxt - self.lead - now))
            ready, _, _ = select.select(fds, [], [], wait)
            if sock_fd in ready:
                self.receive()
            if stop_fd is not None and stop_fd in ready:
                if not os.read(stop_fd, 4096):
                    return "stdin closed"
                if on_input is not None:
                    on_input()

    def stats(self) -> dict:
        return {"directions": {q.d.name: {
            "queue": q.d.queue, "delay_ms": q.d.delay_ms, "jitter_ms": q.d.jitter_ms,
            "packets": q.packets, "late": q.late, "late_max_ms": round(q.late_max * 1e3, 3),
            "batches": q.batches, "held_max": q.held_max,
            "released_at_stop": q.released_at_stop} for q in self.queues.values()},
            "verdict_errors": self.verdict_errors, "socket_overflows": self.enobufs,
            "lead_ms": round(self.lead * 1e3, 3), "kernel_stamped": self.stamped,
            "stamp_lag_max_ms": round(self.stamp_lag_max * 1e3, 3)}


# ------------------------------------------------------------------------------ system side
def rule_argv(cfg: LineConfig, d: Direction) -> list[str]:
    return [cfg.chain, *d.match, "-m", "comment", "--comment", cfg.tag, "-j", "NFQUEUE",
            "--queue-num", str(d.queue)]


def remove_tagged_rules(tag: str, chain: str = "FORWARD", prefix: Sequence[str] = ()) -> int:
    """Delete every rule of `chain` whose comment is `tag`; how many. `prefix` runs iptables
    elsewhere (`ip netns exec NS`)."""
    p = subprocess.run([*prefix, "iptables", "-w", "-S", chain], capture_output=True, text=True,
                       timeout=20)
    n = 0
    for line in p.stdout.splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and "--comment" in words and \
                words[words.index("--comment") + 1] == tag:
            subprocess.run([*prefix, "iptables", "-w", "-D", *words[1:]], capture_output=True,
                           timeout=20)
            n += 1
    return n


def realtime(priority: int) -> tuple[str, str | None]:
    """Ask for SCHED_FIFO; (what we run under, a warning if we could not get it)."""
    if priority <= 0:
        return "SCHED_OTHER (real-time not asked)", None
    try:
        # reset on fork: the iptables the line runs at its end need no real-time priority
        os.sched_setscheduler(0, os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0),
                              os.sched_param(priority))
        return f"SCHED_FIFO {priority}", None
    except (OSError, AttributeError) as e:
        return "SCHED_OTHER", (f"delayline: warning: no real-time priority ({e}); on a busy "
                               f"machine release times may be milliseconds late")


def _say(prefix: str, payload: dict) -> None:
    sys.stdout.write(prefix + json.dumps(payload, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _shutdown(cfg: LineConfig, line: Line, nfq: NfQueueSocket) -> dict:
    """Rules out first (no packet may reach an unbound queue), then release what is held,
    read the kernel's counters, unbind. Each step runs even if one before it failed."""
    out: dict = {}
    for step, fn in (("rules", lambda: remove_tagged_rules(cfg.tag, cfg.chain)),
                     ("drain", line.receive), ("flush", line.flush)):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 — cleanup goes on; the error is reported
            out.setdefault("cleanup_errors", []).append(f"{step}: {type(e).__name__}: {e}")
    kern = kernel_counters([d.queue for d in cfg.directions])
    with contextlib.suppress(Exception):
        nfq.close()
    out.update(line.stats())
    for q in line.queues.values():
        out["directions"][q.d.name].update(
            {k: v for k, v in kern.get(q.d.queue, {}).items()
             if k in ("kernel_dropped", "user_dropped")})
    out["kernel_dropped"] = sum(k["kernel_dropped"] for k in kern.values())
    out["user_dropped"] = sum(k["user_dropped"] for k in kern.values())
    return out


def serve(cfg: LineConfig) -> int:
    """The process: bind, add rules, say ready, run, and always clean up; exit status."""
    stopping = {"why": "error"}

    def _term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0, ru0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    sched, warning = realtime(cfg.rt_priority)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    nfq = NfQueueSocket()
    stamps = enable_kernel_timestamps()  # open until exit: arrivals carry the kernel's time
    line = Line(cfg, nfq)
    code = 1
    try:
        for d in cfg.directions:
            nfq.bind(d.queue, cfg.copy_range, cfg.queue_len)
        for d in cfg.directions:  # only now: a queue without a listener drops everything
            p = subprocess.run(["iptables", "-w", "-A", *rule_argv(cfg, d)],
                               capture_output=True, text=True, timeout=20)
            if p.returncode:
                raise DelayLineError(f"iptables -A {shlex.join(rule_argv(cfg, d))}: "
                                     f"{p.stderr.strip()}")
        _say(READY, {"pid": os.getpid(), "scheduling": sched, "warning": warning})
        stdin = sys.stdin.fileno() if cfg.stop_on_stdin_eof else None
        stopping["why"] = line.run(stdin, t0 + cfg.max_seconds,
                                   lambda: _say(STATS, line.stats()))
        code = 0
    except KeyboardInterrupt:
        stopping["why"], code = "SIGINT", 130
    except SystemExit as e:
        stopping["why"], code = "SIGTERM", int(e.code or 143)
    except BaseException as e:
        stopping["why"] = f"error: {type(e).__name__}: {e}"
        raise
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut cleanup short
            signal.signal(s, signal.SIG_IGN)
        out = _shutdown(cfg, line, nfq)
        stamps.close()
        ru1, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        out.update({"reason": stopping["why"], "scheduling": sched, "queue_len": cfg.queue_len,
                    "copy_range": cfg.copy_range, "cpu_s": round(cpu, 3),
                    "wall_s": round(wall, 3), "cpu_share": round(cpu / wall, 4) if wall else 0})
        with contextlib.suppress(OSError):  # stdout may be gone with the controller
            _say(STOPPED, out)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trickles_kit.net.delayline",
                                 description="NFQUEUE delay line (run it inside the namespace "
                                             "it delays; needs root)")
    ap.add_argument("--config", required=True, help="LineConfig as JSON")
    args = ap.parse_args(argv)
    try:
        cfg = LineConfig.from_json(args.config)
    except (ValueError, TypeError) as e:
        ap.error(str(e))
    return serve(cfg)


# ------------------------------------------------------------------------------ controller
def child_env() -> dict[str, str]:
    """Our environment with this checkout's package first on PYTHONPATH (for `python -m`)."""
    root = str(Path(__file__).resolve().parents[2])
    pp = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + pp if pp else ""))


@dataclass
class DelayLine:
    """Starts the line process in namespace `netns` (None: this one) and stops it.

    `start()` returns once the queues are bound *and* the rules are in; `stop()` closes the
    process's stdin (it removes its rules, releases what it holds and reports), escalates to
    SIGTERM and SIGKILL if it does not go, and then removes any rule with its tag itself.
    """

    netns: str | None
    config: LineConfig
    verbose: bool = False
    proc: subprocess.Popen | None = None
    ready: dict = field(default_factory=dict)
    final: dict | None = None
    _out: bytearray = field(default_factory=bytearray)
    _err: object = None

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def child_argv(self) -> list[str]:
        return [*self._prefix(), sys.executable, "-m", "trickles_kit.net.delayline",
                "--config", self.config.to_json()]

    def start(self, timeout: float = 20.0) -> dict:
        argv = self.child_argv()
        if self.verbose:
            print("+ " + shlex.join(argv) + " &", file=sys.stderr)
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 — lives as long as the process
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, env=child_env(), bufsize=0,
                                     start_new_session=True)
        line = self._read_line(time.monotonic() + timeout)
        if not line.startswith(READY):
            if self.proc.poll() is None:
                self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            why = self._stderr_tail()
            self.stop()
            raise DelayLineError(f"the delay line did not start: {why}")
        self.ready = json.loads(line[len(READY):])
        if self.ready.get("warning"):
            print(self.ready["warning"], file=sys.stderr)
        return self.ready

    def _read_line(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._out:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return ""
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._out += chunk
        if b"\n" not in self._out:
            return ""
        line, _, rest = bytes(self._out).partition(b"\n")
        self._out[:] = rest
        return line.decode(errors="replace")

    def _stderr_tail(self) -> str:
        f = self._err
        if f is None:
            return ""
        f.seek(0)  # type: ignore[attr-defined]
        text = f.read().decode(errors="replace").strip()  # type: ignore[attr-defined]
        return text.splitlines()[-1] if text else "(no message)"

    def stop(self, timeout: float = 10.0) -> dict:
        """Stop the process (idempotent); its final counters ({} if it reported none)."""
        p = self.proc
        if p is not None and self.final is None:
            with contextlib.suppress(OSError):
                if p.stdin:
                    p.stdin.close()
            for sig, wait in ((None, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
                if sig is not None and p.poll() is None:
                    with contextlib.suppress(OSError):
                        p.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=wait)
                if p.poll() is not None:
                    break
            self.final = {}
            while (line := self._read_line(time.monotonic() + 1.0)):
                if line.startswith(STOPPED):
                    self.final = json.loads(line[len(STOPPED):])
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                left = remove_tagged_rules(self.config.tag, self.config.chain, self._prefix())
                if left:
                    self.final["rules_removed_by_controller"] = left
            if self._err is not None:
                self._err.close()  # type: ignore[attr-defined]
        return self.final or {}

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) the line process has used so far."""
        try:
            text = Path(f"/proc/{self.proc.pid}/stat").read_text()  # type: ignore[union-attr]
        except (OSError, AttributeError):
            return None
        f = text[text.rindex(")") + 2:].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def live_stats(self, timeout: float = 3.0) -> dict | None:
        """The running line's counters (packets, late releases per direction); None if it
        does not answer in time."""
        p = self.proc
        if p is None or p.poll() is not None or p.stdin is None or self.final is not None:
            return None
        try:
            p.stdin.write(b"stats\n")
            p.stdin.flush()
        except OSError:
            return None
        line = self._read_line(time.monotonic() + timeout)
        return json.loads(line[len(STATS):]) if line.startswith(STATS) else None

    def kernel_counters(self) -> dict[int, dict]:
        """The queues' counters now (read in the line's namespace)."""
        p = subprocess.run([*self._prefix(), "cat", PROC_QUEUES], capture_output=True,
                           text=True, timeout=10)
        return kernel_counters([d.queue for d in self.config.directions], p.stdout)

    def __enter__(self) -> DelayLine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
