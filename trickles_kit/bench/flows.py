"""Flows from a testbed capture: one code path for Linux TCP and Trickles.

The router's capture (`Testbed.capture`: tcpdump `-i any`, LINUX_SLL2) records each data packet
twice: entering from the server (before the loss rule and the bottleneck queue) and leaving toward
the client (after them). From those two sightings, for every flow:

* **goodput over time** — progress of the highest byte delivered to the client, per time bin;
* **time–sequence** — byte offset of every packet sent and delivered, retransmissions marked;
* **bytes in flight** — payload bytes inside the router (queued or on the bottleneck): entered
  but not yet left; a dropped packet counts until its drop is known, i.e. not at all (it never
  leaves), so this is the network's share of the sender's window;
* **retransmissions** — packets whose bytes start below the highest byte the server sent before;
* **drops** — packets that entered and never left (loss rule or queue overflow).

A packet's sequence is its byte range in the response stream: TCP's relative sequence number
plus payload length (the ISN from the SYN/ACK), and for Trickles the first DATA chunk's byteNum
plus its length — parsed with `struct` from the headers, so the capture snap length can be small.
Trickles rides in IP protocol 253 or in protocol 6 with the Trickles option (kind 253, ExID "TK").
"""

from __future__ import annotations

import bisect
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROTO_TCP, PROTO_TRICKLES = 6, 253
LINKTYPE_LINUX_SLL2 = 276
PKT_OUTGOING = 4
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_SLL2 = struct.Struct("!HHIHBB")
_TCP = struct.Struct("!HHIIBB")
_DATA_CHUNK = 2
TK_EXID = 0x544B
MAX_POINTS = 20_000  # per time-sequence trace in a figure


class CaptureError(ValueError):
    """The file is not a classic LINUX_SLL2 pcap from the testbed."""


def read_sll2(path: str | Path) -> Iterator[tuple[float, int, int, bytes, int]]:
    """(ts, ifindex, pkttype, IPv4 bytes as captured, original frame length) per record.

    Classic pcap only (what `tcpdump -w` writes); a truncated last record ends the iteration
    (tcpdump stopped mid-write), any other damage raises CaptureError.
    """
    data = Path(path).read_bytes()
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        raise CaptureError(f"{path}: not a classic pcap file")
    endian, unit = _PCAP_MAGIC[data[:4]]
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_LINUX_SLL2:
        raise CaptureError(f"{path}: link type {linktype}, expected LINUX_SLL2 (276): capture "
                           f"with tcpdump -i any -y LINUX_SLL2")
    rec = struct.Struct(endian + "IIII")
    off, n = 24, len(data)
    while off + 16 <= n:
        sec, frac, incl, orig = rec.unpack_from(data, off)
        off += 16
        if incl > 262144:
            raise CaptureError(f"{path}: corrupt record at offset {off - 16}")
        if off + incl > n:
            return  # truncated last record
        if incl >= 20 + 20:
            proto, _r, ifindex, _hat, pkttype, _al = _SLL2.unpack_from(data, off)
            if proto == 0x0800:
                yield (sec + frac * unit, ifindex, pkttype, data[off + 20 : off + incl],
                       orig - 20)
        off += incl


@dataclass(slots=True)
class Pkt:
    t: float
    start: int
    end: int
    wire: int  # IP length


@dataclass
class Flow:
    """One transfer: `kind` 'tcp' or 'trickles', keyed by the client's address and port."""

    kind: str
    client: str
    client_port: int
    server_port: int
    first_t: float | None = None  # first packet of the client (SYN / first request)
    sent: list[Pkt] = field(default_factory=list)  # entering the router from the server
    delivered: list[Pkt] = field(default_factory=list)  # leaving toward the client
    requests: int = 0  # client->server packets seen
    request_bytes: int = 0
    truncated: int = 0  # server packets whose byte range was beyond the snap length

    @property
    def name(self) -> str:
        return f"{self.kind} {self.client}:{self.client_port}"


