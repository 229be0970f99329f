#!/usr/bin/env python3
"""Replay horizon: honest requests the replay table refuses at loads 0.5, 1 and 2, and replays.

Load = distinct live requests per freshness window / table capacity (docs/protocol.md §11.2).
Past load ~1 a row overflows, its oldest entry is evicted and the row's horizon rises to that
entry's seal time; from then on a continuation sealed at or before the horizon is refused, seen
or not, so a replay of an evicted entry is never answered. The price: an honest request on a
continuation as old as the evicted entries is refused too (counted `drop.replay_horizon`; its
client recovers through its timeout). Two parts, small tables so a run is quick:

1. `server` — end to end, on the simulator's virtual clock (trickles_kit.apps.sim): a real
   `ServerEngine` (freshness 120 s) and honest `ClientEngine`s, each fetching `--size` bytes
   of `Generated` over a 10 ms / 100 Mbit/s path losing `--loss` (1 %) each way, new
   transfers starting at random (uniform, independent) times at the rate that gives the load;
   the same seeded starts at every load and at load ~0 (a table 64x larger: the baseline).
   Honest traffic runs 3 freshness windows; the load is measured from the requests that
   reached the server. Then every request the server saw is sent again (a replay of every
   victim request) and the answers are counted.
2. `table` — `ReplayHistory` alone, larger, with an explicit honest age model: most requests
   use a continuation one RTT old (20 ms + an exponential 20 ms mean), 2 % one held 1-110 s
   (a reader that paused: its client asks again only when it reads). After 3 windows every
   request accepted in the last window is replayed.

Measures only, asserts nothing. From the repository root:

    nice -n 19 .venv/bin/python benchmarks/bench_replay_horizon.py [--quick] [--record]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trickles_kit.apps.generated import Generated, gen_request, generated_sha256  # noqa: E402
from trickles_kit.apps.sim import (  # noqa: E402
    LinkConfig,
    SimNetwork,
    Simulator,
    client_address,
    sim_echo_key,
)
from trickles_kit.bench.meta import add_output_args, close_meta, meta, write_result  # noqa: E402
from trickles_kit.core.client import ClientEngine  # noqa: E402
from trickles_kit.core.replay import ReplayHistory  # noqa: E402
from trickles_kit.core.server import ServerConfig, ServerEngine  # noqa: E402
from trickles_kit.wire.messages import REQ_NAMES, decode_request  # noqa: E402
from trickles_kit.wire.segment import SYN, decode_segment  # noqa: E402

LOADS = (0.5, 1.0, 2.0)
FRESHNESS = 120.0  # s, ServerConfig's default
WINDOWS = 3  # freshness windows of honest traffic per run
HASH_KEY = b"bench-replay-hzn"  # the table's row key: fixed, so runs repeat exactly
SECRET = bytes(range(32))


# ------------------------------------------------------------------------ part 1: server
class _Recorder:
    """Stands in for the server in SimNetwork: records every request, then passes it on."""

    def __init__(self, server: ServerEngine) -> None:
        self.server = server
        self.requests: list[tuple[float, bytes, bytes]] = []  # (arrival, segment, client ip)

    def receive(self, data: bytes, cip: bytes, now: float) -> list[bytes]:
        if len(data) > 13 and not data[13] & SYN:
            self.requests.append((now, data, cip))
        return self.server.receive(data, cip, now)


def _requests_per_transfer(size: int, seed: int, loss: float) -> float:
    """Requests one transfer of `size` makes (including those still on the way when its last
    byte arrives), from ~10 transfers far apart: sets the arrival rate for a load."""
    out = _server_run(size, 1 << 16, rate=0.1, horizon=100.0, seed=seed + 1000, loss=loss)
    return out["requests"] / out["transfers"]


def _server_run(size: int, capacity: int, rate: float, horizon: float, seed: int,
                loss: float) -> dict:
    """Honest transfers arriving at `rate` a second for `horizon` s, then a replay of all."""
    sim = Simulator(seed)
    gen = Generated()
    server = ServerEngine(SECRET, gen, SimNetwork.SERVER_IP, SimNetwork.SERVER_PORT,
                          ServerConfig(replay_entries=capacity, freshness=FRESHNESS))
    gen.attach(server)
    server.replay = ReplayHistory(FRESHNESS, capacity, hash_key=HASH_KEY)
    rec = _Recorder(server)
    net = SimNetwork(sim, rec, LinkConfig(delay=0.010, rate=100e6, queue=10_000, loss=loss),
                     LinkConfig(delay=0.010, rate=100e6, queue=10_000, loss=loss))
    arrivals = random.Random(seed ^ 0xA221)
    # rate x horizon transfers at independent uniform times: Poisson arrivals with the count
    # fixed, so the mean load is the one asked for (each window's count still varies)
    starts = sorted(arrivals.uniform(0.0, horizon) for _ in range(round(rate * horizon)))
    for i, t in enumerate(starts):  # one new client (address, port) per transfer
        ip, port = client_address(i)
        isn = arrivals.getrandbits(32)
        eng = ClientEngine(ip, port, SimNetwork.SERVER_IP, SimNetwork.SERVER_PORT, isn=isn,
                           echo_key=sim_echo_key(isn))
        net.add_client(eng, gen_request(size, i), start=t)
    sim.run(until=horizon + 60.0, stop=net.all_finished)  # the last transfers finish
    end = sim.now
    c = dict(server.counters)
    slots = list(net.clients.values())
    done = sum(1 for s in slots if s.engine.done)
    exact = sum(1 for k, s in enumerate(slots) if s.engine.done
                and s.hasher.hexdigest() == generated_sha256(size, k))
    honest = len(rec.requests)
    out = {
        "transfers": len(slots), "completed": done, "byte_exact": exact,
        "requests": honest,
        "refused_by_horizon": c.get("drop.replay_horizon", 0),
        "refused_as_replay": c.get("drop.replay", 0),
        "client_timeouts": sum(s.engine.counters["timeouts"] for s in slots),
        "transfers_with_a_timeout": sum(1 for s in slots if s.engine.counters["timeouts"]),
        "evicted": server.replay.evicted,
        "virtual_seconds": round(end, 3),
    }
    if horizon <= FRESHNESS:
        return out
    # the load: requests that reached the server in the window before each second, over
    # the capacity, from the end of the first window (the table full) to the end of traffic
    times = [r[0] for r in rec.requests]
    j0 = j1 = 0
    loads = []
    for s in range(int(FRESHNESS), int(horizon) + 1):
        while j1 < len(times) and times[j1] <= s:
            j1 += 1
        while j0 < len(times) and times[j0] <= s - FRESHNESS:
            j0 += 1
        loads.append((j1 - j0) / server.replay.max_entries)
    out["load_measured"] = {"mean": round(sum(loads) / len(loads), 3),
                            "min": round(min(loads), 3), "max": round(max(loads), 3)}
    # then every request again, at once: each is a replay of a request the server answered
    # (or refused); none may be answered. Still-fresh ones are the table's to stop. A
    # SLOWSTART or FIN is keyed with its continuation's age bucket (core.replay): one answer
    # per bucket, by design, so its replay in a later bucket is answered (counted apart)
    now = end + 0.001
    before = dict(server.counters)
    answered: dict[str, int] = {}
    fresh = 0
    for arrived, data, cip in rec.requests:
        if now - arrived < FRESHNESS - 1.0:
            fresh += 1
        if server.receive(data, cip, now):
            kind = REQ_NAMES.get(decode_request(decode_segment(data).payload).type, "?")
            answered[kind] = answered.get(kind, 0) + 1
    drops = {k[5:]: v - before.get(k, 0) for k, v in server.counters.items()
             if k.startswith("drop.") and v != before.get(k, 0)}
    out["replay"] = {
        "sent": len(rec.requests), "fresh": fresh,
        "answered": sum(answered.get(k, 0) for k in answered if k not in ("SLOWSTART", "FIN")),
        "answered_by_type": answered,
        "refused_by_horizon": drops.get("replay_horizon", 0),
        "refused_by_reason": drops,
    }
    return out


def part_server(size: int, capacity: int, seed: int, loss: float) -> dict:
    per = _requests_per_transfer(size, seed, loss)
    horizon = WINDOWS * FRESHNESS
    res = {"capacity": ReplayHistory(FRESHNESS, capacity).max_entries,
           "requests_per_transfer_alone": round(per, 2), "transfer_bytes": size,
           "honest_traffic_s": horizon, "freshness_s": FRESHNESS, "loss_each_way": loss,
           "runs": {}}
    for load in LOADS:
        rate = load * capacity / FRESHNESS / per  # transfers a second
        t0 = time.process_time()
        run = _server_run(size, capacity, rate, horizon, seed, loss)
        base = _server_run(size, capacity * 64, rate, horizon, seed, loss)
        run["cpu_s"] = round(time.process_time() - t0, 1)
        run["transfer_rate_per_s"] = round(rate, 4)
        run["baseline_64x_table"] = {k: base[k] for k in (
            "requests", "refused_by_horizon", "client_timeouts", "transfers_with_a_timeout",
            "completed", "load_measured")}
        run["extra_timeouts"] = run["client_timeouts"] - base["client_timeouts"]
        res["runs"][str(load)] = run
        r = run["replay"]
        print(f"server load {load}: measured {run['load_measured']['mean']:.2f}; "
              f"{run['requests']} honest requests, {run['refused_by_horizon']} refused by the "
              f"horizon, {run['extra_timeouts']:+d} timeouts vs the 64x table; "
              f"{run['completed']}/{run['transfers']} completed ({run['byte_exact']} exact); "
              f"replays {r['sent']} ({r['fresh']} fresh): answered {r['answered_by_type']}, "
              f"{r['refused_by_horizon']} stopped only by the horizon", flush=True)
    return res


# ------------------------------------------------------------------------ part 2: table
def _present(h: ReplayHistory, key: int) -> bool:
    """Whether `key` still has a slot (reads the table's arrays: a no-horizon table would
    answer a fresh replay of a key that has none)."""
    return h.holds(key)


def part_table(capacity: int, seed: int) -> dict:
    rtt, held_share = 0.020, 0.02
    res = {"capacity": ReplayHistory(FRESHNESS, capacity).max_entries,
           "freshness_s": FRESHNESS, "windows": WINDOWS,
           "age_model": {"in_flight": "0.020 s + exponential, mean 0.020 s",
                         "held": "uniform 1-110 s", "held_share": held_share},
           "runs": {}}
    for load in LOADS:
        rng = random.Random(seed)
        h = ReplayHistory(FRESHNESS, capacity, hash_key=HASH_KEY)
        n = int(load * h.max_entries * WINDOWS)
        rate = n / (WINDOWS * FRESHNESS)
        t = 0.0
        counts = {"in_flight": [0, 0], "held": [0, 0]}  # [requests, refused], after window 1
        held_refused_ages: list[float] = []
        accepted: list[tuple[int, float]] = []
        t0 = time.process_time()
        for _ in range(n):
            t += rng.expovariate(rate)
            held = rng.random() < held_share
            age = rng.uniform(1.0, 110.0) if held else rtt + rng.expovariate(1 / 0.020)
            key = rng.getrandbits(64)
            ok = h.check_and_add(key, t, t - age)
            if ok:
                accepted.append((key, t - age))
            if t >= FRESHNESS:
                c = counts["held" if held else "in_flight"]
                c[0] += 1
                if not ok:
                    c[1] += 1
                    if held:
                        held_refused_ages.append(age)
        end = t + 0.001
        victims = [(k, s) for k, s in accepted if end - s < FRESHNESS - 1.0]
        gone = sum(1 for k, _ in victims if not _present(h, k))
        answered = sum(1 for k, s in victims if h.check_and_add(k, end, s))
        run = {
            "requests": n, "evicted": h.evicted, "refused_by_horizon_total": h.refused,
            "measured_after_first_window": {
                k: {"requests": v[0], "refused": v[1],
                    "refused_pct": round(100 * v[1] / v[0], 4) if v[0] else None}
                for k, v in counts.items()},
            "held_refused_min_age_s": round(min(held_refused_ages), 2)
            if held_refused_ages else None,
            "replay": {"victims_fresh": len(victims), "answered": answered,
                       "evicted_victims_a_table_without_horizon_would_answer": gone},
            "cpu_s": round(time.process_time() - t0, 2),
        }
        res["runs"][str(load)] = run
        m = run["measured_after_first_window"]
        print(f"table  load {load}: {n} requests; refused by the horizon: in flight "
              f"{m['in_flight']['refused']}/{m['in_flight']['requests']}, held "
              f"{m['held']['refused']}/{m['held']['requests']} (youngest refused "
              f"{run['held_refused_min_age_s']} s); replays of {len(victims)} fresh victims: "
              f"{answered} answered ({gone} evicted: a table without the horizon would answer "
              f"them)", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="server table 256 entries, model table 4,096 (default 1,024; 65,536)")
    ap.add_argument("--size", type=int, default=50_000, help="bytes per honest transfer")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--loss", type=float, default=0.01,
                    help="server part: random loss each way (default 0.01: recoveries and "
                         "timeouts, whose SLOWSTARTs use older continuations)")
    ap.add_argument("--note", help="stored in the JSON")
    add_output_args(ap, "replay_horizon.json")
    a = ap.parse_args(argv)
    mode = "quick" if a.quick else "full"
    server_cap, table_cap = (256, 4096) if a.quick else (1024, 65536)
    t0 = time.perf_counter()
    res = {
        "meta": meta([os.path.relpath(__file__), *argv], mode),
        "what": "honest requests refused by the replay horizon, and replays answered, at "
                "table loads 0.5, 1, 2 (load = distinct live requests per freshness window / "
                "table capacity)",
        "server": part_server(a.size, server_cap, a.seed, a.loss),
        "table": part_table(table_cap, a.seed),
    }
    res["summary"] = {
        load: {
            "server_honest_refused_by_horizon": res["server"]["runs"][load]["refused_by_horizon"],
            "server_honest_requests": res["server"]["runs"][load]["requests"],
            "server_load_measured": res["server"]["runs"][load]["load_measured"]["mean"],
            "server_replays_answered_normal": res["server"]["runs"][load]["replay"]["answered"],
            "server_replays_answered_by_type": res["server"]["runs"][load]["replay"][
                "answered_by_type"],
            "table_refused_pct_in_flight": res["table"]["runs"][load][
                "measured_after_first_window"]["in_flight"]["refused_pct"],
            "table_refused_pct_held": res["table"]["runs"][load][
                "measured_after_first_window"]["held"]["refused_pct"],
            "table_replays_answered": res["table"]["runs"][load]["replay"]["answered"],
        } for load in map(str, LOADS)}
    close_meta(res, mode, t0, a.note)
    out = write_result(a.out, res)
    print(f"wrote {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
