"""One loss and one timeout, end to end in the simulator, checked against PROTOCOL §4.3 / §4.4."""

from __future__ import annotations

import pytest

from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.core import events as ev
from trickles_kit.core.cc import cwnd
from trickles_kit.core.events import EventLog
from trickles_kit.core.server import ServerConfig

FAST = {"rate": None}  # no bottleneck: the only loss is the one we inject


def _run(size: int, lost: list[int], **scfg):
    log = EventLog()
    r = simulate_transfer(
        size, seed=1, down=LinkConfig(loss_pattern=lost, **FAST), up=LinkConfig(**FAST),
        server_config=ServerConfig(**scfg), on_event=log,
    )
    assert r.ok, r.as_dict()
    return r, log


def _server(log: EventLog, kind: str) -> list[ev.Event]:
    return [e for e in log.of(kind) if e.side == "server"]


@pytest.mark.parametrize(("lost", "ssthresh"), [(40, 0x3FFF), (300, 0x3FFF), (150, 12)])
def test_one_loss_halves_once(lost: int, ssthresh: int) -> None:
    _, log = _run(1_500_000, [lost], initial_ssthresh=ssthresh)
    starts = _server(log, ev.RECOVERY_START)
    assert len(starts) == 1, "the window halves exactly once"
    first_loss = starts[0].detail["first_loss"]
    rtx = _server(log, ev.RETRANSMIT)
    assert [e.pkt for e in rtx] == [first_loss], "the lost packet is retransmitted exactly once"

    # the epoch the loss happened in: from the packets sent before it
    old = next(e for e in _server(log, ev.CONTINUE) if e.pkt == first_loss - 1)
    base, c0, s = old.tcp_base, ServerConfig().initial_cwnd, old.ssthresh
    new_cwnd = cwnd(first_loss, base, c0, s) // 2
    last_regular = first_loss - 1 + cwnd(first_loss - 1, base, c0, s)
    # the bootstrap acks: new_cwnd of them, ending new_cwnd // 4 (at most 3) before the last
    boot_start = last_regular - new_cwnd + 1 - min(new_cwnd // 4, 3)

    boots = _server(log, ev.BOOTSTRAP)
    assert len(boots) == new_cwnd, "live trickles after recovery == newCwnd"
    new_base = last_regular + 1
    assert sorted(e.pkt for e in boots) == list(range(new_base, new_base + new_cwnd))
    for e in boots:  # the new epoch's fields (§4.3)
        assert e.tcp_base == last_regular + 1
        assert e.ssthresh == new_cwnd
        assert e.state == 2  # BOOTSTRAP
        # requests in the newCwnd bootstrap acks of the old window clock out one each
        assert e.pkt == last_regular + 1 + (e.ack - boot_start)
    # acks before the bootstrap range and after it terminate (but the one that retransmits)
    terms = _server(log, ev.TERMINATE)
    assert {e.ack for e in terms} == (set(range(first_loss + 2, boot_start))
                                      | set(range(boot_start + new_cwnd, last_regular + 1)))
    # after recovery the epoch runs in congestion avoidance from newCwnd
    after = [e for e in _server(log, ev.CONTINUE) if e.tcp_base == last_regular + 1]
    assert after and after[0].pkt == last_regular + 1 + new_cwnd
    assert all(e.ssthresh == new_cwnd for e in after)
    client_end = [e for e in log.of(ev.RECOVERY_END) if e.side == "client"]
    assert len(client_end) == 1 and client_end[0].pkt == last_regular + 1


def test_timeout_restarts_with_slowstart() -> None:
    # lose a whole flight (and everything for a while): no packet left to clock recovery
    r, log = _run(600_000, list(range(30, 80)))
    timeouts = [e for e in log.of(ev.TIMEOUT) if e.side == "client"]
    assert timeouts, "the client's RTO fired"
    assert r.timeouts == len(timeouts) >= 1
    slow = _server(log, ev.SLOWSTART)
    assert slow, "a SLOWSTART request reached the server"
    first = slow[0]
    right = timeouts[0].detail["right"]
    initial = [e for e in _server(log, ev.INITIAL) if e.ack == first.ack and e.t == first.t]
    assert [e.pkt for e in initial] == [right + 1, right + 2], "two packets from right + 1"
    c0, s = ServerConfig().initial_cwnd, ServerConfig().initial_ssthresh
    expect_ss = max(cwnd(right, first.tcp_base, c0, s) // 2, 2)
    for e in initial:
        assert e.tcp_base == right + 1
        assert e.ssthresh == expect_ss == first.detail["new_ssthresh"]
        assert e.cwnd == 2


def test_rto_backs_off_when_nothing_gets_through() -> None:
    r = simulate_transfer(200_000, seed=2, down=LinkConfig(loss_pattern=lambda i: i >= 10))
    assert not r.ok and r.phase == "failed"
    assert r.timeouts >= 5


def test_capped_rto_waits_for_a_fresh_slowstart_bucket() -> None:
    """The server takes one SLOWSTART per continuation per age bucket (core.replay): buckets
    double up to 12.8 s, then are 6.4 s wide. RTOs capped at 2 s would land two or three
    SLOWSTARTs in one bucket, and the server would refuse all but the first as replays: wasted
    timeouts, and after 15 of them a failed connection. The client waits for the next bucket."""
    from trickles_kit.core.client import ClientConfig

    log = EventLog()
    r = simulate_transfer(300_000, seed=1, down=LinkConfig(loss_pattern=range(30, 80), **FAST),
                          up=LinkConfig(**FAST), on_event=log,
                          client_config=ClientConfig(initial_rto=0.5, max_rto=2.0))
    assert r.ok, r.as_dict(brief=True)
    assert not [e for e in log.events if e.side == "server" and e.kind == ev.REPLAY_DROP]
    assert r.client["slowstart_deferred"] > 0
    times = [e.t for e in log.of(ev.TIMEOUT) if e.side == "client"]
    assert len(times) == r.timeouts >= 8
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) > 2.0  # waited past max_rto for a new bucket
