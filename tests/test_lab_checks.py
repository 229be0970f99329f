"""The notebooks' self-check helpers: right answers pass, wrong ones get a hint, nothing raises."""

from __future__ import annotations

import functools

import pytest

from trickles_kit.core.cc import cwnd
from trickles_kit.labs import checks


def ok(verdict: str) -> bool:
    assert isinstance(verdict, str) and verdict.startswith(("OK", "Not yet")), verdict
    return verdict.startswith("OK")


def test_check_cwnd_accepts_the_closed_form_in_both_shapes() -> None:
    assert ok(checks.check_cwnd(lambda n: cwnd(n, 1, 3, 8)))
    assert ok(checks.check_cwnd(cwnd))


def xor_summary(p, left, right):
    return functools.reduce(lambda a, b: a ^ b, (p[j] for j in range(left, right + 1)))


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("fn, words", [
    (lambda n: n, "expected 3"),
    (lambda n: 3 + max(n - 1, 0), "congestion avoidance"),  # slow start forever
    (stub, "NotImplementedError"),
    (lambda a, b: 1, "takes 2 arguments"),
    (42, "pass your function"),
])
def test_check_cwnd_explains_what_is_wrong(fn, words) -> None:
    v = checks.check_cwnd(fn)
    assert not ok(v) and words in v


def test_split_count_and_its_check() -> None:
    assert checks.split_count(1, 3, 8, 1, 40) == 8
    # slow start: every ack splits but the first (cwnd(TCPBase) = startCwnd = cwnd(TCPBase - 1))
    assert checks.split_count(1, 3, 16383, 1, 10) == 9
    assert ok(checks.check_split_count(8))
    assert "too few" in checks.check_split_count(7)
    assert not ok(checks.check_split_count("eight"))
    events = [{"kind": "split"}, {"kind": "continue"}, {"kind": "split"}]
    assert ok(checks.check_split_count(2, events=events))
    assert not ok(checks.check_split_count(1, tcp_base=5, first_ack=1))  # bad range: no raise


def test_recovery_plan_matches_the_recovery_scenario() -> None:
    plan = checks.recovery_plan(1, 3, 16383, 4)  # scenarios/recovery.txt
    assert plan == {"new_cwnd": 3, "last_regular": 8, "tcp_base": 9,
                    "bootstrap_acks": [6, 7, 8], "terminate_acks": []}
    big = checks.recovery_plan(1, 3, 16383, 10)  # the exercise of notebook 04
    assert big == {"new_cwnd": 6, "last_regular": 20, "tcp_base": 21,
                   "bootstrap_acks": [15, 16, 17, 18, 19, 20], "terminate_acks": [12, 13, 14]}


def test_check_recovery_answer() -> None:
    assert ok(checks.check_recovery_answer({"new_cwnd": 3, "tcp_base": 9}))
    assert ok(checks.check_recovery_answer(
        {"new_cwnd": 6, "last_regular": 20, "tcp_base": 21, "bootstrap_acks": range(15, 21),
         "terminate_acks": [14, 13, 12]}, first_loss=10))
    v = checks.check_recovery_answer({"new_cwnd": 2, "tcp_base": 9})
    assert not ok(v) and "right: tcp_base" in v and "new_cwnd:" in v
    assert not ok(checks.check_recovery_answer({"new_cwnd": None, "bootstrap_acks": [None]}))
    assert "unknown key" in checks.check_recovery_answer({"cwnd": 3})
    assert not ok(checks.check_recovery_answer([3]))


def test_check_block_summary() -> None:
    assert ok(checks.check_block_summary(xor_summary))
    assert not ok(checks.check_block_summary(lambda p, left, right: p[left]))
    assert "raised" in checks.check_block_summary(stub)


def test_check_mac_fields() -> None:
    assert ok(checks.check_mac_fields(checks.MAC_COVERED))
    assert ok(checks.check_mac_fields(" ".join(checks.MAC_COVERED | {"mac"})))
    v = checks.check_mac_fields(checks.MAC_COVERED | {"parent"})
    assert not ok(v) and "client-owned" in v
    assert "not continuation fields" in checks.check_mac_fields({"cwnd"})
    assert not ok(checks.check_mac_fields(None))


def test_check_transports_and_initial_window(monkeypatch) -> None:
    from trickles_kit import doctor

    monkeypatch.setattr(doctor, "core_ready", lambda c: (True, ["udp"]))
    assert ok(checks.check_transports({"udp", "sim"}))
    v = checks.check_transports({"raw", "udp", "sim"})
    assert not ok(v) and "['raw'] cannot be used" in v
    assert "1 more" in checks.check_transports(["udp"])
    assert "unknown transport" in checks.check_transports({"tcp"})
    assert ok(checks.check_initial_window(3))
    assert ok(checks.check_initial_window(2, [{"kind": "initial"}] * 2))
    assert not ok(checks.check_initial_window(True))
    # burst_timeout restarts with SLOWSTART ('initial' packets too): only the handshake counts
    burst = checks.reference_capture("burst_timeout").events
    assert sum(e.kind == "initial" for e in burst) > 3
    assert ok(checks.check_initial_window(3, burst))


def test_capture_counts_come_from_the_reference_captures() -> None:
    assert checks.capture_count("one_loss", "retransmit") == 1
    assert checks.capture_count("hide_loss", "nonce_fail") == 1
    assert ok(checks.check_capture_count("replay", "replay_drop",
                                         checks.capture_count("replay", "replay_drop")))
    assert "too many" in checks.check_capture_count("one_loss", "retransmit", 5)
    assert "could not decode" in checks.check_capture_count("no_such_capture", "split", 1)
    assert checks.reference_secret("no_such_capture") is None
