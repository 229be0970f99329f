"""The notebooks' self-check helpers: right answers pass, wrong ones get a hint, nothing raises.

Every check of every notebook (labs.checks, and the `checks` of labs.benchmark, labs.optimizations
and labs.compression) answers in one wording, "OK — " or "Not yet — ", and a "Not yet" hint is a
question or a pointer: it never contains the value the student is asked for.
"""

from __future__ import annotations

import functools
import re

import pytest

from trickles_kit.core.cc import cwnd
from trickles_kit.labs import benchmark, checks, compression, optimizations

VERDICT = re.compile(r"^(OK|Not yet) — \S")


def ok(verdict: str) -> bool:
    assert isinstance(verdict, str) and VERDICT.match(verdict), verdict
    return verdict.startswith("OK — ")


def not_yet_without(verdict: str, *values: object) -> str:
    """Assert a "Not yet" verdict that names none of `values` (as whole numbers or words)."""
    assert not ok(verdict), verdict
    for v in values:
        text = str(v)
        pattern = rf"(?<![\w.]){re.escape(text)}(?![\w])" if text[:1].isalnum() else re.escape(text)
        assert not re.search(pattern, verdict), f"the hint gives {text!r} away: {verdict}"
    return verdict


def test_check_cwnd_accepts_the_closed_form_in_both_shapes() -> None:
    assert ok(checks.check_cwnd(lambda n: cwnd(n, 1, 3, 8)))
    assert ok(checks.check_cwnd(cwnd))


