"""`trickles demo` shows a loss and its recovery in every run, on every transport.

With random loss a short transfer was loss-free now and then (no recovery, no terminations in
the report). The demo's defaults now name the lost requests (`--drop-at 30`, and `--loss` drawn
from `--seed`), so each of 10 runs per transport must show splits before the first
retransmission, a recovery, terminations after it, and deliver every byte. The runs go through
`labs.demo.run_tour` with the CLI parser's own defaults (as `trickles demo` does, without
rendering the HTML report, which tests/labs/test_demo.py covers) and a small size.

Raw sockets need root or CAP_NET_RAW: without them the raw case skips (fails under CI=true).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import pytest

from trickles_kit.apps.generated import generated_sha256
from trickles_kit.cli import demo as cli_demo
from trickles_kit.core.events import Event
from trickles_kit.labs import demo
from trickles_kit.net.faults import TOUR_DROP_AT, tour_drops
from trickles_kit.net.privileges import can_open_raw_socket, can_open_udp_socket

RUNS = 10
SIZE = 150_000  # 104 packets: small, yet past request 30 (the default drop needs ~90 KB)
IN_CI = os.environ.get("CI") == "true"


def demo_defaults() -> argparse.Namespace:
    """`trickles demo`'s own defaults (loss, seed, drop_at), read from its parser."""
    parser = argparse.ArgumentParser(prog="trickles")
    cli_demo.add_demo_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["demo"])


def need_transport(transport: str) -> None:
    """Skip (fail under CI=true) when this process may not use `transport`."""
    probe: dict[str, Callable[[], tuple[bool, str]]] = {
        "raw": can_open_raw_socket, "udp": can_open_udp_socket}
    if transport not in probe:
        return
    ok, why = probe[transport]()
    if ok:
        return
    msg = (f"{transport} sockets are not available here ({why}); raw sockets need root or "
           "CAP_NET_RAW: run pytest with sudo, or `sudo setcap cap_net_raw+ep "
           "$(readlink -f .venv/bin/python)`")
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def first(events: list[Event], kind: str) -> int:
    return next((i for i, e in enumerate(events) if e.kind == kind), -1)


def byte_exact(fetch: dict, size: int, seed: int) -> bool:
    want = generated_sha256(size, seed)
    got = fetch.get("sha256", fetch.get("sha256_received"))
    return bool(fetch.get("ok")) and fetch.get("bytes") == size and got == want


@pytest.mark.parametrize("transport", ["raw", "udp", "sim"])
def test_every_demo_run_shows_loss_recovery_splits_terminations(transport: str) -> None:
    need_transport(transport)
    d = demo_defaults()
    assert d.loss > 0 and tour_drops(d.loss, d.drop_at), "trickles demo must drop a request"
    rows = []
    for i in range(RUNS):
        run = demo.run_tour(size=SIZE, transport=transport, loss=d.loss, seed=d.seed,
                            drop_at=d.drop_at)
        run.cleanup()
        c = run.counts()
        rows.append({k: c.get(k, 0) for k in ("retransmit", "recovery_start", "bootstrap",
                                               "split", "terminate", "timeout")})
        where = f"run {i + 1}/{RUNS} over {transport}: {rows[-1]}"
        assert run.transport == transport and run.banner is None, (where, run.banner)
        assert run.ok and byte_exact(run.result.fetch, SIZE, d.seed), (where, run.result.fetch)
        server = [e for e in run.events if e.side == "server"]  # in the server's own order
        rtx, rec = first(server, "retransmit"), first(server, "recovery_start")
        assert rtx >= 0 and rec >= 0, f"no loss recovered: {where}"
        assert 0 <= first(server, "split") < rtx, f"no split before the loss: {where}"
        assert any(e.kind == "terminate" for e in server[rec:]), f"no termination: {where}"
    print(f"\ntrickles demo defaults ({d.loss=}, {d.seed=}, {d.drop_at=}), {SIZE} bytes over "
          f"{transport}:", *rows, sep="\n  ")


# ---------------------------------------------------------------------- the drop pattern
def seg(src_port: int, syn: bool = False, dst_port: int = 8080) -> bytes:
    """Just enough of a segment for the pattern: ports and the flags byte."""
    flags = 0x02 if syn else 0x10
    return (src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big") + bytes(9)
            + bytes([flags]) + bytes(6))


