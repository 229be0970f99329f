"""Faults on a real (virtual) wire: loss, blackout, duplication and reordering, kernel-made.

Every scenario runs `trickles serve` in namespace `a` and the client in namespace `b` of a
`NetnsPair` (a veth link, MTU 1500) over raw IP protocol 253. The kernel here has no netem, so
the faults come from what it does have, all matched to IP protocol 253 (`-p 253`) so nothing
else is disturbed:

* loss: `iptables -A INPUT -p 253 -m statistic --mode random --probability P -j DROP` in both
  namespaces (each receiver drops; a DROP on the sender's OUTPUT would make sendto() fail);
* blackout: a thread inserts and deletes an INPUT DROP rule in the client namespace, 5 s of link
  then 2 s of nothing, while a transfer shaped by `tbf rate 8mbit` on the server's veth runs;
* duplication: `iptables -t mangle ... -j TEE --gateway PEER` with the statistic match copies a
  random 10 % of the segments in both directions (a duplicated request is a replay the server
  must refuse), and `tc ... action mirred egress mirror dev VETH` on the server's own veth,
  which this kernel turns into four copies of every segment (mirred's nesting limit);
* reordering: an htb root on the server's veth whose default class is rate-limited with a short
  queue; `-j CLASSIFY` puts a random 10 % of the segments in a second, higher-priority class
  that bypasses that queue, so those segments overtake the ones queued before them.

Namespaces (and with them every rule and qdisc) are deleted in a finally. Needs root, ip,
iptables and tc; outside CI the tests skip without them, in CI they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wire_helpers import (
    IN_CI,
    REPO,
    need_root,
    need_tool,
    server_process,
    sha256_file,
    trickles_argv,
)

pytestmark = pytest.mark.e2e

PORT = 18290
# Data bytes per packet on both ends. A full data segment carries ~190 bytes of Trickles headers
# (TCP header + option, response header, continuation, the web app's sealed descriptor, chunk
# header), so the default 1448 makes 1656-byte IP datagrams: on this 1500-byte-MTU veth the kernel
# fragments every one of them, and a lost or duplicated fragment leaves reassembly queues that
# stall the receiver for ipfrag_time (30 s). 1200 fits, as in test_wire_e2e.py.
MSS = "1200"
SMALL, BIG, LONG = 30_000, 8_000_000, 10_000_000
COMMENT = ["-m", "comment", "--comment", "tk-faults"]


# ---------------------------------------------------------------------- the testbed
@pytest.fixture(scope="module")
def www() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tk-faults-www-"))
    try:
        os.chmod(d, 0o755)
        rnd = random.Random(11)
        for name, size in (("small.bin", SMALL), ("big.bin", BIG), ("long.bin", LONG)):
            (d / name).write_bytes(rnd.randbytes(size))
            os.chmod(d / name, 0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Bed:
    """A NetnsPair with helpers: commands in a namespace, the server, fetches."""

    def __init__(self, pair, www: Path, tmp: Path) -> None:
        self.ns = pair
        self.www = www
        self.tmp = tmp

    def sh(self, ns: str, *argv: str, check: bool = True,
           feature: str | None = None) -> subprocess.CompletedProcess:
        """Run `argv` in namespace `ns`. If it fails and names a kernel `feature`, skip outside
        CI (this kernel lacks it) and fail in CI."""
        p = subprocess.run(self.ns.exec_argv(ns, argv), capture_output=True, text=True,
                           timeout=30)
        if check and p.returncode != 0:
            msg = f"{' '.join(argv)} in {ns}: {p.stderr.strip()}"
            if feature is not None and not IN_CI:
                pytest.skip(f"this kernel lacks {feature} ({msg}): build it with that option")
            raise AssertionError(msg)
        return p

    def loss(self, ns: str, probability: float) -> None:
        self.sh(ns, "iptables", "-A", "INPUT", "-p", "253", "-m", "statistic", "--mode",
                "random", "--probability", str(probability), *COMMENT, "-j", "DROP",
                feature="the iptables statistic match (CONFIG_NETFILTER_XT_MATCH_STATISTIC)")

    def url(self, path: str) -> str:
        return f"http://{self.ns.addr_a}:{PORT}/{path}"

    @contextlib.contextmanager
    def server(self, *extra: str) -> Iterator[dict]:
        """`trickles serve` in namespace a; on exit its final counters land in the dict."""
        argv = self.ns.exec_argv(self.ns.a, trickles_argv(
            "serve", "--root", str(self.www), "--transport", "raw", "--addr", self.ns.addr_a,
            "--port", str(PORT), "--mss", MSS, *extra))
        stats: dict = {}
        with server_process(argv) as p:
            yield stats
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=30)
            assert "Traceback" not in err, err[-3000:]
            for line in out.splitlines():
                if "stopped;" in line:
                    f = line.replace(",", "").split()
                    stats.update(requests=int(f[3]), packets=int(f[5]), dropped=int(f[7]))

    def fetch(self, path: str, *extra: str, timeout: float = 120) -> dict:
        out = self.tmp / f"{path}.out"
        p = subprocess.run(self.ns.exec_argv(self.ns.b, trickles_argv(
            "fetch", self.url(path), "-o", str(out), "--transport", "raw", "--json",
            "--timeout", str(timeout), "--mss", MSS, *extra)), capture_output=True, text=True,
            timeout=timeout + 30)
        assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
        r = json.loads(p.stdout)
        r["byte_exact"] = r["ok"] and sha256_file(out) == sha256_file(self.www / path)
        out.unlink()
        return r


@contextlib.contextmanager
def bed(www: Path, tmp: Path, n: int) -> Iterator[Bed]:
    need_root("network namespaces and raw sockets")
    for tool in ("ip", "iptables", "tc"):
        need_tool(tool)
    from trickles_kit.net.netns import NetnsPair

    with NetnsPair(tag=f"w{os.getpid() % 10000}{n}", subnet=80 + n, suppress_rst=False) as ns:
        yield Bed(ns, www, tmp)


def arrival_order(pcap: Path, server_ip: str, originals: bool = False) -> list[int]:
    """Sequence numbers (packet numbers) of the server's segments in the order they arrived;
    with `originals`, only first transmissions (a retransmission carries a MINIMAL
    continuation: type 0 at response offset 8)."""
    data = pcap.read_bytes()
    sip = socket.inet_aton(server_ip)
    off, seqs = 24, []
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        dgram = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if dgram[12:16] == sip:
            seg = dgram[(dgram[0] & 0xF) * 4 :]
            if originals and (len(seg) < 37 or seg[28 + 8] == 0):
                continue
            seqs.append(struct.unpack_from("!I", seg, 4)[0])
    return seqs


# ---------------------------------------------------------------------- many handshakes
CLIENT = r"""
import hashlib, json, sys, time
from trickles_kit.core.client import ClientConfig
from trickles_kit.net.ip import aton
from trickles_kit.net.raw import RawTransport
from trickles_kit.net.runner import ClientHost

