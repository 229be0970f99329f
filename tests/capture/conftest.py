"""Captures the capture tests share: a lossy simulated run and one with delta continuations
(each made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trickles_kit.apps.sim import LinkConfig, simulate_transfer


@pytest.fixture(scope="session")
def lossy(tmp_path_factory) -> tuple[Path, bytes]:
    """A lossy bulk run (~7,000 packets: the vector pass's batches of thousands)."""
    secret = bytes(range(32))
    path = tmp_path_factory.mktemp("col") / "lossy.pcap"
    r = simulate_transfer(5_000_000, seed=5, pcap=str(path), secret=secret,
                          down=LinkConfig(rate=None, loss=0.01), up=LinkConfig(rate=None,
                                                                               loss=0.01))
    assert r.ok
    return path, secret


@pytest.fixture(scope="session")
def delta(tmp_path_factory) -> tuple[Path, bytes]:
    """A lossy run whose requests carry delta-encoded continuations (pairs, COMPACT)."""
    from trickles_kit.labs.compression import configs

    secret = bytes(range(32))
    sc, cc = configs("both")
    path = tmp_path_factory.mktemp("col") / "delta.pcap"
    r = simulate_transfer(1_000_000, 0.02, 3, server_config=sc, client_config=cc,
                          pcap=str(path), secret=secret)
    assert r.ok
    return path, secret

