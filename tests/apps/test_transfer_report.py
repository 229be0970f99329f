"""One report type for simulated and real transfers, and one way to build a simulated world."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from trickles_kit.apps.generated import Generated, gen_request, generated_sha256
from trickles_kit.apps.sim import LinkConfig, build_world, sim_server, simulate_transfer
from trickles_kit.core.transfer_report import TransferReport, goodput_bps

# the keys `trickles sim --json` and `trickles fetch --json` printed before the report was one
SIM_KEYS = {"ok", "bytes", "sha256_sent", "sha256_received", "seconds", "goodput_bps",
            "retransmissions", "splits", "terminations", "recoveries", "timeouts", "final_cwnd",
            "phase", "server", "client", "links", "wall_seconds", "sim_events"}
SIM_BRIEF = ["ok", "bytes", "sha256_sent", "sha256_received", "seconds", "goodput_bps",
             "retransmissions", "splits", "terminations", "recoveries", "timeouts", "final_cwnd",
             "phase"]
FETCH_KEYS = {"url", "ok", "status", "bytes", "sha256", "seconds", "goodput_bps",
              "retransmissions", "splits", "terminations", "recoveries", "timeouts",
              "final_cwnd", "phase", "transport"}


def _wire_report() -> TransferReport:
    engine = SimpleNamespace(counters=Counter({"pred.retransmit": 2, "pred.split": 30,
                                               "pred.terminate": 4, "recoveries": 1,
                                               "timeouts": 0, "tx": 99}),
                             cwnd=12, phase="done")
    return TransferReport.from_client(engine, ok=True, bytes=1000, sha256_received="ab" * 32,
                                      seconds=0.5, goodput_bps=goodput_bps(1000, 0.5),
                                      url="http://10.0.0.1:8080/x", status=200, transport="udp")


def test_a_simulated_report_counts_what_the_client_counts() -> None:
    """The figures mean what they mean on a real wire (the client's view); the server's own
    counts stay beside them."""
    r = simulate_transfer(300_000, seed=3, down=LinkConfig(loss_pattern=[40], rate=None),
                          up=LinkConfig(rate=None))
    assert r.ok and r.sha256_received == r.sha256_sent == r.sha256
    c = r.client
    assert c is not None and r.server is not None
    assert (r.retransmissions, r.splits, r.terminations, r.recoveries, r.timeouts) == tuple(
        c.get(k, 0) for k in ("pred.retransmit", "pred.split", "pred.terminate", "recoveries",
                              "timeouts"))
    assert r.retransmissions == r.server["retransmit"] == 1  # nothing lost on the way up
    # the client also counts the requests still on the way when the last byte arrived
    assert r.splits >= r.server["split"]


def test_the_json_keys_of_both_commands_are_kept() -> None:
    sim = simulate_transfer(50_000)
    assert sim.as_dict().keys() >= SIM_KEYS
    assert list(sim.as_dict(brief=True)) == SIM_BRIEF  # the text summary (README's sample)
    wire = _wire_report()
    d = wire.as_dict()
    assert d.keys() >= FETCH_KEYS and d["sha256"] == d["sha256_received"]
    assert d["retransmissions"] == 2 and d["final_cwnd"] == 12 and d["client"]["tx"] == 99
    assert not {"server", "links", "sim_events", "sha256_sent"} & d.keys()  # unknown: left out
    assert wire.summary().splitlines()[0] == "             url: http://10.0.0.1:8080/x"
    assert goodput_bps(1000, 0.0) == 0.0 and goodput_bps(1000, 0.5) == 16000.0


def test_simulate_transfer_is_a_world_built_by_build_world() -> None:
    """The same seed through build_world by hand gives the transfer simulate_transfer reports."""
    seed, size = 4, 120_000
    r = simulate_transfer(size, 0.01, seed)
    world = build_world(seed, sim_server(seed, Generated()), gen_request(size, seed), loss=0.01,
                        keep_data=True)
    world.run(3600.0)
    data = bytes(world.net.data[world.address])
    assert world.client.done and len(data) == size
    assert world.slot.hasher.hexdigest() == r.sha256_received == generated_sha256(size, seed)
    assert round(world.seconds(), 6) == r.seconds
    assert world.client.counters["pred.retransmit"] == r.retransmissions
