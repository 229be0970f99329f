"""The closed-form Reno window (PROTOCOL §4.1) against a Reno sender stepped ack by ack."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trickles_kit.core.cc import MAX_CWND, RenoStepper, cwnd, reno_trace

# ---------------------------------------------------------------------------------------------
# The oracle itself, on hand-computed traces (so the comparison below is not circular)


def test_reno_trace_by_hand():
    # slow start 1 -> 3, then each window w is held for w acks: 3 x3, 4 x4, 5 x5 ...
    assert reno_trace(0, 1, 3, 20) == [1, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6]
    # start at ssthresh: straight into congestion avoidance
    assert reno_trace(7, 2, 2, 8) == [2, 2, 3, 3, 3, 4, 4, 4]
    # pure slow start
    assert reno_trace(1, 3, 100, 6) == [3, 4, 5, 6, 7, 8]


def test_stepper_follows_trace():
    s = RenoStepper(5, 2, 4)
    assert (s.n, s.cwnd) == (5, 2)
    assert [s.ack() for _ in range(9)] == reno_trace(5, 2, 4, 10)[1:]
    assert s.n == 14


def test_closed_form_by_hand():
    expected = [1, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6]
    assert [cwnd(n, 0, 1, 3) for n in range(15)] == expected
    assert [cwnd(n, 10, 1, 3) for n in range(10, 25)] == expected


# ---------------------------------------------------------------------------------------------
# Exhaustive agreement on a small grid


@pytest.mark.parametrize("tcp_base", [0, 1, 17, 50])
def test_closed_form_equals_stepper_grid(tcp_base):
    count = 3000
    mismatches = []
    for c0 in range(1, 17):
        for s in range(c0, 81):
            trace = reno_trace(tcp_base, c0, s, count)
            got = [cwnd(n, tcp_base, c0, s) for n in range(tcp_base, tcp_base + count)]
            if got != trace:
                n = next(i for i in range(count) if got[i] != trace[i]) + tcp_base
                mismatches.append((c0, s, n, got[n - tcp_base], trace[n - tcp_base]))
            assert cwnd(tcp_base - 1, tcp_base, c0, s) == c0
    assert not mismatches, f"(start_cwnd, ssthresh, n, closed, stepped): {mismatches[:10]}"


# ---------------------------------------------------------------------------------------------
# Hypothesis over the full acceptance range

_traces: dict[tuple[int, int, int], tuple[RenoStepper, list[int]]] = {}


def stepped(n: int, tcp_base: int, c0: int, s: int) -> int:
    """cwnd after ack n from a Reno sender started at tcp_base, extended lazily and cached."""
    key = (tcp_base, c0, s)
    if key not in _traces:
        st_ = RenoStepper(tcp_base, c0, s)
        _traces[key] = (st_, [st_.cwnd])
    stepper, trace = _traces[key]
    while len(trace) <= n - tcp_base:
        trace.append(stepper.ack())
    return trace[n - tcp_base]


@st.composite
def params(draw, span: int = 20000):
    tcp_base = draw(st.integers(0, 50))
    c0 = draw(st.integers(1, 64))
    s = draw(st.integers(c0, 512))
    n = draw(st.integers(tcp_base, tcp_base + span))
    return n, tcp_base, c0, s


@settings(max_examples=300, deadline=None)
@given(p=params())
def test_closed_form_equals_stepper(p):
    n, tcp_base, c0, s = p
    assert cwnd(n, tcp_base, c0, s) == stepped(n, tcp_base, c0, s)


@settings(max_examples=300, deadline=None)
@given(tcp_base=st.integers(0, 50), c0=st.integers(1, 64), data=st.data())
def test_closed_form_equals_stepper_near_ssthresh(tcp_base, c0, data):
    """The switch from slow start to congestion avoidance, where off-by-ones live."""
    s = data.draw(st.integers(c0, min(512, c0 + 3)) | st.integers(c0, 512))
    a = tcp_base + s - c0
    for n in range(max(tcp_base - 1, a - 3), a + 2 * s + 3):
        expected = c0 if n == tcp_base - 1 else stepped(n, tcp_base, c0, s)
        assert cwnd(n, tcp_base, c0, s) == expected, n


@settings(max_examples=500, deadline=None)
@given(tcp_base=st.integers(0, 10**9), c0=st.integers(1, 64), ds=st.integers(0, 10**4),
       k=st.integers(0, 10**13))
def test_congestion_avoidance_is_largest_w_with_sum_le_k(tcp_base, c0, ds, k):
    """Beyond what can be stepped: w is the largest window with sum(j, j = s..w-1) <= k."""
    s = c0 + ds
    a = tcp_base + s - c0
    w = cwnd(a + k, tcp_base, c0, s)

    def acks(width: int) -> int:  # acks spent in windows s .. width - 1
        return (width - s) * (width + s - 1) // 2

    lo, hi = s, s + 1
    while acks(hi) <= k:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # bisection, no square roots
        mid = (lo + hi) // 2
        if acks(mid) <= k:
            lo = mid
        else:
            hi = mid
    assert w == min(lo, MAX_CWND)


# ---------------------------------------------------------------------------------------------
# Boundary, arguments, shape


@settings(max_examples=300, deadline=None)
@given(tcp_base=st.integers(0, 10**6), c0=st.integers(1, 1000), ds=st.integers(0, 10**5))
def test_epoch_opening_ack_is_start_cwnd(tcp_base, c0, ds):
    assert cwnd(tcp_base - 1, tcp_base, c0, c0 + ds) == c0
    assert cwnd(tcp_base, tcp_base, c0, c0 + ds) == c0


@pytest.mark.parametrize(
    "args",
    [
        (-2, 0, 1, 1),  # n < tcp_base - 1
        (8, 10, 3, 5),
        (0, 10**6, 3, 5),
        (5, 0, 0, 5),  # start_cwnd < 1
        (5, 0, -1, 5),
        (5, 0, 6, 5),  # ssthresh < start_cwnd
        (5, 0, 1, 0),
    ],
)
def test_invalid_arguments(args):
    with pytest.raises(ValueError):
        cwnd(*args)


@pytest.mark.parametrize("args", [(0, 0, 1), (0, -1, 5), (0, 6, 5)])
def test_stepper_invalid_arguments(args):
    with pytest.raises(ValueError):
        RenoStepper(*args)


@settings(max_examples=200, deadline=None)
@given(tcp_base=st.integers(0, 10**6), c0=st.integers(1, 64), ds=st.integers(0, 5000),
       start=st.integers(0, 10**8))
def test_non_decreasing_and_at_most_one_per_ack(tcp_base, c0, ds, start):
    s = c0 + ds
    n0 = tcp_base - 1 + start
    ws = [cwnd(n, tcp_base, c0, s) for n in range(n0, n0 + 2000)]
    for a, b in zip(ws, ws[1:], strict=False):
        assert 0 <= b - a <= 1
    assert all(1 <= w <= MAX_CWND for w in ws)


def test_max_cwnd_in_slow_start():
    s = 3 * MAX_CWND
    trace = reno_trace(0, 1, s, MAX_CWND + 100)
    closed = [cwnd(n, 0, 1, s) for n in range(MAX_CWND + 100)]
    assert closed == trace
    assert closed[MAX_CWND - 2] == MAX_CWND - 1
    assert closed[MAX_CWND - 1:] == [MAX_CWND] * 101


def test_max_cwnd_in_congestion_avoidance():
    s = MAX_CWND - 40
    # window s is held for s acks, s + 1 for s + 1 acks, ... until MAX_CWND
    reach = sum(range(s, MAX_CWND))
    stepper = RenoStepper(0, s, s)
    for n in range(1, reach + 3 * MAX_CWND):
        w = stepper.ack()
        assert cwnd(n, 0, s, s) == w, n
    assert cwnd(reach - 1, 0, s, s) == MAX_CWND - 1
    assert cwnd(reach, 0, s, s) == MAX_CWND
    assert stepper.cwnd == MAX_CWND


@pytest.mark.parametrize("n", [10**8, 10**9, 10**12, 10**18])
def test_max_cwnd_far_out(n):
    assert cwnd(n, 0, 1, 1) == MAX_CWND
    assert cwnd(n, 0, 64, 512) == MAX_CWND
    assert cwnd(n, 0, 1, 10**9) == MAX_CWND


def test_plan_positional_constructors_set_every_field() -> None:
    """plan.py builds Slot and Plan positionally on its hot path: the same objects as keyword
    calls, field for field, in this field order (a field moved would shift them silently)."""
    import dataclasses

    from trickles_kit.core import plan as pl

    s = pl.Slot(1, pl.SPLIT, 2, 3, 4, 5, 6, 7, 8)
    assert s == pl.Slot(pkt=1, kind=pl.SPLIT, ctype=2, state=3, tcp_base=4, start_cwnd=5,
                        ssthresh=6, first_loss=7, first_bootstrap_seq=8)
    assert [f.name for f in dataclasses.fields(pl.Slot)] == [
        "pkt", "kind", "ctype", "state", "tcp_base", "start_cwnd", "ssthresh", "first_loss",
        "first_bootstrap_seq"]
    p = pl.Plan(pl.Verdict.NORMAL, [s], 9, "r", 3, True)
    assert p == pl.Plan(verdict=pl.Verdict.NORMAL, slots=[s], cwnd=9, reason="r", first_loss=3,
                        recovery_start=True)
    assert [f.name for f in dataclasses.fields(pl.Plan)] == [
        "verdict", "slots", "cwnd", "reason", "first_loss", "recovery_start"]
