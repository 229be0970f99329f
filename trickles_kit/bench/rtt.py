"""The RTT knob of `trickles bench`: a path with propagation delay, queues sized from the
bandwidth-delay product, and a pre-flight that refuses a testbed whose idle RTT is off.

`--rtt MS` is the idle round trip asked for: MS/2 each way, by netem where the kernel has it and
otherwise by the NFQUEUE delay line in the router (`net.delayline`); `--jitter MS` is +- MS on
each one-way delay, slowly varying so that order (and the mean) is kept. Queues from the BDP:

* the bottleneck's tbf buffer is max(50 ms, one RTT) of the rate — at least one
  bandwidth-delay product, what a single Reno flow needs to keep the link busy after it halves
  its window (the testbed's default 50 ms already is one BDP up to RTT 50 ms);
* the delay line's queue is 2 x (BDP + that buffer) in 1500-byte packets, at least 1024
  (`delayline.queue_len_for`): everything a window-limited sender can have in flight, slow
  start's overshoot included, so the line itself never drops.

Before an experiment, `preflight()` builds the path once, measures the idle RTT with UDP echoes
and raises `RttPreflightError` (one line) when the median is not the RTT asked for +- 1 ms
(+ the jitter): a delay line starved of CPU would otherwise make every result quietly wrong.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from trickles_kit.net.delayline import DelayLine, Direction, LineConfig
from trickles_kit.net.rttprobe import RttPreflightError, preflight
from trickles_kit.net.testbed import Testbed, TestbedConfig

__all__ = ["RttPreflightError", "expected_mbit", "host_delay", "path_config", "preflight_path",
           "rtt_argv"]

DEFAULT_QUEUE_MS = 50.0


def path_config(rate_mbit: float, loss: float = 0.0, rtt_ms: float = 0.0,
                jitter_ms: float = 0.0) -> TestbedConfig:
    """The testbed for one run: RTT split evenly between the two ways, queues from the BDP."""
    if rtt_ms < 0 or jitter_ms < 0 or 2 * jitter_ms > rtt_ms:
        raise ValueError(f"--rtt {rtt_ms:g} --jitter {jitter_ms:g}: need 0 <= jitter <= rtt/2")
    return TestbedConfig(rate_mbit=rate_mbit, loss=loss, delay_ms=rtt_ms / 2,
                         jitter_ms=jitter_ms, queue_ms=max(DEFAULT_QUEUE_MS, rtt_ms))


def rtt_argv(rtt_ms: float, jitter_ms: float) -> list[str]:
    """The options that reproduce a path, for a result's recorded command."""
    return ([f"--rtt={rtt_ms:g}"] if rtt_ms else []) + \
        ([f"--jitter={jitter_ms:g}"] if jitter_ms else [])


# A full run with random loss expects at least this many losses: sized for its target time
# alone, a 1 % cell at RTT 100 ms expected about 15, and single runs of one protocol swung by
# 2-6x (Reno 2.72 / 2.11 / 1.77 Mbit/s, Cubic 11.5 / 1.80 / 1.19: bench_goodput_rtt100.json)
MIN_LOSSES = 40
MAX_RUN_S = 45.0  # ... unless the transfer would then last longer than this at the bound


def transfer_bytes(rate_mbit: float, rtt_ms: float, loss: float, secs: float,
                   quick: bool = False, mss: int = 1448) -> int:
    """A run's transfer: `secs` at what a flow can get (`expected_mbit`); in a full run with
    loss, at least MIN_LOSSES expected losses' worth of packets, capped at MAX_RUN_S there."""
    mbit = expected_mbit(rate_mbit, rtt_ms, loss, mss)
    size = mbit * 1e6 / 8 * secs
    if loss > 0 and not quick:
        size = max(size, min(MIN_LOSSES / loss * mss, mbit * 1e6 / 8 * MAX_RUN_S))
    return int(size)


def transfer_timeout(size: int, rate_mbit: float, rtt_ms: float, loss: float) -> float:
    """The clients' timeout for a transfer: 8x its time at what a flow can get, + 30 s."""
    return max(60.0, 8 * size * 8 / (expected_mbit(rate_mbit, rtt_ms, loss) * 1e6) + 30)


