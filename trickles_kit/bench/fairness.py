"""`trickles bench fairness`: one Trickles flow sharing the bottleneck with 1, then 4, Reno flows.

All flows start together and fetch the same size; per-flow goodput is measured from the router
capture over the window where all flows are active (after the first tenth of it: slow start),
and Jain's index summarises it: 1 = equal shares, 1/n = one flow takes everything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trickles_kit.bench import flows as fl
from trickles_kit.bench.goodput import FlowSpec, _figures, _median, log, run_flows
from trickles_kit.bench.meta import meta
from trickles_kit.bench.rtt import path_config, preflight_path, rtt_argv

RATE = 20.0  # Mbit/s: the shared bottleneck
SECONDS = {True: 12.0, False: 20.0}  # whole mix; short runs are all slow start
REPEATS = {True: 1, False: 3}  # medians are reported


def run(quick: bool, out_dir: Path, verbose: bool = False, rtt_ms: float = 0.0,
        jitter_ms: float = 0.0) -> dict:
    """The mixes through a path of idle RTT `rtt_ms` (`bench.rtt`: checked first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rtt = preflight_path(rtt_ms, jitter_ms, RATE, verbose)
    t0 = time.monotonic()
    mixes = {"1+1": 1, "1+4": 4}
    res: dict = {"experiment": "fairness",
                 "meta": meta(["-m", "trickles_kit.cli", "bench", "fairness"]
                              + (["--quick"] if quick else []) + rtt_argv(rtt_ms, jitter_ms),
                              "quick" if quick else "full"),
                 "rtt": rtt, "rate_mbit": RATE, "repeats": REPEATS[quick], "mixes": {},
                 "method": "1 Trickles + N Reno flows started together, same size each; "
                           "goodput per flow over the window all are active (first 10 % "
                           "skipped), from the router capture; Jain's index over the flows",
                 "target": "Jain's index >= 0.9 for 1 + 1"}
    figs = []
    todo = [(name, n_reno, rep) for name, n_reno in mixes.items()
            for rep in range(REPEATS[quick])]
    runs: dict[str, list[dict]] = {name: [] for name in mixes}
    for i, (name, n_reno, rep) in enumerate(todo, 1):
        n = 1 + n_reno
        size = int(RATE * 1e6 / 8 * SECONDS[quick] / n)
        log(f"[fairness {i}/{len(todo)}] 1 Trickles + {n_reno} Reno at {RATE} Mbit/s, "
            f"{size / 1e6:.1f} MB each ...", True)
        specs = [FlowSpec("trickles", size)] + [FlowSpec("reno", size) for _ in range(n_reno)]
        try:
            r = run_flows(path_config(RATE, 0.0, rtt_ms, jitter_ms), specs, verbose,
                          f"fair{name}")
        except (RuntimeError, OSError, ValueError) as e:
            runs[name].append({"error": f"{type(e).__name__}: {e}"})
            continue
        objs = r["_flow_objs"]
        ov = fl.overlap_goodput(objs, r["_t0"])
        shares = ov.get("goodput_mbit", {})
        tk = [v for k, v in shares.items() if k.startswith("trickles")]
        reno = [v for k, v in shares.items() if k.startswith("reno")]
        one = {"repeat": rep, "flows": len(objs), "size_each": size, "overlap": ov,
               "jain": fl.jain(list(shares.values())) if len(shares) == n else None,
               "trickles_mbit": tk[0] if tk else None,
               "reno_mbit_mean": round(sum(reno) / len(reno), 4) if reno else None,
               "trickles_over_fair_share": round(tk[0] / (sum(shares.values()) / n), 4)
               if tk and shares else None,
               "byte_exact": r["all_byte_exact"],
               "per_flow": [{k: v for k, v in f.items() if k != "series"} for f in r["flows"]],
               "router": r.get("router"), "testbed": r["testbed"]}
        log(f"    Jain {one['jain']}, Trickles {one['trickles_mbit']} Mbit/s, Reno mean "
            f"{one['reno_mbit_mean']} Mbit/s", verbose)
        runs[name].append(one)
        if rep == 0:
            figs.append((f"1 Trickles + {n_reno} Reno, {RATE} Mbit/s", r["flows"]))
    for name, rs in runs.items():
        ok = [x for x in rs if x.get("jain") is not None]
        mix: dict = {"repeats": len(rs), "runs": rs}
        if ok:
            mix.update({k: _median([x[k] for x in ok]) for k in
                        ("jain", "trickles_mbit", "reno_mbit_mean", "trickles_over_fair_share")})
            mix["jain_runs"] = [x["jain"] for x in ok]
            mix["byte_exact"] = all(x["byte_exact"] for x in rs)
        res["mixes"][name] = mix
    res["jain_1_1"] = res["mixes"].get("1+1", {}).get("jain")
    res["jain_1_4"] = res["mixes"].get("1+4", {}).get("jain")
    res["wall_s"] = round(time.monotonic() - t0, 1)
    (out_dir / "fairness.json").write_text(json.dumps(res, indent=1) + "\n")
    _figures(figs, out_dir / "fairness.html")
    return res
