"""`trickles serve --workers N`: N processes serve one address and share nothing but the secret.

A Trickles server keeps no per-connection state, so any process holding the secret can answer any
request. The only soft state is the replay history (`core.replay`), one per process: a request
and every replay of it must reach the same worker, or a replay sent to another worker would be
answered. The kernel therefore shards by the *Trickles* source port inside the segment, which a
replay carries unchanged whatever UDP port or route it comes from, never by the UDP 4-tuple.

How a datagram finds its worker (classic BPF, checked on Linux 6.x; `tests/net/test_workers.py`):

* UDP: the N sockets form one `SO_REUSEPORT` group with a program attached by
  `SO_ATTACH_REUSEPORT_CBPF`. The kernel runs it with the UDP header pulled, so offset 0 is the
  segment's source port; it returns an index into the group, whose order is the order of
  `bind` (the supervisor binds socket k for worker k).
* Raw IP (protocol 253 or 6): every raw socket gets every datagram, so each of the N sockets gets
  an `SO_ATTACH_FILTER` program that keeps its share: IP header length by `ldx 4*([0]&0xf)`,
  the destination port at [x+2] must be the service's (other services' segments are dropped by
  the kernel, not counted by an engine), the source port at [x+0] picks the worker.

The share: bucket = port % N; a live bucket is its worker's. When a worker dies, its bucket goes
to the survivors by (port // N) % len(live), so *only the dead worker's ports move*: a survivor
keeps its own ports, and its replay table stays the one that has seen them. (Re-sharding by
port % live_count would move most ports of every worker, and each moved, still fresh request
could then be replayed once.)

The supervisor creates every socket before forking, so each worker inherits its own and closes the
others'; the supervisor keeps all of them to re-shard: on a worker's death it re-attaches the
UDP group's program (any member may replace it) or the survivors' raw filters, closes the dead
raw socket and keeps the dead UDP socket in the group with no share (closing it would move the
group's last socket into its slot and renumber the indices under a running program), draining
what it queued. Datagrams queued in the dead worker's socket are lost; clients recover them as
any loss. The window that remains: a replay of a request that only the dead worker saw may be
answered once by the survivor that inherits its port, until the continuation's freshness limit
(120 s) — the same as one server process restarting, and limited to the dead worker's share.

With no more workers than usable CPUs, worker k is pinned to the k-th of them
(`sched_setaffinity`): unpinned, the kernel woke the workers on one CPU (the waker's, after a
burst of datagrams from one sender) and left them there, taking turns on it while the other CPU
idled (`benchmarks/bench_workers.py` shows it: each worker runnable all the window, half of it
waiting for a CPU, every NET_RX softirq on one CPU). `pin=False` leaves placement to the kernel.

Each worker runs its own `ServerLoop` and `ServerEngine` (built by the caller's `build`, after
the fork): one SYN bucket per worker, so the handshake limits are per worker. Workers die with
the supervisor (`PR_SET_PDEATHSIG`), and report their counters through a pipe when they stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import struct
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trickles_kit.net.raw import RawTransport
from trickles_kit.net.runner import ServerLoop
from trickles_kit.net.transport import Transport
from trickles_kit.net.udp import UdpTransport

SO_ATTACH_FILTER = 26
SO_ATTACH_REUSEPORT_CBPF = 51
PR_SET_PDEATHSIG = 1
ACCEPT = 0xFFFFFFFF  # a socket filter's "keep the whole datagram"
READY = b"R"  # a worker's first byte on its pipe; its counters (JSON) follow when it stops

# classic BPF opcodes (linux/filter.h)
LD_H_ABS, LD_H_IND, LDX_B_MSH, LD_MEM, ST = 0x28, 0x48, 0xB1, 0x60, 0x02
ALU_DIV_K, ALU_MOD_K, JEQ_K, RET_K = 0x34, 0x94, 0x15, 0x06

Insn = tuple[int, int, int, int]  # (code, jt, jf, k)
# what the caller builds in a worker, after the fork: its loop, and what closes its files and
# returns its counters when the loop stops
Build = Callable[[int, Transport], tuple[ServerLoop, Callable[[], Mapping[str, int]]]]
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)


def owner(port: int, n: int, live: Sequence[int]) -> int:
    """The worker that answers Trickles source port `port` (what the kernel programs compute)."""
    b = port % n
    if b in live:
        return b
    return live[(port // n) % len(live)]


def _shard_code(n: int, live: Sequence[int], ret: Callable[[int], Insn]) -> list[Insn]:
    """`owner` in classic BPF, from A = the source port; `ret(w)` ends the program for worker w."""
    code: list[Insn] = [(ST, 0, 0, 0), (ALU_MOD_K, 0, 0, n)]
    for b in live:
        code += [(JEQ_K, 0, 1, b), ret(b)]
    if len(live) < n:  # a dead worker's bucket: spread over the survivors
        code += [(LD_MEM, 0, 0, 0), (ALU_DIV_K, 0, 0, n), (ALU_MOD_K, 0, 0, len(live))]
        for i, w in enumerate(live):
            code += [(JEQ_K, 0, 1, i), ret(w)]
    code.append(ret(live[0]))  # not reached
    return code


def reuseport_program(n: int, live: Sequence[int]) -> list[Insn]:
    """For the UDP group: returns the owner's index (offset 0 = the segment's source port)."""
    return [(LD_H_ABS, 0, 0, 0), *_shard_code(n, live, lambda w: (RET_K, 0, 0, w))]


def raw_filter(n: int, live: Sequence[int], me: int, service_port: int) -> list[Insn]:
    """For worker `me`'s raw socket (offset 0 = the IP header): keep its share of the segments
    addressed to `service_port`, drop the rest."""
    head: list[Insn] = [(LDX_B_MSH, 0, 0, 0), (LD_H_IND, 0, 0, 2),
                        (JEQ_K, 1, 0, service_port), (RET_K, 0, 0, 0), (LD_H_IND, 0, 0, 0)]
    return head + _shard_code(n, live, lambda w: (RET_K, 0, 0, ACCEPT if w == me else 0))


def attach(sock: Any, option: int, program: Sequence[Insn]) -> None:
    """setsockopt(SOL_SOCKET, option, struct sock_fprog) with a classic BPF program."""
    insns = b"".join(struct.pack("=HBBI", *i) for i in program)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buf))
    sock.setsockopt(1, option, fprog)  # SOL_SOCKET


def _drain(sock: Any) -> int:
    """Discard what a socket holds; returns how many datagrams."""
    n = 0
    while True:
        try:
            sock.recv(1)
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            return n
        n += 1


def open_shards(n: int, kind: str, addr: str, port: int, ip_proto: int) -> list[Transport]:
    """N transports on one service address, each with its share programmed in the kernel."""
    if n < 1:
        raise ValueError(f"need at least one worker, got {n}")
    out: list[Transport] = []
    try:
        if kind == "udp":
            for _ in range(n):
                out.append(UdpTransport(addr, port, reuse_port=True))
                port = out[0].port  # type: ignore[attr-defined]  (port 0: the one chosen)
            attach(out[0].sock, SO_ATTACH_REUSEPORT_CBPF, reuseport_program(n, range(n)))
        elif kind == "raw":
            for k in range(n):
                tr = RawTransport(addr, ip_proto)
                out.append(tr)
                attach(tr.sock, SO_ATTACH_FILTER, raw_filter(n, range(n), k, port))
                _drain(tr.sock)  # what arrived before the filter was anybody's
        else:
            raise ValueError(f"unknown transport {kind!r} (use raw or udp)")
    except BaseException:
        for tr in out:
            tr.close()
        raise
    return out


def pin_cpu(k: int, n: int) -> int | None:
    """Pin the calling process (worker `k` of `n`) to one usable CPU; returns it, or None when
    there are more workers than CPUs (then the kernel places them) or pinning is unsupported."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if n < 2 or n > len(cpus):
        return None
    cpu = cpus[k % len(cpus)]
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return None
    return cpu


