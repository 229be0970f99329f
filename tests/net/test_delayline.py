"""The NFQUEUE delay line: its netlink messages, its jitter, and what it does in a real testbed.

The first tests need nothing. The root tests share one client–router–server testbed (with a
UDP echo in the server) and start delay lines in its router: the idle round trip grows by the
two one-way delays (± 1 ms), order is kept, nothing is dropped below the queue length, an
overflow shows up as kernel drops, and every way the line can end (stdin closed, SIGINT,
SIGTERM, an exception) leaves no rule and no queue listener; a testbed with a delay leaves no
namespace and no line process after a normal exit, an exception, SIGINT and SIGTERM. Outside CI
without root they skip, saying how to run them (sudo); in CI they fail instead.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import statistics
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wire_helpers import REPO, need_root, need_tool, signal_child

from trickles_kit.net import nfqueue as nq
from trickles_kit.net.delayline import (
    DelayLine,
    Direction,
    LineConfig,
    SlowJitter,
    queue_len_for,
)
from trickles_kit.net.rttprobe import (
    PORT,
    RttPreflightError,
    echo_server,
    preflight,
    rt_wrap,
    run_probe,
)
from trickles_kit.net.testbed import ROUTER, Testbed, TestbedConfig
from trickles_kit.net.topology import list_namespaces


# ------------------------------------------------------------------------------ no root needed
def test_config_messages_have_the_documented_layout() -> None:
    m = nq.nfq_message(nq.NFQNL_MSG_CONFIG, 0x0102, nq.nl_attr(nq.NFQA_CFG_QUEUE_MAXLEN,
                                                                struct.pack("!I", 77)), seq=9,
                       flags=nq.NLM_F_REQUEST | nq.NLM_F_ACK)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", m)
    assert (length, kind, flags, seq, pid) == (len(m), 0x0302, 5, 9, 0) and len(m) == 28
    assert m[16:20] == bytes([0, 0, 0x01, 0x02])  # AF_UNSPEC, version 0, queue (big-endian)
    assert struct.unpack_from("=HH", m, 20) == (8, 3) and m[24:] == struct.pack("!I", 77)


def test_a_batch_verdict_accepts_up_to_an_id() -> None:
    m = nq.verdict_batch(1, 0x01020304)
    assert struct.unpack_from("=IHH", m) == (32, 0x0303, nq.NLM_F_REQUEST)
    assert struct.unpack_from("=HH", m, 20) == (12, nq.NFQA_VERDICT_HDR)
    assert m[24:] == struct.pack("!II", nq.NF_ACCEPT, 0x01020304)


def _packet_msg(queue: int, pid: int, stamp: tuple[int, int] | None = None) -> bytes:
    attrs = (nq.nl_attr(3, struct.pack("!I", 5))  # NFQA_MARK first: the reader must skip it
             + nq.nl_attr(nq.NFQA_PACKET_HDR, struct.pack("!IHB", pid, 0x0800, 2))
             + (nq.nl_attr(nq.NFQA_TIMESTAMP, struct.pack("!QQ", *stamp)) if stamp else b"")
             + nq.nl_attr(10, bytes(range(64))))  # NFQA_PAYLOAD, the 64 copied bytes
    body = struct.pack("!BBH", 2, 0, queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), nq.PACKET_TYPE, 0, 0, 0) + body


def test_parse_reads_packet_ids_and_errors() -> None:
    err = struct.pack("=IHHII", 36, nq.NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", -errno.EBUSY) \
        + struct.pack("=IHHII", 28, 0x0302, 5, 7, 0)
    buf = _packet_msg(3, 77) + err + _packet_msg(4, 2**32 - 1, (1_800_000_000, 250_000))
    assert list(nq.parse(buf, len(buf))) == [(nq.PACKET_TYPE, 3, 77, 0.0),
                                             (nq.NLMSG_ERROR, 7, errno.EBUSY, 0.0),
                                             (nq.PACKET_TYPE, 4, 2**32 - 1, 1_800_000_000.25)]
    assert list(nq.parse(buf, 30)) == []  # a truncated message is not read


def test_kernel_counters_are_read_per_queue() -> None:
    text = ("    0  12345     3 2    64    17     2      100  1\n"
            "    9  12346     0 2    64     0     0        5  1\n")
    got = nq.kernel_counters([0, 1], text)
    assert got == {0: {"listener_portid": 12345, "waiting": 3, "kernel_dropped": 17,
                       "user_dropped": 2, "id_sequence": 100}}


def test_jitter_is_slow_bounded_and_unbiased() -> None:
    amp = 0.005
    j = SlowJitter(amp, random.Random(3))
    ts = [k * 1e-4 for k in range(100_000)]  # 10 s
    vals = [j.at(t) for t in ts]
    assert all(-amp <= v <= amp for v in vals)
    due = [t + v for t, v in zip(ts, vals, strict=True)]
    assert all(b > a for a, b in zip(due, due[1:], strict=False))  # order kept, no clamping
    assert abs(statistics.fmean(vals)) < amp / 5  # the mean delay does not drift


class _SentVerdicts:
    """A stand-in for the netlink socket: the verdicts the line sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.sock = self

    def send(self, b: bytes) -> int:
        self.sent.append(b)
        return len(b)


