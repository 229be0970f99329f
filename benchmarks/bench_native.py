#!/usr/bin/env python3
"""The compiled build against pure Python, same machine, same run, alternating processes.

Per build (a child process with TRICKLES_PURE=1, then one without, repeated --rounds times):
the server engine's CPU time per request (bench_core's pool of valid 1448-byte requests,
fresh server each pass), the client's CPU time per packet (bench_client's recorded trace
replayed), and a SHA-256 of every segment each of them sent: equal digests mean the compiled
build put the same bytes on the wire. In the compiled child also: the TCP checksum of a
1476-byte segment (the old formula, today's pure Python, C) and a UDP loopback send+recv pair,
one datagram a call against recvmmsg/sendmmsg batches.

    python setup.py build_ext --inplace          # or `make native` (adds mypyc modules)
    python benchmarks/bench_native.py --record   # benchmarks/results/native_build.json
    python benchmarks/bench_native.py --quick    # smaller pool and trace; reports/ only

Measures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _old_checksum(src: bytes, dst: bytes, seg: bytes) -> int:
    """The checksum as it was before this build (one bignum `%` per part)."""
    import struct

    n = len(seg)
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, 6, n)
    body = seg + b"\0" if n & 1 else seg
    s = (int.from_bytes(pseudo, "big") % 0xFFFF + int.from_bytes(body, "big") % 0xFFFF) % 0xFFFF
    return (~(s or 0xFFFF)) & 0xFFFF


def checksums(reps: int) -> dict:
    from trickles_kit.wire import segment as sg

    seg, ip = os.urandom(1476), bytes((127, 0, 0, 1))
    fns = {"old_pure_us": _old_checksum, "pure_us": sg.py_checksum, "active_us": sg.checksum}
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):  # interleaved
        for k, f in fns.items():
            out[k].append(timeit.timeit(lambda f=f: f(ip, ip, seg), number=2000) / 2000 * 1e6)
    return {k: round(min(v), 3) for k, v in out.items()}


def io_pairs(batches: int, size: int = 64) -> dict:
    """µs per datagram sent and received over UDP loopback: a call each vs batched calls."""
    from trickles_kit.native import fallback, recv_many, send_many

    a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setblocking(False)
    items = [(os.urandom(1476), b.getsockname())] * size
    res: dict[str, list[float]] = {"one_by_one_us": [], "batched_us": []}
    for _ in range(batches):
        for k, (snd, rcv) in (("one_by_one_us", (fallback.send_many, fallback.recv_many)),
                              ("batched_us", (send_many, recv_many))):
            t0 = time.process_time()
            snd(a, items)
            got = 0
            while got < size:
                got += len(rcv(b, size - got))
            res[k].append((time.process_time() - t0) / size * 1e6)
    a.close()
    b.close()
    return {k: round(statistics.median(v), 3) for k, v in res.items()}


def child(data_file: str, reps: int) -> dict:
    """One build's figures (which build: TRICKLES_PURE in this process's environment)."""
    import bench_client as bcl
    import bench_core as bc

    from trickles_kit import native

    with open(data_file, "rb") as f:
        pool, trace, size, seed = pickle.load(f)
    srv_times, h = [], hashlib.sha256()
    srv, _ = bc._new_server()
    for seg, t in pool:  # untimed pass: the digest of everything the server sent
        for out in srv.receive(seg, bc.CLIENT_IP, t):
            h.update(out)
    for _ in range(reps):
        srv, _ = bc._new_server()
        recv, ip = srv.receive, bc.CLIENT_IP
        t0 = time.process_time()
        for seg, t in pool:
            recv(seg, ip, t)
        srv_times.append((time.process_time() - t0) / len(pool) * 1e6)
    cl_dig = bcl.replay(trace, size, seed, True)[1]
    rx = sum(1 for k, _, _ in trace if k == "rx")
    cl_times = [bcl.replay(trace, size, seed, False)[0] / rx * 1e6 for _ in range(reps)]
    res = {"build": native.build(), "mypyc_active": native.mypyc_modules(),
           "server_us_per_request": [round(x, 3) for x in srv_times],
           "server_sent_sha256": h.hexdigest(),
           "client_us_per_packet": [round(x, 3) for x in cl_times],
           "client_sent_sha256": cl_dig}
    if native.speedups is not None:
        res["checksum_1476B"] = checksums(reps * 10)
        res["udp_send_recv_pair"] = io_pairs(reps * 20)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2000 requests, a 2 MB trace, 1 round")
    ap.add_argument("--rounds", type=int, default=3, help="processes per build, alternating")
    ap.add_argument("--reps", type=int, default=5, help="timed passes per process")
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "native_build.json"))
    ap.add_argument("--record", dest="out", action="store_const",
                    const=str(REPO / "benchmarks" / "results" / "native_build.json"),
                    help="write benchmarks/results/native_build.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    if args.child:
        print(json.dumps(child(args.child, args.reps)))
        return 0
    rounds, reps = (1, 2) if args.quick else (args.rounds, args.reps)
    npool, size = (2000, 2_000_000) if args.quick else (20000, 20_000_000)
    env = {**os.environ, "TRICKLES_PURE": "1"}
    # the inputs, made once with pure Python: both builds are fed the same bytes
    prep = ("import pickle,sys;sys.path[:0]=[sys.argv[3]];import bench_core as bc,"
            "bench_client as bcl;p,_=bc.build_pool(int(sys.argv[1]));"
            "t,_=bcl.record(int(sys.argv[2]),0.01,3);"
            "pickle.dump((p,t,int(sys.argv[2]),3),open(sys.argv[4],'wb'))")
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "inputs.pickle")
        subprocess.run([sys.executable, "-c", prep, str(npool), str(size),
                        str(Path(__file__).parent), data], env=env, check=True, cwd=REPO)
        runs: dict[str, list[dict]] = {"pure": [], "compiled": []}
        for _ in range(rounds):
            for name in ("pure", "compiled"):
                e = env if name == "pure" else {k: v for k, v in os.environ.items()
                                                if k != "TRICKLES_PURE"}
                p = subprocess.run([sys.executable, __file__, "--child", data,
                                    "--reps", str(reps)], env=e, check=True, cwd=REPO,
                                   capture_output=True, text=True)
                runs[name].append(json.loads(p.stdout))
    summary = {}
    for name, rs in runs.items():
        srv = [x for r in rs for x in r["server_us_per_request"]]
        cl = [x for r in rs for x in r["client_us_per_packet"]]
        summary[name] = {"build": rs[0]["build"], "mypyc_active": rs[0]["mypyc_active"],
                         "server_us_per_request_median": round(statistics.median(srv), 3),
                         "server_us_per_request_best": min(srv),
                         "client_us_per_packet_median": round(statistics.median(cl), 3),
                         "client_us_per_packet_best": min(cl)}
    same = {k: len({r[k] for rs in runs.values() for r in rs}) == 1
            for k in ("server_sent_sha256", "client_sent_sha256")}
    doc = {"command": "python benchmarks/bench_native.py" + (" --quick" if args.quick else "")
           + (" --record" if "results" in args.out else ""),
           "what": __doc__.split("\n\n")[1].replace("\n", " "),
           "pool_requests": npool, "client_trace_bytes": size, "rounds": rounds, "reps": reps,
           "clock": "process CPU time", "summary": summary, "same_bytes_both_builds": same,
           "compiled_extra": {k: runs["compiled"][-1].get(k)
                              for k in ("checksum_1476B", "udp_send_recv_pair")},
           "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"summary": summary, "same": same, **doc["compiled_extra"]}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
