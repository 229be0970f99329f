"""Server MB per CPU-second on loopback: Trickles and QUIC (aioquic HTTP/3) in one run.

Issue 17's anchor was a loopback figure (aioquic 39-40 MB per server CPU-second, Trickles 64):
no testbed, no bottleneck, each server as fast as its client lets it. Here the two servers serve
the same generated `/gen` bytes to their own client over UDP on 127.0.0.1 (Trickles over raw IP
too, as root), one transfer at a time, interleaved (trickles, quic, trickles, ...). Trickles over
UDP runs twice: as `serve` and `fetch` start by default (`trickles-udp`: UDP offload "auto", so
runs of answers leave in one segmented send, net/gso.py, while no capture runs on the host; each
run records whether one did), and with `--udp-offload off` on both (`trickles-udp-plain`: one
datagram per send, as while capturing).

The figure is the response bytes / the server process's CPU seconds (utime + stime from
/proc/<pid>/stat) from just before its client starts until it has gone idle after the client
ends (its CPU time stops rising), so the server's start-up (imports, QUIC's certificate) is out
and its last packets are in. The kernel's loopback delivery of a packet is charged to the
process that sends it (no IRQ-time accounting here), so a server's own sends count, its
client's do not. The server's CPU per MB does not depend on how much of a core it got: the
figure holds on a loaded machine, where the MB/s beside it do not. Every body is checked by
SHA-256.

    python -m trickles_kit.bench.quic_loopback [--quick]   (or benchmarks/bench_quic.py --loopback)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trickles_kit.apps.generated import generated_sha256
from trickles_kit.bench.meta import CHILD_CWD
from trickles_kit.bench.procs import stop_child
from trickles_kit.net.sniffers import capturing, loopback_ifindexes

PY = sys.executable
HOST = "127.0.0.1"
RAW_SERVER, RAW_CLIENT = "127.0.0.71", "127.0.0.72"  # raw IP: addresses of its own
SEED = 1
QUICK = {"size": 20_000_000, "repeats": 1}  # (CPU is read in 10 ms ticks)
FULL = {"size": 50_000_000, "repeats": 3}
TIMEOUT = 600.0


def _cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_idle(pid: int, quiet: float = 0.3, limit: float = 15.0) -> float:
    """Wait until a process's CPU time stops rising; its CPU seconds then."""
    last = _cpu(pid)
    end = time.monotonic() + limit
    while time.monotonic() < end:
        time.sleep(quiet)
        now = _cpu(pid)
        if now == last:
            break
        last = now
    return last


def _start(argv: list[str], ready: str, log: Path) -> subprocess.Popen:
    """A server that prints `ready` on its first line once it listens."""
    with open(log, "w") as err:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=CHILD_CWD)
    line = p.stdout.readline() if p.stdout else ""
    if ready not in line:
        p.kill()
        p.wait()
        raise RuntimeError(f"{argv[3]} did not start: {line!r} {log.read_text()[-800:]!r}")
    return p


def _offload_used(log: Path) -> dict:
    """From a Trickles UDP server's last stderr line (cli/wire.offload_line): how many
    segmented sends it made and how many batches it held back for a capture."""
    m = re.search(r"UDP offload \w+: (\d+) segmented sends, (\d+) batches", log.read_text())
    return {"gso_sends": int(m[1]), "gso_held_batches": int(m[2])} if m else {}


def _servers(kind: str, port: int, root: Path) -> tuple[list[str], str, list[str]]:
    """(server argv, its ready line, client argv) of one kind."""
    path = f"/gen?size={{size}}&seed={SEED}"
    if kind == "quic":
        return ([PY, "-m", "trickles_kit.bench.quic_server", "--bind", HOST, "--port",
                 str(port)], "quic_server: serving",
                [PY, "-m", "trickles_kit.bench.quic_client", "fetch", HOST, "--port", str(port),
                 "--size", "{size}", "--seed", str(SEED), "--timeout", str(TIMEOUT)])
    transport = "raw" if kind == "trickles-raw" else "udp"
    addr = RAW_SERVER if transport == "raw" else HOST
    client = ["--local-addr", RAW_CLIENT] if transport == "raw" else []
    offload = ["--udp-offload", "off"] if kind == "trickles-udp-plain" else []
    return ([PY, "-m", "trickles_kit.cli", "serve", "--root", str(root), "--transport",
             transport, "--addr", addr, "--port", str(port), *offload], "trickles serve:",
            [PY, "-m", "trickles_kit.cli", "fetch", f"http://{addr}:{port}{path}",
             "--transport", transport, *client, *offload, "--json", "--timeout", str(TIMEOUT)])