def test_the_line_learns_to_wake_early_by_its_oversleep() -> None:
    from trickles_kit.net.delayline import LEAD_MAX_S, Line
    cfg = LineConfig(directions=[Direction("to_server", ["-i", "a"], 0, 10.0)])
    nfq = _SentVerdicts()
    line = Line(cfg, nfq)  # type: ignore[arg-type]
    q = line.queues[0]
    due = 100.0
    for pid in range(40):  # every wake-up comes 0.3 ms after the time it asked for
        q.fifo.append((due, pid))
        nxt = due - line.lead  # what run() asks select() for
        assert line.release(nxt + 0.0003) is None
        due += 0.01
    assert len(nfq.sent) == 40
    assert 0.00025 < line.lead <= 0.0003 + 1e-9 and line.lead <= LEAD_MAX_S
    # a packet due later than the lead is held, one within it goes now
    q.fifo.extend([(due, 40), (due + 0.001, 41)])
    assert line.release(due - line.lead / 2) == due + 0.001 and len(q.fifo) == 1


def test_config_round_trips_and_refuses_nonsense() -> None:
    cfg = LineConfig([Direction("up", ["-i", "v0"], 0, 20.0, 2.0)], queue_len=100, tag="tkdlX")
    assert LineConfig.from_json(cfg.to_json()) == cfg
    for bad in ({"queue_len": 0}, {"tag": "has space"}, {"max_seconds": 0}):
        with pytest.raises(ValueError):
            LineConfig([Direction("up", [], 0, 1.0)], **bad)
    with pytest.raises(ValueError):
        LineConfig([Direction("a", [], 0, 1.0), Direction("b", [], 0, 1.0)])
    with pytest.raises(ValueError):
        Direction("up", [], 70000, 1.0)


def test_queue_length_follows_the_bandwidth_delay_product() -> None:
    assert queue_len_for(10, 20, 62_500) == 1024  # small: the kernel's default is the floor
    # 100 Mbit/s x 200 ms = 2.5 MB in flight + a 625 kB buffer, twice, in 1500-byte packets
    assert queue_len_for(100, 200, 625_000) == int(2 * 3_125_000 / 1500) + 64


# ------------------------------------------------------------------------------ root: testbed
def _tag(letter: str) -> str:
    """Unique per process and moment: xdist workers build testbeds side by side."""
    return f"{letter}{os.getpid() % 1000}{int(time.time() * 1000) % 10000}"


def _need() -> None:
    need_root("network namespaces and netfilter queues")
    for tool in ("tc", "iptables", "ethtool"):
        need_tool(tool)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    _need()
    tag = _tag("D")
    # echo and probes at real-time priority (rt_wrap): what is measured is the line, not how
    # late a busy machine runs two Python processes
    with Testbed(TestbedConfig(rate_mbit=100, queue_ms=50), tag=tag) as tb, \
            echo_server(tb, wrap=rt_wrap()):
        yield tb


