"""`trickles serve --workers N`: shards by Trickles source port, survives a worker's death.

The transfers are byte-exact through two workers over UDP and raw IP; a SIGKILLed worker's
transfer ends byte-exact, answered by the other; a replay sent from another UDP port reaches the
worker that saw the original (and is refused); no worker outlives the supervisor. Raw sockets
need root: outside CI those cases skip saying so (wire_helpers.need_root).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from wire_helpers import REPO, free_port, need_root, trickles_argv

from trickles_kit.apps.fetch import HttpBody
from trickles_kit.net.ip import aton
from trickles_kit.net.raw import RawTransport
from trickles_kit.net.runner import ClientHost
from trickles_kit.net.transport import Transport
from trickles_kit.net.udp import UdpTransport
from trickles_kit.net.workers import (
    ACCEPT,
    ALU_DIV_K,
    ALU_MOD_K,
    JEQ_K,
    LD_H_ABS,
    LD_H_IND,
    LD_MEM,
    LDX_B_MSH,
    RET_K,
    ST,
    Insn,
    owner,
    raw_filter,
    reuseport_program,
)

pytestmark = pytest.mark.e2e
BIG = 6_000_000
LINE = re.compile(r"worker (\d+) \(pid (\d+)\) stopped; (\d+) requests, (\d+) packets, "
                  r"(\d+) dropped(?: \((.*)\))?")


@pytest.fixture(scope="module")
def www() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tk-workers-"))
    (d / "big.bin").write_bytes(os.urandom(BIG))
    (d / "small.txt").write_bytes(b"two workers, one secret\n" * 3000)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ the programs themselves
def run_bpf(prog: list[Insn], pkt: bytes) -> int:
    """A classic BPF interpreter for the opcodes the programs use (out of bounds: return 0)."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code in (LD_H_ABS, LD_H_IND):
            off = k + (x if code == LD_H_IND else 0)
            if off + 2 > len(pkt):
                return 0
            a = int.from_bytes(pkt[off:off + 2], "big")
        elif code == LDX_B_MSH:
            x = 4 * (pkt[k] & 0xF)
        elif code == ST:
            mem[k] = a
        elif code == LD_MEM:
            a = mem[k]
        elif code == ALU_MOD_K:
            a %= k
        elif code == ALU_DIV_K:
            a //= k
        elif code == JEQ_K:
            pc += jt if a == k else jf
        elif code == RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


@pytest.mark.parametrize("live", [[0, 1, 2], [0, 2], [1], [2]])
def test_programs_compute_owner(live: list[int]) -> None:
    n = 3
    ip = bytes([0x46]) + bytes(23)  # a 24-byte IP header (with options): ldx must skip it
    for port in list(range(0, 700)) + [65535, 65534, 40000]:
        seg = port.to_bytes(2, "big") + (8080).to_bytes(2, "big") + bytes(16)
        w = owner(port, n, live)
        assert w in live
        assert run_bpf(reuseport_program(n, live), seg) == w
        for me in range(n):
            want = ACCEPT if me == w else 0
            assert run_bpf(raw_filter(n, live, me, 8080), ip + seg) == want
            other = port.to_bytes(2, "big") + (8081).to_bytes(2, "big") + bytes(16)
            assert run_bpf(raw_filter(n, live, me, 8080), ip + other) == 0


def test_a_death_moves_only_the_dead_workers_ports() -> None:
    for port in range(5000):
        before, after = owner(port, 4, [0, 1, 2, 3]), owner(port, 4, [0, 2, 3])
        assert after == before or before == 1
    moved = [owner(p, 4, [0, 2, 3]) for p in range(5000) if p % 4 == 1]
    assert {moved.count(w) for w in (0, 2, 3)} <= set(range(400, 434)), "spread evenly"


