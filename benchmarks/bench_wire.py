#!/usr/bin/env python3
"""Real-wire benchmarks for trickles_kit on loopback: raw-socket floor, Trickles transfer, TCP.

Measures and records; it never asserts. Needs root (raw IP protocol 253 sockets). Run from the
repository root:

    .venv/bin/python benchmarks/bench_wire.py            # full run: 200 MB, 1/100/1000 conns
    .venv/bin/python benchmarks/bench_wire.py --quick    # 5 MB, 1/10 conns: a smoke run

Sections: (1) the Python raw-socket floor (send+recv pairs/s, no protocol), (2) `trickles serve`
+ `trickles fetch` as separate processes (server packets/s, goodput, CPU), (3) Linux TCP on
loopback with the same byte count, (4) server RSS with 1, 100 and 1000 concurrent connections.
See benchmarks/README.md for what every figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script without an installed package
    sys.path.insert(0, str(REPO))

from bench_core import _meta, tree_of  # noqa: E402  (benchmarks/ is sys.path[0] for a script)

from trickles_kit.apps.fetch import HttpBody  # noqa: E402
from trickles_kit.apps.generated import generated_sha256  # noqa: E402
from trickles_kit.apps.web import OCTETS, http_header  # noqa: E402
from trickles_kit.bench.meta import add_output_args, close_meta, write_result  # noqa: E402
from trickles_kit.core.replay import ReplayHistory  # noqa: E402
from trickles_kit.core.server import ServerConfig  # noqa: E402

PY = sys.executable
MSS = 1448
PROTO = 253
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux; not exported by Python's socket module
SOCKBUF = 4 << 20  # the toolkit's transports use 4 MiB (trickles_kit/net/transport.py)
# Size of a full Trickles data segment (TCP header + response header + continuation + the web
# app's sealed descriptor + DATA chunk of 1448 bytes) as measured from a pcap of /gen: 1636 bytes
# (1656 with the IP header). The floor sends datagrams of this size.
TRICKLES_DATA_SEGMENT = 1636
MAGIC = b"TKFLOOR!"
GEN_SEED = 1
SERVE_RE = re.compile(r"stopped; (\d+) requests, (\d+) packets, (\d+) dropped")
CLK_TCK = os.sysconf("SC_CLK_TCK")

FULL = {"size": 200_000_000, "conns": [1, 100, 1000], "floor_seconds": 3.0, "repeats": 3,
        "tcp_repeats": 5, "rss_file": 262_144}
# quick: every section once, small, in seconds (CI runs it so the script keeps working)
QUICK = {"size": 5_000_000, "conns": [1, 10], "floor_seconds": 0.5, "repeats": 1,
         "tcp_repeats": 1, "rss_file": 262_144}


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def _mb(nbytes: float, secs: float) -> float:
    return _r(nbytes / 1e6 / secs, 2) if secs > 0 else 0.0


def _rel(path: str) -> str:
    """A path relative to the repository (results carry no machine-specific absolute paths)."""
    return os.path.relpath(path, REPO) if os.path.isabs(path) else path


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================ processes
def _child_env(tree: Path = REPO) -> dict:
    """The environment of a child that runs `tree`'s trickles_kit (this checkout's, or a
    --baseline-tree's)."""
    pp = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(tree) + (os.pathsep + pp if pp else ""))


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process, in seconds (from /proc/<pid>/stat)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def _proc_status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _machine_cpu() -> tuple[float, float, float]:
    """(task, irq, steal) CPU seconds of the whole machine so far, all CPUs (/proc/stat):
    user+nice+system, irq+softirq (loopback delivery runs there, charged to no process),
    and time stolen by the hypervisor."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0, 0.0, 0.0
    v = [int(x) for x in f[:8]]  # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK


class Others:
    """CPU the rest of the machine used meanwhile: busy time minus what our processes used."""

    def __init__(self) -> None:
        self.m0 = _machine_cpu()
        self.t0 = time.perf_counter()

    def result(self, ours_cpu_s: float) -> dict:
        m1 = _machine_cpu()
        wall = time.perf_counter() - self.t0
        task, irq, steal = (b - a for a, b in zip(self.m0, m1, strict=True))
        # a process's CPU time includes softirq work done in its context (loopback delivery),
        # which /proc/stat books as softirq: so count both on the machine's side
        other = task + irq - ours_cpu_s
        return {"window_s": _r(wall), "machine_task_cpu_s": _r(task, 2),
                "other_cpu_s": _r(other, 2), "other_cpu_cores": _r(other / wall, 2),
                "irq_softirq_cpu_s": _r(irq, 2), "steal_cpu_s": _r(steal, 2)}


def _raw_drops(ip: str) -> int | None:
    """Receive-queue drops of the IP-protocol-253 raw sockets bound to `ip` (/proc/net/raw)."""
    total = None
    try:
        lines = Path("/proc/net/raw").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) < 13:
            continue
        addr, _, proto = f[1].partition(":")
        if int(proto, 16) != PROTO:
            continue
        if socket.inet_ntoa(struct.pack("<I", int(addr, 16))) == ip:
            total = (total or 0) + int(f[-1])
    return total


def _stop(p: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL; always reaps."""
    if p is None or p.returncode is not None:
        return
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


