"""Uplink (request-path) loss and the client's uplink repair (docs/protocol.md §8.8).

The audit's finding (issue 20, item 5): a client that sends every request twice gets far more
than an honest one when requests are lost, because an honest client's lost request leaves a
gap that counts as congestion. With `ClientConfig(uplink_repair=True)` the honest client
repeats the request of a gap and sends requests in as many copies as the request loss it
measures calls for; the server's replay table answers one copy of a continuation, so extra
copies buy nothing. Everything here runs in the seeded simulator (virtual time): behaviour
only, no wall-clock speed.
"""

from __future__ import annotations

from collections import Counter

import pytest

from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.server import ServerConfig
from trickles_kit.net.faults import DropPattern
from trickles_kit.testing.liars import keyed_links, run_client
from trickles_kit.wire.messages import decode_request
from trickles_kit.wire.segment import decode_segment

ON = ClientConfig(uplink_repair=True)
OFF = ClientConfig()
ACCUSATIONS = ("drop.nonce", "drop.mac", "drop.sack_shape", "drop.sack_count", "nonce_fail",
               "drop.stale", "drop.future", "drop.key_epoch")


class Copier(ClientEngine):
    """The audit's duplicating client: the honest engine, every request datagram sent
    `copies` times (SYNs once)."""

    def __init__(self, *args, copies: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.copies = copies

    def datagrams_to_send(self) -> list[bytes]:
        out = super().datagrams_to_send()
        return [d for seg in out for d in [seg] * (1 if seg[13] & 0x02 else self.copies)]


def _uplink(cls: type[ClientEngine], cfg: ClientConfig, seed: int, up: float,
            size: int = 1_000_000, down: float = 0.0, **kw):
    """A transfer over the liars' path (20 ms RTT) with keyed loss: the same datagrams meet
    the same fate in every run, exact copies independently."""
    return run_client(cls, size, seed, client_config=cfg, time_limit=300.0,
                      link_factory=keyed_links(LinkConfig(loss=down, rate=None),
                                               LinkConfig(loss=up, rate=None), seed), **kw)


def test_off_by_default_and_bounded_config() -> None:
    assert ClientConfig().uplink_repair is False  # the paper's behaviour unless asked
    with pytest.raises(ValueError):
        ClientConfig(uplink_repair=True, request_repeats=0)
    with pytest.raises(ValueError):
        ClientConfig(uplink_repair=True, request_copies=5)
    # off: not one extra datagram, and a dropped request is a loss (test_demo_recovery)
    r = simulate_transfer(300_000, 0.0, 1, server_drop=DropPattern((40,)))
    assert r.ok and r.recoveries >= 1
    assert r.client["tx"] == r.client["requests"] + 1  # + the SYN
    assert not any(k in r.client for k in ("repeats", "copies", "probe_pairs"))


@pytest.mark.parametrize("index", [30, 40])
def test_a_lost_request_is_repaired_not_taken_for_congestion(index: int) -> None:
    """The audit: 'a lost request kills its trickle and counts as congestion'. Repaired: the
    request is sent again, the server answers it (it never saw it), nothing is halved."""
    drop = DropPattern((index,))
    off = simulate_transfer(300_000, 0.0, 1, server_drop=drop)
    on = simulate_transfer(300_000, 0.0, 1, server_drop=DropPattern((index,)),
                           client_config=ON)
    assert off.ok and on.ok  # byte-exact both
    assert off.links["server_dropped"] == on.links["server_dropped"] == 1
    assert off.recoveries >= 1 and off.retransmissions >= 1
    assert on.recoveries == 0 and on.retransmissions == 0 and on.timeouts == 0
    assert on.client["repeats"] == on.client["repaired"] == 1
    assert "losses" not in on.client
    assert not any(on.server.get(k) for k in ACCUSATIONS)


def test_a_repeat_of_an_answered_request_gets_nothing_and_loss_still_halves() -> None:
    """A lost answer (data loss) looks the same to the client; its repeat is refused as a
    replay, the server sends nothing more for it, and recovery halves the window as before:
    congestion still counts."""
    cfg = ServerConfig(initial_ssthresh=4)  # congestion avoidance: one packet per request
    off = simulate_transfer(300_000, 0.0, 1, down=LinkConfig(loss_pattern=[60]),
                            server_config=cfg)
    on = simulate_transfer(300_000, 0.0, 1, down=LinkConfig(loss_pattern=[60]),
                           server_config=cfg, client_config=ON)
    assert off.ok and on.ok
    assert on.client["repeats"] == 1 and on.client["repair_failed"] == 1
    assert "repaired" not in on.client
    assert on.recoveries == off.recoveries == 1
    assert on.server["tx"] == off.server["tx"]  # not one packet more for the repeat
    assert on.server["drop"] == on.server["drop.replay"]  # its copies refused, nothing else


@pytest.mark.parametrize("up", [0.01, 0.05, 0.10])
def test_honest_client_completes_byte_exact_under_uplink_loss(up: float) -> None:
    for seed in (1, 2):
        off = _uplink(ClientEngine, OFF, seed, up, size=600_000)
        on = _uplink(ClientEngine, ON, seed, up, size=600_000)
        assert off.ok and on.ok, (seed, off.phase, on.phase)
        assert on.client.get("recoveries", 0) <= off.client.get("recoveries", 0)
        assert on.client.get("timeouts", 0) <= off.client.get("timeouts", 0)
        assert not any(on.server.get(k) for k in ACCUSATIONS), on.server


def test_duplicate_senders_gain_at_most_1_2x_at_10_percent_uplink_loss() -> None:
    """The acceptance: at 10 % uplink loss, clients sending every request 2 or 3 times get at
    most 1.2x the honest client's goodput (summed over seeds, the same keyed losses). Without
    the repair, the audit's finding: they get many times more."""
    seeds = (1, 2, 3)

    def total(cls: type[ClientEngine], cfg: ClientConfig, **kw) -> float:
        runs = [_uplink(cls, cfg, s, 0.10, **kw) for s in seeds]
        assert all(r.exact_prefix for r in runs)
        return sum(r.goodput_bps for r in runs)

    honest_off = total(ClientEngine, OFF)
    assert total(Copier, OFF, copies=2) > 3 * honest_off  # the finding, reproduced
    honest = total(ClientEngine, ON)
    assert honest > 5 * honest_off
    for copies in (2, 3):
        gain = total(Copier, ON, copies=copies) / honest
        assert gain <= 1.2, f"{copies} copies: {gain:.2f} x the honest client"


def test_duplicate_senders_gain_at_most_1_2x_on_a_100_mbit_path() -> None:
    """The testbed's shape: 100 Mbit/s both ways, 1 ms RTT, a 50 ms queue."""
    def run(cls: type[ClientEngine], seed: int, **kw) -> float:
        r = run_client(cls, 4_000_000, seed, client_config=ON, time_limit=300.0,
                       down=LinkConfig(delay=0.0005, rate=100e6, queue=430),
                       up=LinkConfig(delay=0.0005, rate=100e6, queue=1720, loss=0.10), **kw)
        assert r.ok
        return r.goodput_bps

    honest = sum(run(ClientEngine, s) for s in (1, 2))
    for copies in (2, 3):
        assert sum(run(Copier, s, copies=copies) for s in (1, 2)) <= 1.2 * honest


def test_copies_are_bounded_and_the_server_answers_each_continuation_once() -> None:
    cfg = ClientConfig(uplink_repair=True)
    bound = cfg.request_copies * (1 + cfg.request_repeats)
    sent: Counter[bytes] = Counter()
    answered: Counter[bytes] = Counter()

    def hook(server) -> None:
        receive = server.receive

        def counting(seg: bytes, ip: bytes, now: float) -> list[bytes]:
            s = decode_segment(seg, ip, server.service_ip)
            key = b""
            if not s.flags & 0x02:
                key = decode_request(s.payload).cont_raw[59:67]  # the continuation's MAC
                sent[key] += 1
            before = server.counters["drop"]
            out = receive(seg, ip, now)
            if key and server.counters["drop"] == before:
                answered[key] += 1
            return out

        server.receive = counting

    r = _uplink(ClientEngine, cfg, 1, 0.10, server_hook=hook)
    assert r.ok
    assert max(sent.values()) <= bound
    assert max(answered.values()) == 1  # copies and repeats of a continuation: one answer
    assert sum(sent.values()) - len(sent) > 0  # copies were sent (and refused)
    assert set(k for k in r.server if k.startswith("drop")) <= {"drop", "drop.replay"}


def test_without_uplink_loss_the_overhead_is_the_probes() -> None:
    """On a clean uplink only one request in PROBE_PAIR goes out twice (to measure), and a
    path that loses answers only turns repeats (nearly) off: they would only delay recovery."""
    clean = simulate_transfer(1_000_000, 0.0, 1, client_config=ON)
    assert clean.ok and "repeats" not in clean.client
    c = clean.client
    assert c["copies"] == c["probe_pairs"] <= c["requests"] / ClientEngine.PROBE_PAIR + 1
    down = _uplink(ClientEngine, ON, 1, 0.0, down=0.03)
    assert down.ok
    gaps = down.client["losses"]
    assert down.client.get("repeats", 0) <= gaps / 4 + 2, down.client
    assert down.client.get("repeats_skipped", 0) > 0


def test_reordering_and_duplication_with_repair_accuse_no_one() -> None:
    for seed in range(3):
        r = simulate_transfer(500_000, seed=seed, client_config=ON,
                              down=LinkConfig(reorder=0.2, duplicate=0.05),
                              up=LinkConfig(reorder=0.2, duplicate=0.05, loss=0.05))
        assert r.ok
        assert set(k for k in r.server if k.startswith("drop")) <= {"drop", "drop.replay"}


def test_repair_with_delta_encoding() -> None:
    """HASHED answers echo no timestamp, so no copies are made, but repeats (the same bytes)
    still repair lost requests."""
    cfg = ClientConfig(uplink_repair=True, paired=True, hashed=True)
    for seed in (1, 2):
        r = simulate_transfer(500_000, seed=seed, client_config=cfg,
                              server_config=ServerConfig(delta=True),
                              up=LinkConfig(loss=0.05), down=LinkConfig())
        assert r.ok
        assert r.client.get("repaired", 0) > 0 and "copies" not in r.client
        assert r.client.get("delta_unknown", 0) == 0
        assert set(k for k in r.server if k.startswith("drop")) <= {"drop", "drop.replay"}


def test_fetch_cli_flag_turns_the_repair_on() -> None:
    """`trickles fetch --uplink-repair` is how a user asks for it (off by default: the paper's
    client, and the tour's deterministic request drop must still show a recovery)."""
    import argparse

    from trickles_kit.cli import wire as cli_wire

    ap = argparse.ArgumentParser()
    cli_wire.add_parsers(ap.add_subparsers())
    on = ap.parse_args(["fetch", "http://127.0.0.1:1/x", "--uplink-repair"])
    off = ap.parse_args(["fetch", "http://127.0.0.1:1/x"])
    assert cli_wire._client_config(on).uplink_repair is True
    assert cli_wire._client_config(off).uplink_repair is False