def one(kind: str, size: int, tmp: Path) -> dict:
    """One transfer of `size` bytes from a fresh server of `kind`."""
    port = _free_udp_port() if kind != "trickles-raw" else 18671
    srv_argv, ready, cli_argv = _servers(kind, port, tmp / "www")
    cli_argv = [a.replace("{size}", str(size)) for a in cli_argv]
    srv = _start(srv_argv, ready, tmp / f"{kind}.server.log")
    capture_seen = capturing(loopback_ifindexes())  # (auto offload holds back while one runs)
    try:
        time.sleep(0.2)  # (the server finishes starting: its CPU from here on is serving)
        cpu0 = _cpu(srv.pid)
        t0 = time.perf_counter()
        c = subprocess.run(cli_argv, capture_output=True, text=True, cwd=CHILD_CWD,
                           timeout=TIMEOUT + 30)
        wall = time.perf_counter() - t0
        cpu1 = _wait_idle(srv.pid)
    finally:
        stop_child(srv, 20)
    text = c.stdout  # (one JSON object, on one line or indented)
    try:
        j = json.loads(text[text.index("{"):text.rindex("}") + 1])
    except ValueError:
        return {"kind": kind, "error": f"client exit {c.returncode}: {c.stderr[-800:]}"}
    got, scpu = int(j.get("bytes", 0)), cpu1 - cpu0
    return {
        "kind": kind, "capture_on_host": capture_seen,
        "bytes": got, "ok": bool(j.get("ok")) and got == size
        and j.get("sha256") == generated_sha256(size, SEED),
        "seconds": j.get("seconds"), "client_process_wall_s": round(wall, 3),
        "mb_per_s": round(got / 1e6 / j["seconds"], 2) if j.get("seconds") else None,
        "server_cpu_s": round(scpu, 3), **_offload_used(tmp / f"{kind}.server.log"),
        "server_mb_per_cpu_s": round(got / 1e6 / scpu, 2) if scpu > 0 else None,
    }


def run(quick: bool, size: int | None = None, repeats: int | None = None,
        kinds: tuple[str, ...] | None = None) -> dict:
    """Interleaved transfers of every kind; medians and the Trickles/QUIC ratios."""
    o = dict(QUICK if quick else FULL)
    o["size"] = size or o["size"]
    o["repeats"] = repeats or o["repeats"]
    if kinds is None:
        kinds = ("trickles-udp", "quic", "trickles-udp-plain") + (
            ("trickles-raw",) if os.geteuid() == 0 else ())
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-quicloop-"))
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    try:
        (tmp / "www").mkdir()
        for _ in range(o["repeats"]):
            for k in kinds:
                try:
                    runs[k].append(one(k, o["size"], tmp))
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    runs[k].append({"kind": k, "error": f"{type(e).__name__}: {e}"})
                print(f"quic_loopback: {k}: {runs[k][-1]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med: dict[str, dict] = {}
    for k, rs in runs.items():
        good = [r for r in rs if r.get("ok")]
        med[k] = {key: round(statistics.median(r[key] for r in good), 2) if good else None
                  for key in ("server_mb_per_cpu_s", "mb_per_s")}
    q = med.get("quic", {}).get("server_mb_per_cpu_s")
    ratios = {f"{k}_over_quic": round(m["server_mb_per_cpu_s"] / q, 3)
              for k, m in med.items() if k != "quic" and q and m["server_mb_per_cpu_s"]}
    return {"options": o, "kinds": list(kinds), "runs": runs, "median": med,
            "server_mb_per_cpu_s_over_quic": ratios, "target_ratio": 2.5,
            "loadavg": list(os.getloadavg())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 MB, one repeat")
    ap.add_argument("--size", type=int)
    ap.add_argument("--repeats", type=int)
    a = ap.parse_args()
    print(json.dumps(run(a.quick, a.size, a.repeats), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
