"""core.admission and core.pairing on their own: the order of the checks, the reasons, pairing."""

from __future__ import annotations

from trickles_kit.core import events as ev
from trickles_kit.core import plan as pl
from trickles_kit.core.admission import (
    Reason,
    View,
    admit,
    event_kind,
    frame_reason,
    plan_reason,
    replay_key,
)
from trickles_kit.core.pairing import Pairing, Pending, request_key, response_key
from trickles_kit.core.server import ServerConfig
from trickles_kit.wire.continuation import FULL1, Continuation
from trickles_kit.wire.messages import REQ_FIN, REQ_NORMAL, REQ_SLOWSTART, REQ_SYN

CFG = ServerConfig()
NOW = 1000.0


def cont(**kw) -> Continuation:
    base = dict(type=FULL1, seq=10, timestamp=int(NOW * 1000) - 50, start_cwnd=3, ssthresh=64,
                tcp_base=1, conn_id=7, key_epoch=1, mac=bytes(range(16)))
    return Continuation(**{**base, **kw})


class Recorder:
    """A View whose hooks answer as told and record the order they were asked in."""

    def __init__(self, epoch=True, mac=True, nonce_ok=True, seen=None) -> None:
        self.calls: list[str] = []
        self.answers = (epoch, mac, nonce_ok, seen)
        self.view = View(self.epoch_ok, self.mac_ok, self.summary, self.seen)

    def epoch_ok(self, epoch, now):
        self.calls.append("epoch")
        return self.answers[0]

    def mac_ok(self, c, token):
        self.calls.append("mac")
        return self.answers[1]

    def summary(self, cid, base, left, right):
        self.calls.append("nonce")
        return 99 if self.answers[2] else 98

    def seen(self, key, now, sealed, token):
        self.calls.append("seen")
        return self.answers[3]


def test_checks_run_in_the_server_order_and_stop_at_the_first_refusal() -> None:
    sacks = [(1, 10, 99)]
    r = Recorder()
    v = admit(REQ_NORMAL, cont(), sacks, NOW, CFG, r.view)
    assert v.ok and r.calls == ["epoch", "mac", "nonce", "seen"] and v.plan is not None
    assert v.blocks == [(1, 10)] and v.key == replay_key(cont().mac, REQ_NORMAL, 50, 0.1)
    for hooks, reason, calls in [
        (dict(epoch=False, mac=False), Reason.KEY_EPOCH, ["epoch"]),
        (dict(mac=False), Reason.MAC, ["epoch", "mac"]),
        (dict(nonce_ok=False), Reason.NONCE, ["epoch", "mac", "nonce"]),
        (dict(seen=Reason.REPLAY), Reason.REPLAY, ["epoch", "mac", "nonce", "seen"]),
    ]:
        r = Recorder(**hooks)
        v = admit(REQ_NORMAL, cont(), sacks, NOW, CFG, r.view)
        assert (v.reason, r.calls) == (reason, calls)
    # sealed fields beyond the engine's limits: refused after the MAC, before the clock
    v = admit(REQ_NORMAL, cont(start_cwnd=0, timestamp=0), sacks, NOW, CFG, Recorder().view)
    assert v.reason is Reason.BAD_CONT
    v = admit(REQ_NORMAL, cont(timestamp=0), sacks, NOW, CFG, Recorder().view)
    assert v.reason is Reason.STALE and v.kind == ev.STALE_DROP
    v = admit(REQ_NORMAL, cont(timestamp=int(NOW * 1000) + 60_000), sacks, NOW, CFG, View())
    assert v.reason is None  # no MAC verdict: an unauthenticated timestamp is not judged
    v = admit(REQ_NORMAL, cont(), [(1, 11, 99)], NOW, CFG, Recorder().view)
    assert v.reason is Reason.SACK_SHAPE  # a block past k
    v = admit(REQ_NORMAL, cont(), [(1, 10, 99)] * 9, NOW, CFG, Recorder().view)
    assert v.reason is Reason.SACK_COUNT
    v = admit(REQ_SLOWSTART, cont(), [], NOW, CFG, Recorder().view)
    assert v.reason is Reason.EARLY_SLOWSTART  # 50 ms old: younger than a minimum RTO
    v = admit(REQ_FIN, cont(), [], NOW, CFG, Recorder().view)
    assert v.ok and v.plan is None


def test_reasons_are_the_engine_strings() -> None:
    assert frame_reason(True, REQ_NORMAL) == "syn_type" and frame_reason(False, REQ_SYN) == \
        "syn_flag"
    assert frame_reason(True, REQ_SYN) is None and frame_reason(False, REQ_FIN) is None
    assert Reason.of("decode.truncated") == "decode.truncated"  # open-ended: stays a string
    for k, base, c0, ss, blocks in [(0, 5, 3, 64, []), (200, 1, 3, 64, [(1, 20)])]:
        p = pl.plan_request(k, base, c0, ss, 0, blocks)
        assert p.verdict == "reject" and isinstance(plan_reason(p), Reason), p
    assert {event_kind(r) for r in Reason} == {ev.DROP, ev.MAC_FAIL, ev.STALE_DROP,
                                               ev.NONCE_FAIL, ev.REPLAY_DROP}
    # SLOWSTART and FIN retries are told apart by age bucket, NORMAL ones are not
    mac = bytes(16)
    assert replay_key(mac, REQ_FIN, 150, 0.1) != replay_key(mac, REQ_FIN, 450, 0.1)
    assert replay_key(mac, REQ_NORMAL, 150, 0.1) == replay_key(mac, REQ_NORMAL, 450, 0.1)


def test_pairing_takes_the_latest_earlier_request_with_a_free_slot() -> None:
    plan = pl.plan_request(3, 1, 3, 64, 0, [(1, 3)])
    pkts = [s.pkt for s in plan.slots]
    pairing = Pairing()
    old, new = (Pending(f"r{i}", i, 3, False, False, plan) for i in (0, 5))
    bad = Pending("bad", 6, 3, False, True, plan)
    for p in (old, new, bad):
        pairing.add(p, "c", 1, "s", 80, 1, 2, 3)
    assert request_key("c", 1, "s", 80, 3, 1, 2, 3) == response_key("s", 80, "c", 1, 3, 1, 2, 3)
    resp = ("s", 80, "c", 1, 3, 1, 2, 3)  # what a response carries back
    assert pairing.answer(*resp, 7, pkts[0], 0, False) == (new, 0, None)
    assert pairing.answer(*resp, 7, pkts[0], 0, False) == (old, 0, None)
    hit = pairing.answer(*resp, 8, pkts[0], 0, False)
    assert hit == (bad, 0, None)  # the MAC-failed one only when no other fits
    assert pairing.answer(*resp, 9, pkts[0], 0, False) == (None, -1, "duplicate_response")
    assert pairing.answer(*resp, 4, pkts[1], 0, False)[2] == "position_mismatch"
    assert pairing.answer("s", 80, "c", 1, 3, 9, 9, 9, 1, 1, 0, False) == (
        None, -1, "orphan_response")  # other client-owned fields: another request's answer
    fin = Pending("fin", 10, 12, True, False, None)
    pairing.add(fin, "c", 1, "s", 80, 1, 2, 3)
    assert pairing.answer("s", 80, "c", 1, 12, 1, 2, 3, 11, 12, 0, True) == (fin, 0, None)
    pairing.add_syn("c", 1, "s", 80, "syn")
    assert pairing.answer_syn("s", 80, "c", 1) == "syn" and pairing.answer_syn("s", 80, "c", 1) \
        is None
