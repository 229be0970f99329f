"""The client engine's cost per packet received, alone (no server, no simulator in the timing).

A transfer from a `Generated` server over a lossy, jittery virtual link is run once (with this
checkout) to record every input the client got (segments, timer calls, reads); the recorded
inputs are then replayed into fresh clients (same ISN and echo key, so they act exactly alike)
and only that is timed. The digest of everything the client sent is printed too: two packages
that behave the same give the same digest for the same inputs.

    python benchmarks/bench_client.py                  # this checkout
    python benchmarks/bench_client.py --against DIR    # and another checkout (DIR holds
                                                       # trickles_kit/), alternating runs
    ... --instructions                                 # also count instructions (valgrind)

CPU time on a shared machine varies by several per cent from run to run; `--instructions`
counts the instructions of one replay under valgrind's cachegrind (one replay minus a run that
only loads the trace), which does not depend on the machine's load.

Writes JSON (--out) with the command that made it. Measures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CIP, SIP = bytes((10, 1, 0, 2)), bytes((10, 0, 0, 1))
KEY = bytes(range(16))


def record(size: int, loss: float, seed: int) -> tuple[list[tuple], dict]:
    """Run one transfer; the client's inputs in order, and a summary."""
    from trickles_kit.apps.generated import Generated, gen_request
    from trickles_kit.core.client import ClientConfig, ClientEngine
    from trickles_kit.core.server import ServerConfig, ServerEngine

    gen = Generated()
    server = ServerEngine(bytes(32), gen, SIP, 80, ServerConfig())
    gen.attach(server)
    try:  # the sealed user continuation with a fixed nonce: the same trace in every run, so
        # the sent digests of runs (pure, compiled) compare (a live server seals at random)
        from trickles_kit.core.seal import UcontBox

        gen._box = UcontBox(server.keys, nonce_source=lambda n: bytes(n))
    except (ImportError, TypeError):  # (an older checkout: random seals, as before)
        pass
    client = ClientEngine(CIP, 40000, SIP, 80, ClientConfig(), isn=9, echo_key=KEY)
    rng = random.Random(seed)
    trace: list[tuple] = []
    queue: list[tuple[float, int, bytes]] = []
    n = 0
    t = 0.0
    client.connect(t, gen_request(size, seed))
    while not client.done and client.phase not in ("failed", "closed") and t < 600:
        for seg in client.datagrams_to_send():
            for ans in server.receive(seg, CIP, t + 0.005):
                if rng.random() < loss:
                    continue
                n += 1
                heapq.heappush(queue, (t + 0.010 + rng.random() * 0.002, n, ans))
        timer = client.get_timer()
        rx = bool(queue) and (timer is None or queue[0][0] <= timer)
        if rx:  # the next answer comes before the timer fires
            t, _, ans = heapq.heappop(queue)
            client.receive(ans, t)
        elif timer is None:
            break
        else:
            t, ans = max(t, timer), b""
            client.handle_timer(t)
        trace.append(("rx" if rx else "timer", t, ans))
        if client.unread:
            client.read()
            trace.append(("read", t, b""))
    return trace, {"ok": client.done, "rx": client.counters["rx"],
                   "losses": client.counters["losses"], "timeouts": client.counters["timeouts"]}


def replay(trace: list[tuple], size: int, seed: int, digest: bool) -> tuple[float, str]:
    """CPU seconds to feed `trace` to a fresh client, and (with `digest`) what it sent."""
    from trickles_kit.apps.generated import gen_request
    from trickles_kit.core.client import ClientConfig, ClientEngine

    client = ClientEngine(CIP, 40000, SIP, 80, ClientConfig(), isn=9, echo_key=KEY)
    h = hashlib.sha256()
    t0 = time.process_time()
    client.connect(0.0, gen_request(size, seed))
    receive, handle_timer, read = client.receive, client.handle_timer, client.read
    out = client.datagrams_to_send
    for kind, t, seg in trace:
        if kind == "rx":
            receive(seg, t)
        elif kind == "timer":
            handle_timer(t)
        else:
            read()
        sent = out()
        if digest:
            for s in sent:
                h.update(s)
    return time.process_time() - t0, h.hexdigest()


