"""The columnar event derivation (`capture.events_columns`) and the rules it vectorises.

One rule, one implementation: the vector path plans requests with `core.cc`'s closed form and
`core.plan`'s normal step and recovery written for arrays; here every request it takes, on
every reference capture and on the lossy and delta runs, is planned again by
`core.admission.plan_of` (after `bad_cont` and `check_sacks`, as the decoder does) and every
slot must agree. And `events_df()` from the event table equals the row decoder's.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")

from trickles_kit.capture import columnar  # noqa: E402
from trickles_kit.capture.decode import decode_pcap  # noqa: E402
from trickles_kit.capture.events_columns import SLOT_KINDS, VectorPlans, vec_cwnd  # noqa: E402
from trickles_kit.capture.parse import default_config  # noqa: E402
from trickles_kit.core.admission import bad_cont, check_sacks, plan_of, replay_key  # noqa: E402
from trickles_kit.core.cc import cwnd  # noqa: E402
from trickles_kit.wire.messages import REQ_FIN, REQ_NORMAL, REQ_SLOWSTART  # noqa: E402

CAPS = Path(__file__).resolve().parents[2] / "captures"
NAMES = sorted(p.stem for p in CAPS.glob("*.pcap"))


def _secret(name: str) -> bytes:
    return bytes.fromhex((CAPS / f"{name}.secret").read_text().strip())


def assert_plans_agree(path) -> tuple[int, int, int]:
    """Every request the vector path takes, planned by `plan_of`: (taken, recoveries,
    unhalved recoveries: a loss in a recovery round's own packets, §7.4)."""
    cfg = default_config()
    cols = columnar.decode_columns(path, events=False).table
    vp = VectorPlans(cols, cfg.max_sacks, cfg.max_gap)
    taken = np.flatnonzero(vp.ok)
    unhalved = 0
    for r in taken.tolist():
        v = {f: cols.value(f, r) for f in ("cont_type", "cont_seq", "tcp_base", "start_cwnd",
                                           "ssthresh", "state", "conn_id", "sacks")}
        k, base, c0, ss = v["cont_seq"], v["tcp_base"], v["start_cwnd"], v["ssthresh"]
        assert not bad_cont(k, base, c0, ss)
        blocks, why = check_sacks(k, base, v["conn_id"], v["sacks"], cfg.max_sacks, None)
        assert why is None
        plan = plan_of(v["cont_type"], k, base, c0, ss, v["state"], blocks, False, cfg.max_gap)
        n = len(plan.slots)
        assert n == vp.nslots[r] and n > 0, (r, plan)
        assert (plan.cwnd, plan.recovery_start) == (vp.cwnd[r], vp.starts[r])
        if vp.rec[r]:
            assert plan.first_loss == vp.loss[r]
            unhalved += c0 == ss and plan.first_loss < base + c0
        got = vp.slots(np.full(n, r), np.arange(n))
        for p, s in enumerate(plan.slots):
            assert SLOT_KINDS[got["kind"][p]] == s.kind
            assert (s.pkt, s.ssthresh, s.tcp_base, s.state) == (
                got["pkt"][p], got["ssthresh"][p], got["tcp_base"][p], got["state"][p]), (r, p)
    return len(taken), int(vp.rec[taken].sum()), unhalved


@pytest.mark.parametrize("name", NAMES)
def test_vector_plans_equal_plan_of_on_reference_captures(name: str) -> None:
    assert_plans_agree(CAPS / f"{name}.pcap")


def test_vector_plans_equal_plan_of_on_lossy_runs(lossy, delta) -> None:
    taken, rec, unhalved = assert_plans_agree(lossy[0])
    assert taken > 1000 and rec > 10 and unhalved > 0  # every shape met, not a vacuous pass
    assert_plans_agree(delta[0])  # (paired FULL2 requests: none taken, the row way)


def test_vec_cwnd_equals_the_closed_form() -> None:
    rnd = random.Random(7)
    cases = []
    for _ in range(4000):
        base = rnd.randrange(0, 1 << 31)
        c0 = rnd.randrange(1, 200)
        ss = c0 + rnd.choice([0, 1, rnd.randrange(0, 5000), rnd.randrange(0, (1 << 20) - c0)])
        n = base - 1 + rnd.choice([0, 1, rnd.randrange(0, 100), rnd.randrange(0, 1 << 30)])
        cases.append((n, base, c0, ss))
    a = np.array(cases, np.int64).T
    assert vec_cwnd(*a).tolist() == [cwnd(*c) for c in cases]


def test_replay_key_low_half_is_the_macs() -> None:
    """`events_columns` finds the answered requests an unanswered one's replay lookup may hit
    by MAC bytes 4..7: the request type's tag must leave the key's low 32 bits alone."""
    rnd = random.Random(3)
    for _ in range(200):
        mac = rnd.randbytes(16)
        for rtype in (REQ_NORMAL, REQ_SLOWSTART, REQ_FIN):
            key = replay_key(mac, rtype, rnd.randrange(0, 1 << 32), 0.5)
            assert key & 0xFFFFFFFF == int.from_bytes(mac[4:8], "big")


def assert_events_df_same(path, secret=None) -> None:
    old = decode_pcap(path, secret, columnar=False)
    new = columnar.decode_columns(path, secret)
    pd.testing.assert_frame_equal(new.events_df(), old.events_df())
    assert new.event_counts() == old.event_counts()
    assert new.verdicts == old.verdicts and new.errors == old.errors


@pytest.mark.parametrize("name", NAMES)
def test_events_df_equals_the_row_decoder_on_reference_captures(name: str) -> None:
    assert_events_df_same(CAPS / f"{name}.pcap")
    assert_events_df_same(CAPS / f"{name}.pcap", _secret(name))


def test_events_df_equals_the_row_decoder_on_lossy_runs(lossy, delta) -> None:
    for path, secret in (lossy, delta):
        assert_events_df_same(path)
        assert_events_df_same(path, secret)


def test_events_are_built_on_demand_and_then_are_the_events(lossy) -> None:
    cap = columnar.decode_columns(lossy[0])
    evs = cap.events
    assert evs is cap.events and len(evs) == len(cap.events_df())
    evs[0].detail["note"] = 1  # an edit shows in the table, as for packets
    assert cap.events_df()["detail"][0]["note"] == 1


def test_a_summary_counts_the_table_without_building_events() -> None:
    """`repr` and `summary()` of a columnar capture give the event count from the table (a
    million-packet capture would otherwise build every `Event` object just to count them)."""
    cap = columnar.decode_columns(CAPS / "one_loss.pcap")
    n = cap.n_events
    assert n > 0 and f"events={n}" in repr(cap) and f"{n} events" in cap.summary()
    assert cap._evlist is None  # nothing built yet
    assert len(cap.events) == n == cap.n_events
