"""The benchmark testbed: client, router and server namespaces with a bottleneck, loss and capture.

    client 10.77.1.2 ── veth ── 10.77.1.1 router 10.77.2.1 ── veth ── 10.77.2.2 server

* MTU 1500 and offloads off on every veth (so the capture shows wire-sized packets).
* The **bottleneck** is a `tbf` on the router's egress toward the client (the data direction);
  with `symmetric=True` the same shaper sits on the egress toward the server (the requests/acks).
  The queue (`limit`) is given in milliseconds of the rate, so it means the same at every rate.
* **Random loss** is an iptables `statistic --mode random` DROP rule in the router's FORWARD
  chain, on packets coming from the server (the data direction only: lost requests/acks are a
  different experiment).
* **Delay** (`delay_ms` each way, optional `jitter_ms`): netem when the kernel has it, otherwise
  the user-space NFQUEUE delay line (`net.delayline`) in the router, started before its FORWARD
  rules go in (after the loss rule: rules after an NFQUEUE rule are skipped). `describe()` says
  which ran, so every result records it.
* Linux TCP's initial window is pinned on the server's route (`initcwnd`, `initrwnd`) to the
  Trickles server's `initial_cwnd` (see `INITCWND_NOTE`).
* `capture()` runs tcpdump inside the router on `-i any` with the LINUX_SLL2 link type, which
  records the interface and direction of each packet: one capture sees each data packet as it
  enters from the server (before the loss rule and the queue) and as it leaves toward the client
  (after them), so it yields sent, delivered, dropped and queued bytes for both protocols.

Everything lives in namespaces made by `Topology`, so one `ip netns del` per namespace undoes it
all, on exit, on an exception, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trickles_kit.net import sysdeps
from trickles_kit.net.delayline import DelayLine, Direction, LineConfig, queue_len_for
from trickles_kit.net.topology import Topology, TopologyError

CLIENT, ROUTER, SERVER = "c", "r", "s"
CLIENT_ADDR, ROUTER_CLIENT_ADDR = "10.77.1.2", "10.77.1.1"
ROUTER_SERVER_ADDR, SERVER_ADDR = "10.77.2.1", "10.77.2.2"
# what building and measuring runs: namespaces, forwarding, RST and loss rules, offloads off,
# the bottleneck, the capture
TOOLS = ("ip", "sysctl", "iptables", "ethtool", "tc", "tcpdump")
CAPTURE_SNAPLEN = 256  # IP + TCP/Trickles headers (28 + ~160 with the continuation) + chunk header
INITCWND_NOTE = (
    "Linux initcwnd = Trickles initial_cwnd (c0). Trickles defines cwnd(B) = c0 for the first "
    "ack of an epoch, so in slow start it runs one ack behind Linux (its window after k acks is "
    "Linux's after k-1): a one-packet lag, not a different start.")


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (probed in a throwaway namespace)."""
    if shutil.which("tc") is None or os.geteuid() != 0:
        return False
    name = f"tkprobe{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        try:
            ok = subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo",
                                 "root", "netem", "delay", "1ms"], capture_output=True)
            return ok.returncode == 0
        finally:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False


@dataclass
class TestbedConfig:
    """The path: bottleneck rate, queue, random loss and (if netem exists) one-way delay."""

    __test__ = False  # not a pytest class, whatever its name

    rate_mbit: float = 10.0
    queue_ms: float = 50.0  # tbf limit, in ms of the rate (at least 20 full packets)
    loss: float = 0.0  # probability of dropping a server->client packet at the router
    delay_ms: float = 0.0  # each way: netem if the kernel has it, else the NFQUEUE delay line
    jitter_ms: float = 0.0  # +- around delay_ms, slowly varying (order kept)
    delay_queue_len: int = 0  # packets the delay line holds per direction; 0 = from the BDP
    symmetric: bool = True  # shape the client->server direction too
    initcwnd: int = 3  # Linux TCP's initial window = the Trickles server's initial_cwnd
    mtu: int = 1500

    def __post_init__(self) -> None:
        if not 0.01 <= self.rate_mbit <= 10_000:
            raise ValueError(f"rate_mbit must be in 0.01..10000, not {self.rate_mbit}")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), not {self.loss}")
        if self.queue_ms <= 0 or self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("queue_ms must be > 0, delay_ms and jitter_ms >= 0")
        if self.jitter_ms > self.delay_ms:
            raise ValueError("jitter_ms must not exceed delay_ms")
        if not 1 <= self.initcwnd <= 64:
            raise ValueError("initcwnd must be in 1..64")

    @property
    def rate_bytes_per_s(self) -> float:
        return self.rate_mbit * 1e6 / 8

    @property
    def queue_bytes(self) -> int:
        return max(int(self.rate_bytes_per_s * self.queue_ms / 1000), 20 * (self.mtu + 14))

    @property
    def line_queue_len(self) -> int:
        """The delay line's queue per direction: set, or sized from the bandwidth-delay
        product of the round trip plus the bottleneck's buffer (`delayline.queue_len_for`)."""
        return self.delay_queue_len or queue_len_for(
            self.rate_mbit, 2 * (self.delay_ms + self.jitter_ms), self.queue_bytes, self.mtu)

    @property
    def burst_bytes(self) -> int:
        """tbf bucket: 1 ms of the rate, at least two full frames (a real bottleneck)."""
        return max(int(self.rate_bytes_per_s / 1000), 2 * (self.mtu + 14))


