#!/usr/bin/env python3
"""Uplink loss: goodput with random loss on the request path (the ACK path for TCP).

The namespace testbed of `trickles bench` (trickles_kit/net/testbed.py: client - router -
server, veth, MTU 1500, a tbf bottleneck both ways, no netem), with one more rule: an iptables
`statistic --mode random` DROP in the router's FORWARD chain on packets *from the client*
(requests and SYNs for Trickles; ACKs, SYN and GET for TCP). The data direction is clean.

Cases, one flow at a time, interleaved within each repeat so load from elsewhere falls on all:

* `trickles`       an honest client with the mitigation on (`ClientConfig(uplink_repair=True)`);
* `trickles-dup2`  the same client with every request datagram sent twice (the audit's cheater);
* `trickles-dup3`  three times;
* the three again with the mitigation off (`uplink_repair=False`, the default client);
* `tcp-reno`       Linux TCP (reno) through the same path.

Goodput = in-order response bytes the application got x 8 / (first response byte to the last),
capped at a fixed time per run (a run that does not finish reports what it got by then).
Measures only, asserts nothing. Needs root (namespaces, raw sockets). From the repository root:

    nice -n 19 .venv/bin/python benchmarks/bench_uplink_loss.py [--quick] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trickles_kit.bench.goodput import TK_MSS, _wait_line  # noqa: E402
from trickles_kit.bench.meta import add_output_args, close_meta, meta, write_result  # noqa: E402

TK_PORT, TCP_PORT = 8080, 8001
GEN_SEED = 1
LOSSES = (0.0, 0.01, 0.05, 0.10)
RATE_MBIT = 100.0
SECONDS = {True: 1.0, False: 5.0}  # time cap per run (quick, full)
REPEATS = {True: 1, False: 5}  # runs per cell; the median is reported
QUICK_LOSSES = (0.10,)  # quick: the row the target is about, every case once: a smoke run
# (kind, copies, mitigation on)
TK_CASES = (("trickles", 1, True), ("trickles-dup2", 2, True), ("trickles-dup3", 3, True),
            ("trickles", 1, False), ("trickles-dup2", 2, False), ("trickles-dup3", 3, False))


# ------------------------------------------------------------------------------ client side
class Copies:
    """A transport that sends every request `copies` times (SYNs once): the duplicating
    client of the audit, built from the honest engine without touching it."""

    def __init__(self, inner, copies: int) -> None:
        self.inner = inner
        self.copies = copies

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def fileno(self) -> int:
        return self.inner.fileno()

    def send(self, segment: bytes, dst_ip: bytes, peer=None) -> bool:
        n = 1 if len(segment) > 13 and segment[13] & 0x02 else self.copies
        ok = False
        for _ in range(n):
            ok = self.inner.send(segment, dst_ip, peer) or ok
        return ok


def _trickles_client(a: argparse.Namespace) -> dict:
    from trickles_kit.apps.fetch import HttpBody
    from trickles_kit.core.client import ClientConfig
    from trickles_kit.net.endpoint import local_address_for
    from trickles_kit.net.ip import PROTO_TRICKLES, aton
    from trickles_kit.net.raw import RawTransport
    from trickles_kit.net.runner import ClientHost

    first: list[float] = []
    got = [0]

    def sink(data: bytes) -> None:
        if not first:
            first.append(time.monotonic())
        got[0] += len(data)

    tr = RawTransport(local_address_for(a.host), PROTO_TRICKLES)
    try:
        cfg = ClientConfig(mss=TK_MSS, uplink_repair=a.repair)
        ch = ClientHost(Copies(tr, a.copies), aton(a.host), a.port, None, cfg)
        body = HttpBody(sink)
        t0 = time.monotonic()
        conn = ch.open(f"GET {a.path} HTTP/1.1\r\nHost: {a.host}\r\n\r\n".encode(), body)
        eng = conn.engine
        body.on_length = lambda n: eng.set_total(n, ch.clock())
        done = ch.run_until(lambda: conn.finished is not None, a.seconds)
        t1 = time.monotonic()
        ok = eng.done and body.headers.get("content-length") == str(body.body_bytes)
        ch.close(conn, linger=0.1)
        ch.shutdown()
    finally:
        tr.close()
    c = eng.counters
    return {"ok": bool(ok), "finished": bool(done), "bytes": body.body_bytes,
            "sha256": body.sha.hexdigest(), "seconds_total": round(t1 - t0, 4),
            "seconds": round(t1 - first[0], 4) if first else None,
            "counters": {k: c[k] for k in (
                "requests", "tx", "copies", "probe_pairs", "repeats", "repaired",
                "repair_failed", "repeats_skipped", "losses", "recoveries", "timeouts")
                if c[k]},
            "phase": eng.phase}


def _tcp_client(a: argparse.Namespace) -> dict:
    import hashlib

    from trickles_kit.apps.http import parse_response_head

    t0 = time.monotonic()
    h = hashlib.sha256()
    first = None
    got = 0
    length = None
    with socket.create_connection((a.host, a.port), timeout=a.seconds + 5) as s:
        s.sendall(f"GET {a.path} HTTP/1.1\r\nHost: {a.host}\r\nConnection: close\r\n\r\n"
                  .encode())
        pending, head = bytearray(), None
        while head is None:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the headers")
            if first is None:
                first = time.monotonic()
            pending += chunk
            head = parse_response_head(pending)
        rest = bytes(pending[head.size :])
        length = head.content_length
        h.update(rest)
        got = len(rest)
        buf = bytearray(1 << 20)
        s.settimeout(0.5)
        while (length is None or got < length) and time.monotonic() - t0 < a.seconds:
            try:
                n = s.recv_into(buf)
            except TimeoutError:
                continue
            if not n:
                break
            h.update(memoryview(buf)[:n])
            got += n
    t1 = time.monotonic()
    return {"ok": length == got, "finished": length == got, "bytes": got,
            "sha256": h.hexdigest(), "seconds_total": round(t1 - t0, 4),
            "seconds": round(t1 - first, 4) if first else None}


def client_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_uplink_loss.py client")
    ap.add_argument("proto", choices=("trickles", "tcp"))
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("path")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--repair", action=argparse.BooleanOptionalAction, default=True)
    a = ap.parse_args(argv)
    try:
        res = _trickles_client(a) if a.proto == "trickles" else _tcp_client(a)
    except OSError as e:
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(res))
    return 0


# ------------------------------------------------------------------------------ driver
def _run_client(tb, argv: list[str], cap: float) -> dict:
    from trickles_kit.net.testbed import CLIENT

    p = tb.popen(CLIENT, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                 cwd=REPO)
    try:
        out, _ = p.communicate(timeout=cap + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    try:
        return json.loads(out[out.index("{") : out.rindex("}") + 1])
    except ValueError:
        return {"ok": False, "error": f"exit {p.returncode}: {out[-600:]}"}


def run_loss(loss: float, cases: list[tuple[str, int, bool | None]], repeats: int, cap: float,
             size: int, verbose: bool) -> list[dict]:
    """One testbed with `loss` on the request path; every case `repeats` times, interleaved."""
    from trickles_kit.net.testbed import (
        ROUTER,
        SERVER,
        SERVER_ADDR,
        Testbed,
        TestbedConfig,
    )

    py = sys.executable
    me = str(Path(__file__).resolve())
    path = f"/gen?size={size}&seed={GEN_SEED}"
    rows = []
    cfg = TestbedConfig(rate_mbit=RATE_MBIT)
    tmp = Path(tempfile.mkdtemp(prefix="tk-uplink-"))
    try:  # the served directory (empty: /gen needs no files) goes on every exit path
        os.chmod(tmp, 0o755)
        with Testbed(cfg, verbose=verbose) as tb:
            if loss > 0:  # the request path: packets from the client, before the router forwards
                tb.topo.iptables(ROUTER, "-A", "FORWARD", "-i", tb.devs["router_to_client"],
                                 "-m", "statistic", "--mode", "random", "--probability",
                                 f"{loss:.6f}", "-j", "DROP")
            desc = tb.describe()
            desc["loss"] = (f"iptables statistic random {loss} on router FORWARD from the client "
                            f"(request/ACK direction); data direction clean") if loss else "none"
            tk = tb.popen(SERVER, [py, "-m", "trickles_kit.cli", "serve", "--root", str(tmp),
                                   "--transport", "raw", "--addr", SERVER_ADDR, "--port",
                                   str(TK_PORT), "--mss", str(TK_MSS), "--initial-cwnd",
                                   str(cfg.initcwnd)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
            _wait_line(tk, "trickles serve:", "trickles serve")
            tcp = tb.popen(SERVER, [py, "-m", "trickles_kit.bench.tcphttp", "--bind", SERVER_ADDR,
                                    "--port", str(TCP_PORT), "--cc", "reno"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
            _wait_line(tcp, "tcphttp: serving", "tcphttp reno")
            for rep in range(repeats):
                for kind, copies, mitig in cases:
                    if kind == "tcp-reno":
                        argv = [py, me, "client", "tcp", SERVER_ADDR, str(TCP_PORT), path,
                                "--seconds", str(cap)]
                    else:
                        argv = [py, me, "client", "trickles", SERVER_ADDR, str(TK_PORT), path,
                                "--seconds", str(cap), "--copies", str(copies),
                                "--repair" if mitig else "--no-repair"]
                    r = _run_client(tb, argv, cap)
                    secs = r.get("seconds")
                    gp = round(r["bytes"] * 8 / secs / 1e6, 3) if secs and r.get("bytes") else 0.0
                    row = {"loss": loss, "kind": kind, "copies": copies, "mitigation": mitig,
                           "repeat": rep, "goodput_mbit": gp, **r}
                    rows.append(row)
                    print(f"  loss {loss:.0%} {kind:<14} mitigation "
                          f"{'-' if mitig is None else 'on ' if mitig else 'off'} "
                          f"{gp:8.2f} Mbit/s  {r.get('bytes', 0) / 1e6:6.1f} MB "
                          f"{'done' if r.get('finished') else 'capped'} "
                          f"{json.dumps(r.get('counters', {}))}", file=sys.stderr, flush=True)
            rows.append({"loss": loss, "testbed": desc})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Median goodput per (loss, kind, mitigation) and the ratios the issue asks about."""
    table = []
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        if "kind" in r:
            cells.setdefault((r["loss"], r["kind"], r["mitigation"]), []).append(r)
    for (loss, kind, mitig), rs in cells.items():
        gps = [r["goodput_mbit"] for r in rs]
        table.append({"loss": loss, "kind": kind, "mitigation": mitig,
                      "goodput_mbit": round(statistics.median(gps), 3),
                      "goodput_mbit_runs": gps,
                      "byte_exact_or_capped": all(r.get("ok") or not r.get("finished")
                                                  for r in rs),
                      "finished": sum(bool(r.get("finished")) for r in rs)})

    def g(loss: float, kind: str, mitig: bool | None) -> float | None:
        for t in table:
            if (t["loss"], t["kind"], t["mitigation"]) == (loss, kind, mitig):
                return t["goodput_mbit"]
        return None

    ratios = {}
    for loss in sorted({t["loss"] for t in table}):
        d: dict = {}
        tcp = g(loss, "tcp-reno", None)
        for mitig, tag in ((True, "on"), (False, "off")):
            honest = g(loss, "trickles", mitig)
            for dup in ("trickles-dup2", "trickles-dup3"):
                x = g(loss, dup, mitig)
                d[f"{dup}_over_honest_{tag}"] = (round(x / honest, 3) if x is not None and honest
                                                 else None)
            d[f"honest_{tag}_over_tcp"] = round(honest / tcp, 3) if honest and tcp else None
        table_loss = f"{loss:g}"
        ratios[table_loss] = d
    return {"table": sorted(table, key=lambda t: (t["loss"], t["kind"], t["mitigation"] is False)),
            "ratios": ratios}


