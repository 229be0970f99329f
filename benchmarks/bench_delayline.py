#!/usr/bin/env python3
"""The NFQUEUE delay line's accuracy and cost: idle RTT at 10/20/100 ms each way, and a load.

In the namespace testbed of `trickles bench` (client - router - server, veth, a 100 Mbit/s tbf,
`trickles_kit/net/testbed.py`) a delay line (`trickles_kit/net/delayline.py`) runs in the router.
For each one-way delay, N UDP echoes 10 ms apart (`trickles_kit/net/rttprobe.py`) measure the
idle RTT: mean, sd, median, max, minus the same measurement without the line; the line reports
its CPU time, late releases and kernel drops. The load case runs one Linux Reno flow through a
50 Mbit/s tbf with the given RTT (`bench.goodput.run_flows`) and reports goodput and the
line's CPU share. Measures only, asserts nothing. Needs root. From the repository root:

    nice -n 19 .venv/bin/python benchmarks/bench_delayline.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trickles_kit.bench.meta import meta  # noqa: E402
from trickles_kit.net.rttprobe import echo_server, run_probe, summary  # noqa: E402
from trickles_kit.net.testbed import Testbed, TestbedConfig  # noqa: E402

DELAYS_MS = (10.0, 20.0, 100.0)
COUNT = {True: 200, False: 1000}


def idle(count: int, wrap: list[str]) -> dict:
    out: dict = {}
    with Testbed(TestbedConfig(rate_mbit=100, queue_ms=50), tag="dlacc") as tb, \
            echo_server(tb, wrap=wrap):
        base = run_probe(tb, count, interval=0.01, wrap=wrap)
        out["no_line"] = summary(base["rtt_ms"])
        for d in DELAYS_MS:
            line = tb.start_delayline(tb.line_config(d))
            t0 = time.monotonic()
            r = run_probe(tb, count, interval=0.01, wait=max(2.0, 4 * d / 1000), wrap=wrap)
            wall = time.monotonic() - t0
            stats = line.stop()
            s = summary(r["rtt_ms"])
            s.update({"added_median_ms": round(s["median_ms"] - out["no_line"]["median_ms"], 3),
                      "sent": r["sent"], "received": r["received"], "in_order": r["in_order"],
                      "line_cpu_s": stats.get("cpu_s"), "line_wall_s": stats.get("wall_s"),
                      "probe_wall_s": round(wall, 2), "scheduling": stats.get("scheduling"),
                      "late": {k: v["late"] for k, v in stats["directions"].items()},
                      "late_max_ms": {k: v["late_max_ms"] for k, v in
                                      stats["directions"].items()},
                      "kernel_dropped": stats.get("kernel_dropped")})
            out[f"{d:g}ms_each_way"] = s
            print(f"{d:g} ms each way: RTT {s['mean_ms']} +- {s['sd_ms']} ms (n {s['n']}), "
                  f"median {s['median_ms']}, max {s['max_ms']}", file=sys.stderr)
    return out


def load(rtt_ms: float, rate: float, seconds: float) -> dict:
    from trickles_kit.bench.goodput import FlowSpec, run_flows

    out = {}
    for label, delay in (("no_delay", 0.0), (f"rtt_{rtt_ms:g}ms", rtt_ms / 2)):
        cfg = TestbedConfig(rate_mbit=rate, delay_ms=delay, queue_ms=max(50.0, rtt_ms))
        r = run_flows(cfg, [FlowSpec("reno", int(rate * 1e6 / 8 * seconds))], series=False,
                      label=label)
        f = r["flows"][0] if r["flows"] else {}
        router = r.get("router", {})
        cpu = router.get("delayline_cpu_s")
        out[label] = {"goodput_mbit": f.get("goodput_mbit"), "wall_s": r.get("wall_s"),
                      "byte_exact": r.get("all_byte_exact"),
                      "line_cpu_s_at_end": cpu,
                      "line_kernel_dropped": router.get("delayline_kernel_dropped"),
                      "delay": r["testbed"]["delay"]}
        print(f"reno {rate:g} Mbit/s {label}: {f.get('goodput_mbit')} Mbit/s, line cpu {cpu}",
              file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    # a run writes to reports/ (git-ignored); the committed result changes only with --record
    ap.add_argument("--out", default="reports/bench/delayline.json",
                    help="JSON output path (default: %(default)s)")
    ap.add_argument("--record", dest="out", action="store_const",
                    const="benchmarks/results/delayline.json",
                    help="refresh the committed benchmarks/results/delayline.json")
    ap.add_argument("--no-load", action="store_true", help="idle RTT only")
    ap.add_argument("--rt-endpoints", action="store_true",
                    help="run the UDP echo and prober under `chrt -f 5` too, so the spread "
                         "measured is the line's rather than the endpoints' scheduling")
    a = ap.parse_args()
    t0 = time.monotonic()
    res = {"experiment": "delayline",
           "meta": meta(["benchmarks/bench_delayline.py"] + sys.argv[1:],
                        "quick" if a.quick else "full"),
           "method": "UDP echoes 10 ms apart, client -> router (delay line) -> server and back",
           "endpoints": "SCHED_FIFO 5 (chrt -f 5)" if a.rt_endpoints else "SCHED_OTHER",
           "idle": idle(COUNT[a.quick], ["chrt", "-f", "5"] if a.rt_endpoints else [])}
    if not a.no_load:
        res["load"] = load(40.0, 50.0, 4.0 if a.quick else 10.0)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "meta"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