def test_drop_pattern_counts_each_connection_from_its_syn() -> None:
    from trickles_kit.net.faults import DropPattern

    p = DropPattern((0, 2))
    a, b = b"\x7f\x00\x00\x02", b"\x7f\x00\x00\x03"
    assert p(seg(1000, syn=True), a) is False  # SYNs are never dropped
    assert [p(seg(1000), a) for _ in range(4)] == [True, False, True, False]
    assert p(seg(1000, syn=True), b) is False  # another client: its own count
    assert [p(seg(1000), b) for _ in range(3)] == [True, False, True]
    assert p(seg(1000, syn=True), a) is False  # a new connection restarts the count
    assert p(seg(1000), a) is True
    assert p.dropped == [0, 2, 0, 2, 0]


def test_seeded_loss_drops_the_same_indices_every_time() -> None:
    from trickles_kit.net.faults import DropPattern

    def lost(seed: int) -> list[int]:
        p = DropPattern(loss=0.1, seed=seed)
        p(seg(1, syn=True), b"\x01\x02\x03\x04")
        return [i for i in range(500) if p(seg(1), b"\x01\x02\x03\x04")]

    assert lost(7) == lost(7) and 25 < len(lost(7)) < 75
    assert lost(7) != lost(8)
    with pytest.raises(ValueError):
        DropPattern(loss=0.1)  # unseeded loss would differ per run: LossyTransport's job


def test_lossy_transport_pattern_and_the_old_random_drop() -> None:
    from trickles_kit.net.faults import LossyTransport

    class Fake:
        def __init__(self, batch: list) -> None:
            self.batch = batch

        def recv_batch(self, limit: int = 256) -> list:
            return self.batch

    ip = b"\x7f\x00\x00\x02"
    batch = [(seg(5, syn=True), ip, None)] + [(seg(5), ip, None) for _ in range(5)]
    batch.append((seg(5, dst_port=9999), ip, None))  # another service on the address
    t = LossyTransport(Fake(batch), 0.0, drop_at=(1, 3), port=8080)  # type: ignore[arg-type]
    kept = t.recv_batch()
    assert len(kept) == 5 and t.dropped == 2 and t.pattern.dropped == [1, 3]
    # no seed, no indices: each datagram dropped at random, as `serve --drop P` always did
    many = [(seg(5), ip, None)] * 4000
    r = LossyTransport(Fake(many), 0.5)  # type: ignore[arg-type]
    assert 1600 < len(r.recv_batch()) < 2400 and not r.pattern


def test_the_tour_drop_comes_with_loss_only(tmp_path) -> None:
    """Loss > 0 promises a loss (request 30); loss 0 stays a clean run; explicit wins."""
    from trickles_kit.labs.session import LiveSession

    assert tour_drops(0.01) == TOUR_DROP_AT and tour_drops(0.0) == ()
    assert tour_drops(0.0, [40, 12, 40]) == (12, 40) and tour_drops(0.05, ()) == ()
    assert LiveSession(loss=0.0, transport="sim", workdir=str(tmp_path)).drop_at == ()
    assert LiveSession(loss=0.01, transport="sim", workdir=str(tmp_path)).drop_at == (30,)


def test_parse_indices() -> None:
    from trickles_kit.net.faults import parse_indices

    assert parse_indices("30, 90,30") == (30, 90) and parse_indices("") == ()
    with pytest.raises(ValueError):
        parse_indices("30,-1")


def test_sim_drop_at_alone_guarantees_a_recovery() -> None:
    """Without random loss the simulator loses nothing; request 30 dropped, it recovers."""
    from trickles_kit.apps.sim import simulate_transfer
    from trickles_kit.net.faults import DropPattern

    for seed in range(1, 6):
        clean = simulate_transfer(SIZE, 0.0, seed)
        r = simulate_transfer(SIZE, 0.0, seed, server_drop=DropPattern((30,)))
        assert clean.ok and clean.retransmissions == 0
        assert r.ok and r.links["server_dropped"] == 1
        assert r.retransmissions >= 1 and r.recoveries >= 1 and r.terminations >= 1
