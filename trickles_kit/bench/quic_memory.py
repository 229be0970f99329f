"""Server memory per live QUIC connection: the third column of `trickles bench memory`.

Two namespaces joined by a veth pair (as `bench.memory`), one level at a time, each on a fresh
`bench.quic_server` process. The client (`quic_client many`, one process) opens N connections,
at most `WINDOW` handshaking at a time; each fetches one `OBJECT`-byte body completely and checks
its SHA-256, then stays open, idle (a QUIC connection is alive until its idle timeout, set
longer than the run). With all N alive the server's RSS is read, after its CPU time stops
rising. The slope over the levels of RSS growth above the process's own idle size is the bytes
per connection — what aioquic keeps for a connection: TLS and 1-RTT key state, loss recovery
and congestion state, connection IDs, stream and flow-control state, HTTP/3 and QPACK state.
The server has one UDP socket whatever N is, so kernel socket buffers do not grow with N.

`bench.memory` parks its Trickles and TCP connections mid-transfer; here they are idle after
their one request. For TCP both states measured the same (its summary's keep-alive slope), and
a mid-transfer QUIC connection holds more (its unacknowledged data), so idle is QUIC's floor.
Levels stop at 1,000 (quick: 300): each handshake costs a few ms of Python on both ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from trickles_kit.bench.memory import proc_status, settle, slope
from trickles_kit.bench.meta import CHILD_CWD
from trickles_kit.net.topology import Topology

PY = sys.executable
FULL_LEVELS = [1, 10, 100, 300, 1000]
QUICK_LEVELS = [1, 10, 100, 300]
OBJECT = 16384
WINDOW = 32
CLIENT_ADDR, SERVER_ADDR = "10.204.0.1", "10.204.0.2"
PORT = 8443


def _line(p: subprocess.Popen, timeout: float) -> dict:
    """The next JSON line a child prints (RuntimeError if none comes in time)."""
    assert p.stdout is not None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            text = p.stdout.readline()
            if not text:
                break
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(text)
        elif p.poll() is not None:
            break
    raise RuntimeError(f"no answer within {timeout} s (exit code {p.poll()})")


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def level(topo: Topology, n: int, size: int = OBJECT, timeout: float = 120.0) -> dict:
    """One level: a fresh server, N live connections, the server's memory while they live."""
    srv = topo.popen("s", [PY, "-m", "trickles_kit.bench.quic_server", "--bind", SERVER_ADDR,
                           "--port", str(PORT)], stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True, cwd=CHILD_CWD)
    cli = None
    try:
        assert srv.stdout is not None
        first = srv.stdout.readline()
        if "serving" not in first:
            raise RuntimeError(f"quic_server did not start: {first!r}")
        time.sleep(0.3)
        idle = proc_status(srv.pid)
        cli = topo.popen("c", [PY, "-m", "trickles_kit.bench.quic_client", "many",
                               SERVER_ADDR, "--port", str(PORT), "-n", str(n), "--size",
                               str(size), "--window", str(WINDOW), "--timeout", str(timeout)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, cwd=CHILD_CWD)
        parked = _line(cli, timeout + 30)
        settled = settle(srv.pid)
        at = proc_status(srv.pid)
        assert cli.stdin is not None
        cli.stdin.write("close\n")
        cli.stdin.flush()
        closing = _line(cli, 30)
        with contextlib.suppress(RuntimeError):
            _line(cli, 30)
        _stop(cli)
        cli = None
        srv.send_signal(signal.SIGTERM)
        final = _line(srv, 20)
    finally:
        if cli is not None:
            _stop(cli)
        _stop(srv)
    grow = (at.get("VmRSS", 0) - idle.get("VmRSS", 0)) * 1024
    return {"connections": n, "client_at_measure": parked,
            "alive_at_measure": parked.get("alive") == n,
            "alive_until_close": closing.get("alive_before_close") == n,
            "byte_exact": parked.get("byte_exact") == n, "settle_s": settled,
            "server_status_kib_idle": idle, "server_status_kib_at_measure": at,
            "server_rss_growth_bytes": grow, "server_final": final}


def run(quick: bool, levels: Sequence[int] | None = None, verbose: bool = False) -> dict:
    """Every level in one pair of namespaces; the QUIC bytes per connection."""
    levels = list(levels or (QUICK_LEVELS if quick else FULL_LEVELS))
    rows = []
    t0 = time.monotonic()
    with Topology(tag=f"quicm{os.getpid() % 100000}", verbose=verbose) as topo:
        topo.link("c", "s", f"{CLIENT_ADDR}/24", f"{SERVER_ADDR}/24")
        for n in levels:
            if verbose:
                print(f"quic memory: {n} connection(s) ...", file=sys.stderr)
            rows.append(level(topo, n, timeout=60.0 + 0.05 * n))
    s = slope([r["connections"] for r in rows], [r["server_rss_growth_bytes"] for r in rows])
    return {"levels": levels, "object_bytes": OBJECT, "open_window": WINDOW,
            "method": (__doc__ or "").split("\n\n", 1)[1].strip(), "rows": rows,
            "quic_bytes_per_connection": None if s is None else round(s, 1),
            "all_alive": all(r["alive_at_measure"] for r in rows),
            "all_byte_exact": all(r["byte_exact"] for r in rows),
            "wall_s": round(time.monotonic() - t0, 1)}


if __name__ == "__main__":  # python -m trickles_kit.bench.quic_memory [LEVELS]
    lv = [int(x) for x in sys.argv[1].split(",")] if len(sys.argv) > 1 else None
    print(json.dumps(run(True, lv, verbose=True), indent=1, default=str)[-3000:])
