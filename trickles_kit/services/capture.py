"""Which replica served each packet: captures in the router and what is read from them.

The router runs one `tcpdump` per replica-facing interface, so the file a packet is in names the
replica (or site) that sent or received it — no guessing from addresses, which are the same
anycast address on every replica. The analysis functions are pure (a list of `Pkt` in, numbers
out) so ordinary tests cover them without root.
"""

from __future__ import annotations

import contextlib
import signal
import struct
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from trickles_kit.capture.pcapio import read_pcap
from trickles_kit.net import sysdeps

SYN, FIN, RST = 0x02, 0x01, 0x04


@dataclass(frozen=True)
class Pkt:
    """One captured IPv4 packet of the service, attributed to a replica."""

    t: float  # capture time, seconds since the epoch
    replica: str  # the name of the interface's replica/site
    to_service: bool  # client -> service (a request) or service -> client (a response)
    proto: int  # 253 (Trickles) or 6 (TCP)
    ttl: int
    flags: int  # TCP-format flags
    seq: int
    size: int  # payload bytes after the TCP-format header

    def as_dict(self) -> dict:
        return asdict(self)


def parse_ip(t: float, replica: str, data: bytes, service: bytes) -> Pkt | None:
    """A `Pkt` from an IPv4 datagram, or None if it is not to or from `service` over a
    TCP-format segment (ARP, ICMP, fragments, a truncated header)."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = struct.unpack_from("!H", data, 2)[0]
    frag = struct.unpack_from("!H", data, 6)[0] & 0x1FFF
    proto, ttl = data[9], data[8]
    src, dst = data[12:16], data[16:20]
    if proto not in (6, 253) or frag or len(data) < ihl + 20 or service not in (src, dst):
        return None
    seq = struct.unpack_from("!I", data, ihl + 4)[0]
    off = (data[ihl + 12] >> 4) * 4
    flags = data[ihl + 13]
    return Pkt(t, replica, dst == service, proto, ttl, flags, seq, max(0, total - ihl - off))


def read_capture(path: str | Path, replica: str, service: str) -> list[Pkt]:
    """Every service packet in the pcap at `path`, attributed to `replica`."""
    svc = bytes(int(x) for x in service.split("."))
    out = []
    for rec in read_pcap(path):
        p = parse_ip(rec.ts, replica, rec.data, svc)
        if p is not None:
            out.append(p)
    return out


def merge(captures: Iterable[list[Pkt]]) -> list[Pkt]:
    return sorted((p for c in captures for p in c), key=lambda p: p.t)


# ----------------------------------------------------------------------------- analysis
def responses(pkts: Sequence[Pkt], min_size: int = 1) -> list[Pkt]:
    """Service -> client packets carrying at least `min_size` payload bytes."""
    return [p for p in pkts if not p.to_service and p.size >= min_size]


def split(pkts: Sequence[Pkt], to_service: bool | None = False) -> dict[str, float]:
    """Fraction of the packets in one direction (None: both) handled by each replica."""
    sel = [p for p in pkts if to_service is None or p.to_service == to_service]
    n = len(sel)
    out: dict[str, float] = {}
    for p in sel:
        out[p.replica] = out.get(p.replica, 0) + 1
    return {k: round(v / n, 4) for k, v in sorted(out.items())} if n else {}


def handshakes(pkts: Sequence[Pkt]) -> int:
    """Connection openings seen: client -> service segments with SYN set (retransmitted SYNs of
    one opening carry the same sequence number and count once)."""
    return len({p.seq for p in pkts if p.to_service and p.flags & SYN})


def largest_gap(pkts: Sequence[Pkt], after: float | None = None) -> tuple[float, float, float]:
    """(gap, start, end): the longest silence between consecutive response packets (from any
    replica), considering only gaps that end after `after` (e.g. the kill time)."""
    rs = responses(pkts)
    best = (0.0, 0.0, 0.0)
    for a, b in zip(rs, rs[1:], strict=False):
        if after is not None and b.t <= after:
            continue
        if b.t - a.t > best[0]:
            best = (b.t - a.t, a.t, b.t)
    return best


def handover(pkts: Sequence[Pkt], old: str, new: str) -> dict[str, float] | None:
    """The stall at a move from replica `old` to `new`: from the last response `old` sent to the
    first response `new` sent after it. None if the capture never shows `new` after `old`."""
    rs = responses(pkts)
    last_old = max((p.t for p in rs if p.replica == old), default=None)
    if last_old is None:
        return None
    first_new = min((p.t for p in rs if p.replica == new and p.t > last_old), default=None)
    if first_new is None:
        return None
    return {"last_old_t": last_old, "first_new_t": first_new,
            "stall_s": round(first_new - last_old, 6)}


def failover_stall(sites: Sequence[Pkt], at_client: Sequence[Pkt], old: str, new: str,
                   t_kill: float) -> dict[str, float] | None:
    """The stall the client sees at a failover: the longest silence toward the client between
    the kill and the arrival of the first response `new` sent (found on the client side by its
    sequence number; responses `old` sent before dying may still drain from the bottleneck).
    Later silences (a loss recovery long after the handover) are not the failover's."""
    ho = handover(sites, old, new)
    if ho is None:
        return None
    first = next(p for p in responses(sites) if p.replica == new and p.t >= ho["first_new_t"])
    arrive = next((p.t for p in responses(at_client) if p.seq == first.seq and p.t >= first.t),
                  None)
    if arrive is None:
        return None
    window = [p for p in responses(at_client) if p.t <= arrive]
    gap, a, b = largest_gap(window, after=t_kill)
    return {"stall_s": round(gap, 6), "from_t": a, "to_t": b, "standby_first_at_client_t": arrive}