def probe(tb: Testbed, count: int, **kw: float) -> dict:
    return run_probe(tb, count, wrap=rt_wrap(), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def base_rtt(bed: Testbed) -> float:
    """The median idle RTT (ms) with no line: what the line's delay adds to."""
    return statistics.median(probe(bed, 50)["rtt_ms"])


def _rules(tb: Testbed) -> str:
    return tb.sh(ROUTER, ["iptables", "-S", "FORWARD"]).stdout


def _listeners(tb: Testbed) -> dict:
    return nq.kernel_counters([0, 1], tb.sh(ROUTER, ["cat", nq.PROC_QUEUES]).stdout)


def _gone(pid: int) -> bool:
    p = Path(f"/proc/{pid}/stat")
    return not p.exists() or p.read_text().split()[2] == "Z"


@pytest.mark.parametrize(("there", "back"), [(10.0, 10.0), (5.0, 25.0)])
def test_idle_rtt_gains_both_one_way_delays(bed: Testbed, base_rtt: float, there: float,
                                            back: float) -> None:
    line = bed.start_delayline(bed.line_config(there, back_delay_ms=back))
    try:
        r = probe(bed, 50)
        live = bed.counters()["delayline"]  # asked of the running line
    finally:
        stats = line.stop()
    assert live["to_server"]["packets"] == stats["directions"]["to_server"]["packets"]
    assert r["received"] == 50 and r["in_order"]
    added = statistics.median(r["rtt_ms"]) - base_rtt
    assert abs(added - (there + back)) <= 1.0, (added, stats)
    assert stats["directions"]["to_server"]["packets"] >= 50
    assert stats["kernel_dropped"] == 0
    # every arrival carried the kernel's stamp: the delay counts from there, not from wake-up
    assert stats["kernel_stamped"] == sum(d["packets"] for d in stats["directions"].values())


def test_order_is_kept_and_nothing_dropped_below_the_queue_length(bed: Testbed) -> None:
    line = bed.start_delayline(bed.line_config(20.0, queue_len=512))
    try:
        r = probe(bed, 400, interval=0.0, wait=1.0)  # a burst: 400 held at once
    finally:
        stats = line.stop()
    assert r["received"] == 400 and r["in_order"] and r["duplicates"] == 0
    assert stats["kernel_dropped"] == 0 and stats["user_dropped"] == 0
    assert stats["directions"]["to_server"]["held_max"] >= 300  # they really were held together


def test_an_overflow_is_counted_as_kernel_drops(bed: Testbed) -> None:
    line = bed.start_delayline(bed.line_config(50.0, queue_len=32))
    try:
        r = probe(bed, 200, interval=0.0, wait=1.0)
    finally:
        stats = line.stop()
    assert 0 < r["received"] <= 32
    assert stats["kernel_dropped"] == r["sent"] - r["received"]
    assert stats["directions"]["to_server"]["kernel_dropped"] >= 200 - 32


def test_jitter_keeps_order_and_the_mean(bed: Testbed, base_rtt: float) -> None:
    line = bed.start_delayline(bed.line_config(20.0, jitter_ms=5.0))
    try:
        r = probe(bed, 400, interval=0.005, wait=1.0)  # 2 s: about 40 jitter knots a way
    finally:
        stats = line.stop()
    assert r["received"] == 400 and r["in_order"]
    added = [x - base_rtt for x in r["rtt_ms"]]
    assert min(added) >= 30 - 0.5  # never released before 20 - 5 ms each way
    # nor much after 20 + 5 ms, but for the odd release a busy machine makes late (counted)
    late = [x for x in added if x > 50 + 1.5]
    assert len(late) <= 0.02 * len(added), (late, stats["directions"])
    assert abs(statistics.fmean(added) - 40) <= 3.0


def test_preflight_passes_a_right_rtt_and_records_it(bed: Testbed) -> None:
    line = bed.start_delayline(bed.line_config(15.0))
    try:
        rec = preflight(bed, delay_ms=15.0, port=PORT + 1)  # the fixture's echo has PORT
    finally:
        line.stop()
    assert rec["rtt_asked_ms"] == 30.0 and abs(rec["rtt_measured_ms"] - 30.0) <= 1.0
    assert rec["rtt_n"] == 50 and rec["rtt_probes_lost"] == 0


def test_preflight_refuses_a_wrong_rtt_in_one_line(bed: Testbed) -> None:
    with pytest.raises(RttPreflightError) as e:  # no line runs: the RTT is well under 1 ms
        preflight(bed, delay_ms=10.0, port=PORT + 1)
    msg = str(e.value)
    assert "\n" not in msg and "asked for 20 ms" in msg and "refusing to run" in msg


FAILING_LINE = """
import sys
from trickles_kit.net import delayline as dl
def boom(self):
    raise RuntimeError("injected failure")
dl.Line.receive = boom
sys.exit(dl.main(sys.argv[1:]))
"""


class FailingLine(DelayLine):
    """The real process with Line.receive replaced by one that raises on the first packet."""

    def child_argv(self) -> list[str]:
        return [*self._prefix(), sys.executable, "-c", FAILING_LINE, "--config",
                self.config.to_json()]


@pytest.mark.parametrize("how", ["stdin closed", "SIGINT", "SIGTERM", "exception"])
def test_every_way_out_removes_rules_and_listener(bed: Testbed, how: str) -> None:
    cfg = bed.line_config(30.0, max_seconds=60)
    line = (FailingLine if how == "exception" else DelayLine)(bed.topo.ns(ROUTER), cfg)
    line.start()
    try:
        assert cfg.tag in _rules(bed) and set(_listeners(bed)) == {0, 1}
        assert line.proc is not None
        if how == "exception":
            probe(bed, 1, wait=0.3)  # the first packet makes it raise
        elif how != "stdin closed":
            os.kill(line.proc.pid, getattr(signal, how))
        if how != "stdin closed":
            line.proc.wait(timeout=15)
    finally:
        stats = line.stop()
    assert stats["reason"].startswith("error: RuntimeError" if how == "exception" else how)
    assert "rules_removed_by_controller" not in stats  # the line removed its own
    assert cfg.tag not in _rules(bed) and _listeners(bed) == {}
    assert _gone(line.proc.pid)
    r = probe(bed, 5)  # the path is plain again: no stale rule dropping or delaying packets
    assert r["received"] == 5 and min(r["rtt_ms"]) < 30


# ------------------------------------------------------------------------------ root: lifecycle
def _left(tag: str) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(f"tk{tag}")]