local, server, port, path, n, want, timeout, mss = sys.argv[1:9]
tr = RawTransport(local)
cfg = ClientConfig(mss=int(mss), initial_rto=0.5, max_rto=2.0)
host = ClientHost(tr, aton(server), int(port), config=cfg)
req = f"GET /{path} HTTP/1.1\r\nHost: {server}:{port}\r\n\r\n".encode()
t0 = time.monotonic()
conns = [host.open(req, keep=True) for _ in range(int(n))]
host.run_until(host.all_finished, timeout=float(timeout))
secs = time.monotonic() - t0
res = []
for c in conns:
    head, _, body = b"".join(c.chunks).partition(b"\r\n\r\n")
    res.append({"done": c.done, "status_200": head.startswith(b"HTTP/1.1 200"),
                "exact": hashlib.sha256(body).hexdigest() == want,
                "seconds": round((c.finished or time.monotonic()) - c.started, 3),
                "syn_retries": c.engine.counters["syn_retries"],
                "timeouts": c.engine.counters["timeouts"],
                "phase": c.engine.phase, "received": c.received,
                "counters": dict(c.engine.counters)})
host.close(linger=0.5)
host.shutdown()
tr.close()
print(json.dumps({"seconds": round(secs, 2), "conns": res}))
"""


def test_fifty_handshakes_at_30_percent_loss(www: Path, tmp_path: Path) -> None:
    """30 % loss at each receiver: 50 concurrent fetches from one ClientHost, all byte-exact.

    The client uses initial RTO 0.5 s and max RTO 2 s (a LAN): with the defaults (1 s, 60 s)
    the unlucky tail of 50 connections at 51 % round-trip loss takes minutes, not seconds.
    """
    with bed(www, tmp_path, 1) as b:
        b.loss(b.ns.a, 0.3)
        b.loss(b.ns.b, 0.3)
        with b.server() as stats:
            p = subprocess.run(b.ns.exec_argv(b.ns.b, [
                sys.executable, "-c", CLIENT, b.ns.addr_b, b.ns.addr_a, str(PORT), "small.bin",
                "50", sha256_file(www / "small.bin"), "100", MSS]), capture_output=True, text=True,
                timeout=160, cwd=REPO)
        drops = b.sh(b.ns.a, "iptables", "-nvxL", "INPUT").stdout
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    conns = r["conns"]
    summary = {"seconds": r["seconds"], "conns": len(conns),
               "syn_retries": sum(c["syn_retries"] for c in conns),
               "timeouts": sum(c["timeouts"] for c in conns),
               "slowest": max(c["seconds"] for c in conns), "server": stats}
    print("\n50 handshakes at 30 % loss:", json.dumps(summary))
    bad = [c for c in conns if not (c["done"] and c["status_200"] and c["exact"])]
    assert len(conns) == 50 and not bad, bad
    assert summary["syn_retries"] > 0, "30 % loss and no SYN was lost?"
    assert "statistic" in drops


# ---------------------------------------------------------------------- loss on a transfer
def test_two_percent_loss_multi_mb(www: Path, tmp_path: Path) -> None:
    with bed(www, tmp_path, 2) as b:
        b.loss(b.ns.a, 0.02)
        b.loss(b.ns.b, 0.02)
        with b.server() as stats:
            r = b.fetch("big.bin")
    print("\n2 % loss:", json.dumps(r), stats)
    assert r["byte_exact"] and r["bytes"] == BIG
    assert r["recoveries"] + r["timeouts"] > 0, "2 % loss and nothing was lost?"


# ---------------------------------------------------------------------- blackout
class Blackout:
    """A thread that drops every IP-253 packet into namespace `ns` for `off` s after each `on` s,
    until stopped; the rule is always gone when it returns."""

    def __init__(self, b: Bed, ns: str, on: float = 5.0, off: float = 2.0) -> None:
        self.b, self.ns, self.on, self.off = b, ns, on, off
        self.rule = ["INPUT", "-p", "253", *COMMENT, "-j", "DROP"]
        self.stop = threading.Event()
        self.periods: list[tuple[float, float]] = []
        self.t0 = time.monotonic()
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        inserted = False
        try:
            while not self.stop.wait(self.on):
                self.b.sh(self.ns, "iptables", "-I", *self.rule)
                inserted = True
                start = time.monotonic() - self.t0
                self.stop.wait(self.off)
                self.b.sh(self.ns, "iptables", "-D", *self.rule)
                inserted = False
                self.periods.append((round(start, 2), round(time.monotonic() - self.t0, 2)))
        finally:
            if inserted:
                self.b.sh(self.ns, "iptables", "-D", *self.rule, check=False)

    def __enter__(self) -> Blackout:
        self.t0 = time.monotonic()
        self.th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.th.join(timeout=30)


def test_blackouts_5s_on_2s_off(www: Path, tmp_path: Path) -> None:
    with bed(www, tmp_path, 3) as b:
        b.sh(b.ns.a, "tc", "qdisc", "add", "dev", b.ns.veth_a, "root", "tbf", "rate", "8mbit",
             "burst", "32kbit", "latency", "400ms", feature="tbf (CONFIG_NET_SCH_TBF)")
        with b.server() as stats:
            with Blackout(b, b.ns.b) as bo:
                r = b.fetch("long.bin")
            rules = b.sh(b.ns.b, "iptables", "-S", "INPUT").stdout
    print("\nblackouts:", json.dumps(r), stats, "periods", bo.periods)
    assert "tk-faults" not in rules, "the blackout rule outlived its thread"
    assert r["byte_exact"] and r["bytes"] == LONG
    assert r["seconds"] > 10.0, "the transfer must outlast several blackout cycles"
    during = [p for p in bo.periods if p[1] < r["seconds"]]
    assert len(during) >= 1, bo.periods
    assert r["timeouts"] > 0, "a 2 s blackout must cost at least one timeout"


# ---------------------------------------------------------------------- duplication
def test_random_duplication_both_ways_with_tee(www: Path, tmp_path: Path) -> None:
    """10 % of segments copied in each direction: duplicated requests are replays (refused),
    duplicated answers are recognised by the client."""
    with bed(www, tmp_path, 4) as b:
        for ns, peer in ((b.ns.a, b.ns.addr_b), (b.ns.b, b.ns.addr_a)):
            b.sh(ns, "iptables", "-t", "mangle", "-A", "POSTROUTING", "-p", "253", "-m",
                 "statistic", "--mode", "random", "--probability", "0.1", *COMMENT, "-j",
                 "TEE", "--gateway", peer,
                 feature="the TEE target (CONFIG_NETFILTER_XT_TARGET_TEE)")
        ev = tmp_path / "server.jsonl"
        with b.server("--events", str(ev)) as stats:
            r = b.fetch("big.bin", "--events", str(tmp_path / "client.jsonl"))
        tee = b.sh(b.ns.a, "iptables", "-t", "mangle", "-nvxL", "POSTROUTING").stdout
    replays = sum(1 for line in ev.open() if '"replay' in line)
    copies = int(next(ln for ln in tee.splitlines() if "TEE" in ln).split()[0])
    print("\nTEE duplication:", json.dumps(r), stats, "server copies", copies,
          "replays refused", replays)
    assert r["byte_exact"] and r["bytes"] == BIG
    assert copies > 100 and replays > 100, (copies, replays)


def test_every_segment_four_times_with_mirred(www: Path, tmp_path: Path) -> None:
    """`mirred egress mirror` to the server's own veth: each segment leaves four times."""
    with bed(www, tmp_path, 5) as b:
        dev = b.ns.veth_a
        b.sh(b.ns.a, "tc", "qdisc", "add", "dev", dev, "clsact", feature="clsact")
        b.sh(b.ns.a, "tc", "filter", "add", "dev", dev, "egress", "protocol", "ip", "u32",
             "match", "ip", "protocol", "253", "0xff", "action", "mirred", "egress", "mirror",
             "dev", dev, feature="u32 + act_mirred (CONFIG_NET_CLS_U32, CONFIG_NET_ACT_MIRRED)")
        pcap = tmp_path / "client.pcap"
        with b.server() as stats:
            r = b.fetch("big.bin", "--pcap", str(pcap))
    seqs = arrival_order(pcap, b.ns.addr_a)
    dup_ratio = len(seqs) / max(1, len(set(seqs)))
    print("\nmirred duplication:", json.dumps(r), stats, "copies per segment",
          round(dup_ratio, 2))
    assert r["byte_exact"] and r["bytes"] == BIG
    assert dup_ratio > 2.0, dup_ratio