# ------------------------------------------------------------------ the real thing
@contextlib.contextmanager
def serve(www: Path, tmp: Path, kind: str, port: int, *extra: str
          ) -> Iterator[tuple[subprocess.Popen, list[int]]]:
    """`trickles serve --workers 2`; yields the process and the worker pids (from its ready
    line); always stops it."""
    argv = trickles_argv("serve", "--root", str(www), "--transport", kind, "--port", str(port),
                         "--workers", "2", "--secret-file", str(tmp / "secret.hex"), *extra)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=REPO)
    try:
        line = p.stdout.readline() if p.stdout else ""
        m = re.search(r"\(pids (\d+) (\d+)\)", line)
        if m is None:
            p.kill()
            raise AssertionError(f"server did not start: {line!r} {p.communicate(timeout=5)}")
        yield p, [int(m[1]), int(m[2])]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def stop(p: subprocess.Popen) -> tuple[dict[int, dict], str]:
    """SIGTERM the supervisor; each worker's counters (by its index) and stderr."""
    p.terminate()
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, (out, err)
    per = {}
    for m in LINE.finditer(out):
        drops = dict((kv.rsplit(" ", 1)[0], int(kv.rsplit(" ", 1)[1]))
                     for kv in (m[6] or "").split(", ") if kv)
        per[int(m[1])] = {"pid": int(m[2]), "requests": int(m[3]), "packets": int(m[4]),
                          "drops": drops}
    assert "trickles serve: stopped;" in out.splitlines()[-1], out
    return per, err


def client(kind: str, port: int) -> tuple[Transport, object]:
    if kind == "udp":
        return UdpTransport("127.0.0.1", 0), ("127.0.0.1", port)
    return RawTransport("127.0.0.2"), None


def fetch(kind: str, port: int, paths: list[str], first_port: int, timeout: float = 60.0,
          on_bytes: Callable[[int], None] | None = None,
          sent: list[bytes] | None = None) -> list[bytes]:
    """Fetch `paths` concurrently on Trickles ports first_port, first_port + 1, ..."""
    tr, peer = client(kind, port)
    if sent is not None:  # (the client sends in batches; a lone send too)
        send, send_batch = tr.send, tr.send_batch
        tr.send = lambda seg, ip, pr: sent.append(seg) or send(seg, ip, pr)  # type: ignore
        tr.send_batch = (  # type: ignore[method-assign]
            lambda items: sent.extend(seg for seg, _ in items) or send_batch(items))
    bodies: list[bytearray] = [bytearray() for _ in paths]
    try:
        ch = ClientHost(tr, aton("127.0.0.1"), port, peer, first_port=first_port)
        conns = []
        for path, body in zip(paths, bodies, strict=True):
            def sink(b: bytes, body: bytearray = body) -> None:
                body.extend(b)
                if on_bytes is not None:
                    on_bytes(len(body))
            hb = HttpBody(sink)
            c = ch.open(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), hb)
            hb.on_length = lambda n, e=c.engine: e.set_total(n, ch.clock())
            conns.append(c)
        assert ch.run_until(lambda: all(c.finished is not None for c in conns), timeout)
        assert all(c.engine.done for c in conns)
        ch.close()
        ch.shutdown()
    finally:
        tr.close()
    return [bytes(b) for b in bodies]


def gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("kind", ["udp", "raw"])
def test_two_workers_share_the_connections_byte_exact(www: Path, tmp_path: Path,
                                                      kind: str) -> None:
    if kind == "raw":
        need_root("raw IP protocol 253")
    port = free_port() if kind == "udp" else 18190
    small = (www / "small.txt").read_bytes()
    big = (www / "big.bin").read_bytes()[:BIG]
    with serve(www, tmp_path, kind, port) as (p, pids):
        # ports 30000 + i: owner = port % 2, so both workers serve two connections each
        got = fetch(kind, port, ["/small.txt", "/big.bin", "/small.txt", "/big.bin"], 30000)
        per, _ = stop(p)
    assert [g == w for g, w in zip(got, [small, big, small, big], strict=True)] == [True] * 4
    assert sorted(per) == [0, 1] and [per[0]["pid"], per[1]["pid"]] == pids
    assert per[0]["requests"] > 50 and per[1]["requests"] > 50, per
    assert per[0]["packets"] > 50 and per[1]["packets"] > 50, per
    for pid in pids:
        assert gone(pid), f"worker {pid} outlived the supervisor"


