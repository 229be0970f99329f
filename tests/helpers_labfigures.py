"""Inputs for the figure tests: a simulated run with one loss, and small dicts of the shapes
the 08 and 09 lab functions return (so figure tests need not run the labs)."""

from __future__ import annotations

from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.core.events import Event, EventLog


def events_with_loss() -> list[Event]:
    log = EventLog()
    simulate_transfer(300_000, seed=3, down=LinkConfig(loss_pattern=[40], rate=None),
                      up=LinkConfig(rate=None), on_event=log)
    return log.events


def lab_inputs() -> tuple[dict, dict, dict, dict]:
    """Small dicts of the shapes the 08 and 09 lab functions return."""
    cache = {"off": {"ok": True, "requests": 107, "replay_drops": 27, "cache": None,
                     "server_cpu_us_per_request": 47.0},
             "on": {"ok": True, "requests": 107, "replay_drops": 27,
                    "cache": {"hits": 27, "misses": 80}, "server_cpu_us_per_request": 41.5}}
    dyn = {"records": 300, "stream_bytes": 1_218_117, "delivered_bytes": 606_828,
           "skipped_bytes": 611_289}
    par = {"requests": 3, "replicas": 1, "parallel_s": 0.3, "sequential_s": 0.9,
           "parallel_timeline": [{"request": i, "start_s": 0.0, "first_byte_s": 0.02 + i / 10,
                                  "done_s": 0.28 + i / 100} for i in range(3)],
           "sequential_timeline": [{"request": i, "start_s": 0.3 * i, "first_byte_s": 0.3 * i
                                    + 0.02, "done_s": 0.3 * (i + 1)} for i in range(3)]}
    modes = {}
    for m, (resp, req, total, n) in {"off": (74.2, 75.0, 146.0, 678),
                                     "pairs": (45.9, 75.0, 85.0, 352),
                                     "hash": (23.9, 42.6, 66.0, 677),
                                     "both": (20.9, 42.9, 43.0, 352)}.items():
        modes[m] = {"resp_bytes_per_data_packet": resp, "req_bytes_per_request": req,
                    "total_per_data_packet": total, "requests": n,
                    "reduction_pct": {} if m == "off" else {
                        "resp_bytes_per_data_packet": 10.0, "req_bytes_per_request": 20.0,
                        "total_per_data_packet": 30.0},
                    "response_types": {"FULL1": 700, "MINIMAL": 5} if m == "off" else
                    {"HASHED": 350, "PAIR": 350, "MINIMAL": 5},
                    "request_types": {"FULL1": n} if m == "off" else {"COMPACT": n}}
    comp = {"size": 1_000_000, "loss": 0.01, "seed": 1, "modes": modes}
    return cache, dyn, par, comp