class Server:
    """A `trickles serve` process; stdout/stderr go to files (no pipe can fill and block it)."""

    def __init__(self, root: Path, addr: str, port: int, logdir: Path, tag: str,
                 tree: Path = REPO) -> None:
        self.tree = tree
        self.argv = [PY, "-m", "trickles_kit.cli", "serve", "--root", str(root), "--transport",
                     "raw", "--addr", addr, "--port", str(port), "--mss", str(MSS)]
        self.out = logdir / f"{tag}.out"
        self.err = logdir / f"{tag}.err"
        self.p: subprocess.Popen | None = None
        self.final: dict | None = None

    def start(self, timeout: float = 20.0) -> None:
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.p = subprocess.Popen(self.argv, stdout=o, stderr=e, cwd=self.tree,
                                      env=_child_env(self.tree))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "trickles serve:" in self.out.read_text():
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"trickles serve did not start: {self.out.read_text()[-500:]!r} "
                           f"{self.err.read_text()[-1500:]!r}")

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def cpu_s(self) -> float | None:
        return _proc_cpu_s(self.pid)

    def rss_kib(self) -> int | None:
        return _proc_status_kib(self.pid, "VmRSS")

    def wait_idle(self, quiet: float = 0.3, limit: float = 15.0) -> float:
        """Wait until the server's CPU time stops rising (it has answered its queue)."""
        t0 = time.monotonic()
        last = self.cpu_s()
        while time.monotonic() - t0 < limit:
            time.sleep(quiet)
            now = self.cpu_s()
            if now is None or now == last:
                break
            last = now
        return time.monotonic() - t0

    def stop(self) -> dict:
        """Stop (SIGTERM, then SIGKILL) and parse the final counters line."""
        _stop(self.p)
        text = self.out.read_text() if self.out.exists() else ""
        m = SERVE_RE.search(text)
        self.final = ({"requests": int(m[1]), "packets": int(m[2]), "dropped": int(m[3])}
                      if m else {"error": "no final line", "stdout": text[-500:],
                                 "stderr": self.err.read_text()[-1500:]})
        return self.final


def _run_child(argv: list[str], timeout: float, stdout: Path,
               poll: Callable[[], None] | None = None,
               tree: Path = REPO) -> tuple[int, float, float]:
    """Run a process to completion (bounded); returns (exit code, CPU seconds, wall seconds).

    CPU comes from wait4's rusage of that child alone. `poll` runs every 20 ms meanwhile.
    """
    t0 = time.perf_counter()
    with open(stdout, "w") as o:
        p = subprocess.Popen(argv, stdout=o, stderr=subprocess.STDOUT, cwd=tree,
                             env=_child_env(tree))
    try:
        end = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                return p.returncode, ru.ru_utime + ru.ru_stime, time.perf_counter() - t0
            if time.monotonic() > end:
                raise TimeoutError(f"{argv[:6]} did not finish in {timeout} s")
            if poll is not None:
                poll()
            time.sleep(0.02)
    finally:
        _stop(p)


# ============================================================================ 1. floor
def _raw_sock(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO)
    for forced, opt in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, forced, SOCKBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, SOCKBUF)
    s.bind((ip, 0))
    return s


