#!/usr/bin/env python3
"""Core benchmarks for trickles_kit: server cost per request, cwnd cost, a simulated transfer.

Measures and records; it never asserts. Run from the repository root:

    .venv/bin/python benchmarks/bench_core.py            # full run (100 MB transfer)
    .venv/bin/python benchmarks/bench_core.py --quick    # smaller pool, 10 MB transfer

See benchmarks/README.md for what every figure means.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import timeit
import tracemalloc
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script without an installed package
    sys.path.insert(0, str(REPO))

from trickles_kit.apps.generated import Generated, gen_request  # noqa: E402
from trickles_kit.bench.meta import close_meta, meta  # noqa: E402
from trickles_kit.core import plan as pl  # noqa: E402
from trickles_kit.core.admission import replay_key  # noqa: E402
from trickles_kit.core.cc import RenoStepper, cwnd  # noqa: E402
from trickles_kit.core.client import ClientEngine  # noqa: E402
from trickles_kit.core.nonces import NonceGen  # noqa: E402
from trickles_kit.core.replay import ReplayHistory  # noqa: E402
from trickles_kit.core.seal import mac, pseudo_header, verify  # noqa: E402
from trickles_kit.core.server import (  # noqa: E402
    Minisocket,
    OutSlot,
    ServerConfig,
    ServerEngine,
)
from trickles_kit.wire import continuation as _cont_mod  # noqa: E402
from trickles_kit.wire.continuation import Continuation  # noqa: E402
from trickles_kit.wire.messages import (  # noqa: E402
    REQ_NORMAL,
    RESPONSE_HEADER_LEN,
    DataChunk,
    decode_request,
    decode_response,
    encode_data_chunk,
    encode_response,
)
from trickles_kit.wire.segment import decode_segment, encode_segment  # noqa: E402

PACK_BODY = getattr(_cont_mod, "pack_body", None)  # newer engines pack without a Continuation
TARGET_US_PER_REQUEST = 15.0
TARGET_CWND_RATIO = 1.2
MSS = 1448
SERVER_IP = socket.inet_aton("10.0.0.1")
SERVER_PORT = 80
CLIENT_IP = socket.inet_aton("10.1.0.1")
CLIENT_PORT = 40000
SECRET = bytes(range(32))
GEN_SIZE = (1 << 32) - 1  # Generated.max_size: the pool never reaches the end of the stream
GEN_SEED = 7
CC_PARAMS = (0, 3, 64)  # tcp_base, start_cwnd, ssthresh
START_TIME = 1.0  # virtual seconds; see README ("virtual clock")

FULL = {"pool": 50_000, "rounds": 5, "stage_sample": 5_000, "repeat": 7, "sim_size": 100_000_000}
QUICK = {"pool": 5_000, "rounds": 2, "stage_sample": 1_000, "repeat": 3, "sim_size": 10_000_000}


# ============================================================================ helpers
def _round(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def _make_server(secret: bytes, engine=ServerEngine, config=ServerConfig, app=Generated):
    gen = app()
    if not APP_SUMS["on"]:  # (an older tree's Generated has no such attribute: harmless)
        gen.give_sums = False
    srv = engine(secret, gen, SERVER_IP, SERVER_PORT, config(initial_ssthresh=64))
    gen.attach(srv)
    return srv, gen


APP_SUMS = {"on": True}  # --no-app-sums: the handler gives no data checksum shares
ENGINE = {"make": _make_server}  # --baseline-tree swaps in an older engine for a pass


def _new_server(secret: bytes = SECRET) -> tuple[ServerEngine, Generated]:
    return ENGINE["make"](secret)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK = {"name": "cpu"}  # set from --clock; used by the timeit figures of sections 1 and 2


def _clock():
    return CLOCKS[CLOCK["name"]]


def _time_loop(stmt: str, setup: str, items: list, names: dict, repeat: int) -> dict:
    """Per-item cost of `stmt` (a `for ... in items:` loop), net of the empty loop's cost.

    `us` uses the fastest repeat of each (timeit's advice: slower repeats are other load on the
    machine, not the code); `median_us` uses the median repeats.

    timeit runs each repeat once over the whole list (gc disabled, as timeit does); the setup
    runs before every repeat, so state the statement mutates can be rebuilt there.
    """
    g = dict(names)
    g["items"] = items
    n = len(items)
    target = stmt.split(" in items:")[0]  # "for a, b in items:" -> same unpacking, no body
    base = timeit.Timer(f"{target} in items: pass", globals=g, timer=_clock()).repeat(repeat, 1)
    raw = timeit.Timer(stmt, setup, globals=g, timer=_clock()).repeat(repeat, 1)
    per = 1e6 / n  # seconds per loop -> µs per item
    return {
        "us": _round((min(raw) - min(base)) * per, 4),
        "median_us": _round((statistics.median(raw) - statistics.median(base)) * per, 4),
        "raw_min_us": _round(min(raw) * per, 4),
        "loop_overhead_us": _round(min(base) * per, 4),
        "items": n,
        "repeat": repeat,
    }


# ============================================================================ 1. server
def build_pool(count: int) -> tuple[list[tuple[bytes, float]], dict]:
    """Valid, never-used NORMAL requests in congestion avoidance, each answered by 1 packet.

    A ClientEngine fetches "GEN 4294967295 7" from a generator ServerEngine (same secret as the
    benchmark servers) over a zero-loss in-memory loop; virtual time advances 10 µs per step.
    Every request the generator answers with exactly one 1448-byte DATA packet, past slow
    start, is kept with the virtual time it arrived at. The benchmark servers are fresh
    instances, so to them every pooled request is new: no replay drop, the full path runs.
    """
    srv, _ = _new_server()
    cl = ClientEngine(CLIENT_IP, CLIENT_PORT, SERVER_IP, SERVER_PORT, isn=12345)
    now = START_TIME
    cl.connect(now, gen_request(GEN_SIZE, GEN_SEED))
    up: deque[bytes] = deque(cl.datagrams_to_send())
    down: deque[bytes] = deque()
    pool: list[tuple[bytes, float]] = []
    skipped = {"slow_start_or_handshake": 0, "two_packets_split": 0, "other": 0}
    cw: list[int] = []
    steps = 0
    while len(pool) < count:
        steps += 1
        if up:
            seg = up.popleft()
            out = srv.receive(seg, CLIENT_IP, now)
            down.extend(out)
            req = decode_request(decode_segment(seg).payload)
            c = req.cont
            if req.type != REQ_NORMAL or c is None:
                skipped["other"] += 1
            elif c.seq < c.tcp_base + c.ssthresh - c.start_cwnd:
                skipped["slow_start_or_handshake"] += 1
            elif len(out) != 1:
                skipped["two_packets_split"] += 1
            else:
                chunks = decode_response(decode_segment(out[0]).payload).chunks
                if len(chunks) == 1 and isinstance(chunks[0], DataChunk) and len(
                        chunks[0].data) == MSS:
                    pool.append((seg, now))
                    cw.append(cwnd(c.seq, c.tcp_base, c.start_cwnd, c.ssthresh))
                else:
                    skipped["other"] += 1
        elif down:
            cl.receive(down.popleft(), now)
            up.extend(cl.datagrams_to_send())
            cl.read()  # discard delivered bytes
        else:
            break  # stalled: cannot happen without loss; recorded below
        now += 1e-5
    info = {
        "requests": len(pool),
        "requested": count,
        "skipped": skipped,
        "generator_steps": steps,
        "virtual_span_s": _round(now - START_TIME, 6),
        "cwnd_min_packets": min(cw) if cw else None,
        "cwnd_max_packets": max(cw) if cw else None,
        "ssthresh_packets": CC_PARAMS[2],
        "stalled": len(pool) < count,
    }
    return pool, info


def reference_run(pool: list[tuple[bytes, float]]) -> tuple[list[bytes], dict]:
    """Untimed pass on a fresh server: the outputs feed the stage inputs and prove validity."""
    srv, _ = _new_server()
    outs: list[bytes] = []
    bad = 0
    for seg, t in pool:
        out = srv.receive(seg, CLIENT_IP, t)
        if len(out) != 1:
            bad += 1
            outs.append(b"")
            continue
        resp = decode_response(decode_segment(out[0], SERVER_IP, CLIENT_IP).payload)
        data = [c for c in resp.chunks if isinstance(c, DataChunk)]
        if len(data) != 1 or len(data[0].data) != MSS:
            bad += 1
        outs.append(out[0])
    c = srv.counters
    return outs, {
        "responses_not_one_1448_byte_packet": bad,
        "server_counters": dict(c),
        "all_accepted": c["rx"] == len(pool) and c["tx"] == len(pool) and c["drop"] == 0,
    }


def _batch(pool: list[tuple[bytes, float]], gc_on: bool) -> tuple[float, float, bool]:
    """Wall and CPU seconds for a fresh server to take every pooled request; all accepted?"""
    srv, _g = _new_server()
    recv = srv.receive
    pc, cpu = time.perf_counter, time.process_time
    gc.collect()
    if not gc_on:
        gc.disable()
    try:
        c0, t0 = cpu(), pc()
        for seg, t in pool:
            recv(seg, CLIENT_IP, t)
        dt, dc = pc() - t0, cpu() - c0
    finally:
        gc.enable()
    c = srv.counters
    return dt, dc, c["rx"] == c["tx"] == len(pool) and c["drop"] == 0


def end_to_end(pool: list[tuple[bytes, float]], rounds: int) -> dict:
    """Time server.receive over every pooled request; a fresh server for every pass.

    Each round runs three passes back to back: batch with gc on, batch with gc off (comparable
    with the timeit stage figures, which run with gc off), and per-call timing.
    """
    n = len(pool)
    on, off, on_cpu, off_cpu, per_call, ok = [], [], [], [], [], True
    pcn = time.perf_counter_ns
    for _ in range(rounds):
        dt, dc, good = _batch(pool, True)
        on.append(dt / n * 1e6)
        on_cpu.append(dc / n * 1e6)
        ok &= good
        dt, dc, good = _batch(pool, False)
        off.append(dt / n * 1e6)
        off_cpu.append(dc / n * 1e6)
        ok &= good
        srv, _g = _new_server()
        recv = srv.receive
        samples: list[int] = []
        app = samples.append
        gc.collect()
        for seg, t in pool:
            a = pcn()
            recv(seg, CLIENT_IP, t)
            app(pcn() - a)
        per_call.extend(samples)
        c = srv.counters
        ok &= c["rx"] == c["tx"] == n and c["drop"] == 0
    ov = []  # cost of the per-call clock reads themselves
    for _ in range(10000):
        a = pcn()
        ov.append(pcn() - a)
    per_call.sort()
    q = statistics.quantiles(per_call, n=100)
    return {
        "mean_us": _round(statistics.fmean(on)),
        "best_round_mean_us": _round(min(on)),
        "round_means_us": [_round(x) for x in on],
        "mean_cpu_us": _round(statistics.fmean(on_cpu)),
        "best_round_mean_cpu_us": _round(min(on_cpu)),
        "round_means_cpu_us": [_round(x) for x in on_cpu],
        "median_us": _round(statistics.median(per_call) / 1000),
        "p90_us": _round(q[89] / 1000),
        "p99_us": _round(q[98] / 1000),
        "per_call_mean_us": _round(statistics.fmean(per_call) / 1000),
        "mean_gc_off_us": _round(statistics.fmean(off)),
        "best_round_mean_gc_off_us": _round(min(off)),
        "round_means_gc_off_us": [_round(x) for x in off],
        "best_round_mean_gc_off_cpu_us": _round(min(off_cpu)),
        "timer_overhead_ns": statistics.median(ov),
        "rounds": rounds,
        "requests_per_round": n,
        "all_rounds_accepted_every_request": ok,
        "note": "mean = mean of the gc-on batch rounds (wall clock, one read per round); "
                "*_cpu_us = the same rounds in process CPU time (time.process_time), which "
                "leaves out time the process sat descheduled on a busy machine; "
                "median/p90/p99 from per-call rounds (wall), each call including "
                "timer_overhead_ns",
    }


def stages(pool: list[tuple[bytes, float]], outs: list[bytes], sample: int,
           repeat: int) -> tuple[dict, dict, dict]:
    """Each stage of ServerEngine.receive timed alone over inputs taken from the pool."""
    idx = list(range(min(sample, len(pool))))
    segs = [pool[i][0] for i in idx]
    times = [pool[i][1] for i in idx]
    decoded = [decode_segment(s, CLIENT_IP, SERVER_IP) for s in segs]
    reqs = [decode_request(d.payload) for d in decoded]
    ports = [d.src_port for d in decoded]
    pseudo = pseudo_header(CLIENT_IP, CLIENT_PORT, SERVER_IP, SERVER_PORT)
    srv, gen = _new_server()
    keys = srv.keys
    cfg = srv.cfg
    o_segs = [decode_segment(outs[i], SERVER_IP, CLIENT_IP) for i in idx]
    o_resps = [decode_response(s.payload) for s in o_segs]
    blocks = [[(b.left, b.right) for b in r.sacks] for r in reqs]
    nblocks = sum(len(b) for b in blocks)

    # the replay key exactly as the server builds it: the admission module's own function
    # (a copy here drifted once and overflowed the table's 64-bit keys)
    def rkey(r, t):
        age = (int(t * 1000) - r.cont.timestamp) & 0xFFFFFFFF
        return replay_key(r.cont.mac, r.type, age, cfg.slowstart_bucket)

    names = {
        "decode_segment": decode_segment, "decode_request": decode_request, "verify": verify,
        "plan_request": pl.plan_request, "mac": mac, "encode_response": encode_response,
        "encode_segment": encode_segment, "ReplayHistory": ReplayHistory, "NonceGen": NonceGen,
        "keys": keys, "CIP": CLIENT_IP, "SIP": SERVER_IP, "SPORT": SERVER_PORT, "ACK": 0x10,
        "handler": gen, "Continuation": Continuation, "Minisocket": Minisocket,
        "OutSlot": OutSlot, "encode_data_chunk": encode_data_chunk,
        "pseudo_header": pseudo_header, "MSS": MSS, "counters": srv.counters,
        "pack": PACK_BODY, "nonce_key": keys.nonce_key, "freshness": cfg.freshness,
        "max_entries": cfg.replay_entries,
    }
    msks = [
        Minisocket("REQUEST", (CLIENT_IP, p), r.cont.conn_id, r.app, r.ucont, r.ranges,
                   [OutSlot(o.cont.seq, MSS, r.ranges[0] if r.ranges else None)], t)
        for r, p, o, t in zip(reqs, ports, o_resps, times, strict=True)
    ]
    chunk_bytes = [
        s.payload[RESPONSE_HEADER_LEN + len(o.cont.encode()) + len(o.ucont):]
        for s, o in zip(o_segs, o_resps, strict=True)
    ]
    enc_items = [
        (o.nonce, o.num_siblings, o.position, o.cont.encode(), o.ucont, ch, p, s.seq, s.ack,
         s.flags, s.trickles_len)
        for o, s, ch, p in zip(o_resps, o_segs, chunk_bytes, ports, strict=True)
    ]
    # the encode inputs must rebuild the reference outputs byte for byte
    reencoded_ok = all(
        encode_segment(SERVER_IP, CLIENT_IP, SERVER_PORT, p, sq, ak, fl,
                       encode_response(nn, ns, ps, cb, uc, ch), tl) == outs[i]
        for i, (nn, ns, ps, cb, uc, ch, p, sq, ak, fl, tl) in zip(idx, enc_items, strict=True)
    )
    st: dict[str, dict] = {}
    st["decode_segment"] = _time_loop(
        "for s in items: decode_segment(s, CIP, SIP)", "", segs, names, repeat)
    st["decode_request"] = _time_loop(
        "for p in items: decode_request(p)", "", [d.payload for d in decoded], names, repeat)
    st["mac_verify"] = _time_loop(
        "for ps, raw, ep in items: verify(keys, ps, raw, ep)", "",
        [(pseudo, r.cont_raw, r.cont.key_epoch) for r in reqs], names, repeat)
    st["nonce_sack_check"] = _time_loop(
        "for cid, bl in items:\n for left, right in bl: gen.range_summary(cid, 1, left, right)",
        "gen = NonceGen(nonce_key)", [(r.cont.conn_id, b) for r, b in zip(reqs, blocks,
                                                                          strict=True)],
        names, repeat)
    st["replay_check"] = _time_loop(
        "for k, t in items: rh.check_and_add(k, t)", "rh = ReplayHistory(freshness, max_entries)",
        [(rkey(r, t), t) for r, t in zip(reqs, times, strict=True)], names, repeat)
    st["plan"] = _time_loop(
        "for a in items: plan_request(*a)", "",
        [(r.cont.seq, r.cont.tcp_base, r.cont.start_cwnd, r.cont.ssthresh, r.cont.state, b, False,
          cfg.max_gap) for r, b in zip(reqs, blocks, strict=True)], names, repeat)
    st["handler"] = _time_loop("for m in items: handler(m)", "", msks, names, repeat)
    st["seal"] = _time_loop(
        "for k, ps, body in items: mac(k, ps, body)", "",
        [(keys.mac_key(o.cont.key_epoch), pseudo, o.cont.body()) for o in o_resps], names,
        repeat)
    st["encode"] = _time_loop(
        "for nn, ns, ps, cb, uc, ch, p, sq, ak, fl, tl in items: "
        "encode_segment(SIP, CIP, SPORT, p, sq, ak, fl, encode_response(nn, ns, ps, cb, uc, ch),"
        " tl)", "", enc_items, names, repeat)

    # glue: smaller pieces of receive() that belong to none of the stages above
    glue: dict[str, dict] = {}
    glue["key_epoch"] = _time_loop(
        "for t, ep in items: keys.accepts(ep, t); keys.sealing_epoch(t); keys.mac_key(ep)", "",
        [(t, r.cont.key_epoch) for r, t in zip(reqs, times, strict=True)], names, repeat)
    glue["pseudo_header"] = _time_loop(
        "for p in items: pseudo_header(CIP, p, SIP, SPORT)", "", ports, names, repeat)
    glue["continuation_build"] = _time_loop(
        "for f in items: pack(*f)" if PACK_BODY else "for f in items: Continuation(*f).body()",
        "",
        [(o.cont.type, o.cont.seq, o.cont.first_child, o.cont.client_state, o.cont.parent,
          o.cont.client_timestamp, o.cont.timestamp, o.cont.mrtt, o.cont.state,
          o.cont.first_loss, o.cont.first_bootstrap_seq, o.cont.start_cwnd, o.cont.ssthresh,
          o.cont.tcp_base, o.cont.conn_id, o.cont.key_epoch) for o in o_resps], names, repeat)
    glue["slot_minisocket_build"] = _time_loop(
        "for pkt, rng, cid, app, uc, rr, p, t in items: "
        "Minisocket('REQUEST', (CIP, p), cid, app, uc, rr, [OutSlot(pkt, MSS, rng)], t)", "",
        [(o.cont.seq, r.ranges[0], r.cont.conn_id, r.app, r.ucont, r.ranges, p, t)
         for o, r, p, t in zip(o_resps, reqs, ports, times, strict=True)], names, repeat)
    glue["packet_nonce"] = _time_loop(
        "for cid, sq in items: gen.packet_nonce(cid, 1, sq)", "gen = NonceGen(nonce_key)",
        [(o.cont.conn_id, o.cont.seq) for o in o_resps], names, repeat)
    glue["data_chunk_build"] = _time_loop(
        "for bn, data, fin in items: encode_data_chunk(bn, data, fin)", "",
        [(m.slots[0].byte_num, m.slots[0].data, m.slots[0].fin) for m in msks], names, repeat)
    glue["counters"] = _time_loop(
        "for t in items: counters['rx'] += 1; counters['nonce_ok'] += 1; "
        "counters['continue'] += 1; counters['tx'] += 1", "", times, names, repeat)

    info = {
        "sample_requests": len(idx),
        "sack_blocks_per_request": _round(nblocks / len(idx), 3),
        "request_segment_bytes": len(segs[0]),
        "response_segment_bytes": len(outs[idx[0]]),
        "user_continuation_bytes": len(reqs[0].ucont),
        "encode_inputs_rebuild_reference_outputs": reencoded_ok,
        "method": "timeit, number=1 over the sample list, repeated; 'us' = (fastest repeat - "
                  "fastest empty loop) / items; gc disabled (timeit default)",
        "clock": CLOCK["name"],
    }
    return st, glue, info


STAGE_DOC = {
    "decode_segment": "decode_segment(seg, client_ip, service_ip) incl. TCP checksum verify",
    "decode_request": "decode_request(payload): continuation, SACK blocks, ucont, ranges",
    "mac_verify": "seal.verify: BLAKE2s-128 over pseudo + continuation slices, compare_digest",
    "nonce_sack_check": "NonceGen.range_summary per SACK block (fresh NonceGen per repeat)",
    "replay_check": "ReplayHistory.check_and_add with a fresh history per repeat (all new keys)",
    "plan": "plan.plan_request (first_missing + two closed-form cwnd calls + Slot list)",
    "handler": "Generated handler on a built Minisocket: unseal ucont (AES-GCM), 1448 B, fill",
    "seal": "seal.mac over the response continuation body (BLAKE2s-128)",
    "encode": "encode_response + encode_segment (incl. TCP checksum)",
}
GLUE_DOC = {
    "key_epoch": "KeyRing.accepts + sealing_epoch + mac_key lookup",
    "pseudo_header": "seal.pseudo_header",
    "continuation_build": "response continuation body: pack_body(16 fields), or "
                          "Continuation(...).body() where the engine has no pack_body",
    "slot_minisocket_build": "OutSlot + Minisocket construction",
    "packet_nonce": "NonceGen.packet_nonce for the response (fresh NonceGen per repeat)",
    "data_chunk_build": "encode_data_chunk for the 1448-byte DATA chunk",
    "counters": "4 Counter increments (rx, nonce_ok, continue, tx)",
}


def bench_server(opts: dict) -> dict:
    t0 = time.perf_counter()
    pool, pool_info = build_pool(opts["pool"])
    pool_info["build_wall_s"] = _round(time.perf_counter() - t0)
    outs, validity = reference_run(pool)
    e2e = end_to_end(pool, opts["rounds"])
    st, glue, st_info = stages(pool, outs, opts["stage_sample"], opts["repeat"])
    sum_st = sum(v["us"] for v in st.values())
    sum_glue = sum(v["us"] for v in glue.values())
    for k, v in st.items():
        v["what"] = STAGE_DOC[k]
        v["share_of_e2e_mean"] = _round(v["us"] / e2e["mean_us"], 4)
    for k, v in glue.items():
        v["what"] = GLUE_DOC[k]
        v["share_of_e2e_mean"] = _round(v["us"] / e2e["mean_us"], 4)
    return {
        "unit": "microseconds per request",
        "workload": "NORMAL requests in congestion avoidance (ssthresh 64), 1 SACK block, "
                    "each answered by one packet with 1448 data bytes; no I/O",
        "pool": pool_info,
        "validity": validity,
        "end_to_end": e2e,
        "stages": st,
        "glue": glue,
        "stage_method": st_info,
        "sum_of_stages_us": _round(sum_st),
        "sum_of_stages_and_glue_us": _round(sum_st + sum_glue),
        "unaccounted_us": _round(e2e["best_round_mean_gc_off_cpu_us"] - sum_st - sum_glue),
        "unaccounted_note": "end_to_end.best_round_mean_gc_off_cpu_us minus stages and glue: "
                            "receive() control flow, attribute lookups, freshness and "
                            "replay-key arithmetic, list building, zip/enumerate, and "
                            "stage/glue measurement error",
        "target_us": TARGET_US_PER_REQUEST,
        "meets_target_mean": e2e["mean_us"] <= TARGET_US_PER_REQUEST,
        "meets_target_mean_cpu": e2e["mean_cpu_us"] <= TARGET_US_PER_REQUEST,
        "meets_target_median": e2e["median_us"] <= TARGET_US_PER_REQUEST,
        "speedup_needed_for_target_mean": _round(e2e["mean_us"] / TARGET_US_PER_REQUEST, 3),
        "speedup_needed_for_target_median": _round(e2e["median_us"] / TARGET_US_PER_REQUEST, 3),
    }


def tree_of(spec: str) -> str:
    """A directory holding the `trickles_kit/` of `spec`: `spec` itself when it is one, else a
    git revision of this checkout exported to a temporary directory (`git archive`)."""
    import io
    import tarfile
    import tempfile

    if (Path(spec) / "trickles_kit").is_dir():
        return spec
    blob = subprocess.run(["git", "-C", str(REPO), "archive", spec, "trickles_kit"],
                          capture_output=True, check=True).stdout
    tmp = tempfile.mkdtemp(prefix="bench_tree_")
    atexit.register(shutil.rmtree, tmp, True)  # no tree left in the temp dir
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def load_tree(root: str):
    """A server factory of an older checkout (a directory holding its `trickles_kit/`, e.g.
    ``git archive REV trickles_kit | tar -x -C DIR``): the package is copied under the name
    `trickles_kit_baseline`, its imports rewritten, and imported beside this one, so that the
    whole engine — core modules, handler and codec included — is the old one."""
    import importlib
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench_core_baseline_"))
    atexit.register(shutil.rmtree, tmp, True)  # no tree left in the temp dir
    dst = tmp / "trickles_kit_baseline"
    shutil.copytree(Path(root) / "trickles_kit", dst,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for f in dst.rglob("*.py"):
        f.write_text(f.read_text().replace("trickles_kit.", "trickles_kit_baseline.")
                     .replace("from trickles_kit import", "from trickles_kit_baseline import"))
    sys.path.insert(0, str(tmp))
    srv = importlib.import_module("trickles_kit_baseline.core.server")
    app = importlib.import_module("trickles_kit_baseline.apps.generated")
    return lambda secret: _make_server(secret, srv.ServerEngine, srv.ServerConfig, app.Generated)


def compare_engines(pool: list[tuple[bytes, float]], rounds: int, base_make) -> dict:
    """This checkout's engine against `base_make`'s in the same run, rounds interleaved (base,
    current, current, base, ...) so that load on the machine and order hit both alike. Both
    must accept every pooled request. Best and median of the per-round gc-off CPU means."""
    n = len(pool)
    cpu: dict[str, list[float]] = {"baseline": [], "current": []}
    ok = True
    order = (("baseline", base_make), ("current", _make_server))
    for r in range(rounds):
        for name, make in order if r % 2 == 0 else order[::-1]:  # no side always goes first
            ENGINE["make"] = make
            try:
                _dt, dc, good = _batch(pool, False)
            finally:
                ENGINE["make"] = _make_server
            cpu[name].append(dc / n * 1e6)
            ok &= good
    best = {k: min(v) for k, v in cpu.items()}
    med = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "unit": "CPU microseconds per request, gc off, best / median of the rounds",
        "baseline_best_us": _round(best["baseline"]),
        "current_best_us": _round(best["current"]),
        "baseline_median_us": _round(med["baseline"]),
        "current_median_us": _round(med["current"]),
        "change_best": _round(best["current"] / best["baseline"] - 1, 4),
        "change_median": _round(med["current"] / med["baseline"] - 1, 4),
        "rounds": {k: [_round(x) for x in v] for k, v in cpu.items()},
        "requests_per_round": n,
        "all_accepted": ok,
    }


# ============================================================================ 2. cwnd
def bench_cwnd(opts: dict) -> dict:
    tb, sc, ss = CC_PARAMS
    rep = opts["repeat"]

    def timer(n: int) -> tuple[timeit.Timer, int]:
        t = timeit.Timer("cwnd(n, tb, sc, ss)", timer=_clock(),
                         globals={"cwnd": cwnd, "n": n, "tb": tb, "sc": sc, "ss": ss})
        return t, t.autorange()[0]

    n6 = 10**6
    points = {"n_10": 10, "n_10_7": 10**7, "n_100_congestion_avoidance": 100, "n_10_6": n6}
    timers = {k: timer(n) for k, n in points.items()}
    runs: dict[str, list[float]] = {k: [] for k in points}
    for _ in range(rep):  # interleaved, so load on the machine hits every point alike
        for k, (t, number) in timers.items():
            runs[k].append(t.timeit(number) / number * 1e9)
    res = {
        k: {"ns": _round(min(runs[k]), 2), "median_ns": _round(statistics.median(runs[k]), 2),
            "number": timers[k][1], "repeat": rep,
            "value_packets": cwnd(points[k], tb, sc, ss)}
        for k in points
    }
    small, big, ca_small, closed = (res["n_10"], res["n_10_7"], res["n_100_congestion_avoidance"],
                                    res["n_10_6"])

    def step() -> int:
        s = RenoStepper(tb, sc, ss)
        ack = s.ack
        for _ in range(n6):
            ack()
        return s.cwnd

    step_runs = []
    stepped_value = 0
    for _ in range(max(3, rep // 2)):
        gc.collect()
        clk = _clock()
        t0 = clk()
        stepped_value = step()
        step_runs.append(clk() - t0)
    step_s = min(step_runs)
    ratio = big["ns"] / small["ns"]
    return {
        "params": {"tcp_base": tb, "start_cwnd": sc, "ssthresh": ss},
        "n_10": small,
        "n_10_7": big,
        "ratio_n_10_7_over_n_10": _round(ratio, 3),
        "ratio_target_max": TARGET_CWND_RATIO,
        "ratio_meets_target": ratio <= TARGET_CWND_RATIO,
        "ratio_note": "n=10 is still in slow start (n < tcp_base + ssthresh - start_cwnd = 61): "
                      "one subtraction; n=10^7 takes the congestion-avoidance branch with isqrt. "
                      "The CA-only pair below separates branch cost from any growth with n.",
        "n_100_congestion_avoidance": ca_small,
        "ratio_n_10_7_over_n_100": _round(big["ns"] / ca_small["ns"], 3),
        "figures_note": "ns = fastest of the interleaved repeats; median_ns also given",
        "clock": CLOCK["name"],
        "closed_form_vs_stepping_n_10_6": {
            "closed_form_ns": closed["ns"],
            "closed_form_value_packets": closed["value_packets"],
            "stepper_s": _round(step_s, 4),
            "stepper_note": "fastest of the runs; bound method in a local, one call per ack",
            "stepper_runs_s": [_round(x, 4) for x in step_runs],
            "stepper_value_packets": stepped_value,
            "values_agree": stepped_value == closed["value_packets"],
            "speedup": _round(step_s * 1e9 / closed["ns"], 0),
        },
    }


# ============================================================================ 3. simulation
def _peak_rss_kib() -> tuple[int, str]:
    """Peak resident set size of this process in KiB, and where it came from.

    Linux's VmHWM belongs to the address space, so it starts afresh at exec; ru_maxrss does
    not (a child reports at least the parent's RSS at fork), so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]), "VmHWM"
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"


def _sim_child(size: int, mode: str) -> dict:
    """Runs in a fresh interpreter so peak RSS and tracemalloc see only this transfer."""
    from trickles_kit.apps.sim import simulate_transfer

    gc.collect()
    rss0, src = _peak_rss_kib()
    if mode == "tracemalloc":
        tracemalloc.start()
    t0 = time.perf_counter()
    r = simulate_transfer(size, 0.0, 1)
    wall = time.perf_counter() - t0
    out = {
        "mode": mode,
        "wall_s": _round(wall, 3),
        "sim_loop_wall_s": r.wall_seconds,
        "virtual_s": r.seconds,
        "ok": r.ok,
        "bytes": r.bytes,
        "sim_events": r.sim_events,
        "goodput_bps_virtual": r.goodput_bps,
        "retransmissions": r.retransmissions,
        "timeouts": r.timeouts,
        "final_cwnd_packets": r.final_cwnd,
        "server_tx_packets": r.server.get("tx", 0),
        "peak_rss_source": src,
        "peak_rss_before_mib": _round(rss0 / 1024, 1),
    }
    if mode == "tracemalloc":
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["tracemalloc_peak_mib"] = _round(peak / 2**20, 2)
    rss1, _ = _peak_rss_kib()
    out["peak_rss_after_mib"] = _round(rss1 / 1024, 1)
    out["peak_rss_delta_mib"] = _round((rss1 - rss0) / 1024, 1)
    return out


def bench_sim(size: int) -> dict:
    runs = {}
    for mode in ("plain", "tracemalloc"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--sim-child", str(size),
               "--sim-mode", mode]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            runs[mode] = {"error": p.stderr[-2000:], "returncode": p.returncode}
            continue
        runs[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    plain, tm = runs.get("plain", {}), runs.get("tracemalloc", {})
    res = {
        "call": f"simulate_transfer({size}, 0.0, 1)",
        "size_bytes": size,
        "method": "two fresh interpreters: 'plain' gives wall time and peak RSS (Linux VmHWM, "
                  "else ru_maxrss; delta = growth of the high-water mark during the call, over "
                  "the interpreter + imports baseline); "
                  "'tracemalloc' gives the Python-heap peak (tracemalloc slows the run, so its "
                  "wall time is not the figure)",
        "runs": runs,
    }
    if "error" not in plain:
        res.update({
            "wall_s": plain["wall_s"],
            "sim_loop_wall_s": plain["sim_loop_wall_s"],
            "virtual_s": plain["virtual_s"],
            "ok": plain["ok"],
            "sim_events": plain["sim_events"],
            "wall_us_per_sim_event": _round(plain["sim_loop_wall_s"] / plain["sim_events"] * 1e6),
            "wall_over_virtual": _round(plain["sim_loop_wall_s"] / plain["virtual_s"], 3)
            if plain["virtual_s"] else None,
            "peak_rss_delta_mib": plain["peak_rss_delta_mib"],
            "peak_rss_mib": plain["peak_rss_after_mib"],
            "peak_rss_source": plain["peak_rss_source"],
        })
    if "error" not in tm:
        res["tracemalloc_peak_mib"] = tm.get("tracemalloc_peak_mib")
        res["tracemalloc_run_wall_s"] = tm.get("wall_s")
    return res


# ============================================================================ report
# _meta lives in the package (trickles bench uses it too): one copy
_meta = meta


def _table(res: dict) -> str:
    L: list[str] = []
    s = res.get("server_per_request")
    if s:
        e = s["end_to_end"]
        L.append("1. Server engine cost per request (µs/request, no I/O, 1448 B data/response)")
        L.append(f"   pool: {s['pool']['requests']} fresh CA requests, cwnd "
                 f"{s['pool']['cwnd_min_packets']}..{s['pool']['cwnd_max_packets']} packets; "
                 f"all accepted: {e['all_rounds_accepted_every_request']}")
        L.append(f"   {'end-to-end mean (gc on)':<34}{e['mean_us']:>9.2f}   "
                 f"rounds {', '.join(f'{x:.2f}' for x in e['round_means_us'])}")
        L.append(f"   {'end-to-end mean, CPU time (gc on)':<34}{e['mean_cpu_us']:>9.2f}   "
                 f"rounds {', '.join(f'{x:.2f}' for x in e['round_means_cpu_us'])}")
        L.append(f"   {'end-to-end median / p90 / p99':<34}{e['median_us']:>9.2f}   "
                 f"{e['p90_us']:.2f} / {e['p99_us']:.2f}  (incl. ~{e['timer_overhead_ns']} ns "
                 "timer)")
        L.append(f"   {'end-to-end best round (gc on/off)':<34}{e['best_round_mean_us']:>9.2f}   "
                 f"gc off: best {e['best_round_mean_gc_off_us']:.2f}, mean "
                 f"{e['mean_gc_off_us']:.2f}")
        L.append(f"   {'stage':<34}{'µs':>9} {'share':>7}   what")
        for k, v in s["stages"].items():
            L.append(f"   {k:<34}{v['us']:>9.2f} {v['share_of_e2e_mean']:>7.1%}   {v['what']}")
        L.append(f"   {'SUM OF STAGES':<34}{s['sum_of_stages_us']:>9.2f}")
        for k, v in s["glue"].items():
            L.append(f"   {'glue: ' + k:<34}{v['us']:>9.2f} {v['share_of_e2e_mean']:>7.1%}   "
                     f"{v['what']}")
        L.append(f"   {'SUM OF STAGES + GLUE':<34}{s['sum_of_stages_and_glue_us']:>9.2f}")
        L.append(f"   {'unaccounted (gc-off CPU - sums)':<34}{s['unaccounted_us']:>9.2f}")
        L.append(f"   target {s['target_us']} µs/request met by: mean {s['meets_target_mean']}, "
                 f"CPU-time mean {s['meets_target_mean_cpu']}, median "
                 f"{s['meets_target_median']} (speed-up needed: "
                 f"{s['speedup_needed_for_target_mean']}x on the mean, "
                 f"{s['speedup_needed_for_target_median']}x on the median)")
    b = s.get("same_run_baseline") if s else None
    if b:
        L.append(f"   same run vs {b['baseline']}: best {b['baseline_best_us']:.2f} -> "
                 f"{b['current_best_us']:.2f} µs ({b['change_best']:+.1%}), median "
                 f"{b['baseline_median_us']:.2f} -> {b['current_median_us']:.2f} µs "
                 f"({b['change_median']:+.1%}); all accepted {b['all_accepted']}")
    c = res.get("cwnd")
    if c:
        cf = c["closed_form_vs_stepping_n_10_6"]
        L.append("2. cwnd closed form (tcp_base=0, start_cwnd=3, ssthresh=64)")
        L.append(f"   cwnd(10)      {c['n_10']['ns']:>9.1f} ns   "
                 f"cwnd(10^7) {c['n_10_7']['ns']:.1f} ns   ratio "
                 f"{c['ratio_n_10_7_over_n_10']:.3f} (target <= {c['ratio_target_max']}: "
                 f"{c['ratio_meets_target']})")
        L.append(f"   cwnd(100) CA  {c['n_100_congestion_avoidance']['ns']:>9.1f} ns   "
                 f"ratio 10^7/100 {c['ratio_n_10_7_over_n_100']:.3f}")
        L.append(f"   n=10^6: closed form {cf['closed_form_ns']:.1f} ns vs RenoStepper "
                 f"{cf['stepper_s'] * 1000:.1f} ms -> speed-up {cf['speedup']:,.0f}x "
                 f"(values {cf['closed_form_value_packets']} / {cf['stepper_value_packets']}, "
                 f"agree: {cf['values_agree']})")
    m = res.get("simulated_transfer")
    if m:
        L.append(f"3. Simulated transfer: {m['call']}")
        if "wall_s" in m:
            L.append(f"   wall {m['wall_s']:.2f} s (sim loop {m['sim_loop_wall_s']:.2f} s), "
                     f"virtual {m['virtual_s']:.3f} s, ok {m['ok']}, "
                     f"{m['sim_events']:,} events ({m['wall_us_per_sim_event']:.2f} µs/event)")
            L.append(f"   peak RSS +{m['peak_rss_delta_mib']} MiB during the call (peak "
                     f"{m['peak_rss_mib']} MiB, {m['peak_rss_source']}); tracemalloc peak "
                     f"{m.get('tracemalloc_peak_mib')} MiB (separate run, "
                     f"{m.get('tracemalloc_run_wall_s')} s)")
        else:
            L.append(f"   failed: {m['runs']}")
    return "\n".join(L)


COMPARE_KEYS = [
    ("server_per_request", "end_to_end", "mean_us"),
    ("server_per_request", "end_to_end", "mean_cpu_us"),
    ("server_per_request", "end_to_end", "median_us"),
    *[("server_per_request", "stages", k, "us") for k in STAGE_DOC],
    *[("server_per_request", "glue", k, "us") for k in GLUE_DOC],
    ("cwnd", "n_10", "ns"),
    ("cwnd", "n_10_7", "ns"),
    ("cwnd", "ratio_n_10_7_over_n_10"),
    ("simulated_transfer", "wall_s"),
    ("simulated_transfer", "tracemalloc_peak_mib"),
    ("simulated_transfer", "peak_rss_delta_mib"),
]


def _compare(old: dict, new: dict) -> str:
    def get(d: dict, path: tuple) -> float | None:
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return None
            d = d[p]
        return d if isinstance(d, int | float) else None

    L = [f"Compared with {old.get('meta', {}).get('date_utc')} "
         f"({old.get('meta', {}).get('mode')}):"]
    for path in COMPARE_KEYS:
        a, b = get(old, path), get(new, path)
        if a is None or b is None:
            continue
        ch = f"{(b - a) / a:+.1%}" if a else "n/a"
        L.append(f"   {'.'.join(path[1:]):<40}{a:>12.3f} -> {b:>10.3f}  {ch}")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(
        prog="bench_core.py",
        description="Measure trickles_kit's server engine per request (end to end and per "
                    "stage), cwnd's cost vs n and vs stepping, and a simulated transfer; write "
                    "JSON and print a table. Measures only: nothing is asserted.")
    ap.add_argument("--quick", action="store_true",
                    help="small pool, fewer rounds, 10 MB transfer instead of 100 MB")
    # a run writes to reports/ (git-ignored); the committed result changes only with --record
    ap.add_argument("--out", default=str(REPO / "reports" / "benchmarks" / "core.json"),
                    help="JSON output path (default: %(default)s)")
    ap.add_argument("--record", dest="out", nargs="?", metavar="NAME",
                    const=str(REPO / "benchmarks" / "results" / "core.json"),
                    type=lambda name: str(REPO / "benchmarks" / "results" / name),
                    help="refresh the committed benchmarks/results/core.json (or NAME there)")
    ap.add_argument("--pool", type=int, help="requests in the pool (default 50000; quick 5000)")
    ap.add_argument("--rounds", type=int,
                    help="end-to-end rounds, each a batch + a per-call pass (default 5; quick 2)")
    ap.add_argument("--sim-size", type=int,
                    help="bytes for the simulated transfer (default 100e6; quick 10e6)")
    ap.add_argument("--only", choices=["server", "cwnd", "sim"], action="append",
                    help="run only these sections (repeatable); the default runs all")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="timer for the timeit figures (stages, cwnd): process CPU time, robust "
                         "on a shared machine, or wall time (default: %(default)s); the "
                         "end-to-end figures always report both")
    ap.add_argument("--note", help="free text stored in the JSON (e.g. what changed)")
    ap.add_argument("--no-app-sums", action="store_true",
                    help="the Generated handler gives no data checksum shares (pure build: "
                         "the engine then sums every answer's data itself)")
    ap.add_argument("--baseline-tree", metavar="REV|DIR",
                    help="also time the server engine of an older checkout against this one, "
                         "interleaved in the same run: a git revision of this checkout, or a "
                         "DIR holding its trickles_kit/ (e.g. git archive HEAD trickles_kit | "
                         "tar -x -C DIR)")
    ap.add_argument("--compare-rounds", type=int, default=10,
                    help="interleaved rounds of --baseline-tree (default: %(default)s)")
    ap.add_argument("--compare", metavar="OLD.json",
                    help="also print the change of the main figures against an earlier result")
    ap.add_argument("--sim-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sim-mode", default="plain", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.sim_child is not None:
        print(json.dumps(_sim_child(a.sim_child, a.sim_mode)))
        return 0
    CLOCK["name"] = a.clock
    APP_SUMS["on"] = not a.no_app_sums
    opts = dict(QUICK if a.quick else FULL)
    for k in ("pool", "rounds", "sim_size"):
        if getattr(a, k) is not None:
            opts[k] = getattr(a, k)
    sections = a.only or ["server", "cwnd", "sim"]
    mode = "quick" if a.quick else "full"
    old = None
    if a.compare:  # read now: --compare may name the file --out is about to overwrite
        try:
            old = json.loads(Path(a.compare).read_text())
        except (OSError, ValueError) as e:
            print(f"--compare: cannot read {a.compare}: {e}", file=sys.stderr)
    res: dict = {"meta": _meta([sys.argv[0], *argv], mode), "options": {**opts, "clock": a.clock,
                                                                   "app_sums": APP_SUMS["on"]}}
    t0 = time.perf_counter()
    if "server" in sections:
        print("[1/3] server engine per request ...", file=sys.stderr, flush=True)
        res["server_per_request"] = bench_server(opts)
        if a.baseline_tree:
            pool, _ = build_pool(opts["pool"])
            res["server_per_request"]["same_run_baseline"] = {
                "baseline": a.baseline_tree,
                **compare_engines(pool, a.compare_rounds, load_tree(tree_of(a.baseline_tree)))}
    if "cwnd" in sections:
        print("[2/3] cwnd ...", file=sys.stderr, flush=True)
        res["cwnd"] = bench_cwnd(opts)
    if "sim" in sections:
        print(f"[3/3] simulated transfer of {opts['sim_size']} bytes (two runs) ...",
              file=sys.stderr, flush=True)
        res["simulated_transfer"] = bench_sim(opts["sim_size"])
    close_meta(res, mode, t0, a.note)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(_table(res))
    if old is not None:
        print(_compare(old, res))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
