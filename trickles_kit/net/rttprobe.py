"""Round trips through a testbed: a UDP echo, a prober, and the RTT pre-flight.

Why UDP: `ping` is not installed everywhere, and a Python prober measures what a Python endpoint
sees. Probes are pipelined (one every `interval`, not one per round trip), so 50 probes at a
200 ms RTT take about 0.7 s, and each carries its own send time, so the echo keeps no state.
`preflight()` measures the idle RTT through a testbed before an experiment and refuses, in one
line, when it is not the 2 x delay that was asked for: a delay line starved of CPU, or a
forgotten qdisc, would otherwise make every result quietly wrong.

Run as processes: `python -m trickles_kit.net.rttprobe echo ADDR PORT` (in the server's
namespace) and `... probe HOST PORT --count N --interval S` (in the client's; prints JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from trickles_kit.net.delayline import child_env
from trickles_kit.net.testbed import CLIENT, SERVER, SERVER_ADDR

PORT = 7777
PY = sys.executable
_PROBE = struct.Struct("!Id")  # sequence number, send time (the prober's monotonic clock)
SIZE = 64  # bytes of UDP payload per probe
RCVBUF = 4 << 20
ECHOING = "rttprobe: echoing"


class RttPreflightError(RuntimeError):
    """The idle RTT through the testbed is not what was asked for; str() is one line."""


def _socket(rcvbuf: int = RCVBUF) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # bursts of probes must not overflow the default buffer (root may force it)
        s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return s


def echo(addr: str, port: int, seconds: float) -> None:
    """Send every datagram back to its sender, for at most `seconds`."""
    s = _socket()
    s.bind((addr, port))
    print(ECHOING, flush=True)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if not select.select([s], [], [], min(left, 0.5))[0]:
            continue
        data, peer = s.recvfrom(2048)
        with contextlib.suppress(OSError):
            s.sendto(data, peer)


def probe(host: str, port: int, count: int, interval: float, wait: float,
          size: int = SIZE) -> dict:
    """`count` probes `interval` apart (0: back to back); echoes waited for `wait` s after the
    last send. The RTTs by sequence number, and whether the echoes came back in order."""
    s = _socket()
    s.connect((host, port))
    s.setblocking(False)
    pad = bytes(max(0, size - _PROBE.size))
    rtts: dict[int, float] = {}
    order: list[int] = []
    sent = send_errors = 0
    t0 = time.monotonic()
    end: float | None = None
    while True:
        now = time.monotonic()
        if sent < count and now >= t0 + sent * interval:
            try:
                s.send(_PROBE.pack(sent, time.monotonic()) + pad)
            except OSError:  # EPERM/ENOBUFS: a drop on the way out, counted
                send_errors += 1
            sent += 1
            continue
        if sent == count and end is None:
            end = now + wait
        if end is not None and (now >= end or len(rtts) == count):
            break
        timeout = t0 + sent * interval - now if end is None else end - now
        if select.select([s], [], [], max(0.0, timeout))[0]:
            for data in _drain(s):
                seq, t_sent = _PROBE.unpack_from(data)
                rtts.setdefault(seq, time.monotonic() - t_sent)
                order.append(seq)
    return {"sent": sent, "received": len(rtts), "send_errors": send_errors,
            "in_order": order == sorted(set(order)), "duplicates": len(order) - len(set(order)),
            "rtt_ms": [round(rtts[k] * 1e3, 4) for k in sorted(rtts)]}


def _drain(s: socket.socket) -> Iterator[bytes]:
    for _ in range(10_000):
        try:
            yield s.recv(2048)
        except BlockingIOError:
            return


def summary(rtt_ms: list[float]) -> dict:
    """n, median, mean, sd, min, max of a list of RTTs (ms)."""
    if not rtt_ms:
        return {"n": 0}
    return {"n": len(rtt_ms), "median_ms": round(statistics.median(rtt_ms), 3),
            "mean_ms": round(statistics.fmean(rtt_ms), 3),
            "sd_ms": round(statistics.stdev(rtt_ms), 3) if len(rtt_ms) > 1 else 0.0,
            "min_ms": round(min(rtt_ms), 3), "max_ms": round(max(rtt_ms), 3)}


# ------------------------------------------------------------------------------ in a testbed
@contextlib.contextmanager
def echo_server(tb: Any, where: str = SERVER, addr: str = SERVER_ADDR, port: int = PORT,
                seconds: float = 600.0, wrap: Sequence[str] = ()) -> Iterator[subprocess.Popen]:
    """A UDP echo in namespace `where` of testbed `tb` (anything with `popen(where, argv)`);
    `wrap` runs it under a command (`chrt -f 5`)."""
    p = tb.popen(where, [*wrap, PY, "-m", "trickles_kit.net.rttprobe", "echo", addr, str(port),
                         "--seconds", str(seconds)],
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env())
    try:
        ok = select.select([p.stdout], [], [], 20.0)[0] and ECHOING in p.stdout.readline()
        if not ok:
            raise RuntimeError("the UDP echo server did not start")
        yield p
    finally:
        if p.poll() is None:
            p.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def run_probe(tb: Any, count: int = 50, interval: float = 0.01, wait: float = 2.0,
              where: str = CLIENT, host: str = SERVER_ADDR, port: int = PORT,
              wrap: Sequence[str] = ()) -> dict:
    """Run the prober in namespace `where` of `tb` against a running echo server."""
    argv = [*wrap, PY, "-m", "trickles_kit.net.rttprobe", "probe", host, str(port), "--count",
            str(count), "--interval", str(interval), "--wait", str(wait)]
    p = tb.sh(where, argv, timeout=count * interval + wait + 30)
    return json.loads(p.stdout)


def rt_wrap() -> list[str]:
    """`chrt -f 5` when this process may use it (root, chrt installed), else nothing.

    Probing endpoints at real-time priority measure the path (the delay line, the kernel), not
    how late a busy machine schedules two Python processes: at a load average of 9 their own
    RTT reached 66 ms with no delay at all (benchmarks/README.md)."""
    return ["chrt", "-f", "5"] if os.geteuid() == 0 and shutil.which("chrt") else []


def measure_rtt(tb: Any, count: int = 50, interval: float = 0.01, wait: float = 2.0,
                port: int = PORT, ends: tuple[str, str, str] = (CLIENT, SERVER, SERVER_ADDR)
                ) -> dict:
    """Idle RTT client -> server -> client through the testbed: summary + loss + order.
    `ends`: (client namespace, server namespace, server address) in `tb` — another topology
    (services.replicas) names its own."""
    wrap = rt_wrap()
    cl, sv, addr = ends
    with echo_server(tb, where=sv, addr=addr, port=port, wrap=wrap):
        r = run_probe(tb, count, interval, wait, where=cl, host=addr, port=port, wrap=wrap)
    return {**summary(r["rtt_ms"]), "sent": r["sent"], "received": r["received"],
            "in_order": r["in_order"], "probes": "SCHED_FIFO 5" if wrap else "SCHED_OTHER"}


def preflight(tb: Any, tol_ms: float = 1.0, count: int = 50,
              delay_ms: float | None = None, port: int = PORT,
              ends: tuple[str, str, str] = (CLIENT, SERVER, SERVER_ADDR),
              mechanism: str | None = None) -> dict:
    """Measure the idle RTT through testbed `tb` and refuse (RttPreflightError, one line) when
    its median is not 2 x the one-way delay (`delay_ms`, default the testbed's) within
    `tol_ms`; else what a result records: RTT asked for and measured. `ends` as for
    `measure_rtt`; `mechanism` (default: the testbed's own account) names the delay used."""
    delay = tb.config.delay_ms if delay_ms is None else delay_ms
    asked = 2 * delay
    m = measure_rtt(tb, count=count, interval=0.01, wait=max(1.0, 4 * asked / 1000), port=port,
                    ends=ends)
    rec = {"rtt_asked_ms": asked, "rtt_measured_ms": m.get("median_ms"),
           "rtt_mean_ms": m.get("mean_ms"), "rtt_sd_ms": m.get("sd_ms"), "rtt_n": m["n"],
           "rtt_probes_lost": m["sent"] - m["received"], "rtt_tolerance_ms": tol_ms,
           "rtt_probes": m["probes"],
           "delay_mechanism": mechanism or tb.describe().get("delay_mechanism")}
    if m["received"] < 0.9 * m["sent"] or m.get("median_ms") is None:
        raise RttPreflightError(f"RTT pre-flight: only {m['received']} of {m['sent']} UDP "
                                f"echoes came back through the testbed; refusing to run")
    if abs(m["median_ms"] - asked) > tol_ms:
        raise RttPreflightError(
            f"RTT pre-flight: asked for {asked:g} ms (2 x {delay:g} ms), measured "
            f"{m['median_ms']:g} ms (median of {m['n']}, sd {m['sd_ms']:g}), more than "
            f"{tol_ms:g} ms off; refusing to run (is the machine too busy for the delay line?)")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trickles_kit.net.rttprobe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("addr")
    e.add_argument("port", type=int)
    e.add_argument("--seconds", type=float, default=600.0)
    p = sub.add_parser("probe")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--wait", type=float, default=2.0)
    p.add_argument("--size", type=int, default=SIZE)
    a = ap.parse_args(argv)
    if a.cmd == "echo":
        echo(a.addr, a.port, a.seconds)
    else:
        print(json.dumps(probe(a.host, a.port, a.count, a.interval, a.wait, a.size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