def _floor_one(src: str, dst: str, size: int, seconds: float, batch: int) -> dict:
    """Send `batch` datagrams, receive `batch`, repeat, for `seconds`: pairs/s in one process.

    Non-blocking receive, as the server's transport does; on loopback the datagram is queued
    before sendto returns, so a select() is needed only if it is not (counted in `waits`).
    """
    a, b = _raw_sock(src), _raw_sock(dst)
    b.setblocking(False)
    payload = MAGIC + os.urandom(size - len(MAGIC))
    sendto, recv, to = a.sendto, b.recv, (dst, 0)
    lost = foreign = waits = 0

    def slow_recv() -> bytes | None:
        nonlocal waits
        waits += 1
        if select.select([b], [], [], 1.0)[0]:
            return recv(65535)
        return None

    try:
        for _ in range(2000):  # warm-up
            sendto(payload, to)
            try:
                recv(65535)
            except BlockingIOError:
                slow_recv()
        inner = max(1, 1024 // batch)
        n = 0
        waits = 0
        others = Others()
        c0, t0 = time.process_time(), time.perf_counter()
        deadline = t0 + seconds
        while True:
            for _ in range(inner):
                for _ in range(batch):
                    sendto(payload, to)
                for _ in range(batch):
                    try:
                        d = recv(65535)
                    except BlockingIOError:
                        d = slow_recv()
                        if d is None:
                            lost += 1
                            continue
                    if d[20:28] != MAGIC:
                        foreign += 1
            n += inner * batch
            if time.perf_counter() >= deadline:
                break
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        load = others.result(cpu)
    finally:
        a.close()
        b.close()
    return {"load": load, "batch": batch, "pairs": n, "wall_s": _r(wall, 4), "cpu_s": _r(cpu, 4),
            "pairs_per_s": round(n / wall), "us_per_pair": _r(wall / n * 1e6),
            "pairs_per_cpu_s": round(n / cpu) if cpu > 0 else None,
            "cpu_us_per_pair": _r(cpu / n * 1e6),
            "payload_mb_per_s": _mb(n * MSS, wall), "datagram_mb_per_s": _mb(n * size, wall),
            "recv_waits": waits, "lost": lost, "foreign_datagrams": foreign}


def _floor_recv_child(dst: str, seconds: float) -> dict:
    """Receiver process of the two-process floor: count datagrams until the sender goes quiet."""
    b = _raw_sock(dst)
    b.setblocking(False)
    print("ready", flush=True)
    n = foreign = 0
    first = last = 0.0
    c0 = None
    hard = time.monotonic() + seconds + 10
    recv = b.recv
    while time.monotonic() < hard:
        try:
            d = recv(65535)
        except BlockingIOError:
            if not select.select([b], [], [], 0.5)[0] and n:
                break  # the sender has gone quiet
            continue
        if d[20:28] != MAGIC:
            foreign += 1
            continue
        if not n:
            first, c0 = time.perf_counter(), time.process_time()
        n += 1
        last = time.perf_counter()
    cpu = time.process_time() - c0 if c0 is not None else 0.0
    b.close()
    span = last - first
    return {"received": n, "span_s": _r(span, 4), "cpu_s": _r(cpu, 4),
            "recv_per_s": round(n / span) if span > 0 else 0, "foreign_datagrams": foreign}


def _floor_two(src: str, dst: str, size: int, seconds: float) -> dict:
    """Sender here, receiver in another process: each side's rate, and what got lost."""
    child = subprocess.Popen([PY, str(Path(__file__).resolve()), "--floor-recv-child", dst,
                              str(seconds)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env=_child_env())
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # "ready" (or EOF if it died)
        if "ready" not in line:
            return {"error": f"receiver did not start: {line!r}"}
        a = _raw_sock(src)
        payload = MAGIC + os.urandom(size - len(MAGIC))
        sendto, to = a.sendto, (dst, 0)
        n = enobufs = 0
        others = Others()
        c0, t0 = time.process_time(), time.perf_counter()
        deadline = t0 + seconds
        while time.perf_counter() < deadline:
            for _ in range(256):
                try:
                    sendto(payload, to)
                    n += 1
                except OSError:
                    enobufs += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        a.close()
        out, _ = child.communicate(timeout=seconds + 20)
        rx = json.loads(out.strip().splitlines()[-1])
        load = others.result(cpu + rx["cpu_s"])
    finally:
        _stop(child)
    return {"load": load, "sender": {"sent": n, "send_errors": enobufs, "wall_s": _r(wall, 4),
                       "cpu_s": _r(cpu, 4), "send_per_s": round(n / wall),
                       "payload_mb_per_s": _mb(n * MSS, wall)},
            "receiver": {**rx, "payload_mb_per_s": _mb(rx["received"] * MSS, rx["span_s"])},
            "lost": n - rx["received"], "lost_share": _r((n - rx["received"]) / n, 4) if n else 0}


def bench_floor(o: dict) -> dict:
    src, dst, size, secs = o["server_addr"], o["client_addr"], o["floor_size"], o["floor_seconds"]
    res: dict = {"datagram_bytes": size, "ip_datagram_bytes": size + 20, "payload_bytes": MSS,
                 "addresses": [src, dst], "ip_proto": PROTO, "sockbuf_bytes": SOCKBUF,
                 "seconds": secs}
    res["one_process"] = _floor_one(src, dst, size, secs, 1)
    res["one_process_batch64"] = _floor_one(src, dst, size, secs, 64)
    res["two_processes"] = _floor_two(src, dst, size, secs)
    res["pairs_per_s"] = res["one_process"]["pairs_per_s"]
    res["pairs_per_cpu_s"] = res["one_process"]["pairs_per_cpu_s"]
    return res


# ============================================================================ 2. Trickles
def _expected_sha(size: int) -> str:
    return generated_sha256(size, GEN_SEED)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _startup_cpu(logdir: Path, tree: Path = REPO) -> float:
    """CPU seconds of an interpreter importing what `trickles fetch` imports (best of 3)."""
    argv = [PY, "-c", "import trickles_kit.cli, trickles_kit.apps.fetch, trickles_kit.net.raw"]
    vals = [_run_child(argv, 60, logdir / "startup.out", tree=tree)[1] for _ in range(3)]
    return min(vals)


def _one_transfer(o: dict, tmp: Path, run: int, startup_cpu: float,
                  spy: str | None = None, tree: Path = REPO) -> dict:
    size, port = o["size"], o["port"]
    url = f"http://{o['server_addr']}:{port}/gen?size={size}&seed={GEN_SEED}"
    body = tmp / "body.bin"
    srv = Server(tmp / "www", o["server_addr"], port, tmp, f"serve{run}", tree)
    spy_p = None
    res: dict = {"run": run}
    try:
        srv.start()
        rss0 = srv.rss_kib()
        if spy:
            spy_p = subprocess.Popen([spy, "record", "--pid", str(srv.pid), "--format", "raw",
                                      "--rate", "250", "--nonblocking", "-o",
                                      str(tmp / "server.spy")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu0 = srv.cpu_s()
        sdrop0 = _raw_drops(o["server_addr"])
        cdrops: list[int] = []

        def watch_client() -> None:  # the fetch's socket dies with it: keep the last reading
            v = _raw_drops(o["client_addr"])
            if v is not None:
                cdrops.append(v)

        fetch = [PY, "-m", "trickles_kit.cli", "fetch", url, "-o", str(body), "--transport",
                 "raw", "--local-addr", o["client_addr"], "--mss", str(MSS), "--json",
                 "--timeout", str(o["transfer_timeout"])]
        if spy:
            fetch = [spy, "record", "--format", "raw", "--rate", "250", "-o",
                     str(tmp / "client.spy"), "--", *fetch]
        others = Others()
        rc, ccpu, cwall = _run_child(fetch, o["transfer_timeout"] + 30, tmp / "fetch.out",
                                     watch_client, tree)
        cpu1 = srv.cpu_s()
        load = others.result(ccpu + (cpu1 or 0) - (cpu0 or 0))
        idle_wait = srv.wait_idle()
        sdrop1 = _raw_drops(o["server_addr"])
        cpu2 = srv.cpu_s()
        rss1 = srv.rss_kib()
        hwm = _proc_status_kib(srv.pid, "VmHWM")
        final = srv.stop()
    finally:
        srv.stop()
        _stop(spy_p)
    text = (tmp / "fetch.out").read_text()
    try:
        j = json.loads(text[text.index("{") : text.rindex("}") + 1])
    except ValueError:
        return {**res, "error": f"fetch exit {rc}: {text[-1500:]}"}
    expected = _expected_sha(size)
    file_sha = _file_sha(body) if body.exists() else None
    with contextlib.suppress(OSError):
        body.unlink()
    secs = j["seconds"]
    hdr = len(http_header(200, OCTETS, size))
    data_pkts = math.ceil((size + hdr) / MSS)
    res.update({
        "load": load, "fetch_exit": rc, "ok": j["ok"], "status": j["status"], "bytes": j["bytes"],
        "sha256_ok": j["sha256"] == expected and file_sha == expected,
        "transfer_s": secs, "fetch_process_wall_s": _r(cwall),
        "goodput_mb_per_s": _mb(j["bytes"], secs),
        "server": final,
        "server_socket_drops": (sdrop1 - sdrop0) if None not in (sdrop0, sdrop1) else None,
        "client_socket_drops_last_seen": cdrops[-1] if cdrops else None,
        "stream_bytes": size + hdr,
        "data_packets_needed": data_pkts,
    })
    if "packets" in final:
        pk, rq = final["packets"], final["requests"]
        scpu = cpu2 - cpu0
        res.update({
            "extra_packets": pk - data_pkts,
            "extra_share": _r((pk - data_pkts) / pk, 4) if pk else None,
            "server_packets_per_s": round(pk / secs),
            "server_data_packets_per_s": round(data_pkts / secs),
            "server_requests_per_s": round(rq / secs),
            "server_cpu_s": _r(scpu),
            "server_cpu_s_during_transfer": _r(cpu1 - cpu0),
            "server_cpu_s_after_fetch_exit": _r(cpu2 - cpu1),
            "server_idle_wait_s": _r(idle_wait),
            "server_cpu_share_of_transfer": _r((cpu1 - cpu0) / secs, 3),
            "server_cpu_ms_per_mb": _r(scpu * 1e3 / (j["bytes"] / 1e6)),
            "server_cpu_us_per_packet": _r(scpu * 1e6 / pk) if pk else None,
            "server_cpu_us_per_request": _r(scpu * 1e6 / rq) if rq else None,
            # what the server would send if it were never idle (CPU-bound estimate)
            "server_packets_per_cpu_s": round(pk / scpu) if scpu > 0 else None,
        })
    res.update({
        "client_cpu_s": _r(ccpu), "client_startup_cpu_s": _r(startup_cpu),
        "client_cpu_share_of_transfer": _r((ccpu - startup_cpu) / secs, 3) if secs else None,
        "client_cpu_ms_per_mb": _r((ccpu - startup_cpu) * 1e3 / (j["bytes"] / 1e6)),
        "client_packets_per_cpu_s": round(final["packets"] / (ccpu - startup_cpu))
        if "packets" in final and ccpu > startup_cpu else None,
        "server_rss_kib_before": rss0, "server_rss_kib_after": rss1, "server_vmhwm_kib": hwm,
        "fetch": {k: j[k] for k in ("retransmissions", "splits", "terminations", "recoveries",
                                    "timeouts", "final_cwnd", "phase")},
    })
    return res


def _trickles_summary(o: dict, runs: list[dict]) -> dict:
    good = [r for r in runs if "server_packets_per_s" in r]
    res: dict = {"size_bytes": o["size"], "url_path": f"/gen?size={o['size']}&seed={GEN_SEED}",
                 "mss": MSS, "addresses": [o["server_addr"], o["client_addr"]],
                 "runs": runs}
    if good:
        def med(k: str) -> float:
            return _r(statistics.median(r[k] for r in good), 3)

        res.update({
            "all_ok": all(r.get("ok") and r.get("sha256_ok") for r in runs),
            "median_server_packets_per_s": med("server_packets_per_s"),
            "best_server_packets_per_s": max(r["server_packets_per_s"] for r in good),
            "median_server_data_packets_per_s": med("server_data_packets_per_s"),
            "median_server_requests_per_s": med("server_requests_per_s"),
            "median_goodput_mb_per_s": med("goodput_mb_per_s"),
            "best_goodput_mb_per_s": max(r["goodput_mb_per_s"] for r in good),
            "median_server_cpu_ms_per_mb": med("server_cpu_ms_per_mb"),
            "median_server_cpu_share": med("server_cpu_share_of_transfer"),
            "median_client_cpu_share": med("client_cpu_share_of_transfer"),
            "median_client_cpu_ms_per_mb": med("client_cpu_ms_per_mb"),
            "median_extra_share": med("extra_share"),
            "median_server_packets_per_cpu_s": med("server_packets_per_cpu_s"),
            "median_client_packets_per_cpu_s": med("client_packets_per_cpu_s"),
        })
    return res


def bench_trickles(o: dict, tmp: Path) -> dict:
    """`repeats` transfers of this checkout; with a baseline tree (o["baseline_tree"]) as many
    of it, interleaved (baseline first in each pair), and this/baseline ratios of the medians."""
    (tmp / "www").mkdir(exist_ok=True)
    base = o.get("baseline_dir")
    trees = [("this", REPO)] + ([("baseline", Path(base))] if base else [])
    startup = {tag: _startup_cpu(tmp, tree) for tag, tree in trees}
    runs: dict[str, list[dict]] = {tag: [] for tag, _ in trees}
    for i in range(o["repeats"]):
        for tag, tree in reversed(trees):
            _log(f"      transfer {i + 1}/{o['repeats']} ({tag}) ...")
            try:
                r = _one_transfer(o, tmp, i, startup[tag], tree=tree)
            except (RuntimeError, TimeoutError, OSError) as e:
                r = {"run": i, "error": f"{type(e).__name__}: {e}"}
            runs[tag].append(r)
    res = _trickles_summary(o, runs["this"])
    if base:
        b = _trickles_summary(o, runs["baseline"])
        res["baseline"] = {"tree": o["baseline_tree"], **b}
        res["this_over_baseline"] = {
            k: _r(res[k] / b[k], 3) if res.get(k) and b.get(k) else None
            for k in ("median_goodput_mb_per_s", "median_server_packets_per_s",
                      "median_server_packets_per_cpu_s", "median_client_packets_per_cpu_s")}
    return res


def _tcp_info(s: socket.socket) -> dict:
    """snd_mss and segs_out from struct tcp_info (offsets of linux/tcp.h)."""
    try:
        b = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return {}
    out = {"snd_mss": struct.unpack_from("I", b, 16)[0]}
    if len(b) >= 144:
        out["segs_out"] = struct.unpack_from("I", b, 136)[0]
        out["total_retrans"] = struct.unpack_from("I", b, 100)[0]
    return out


def _tcp_send_child(size: int, maxseg: int) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if maxseg:
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, maxseg)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(30)
    print(ls.getsockname()[1], flush=True)
    c, _ = ls.accept()
    c.settimeout(60)
    buf = memoryview(os.urandom(4 << 20))
    c0, t0 = time.process_time(), time.perf_counter()
    left = size
    while left:
        n = min(left, len(buf))
        c.sendall(buf[:n])
        left -= n
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # wait for the client's close, so the timing covers delivery
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    info = _tcp_info(c)
    info["maxseg_opt"] = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    c.close()
    ls.close()
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "tcp_info": info}), flush=True)


