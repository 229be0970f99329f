"""Acceptance: loss-free, the packets the server emits for each acknowledgement are exactly those a
Reno sender would send, and the cwnd traces are equal (PROTOCOL §4.1, §4.2).

The oracle is `RenoStepper` (a Reno sender stepped ack by ack), never the closed form.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.core.cc import RenoStepper
from trickles_kit.core.events import EventLog
from trickles_kit.core.server import ServerConfig

SIZE = 5_000_000
TCP_BASE = 1  # the first epoch starts at packet 1; the handshake continuation is packet 0
EMIT_KINDS = ("initial", "continue", "split")
UNEXPECTED_KINDS = ("terminate", "retransmit", "bootstrap", "recovery_start", "slowstart",
                    "nonce_fail", "mac_fail", "replay_drop", "stale_drop", "drop", "timeout",
                    "loss_detected")


def reno_windows(start_cwnd: int, ssthresh: int, last: int) -> dict[int, int]:
    """w(k) for k = TCP_BASE - 1 .. last: w(TCP_BASE - 1) = start_cwnd, then the stepper."""
    stepper = RenoStepper(TCP_BASE, start_cwnd, ssthresh)
    w = {TCP_BASE - 1: start_cwnd, TCP_BASE: stepper.cwnd}
    for k in range(TCP_BASE + 1, last + 1):
        w[k] = stepper.ack()
        assert stepper.n == k
    return w


def run(seed: int, cfg: ServerConfig):
    log = EventLog()
    res = simulate_transfer(
        SIZE, 0.0, seed, down=LinkConfig(rate=None), up=LinkConfig(rate=None),
        server_config=cfg, on_event=log,
    )
    return res, log


CONFIGS = [
    pytest.param(ServerConfig(initial_cwnd=1), id="iw1"),
    pytest.param(ServerConfig(initial_cwnd=3), id="iw3"),
    pytest.param(ServerConfig(initial_cwnd=10), id="iw10"),
    pytest.param(ServerConfig(initial_ssthresh=8), id="iw3-ss8"),
    pytest.param(ServerConfig(initial_cwnd=1, initial_ssthresh=8), id="iw1-ss8"),
    pytest.param(ServerConfig(initial_cwnd=10, initial_ssthresh=10), id="iw10-ss10"),
    pytest.param(ServerConfig(initial_cwnd=10, initial_ssthresh=13), id="iw10-ss13"),
]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_loss_free_server_is_a_reno_sender(cfg, seed):
    res, log = run(seed, cfg)

    # a clean run: no loss anywhere, nothing but the normal step
    assert res.ok, res.summary()
    assert res.terminations == 0
    assert res.retransmissions == 0
    assert res.recoveries == 0
    assert res.timeouts == 0
    for direction in ("down", "up"):
        assert res.links[direction]["lost"] == 0
        assert res.links[direction]["queue_drops"] == 0
    for kind in UNEXPECTED_KINDS:
        assert log.count(kind) == 0, (kind, log.of(kind)[:3])

    emitted = [e for e in log.events if e.side == "server" and e.kind in EMIT_KINDS]
    by_ack: dict[int, list[int]] = defaultdict(list)
    kinds_of: dict[int, list[str]] = defaultdict(list)
    cwnd_of: dict[int, set[int]] = defaultdict(set)
    for e in emitted:
        by_ack[e.ack].append(e.pkt)
        kinds_of[e.ack].append(e.kind)
        cwnd_of[e.ack].add(e.cwnd)
        assert e.tcp_base == TCP_BASE and e.state == 0, e
        assert e.ssthresh == cfg.initial_ssthresh, e

    acks = sorted(by_ack)
    last = acks[-1]
    # acks arrive in order with no gap: 0 (the handshake continuation), 1, 2, ..., last
    assert acks == list(range(TCP_BASE - 1, last + 1))
    assert len(acks) > 1000  # a few thousand packets, well past slow start
    w = reno_windows(cfg.initial_cwnd, cfg.initial_ssthresh, last)

    # the handshake ack opens the initial window 1 .. initial_cwnd
    assert by_ack[0] == list(range(TCP_BASE, TCP_BASE + cfg.initial_cwnd))
    assert set(kinds_of[0]) == {"initial"}
    assert cwnd_of[0] == {cfg.initial_cwnd}

    wrong_pkts, wrong_cwnd = [], []
    for k in range(TCP_BASE, last + 1):
        want = list(range(k + w[k - 1], k + w[k] + 1))
        if by_ack[k] != want:
            wrong_pkts.append((k, by_ack[k], want))
        if cwnd_of[k] != {w[k]}:
            wrong_cwnd.append((k, sorted(cwnd_of[k]), w[k]))
    assert not wrong_pkts, f"(ack, emitted, reno) first mismatches: {wrong_pkts[:5]}"
    assert not wrong_cwnd, f"(ack, reported cwnd, reno) first mismatches: {wrong_cwnd[:5]}"

    # each ack: one packet continues the trickle, the others split off new ones
    for k in range(TCP_BASE, last + 1):
        kinds = kinds_of[k]
        assert kinds[0] == "continue" and set(kinds[1:]) <= {"split"}, (k, kinds)
    # (the server's count: the report's `splits` is the client's, which includes the requests
    # still on the way when the last byte arrived)
    assert res.server["split"] == sum(w[k] - w[k - 1] for k in range(TCP_BASE, last + 1))

    # the union is the schedule of one sender: every packet number once, no holes
    pkts = sorted(e.pkt for e in emitted)
    assert pkts == list(range(TCP_BASE, pkts[-1] + 1))
    assert pkts[-1] == last + w[last]

    # in congestion avoidance when ssthresh is small
    if cfg.initial_ssthresh < 100:
        assert w[last] > cfg.initial_ssthresh + 10