def test_testbed_delay_is_recorded_and_undone() -> None:
    _need()
    tag = _tag("N")
    with Testbed(TestbedConfig(rate_mbit=50, delay_ms=10), tag=tag) as tb:
        d = tb.describe()
        assert d["delay_mechanism"] in ("nfqueue", "netem")
        line = tb.delayline
        if d["delay_mechanism"] == "nfqueue":
            assert line is not None and "NFQUEUE" in _rules(tb)
            assert d["delay"].startswith("nfqueue delay line 10")
            assert tb.counters()["delayline_kernel_dropped"] == 0
    assert _left(tag) == []
    if line is not None:
        assert line.proc is not None and _gone(line.proc.pid)
        assert tb.delay_stats and tb.delay_stats["reason"] == "stdin closed"


def test_testbed_delay_undone_after_an_exception() -> None:
    _need()
    tag = _tag("E")
    pid = None
    with pytest.raises(RuntimeError, match="mid-run"), \
            Testbed(TestbedConfig(rate_mbit=50, delay_ms=10), tag=tag) as tb:
        pid = tb.delayline.proc.pid if tb.delayline and tb.delayline.proc else None
        raise RuntimeError("mid-run failure")
    assert _left(tag) == []
    assert pid is None or _gone(pid)


CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from trickles_kit.net.testbed import Testbed, TestbedConfig
with Testbed(TestbedConfig(rate_mbit=50, delay_ms=10), tag={tag!r}) as tb:
    line = tb.delayline
    print("ready", line.proc.pid if line else 0, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_testbed_delay_undone_after_a_signal(sig: signal.Signals) -> None:
    _need()
    tag = _tag(f"G{sig.value}")
    rc, pid = signal_child(CHILD.format(repo=str(REPO), tag=tag), sig, 30)
    assert rc != 0
    assert _left(tag) == []
    assert pid == 0 or _gone(pid)



# ------------------------------------------------------------------------------ the RTT knob
def test_the_rtt_knob_splits_the_rtt_and_sizes_queues_from_the_bdp() -> None:
    from trickles_kit.bench.rtt import path_config

    c = path_config(100, 0.01, rtt_ms=200, jitter_ms=5)
    assert (c.delay_ms, c.jitter_ms, c.loss) == (100, 5, 0.01)
    assert c.queue_ms == 200  # the bottleneck buffers one BDP
    assert c.line_queue_len == queue_len_for(100, 210, c.queue_bytes)
    assert path_config(10, rtt_ms=20).queue_ms == 50  # never below the testbed's default
    with pytest.raises(ValueError):
        path_config(10, rtt_ms=10, jitter_ms=6)


def test_transfers_are_sized_from_what_a_flow_can_get() -> None:
    from trickles_kit.bench.rtt import expected_mbit

    assert expected_mbit(50, 0, 0.01) == 50 and expected_mbit(50, 50, 0) == 50
    assert expected_mbit(50, 50, 0.01) == pytest.approx(1448 * 8 / 0.05 * 12.247 / 1e6, rel=1e-3)
    assert expected_mbit(10, 10, 0.0001) == 10  # the link, when the bound is above it


def test_lossy_full_runs_expect_enough_losses() -> None:
    from trickles_kit.bench.rtt import MAX_RUN_S, MIN_LOSSES, expected_mbit, transfer_bytes

    at = expected_mbit(50, 100, 0.01) * 1e6 / 8  # bytes per second at the bound
    assert transfer_bytes(50, 100, 0.01, 12, quick=True) == int(at * 12)  # quick: time alone
    assert transfer_bytes(50, 100, 0.01, 12) == int(MIN_LOSSES / 0.01 * 1448)  # 40 losses
    assert transfer_bytes(50, 200, 0.01, 12) == int(at / 2 * MAX_RUN_S)  # capped at 45 s
    assert transfer_bytes(50, 0, 0.01, 12) == int(50e6 / 8 * 12)  # the link: losses enough
    assert transfer_bytes(50, 100, 0.0, 12) == int(50e6 / 8 * 12)


def test_bench_refuses_the_rtt_knob_where_there_is_no_path(capsys) -> None:
    import argparse

    from trickles_kit.cli.bench import _path_kwargs

    ns = argparse.Namespace(rtt=50.0, jitter=0.0)
    assert _path_kwargs(ns, ["goodput"]) == {"rtt_ms": 50.0, "jitter_ms": 0.0}
    assert _path_kwargs(ns, ["goodput", "fairness"]) == {"rtt_ms": 50.0, "jitter_ms": 0.0}
    assert _path_kwargs(ns, ["loopback"]) is None  # the server alone on loopback
    assert "no path to delay" in capsys.readouterr().err
    assert _path_kwargs(argparse.Namespace(rtt=0.0, jitter=0.0), ["loopback"]) == {}


def test_preflight_path_records_rtt_asked_and_measured() -> None:
    _need()
    from trickles_kit.bench.rtt import preflight_path

    rec = preflight_path(20.0, rate_mbit=50)
    assert rec["rtt_asked_ms"] == 20.0 and abs(rec["rtt_measured_ms"] - 20.0) <= 1.0
    assert rec["delay_mechanism"] in ("nfqueue", "netem")
    if rec["delay_mechanism"] == "nfqueue":
        assert rec["delay_line"]["kernel_dropped"] == 0