def _tcp_once(size: int, maxseg: int) -> dict:
    child = subprocess.Popen([PY, str(Path(__file__).resolve()), "--tcp-child", str(size),
                              str(maxseg)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env=_child_env())
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if maxseg:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, maxseg)
        s.settimeout(60)
        buf = bytearray(4 << 20)
        got = 0
        c0, t0 = time.process_time(), time.perf_counter()
        s.connect(("127.0.0.1", port))
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        client_mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        s.close()
        out, _ = child.communicate(timeout=60)
        srv = json.loads(out.strip().splitlines()[-1])
    finally:
        _stop(child)
    info = srv["tcp_info"]
    r = {"bytes": got, "complete": got == size, "wall_s": _r(wall, 4),
         "mb_per_s": _mb(got, wall), "client_cpu_s": _r(cpu), "sender_cpu_s": _r(srv["cpu_s"]),
         "sender_cpu_ms_per_mb": _r(srv["cpu_s"] * 1e3 / (got / 1e6)),
         "client_maxseg": client_mss, "sender_tcp_info": info}
    if info.get("segs_out"):
        r["sender_segments_per_s"] = round(info["segs_out"] / wall)
    return r


def bench_tcp(o: dict) -> dict:
    size = o["size"]
    res: dict = {"size_bytes": size, "method": "Python sender process (sendall of a 4 MiB "
                 "buffer, repeated) to a Python receiver (recv_into a 4 MiB bytearray) on "
                 "127.0.0.1; time from connect to EOF"}
    for name, maxseg in (("default_mss", 0), ("maxseg_1448", MSS)):
        runs = []
        for _ in range(o["tcp_repeats"]):
            try:
                runs.append(_tcp_once(size, maxseg))
            except (OSError, ValueError, subprocess.TimeoutExpired) as e:
                runs.append({"error": f"{type(e).__name__}: {e}"})
        good = [r for r in runs if "mb_per_s" in r]
        res[name] = {"runs": runs}
        if good:
            res[name]["median_mb_per_s"] = _r(statistics.median(r["mb_per_s"] for r in good), 2)
            res[name]["best_mb_per_s"] = max(r["mb_per_s"] for r in good)
    return res