def decode_only(trace: list[tuple]) -> float | None:
    """CPU seconds to decode the trace's answers alone (segment + response, as the client's
    `receive` does first): the wire layer's share of the client's time."""
    try:
        from trickles_kit.wire.messages import decode_response
        from trickles_kit.wire.segment import decode_segment
    except ImportError:
        return None
    segs = [seg for kind, _, seg in trace if kind == "rx"]
    t0 = time.process_time()
    for seg in segs:
        decode_response(decode_segment(seg, SIP, CIP).payload)
    return time.process_time() - t0


def instructions(trace_file: str, root: str, args: list[str]) -> int:
    """Instructions (valgrind cachegrind) of one replay: a run with one minus one with none."""
    counts = []
    for reps in (0, 1):
        cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
               "--cachegrind-out-file=/dev/null", sys.executable, __file__, "--child",
               trace_file, *args, f"--reps={reps}", "--no-digest"]
        p = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": root}, capture_output=True,
                           text=True, check=True)
        line = next(x for x in p.stderr.splitlines() if "I   refs:" in x or "I refs:" in x)
        counts.append(int(line.split(":")[-1].strip().replace(",", "")))
    return counts[1] - counts[0]


def child(trace_file: str, size: int, seed: int, reps: int, digest: bool = True) -> dict:
    import trickles_kit.apps.generated  # noqa: F401  (imported in every run alike: the
    import trickles_kit.core.client  # noqa: F401  instruction count subtracts it)
    with open(trace_file, "rb") as f:
        trace, summary = pickle.load(f)
    dig = replay(trace, size, seed, True)[1] if digest else ""
    times = [replay(trace, size, seed, False)[0] for _ in range(reps)]
    rx = sum(1 for k, _, _ in trace if k == "rx")
    if not times:
        return {"packets": rx}
    import trickles_kit

    try:
        from trickles_kit.native import mypyc_modules
        compiled = len(mypyc_modules())
    except ImportError:  # (an older checkout: no compiled build)
        compiled = 0
    dec = [decode_only(trace) for _ in range(reps)]
    return {"package": str(Path(trickles_kit.__file__).parent.parent), "summary": summary,
            "inputs": len(trace), "packets": rx, "sent_sha256": dig,
            "mypyc_modules": compiled,
            "us_per_packet_min": round(min(times) / rx * 1e6, 3),
            "us_per_packet_all": [round(x / rx * 1e6, 3) for x in times],
            "decode_us_per_packet_min": None if None in dec else round(
                min(d for d in dec if d is not None) / rx * 1e6, 3)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=20_000_000)
    ap.add_argument("--loss", type=float, default=0.01, help="answer loss (default 1 %%)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="timed replays per process")
    ap.add_argument("--rounds", type=int, default=3, help="processes per checkout, alternating")
    ap.add_argument("--against", "--baseline-tree", metavar="REV|DIR",
                    help="another checkout: a git revision of this one, or a directory holding "
                         "its trickles_kit/ (alternating runs, same recorded trace)")
    # a run writes to reports/ (git-ignored); the committed result changes only with --record
    results = REPO / "benchmarks" / "results"
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "client.json"),
                    help="JSON output path (default: %(default)s)")
    ap.add_argument("--record", dest="out", nargs="?", metavar="NAME", type=results.joinpath,
                    const=results / "client.json",
                    help="refresh the committed benchmarks/results/client.json (or NAME there)")
    ap.add_argument("--instructions", action="store_true",
                    help="also count each checkout's instructions per packet (valgrind)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run in seconds: 1 MB, 1 replay, 1 round (CI runs this)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--no-digest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--record-to", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.reps, a.rounds = 1_000_000, 1, 1
    if a.record_to:
        with open(a.record_to, "wb") as f:
            pickle.dump(record(a.size, a.loss, a.seed), f)
        return 0
    if a.child:
        print(json.dumps(child(a.child, a.size, a.seed, a.reps, not a.no_digest)))
        return 0
    roots = {"this": str(REPO)}
    if a.against:
        # the revision export is bench_core's; imported here only, so that this parent, whose
        # children pick their own tree, loads no package of its own before it must
        from bench_core import tree_of

        roots["against"] = str(Path(tree_of(a.against)).resolve())
    runs: dict[str, list[dict]] = {k: [] for k in roots}
    load = [round(x, 2) for x in os.getloadavg()]  # (a shared machine: its load, said)
    args = [f"--size={a.size}", f"--loss={a.loss}", f"--seed={a.seed}", f"--reps={a.reps}"]
    with tempfile.TemporaryDirectory() as tmp:
        trace = str(Path(tmp) / "trace.pickle")
        subprocess.run([sys.executable, __file__, "--record-to", trace, *args], check=True,
                       env={**os.environ, "PYTHONPATH": roots["this"]})
        for _ in range(a.rounds):
            for name, root in roots.items():
                env = {**os.environ, "PYTHONPATH": root}
                p = subprocess.run([sys.executable, __file__, "--child", trace, *args],
                                   env=env, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
        if a.instructions:
            args = [x for x in args if not x.startswith("--reps")]
            counts = {name: instructions(trace, root, args) for name, root in roots.items()}
    for rs in runs.values():  # (no paths of this machine in the record)
        for r in rs:
            r.pop("package", None)
    opts = {**vars(a), "out": Path(a.out).name,
            "against": Path(a.against).name if a.against else None}
    shown = [Path(x).name if a.against and x == a.against else x for x in argv]
    res = {"command": " ".join(["bench_client.py", *shown]), "options": opts,
           "method": "CPU time (process_time) to replay one recorded transfer's client inputs "
                     "into a fresh ClientEngine; per packet received; min over replays and "
                     "processes (median: of every replay)",
           "measures": "the client alone: the timed replay runs no server and no simulator "
                       "(their work happened once, in the recording); it includes the client's "
                       "own wire work (decoding each answer, checksums, encoding its requests). "
                       "decode_us_per_packet: decoding the answers alone (segment + response), "
                       "the wire layer's share of that figure", "runs": runs,
           "load_avg_1_5_15_min": {"start": load,
                                   "end": [round(x, 2) for x in os.getloadavg()]}}
    for name, rs in runs.items():
        every = sorted(x for r in rs for x in r["us_per_packet_all"])
        decs = [r.get("decode_us_per_packet_min") for r in rs]
        res[name] = {"us_per_packet": min(r["us_per_packet_min"] for r in rs),
                     "us_per_packet_median": round(every[len(every) // 2], 3),
                     "decode_us_per_packet": None if None in decs else min(decs),
                     "mypyc_modules": rs[0].get("mypyc_modules", 0),
                     "sent_sha256": sorted({r["sent_sha256"] for r in rs}),
                     "packets": rs[0]["packets"], "summary": rs[0]["summary"]}
        print(f"{name}: {res[name]['us_per_packet']} us/packet (median "
              f"{res[name]['us_per_packet_median']}) over {rs[0]['packets']} packets"
              f" (sent digest {res[name]['sent_sha256'][0][:16]}, {rs[0]['summary']}; "
              f"decoding the answers alone {res[name]['decode_us_per_packet']} us/packet, "
              f"{res[name]['mypyc_modules']} mypyc modules loaded)")
        if a.instructions:
            per = counts[name] / rs[0]["packets"]
            res[name]["instructions_per_packet"] = round(per)
            print(f"{name}: {per:,.0f} instructions/packet (cachegrind, one replay)")
    if a.against:
        ratio = res["this"]["us_per_packet"] / res["against"]["us_per_packet"]
        res["ratio_this_over_against"] = round(ratio, 4)
        res["median_ratio_this_over_against"] = round(
            res["this"]["us_per_packet_median"] / res["against"]["us_per_packet_median"], 4)
        print(f"this / against = {ratio:.3f} (CPU time)")
        if a.instructions:
            iratio = counts["this"] / counts["against"]
            res["instructions_ratio_this_over_against"] = round(iratio, 4)
            print(f"this / against = {iratio:.4f} (instructions)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