def _tk_option(d: bytes, t0: int, doff: int) -> int | None:
    """Value of the Trickles option (header length) or None when the segment has none."""
    i, end = t0 + 20, min(t0 + doff, len(d))
    while i < end:
        k = d[i]
        if k == 0:
            return None
        if k == 1:
            i += 1
            continue
        if i + 1 >= end:
            return None
        ln = d[i + 1]
        if ln < 2:
            return None
        if k == 253 and ln == 6 and i + 6 <= end and (d[i + 2] << 8 | d[i + 3]) == TK_EXID:
            return d[i + 4] << 8 | d[i + 5]
        i += ln
    return None


def _tk_range(d: bytes, p: int) -> tuple[int, int] | None:
    """Byte range of the first DATA chunk at or after offset `p` (None: none or not captured)."""
    n = len(d)
    while p + 3 <= n:
        b = d[p]
        if b == 0:  # pad
            p += 1
            continue
        ln = d[p + 1] << 8 | d[p + 2]
        if ln < 3:
            return None
        if b >> 4 == _DATA_CHUNK:
            if p + 7 > n:
                return None
            start = struct.unpack_from("!I", d, p + 3)[0]
            return start, start + ln - 7
        p += ln
    return None


def parse_capture(path: str | Path, server: str, to_server_if: int, to_client_if: int
                  ) -> dict[tuple, Flow]:
    """Flows of the capture, keyed by (kind, client address, client port)."""
    srv = bytes(int(x) for x in server.split("."))
    flows: dict[tuple, Flow] = {}
    isn: dict[tuple, int] = {}
    for ts, ifi, pkttype, d, _orig in read_sll2(path):
        if len(d) < 20 or d[0] >> 4 != 4:
            continue
        ihl = (d[0] & 15) * 4
        proto = d[9]
        if proto not in (PROTO_TCP, PROTO_TRICKLES) or len(d) < ihl + 20:
            continue
        total = d[2] << 8 | d[3]
        src, dst = d[12:16], d[16:20]
        sport, dport, seq, _ack, off_b, flags = _TCP.unpack_from(d, ihl)
        doff = (off_b >> 4) * 4
        from_server = src == srv
        if not from_server and dst != srv:
            continue
        tk = proto == PROTO_TRICKLES
        opt = _tk_option(d, ihl, doff) if (tk or proto == PROTO_TCP) else None
        if proto == PROTO_TCP and opt is not None:
            tk = True
        kind = "trickles" if tk else "tcp"
        cip, cport, sport_ = (dst, dport, sport) if from_server else (src, sport, dport)
        key = (kind, ".".join(map(str, cip)), cport)
        fl = flows.get(key)
        if fl is None:
            fl = flows[key] = Flow(kind, key[1], cport, sport_)
        if not from_server:
            if ifi == to_server_if and pkttype == PKT_OUTGOING:
                continue  # count each request once: as it enters the router
            if fl.first_t is None:
                fl.first_t = ts
            fl.requests += 1
            fl.request_bytes += total
            continue
        # from the server: data sightings
        if ifi == to_server_if and pkttype != PKT_OUTGOING:
            where = fl.sent
        elif ifi == to_client_if and pkttype == PKT_OUTGOING:
            where = fl.delivered
        else:
            continue
        if tk:
            if opt is None:
                continue
            rng = _tk_range(d, ihl + doff + opt)
            if rng is None:
                if len(d) < total:
                    fl.truncated += 1
                continue
            start, end = rng
        else:
            plen = total - ihl - doff
            if flags & 0x02:  # SYN/ACK: the ISN
                isn[key] = seq
            if plen <= 0:
                continue
            base = isn.get(key)
            if base is None:
                base = isn[key] = (seq - 1) & 0xFFFFFFFF
            start = (seq - base - 1) & 0xFFFFFFFF
            end = start + plen
        if end > start:
            where.append(Pkt(ts, start, end, total))
    return flows