# ============================================================================ 4. RSS
class _Body:
    """HTTP splitter that hashes the body and never raises into the client loop."""

    def __init__(self) -> None:
        self.http = HttpBody(lambda _b: None)
        self.error: str | None = None

    def __call__(self, data: bytes) -> None:
        if self.error is None:
            try:
                self.http(data)
            except ValueError as e:
                self.error = str(e)


def _rss_round(o: dict, srv: Server, tr, host, n: int, size: int, seeds: list[int],
               expected: dict[int, str]) -> dict:
    """N concurrent fetches of `size` bytes from one ClientHost; the server's RSS sampled
    every ~0.1 s meanwhile (and 1 s after the FINs)."""
    rss_before, cpu0 = srv.rss_kib(), srv.cpu_s()
    tx0, rx0 = tr.counters["tx"], tr.counters["rx"]
    unk0 = host.counters["unknown_port"]
    sd0, cd0 = _raw_drops(o["server_addr"]), _raw_drops(o["client_addr"])
    samples: list[int] = []

    def sample() -> None:
        v = srv.rss_kib()
        if v is not None:
            samples.append(v)

    bodies = []
    conns = []
    others = Others()
    me0 = time.process_time()
    t0 = time.monotonic()
    for i in range(n):
        seed = seeds[i % len(seeds)]
        req = (f"GET /gen?size={size}&seed={seed} HTTP/1.1\r\nHost: "
               f"{o['server_addr']}:{o['port']}\r\n\r\n").encode()
        b = _Body()
        bodies.append((seed, b))
        conns.append(host.open(req, b))
    opened = time.monotonic() - t0
    timeout = max(60.0, 30.0 + 0.3 * n + size / 2e6)
    finished = host.run_until(host.all_finished, timeout, sample)
    wall = time.monotonic() - t0
    load = others.result(time.process_time() - me0 + (srv.cpu_s() or 0) - (cpu0 or 0))
    sample()
    phases: dict[str, int] = {}
    ok = bad_status = bad_body = timeouts = recoveries = retrans = 0
    errors: list[str] = []
    for c, (seed, b) in zip(conns, bodies, strict=True):
        ph = c.engine.phase if c.finished is not None else f"unfinished:{c.engine.phase}"
        phases[ph] = phases.get(ph, 0) + 1
        cc = c.engine.counters
        timeouts += cc["timeouts"]
        recoveries += cc["recoveries"]
        retrans += cc["pred.retransmit"]
        h = b.http
        if b.error and len(errors) < 5:
            errors.append(b.error)
        if c.done and h.status == 200 and h.body_bytes == size and (
                h.sha.hexdigest() == expected[seed]):
            ok += 1
        elif c.done and h.status != 200:
            bad_status += 1
        elif c.done:
            bad_body += 1
    requests = tr.counters["tx"] - tx0
    sd1, cd1 = _raw_drops(o["server_addr"]), _raw_drops(o["client_addr"])
    rx = tr.counters["rx"] - rx0
    host.close(linger=0.5)
    time.sleep(1.0)
    return {
        "load": load, "connections": n, "bytes_each": size, "all_finished_in_time": finished,
        "timeout_s": timeout, "ok": ok, "failed_or_unfinished": n - ok,
        "bad_status": bad_status, "bad_body": bad_body, "phases": phases,
        "sink_errors": errors, "open_s": _r(opened), "wall_s": _r(wall),
        "aggregate_goodput_mb_per_s": _mb(ok * size, wall),
        "client_requests_sent": requests, "client_segments_received": rx,
        "client_unknown_port": host.counters["unknown_port"] - unk0,
        "client_send_drops": {k: v for k, v in tr.counters.items() if k.startswith("send_drop")},
        "server_socket_drops": (sd1 - sd0) if None not in (sd0, sd1) else None,
        "client_socket_drops": (cd1 - cd0) if None not in (cd0, cd1) else None,
        "conn_timeouts": timeouts, "conn_recoveries": recoveries,
        "conn_retransmissions": retrans,
        "server_cpu_s": _r((srv.cpu_s() or 0) - (cpu0 or 0)),
        "server_rss_kib_before": rss_before,
        "server_rss_kib_peak_during": max(samples) if samples else None,
        "server_rss_kib_after": srv.rss_kib(),
        "rss_samples": len(samples),
    }


