"""`trickles bench memory`: server memory with 1 … 10,000 concurrent live connections.

The paper's claim: a Trickles server keeps no per-connection state, so its memory does not grow
with the number of connections; a TCP server's does. Measured in two network namespaces (client
↔ server over a veth pair, everything undone on exit), one level at a time, each on a fresh
server process:

* **What "alive" means.** Every client connection asks for the same small object
  (`/gen?size=16384`) and is *parked* as soon as its first body bytes arrive: mid-transfer, the
  rest of the object still to come. At that point the server's memory is measured (after its
  CPU time stops rising, i.e. it has answered everything it was sent). Then the clients
  resume, read every body to the end and check its SHA-256 — which proves each connection was
  alive at the measurement. TCP connections then stay open (keep-alive, idle) and are measured
  again.
* **Trickles:** `trickles serve` over raw IP sockets; all N connections in one ClientHost (one
  socket). A parked connection's segments are held in the client process and its timers
  stopped — the server sees a client that has simply stopped asking. Server memory = its RSS.
* **Linux TCP:** an asyncio server (`bench/tcpmany.py`, one process, epoll, keep-alive) and a
  one-process non-blocking client. Server memory = RSS + the kernel buffers its sockets hold
  (`ss -tm` skmem in the server's namespace: receive + send queues + forward allocation); the
  socket structures themselves (TCP, inode, file, dentry, epoll item slabs) are an estimate
  from /proc/slabinfo object sizes. `/proc/net/sockstat` is recorded too: its TCP `inuse`
  is per namespace (it must equal N + the listener), but its `mem` is global to the machine
  (both ends, every process), so it is reported as context, not as the server's memory.

Slopes are least-squares bytes per connection over the levels, of each server's growth above
its own idle size (a fresh process per level). What a Trickles server keeps is allocated up
front or bounded by something other than connections: the replay history is one preallocated
table (12 bytes a slot, resident from the start), and the web app caches parsed descriptors by
plaintext (one entry per object served, here `seeds` of them), not per connection. The first
request of a fresh process allocates a few hundred KB once (imports, first-use caches), and the
bounded soft caches (the nonce-block cache: 512 entries) fill over the first few hundred
connections, about 60 KB, then stay full: growth that stops, which a slope over levels up to a
few hundred connections would overstate. Hence the quick levels reach 3,000 connections.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trickles_kit.bench import tcpmany
from trickles_kit.bench.meta import CHILD_CWD, meta
from trickles_kit.bench.parked_client import (
    SEEDS,
    ParkingHost,  # noqa: F401 - the client child's; importable from here as before
    trickles_client,
)
from trickles_kit.bench.rtt import host_delay, rtt_argv
from trickles_kit.core.replay import REPLAY_ENTRY_BYTES
from trickles_kit.core.server import ServerConfig
from trickles_kit.net.topology import Topology, list_namespaces
from trickles_kit.viz.report import write_report

PY = sys.executable
FULL_LEVELS = [1, 10, 100, 1000, 10000]
QUICK_LEVELS = [1, 10, 100, 1000, 3000]  # past where the fixed-size soft caches fill
OBJECT = 16384
WINDOW = 256  # connections being opened at once (both protocols: the same pacing)
CLIENT_ADDR, SERVER_ADDR = "10.203.0.1", "10.203.0.2"
TRICKLES_PORT, TCP_PORT = 8253, 8080
CLK_TCK = os.sysconf("SC_CLK_TCK")
_STOPPED = re.compile(r"stopped; (\d+) requests, (\d+) packets, (\d+) dropped")


# ====================================================================== small measurements
def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status that matter here (VmRSS, RssAnon, VmHWM)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(val.split()[0])
    return out


def cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def settle(pid: int, quiet: float = 0.3, limit: float = 30.0) -> float:
    """Wait until process `pid` stops using CPU (it has answered all it was sent)."""
    t0 = time.monotonic()
    last = cpu_ticks(pid)
    while time.monotonic() - t0 < limit:
        time.sleep(quiet)
        now = cpu_ticks(pid)
        if now is None or now == last:
            break
        last = now
    return round(time.monotonic() - t0, 2)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than two distinct xs)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


class _Child:
    """A process in a namespace speaking JSON lines on stdout; stderr goes to a file."""

    def __init__(self, p: subprocess.Popen, name: str) -> None:
        self.p, self.name = p, name

    def line(self, timeout: float) -> dict:
        assert self.p.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.p.stdout], [], [], 0.5)
            if r:
                text = self.p.stdout.readline()
                if not text:
                    break
                with contextlib.suppress(json.JSONDecodeError):
                    return json.loads(text)
            elif self.p.poll() is not None:
                break
        raise RuntimeError(f"{self.name}: no answer within {timeout} s "
                           f"(exit code {self.p.poll()})")

    def send(self, cmd: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)


def _start(topo: Any, ns: str, argv: list[str], log: Path, name: str) -> _Child:
    err = open(log, "w")  # noqa: SIM115 (the child keeps it; closed with the process)
    try:
        p = topo.popen(ns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                       text=True, cwd=CHILD_CWD)
    finally:
        err.close()
    return _Child(p, name)


# ====================================================================== one level
def _trickles_level(topo: Any, n: int, size: int, tmp: Path, timeout: float) -> dict:
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    out_log = tmp / f"trickles-serve-{n}.out"
    with open(out_log, "w") as o:
        srv = topo.popen("s", [PY, "-m", "trickles_kit.cli", "serve", "--root", str(www),
                               "--transport", "raw", "--addr", SERVER_ADDR, "--port",
                               str(TRICKLES_PORT)], stdout=o, stderr=subprocess.STDOUT,
                         cwd=CHILD_CWD)
    cli = None
    try:
        end = time.monotonic() + 20
        while "trickles serve:" not in out_log.read_text():
            if srv.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"trickles serve did not start: {out_log.read_text()[-800:]}")
            time.sleep(0.05)
        time.sleep(0.3)
        idle = proc_status(srv.pid)
        cli = _start(topo, "c", [PY, "-m", "trickles_kit.bench.memory", "trickles-client",
                                 "--server", SERVER_ADDR, "--local", CLIENT_ADDR, "--port",
                                 str(TRICKLES_PORT), "-n", str(n), "--size", str(size),
                                 "--timeout", str(timeout)], tmp / f"trickles-client-{n}.err",
                     f"trickles client ({n})")
        parked = cli.line(timeout + 30)
        settled = settle(srv.pid)
        at = proc_status(srv.pid)
        ss_server = tcpmany.sockstat(srv.pid)
        cli.send("resume")
        resumed = cli.line(timeout + 30)
        settle(srv.pid)
        after = proc_status(srv.pid)
        cli.send("close")
        cli.line(30)
    finally:
        if cli is not None:
            cli.stop()
        if srv.poll() is None:
            os.killpg(srv.pid, signal.SIGTERM)
            srv.wait(15)
    m = _STOPPED.search(out_log.read_text())
    requests = parked["requests_sent"]
    grow = (at.get("VmRSS", 0) - idle.get("VmRSS", 0)) * 1024
    return {
        "connections": n, "client_at_measure": parked, "client_after_resume": resumed,
        "all_alive_at_measure": parked["alive"] == n,
        "all_byte_exact_after_resume": resumed["byte_exact"] == n,
        "settle_s": settled, "server_status_kib_idle": idle, "server_status_kib_at_measure": at,
        "server_status_kib_after_resume": after,
        "server_rss_bytes": at.get("VmRSS", 0) * 1024,
        "server_rss_growth_bytes": grow,
        "server_sockstat_at_measure": ss_server,
        "requests_before_measure": requests,
        "requests_per_connection": round(requests / n, 2),
        "rss_growth_bytes_per_request": round(grow / requests, 1) if requests else None,
        "server_final": ({"requests": int(m[1]), "packets": int(m[2]), "dropped": int(m[3])}
                         if m else {"error": out_log.read_text()[-500:]}),
    }


def _tcp_level(topo: Any, n: int, size: int, tmp: Path, timeout: float) -> dict:
    srv = _start(topo, "s", [PY, "-m", "trickles_kit.bench.tcpmany", "serve", "--bind",
                             SERVER_ADDR, "--port", str(TCP_PORT), "--backlog", "4096",
                             "--nofile", str(n + 1024)], tmp / f"tcp-serve-{n}.err",
                 f"tcp server ({n})")
    cli = None
    ns_s, ns_c = topo.argv("s", []), topo.argv("c", [])
    try:
        srv.line(20)
        time.sleep(0.3)
        pid = srv.p.pid
        idle = proc_status(pid)
        cli = _start(topo, "c", [PY, "-m", "trickles_kit.bench.tcpmany", "client", "--host",
                                 SERVER_ADDR, "--port", str(TCP_PORT), "-n", str(n), "--size",
                                 str(size), "--window", str(WINDOW), "--timeout", str(timeout)],
                     tmp / f"tcp-client-{n}.err", f"tcp client ({n})")
        parked = cli.line(timeout + 30)
        settled = settle(pid)

        def measure() -> dict:
            return {"status_kib": proc_status(pid), "sockstat": tcpmany.sockstat(pid),
                    "skmem_server": tcpmany.skmem(ns_s, TCP_PORT),
                    "skmem_client": tcpmany.skmem(ns_c, TCP_PORT, peer=True)}

        at = measure()
        cli.send("resume")
        resumed = cli.line(timeout + 30)
        settle(pid)
        idle_conns = measure()
        cli.send("close")
        cli.line(30)
        cli.stop()
        cli = None
        srv.p.send_signal(signal.SIGTERM)
        final = srv.line(20)
    finally:
        if cli is not None:
            cli.stop()
        srv.stop()
    slab = tcpmany.slab_bytes_per_socket()
    per_sock = sum(slab.values()) if slab else 0

    def total(m: dict) -> dict:
        rss = m["status_kib"].get("VmRSS", 0) * 1024
        kb = m["skmem_server"]["charged"]
        return {"rss_bytes": rss, "kernel_buffer_bytes": kb,
                "rss_plus_kernel_buffers": rss + kb,
                "socket_structs_estimate_bytes": per_sock * m["skmem_server"]["sockets"],
                "rss_plus_kernel_estimate": rss + kb + per_sock * m["skmem_server"]["sockets"]}

    return {
        "connections": n, "client_at_measure": parked, "client_after_resume": resumed,
        "all_alive_at_measure": parked["alive"] == n,
        "all_byte_exact_after_resume": resumed["byte_exact"] == n,
        "sockstat_tcp_inuse_at_measure": at["sockstat"]["TCP"]["inuse"],
        "settle_s": settled, "server_status_kib_idle": idle,
        "at_measure": at, "idle_keepalive": idle_conns,
        "mid_transfer": total(at), "keepalive": total(idle_conns),
        "slab_object_bytes": slab, "server_final": final,
    }


# ====================================================================== the experiment
def _summary(res: dict) -> dict:
    tr, tcp = res["trickles"], res["tcp"]
    xs_t = [r["connections"] for r in tr]
    xs_c = [r["connections"] for r in tcp]

    def sl(xs: list[int], ys: list[float | None]) -> float | None:
        s = slope(xs, ys)
        return None if s is None else round(s, 1)

    reqs = sum(r["requests_before_measure"] for r in tr)
    grow = sum(r["server_rss_growth_bytes"] for r in tr)
    def tcp_growth(state: str, key: str) -> list[float | None]:
        # above the level's own idle server: fresh processes differ by a few MiB at start
        return [r[state][key] - r["server_status_kib_idle"].get("VmRSS", 0) * 1024
                for r in tcp]

    return {
        "trickles_bytes_per_connection": sl(xs_t, [r["server_rss_growth_bytes"] for r in tr]),
        "tcp_bytes_per_connection": sl(xs_c, tcp_growth("mid_transfer",
                                                        "rss_plus_kernel_buffers")),
        "tcp_bytes_per_connection_with_socket_structs": sl(
            xs_c, tcp_growth("mid_transfer", "rss_plus_kernel_estimate")),
        "tcp_bytes_per_connection_process_only": sl(xs_c, tcp_growth("mid_transfer",
                                                                     "rss_bytes")),
        "tcp_bytes_per_connection_kernel_buffers": sl(
            xs_c, [r["mid_transfer"]["kernel_buffer_bytes"] for r in tcp]),
        "tcp_bytes_per_connection_keepalive_idle": sl(
            xs_c, tcp_growth("keepalive", "rss_plus_kernel_buffers")),
        "trickles_requests_per_connection": round(reqs / sum(xs_t), 2) if xs_t else None,
        "trickles_rss_growth_bytes_per_request": round(grow / reqs, 1) if reqs else None,
        "replay_history_entry_bytes_bound": REPLAY_ENTRY_BYTES,
        "all_alive_at_measure": all(r["all_alive_at_measure"] for r in tr + tcp),
        "all_byte_exact": all(r["all_byte_exact_after_resume"] for r in tr + tcp),
        "tcp_sockstat_inuse_matches": all(
            r["sockstat_tcp_inuse_at_measure"] == r["connections"] + 1 for r in tcp),
    }


def _levels(res: dict, topo: Any, levels: Sequence[int], size: int, tmp: Path,
            timeout: float, verbose: bool) -> None:
    """Each connection count in turn, Trickles then Linux TCP, into `res`."""
    for n in levels:
        if verbose:
            print(f"memory: {n} connection(s): Trickles ...", file=sys.stderr)
        res["trickles"].append(_trickles_level(topo, n, size, tmp, timeout))
        if verbose:
            print(f"memory: {n} connection(s): Linux TCP ...", file=sys.stderr)
        res["tcp"].append(_tcp_level(topo, n, size, tmp, timeout))


def run(quick: bool, out_dir: Path, verbose: bool = False, levels: Sequence[int] | None = None,
        size: int = OBJECT, argv: Sequence[str] | None = None, rtt_ms: float = 0.0,
        jitter_ms: float = 0.0) -> dict:
    """Run the experiment (root), write `out_dir/memory.json` and `memory.html`; return it."""

    if os.geteuid() != 0:
        raise PermissionError("the memory experiment needs root (namespaces, raw sockets): "
                              "sudo .venv/bin/trickles bench memory")
    levels = list(levels or (QUICK_LEVELS if quick else FULL_LEVELS))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = ServerConfig()
    res: dict = {
        # the command that reproduces it, like the other experiments (not this process's argv,
        # which under `trickles bench all` names another experiment and an output directory)
        "meta": meta(list(argv) if argv is not None
                     else ["-m", "trickles_kit.cli", "bench", "memory"]
                     + (["--quick"] if quick else []) + rtt_argv(rtt_ms, jitter_ms),
                     "quick" if quick else "full"),
        "experiment": "memory",
        "options": {"levels": levels, "object_bytes": size, "seeds": SEEDS,
                    "open_window": WINDOW, "client_addr": CLIENT_ADDR,
                    "server_addr": SERVER_ADDR, "tcp_cc": "reno"},
        "method": __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "replay_history": {"max_entries": cfg.replay_entries, "freshness_s": cfg.freshness,
                           "entry_bytes_upper_bound": REPLAY_ENTRY_BYTES},
        "trickles": [], "tcp": [],
    }
    timeout = 120.0 + 0.03 * max(levels)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-memory-"))
    try:
        with Topology(tag=f"m{os.getpid() % 100000}", verbose=verbose) as topo:
            topo.link("c", "s", f"{CLIENT_ADDR}/24", f"{SERVER_ADDR}/24")
            topo.sh("s", ["sysctl", "-qw", "net.core.somaxconn=8192"])
            topo.sh("s", ["sysctl", "-qw", "net.ipv4.tcp_max_syn_backlog=8192"])
            res["namespaces"] = dict(topo.namespaces)
            path = host_delay(topo, rtt_ms, jitter_ms, "c", topo.links[0].dev_a,
                              ("s", SERVER_ADDR))
            with path as res["rtt"]:
                _levels(res, topo, levels, size, tmp, timeout, verbose)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    res["namespaces_left"] = [ns for ns in res.get("namespaces", {}).values()
                              if ns in list_namespaces()]
    res["summary"] = _summary(res)
    res["meta"]["benchmark_wall_s"] = round(time.monotonic() - t0, 1)
    (out_dir / "memory.json").write_text(json.dumps(res, indent=2) + "\n")
    with contextlib.suppress(ImportError):
        write_report(out_dir / "memory.html", {"memory": figure(res)},
                     title="Server memory against concurrent connections",
                     notes=[res["method"].split("\n\n")[0]])
    return res


def figure(res: dict) -> Any:
    """Server memory above its idle size against live connections: Trickles vs Linux TCP."""
    import plotly.graph_objects as go

    fig = go.Figure()
    mib = 1 / 2**20
    tr, tcp = res["trickles"], res["tcp"]
    s = res.get("summary", {})
    fig.add_scatter(x=[r["connections"] for r in tr],
                    y=[r["server_rss_growth_bytes"] * mib for r in tr], mode="lines+markers",
                    name=f"Trickles RSS ({s.get('trickles_bytes_per_connection')} B/conn)")
    for key, label, slope_key in (
            ("rss_plus_kernel_buffers", "TCP RSS + socket buffers", "tcp_bytes_per_connection"),
            ("rss_plus_kernel_estimate", "TCP + socket structs (est.)",
             "tcp_bytes_per_connection_with_socket_structs")):
        ys = []
        for r in tcp:
            base = r["server_status_kib_idle"].get("VmRSS", 0) * 1024
            ys.append((r["mid_transfer"][key] - base) * mib)
        fig.add_scatter(x=[r["connections"] for r in tcp], y=ys, mode="lines+markers",
                        name=f"{label} ({s.get(slope_key)} B/conn)")
    fig.update_layout(title="Server memory above idle, connections parked mid-transfer",
                      xaxis={"title": "concurrent live connections", "type": "log"},
                      yaxis={"title": "MiB"}, template="plotly_white")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trickles_kit.bench.memory",
                                 description="Server memory with many live connections: "
                                             "Trickles vs Linux TCP (root).")
    sub = ap.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run the experiment")
    r.add_argument("--quick", action="store_true")
    r.add_argument("--out", type=Path, default=Path("reports/bench"))
    r.add_argument("--levels", help="comma-separated connection counts")
    r.add_argument("-v", "--verbose", action="store_true")
    c = sub.add_parser("trickles-client", help=argparse.SUPPRESS)
    c.add_argument("--server", required=True)
    c.add_argument("--local", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("-n", type=int, required=True)
    c.add_argument("--size", type=int, default=OBJECT)
    c.add_argument("--window", type=int, default=WINDOW)
    c.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args(argv)
    if a.cmd == "trickles-client":
        return trickles_client(a.server, a.local, a.port, a.n, a.size, a.window, a.timeout)
    if a.cmd != "run":
        ap.print_help()
        return 2
    levels = [int(x) for x in a.levels.split(",")] if a.levels else None
    res = run(a.quick, a.out, a.verbose, levels,
              argv=["-m", "trickles_kit.bench.memory", *(argv or sys.argv[1:])])
    print(json.dumps(res["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