def expected_mbit(rate_mbit: float, rtt_ms: float, loss: float, mss: int = 1448) -> float:
    """What one Reno-like flow can get: the bottleneck rate, or with random loss the Mathis
    bound MSS/RTT x sqrt(3/2)/sqrt(p), whichever is lower. Transfers are sized from it so a
    run lasts its target time (at RTT 50 ms and 1 % loss the bound is 2.8 Mbit/s: a transfer
    sized from a 50 Mbit/s link would outlast the client's timeout)."""
    if rtt_ms <= 0 or loss <= 0:
        return rate_mbit
    return min(rate_mbit, mss * 8 / (rtt_ms / 1000) * math.sqrt(1.5 / loss) / 1e6)


def preflight_path(rtt_ms: float, jitter_ms: float = 0.0, rate_mbit: float = 100.0,
                   verbose: bool = False) -> dict:
    """Build the path once and check its idle RTT; what the results record (asked, measured).

    With no delay asked for, nothing is built: the record says so."""
    if rtt_ms <= 0:
        return {"rtt_asked_ms": 0.0, "rtt_measured_ms": None,
                "note": "no delay asked for: the testbed's own RTT (well under 1 ms)"}
    cfg = path_config(rate_mbit, 0.0, rtt_ms, jitter_ms)
    with Testbed(cfg, verbose=verbose) as tb:
        rec = preflight(tb, tol_ms=1.0 + 2 * jitter_ms, count=100 if jitter_ms else 50)
        rec["testbed_delay"] = tb.describe()["delay"]
    rec["delay_line"] = line_summary(tb.delay_stats)
    return rec


def line_summary(stats: dict | None) -> dict | None:
    """The delay line's own account of a pre-flight or a run (`DelayLine.stop()`): CPU,
    packets, late releases, drops; what the benchmarks and the services demos record."""
    if not stats:
        return None
    dirs = stats.get("directions", {})
    return {"scheduling": stats.get("scheduling"), "cpu_share": stats.get("cpu_share"),
            "packets": sum(d.get("packets", 0) for d in dirs.values()),
            "late": sum(d.get("late", 0) for d in dirs.values()),
            "late_max_ms": max((d.get("late_max_ms", 0) for d in dirs.values()), default=0),
            "kernel_stamped": stats.get("kernel_stamped"),
            "lead_ms": stats.get("lead_ms"),
            "kernel_dropped": stats.get("kernel_dropped")}


@contextlib.contextmanager
def host_delay(topo: Any, rtt_ms: float, jitter_ms: float, client: str, dev: str,
               server: tuple[str, str], queue_len: int = 1 << 16) -> Iterator[dict]:
    """The whole RTT on the way out of namespace `client` (its OUTPUT chain, device `dev`), for
    topologies with no router (bench.memory: client and server on one veth); checked by the
    pre-flight against `server` (namespace, address). Yields what the result records; the
    line is stopped (its rules removed) on every exit path. The queue is large: thousands of
    connections may handshake at once."""
    if rtt_ms <= 0:
        yield {"rtt_asked_ms": 0.0, "rtt_measured_ms": None,
               "note": "no delay asked for: the testbed's own RTT (well under 1 ms)"}
        return
    cfg = LineConfig([Direction("out", ["-o", dev], 0, rtt_ms, 2 * jitter_ms)],
                     queue_len=queue_len, chain="OUTPUT", tag=f"tkdl{topo.tag}"[:28])
    line = DelayLine(topo.ns(client), cfg)
    line.start()
    rec: dict = {}
    try:
        rec.update(preflight(
            topo, tol_ms=1.0 + 2 * jitter_ms, count=100 if jitter_ms else 50,
            delay_ms=rtt_ms / 2, ends=(client, *server),
            mechanism=f"nfqueue delay line {rtt_ms:g} ms on the client's way out (queue "
                      f"{queue_len}, {line.ready.get('scheduling', '?')})"))
        yield rec
    finally:
        rec["delay_line"] = line_summary(line.stop())