@dataclass
class Capture:
    """A running tcpdump; `stop()` flushes and closes the file."""

    path: Path
    proc: subprocess.Popen
    stopped: bool = False

    def stop(self, timeout: float = 10.0, settle: float = 0.3) -> Path:
        """SIGINT after `settle` seconds: tcpdump reads what the kernel still holds, then exits."""
        if not self.stopped:
            self.stopped = True
            if self.proc.poll() is None:
                time.sleep(settle)
                os.killpg(self.proc.pid, signal.SIGINT)  # tcpdump flushes on SIGINT
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
        return self.path


@dataclass
class Testbed:
    """Three namespaces and a bottleneck; a context manager that always tears everything down."""

    __test__ = False

    config: TestbedConfig = field(default_factory=TestbedConfig)
    verbose: bool = False
    tag: str | None = None
    topo: Topology | None = None
    netem: bool = False
    devs: dict[str, str] = field(default_factory=dict)
    delayline: DelayLine | None = None
    delay_stats: dict | None = None  # the delay line's final counters, after close()

    def __enter__(self) -> Testbed:
        self.topo = Topology(tag=self.tag or f"b{os.getpid() % 100000}", verbose=self.verbose)
        # every tool before the first namespace: the bottleneck, the loss rule, the capture
        sysdeps.require(TOOLS, "the benchmark testbed")
        self.topo.__enter__()
        try:
            self._build()
        except BaseException:
            self.topo.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # the line first: it reports its counters and removes its rules while the router exists
        if self.delayline is not None and self.delay_stats is None:
            self.delay_stats = self.delayline.stop()
        if self.topo is not None:
            self.topo.close()

    # -- building --------------------------------------------------------------------------
    def _build(self) -> None:
        t, c = self.topo, self.config
        assert t is not None
        cr = t.link(CLIENT, ROUTER, f"{CLIENT_ADDR}/24", f"{ROUTER_CLIENT_ADDR}/24", c.mtu)
        rs = t.link(ROUTER, SERVER, f"{ROUTER_SERVER_ADDR}/24", f"{SERVER_ADDR}/24", c.mtu)
        self.devs = {"client": cr.dev_a, "router_to_client": cr.dev_b,
                     "router_to_server": rs.dev_a, "server": rs.dev_b}
        t.forward(ROUTER)
        t.route(CLIENT, "default", ROUTER_CLIENT_ADDR)
        # Linux TCP's first flight: the server's route carries the initial window
        t.route(SERVER, "default", ROUTER_SERVER_ADDR, "initcwnd", str(c.initcwnd),
                "initrwnd", "64")
        self.netem = c.delay_ms > 0 and netem_available()
        self._shape(self.devs["router_to_client"])
        if c.symmetric:
            self._shape(self.devs["router_to_server"])
        if c.loss > 0:
            t.iptables(ROUTER, "-A", "FORWARD", "-i", self.devs["router_to_server"], "-m",
                       "statistic", "--mode", "random", "--probability", f"{c.loss:.6f}",
                       "-j", "DROP")
        if c.delay_ms > 0 and not self.netem:
            self.start_delayline(self.line_config(c.delay_ms, c.jitter_ms, c.line_queue_len))

    def line_config(self, delay_ms: float, jitter_ms: float = 0.0, queue_len: int = 4096,
                    back_delay_ms: float | None = None, **kw: object) -> LineConfig:
        """A delay line for this router: `delay_ms` toward the server, `back_delay_ms`
        (default the same) toward the client."""
        assert self.topo is not None
        back = delay_ms if back_delay_ms is None else back_delay_ms
        return LineConfig([
            Direction("to_server", ["-i", self.devs["router_to_client"]], 0, delay_ms, jitter_ms),
            Direction("to_client", ["-i", self.devs["router_to_server"]], 1, back, jitter_ms)],
            queue_len=queue_len, tag=f"tkdl{self.topo.tag}", **kw)  # type: ignore[arg-type]

    def start_delayline(self, cfg: LineConfig) -> DelayLine:
        """Start a delay line in the router (stopped by close(), or by its own stop())."""
        assert self.topo is not None
        line = DelayLine(self.topo.ns(ROUTER), cfg, verbose=self.verbose)
        self.delayline, self.delay_stats = line, None
        line.start()
        assert line.proc is not None
        self.topo.procs.append(line.proc)  # SIGKILLed with the rest if all else fails
        return line

    def _shape(self, dev: str) -> None:
        c, t = self.config, self.topo
        assert t is not None
        tbf = ["tbf", "rate", f"{c.rate_mbit}mbit", "burst", str(c.burst_bytes), "limit",
               str(c.queue_bytes)]
        if self.netem:
            t.tc(ROUTER, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay",
                 f"{c.delay_ms}ms", *([f"{c.jitter_ms}ms", "25%"] if c.jitter_ms else []))
            t.tc(ROUTER, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf)
        else:
            t.tc(ROUTER, "qdisc", "add", "dev", dev, "root", *tbf)

    # -- using -----------------------------------------------------------------------------
    def argv(self, where: str, argv: Sequence[str]) -> list[str]:
        assert self.topo is not None
        return self.topo.argv(where, argv)

    def popen(self, where: str, argv: Sequence[str], **kw: object) -> subprocess.Popen:
        assert self.topo is not None
        return self.topo.popen(where, argv, **kw)

    def sh(self, where: str, argv: Sequence[str], check: bool = True,
           timeout: float = 30.0) -> subprocess.CompletedProcess:
        assert self.topo is not None
        return self.topo.sh(where, argv, check=check, timeout=timeout)

    def capture(self, path: Path, snaplen: int = CAPTURE_SNAPLEN) -> Capture:
        """tcpdump on every router interface (LINUX_SLL2: interface and direction recorded)."""
        sysdeps.require(["tcpdump"], "the testbed's capture")
        p = self.popen(ROUTER, ["tcpdump", "-i", "any", "-y", "LINUX_SLL2", "-n", "-s",
                                str(snaplen), "-B", "16384", "--immediate-mode", "-U",
                                "-w", str(path), "not arp"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # wait for "listening on": packets sent earlier would be missed
        end = time.monotonic() + 10
        assert p.stderr is not None
        line = ""
        while time.monotonic() < end:
            line = p.stderr.readline()
            if "listening on" in line or p.poll() is not None:
                break
        if "listening on" not in line:
            raise TopologyError(f"tcpdump did not start: {line.strip()}")
        return Capture(Path(path), p)

    def ifindexes(self) -> dict[str, int]:
        """Router interface name -> ifindex (to read the SLL2 capture)."""
        out = {}
        for key in ("router_to_client", "router_to_server"):
            dev = self.devs[key]
            text = self.sh(ROUTER, ["cat", f"/sys/class/net/{dev}/ifindex"]).stdout
            out[key] = int(text.strip())
        return out

    def counters(self) -> dict:
        """Drops at the router: tbf queue drops per direction, loss-rule drops."""
        out: dict = {}
        for key in ("router_to_client", "router_to_server"):
            p = self.sh(ROUTER, ["tc", "-s", "qdisc", "show", "dev", self.devs[key]],
                        check=False)
            m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)",
                          p.stdout)
            if m:
                out[key] = {"sent_bytes": int(m[1]), "sent_packets": int(m[2]),
                            "queue_drops": int(m[3])}
        if self.delayline is not None and self.delay_stats is None:
            kern = self.delayline.kernel_counters()
            out["delayline_kernel_dropped"] = sum(k["kernel_dropped"] for k in kern.values())
            out["delayline_user_dropped"] = sum(k["user_dropped"] for k in kern.values())
            out["delayline_cpu_s"] = self.delayline.cpu_s()
            live = self.delayline.live_stats() or {}
            out["delayline"] = {k: {f: d.get(f) for f in ("packets", "late", "late_max_ms",
                                                          "held_max")}
                                for k, d in live.get("directions", {}).items()}
        if self.config.loss > 0:
            p = self.sh(ROUTER, ["iptables", "-L", "FORWARD", "-v", "-x", "-n"], check=False)
            for line in p.stdout.splitlines():
                if "statistic" in line:
                    out["loss_rule_drops"] = int(line.split()[0])
        return out

    def describe(self) -> dict:
        """What ran, for the result JSON (delay says whether netem existed)."""
        c = self.config
        jit = f" +- {c.jitter_ms} ms" if c.jitter_ms else ""
        if self.netem:
            delay, mech = f"netem {c.delay_ms} ms{jit} each way", "netem"
        elif self.delayline is not None and c.delay_ms > 0:
            delay, mech = (f"nfqueue delay line {c.delay_ms} ms{jit} each way (user space, "
                           f"queue {c.line_queue_len} packets, "
                           f"{self.delayline.ready.get('scheduling', '?')})"), "nfqueue"
        else:
            delay = "none (no netem)" if not netem_available() else "none"
            mech = "none"
        return {
            "topology": f"client {CLIENT_ADDR} - router - server {SERVER_ADDR}, veth, "
                        f"MTU {c.mtu}, offloads off (tso/gso/gro)",
            "bottleneck": f"tbf rate {c.rate_mbit}mbit burst {c.burst_bytes} limit "
                          f"{c.queue_bytes} on the router's egress toward the client"
                          + (" and toward the server" if c.symmetric else ""),
            "queue_ms": c.queue_ms,
            "loss": f"iptables statistic random {c.loss} on router FORWARD from the server "
                    f"(data direction)" if c.loss else "none",
            "delay": delay,
            "delay_mechanism": mech,
            "initcwnd": c.initcwnd,
            "initcwnd_note": INITCWND_NOTE,
            "capture": f"tcpdump -i any -y LINUX_SLL2 -s {CAPTURE_SNAPLEN} in the router",
            "config": asdict(c),
        }
