"""Notebooks 08 and 09's figures draw the numbers the lab functions return, and the parallel
timeline those figures need is measured (when each response reached the application)."""

from __future__ import annotations

import pytest

pytest.importorskip("plotly", reason="plotly is a lab dependency: make lab-venv")

from helpers_labfigures import lab_inputs  # noqa: E402

from trickles_kit.labs import optimizations as opt  # noqa: E402
from trickles_kit.viz import labfigures as LF  # noqa: E402


def traces(fig) -> dict[str, object]:
    return {t.name: t for t in fig.data}


def _http(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def test_response_times_follow_the_in_order_deliveries() -> None:
    data = _http(b"a" * 10) + _http(b"b" * 5)
    first = len(_http(b"a" * 10))
    arrivals = [(0.1, 20), (0.2, first - 20), (0.3, 3), (0.4, len(data) - first - 3)]
    rows = opt.response_times(data, arrivals, offset=1.0)
    assert rows == [
        {"request": 0, "start_s": 1.0, "first_byte_s": 1.1, "done_s": 1.2},
        {"request": 1, "start_s": 1.0, "first_byte_s": 1.3, "done_s": 1.4},
    ]


@pytest.mark.parametrize("replicas", [1, 2])
def test_parallel_compare_returns_both_timelines(replicas: int) -> None:
    r = opt.parallel_compare(n=3, size=20_000, replicas=replicas)
    assert r["parallel_ok"] and r["sequential_ok"]
    par, seq = r["parallel_timeline"], r["sequential_timeline"]
    assert [row["request"] for row in par] == [row["request"] for row in seq] == [0, 1, 2]
    assert all(row["start_s"] == 0.0 for row in par)
    assert max(row["done_s"] for row in par) == pytest.approx(r["parallel_s"])
    # one after another: each starts when the previous one was done, the last ends the run
    assert [row["start_s"] for row in seq[1:]] == [row["done_s"] for row in seq[:-1]]
    assert seq[-1]["done_s"] == pytest.approx(r["sequential_s"])
    for row in par + seq:
        assert row["start_s"] < row["first_byte_s"] <= row["done_s"]


def test_timeline_figure_draws_start_to_done_per_request() -> None:
    _, _, par, _ = lab_inputs()
    tr = traces(LF.parallel_timeline_figure(par))
    p, s = tr["parallel (one connection)"], tr["sequential (one connection each)"]
    assert list(p.base) == [row["start_s"] for row in par["parallel_timeline"]]
    ends = [b + x for b, x in zip(s.base, s.x, strict=True)]
    assert ends == pytest.approx([row["done_s"] for row in par["sequential_timeline"]])
    assert p.orientation == s.orientation == "h"


def test_cache_and_skip_figures_show_the_dicts_numbers() -> None:
    cache, dyn, _, _ = lab_inputs()
    tr = traces(LF.cache_figure(cache))
    assert list(tr["server CPU per request (µs)"].y) == [47.0, 41.5]
    assert list(tr["cache hits (MAC skipped)"].y) == [0, 27]
    assert list(tr["replay drops"].y) == [27, 27]
    fig = LF.skip_figure(dyn)
    tr = traces(fig)
    assert fig.layout.barmode == "stack"  # the two parts add up to the bytes sent
    off = tr["records and framing"].y[0] + tr["unused reservations"].y[0]
    on = tr["records and framing"].y[1] + tr["unused reservations"].y[1]
    assert (off, on) == (dyn["stream_bytes"], dyn["delivered_bytes"])


def test_compression_figures_per_mode() -> None:
    _, _, _, comp = lab_inputs()
    tr = traces(LF.continuation_bytes_figure(comp))
    for name, key, _ in LF.BYTES_SERIES:
        assert list(tr[name].y) == [comp["modes"][m][key] for m in comp["modes"]]
    assert tr["response bytes / data packet"].text[1].endswith("(-10%)")
    forms = LF.continuation_forms_figure(comp)
    per_axis: dict[str, float] = {}
    for t in forms.data:
        per_axis[t.xaxis] = per_axis.get(t.xaxis, 0) + sum(t.y)
    total_resp = sum(sum(r["response_types"].values()) for r in comp["modes"].values())
    total_req = sum(sum(r["request_types"].values()) for r in comp["modes"].values())
    assert per_axis == {"x": total_resp, "x2": total_req}
    assert sum(bool(t.showlegend) for t in forms.data) == len({t.name for t in forms.data})
