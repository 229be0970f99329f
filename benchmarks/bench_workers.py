#!/usr/bin/env python3
"""Requests per second of `trickles serve --workers 2` against one worker (issue #17 item 3).

A load generator replays pre-built valid requests at a UDP server. Keeping the generator's own
CPU out of the figure on a 2-core machine (2 workers + a generator would otherwise share 2 cores):

1. the corpus is built in-process before the server is measured: many connections (Trickles
   ports 30000 + i, half of them each worker's), each a ClientEngine fetching /gen from a
   ServerEngine with the server's secret; every request the in-process server answered (no SYN,
   no FIN: the SYN bucket would limit those) is kept. The server under test has its own replay
   table, so to it every request is new;
2. the server's workers are stopped (SIGSTOP) and the whole corpus is sent into their socket
   queues (the kernel's counters confirm nothing was dropped);
3. the workers are resumed (SIGCONT at t0) and drain the queue at full speed while the generator
   sleeps (it polls /proc/net/udp every 50 ms to see when they are done); the answers wait in
   the generator's sockets, stamped by the kernel on arrival (SO_TIMESTAMPNS);
4. then the generator reads them: the figure is requests answered / (last answer's stamp - t0),
   with the requests counted by the server itself (its shutdown line).

The generator's CPU time in each phase is recorded (getrusage), so its share of the measured
window is visible (only the polling). Other load on the machine is not controlled: the load
average is recorded and the configurations are interleaved (1, 2, 1, 2, ...), median of the
repeats. It measures and records; it never fails on the figure.

    .venv/bin/python benchmarks/bench_workers.py            # 16k requests a run, 3 repeats
    .venv/bin/python benchmarks/bench_workers.py --quick    # 3k requests, 1 repeat, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script without an installed package
    sys.path.insert(0, str(REPO))

from trickles_kit.apps.web import WebServer  # noqa: E402
from trickles_kit.bench.meta import add_output_args, close_meta, meta, write_result  # noqa: E402
from trickles_kit.bench.procs import stop_child  # noqa: E402
from trickles_kit.core.client import ClientEngine  # noqa: E402
from trickles_kit.core.server import ServerConfig, ServerEngine  # noqa: E402

IP = "127.0.0.1"
FIRST_PORT = 30000
SO_TIMESTAMPNS = 35  # also the SCM type of its control message
GEN_SOCKETS = 64  # many clients: answers do not queue on a few sockets shared by both workers
GEN_RCVBUF = 64 << 20  # per generator socket (root may force it): holds every answer
TARGET_RATIO = 1.6
FULL = {"requests": 16000, "conns": 64, "reps": 3}
QUICK = {"requests": 3000, "conns": 16, "reps": 1}


def build_corpus(secret: bytes, port: int, count: int, conns: int, root: str) -> list[bytes]:
    """`count` valid requests over `conns` connections, interleaved (round-robin)."""
    ip = socket.inet_aton(IP)
    web = WebServer(root)
    srv = ServerEngine(secret, web, ip, port, ServerConfig())
    web.attach(srv)
    per = -(-count // conns)
    lists: list[list[bytes]] = []
    now = time.time()
    for i in range(conns):
        cl = ClientEngine(ip, FIRST_PORT + i, ip, port, isn=1000 + i)
        # one seed for all: /gen caches 16 seeds' byte patterns, and recomputing one (~1 ms)
        # for every request would measure blake2b, not the server
        cl.connect(now, b"GET /gen?size=100000000&seed=7 HTTP/1.1\r\nHost: x\r\n\r\n")
        up: deque[bytes] = deque(cl.datagrams_to_send())
        down: deque[bytes] = deque()
        got: list[bytes] = []
        while len(got) < per and (up or down):
            if up:
                seg = up.popleft()
                out = srv.receive(seg, ip, now)
                if out and not seg[13] & 0x03:  # answered, neither SYN nor FIN
                    got.append(seg)
                down.extend(out)
            else:
                cl.receive(down.popleft(), now)
                up.extend(cl.datagrams_to_send())
                cl.read()
            now += 1e-5
        lists.append(got)
    corpus = [seg for row in zip(*lists, strict=False) for seg in row]
    return corpus[:count]


def udp_table(ports: set[int]) -> dict[int, list[tuple[int, int]]]:
    """(rx_queue bytes, drops) of every UDP socket on `ports`, from /proc/net/udp."""
    out: dict[int, list[tuple[int, int]]] = {p: [] for p in ports}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        port = int(f[1].split(":")[1], 16)
        if port in out:
            out[port].append((int(f[4].split(":")[1], 16), int(f[-1])))
    return out


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def on_cpu(pid: int) -> int:
    """The CPU a process runs on (or last ran on): /proc/<pid>/stat field 39."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[36])