def xor_summary(p, left, right):
    return functools.reduce(lambda a, b: a ^ b, (p[j] for j in range(left, right + 1)))


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("fn, words", [
    (lambda n: n, "ack that opened the epoch"),
    (lambda n: 3 + max(n - 1, 0), "Congestion avoidance"),  # slow start forever
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
                   "bootstrap_acks": [14, 15, 16, 17, 18, 19], "terminate_acks": [12, 13, 20]}


def test_check_recovery_answer() -> None:
    assert ok(checks.check_recovery_answer({"new_cwnd": 3, "tcp_base": 9}))
    assert ok(checks.check_recovery_answer(
        {"new_cwnd": 6, "last_regular": 20, "tcp_base": 21, "bootstrap_acks": range(14, 20),
         "terminate_acks": [20, 13, 12]}, first_loss=10))
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
    assert not ok(v) and "client-owned" in v and "parent" not in v
    assert "not continuation fields" in checks.check_mac_fields({"cwnd"})
    assert not ok(checks.check_mac_fields(None))


def test_check_transports_and_initial_window(monkeypatch) -> None:
    from trickles_kit.net import doctor

    monkeypatch.setattr(doctor, "core_ready", lambda c: (True, ["udp"]))
    assert ok(checks.check_transports({"udp", "sim"}))
    v = checks.check_transports({"raw", "udp", "sim"})
    assert not ok(v) and "1 of yours cannot be used" in v and "raw" not in v
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


# ------------------------------------------------------------------ hints never give it away
def test_cwnd_hints_ask_about_the_phase_never_print_the_window() -> None:
    # n=0 is the ack that opened the epoch (window 3); n=2 is slow start (window 5)
    not_yet_without(checks.check_cwnd(lambda n: 0), cwnd(0, 1, 3, 8))
    v = not_yet_without(checks.check_cwnd(lambda n: cwnd(n, 1, 3, 8) if n < 2 else 0),
                        cwnd(2, 1, 3, 8))
    assert "Slow start" in v and "?" in v


def test_split_count_hint_is_a_question_without_the_count() -> None:
    truth = checks.split_count(1, 3, 8, 1, 40)
    for wrong in (truth - 1, truth + 5):
        v = not_yet_without(checks.check_split_count(wrong), truth)
        assert "?" in v and "telescope" not in v


def test_recovery_hints_are_questions_without_the_plan() -> None:
    plan = checks.recovery_plan(1, 3, 16383, 10)  # notebook 04, exercise 1
    wrong = {"new_cwnd": 0, "last_regular": 0, "tcp_base": 0, "bootstrap_acks": [0],
             "terminate_acks": [0]}
    v = checks.check_recovery_answer(wrong, first_loss=10)
    numbers = {plan["new_cwnd"], plan["last_regular"], plan["tcp_base"],
               *plan["bootstrap_acks"], *plan["terminate_acks"]}
    not_yet_without(v, *sorted(numbers))
    hints = [line for line in v.splitlines() if line.startswith("  ")]
    assert len(hints) == len(wrong) and all("?" in h for h in hints), hints
    assert "//" not in v and "first_loss - 1 +" not in v  # no formula to copy either


def test_block_summary_hint_names_neither_the_expected_summary_nor_the_method() -> None:
    calls: list[tuple[dict, int, int]] = []

    def wrong(p, left, right):
        calls.append((p, left, right))
        return 0

    v = checks.check_block_summary(wrong)
    p, left, right = calls[-1]
    want = functools.reduce(lambda a, b: a ^ b, (p[j] for j in range(left, right + 1)))
    not_yet_without(v, want, f"{want:#010x}", f"{want:#x}", "XOR")
    assert "?" in v


def test_capture_and_initial_window_hints_hide_the_count() -> None:
    truth = checks.capture_count("one_loss", "retransmit")
    not_yet_without(checks.check_capture_count("one_loss", "retransmit", truth + 4), truth)
    not_yet_without(checks.check_initial_window(7), 3)


def test_notebook_06_checks() -> None:
    rates = [4, 4, 1]
    want = benchmark.jain(rates)
    assert ok(benchmark.checks.jain(round(want, 3), rates))
    for wrong in (0.9, "x", None):
        not_yet_without(benchmark.checks.jain(wrong, rates), f"{want:.3f}", f"{want:.2f}")


def test_notebook_08_checks_point_never_tell() -> None:
    ck = optimizations.checks
    cache = {"on": {"cache": {"hits": 27}, "replay_drops": 27}, "off": {"cache": None}}
    assert ok(ck.check_cache_hits(27, cache))
    for wrong in (None, 26, 28, "lots"):
        not_yet_without(ck.check_cache_hits(wrong, cache), 27, "['hits']")
    dyn = {"skipped_bytes": 611_289, "stream_bytes": 1_218_117, "delivered_bytes": 606_828}
    assert ok(ck.check_skipped(611_289, dyn))
    for wrong in (None, 1, 611_290, 2_000_000, "many"):
        not_yet_without(ck.check_skipped(wrong, dyn), 611_289, 1_218_117, 606_828,
                        "stream_bytes - delivered_bytes")
    par = {"parallel_s": 0.281, "sequential_s": 1.187, "requests": 8}
    assert ok(ck.check_faster("parallel", par))
    not_yet_without(ck.check_faster("sequential", par), "parallel", 0.281, 1.187)
    assert not ok(ck.check_faster(None, par)) and not ok(ck.check_faster("both", par))


def test_notebook_09_checks_share_the_wording_and_hide_the_answer() -> None:
    ck = compression.checks
    res = {"modes": {"off": {"total_per_data_packet": 146.0, "requests": 678},
                     "pairs": {"total_per_data_packet": 85.0, "requests": 352},
                     "both": {"total_per_data_packet": 43.0, "requests": 352}}}
    assert ok(ck.check_smallest("both", res))
    for wrong in ("pairs", "off"):
        not_yet_without(ck.check_smallest(wrong, res), "both", 43.0, 43)
    for odd in (None, "zip", ["both"], 3):
        assert not ok(ck.check_smallest(odd, res))
    ratio = 678 / 352
    assert ok(ck.check_request_ratio(2.0, res))
    for wrong in (None, 3.0, 1.5, "two"):
        not_yet_without(ck.check_request_ratio(wrong, res), f"{ratio:.2f}", f"{ratio:.1f}",
                        678, 352)


def test_every_check_says_ok_or_not_yet_with_a_dash() -> None:
    """One wording: the first word(s) and an em dash, whatever the notebook."""
    res = {"modes": {"off": {"total_per_data_packet": 2.0, "requests": 2},
                     "pairs": {"total_per_data_packet": 1.0, "requests": 1}}}
    verdicts = [
        compression.checks.check_smallest("pairs", res),
        compression.checks.check_request_ratio(None, res),
        optimizations.checks.check_faster("parallel", {"parallel_s": 1, "sequential_s": 2,
                                                       "requests": 2}),
        optimizations.checks.check_skipped(None, {"skipped_bytes": 1}),
        benchmark.checks.memory_slope(1, {}, "k"),
        checks.check_split_count(8), checks.check_cwnd(42), checks.check_mac_fields(None),
    ]
    for v in verdicts:
        ok(v)