def _rss_server(o: dict, tmp: Path, tag: str, plan: list[tuple[int, int]], seeds: list[int],
                expected: dict[int, str]) -> dict:
    """One fresh `trickles serve`, one client transport + ClientHost, rounds (n, bytes each)."""
    from trickles_kit.net.ip import aton
    from trickles_kit.net.raw import RawTransport
    from trickles_kit.net.runner import ClientHost

    srv = Server(tmp / "www", o["server_addr"], o["port"], tmp, tag)
    tr = host = None
    out: dict = {"rounds": []}
    try:
        srv.start()
        time.sleep(0.3)
        out["server_rss_kib_idle"] = srv.rss_kib()
        tr = RawTransport(o["client_addr"])
        host = ClientHost(tr, aton(o["server_addr"]), o["port"])
        cum = 0
        for n, size in plan:
            _log(f"      {n} concurrent connection(s) x {size:,} bytes ...")
            r = _rss_round(o, srv, tr, host, n, size, seeds, expected)
            cum += r["client_requests_sent"]
            r["cumulative_requests"] = cum
            idle = out["server_rss_kib_idle"]
            if r["server_rss_kib_after"] and idle:
                r["rss_growth_kib_since_idle"] = r["server_rss_kib_after"] - idle
                r["rss_growth_bytes_per_request_since_idle"] = _r(
                    r["rss_growth_kib_since_idle"] * 1024 / cum, 1)
            out["rounds"].append(r)
        out["server_vmhwm_kib"] = _proc_status_kib(srv.pid, "VmHWM")
        out["server_final"] = srv.stop()
    finally:
        if host is not None:
            host.shutdown()
        if tr is not None:
            tr.close()
        srv.stop()
    return out


def bench_rss(o: dict, tmp: Path) -> dict:
    (tmp / "www").mkdir(exist_ok=True)
    fsize = o["rss_file"]
    seeds = list(range(1, 9))  # a few seeds: distinct bodies, within the generator's cache
    expected = {s: generated_sha256(fsize, s) for s in seeds}
    cfg = ServerConfig()
    res: dict = {
        "file_bytes": fsize, "url_path": f"/gen?size={fsize}&seed=1..8",
        "replay_history": {
            "max_entries": cfg.replay_entries, "freshness_s": cfg.freshness,
            "entry_bytes_upper_bound": ReplayHistory.ENTRY_BYTES,
            "memory_bound_mib": _r(cfg.replay_entries * ReplayHistory.ENTRY_BYTES / 2**20, 1),
            "note": "grows with the request rate (entries live up to freshness_s), not with "
                    "connections",
        },
    }
    res.update(_rss_server(o, tmp, "serve_rss", [(n, fsize) for n in o["conns"]], seeds,
                           expected))
    # control: the same number of requests as the largest round, over ONE connection, on a
    # fresh server: what the RSS does when only the request count grows
    big = max(o["conns"]) * fsize
    _log("      control: one connection, same bytes as the largest round ...")
    ctl = _rss_server(o, tmp, "serve_rss_control", [(1, big)], [1],
                      {1: generated_sha256(big, 1)})
    res["control_one_connection"] = ctl
    rounds = res["rounds"]
    if rounds:
        peaks = [r["server_rss_kib_peak_during"] for r in rounds
                 if r["server_rss_kib_peak_during"]]
        res["rss_peak_spread_kib"] = (max(peaks) - min(peaks)) if peaks else None
    return res