def sched(pid: int) -> dict[str, float]:
    """A process's scheduler view: seconds on a CPU and seconds *runnable but waiting* for one
    (/proc/<pid>/schedstat), and its voluntary (it slept: no input) and involuntary (preempted)
    context switches. Waiting time says other load took the cores; sleeping, that input ran out."""
    on, wait, _ = (int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split())
    out = {"on_cpu_s": on * 1e-9, "run_delay_s": wait * 1e-9}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            k, v = line.split(":")
            out[k.split("_")[0]] = float(v)
    return out


def autogroups(pids: list[int]) -> dict:
    """The scheduler's autogroups: with them on, CFS shares the CPUs between *sessions* first
    (each helper, terminal or service its own), so every process of one session, the workers
    and this generator included, splits one session's share. Under other sessions' load, a
    second worker then gets no more CPU for the server, only half of the same share."""
    try:
        on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return {"enabled": False}
    groups = []
    for pid in pids:
        try:  # "/autogroup-N nice 0"; empty where the kernel or a sandbox hides it
            fields = Path(f"/proc/{pid}/autogroup").read_text().split()
        except OSError:
            fields = []
        groups.append(fields[0] if fields else None)
    return {"enabled": on, "workers": groups}


def cpu_times() -> dict[str, list[int]]:
    """Per-CPU jiffies by kind (/proc/stat) and NET_RX/NET_TX softirq counts (/proc/softirqs)."""
    kinds = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    out: dict[str, list[int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        f = line.split()
        if f and f[0].startswith("cpu") and f[0] != "cpu":
            for k, v in zip(kinds, f[1:9], strict=True):
                out.setdefault(k, []).append(int(v))
    for line in Path("/proc/softirqs").read_text().splitlines()[1:]:
        f = line.split()
        if f and f[0] in ("NET_RX:", "NET_TX:"):
            out[f[0].rstrip(":").lower() + "_softirqs"] = [int(x) for x in f[1:]]
    return out


def _delta(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, list[int]]:
    return {k: [y - x for x, y in zip(a[k], b[k], strict=True)] for k in a}


def idle_fraction(seconds: float = 1.0) -> float:
    """The machine's idle share over `seconds` (/proc/stat): other load competes for the cores,
    and a ratio measured without two idle cores says nothing about the workers."""
    def sample() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return f[3] + f[4], sum(f[:8])

    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(want: float, limit: float) -> tuple[float, float]:
    """Wait (up to `limit` s) until the machine is at least `want` idle; (idle, waited s)."""
    t0 = time.monotonic()
    idle = idle_fraction()
    while idle < want and time.monotonic() - t0 < limit:
        idle = idle_fraction()
    return idle, time.monotonic() - t0


def _gen_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _gen_sockets() -> list[socket.socket]:
    socks = []
    for _ in range(GEN_SOCKETS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, GEN_RCVBUF)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, GEN_RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((IP, 0))
        s.setblocking(False)
        socks.append(s)
    return socks


def _read_answers(socks: list[socket.socket]
                  ) -> tuple[int, float | None, float | None, list[float | None]]:
    """Count the queued answers; the first and last arrival stamps (seconds, wall clock), and
    each socket's last stamp."""
    n, first, last = 0, None, None
    space = socket.CMSG_SPACE(16)
    lasts: list[float | None] = []
    for s in socks:
        mine: float | None = None
        lasts.append(None)
        while True:
            try:
                _data, anc, _flags, _addr = s.recvmsg(65535, space)
            except BlockingIOError:
                break
            n += 1
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    t = sec + nsec * 1e-9
                    first = t if first is None else min(first, t)
                    last = t if last is None else max(last, t)
                    mine = t if mine is None else max(mine, t)
        lasts[-1] = mine
    return n, first, last, lasts


def _start(workers: int, port: int, root: str, secret_file: str, tree: Path = REPO,
           extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, list[int]]:
    """`trickles serve --workers N` from `tree` (a directory holding a trickles_kit/)."""
    argv = [sys.executable, "-m", "trickles_kit.cli", "serve", "--root", root, "--transport",
            "udp", "--port", str(port), "--secret-file", secret_file, "--workers", str(workers),
            *extra]
    env = dict(os.environ, PYTHONPATH=str(tree))
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tree, env=env)
    line = p.stdout.readline() if p.stdout else ""
    if "trickles serve:" not in line:
        p.kill()
        raise RuntimeError(f"server did not start: {line!r} {p.communicate(timeout=5)}")
    m = re.search(r"\(pids ([\d ]+)\)", line)
    return p, ([int(x) for x in m[1].split()] if m else [p.pid])


def _kill(p: subprocess.Popen, pids: list[int]) -> None:
    """Stop the server and its workers after a failure (stopped ones cannot see SIGTERM)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    stop_child(p, 10)


def _stop(p: subprocess.Popen) -> dict:
    p.terminate()
    out, err = p.communicate(timeout=30)
    last = out.strip().splitlines()[-1]
    m = re.search(r"stopped; (\d+) requests, (\d+) packets, (\d+) dropped(.*)", last)
    if m is None:
        raise RuntimeError(f"no shutdown line: {out!r} {err!r}")
    per = [int(x) for x in re.findall(r"worker \d+ \(pid \d+\) stopped; (\d+) requests", out)]
    return {"requests": int(m[1]), "packets": int(m[2]), "dropped": int(m[3]),
            "drop_reasons": m[4].strip(" ()"), "requests_per_worker": per}


def _socket_of(seg: bytes) -> int:
    """The generator socket of a request: one per connection (by its Trickles source port), so
    each socket's answers come from one worker and its last stamp is that worker's end."""
    return (int.from_bytes(seg[0:2], "big") - FIRST_PORT) % GEN_SOCKETS


def _diagnose(workers: int, pids: list[int], t0: float, lasts: list[float | None],
              s0: dict[int, dict[str, float]], s1: dict[int, dict[str, float]],
              m0: dict[str, list[int]], m1: dict[str, list[int]], groups: dict) -> dict:
    """Where the window went: per worker its end, CPU, run-queue wait and sleeps; per CPU the
    machine's jiffies by kind. With `--workers 1` the pid is the server itself."""
    per: list[dict] = []
    for k, pid in enumerate(pids):
        ends = [t for j, t in enumerate(lasts)
                if t is not None and (FIRST_PORT + j) % workers == k]
        d = {key: round(s1[pid][key] - s0[pid][key], 4) for key in s0[pid]}
        end = max(ends) - t0 if ends else None
        d["last_answer_after_s"] = round(end, 4) if end else None
        if end:  # the worker's own window: busy (on a CPU), waiting for one, or asleep
            d["on_cpu_share"] = round(d["on_cpu_s"] / end, 3)
            d["run_delay_share"] = round(d["run_delay_s"] / end, 3)
        per.append(d)
    tick = os.sysconf("SC_CLK_TCK")
    dm = _delta(m0, m1)
    return {"per_worker": per, "autogroups": groups,
            "per_cpu_s": {k: [round(v / tick, 3) for v in vs] for k, vs in dm.items()
                          if not k.endswith("softirqs")},
            "net_softirqs_per_cpu": {k: v for k, v in dm.items() if k.endswith("softirqs")}}


def run_once(workers: int, opts: dict, secret: bytes, secret_file: str, root: str,
             tree: Path = REPO, extra: tuple[str, ...] = ()) -> dict:
    """One measurement: build, preload, release, wait, count."""
    idle, waited = wait_idle(opts["wait_idle"], opts["wait_max"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((IP, 0))
        port = s.getsockname()[1]
    c0 = _gen_cpu()
    t_build = time.perf_counter()
    corpus = build_corpus(secret, port, opts["requests"], opts["conns"], root)
    build_s = time.perf_counter() - t_build
    c1 = _gen_cpu()
    p, pids = _start(workers, port, root, secret_file, tree, extra)
    socks = _gen_sockets()
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.05)
        c2 = _gen_cpu()
        for seg in corpus:
            socks[_socket_of(seg)].sendto(seg, (IP, port))
        c3 = _gen_cpu()
        gports = {s.getsockname()[1] for s in socks}
        queued = udp_table({port})[port]
        cpu0 = {pid: cpu_s(pid) for pid in pids}
        sch0 = {pid: sched(pid) for pid in pids}
        m0 = cpu_times()
        load = os.getloadavg()[0]
        t0 = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        prev, still = -1, 0
        cpus: dict[int, list[int]] = {pid: [] for pid in pids}
        while still < 4:  # the generator sleeps while the workers drain their queues: done
            time.sleep(0.05)  # when theirs are empty and no answer came for 4 polls
            for pid in pids:  # (where each worker runs: two on one CPU wait for each other)
                cpus[pid].append(on_cpu(pid))
            tab = udp_table({port} | gports)
            held = sum(q for p_ in gports for q, _ in tab[p_])
            still = still + 1 if all(q == 0 for q, _ in tab[port]) and held == prev else 0
            prev = held
        cpu1 = {pid: cpu_s(pid) for pid in pids}
        sch1 = {pid: sched(pid) for pid in pids}
        m1 = cpu_times()
        groups = autogroups(pids)  # (while the workers live)
        c4 = _gen_cpu()
        gen_drops = sum(d for p_ in gports for _, d in udp_table(gports)[p_])
        answers, first, last, lasts = _read_answers(socks)
        c5 = _gen_cpu()
    except BaseException:
        _kill(p, pids)  # no server outlives a failed measurement
        raise
    finally:
        for s in socks:
            s.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    srv = _stop(p)
    span = (last - t0) if last is not None else None
    wcpu = sum(cpu1[x] - cpu0[x] for x in pids)
    oncpu = sum(sch1[x]["on_cpu_s"] - sch0[x]["on_cpu_s"] for x in pids)
    return {
        "workers": workers,
        "tree": "this checkout" if tree == REPO else "baseline",
        "serve_options": list(extra),
        "corpus_requests": len(corpus),
        "corpus_build_s": round(build_s, 3),
        "server_queue_bytes_at_start": sum(q for q, _ in queued),
        "server_socket_drops": sum(d for _, d in queued),
        "generator_socket_drops": gen_drops,
        "server": srv,
        "answers_received": answers,
        # every answer the server sent was counted here (else the figures are not trusted)
        "complete": answers == srv["packets"] and srv["requests"] == len(corpus),
        "span_s": round(span, 4) if span else None,
        "first_answer_after_s": round(first - t0, 4) if first else None,
        "requests_per_s": round(srv["requests"] / span, 1) if span else None,
        "answers_per_s": round(answers / span, 1) if span else None,
        "worker_cpu_s": round(wcpu, 3),
        # cores the workers actually got during the window (2 workers on an idle 2-core
        # machine: close to 2; much less means other load took them)
        "worker_cores_used": round(wcpu / span, 2) if span else None,
        # the workers' cost per request, whatever share of the cores other load left them
        # (their on-CPU time from schedstat, in ns: /proc/<pid>/stat counts 10 ms ticks)
        "requests_per_worker_cpu_s": round(srv["requests"] / oncpu, 1) if oncpu else None,
        "diagnosis": {**_diagnose(workers, pids, t0, lasts, sch0, sch1, m0, m1, groups),
                      # each worker's CPU at every 50 ms poll (the last ones after it finished)
                      "cpu_samples": [cpus[pid] for pid in pids]},
        "machine_idle_before": round(idle, 3),
        "waited_for_idle_s": round(waited, 1),
        "generator_cpu_s": {"build_corpus": round(c1 - c0, 3), "preload": round(c3 - c2, 3),
                            "during_measurement": round(c4 - c3, 3),
                            "read_answers": round(c5 - c4, 3)},
        "loadavg_1m_before": round(load, 2),
    }


def baseline_tree(spec: str) -> Path:
    """`spec`'s trickles_kit/ (a directory, used as it is, or a git revision, as bench_core's
    --baseline-tree) with, for a revision, this checkout's compiled files copied in where their
    sources are the same: a compiled build against a pure-Python baseline would measure the
    build, not the change."""
    from bench_core import tree_of  # lazy: benchmarks/ on sys.path only when run as a script

    tree = Path(tree_of(spec))
    if tree == Path(spec):  # a directory of the caller's: used as it is
        return tree
    here, there = REPO / "trickles_kit", tree / "trickles_kit"

    def same(rel: str) -> bool:
        a, b = here / rel, there / rel
        return a.exists() and b.exists() and a.read_bytes() == b.read_bytes()

    mods = [ln.split("#")[0].strip().removeprefix("trickles_kit/")
            for ln in (here / "native" / "mypyc_modules.txt").read_text().splitlines()]
    mods = [m for m in mods if m]
    for so in here.glob("*/*.so"):
        rel = so.relative_to(here).as_posix()
        src = (["native/speedups.c"] if so.name.startswith("_speedups") else
               mods if so.name.startswith("mypyc_group") else
               [rel.split(".")[0] + ".py"])
        if all(same(x) for x in src) and (so.name.startswith("_speedups") or all(
                same(m) for m in mods)):
            shutil.copy(so, there / rel)  # (copy: a fresh mtime, newer than the sources)
    return tree


def _summary(runs: dict[str, list[dict]], prefix: str = "") -> dict:
    """Medians of one tree's runs and the 2/1 ratio."""
    med = {w: statistics.median(r["requests_per_s"] or 0.0 for r in runs[prefix + w])
           for w in ("1", "2")}
    ratio = med["2"] / med["1"] if med["1"] else None
    per_cpu = {w: statistics.median(r["requests_per_worker_cpu_s"] or 0.0
                                    for r in runs[prefix + w]) for w in ("1", "2")}
    cores = {w: statistics.median(r["worker_cores_used"] or 0.0 for r in runs[prefix + w])
             for w in ("1", "2")}
    delay = {w: statistics.median(
        sum(d.get("run_delay_share", 0.0) for d in r["diagnosis"]["per_worker"])
        for r in runs[prefix + w]) for w in ("1", "2")}
    return {
        "requests_per_s_median": med,
        "ratio_2_over_1": round(ratio, 3) if ratio else None,
        "target_ratio": TARGET_RATIO,
        "target_met": bool(ratio and ratio >= TARGET_RATIO),
        # not the target's figure: the cost side. Requests per worker CPU-second (2 workers /
        # 1 worker: 1.0 = no overhead from sharding) and the cores the workers got (median):
        # with fewer than 2 cores free, the ratio above cannot show the scaling
        "requests_per_worker_cpu_s_median": per_cpu,
        "cpu_efficiency_2_over_1": round(per_cpu["2"] / per_cpu["1"], 3) if per_cpu["1"]
        else None,
        "worker_cores_used_median": cores,
        # the workers' run-queue wait (summed over workers, as cores): what other load took.
        # cores used + this ~= workers means they were runnable the whole window (CPU-bound)
        "worker_cores_waiting_median": delay,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3k requests, 1 repeat: seconds")
    ap.add_argument("--requests", type=int, help="requests per run")
    ap.add_argument("--reps", type=int, help="runs per configuration (median)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="F",
                    help="before each run wait until the machine is at least F idle (0..1)")
    ap.add_argument("--wait-max", type=float, default=120.0, metavar="S",
                    help="wait at most S seconds for --wait-idle (then run anyway)")
    add_output_args(ap, "workers.json")
    ap.add_argument("--baseline-tree", metavar="REV|DIR",
                    help="also measure this revision (or directory holding a trickles_kit/), "
                         "interleaved with this checkout in the same run")
    ap.add_argument("--no-pin-too", action="store_true",
                    help="also measure this checkout with `serve --no-pin` (interleaved)")
    ap.add_argument("--note")
    a = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    opts = dict(QUICK if a.quick else FULL)
    for k in ("requests", "reps"):
        if getattr(a, k):
            opts[k] = getattr(a, k)
    opts["wait_idle"], opts["wait_max"] = a.wait_idle, a.wait_max
    mode = "quick" if a.quick else "full"
    t_start = time.perf_counter()
    res: dict = {"meta": meta([os.path.relpath(__file__), *argv], mode), "options": opts}
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-workers-"))
    exported: Path | None = None
    try:
        secret = os.urandom(32)
        (tmp / "secret.hex").write_text(secret.hex() + "\n")
        (tmp / "www").mkdir()
        trees: list[tuple[str, Path, tuple[str, ...]]] = [("", REPO, ())]
        if a.no_pin_too:
            trees.insert(0, ("nopin:", REPO, ("--no-pin",)))
        if a.baseline_tree:
            base = baseline_tree(a.baseline_tree)
            if not Path(a.baseline_tree, "trickles_kit").is_dir():
                exported = base  # a revision exported for this run: removed at the end
            trees.insert(0, ("base:", base, ()))
            res["baseline_tree"] = a.baseline_tree
        runs: dict[str, list[dict]] = {t + w: [] for t, _, _ in trees for w in ("1", "2")}
        for rep in range(opts["reps"]):
            for w in (1, 2):
                for tag, tree, extra in trees:
                    r = run_once(w, opts, secret, str(tmp / "secret.hex"), str(tmp / "www"),
                                 tree, extra)
                    runs[tag + str(w)].append(r)
                    waits = [d.get("run_delay_share") for d in r["diagnosis"]["per_worker"]]
                    print(f"rep {rep} {tag or 'this:'}workers {w}: {r['requests_per_s']} "
                          f"requests/s ({r['server']['requests']} requests in {r['span_s']} s;"
                          f" per worker {r['server']['requests_per_worker']}; workers got "
                          f"{r['worker_cores_used']} cores, waited for a CPU {waits} of their "
                          f"windows; generator CPU while measured "
                          f"{r['generator_cpu_s']['during_measurement']} s; machine idle "
                          f"before {r['machine_idle_before']})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if exported is not None:
            shutil.rmtree(exported, ignore_errors=True)
    res["runs"] = runs
    res["summary"] = _summary(runs)
    res["summary"]["how_the_generator_is_kept_out"] = (
        "corpus built and sent while the workers are SIGSTOPped; during the measured window "
        "the generator only sleeps and polls /proc/net/udp every 50 ms; answers are read "
        "after, with kernel arrival stamps")
    if a.baseline_tree:
        res["summary_baseline"] = _summary(runs, "base:")
    if a.no_pin_too:
        res["summary_no_pin"] = _summary(runs, "nopin:")
    med = res["summary"]["requests_per_s_median"]
    close_meta(res, mode, t_start, a.note)
    write_result(a.out, res)
    print(f"median requests/s: 1 worker {med['1']:.0f}, 2 workers {med['2']:.0f}; "
          f"ratio {res['summary']['ratio_2_over_1']} (target {TARGET_RATIO})"
          + (f"; baseline ratio {res['summary_baseline']['ratio_2_over_1']}"
             if a.baseline_tree else "")
          + (f"; --no-pin ratio {res['summary_no_pin']['ratio_2_over_1']}"
             if a.no_pin_too else "") + f" -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