# ---------------------------------------------------------------------- reordering
def test_reordering_with_htb_and_classify(www: Path, tmp_path: Path) -> None:
    with bed(www, tmp_path, 6) as b:
        dev, a = b.ns.veth_a, b.ns.a
        tc = ("tc",)
        b.sh(a, *tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
             feature="htb (CONFIG_NET_SCH_HTB)")
        b.sh(a, *tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
             "rate", "60mbit")
        b.sh(a, *tc, "class", "add", "dev", dev, "parent", "1:1", "classid", "1:10", "htb",
             "rate", "20mbit", "ceil", "20mbit", "prio", "1")
        b.sh(a, *tc, "qdisc", "add", "dev", dev, "parent", "1:10", "pfifo", "limit", "60")
        b.sh(a, *tc, "class", "add", "dev", dev, "parent", "1:1", "classid", "1:20", "htb",
             "rate", "20mbit", "ceil", "60mbit", "prio", "0")
        b.sh(a, "iptables", "-t", "mangle", "-A", "POSTROUTING", "-p", "253", "-m",
             "statistic", "--mode", "random", "--probability", "0.1", *COMMENT, "-j",
             "CLASSIFY", "--set-class", "1:20",
             feature="the CLASSIFY target (CONFIG_NETFILTER_XT_TARGET_CLASSIFY)")
        pcap = tmp_path / "client.pcap"
        with b.server() as stats:
            r = b.fetch("big.bin", "--pcap", str(pcap))
    seqs = arrival_order(pcap, b.ns.addr_a, originals=True)
    top, late = -1, 0
    for s in seqs:
        if s < top:
            late += 1
        top = max(top, s)
    print("\nreordering:", json.dumps(r), stats, f"{late} of {len(seqs)} arrived after a "
          "higher packet number")
    assert r["byte_exact"] and r["bytes"] == BIG
    assert late > 50, late