# ------------------------------------------------------------------------------ analysis
def _merged_bytes(ranges: list[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(ranges):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        elif e > cur_e:
            cur_e = e
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def analyse(fl: Flow, t0: float, bin_s: float = 0.1, series: bool = True) -> dict:
    """Numbers and (optionally) time series of one flow; times are relative to `t0`."""
    sent, dlv = fl.sent, fl.delivered
    out: dict = {"flow": fl.name, "kind": fl.kind, "client": fl.client,
                 "client_port": fl.client_port, "requests": fl.requests,
                 "request_bytes": fl.request_bytes, "truncated_packets": fl.truncated,
                 "sent_packets": len(sent), "delivered_packets": len(dlv)}
    if not dlv:
        return {**out, "error": "no data delivered"}
    start_t = fl.first_t if fl.first_t is not None else sent[0].t if sent else dlv[0].t
    end_t = dlv[-1].t
    unique = _merged_bytes([(p.start, p.end) for p in dlv])
    hi = 0
    rtx = rtx_bytes = 0
    for p in sent:
        if p.start < hi:
            rtx += 1
            rtx_bytes += p.end - p.start
        hi = max(hi, p.end)
    # match sightings: a range leaving is the latest copy of it that entered before; an
    # earlier copy left unmatched was dropped (its retransmission is the one delivered)
    pending: dict[tuple[int, int], list[float]] = defaultdict(list)
    for p in sent:
        pending[(p.start, p.end)].append(p.t)
    residence: list[tuple[float, float, int]] = []
    for p in dlv:
        q = pending.get((p.start, p.end))
        if q:
            k = bisect.bisect_right(q, p.t) - 1
            if k >= 0:
                residence.append((q.pop(k), p.t, p.end - p.start))
    dropped = sum(len(v) for v in pending.values())
    dur = end_t - start_t
    qd = sorted(b - a for a, b, _ in residence)
    out.update({
        "start_s": round(start_t - t0, 6), "end_s": round(end_t - t0, 6),
        "duration_s": round(dur, 6), "unique_bytes": unique,
        "delivered_bytes": sum(p.end - p.start for p in dlv),
        "sent_bytes": sum(p.end - p.start for p in sent),
        "wire_bytes_delivered": sum(p.wire for p in dlv),
        "goodput_mbit": round(unique * 8 / dur / 1e6, 4) if dur > 0 else None,
        "retransmitted_packets": rtx, "retransmitted_bytes": rtx_bytes,
        "dropped_packets": dropped,
        "router_delay_ms_median": round(qd[len(qd) // 2] * 1e3, 3) if qd else None,
        "router_delay_ms_p95": round(qd[int(len(qd) * 0.95)] * 1e3, 3) if qd else None,
        "mean_payload_bytes": round(sum(p.end - p.start for p in dlv) / len(dlv), 1),
    })
    if series:
        out["series"] = _series(fl, residence, t0, bin_s)
    return out


def _series(fl: Flow, residence: list[tuple[float, float, int]], t0: float, bin_s: float
            ) -> dict:
    dlv = fl.delivered
    # goodput: progress of the highest delivered byte per bin
    nb = int((dlv[-1].t - t0) / bin_s) + 1
    prog = [0] * nb
    hi = 0
    for p in dlv:
        if p.end > hi:
            prog[int((p.t - t0) / bin_s)] += p.end - hi
            hi = p.end
    goodput = {"t": [round((i + 0.5) * bin_s, 4) for i in range(nb)],
               "mbit": [round(b * 8 / bin_s / 1e6, 4) for b in prog]}
    # in flight: +bytes on entry, -bytes on exit, sampled at the end of each bin
    ev = sorted([(a, n) for a, _b, n in residence] + [(b, -n) for _a, b, n in residence])
    times = [t for t, _ in ev]
    cum, acc = [], 0
    for _t, n in ev:
        acc += n
        cum.append(acc)
    inflight = []
    for i in range(nb):
        k = bisect.bisect_right(times, t0 + (i + 1) * bin_s) - 1
        inflight.append(cum[k] if k >= 0 else 0)
    hi = 0
    ts_sent = {"t": [], "seq": [], "rtx": []}
    for p in fl.sent:
        ts_sent["t"].append(round(p.t - t0, 6))
        ts_sent["seq"].append(p.start)
        ts_sent["rtx"].append(p.start < hi)
        hi = max(hi, p.end)
    ts_dlv = {"t": [round(p.t - t0, 6) for p in dlv], "seq": [p.start for p in dlv]}
    return {"bin_s": bin_s, "goodput": goodput,
            "in_flight": {"t": [round((i + 1) * bin_s, 4) for i in range(nb)],
                          "bytes": inflight},
            "time_sequence": {"sent": ts_sent, "delivered": ts_dlv}}


def overlap_goodput(flows: list[Flow], t0: float) -> dict:
    """Per-flow goodput over the interval all flows were active (for fairness)."""
    spans = [(f.first_t if f.first_t is not None else f.delivered[0].t, f.delivered[-1].t)
             for f in flows if f.delivered]
    if len(spans) != len(flows) or not spans:
        return {"error": "a flow delivered nothing"}
    a, b = max(s for s, _ in spans), min(e for _, e in spans)
    if b <= a:
        return {"error": "the flows never overlapped"}
    # skip each flow's start-up: measure over the second half-plus of the common window
    a = a + (b - a) * 0.1
    res = {}
    for f in flows:
        hi = 0
        got = 0
        for p in f.delivered:
            if p.end > hi:
                if a <= p.t <= b:
                    got += p.end - hi
                hi = p.end
        res[f.name] = round(got * 8 / (b - a) / 1e6, 4)
    return {"window_s": [round(a - t0, 4), round(b - t0, 4)], "goodput_mbit": res}


def jain(xs: list[float]) -> float | None:
    """Jain's fairness index: (sum x)^2 / (n sum x^2); 1 = equal shares, 1/n = one takes all."""
    if not xs or not any(xs):
        return None
    return round(sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)), 4)


def figures(results: list[dict], title: str):  # -> plotly Figure | None
    """Goodput over time, time–sequence and bytes in flight for the flows of one run."""
    try:
        from plotly.subplots import make_subplots
    except ImportError:
        return None
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("goodput (Mbit/s)", "time–sequence (byte offset)",
                                        "bytes in the router (queued / on the bottleneck)"))
    for r in results:
        s = r.get("series")
        if not s:
            continue
        name = r["flow"]
        fig.add_scatter(x=s["goodput"]["t"], y=s["goodput"]["mbit"], name=name, row=1, col=1,
                        mode="lines")
        ts = s["time_sequence"]
        k = max(1, len(ts["delivered"]["t"]) // MAX_POINTS)  # keep the HTML small
        fig.add_scattergl(x=ts["delivered"]["t"][::k], y=ts["delivered"]["seq"][::k],
                          mode="markers",
                          marker={"size": 2}, name=name + " delivered", row=2, col=1)
        rt = [(t, q) for t, q, x in zip(ts["sent"]["t"], ts["sent"]["seq"], ts["sent"]["rtx"],
                                        strict=True) if x]
        if rt:
            fig.add_scattergl(x=[t for t, _ in rt], y=[q for _, q in rt], mode="markers",
                              marker={"size": 5, "symbol": "x"}, name=name + " retransmitted",
                              row=2, col=1)
        fig.add_scatter(x=s["in_flight"]["t"], y=s["in_flight"]["bytes"], name=name + " in flight",
                        row=3, col=1, mode="lines")
    fig.update_layout(title=title, height=900)
    fig.update_xaxes(title_text="seconds", row=3, col=1)
    return fig
