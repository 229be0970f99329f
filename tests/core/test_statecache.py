"""The verified-continuation cache: safe hits, full checks on misses, bounded, and invisible.

The simulator subset at the bottom runs with the cache on (the rest of the suite runs with the
default, off), so CI exercises both; `TRICKLES_STATE_CACHE=1 pytest tests/apps/test_transfers.py
tests/core/test_scenarios.py` runs everything with it on.
"""

from __future__ import annotations

import socket

import pytest

from trickles_kit.apps.generated import Generated, gen_request
from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.core import statecache
from trickles_kit.core.client import ClientEngine
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.core.statecache import StateCache, cache_key
from trickles_kit.testing.scenario import run_scenario, scenario_paths
from trickles_kit.wire.segment import decode_segment, encode_segment

SIP = socket.inet_aton("10.0.0.1")
CIP = socket.inet_aton("10.1.0.9")
OTHER = socket.inet_aton("10.1.0.10")
SECRET = bytes(range(32))


def server(entries: int = 64, **kw) -> ServerEngine:
    gen = Generated()
    srv = ServerEngine(SECRET, gen, SIP, 80, ServerConfig(state_cache=entries, **kw))
    gen.attach(srv)
    return srv


def first_request(srv: ServerEngine, port: int = 40000, now: float = 1.0) -> bytes:
    """A valid NORMAL request segment (the first after the handshake) for `srv`."""
    cl = ClientEngine(CIP, port, SIP, 80, isn=port)
    cl.connect(now, gen_request(1_000_000, 1))
    (syn,) = cl.datagrams_to_send()
    for out in srv.receive(syn, CIP, now):
        cl.receive(out, now + 0.01)
    reqs = cl.datagrams_to_send()
    assert reqs
    return reqs[0]


def retarget(seg: bytes, src: bytes, change) -> bytes:
    """`seg` with its payload changed by `change(bytearray)`, re-checksummed for `src`."""
    d = decode_segment(seg, CIP, SIP)
    payload = bytearray(d.payload)
    change(payload)
    return encode_segment(src, SIP, d.src_port, d.dst_port, d.seq, d.ack, d.flags,
                          bytes(payload), d.trickles_len, d.window)


# ---------------------------------------------------------------------- the cache itself
def test_lru_is_bounded_and_counts() -> None:
    c = StateCache(3)
    for k in (b"a", b"b", b"c"):
        c.add(k)
    assert c.lookup(b"a")  # refreshes a
    c.add(b"d")  # evicts b, the least recently used
    assert b"b" not in c and b"a" in c and len(c) == 3
    assert not c.lookup(b"b")
    st = c.stats()
    assert (st["hits"], st["misses"], st["evictions"]) == (1, 1, 1)
    with pytest.raises(ValueError):
        StateCache(0)


def test_key_is_the_mac_covered_bytes_and_the_mac() -> None:
    raw = bytes(range(75))
    pseudo = b"P" * 12
    key = cache_key(pseudo, raw)
    assert key == pseudo + raw[:6] + raw[18:]
    changed = bytearray(raw)
    changed[10] ^= 1  # a client-owned field: outside the MAC, outside the key
    assert cache_key(pseudo, bytes(changed)) == key
    for i in [*range(6), *range(18, 75)]:
        t = bytearray(raw)
        t[i] ^= 1
        assert cache_key(pseudo, bytes(t)) != key, i


@pytest.fixture
def default_off(monkeypatch):
    """The default cache size as the package starts (off), restored after the test."""
    monkeypatch.setattr(statecache, "_default", 0)


def test_the_package_reads_no_environment(default_off, monkeypatch) -> None:
    monkeypatch.setenv("TRICKLES_STATE_CACHE", "77")
    assert statecache.default_entries() == 0 and ServerConfig().state_cache == 0
    statecache.set_default_entries(77)
    assert ServerEngine(SECRET, Generated(), SIP, 80).state_cache.entries == 77
    with pytest.raises(ValueError):
        statecache.set_default_entries(-1)


def test_entry_count_text() -> None:
    assert statecache.entries_from_text("") == statecache.entries_from_text(" 0 ") == 0
    assert statecache.entries_from_text("1") == statecache.DEFAULT_ENTRIES
    assert statecache.entries_from_text("77") == 77
    for bad in ("lots", "-3"):
        with pytest.raises(ValueError, match="TRICKLES_STATE_CACHE"):
            statecache.entries_from_text(bad)


def test_the_command_line_reads_the_environment(default_off, monkeypatch, capsys) -> None:
    from trickles_kit.cli import main

    monkeypatch.setenv("TRICKLES_STATE_CACHE", "1")
    assert main(["sim", "--size", "20000"]) == 0
    assert ServerConfig().state_cache == statecache.DEFAULT_ENTRIES
    monkeypatch.setenv("TRICKLES_STATE_CACHE", "lots")
    assert main(["sim", "--size", "20000"]) == 2
    assert "TRICKLES_STATE_CACHE must be an entry count" in capsys.readouterr().err


# ---------------------------------------------------------------------- in the engine
def test_off_means_no_cache() -> None:
    srv = server(0)
    srv.receive(first_request(srv), CIP, 1.02)
    assert srv.state_cache is None and srv.counters["tx"] > 1