def min_rtt(pkts: Sequence[Pkt]) -> float | None:
    """Smallest request -> next response delay at one replica: the router sees the request go
    out and the answer come back, so this is the router-to-replica round trip plus the server's
    work (for the client's RTT add the client link, which the router does not see)."""
    best = None
    last_req: dict[str, float] = {}
    for p in pkts:
        if p.to_service:
            last_req.setdefault(p.replica, p.t)
        elif p.replica in last_req:
            d = p.t - last_req.pop(p.replica)
            best = d if best is None or d < best else best
    return best


def timeline(pkts: Sequence[Pkt], limit: int = 1500) -> list[dict]:
    """Response packets as rows (t relative to the first packet, replica, size), thinned evenly
    to at most `limit` rows for the JSON and the figure."""
    rs = responses(pkts)
    if not rs:
        return []
    t0 = pkts[0].t
    step = max(1, len(rs) // limit)
    return [{"t": round(p.t - t0, 6), "replica": p.replica, "size": p.size, "ttl": p.ttl}
            for p in rs[::step]]


# ----------------------------------------------------------------------------- capturing
def _last_line(p: subprocess.Popen) -> str:
    """': <last stderr line>' of an exited process (what tcpdump said), or ''."""
    try:
        err = p.stderr.read() if p.stderr else b""
    except (OSError, ValueError):
        return ""
    lines = (err.decode(errors="replace") if isinstance(err, bytes) else err).strip()
    return f": {lines.splitlines()[-1]}" if lines else ""


class RouterCapture:
    """One tcpdump per interface in the router namespace; `stop()` flushes and reads them."""

    def __init__(self, topo, router: str, ifaces: dict[str, str], out_dir: Path,
                 service: str) -> None:
        self.topo, self.router, self.ifaces, self.service = topo, router, ifaces, service
        self.out_dir = out_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.files: dict[str, Path] = {}

    def start(self, timeout: float = 10.0) -> None:
        sysdeps.require(["tcpdump"], "the router's capture")
        for name, dev in self.ifaces.items():
            f = self.out_dir / f"{name}.pcap"
            self.files[name] = f
            # --immediate-mode: every packet handed over at once (with the default ring
            # buffer, packets still in an unfinished block are lost at SIGINT); -U: flushed
            # per packet; -s 96: headers are enough to attribute and measure
            self.procs[name] = self.topo.popen(
                self.router, ["tcpdump", "-i", dev, "-n", "--immediate-mode", "-U", "-s", "96",
                              "-w", str(f), f"host {self.service}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for name, p in self.procs.items():  # tcpdump says "listening on" when it is capturing
            end = time.monotonic() + timeout
            line = b""
            while time.monotonic() < end and b"listening" not in line:
                line = p.stderr.readline() if p.stderr else b""
                if not line and p.poll() is not None:
                    raise RuntimeError(f"tcpdump on {self.ifaces[name]} exited: {p.returncode}"
                                       f"{_last_line(p)}")

    def stop(self) -> list[Pkt]:
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=2)
        return merge(read_capture(f, name, self.service) for name, f in self.files.items()
                     if f.exists())