@dataclass
class WorkerExit:
    """How one worker ended: its pid, a description, and its counters (None if it was killed)."""

    index: int
    pid: int
    how: str
    counters: dict[str, int] | None = None


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the supervisor dies, however it dies (a worker must not outlive it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's own exit path still stops the workers
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class WorkerGroup:
    """The supervisor's view: the sockets, the live workers, and how the dead ones ended."""

    n: int
    kind: str
    addr: str
    port: int
    ip_proto: int = 253
    pin: bool = True  # each worker on its own CPU (when there are enough): see pin_cpu
    transports: list[Transport] = field(default_factory=list)
    live: list[int] = field(default_factory=list)
    pids: dict[int, int] = field(default_factory=dict)
    exits: dict[int, WorkerExit] = field(default_factory=dict)
    stopping: bool = False
    _pipes: dict[int, int] = field(default_factory=dict)
    _idle: list[Transport] = field(default_factory=list)  # dead UDP sockets kept in the group

    def __post_init__(self) -> None:
        self.transports = open_shards(self.n, self.kind, self.addr, self.port, self.ip_proto)
        self.port = getattr(self.transports[0], "port", self.port)
        self.live = list(range(self.n))

    def start(self, build: Build, duration: float | None = None) -> list[int]:
        """Fork the workers (each runs `build(k, transport)`'s loop); returns their pids once
        every one is ready (a worker that dies first raises RuntimeError: `close` the group)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # handled in `wait`, not by handlers
        me = os.getpid()
        for k in range(self.n):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker
                os.close(r)
                self._child(k, build, duration, w, me)
            os.close(w)
            self.pids[k], self._pipes[k] = pid, r
        for k in range(self.n):  # ready = every worker built its loop (and sized its buffer)
            fd = self._pipes[k]
            if not select.select([fd], [], [], 60.0)[0] or os.read(fd, 1) != READY:
                raise RuntimeError(f"worker {k} (pid {self.pids[k]}) did not start")
        return [self.pids[k] for k in range(self.n)]

    def _child(self, k: int, build: Build, duration: float | None, wfd: int,
               parent: int) -> None:
        """A worker's whole life; never returns (os._exit: no parent clean-up runs twice)."""
        code = 1
        try:
            for fd in self._pipes.values():
                os.close(fd)
            for j, tr in enumerate(self.transports):
                if j != k:
                    tr.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _die_with_parent(parent)  # (a SIGTERM now waits, blocked, for the handler below)
            if self.pin:
                pin_cpu(k, self.n)
            loop, finish = build(k, self.transports[k])
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: loop.stop())
            os.write(wfd, READY)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            try:
                loop.run(duration)
            finally:
                counters = dict(finish())
            with contextlib.suppress(OSError):  # (the supervisor is gone)
                os.write(wfd, json.dumps(counters).encode())
            code = 0
        except BaseException:  # noqa: BLE001 - a worker reports and exits, whatever happened
            traceback.print_exc()
        finally:
            os._exit(code)

    def reshard(self) -> None:
        """Give the dead workers' shares to the live ones (in the kernel, now)."""
        live = self.live
        if not live:
            return
        if self.kind == "udp":
            attach(self.transports[live[0]].sock, SO_ATTACH_REUSEPORT_CBPF,
                   reuseport_program(self.n, live))
            for k in range(self.n):
                tr = self.transports[k]
                if k not in live and tr not in self._idle:
                    self._idle.append(tr)
                    _drain(tr.sock)
            return
        for k in live:
            attach(self.transports[k].sock, SO_ATTACH_FILTER,
                   raw_filter(self.n, live, k, self.port))
        for k in range(self.n):
            if k not in live:
                self.transports[k].close()  # (idempotent)

    def _reap(self, log: Callable[[str], None]) -> None:
        """Collect every worker that ended; re-shard if any did while others still run."""
        ended = False
        while self.live:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            k = next((i for i, p in self.pids.items() if p == pid), None)
            if k is None or k not in self.live:
                continue
            self.live.remove(k)
            ended = True
            how = _describe(status)
            self.exits[k] = WorkerExit(k, pid, how, self._read_counters(k))
            if not self.stopping and how != "exited with status 0":  # (not --duration)
                heirs = f"workers {self.live} answer its share" if self.live else "none left"
                log(f"worker {k} (pid {pid}) {how}; {heirs}")
        if ended and not self.stopping:
            self.reshard()

    def _read_counters(self, k: int) -> dict[str, int] | None:
        fd = self._pipes.pop(k)
        data = b""
        try:
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    def stop(self) -> None:
        """Ask every live worker to stop (they finish their pass and report)."""
        self.stopping = True
        for k in self.live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pids[k], signal.SIGTERM)

    def wait(self, log: Callable[[str], None], grace: float = 10.0) -> list[WorkerExit]:
        """Supervise until every worker has ended: SIGINT/SIGTERM stop them all, a death is
        reported and re-sharded. Workers still running `grace` s after a stop are killed."""
        deadline: float | None = None
        while self.live:
            info = signal.sigtimedwait(SIGNALS, 0.2)
            if info is not None and info.si_signo != signal.SIGCHLD and not self.stopping:
                self.stop()
                deadline = time.monotonic() + grace
            self._reap(log)
            for tr in self._idle:
                _drain(tr.sock)
            if deadline is not None and time.monotonic() > deadline:
                for k in self.live:
                    os.kill(self.pids[k], signal.SIGKILL)
                deadline = None
        return [self.exits[k] for k in sorted(self.exits)]

    def close(self) -> None:
        """Kill what still runs, reap it, close every socket and restore the signal mask."""
        for k in list(self.live):
            try:
                os.kill(self.pids[k], signal.SIGKILL)
                os.waitpid(self.pids[k], 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.live.clear()
        for fd in self._pipes.values():
            os.close(fd)
        self._pipes.clear()
        for tr in self.transports:
            tr.close()
        while signal.sigtimedwait(SIGNALS, 0) is not None:
            pass  # a second SIGTERM during the stop must not kill the caller's last words
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def total(exits: Sequence[WorkerExit]) -> dict[str, int]:
    """Every reporting worker's counters, summed (a killed worker's are lost)."""
    out: dict[str, int] = {}
    for e in exits:
        for key, v in (e.counters or {}).items():
            out[key] = out.get(key, 0) + v
    return out
