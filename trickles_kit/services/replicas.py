"""A replica set behind a router, in namespaces: the only forwarding is the kernel's.

    client c ── router r ──┬── replica s1   (failover, balance: every replica one hop away)
                            └── replica s2
    client c ── router r ──┬── replica s1                 site A (near)
                            └── router r2 ── replica s2    site B (one router hop further)

Every replica holds the service (anycast) address `SERVICE` on its loopback and runs a server
bound to it: `trickles serve` sharing one secret file, or the Linux TCP HTTP server. The router
chooses among replicas with nothing but routes and netfilter:

* failover — the main table's route to `SERVICE` points at the active replica; a health-check
  thread (here: the replica's process is polled every 10 ms — the lab's stand-in for a network
  probe) or `switch_to()` by hand moves it to the standby;
* balance — `iptables -t mangle PREROUTING -m statistic --mode nth` marks packet k of every N
  with fwmark k+1; `ip rule fwmark k+1 → table 100+k` whose only route goes to replica k;
* anycast — two routes to `SERVICE` with different metrics (site A near, site B behind r2);
  `withdraw("s1")` deletes site A's, as a routing protocol would when the site goes away.

The topology has `suppress_rst=False`: Trickles rides on IP protocol 253 (no RSTs involved), and
the TCP runs need the kernel's RSTs to tell their story.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trickles_kit.bench.rtt import line_summary
from trickles_kit.net import sysdeps
from trickles_kit.net.delayline import DelayLine, Direction, LineConfig, queue_len_for
from trickles_kit.net.rttprobe import preflight
from trickles_kit.net.topology import Topology
from trickles_kit.services.capture import RouterCapture
from trickles_kit.services.cgroup import CpuGroup

SERVICE = "10.99.0.1"
PORT = 8080
CLIENT = "10.70.0.2"
ROUTER = "10.70.0.1"
MSS = 1200  # a full Trickles data segment fits a 1500-byte MTU (see tests/net/test_wire_e2e.py)
MODES = ("failover", "balance", "anycast")
# every system tool a demo runs (namespaces, sysctls, offloads, bottleneck, balancing, captures)
TOOLS = ("ip", "sysctl", "ethtool", "tc", "iptables", "tcpdump")
KINDS = ("trickles", "tcp")


@dataclass
class Replica:
    name: str  # s1, s2, ...
    ns: str
    addr: str  # its own veth address (the next hop toward it)
    site: str  # the router-side name of the interface its packets cross (a capture name)
    proc: subprocess.Popen | None = None
    killed_at: float | None = None


@dataclass
class HealthCheck:
    """Polls the active replica; when it is gone, moves the route to the next live one."""

    bed: ServiceBed
    interval: float = 0.01
    detected_at: float | None = None
    switched_at: float | None = None
    new_active: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            act = self.bed.replica(self.bed.active)
            if act.proc is not None and act.proc.poll() is not None:
                self.detected_at = time.time()
                standby = next((r for r in self.bed.replicas if r.name != act.name
                                and r.proc is not None and r.proc.poll() is None), None)
                if standby is None:
                    return
                with contextlib.suppress(Exception):
                    self.bed.switch_to(standby.name)
                    self.switched_at = time.time()
                    self.new_active = standby.name
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class ServiceBed:
    """Namespaces, router rules, replicas and captures for one demo; a context manager that
    always tears everything down (namespaces, processes, cgroups, the work directory)."""

    def __init__(self, mode: str, kind: str = "trickles", n: int = 2,
                 rate_mbit: float | None = None, cpu_fraction: float | None = None,
                 verbose: bool = False, tag: str | None = None, rtt_ms: float = 0.0,
                 jitter_ms: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if not 1 <= n <= 8 or (mode != "balance" and n != 2):
            raise ValueError("failover and anycast use 2 replicas; balance 1 to 8")
        if rtt_ms < 0 or jitter_ms < 0 or 2 * jitter_ms > rtt_ms:
            raise ValueError(f"rtt {rtt_ms:g} ms, jitter {jitter_ms:g} ms: need "
                             f"0 <= jitter <= rtt/2")
        self.mode, self.kind, self.n = mode, kind, n
        self.rtt_ms, self.jitter_ms = rtt_ms, jitter_ms
        self.delayline: DelayLine | None = None
        self.rtt: dict = {"rtt_asked_ms": 0.0, "rtt_measured_ms": None,
                          "note": "no delay asked for: the namespaces' own RTT (well under 1 ms)"}
        self.rate_mbit, self.cpu_fraction, self.verbose = rate_mbit, cpu_fraction, verbose
        self.topo = Topology(tag=tag or str(os.getpid()), verbose=verbose, suppress_rst=False)
        self.replicas: list[Replica] = []
        self.groups: list[CpuGroup] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="tk-services-"))
        self.capture: RouterCapture | None = None
        self.active = "s1"
        self.health: HealthCheck | None = None
        self.client_dev = ""
        self.site_devs: dict[str, str] = {}
        self._client_addrs: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> ServiceBed:
        try:
            # checked before the first namespace, so nothing is half-built when one is missing
            sysdeps.require(TOOLS, f"the services demo ({self.mode})")
            self.topo.__enter__()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.health:
            self.health.stop()
        if self.capture:
            with contextlib.suppress(Exception):
                self.capture.stop()
        if self.delayline is not None and self.delayline.final is None:
            # before the namespaces go: it removes its rules and reports its counters
            with contextlib.suppress(Exception):
                self.rtt["delay_line_final"] = line_summary(self.delayline.stop())
        self.topo.close()
        for g in self.groups:
            g.close()
        self.groups.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- building --------------------------------------------------------------------------
    def _sysctl(self, ns: str, *kv: str) -> None:
        for x in kv:
            self.topo.sh(ns, ["sysctl", "-qw", x])

    def _build(self) -> None:
        t = self.topo
        t.ns("r")
        # replies from every replica carry the same source address, arriving on different
        # interfaces: strict reverse-path filtering would drop all but one replica's
        self._sysctl("r", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        t.forward("r")
        cl = t.link("c", "r", f"{CLIENT}/24", f"{ROUTER}/24")
        self.client_dev = cl.dev_b
        t.sh("c", ["ip", "route", "add", "default", "via", ROUTER])
        for i in range(1, self.n + 1):
            name = f"s{i}"
            if self.mode == "anycast" and i == 2:  # site B: one more router on the way
                t.ns("r2")
                self._sysctl("r2", "net.ipv4.conf.all.rp_filter=0",
                             "net.ipv4.conf.default.rp_filter=0")
                t.forward("r2")
                mid = t.link("r", "r2", "10.72.0.1/24", "10.72.0.2/24")
                lk = t.link("r2", name, f"10.71.{i}.1/24", f"10.71.{i}.2/24")
                t.sh("r2", ["ip", "route", "add", "default", "via", "10.72.0.1"])
                t.sh("r2", ["ip", "route", "add", f"{SERVICE}/32", "via", lk.addr_b])
                site_dev, hop = mid.dev_a, mid.addr_b
            else:
                lk = t.link("r", name, f"10.71.{i}.1/24", f"10.71.{i}.2/24")
                site_dev, hop = lk.dev_a, lk.addr_b
            t.add_address(name, f"{SERVICE}/32", "lo")
            t.sh(name, ["ip", "route", "add", "default", "via", lk.addr_a])
            self.site_devs[name] = site_dev
            self.replicas.append(Replica(name, t.ns(name), hop, name))
        r1 = self.replicas[0]
        if self.mode == "anycast":
            t.sh("r", ["ip", "route", "add", f"{SERVICE}/32", "via", r1.addr, "metric", "10"])
            t.sh("r", ["ip", "route", "add", f"{SERVICE}/32", "via", self.replicas[1].addr,
                       "metric", "20"])
        else:
            t.sh("r", ["ip", "route", "add", f"{SERVICE}/32", "via", r1.addr])
        if self.rate_mbit:
            # a bottleneck toward the client, so a transfer lasts long enough to act mid-way;
            # its buffer max(50 ms, one RTT) of the rate: at least one bandwidth-delay product
            t.tc("r", "qdisc", "add", "dev", self.client_dev, "root", "tbf", "rate",
                 f"{self.rate_mbit}mbit", "burst", "32kb", "latency",
                 f"{max(50.0, self.rtt_ms):g}ms")
        if self.rtt_ms > 0:
            self._start_delay()

    def _start_delay(self) -> None:
        """RTT/2 each way in the router (the NFQUEUE delay line, bench.rtt's sizing), then the
        pre-flight: the idle RTT client -> s1 must be the RTT asked for +- 1 ms (+ jitter),
        measured before any route is balanced (so every probe reaches s1's echo)."""
        half, jit, dev = self.rtt_ms / 2, self.jitter_ms, self.client_dev
        rate = self.rate_mbit or 1000.0  # no bottleneck: size for a fast veth
        qlen = queue_len_for(rate, self.rtt_ms + 2 * jit, int(rate * 1e6 / 8 * max(
            0.05, self.rtt_ms / 1000)))
        cfg = LineConfig([Direction("to_service", ["-i", dev], 0, half, jit),
                          Direction("to_client", ["-o", dev], 1, half, jit)],
                         queue_len=qlen, tag=f"tkdl{self.topo.tag}"[:28])
        self.delayline = DelayLine(self.topo.ns("r"), cfg, verbose=self.verbose)
        self.delayline.start()
        assert self.delayline.proc is not None
        self.topo.procs.append(self.delayline.proc)  # killed with the rest if all else fails
        rec = preflight(self.topo, tol_ms=1.0 + 2 * jit, count=100 if jit else 50,
                        delay_ms=half, ends=("c", "s1", SERVICE),
                        mechanism=f"nfqueue delay line {half:g} ms each way"
                                  + (f" +- {jit:g} ms" if jit else "")
                                  + f" (queue {qlen} packets, "
                                  f"{self.delayline.ready.get('scheduling', '?')})")
        self.rtt = {**rec, "jitter_ms": jit}

    def replica(self, name: str) -> Replica:
        for r in self.replicas:
            if r.name == name:
                return r
        raise KeyError(name)

    # -- servers ---------------------------------------------------------------------------
    def start_replicas(self, names: Sequence[str] | None = None, timeout: float = 20.0) -> None:
        """Start the servers (all replicas by default) and wait until each says it is up."""
        secret = self.workdir / "secret"
        if not secret.exists():
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        for r in self.replicas:
            if names is not None and r.name not in names:
                continue
            if self.kind == "trickles":
                argv = [sys.executable, "-m", "trickles_kit.cli", "serve", "--root", str(www),
                        "--transport", "raw", "--addr", SERVICE, "--port", str(PORT),
                        "--mss", str(MSS), "--secret-file", str(secret)]
                ready = "trickles serve:"
            else:
                argv = [sys.executable, "-m", "trickles_kit.bench.tcphttp", "--bind", SERVICE,
                        "--port", str(PORT)]
                ready = "tcphttp: serving"
            r.proc = self.topo.popen(r.name, argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
            if self.cpu_fraction:
                g = CpuGroup(f"{self.topo.tag}-{r.name}", self.cpu_fraction)
                self.groups.append(g)
                g.add(r.proc.pid)
        for r in self.replicas:
            if r.proc is None or (names is not None and r.name not in names):
                continue
            end = time.monotonic() + timeout
            line = ""
            while time.monotonic() < end and ready not in line:
                line = r.proc.stdout.readline() if r.proc.stdout else ""
                if not line and r.proc.poll() is not None:
                    raise RuntimeError(f"replica {r.name} exited ({r.proc.returncode})")
            if ready not in line:
                raise RuntimeError(f"replica {r.name} did not start within {timeout} s")

    def kill(self, name: str) -> float:
        """SIGKILL replica `name`'s server (the replica dies; its namespace stays)."""
        r = self.replica(name)
        assert r.proc is not None
        r.proc.kill()
        r.killed_at = time.time()
        r.proc.wait(timeout=5)
        return r.killed_at

    # -- routing ---------------------------------------------------------------------------
    def switch_to(self, name: str) -> None:
        """Point the router's route to the service at replica `name` (failover)."""
        self.topo.sh("r", ["ip", "route", "replace", f"{SERVICE}/32", "via",
                           self.replica(name).addr])
        self.active = name

    def start_health_check(self, interval: float = 0.01) -> HealthCheck:
        self.health = HealthCheck(self, interval)
        self.health.start()
        return self.health

    def balance(self, names: Sequence[str] | None = None) -> None:
        """Per-packet round robin over `names` (default: all replicas) toward the service."""
        use = [self.replica(n) for n in (names or [r.name for r in self.replicas])]
        for k, r in enumerate(use):
            mark, table = str(k + 1), str(100 + k)
            self.topo.sh("r", ["ip", "route", "add", f"{SERVICE}/32", "via", r.addr,
                               "table", table])
            self.topo.sh("r", ["ip", "rule", "add", "fwmark", mark, "table", table])
            self.topo.iptables("r", "-t", "mangle", "-A", "PREROUTING", "-d", SERVICE, "-m",
                               "statistic", "--mode", "nth", "--every", str(len(use)),
                               "--packet", str(k), "-j", "MARK", "--set-mark", mark)

    def withdraw(self, name: str) -> float:
        """Anycast: site `name` withdraws its route; the next-best route takes over."""
        r = self.replica(name)
        self.topo.sh("r", ["ip", "route", "del", f"{SERVICE}/32", "via", r.addr])
        return time.time()

    # -- observing and clients -------------------------------------------------------------
    def start_capture(self) -> RouterCapture:
        # one file per replica-facing interface (names the replica) and one toward the client
        # (what the client experiences, after the bottleneck)
        self.capture = RouterCapture(self.topo, "r", {**self.site_devs, "client": self.client_dev},
                                     self.workdir, SERVICE)
        self.capture.start()
        return self.capture

    def client_addr(self, k: int) -> str:
        """Client address number k (0: CLIENT). Each Trickles client gets its own: a raw socket
        receives every protocol-253 datagram to its address, so clients sharing one would each
        parse all the others' packets."""
        if k == 0:
            return CLIENT
        addr = f"10.70.0.{10 + k}"
        if addr not in self._client_addrs:
            self.topo.add_address("c", f"{addr}/24", self.topo.links[0].dev_a)
            self._client_addrs.add(addr)
        return addr

    def agent(self, size: int, seed: int = 1, mark: int | None = None,
              start_at: float | None = None, timeout: float = 60.0,
              events: str | None = None, client: int = 0) -> subprocess.Popen:
        """A client process (services.agent) in the client namespace; JSON lines on stdout."""
        argv = [sys.executable, "-m", "trickles_kit.services.agent", self.kind,
                f"http://{SERVICE}:{PORT}", "--size", str(size), "--seed", str(seed),
                "--local-addr", self.client_addr(client), "--mss", str(MSS),
                "--timeout", str(timeout),
                "--io-timeout", "3"]
        if mark is not None:
            argv += ["--mark", str(mark)]
        if start_at is not None:
            argv += ["--start-at", repr(start_at)]
        if events:
            argv += ["--events", events]
        return self.topo.popen("c", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
