"""One set of protocol parameters (core.params) for the server and the client configs."""

from __future__ import annotations

import dataclasses

import pytest

from trickles_kit.apps.sim import simulate_transfer
from trickles_kit.core.client_config import ClientConfig
from trickles_kit.core.params import DEFAULT_PARAMS, ProtocolParams
from trickles_kit.core.server import ServerConfig


def test_both_configs_default_to_the_same_params() -> None:
    s, c = ServerConfig(), ClientConfig()
    assert s.params == c.params == DEFAULT_PARAMS
    assert (s.mss, s.max_gap, s.slowstart_bucket) == (c.mss, c.max_gap, c.slowstart_bucket)


def test_params_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_PARAMS.mss = 536  # type: ignore[misc]


def test_old_keywords_still_work_and_set_params() -> None:
    s = ServerConfig(mss=536, max_gap=7, slowstart_bucket=0.05)
    assert s.params == ProtocolParams(mss=536, max_gap=7, slowstart_bucket=0.05)
    assert (s.mss, s.max_gap, s.slowstart_bucket) == (536, 7, 0.05)
    c = ClientConfig(params=ProtocolParams(mss=536), mss=600)  # a keyword overrides params
    assert c.mss == 600 and c.params.mss == 600


def test_params_field_feeds_the_flat_fields() -> None:
    p = ProtocolParams(mss=1000, max_gap=5, slowstart_bucket=0.2)
    for cfg in (ServerConfig(params=p), ClientConfig(params=p)):
        assert (cfg.mss, cfg.max_gap, cfg.slowstart_bucket) == (1000, 5, 0.2)
    assert dataclasses.replace(ServerConfig(params=p)).params == p


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="mss"):
        ServerConfig(mss=10)
    with pytest.raises(ValueError, match="slowstart_bucket"):
        ClientConfig(slowstart_bucket=0)


def test_a_matched_pair_transfers() -> None:
    p = ProtocolParams(mss=536)
    r = simulate_transfer(20_000, server_config=ServerConfig(params=p),
                          client_config=ClientConfig(params=p))
    assert r.ok


def test_a_mismatched_pair_fails_clearly() -> None:
    with pytest.raises(ValueError, match=r"mss: server 1448 != client 536"):
        simulate_transfer(20_000, client_config=ClientConfig(mss=536))