@pytest.mark.parametrize("kind", ["udp", "raw"])
def test_killed_worker_transfer_ends_byte_exact(www: Path, tmp_path: Path, kind: str) -> None:
    if kind == "raw":
        need_root("raw IP protocol 253")
    port = free_port() if kind == "udp" else 18191
    killed: list[int] = []
    with serve(www, tmp_path, kind, port) as (p, pids):
        def kill_once(n: int) -> None:
            if n > 1_000_000 and not killed:
                os.kill(pids[1], signal.SIGKILL)  # the worker of port 30001, mid-transfer
                killed.append(n)
        [got] = fetch(kind, port, ["/big.bin"], 30001, on_bytes=kill_once)
        per, err = stop(p)
    assert killed and killed[0] < BIG // 2
    assert got == (www / "big.bin").read_bytes()
    assert f"worker 1 (pid {pids[1]}) killed by SIGKILL; workers [0] answer its share" in err
    assert 1 not in per, "the killed worker reported nothing"
    # worker 0 saw no request of port 30001 before the kill: all it answered came after
    assert per[0]["requests"] > 100 and per[0]["packets"] > 100, per


def test_replay_from_another_udp_port_reaches_the_same_worker(www: Path,
                                                               tmp_path: Path) -> None:
    port = free_port()
    sent: list[bytes] = []
    with serve(www, tmp_path, "udp", port) as (p, _pids):
        fetch("udp", port, ["/small.txt"], 30001, sent=sent)  # worker 1's
        reqs = [s for s in sent if s[13] & 0x03 == 0]  # neither SYN nor FIN
        assert len(reqs) > 5
        replayers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for s in replayers:
                s.bind(("127.0.0.1", 0))
                s.sendto(reqs[-1], ("127.0.0.1", port))
                s.sendto(reqs[len(reqs) // 2], ("127.0.0.1", port))
            # a barrier: worker 1 answers its socket in order, so once this later fetch
            # (port 30003, worker 1's too) is done, the replays before it were handled
            fetch("udp", port, ["/small.txt"], 30003)
            for s in replayers:
                s.setblocking(False)
                with pytest.raises(BlockingIOError):
                    s.recv(65535)  # a replay earns no answer
        finally:
            for s in replayers:
                s.close()
        per, _ = stop(p)
    assert per[1]["drops"].get("replay", 0) == 6, per
    assert per[0]["requests"] == 0, "the other worker saw neither the original nor a replay"


def test_no_worker_survives_a_killed_supervisor(www: Path, tmp_path: Path) -> None:
    with serve(www, tmp_path, "udp", free_port()) as (p, pids):
        p.kill()
        p.wait(timeout=10)
        for pid in pids:
            assert gone(pid), f"worker {pid} outlived a SIGKILLed supervisor"


def test_bad_worker_count_is_clear() -> None:
    p = subprocess.run(trickles_argv("serve", "--root", ".", "--transport", "udp",
                                     "--workers", "0"), capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert p.returncode == 2 and "--workers must be >= 1" in p.stderr


def test_a_worker_that_cannot_start_fails_the_serve(tmp_path: Path) -> None:
    p = subprocess.run(trickles_argv("serve", "--root", ".", "--transport", "udp", "--port",
                                     "0", "--workers", "2", "--events",
                                     str(tmp_path / "missing" / "ev.jsonl")),
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2 and "did not start" in p.stderr, p.stderr
    assert "trickles serve:" not in p.stdout, "no ready line for a server that is not ready"


def test_pin_cpu_gives_each_worker_its_own_cpu() -> None:
    """Worker k of n <= CPUs runs on the k-th usable CPU only; with more workers than CPUs
    the kernel places them (run in a child: the test process keeps its CPUs)."""
    code = ("import os; from trickles_kit.net.workers import pin_cpu; "
            "cpus = sorted(os.sched_getaffinity(0)); n = len(cpus); "
            "over = pin_cpu(0, n + 1); a = os.sched_getaffinity(0); "
            "k = n - 1; got = pin_cpu(k, n); "
            "print(over, len(a) == n, got == (cpus[k] if n > 1 else None), "
            "os.sched_getaffinity(0) == ({cpus[k]} if n > 1 else set(cpus)))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert p.stdout.split() == ["None", "True", "True", "True"], (p.stdout, p.stderr)