def _mitigation() -> dict:
    from trickles_kit.core.client import ClientConfig, ClientEngine

    c = ClientConfig(uplink_repair=True)
    return {"client_config": {"uplink_repair": True, "request_repeats": c.request_repeats,
                              "request_copies": c.request_copies},
            "copy_steps": list(ClientEngine.COPY_STEPS), "probe_pair": ClientEngine.PROBE_PAIR,
            "design": "docs/protocol.md §8.8: repeat a gap's request (the same datagrams; the "
                      "replay table answers one copy), copies per request from the measured "
                      "loss of one request datagram, repeats only while they pay"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "client":
        return client_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"{SECONDS[True]:g} s per run, one run per cell, loss "
                         f"{','.join(f'{x:g}' for x in QUICK_LOSSES)} only: a smoke run "
                         "(about 20 s)")
    ap.add_argument("--losses", default=None,
                    help="request-path loss rates (default "
                         f"{','.join(f'{x:g}' for x in LOSSES)}; quick "
                         f"{','.join(f'{x:g}' for x in QUICK_LOSSES)})")
    ap.add_argument("--repeats", type=int, default=None, help="runs per cell (median reported)")
    ap.add_argument("--seconds", type=float, default=None, help="time cap per run")
    ap.add_argument("--no-tcp", action="store_true", help="leave out the TCP rows")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every system command")
    ap.add_argument("--note", default=None, help="stored in meta.note")
    add_output_args(ap, "uplink_loss.json")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_uplink_loss: needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    from trickles_kit.net import sysdeps
    from trickles_kit.net.testbed import TOOLS

    msg = sysdeps.problem(TOOLS, "bench_uplink_loss")
    if msg:
        print(msg, file=sys.stderr)
        return 2
    mode = "quick" if a.quick else "full"
    t0 = time.perf_counter()
    cap = a.seconds or SECONDS[a.quick]
    repeats = a.repeats or REPEATS[a.quick]
    losses = ([float(x) for x in a.losses.split(",") if x.strip()] if a.losses is not None
              else list(QUICK_LOSSES if a.quick else LOSSES))
    size = int(RATE_MBIT * 1e6 / 8 * cap)  # more than the cap lets anything fetch
    cases: list[tuple[str, int, bool | None]] = list(TK_CASES)
    if not a.no_tcp:
        cases.append(("tcp-reno", 1, None))
    res: dict = {
        "experiment": "uplink_loss",
        "meta": meta([os.path.relpath(__file__, REPO), *argv], mode),
        "method": "one flow at a time through the testbed (100 Mbit/s tbf both ways, 50 ms "
                  "queue, no netem); random loss on the request path only (iptables statistic "
                  "on the router's FORWARD chain, packets from the client); goodput = in-order "
                  "bytes the application got x 8 / (first response byte to last), each run "
                  f"capped at {cap:g} s; medians over {repeats} run(s) per cell",
        "rate_mbit": RATE_MBIT, "seconds_cap": cap, "repeats": repeats, "size": size,
        "trickles_mss": TK_MSS, "mitigation": _mitigation(),
        "cases": [{"kind": k, "copies": c, "mitigation": m} for k, c, m in cases],
        "target": "with the mitigation on, duplicate senders gain <= 1.2x an honest client "
                  "at 10 % uplink loss",
    }
    rows: list[dict] = []
    for loss in losses:
        print(f"bench_uplink_loss: request-path loss {loss:.0%}", file=sys.stderr, flush=True)
        try:
            rows += run_loss(loss, cases, repeats, cap, size, a.verbose)
        except (RuntimeError, OSError, ValueError) as e:
            rows.append({"loss": loss, "error": f"{type(e).__name__}: {e}"})
    res.update(summarise(rows))
    at10 = res["ratios"].get("0.1", {})
    res["target_met"] = (None if not at10 else all(
        at10.get(f"{d}_over_honest_on") is not None and at10[f"{d}_over_honest_on"] <= 1.2
        for d in ("trickles-dup2", "trickles-dup3")))
    res["runs"] = rows
    close_meta(res, mode, t0, a.note)
    out = write_result(a.out, res, indent=1)
    print(f"{'loss':>5} {'kind':<14} {'mitig.':<6} {'Mbit/s':>8}")
    for t in res["table"]:
        m = "-" if t["mitigation"] is None else "on" if t["mitigation"] else "off"
        print(f"{t['loss']:>5.0%} {t['kind']:<14} {m:<6} {t['goodput_mbit']:>8.2f}")
    print(json.dumps(res["ratios"], indent=1))
    print(f"target met: {res['target_met']}; wrote {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