# ============================================================================ profile
def _spy_top(path: Path, n: int = 20) -> dict:
    """Self (leaf) and inclusive sample shares per function from py-spy's raw output."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not stack or not cnt.isdigit():
            continue
        c = int(cnt)
        total += c
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c

    def top(d: dict[str, int]) -> list[list]:
        return [[f, _r(v / total, 4)] for f, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {"samples": total, "self": top(self_c), "inclusive": top(incl)}


def bench_profile(o: dict, tmp: Path) -> dict:
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not os.path.exists(spy):
        return {"error": "py-spy not found (pip install py-spy into the venv)"}
    (tmp / "www").mkdir(exist_ok=True)
    po = dict(o, size=o["profile_size"])
    r = _one_transfer(po, tmp, 99, _startup_cpu(tmp), spy=spy)
    out = {"tool": f"py-spy record --rate 250 --format raw ({_rel(spy)})",
           "size_bytes": po["size"],
           "transfer": {k: r.get(k) for k in ("ok", "sha256_ok", "transfer_s",
                                               "goodput_mb_per_s", "server_packets_per_s",
                                               "server_cpu_share_of_transfer",
                                               "client_cpu_share_of_transfer")},
           "note": "sampled while profiled: py-spy slows both processes a little; the figures "
                   "of section 2 are the unprofiled ones"}
    for side in ("server", "client"):
        p = tmp / f"{side}.spy"
        out[side] = _spy_top(p) if p.exists() else {"error": "no samples written"}
    return out


# ============================================================================ report
def _table(res: dict) -> str:
    L: list[str] = []
    f = res.get("floor")
    if f:
        if "error" in f:
            L.append(f"1. Raw-socket floor: {f['error']}")
        else:
            a, b = f["one_process"], f["one_process_batch64"]
            L.append(f"1. Python raw-socket floor ({f['datagram_bytes']}-byte IP-proto-253 "
                     f"datagrams, {f['addresses'][0]} -> {f['addresses'][1]})")
            L.append(f"   one process, send+recv pairs   {a['pairs_per_s']:>9,} pairs/s  "
                     f"{a['payload_mb_per_s']:>7.1f} MB/s payload  ({a['us_per_pair']} us/pair; "
                     f"other load {a['load']['other_cpu_cores']} cores)")
            L.append(f"   one process, batches of 64     {b['pairs_per_s']:>9,} pairs/s  "
                     f"{b['payload_mb_per_s']:>7.1f} MB/s payload  (other load "
                     f"{b['load']['other_cpu_cores']} cores)")
            t = f["two_processes"]
            if "error" in t:
                L.append(f"   two processes: {t['error']}")
            else:
                L.append(f"   two processes: sender {t['sender']['send_per_s']:,}/s, receiver "
                         f"{t['receiver']['recv_per_s']:,}/s "
                         f"({t['receiver']['payload_mb_per_s']} MB/s), lost "
                         f"{t['lost_share']:.1%}")
    t = res.get("trickles")
    if t:
        L.append(f"2. Trickles transfer, {t['size_bytes'] / 1e6:.0f} MB, MSS {t['mss']}, "
                 f"serve + fetch as processes (raw 253)")
        for r in t["runs"]:
            if "error" in r:
                L.append(f"   run {r['run']}: {r['error'][:300]}")
                continue
            L.append(f"   run {r['run']}: ok {r['ok']} sha {r['sha256_ok']}  "
                     f"{r['transfer_s']:.2f} s  {r['goodput_mb_per_s']:.1f} MB/s  server "
                     f"{r.get('server_packets_per_s', 0):,} pkt/s "
                     f"({r.get('server_requests_per_s', 0):,} req/s), CPU server "
                     f"{r.get('server_cpu_share_of_transfer')} client "
                     f"{r.get('client_cpu_share_of_transfer')} of the transfer; "
                     f"extra packets {r.get('extra_share')}; other load "
                     f"{r['load']['other_cpu_cores']} cores")
        if "median_server_packets_per_s" in t:
            L.append(f"   median: {t['median_server_packets_per_s']:,.0f} server packets/s, "
                     f"{t['median_goodput_mb_per_s']} MB/s goodput, server CPU "
                     f"{t['median_server_cpu_ms_per_mb']} ms/MB "
                     f"({t['median_server_packets_per_cpu_s']:,.0f} packets per CPU second), "
                     f"client CPU {t['median_client_cpu_ms_per_mb']} ms/MB")
    c = res.get("tcp")
    if c:
        L.append(f"3. Linux TCP loopback, {c['size_bytes'] / 1e6:.0f} MB, Python sendall/"
                 "recv_into")
        for k in ("default_mss", "maxseg_1448"):
            v = c.get(k, {})
            if "median_mb_per_s" in v:
                r0 = next(r for r in v["runs"] if "mb_per_s" in r)
                L.append(f"   {k:<12} {v['median_mb_per_s']:>9.1f} MB/s (median), snd_mss "
                         f"{r0['sender_tcp_info'].get('snd_mss')}, sender CPU "
                         f"{r0['sender_cpu_ms_per_mb']} ms/MB")
            else:
                L.append(f"   {k}: {v.get('runs')}")
    s = res.get("summary")
    if s:
        L.append("   ratios: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    m = res.get("rss")
    if m:
        L.append(f"4. Server RSS vs concurrent connections ({m['file_bytes'] // 1024} KiB each "
                 f"via /gen); idle {m.get('server_rss_kib_idle')} KiB")
        ctl = m.get("control_one_connection", {})
        rows = [("", r) for r in m.get("rounds", [])]
        rows += [("control ", r) for r in ctl.get("rounds", [])]
        for tag, r in rows:
            per_req = r.get("rss_growth_bytes_per_request_since_idle")
            L.append(f"   {tag}N={r['connections']:<5} x {r['bytes_each'] / 1e6:g} MB: ok "
                     f"{r['ok']}/{r['connections']} in {r['wall_s']} s "
                     f"({r['aggregate_goodput_mb_per_s']} MB/s); RSS KiB before "
                     f"{r['server_rss_kib_before']}, peak {r['server_rss_kib_peak_during']}, "
                     f"after {r['server_rss_kib_after']}; requests so far "
                     f"{r['cumulative_requests']:,} ({per_req} B/request since idle); RTO "
                     f"timeouts {r['conn_timeouts']}, socket drops "
                     f"server {r['server_socket_drops']} client {r['client_socket_drops']}")
        if ctl.get("server_rss_kib_idle"):
            L.append(f"   control server idle {ctl['server_rss_kib_idle']} KiB")
        rh = m["replay_history"]
        L.append(f"   replay history bound: {rh['max_entries']:,} entries x "
                 f"<= {rh['entry_bytes_upper_bound']} B = {rh['memory_bound_mib']} MiB, "
                 f"freshness {rh['freshness_s']} s")
    p = res.get("profile")
    if p:
        if "error" in p:
            L.append(f"5. Profile: {p['error']}")
        else:
            L.append(f"5. Profile ({p['tool']}), {p['size_bytes'] / 1e6:.0f} MB transfer")
            for side in ("server", "client"):
                v = p.get(side, {})
                if "self" not in v:
                    continue
                L.append(f"   {side}: {v['samples']} samples; top self time")
                for fn, share in v["self"][:10]:
                    L.append(f"     {share:>6.1%}  {fn}")
    return "\n".join(L)


def _summary(res: dict) -> dict:
    s: dict = {}
    f, t, c = res.get("floor") or {}, res.get("trickles") or {}, res.get("tcp") or {}
    pps = t.get("median_server_packets_per_s")
    if pps and f.get("pairs_per_s"):
        s["trickles_packets_per_s_over_floor_pairs_per_s"] = _r(pps / f["pairs_per_s"], 3)
        s["target_ratio"] = 0.5
        s["meets_target"] = pps / f["pairs_per_s"] >= 0.5
        s["trickles_data_packets_per_s_over_floor"] = _r(
            t["median_server_data_packets_per_s"] / f["pairs_per_s"], 3)
        s["server_packets_per_cpu_s_over_floor"] = _r(
            t["median_server_packets_per_cpu_s"] / f["pairs_per_s"], 3)
    if t.get("median_server_packets_per_cpu_s") and f.get("pairs_per_cpu_s"):
        # CPU-normalized: robust when other programs take CPU from the processes measured
        s["server_packets_per_cpu_s_over_floor_pairs_per_cpu_s"] = _r(
            t["median_server_packets_per_cpu_s"] / f["pairs_per_cpu_s"], 3)
        sp, cp = t["median_server_packets_per_cpu_s"], t.get("median_client_packets_per_cpu_s")
        if cp:
            s["client_packets_per_cpu_s_over_server"] = _r(cp / sp, 3)
            s["slower_side_per_packet_cpu"] = "client" if cp < sp else "server"
    g = t.get("median_goodput_mb_per_s")
    for k in ("default_mss", "maxseg_1448"):
        tcp = c.get(k, {}).get("median_mb_per_s")
        if g and tcp:
            s[f"trickles_over_tcp_{k}"] = _r(g / tcp, 4)
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(
        prog="bench_wire.py",
        description="Measure trickles_kit on the real wire (loopback, raw IP protocol 253): the "
                    "Python raw-socket floor, a `trickles serve` -> `trickles fetch` transfer "
                    "(server packets/s, goodput, CPU), Linux TCP with the same byte count, and "
                    "server RSS with many concurrent connections. Needs root. Writes JSON and "
                    "prints a table; measures only: nothing is asserted.")
    ap.add_argument("--quick", action="store_true",
                    help="5 MB instead of 200 MB, 1/10 connections, one repeat, 0.5 s "
                         "floors: a smoke run")
    add_output_args(ap, "wire.json")
    ap.add_argument("--size", type=int, help="transfer bytes (default 200e6; quick 5e6)")
    ap.add_argument("--conns", help="comma-separated concurrency levels (default 1,100,1000)")
    ap.add_argument("--rss-file", type=int, help="bytes per connection in the RSS section "
                                                 "(default 262144)")
    ap.add_argument("--repeats", type=int, help="Trickles transfers (default 3; quick 1)")
    ap.add_argument("--floor-seconds", type=float, help="seconds per floor measurement")
    ap.add_argument("--floor-size", type=int, default=TRICKLES_DATA_SEGMENT,
                    help="floor datagram bytes without the IP header (default %(default)s, a "
                         "full Trickles data segment)")
    ap.add_argument("--server-addr", default="127.0.0.61",
                    help="server address (default %(default)s: a loopback address of its own, "
                         "so raw sockets of other programs on 127.0.0.1/.2 cannot cross-talk)")
    ap.add_argument("--client-addr", default="127.0.0.62", help="client address "
                                                                "(default %(default)s)")
    ap.add_argument("--port", type=int, default=18650, help="Trickles port (default %(default)s)")
    ap.add_argument("--only", choices=["floor", "trickles", "tcp", "rss", "profile"],
                    action="append", help="run only these sections (repeatable); the default "
                                          "runs all but profile")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one transfer with py-spy (server and client)")
    ap.add_argument("--profile-size", type=int, help="bytes of the profiled transfer "
                                                     "(default: --size)")
    ap.add_argument("--transfer-timeout", type=float, default=600.0,
                    help="give up on one transfer after SECONDS (default %(default)s)")
    ap.add_argument("--nice", type=int, help="run this process and its children at this nice "
                                             "value (e.g. -10 on a machine others are using; "
                                             "needs root for negative values)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs)")
    ap.add_argument("--baseline-tree", metavar="REV|DIR",
                    help="also run the Trickles transfers with this revision (or directory "
                         "holding a trickles_kit/), interleaved, and report this/baseline")
    ap.add_argument("--note", help="free text stored in the JSON")
    ap.add_argument("--floor-recv-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--tcp-child", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.floor_recv_child:
        print(json.dumps(_floor_recv_child(a.floor_recv_child[0],
                                           float(a.floor_recv_child[1]))))
        return 0
    if a.tcp_child:
        _tcp_send_child(*a.tcp_child)
        return 0
    mode = "quick" if a.quick else "full"
    o = dict(QUICK if a.quick else FULL)
    for k in ("size", "rss_file", "repeats", "floor_seconds"):
        if getattr(a, k) is not None:
            o[k] = getattr(a, k)
    if a.conns:
        o["conns"] = [int(x) for x in a.conns.split(",")]
    o.update(floor_size=a.floor_size, server_addr=a.server_addr, client_addr=a.client_addr,
             port=a.port, transfer_timeout=a.transfer_timeout,
             profile_size=a.profile_size or o["size"])
    if a.baseline_tree:
        o["baseline_tree"] = a.baseline_tree
        o["baseline_dir"] = tree_of(a.baseline_tree)  # (a revision: exported, removed below)
    if a.nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)  # children inherit it
    o["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    sections = a.only or ["floor", "trickles", "tcp", "rss"]
    if a.profile and "profile" not in sections:
        sections.append("profile")
    res: dict = {"meta": _meta([sys.argv[0], *argv], mode), "options": o}
    with contextlib.suppress(OSError):
        res["meta"]["machine"]["sysctl"] = {
            k: Path(f"/proc/sys/net/core/{k}").read_text().strip()
            for k in ("rmem_max", "wmem_max", "netdev_max_backlog")}
    if os.geteuid() != 0:
        res["error"] = "not root: raw IP sockets need root (or CAP_NET_RAW)"
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-wire-"))
    os.chmod(tmp, 0o755)
    try:
        steps = [("floor", "raw-socket floor", lambda: bench_floor(o)),
                 ("trickles", f"Trickles transfer of {o['size']:,} bytes",
                  lambda: bench_trickles(o, tmp)),
                 ("tcp", f"Linux TCP, {o['size']:,} bytes", lambda: bench_tcp(o)),
                 ("rss", f"server RSS at {o['conns']} connections", lambda: bench_rss(o, tmp)),
                 ("profile", "py-spy profile of one transfer", lambda: bench_profile(o, tmp))]
        todo = [s for s in steps if s[0] in sections]
        for i, (key, what, fn) in enumerate(todo, 1):
            _log(f"[{i}/{len(todo)}] {what} ...")
            try:
                res[key] = fn()
            except (OSError, RuntimeError, TimeoutError, ValueError,
                    subprocess.SubprocessError) as e:
                res[key] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        if a.keep_tmp:
            _log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        base_dir = o.pop("baseline_dir", None)  # (no temporary path in the JSON)
        if base_dir is not None and base_dir != a.baseline_tree:
            shutil.rmtree(base_dir, ignore_errors=True)
    res["summary"] = _summary(res)
    close_meta(res, mode, t0, a.note)
    out = write_result(a.out, res)
    print(_table(res))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