def test_replay_hits_the_cache_and_is_still_dropped() -> None:
    srv = server()
    req = first_request(srv)
    assert srv.receive(req, CIP, 1.02)
    assert srv.receive(req, CIP, 1.03) == []
    assert srv.state_cache.hits == 1
    assert srv.counters["drop.replay"] == 1 and srv.counters["drop.mac"] == 0


def test_a_tampered_continuation_never_hits() -> None:
    srv = server()
    req = first_request(srv)
    srv.receive(req, CIP, 1.02)
    # payload: request type (1 byte), then the continuation: flip bits across every field
    # the MAC covers, the MAC itself included; none hits, each is dropped (the type byte by
    # the decoder, the key epoch as an unknown epoch, every other one as a MAC failure)
    drops = srv.counters["drop"]
    for off in (1, 2, 19, 28, 36, 40, 44, 48, 56, 60, 70):
        bad = retarget(req, CIP, lambda p, off=off: p.__setitem__(off, p[off] ^ 0x01))
        assert srv.receive(bad, CIP, 1.03) == []
    assert srv.state_cache.hits == 0
    assert srv.counters["drop"] - drops == 11
    assert srv.counters["drop.mac"] == 9 and srv.counters["drop.key_epoch"] == 1


def test_another_client_address_misses() -> None:
    srv = server()
    req = first_request(srv)
    srv.receive(req, CIP, 1.02)
    moved = retarget(req, OTHER, lambda p: None)
    assert srv.receive(moved, OTHER, 1.03) == []
    assert srv.state_cache.hits == 0 and srv.counters["drop.mac"] == 1


def test_epoch_expiry_and_freshness_still_apply_to_cached_continuations() -> None:
    srv = server(epoch_seconds=10.0, freshness=5.0)
    req = first_request(srv)
    srv.receive(req, CIP, 1.02)
    assert srv.receive(req, CIP, 7.0) == []  # still cached, but stale
    assert srv.counters["drop.stale"] == 1
    assert srv.receive(req, CIP, 25.0) == []  # two epochs later: refused before the lookup
    assert srv.counters["drop.key_epoch"] == 1
    assert srv.counters["drop.replay"] == 0


def test_memory_stays_bounded_whatever_the_connections() -> None:
    srv = server(entries=50)
    now = 1.0
    for port in range(40000, 40400):
        srv.receive(first_request(srv, port, now), CIP, now + 0.02)
        now += 0.001
    assert len(srv.state_cache) == 50
    assert srv.state_cache.evictions > 300


# ---------------------------------------------------------------------- invisible
CONDITIONS = {
    "loss5": {"loss": 0.05},
    "reorder_dup": {"down": LinkConfig(reorder=0.2, duplicate=0.1),
                    "up": LinkConfig(reorder=0.2, duplicate=0.1)},
    "burst": {"down": LinkConfig(loss_pattern=range(60, 90))},
}


@pytest.mark.parametrize("cond", list(CONDITIONS))
def test_transfers_identical_with_the_cache_on(cond: str) -> None:
    """Same seed, cache off then on: byte-exact, and the very same run (the cache changes no
    decision, only whether the MAC is recomputed)."""
    for seed in (1, 2):
        off = simulate_transfer(400_000, seed=seed, server_config=ServerConfig(state_cache=0),
                                **CONDITIONS[cond])
        on = simulate_transfer(400_000, seed=seed, server_config=ServerConfig(state_cache=256),
                               **CONDITIONS[cond])
        assert off.ok and on.ok
        assert on.as_dict(brief=True) == off.as_dict(brief=True)
        assert on.server == off.server


def test_duplicates_give_hits() -> None:
    srv_cfg = ServerConfig(state_cache=256)
    r = simulate_transfer(300_000, seed=3, server_config=srv_cfg,
                          up=LinkConfig(duplicate=0.3), down=LinkConfig())
    assert r.ok and r.server["drop.replay"] > 0


@pytest.mark.parametrize("path", scenario_paths(), ids=lambda p: p.name)
def test_scenarios_pass_with_the_cache_on(path, monkeypatch) -> None:
    monkeypatch.setattr(statecache, "_default", statecache.DEFAULT_ENTRIES)
    result = run_scenario(path.read_text(encoding="utf-8"), path.name)
    assert result.passed, result.report()


def test_lab_cache_compare_and_checks() -> None:
    from trickles_kit.labs.optimizations import cache_compare, checks

    r = cache_compare(size=120_000, duplicate=0.3, seed=2)
    assert r["off"]["ok"] and r["on"]["ok"] and r["off"]["cache"] is None
    hits = r["on"]["cache"]["hits"]
    assert hits == r["on"]["replay_drops"] > 0  # every hit was a duplicate, still dropped
    assert checks.check_cache_hits(hits, r).startswith("OK")
    assert checks.check_cache_hits(None, r).startswith("Not yet")
    assert checks.check_cache_hits(hits + 1, r).startswith("Not yet")
    dyn = {"skipped_bytes": 10, "stream_bytes": 30}
    assert checks.check_skipped(10, dyn).startswith("OK")
    assert checks.check_skipped(11, dyn).startswith("Not yet")
    par = {"parallel_s": 1.0, "sequential_s": 2.0, "requests": 8}
    assert checks.check_faster("parallel", par).startswith("OK")
    assert checks.check_faster("sequential", par).startswith("Not yet")
