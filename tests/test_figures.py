"""Figure builders on small event tables, checked through fig.to_dict()."""

from __future__ import annotations

import pytest

pytest.importorskip("plotly", reason="plotly is a lab dependency: make lab-venv")

from trickles_kit.core.events import Event, EventLog  # noqa: E402
from trickles_kit.net.sim import LinkConfig, simulate_transfer  # noqa: E402
from trickles_kit.viz import figures as F  # noqa: E402


def ev(kind: str, t: float, pkt: int, ack: int, cwnd: int, ssthresh: int = 16383,
       state: int = 0, side: str = "server", **detail) -> Event:
    return Event(kind, t, side, 7, pkt, ack, cwnd, ssthresh, 1, state, detail)


# a hand-made run: handshake window 1..3, ack 1 continues, ack 2 splits, ack 3 terminates
TINY = [
    ev("initial", 0.0, 1, 0, 3), ev("initial", 0.0, 2, 0, 3), ev("initial", 0.0, 3, 0, 3),
    ev("continue", 0.1, 4, 1, 3), ev("continue", 0.11, 5, 2, 4), ev("split", 0.11, 6, 2, 4),
    ev("terminate", 0.12, -1, 3, 2),
]


def traces(fig) -> dict[str, dict]:
    return {t["name"]: t for t in fig.to_dict()["data"]}


def test_cwnd_figure_plots_every_window_point() -> None:
    tr = traces(F.cwnd_figure(TINY))
    assert list(tr["cwnd"]["y"]) == [3, 3, 3, 3, 4, 4]
    assert list(tr["terminate"]["x"]) == [0.12]
    by_pkt = traces(F.cwnd_figure(TINY, x="pkt"))
    assert list(by_pkt["cwnd"]["x"]) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError):
        F.cwnd_figure(TINY, x="bytes")


def test_trickle_lanes_follow_continue_split_terminate() -> None:
    lanes = {(r["kind"], r.get("pkt")): r for r in F.trickle_lanes(TINY)}
    assert lanes[("continue", 4)]["lane"] == lanes[("initial", 1)]["lane"]
    assert lanes[("continue", 5)]["lane"] == lanes[("initial", 2)]["lane"]
    split = lanes[("split", 6)]
    assert split["lane"] not in {lanes[("initial", p)]["lane"] for p in (1, 2, 3)}
    assert split["parent_lane"] == lanes[("initial", 2)]["lane"]
    assert lanes[("terminate", -1)]["lane"] == lanes[("initial", 3)]["lane"]
    tr = traces(F.trickle_tree_figure(TINY))
    assert len(tr["split"]["x"]) == 1 and len(tr["terminate"]["x"]) == 1


def test_time_sequence_and_goodput() -> None:
    rows = [*TINY, ev("request", 0.05, -1, 1, 3, side="client"),
            ev("data", 0.1, -1, -1, 0, side="client", bytes=1448),
            ev("data", 0.25, -1, -1, 0, side="client", bytes=2896)]
    tr = traces(F.time_sequence_figure(rows))
    assert list(tr["sent: split"]["y"]) == [6]
    assert list(tr["acknowledged (request)"]["y"]) == [1]
    g = traces(F.goodput_figure(rows, bin_s=0.1))["goodput"]
    assert list(g["x"]) == pytest.approx([0.1, 0.2])
    assert list(g["y"]) == pytest.approx([1448 * 8 / 0.1 / 1e6, 2896 * 8 / 0.1 / 1e6])


def test_inspector_highlights_changes_and_verdicts() -> None:
    prev = {"seq": 4, "tcp_base": 1, "state": 0, "ssthresh": 16383}
    row = {"seq": 9, "tcp_base": 9, "state": 2, "ssthresh": 3, "mac_ok": False, "nonce_ok": True}
    cells = F.continuation_inspector(row, prev).to_dict()["data"][0]["cells"]
    names, values = cells["values"]
    assert values[names.index("state")] == "BOOTSTRAP"
    assert values[names.index("mac")] == "FAIL" and values[names.index("nonce")] == "ok"
    colors = cells["fill"]["color"][0]
    assert colors[names.index("tcp_base")] != "white"


def test_nonce_panel_verdicts() -> None:
    t = F.nonce_panel([{"left": 0, "right": 5, "claimed": 1, "expected": 1},
                       {"left": 7, "right": 9, "claimed": 2, "expected": 3}])
    assert list(t.to_dict()["data"][0]["cells"]["values"][3]) == ["ok", "REJECTED"]


def test_figures_from_a_simulated_loss() -> None:
    log = EventLog()
    r = simulate_transfer(300_000, seed=3, down=LinkConfig(loss_pattern=[40], rate=None),
                          up=LinkConfig(rate=None), on_event=log)
    assert r.ok
    cw = traces(F.cwnd_figure(log.events))
    assert len(cw["retransmit"]["x"]) == r.retransmissions == 1
    assert len(cw["terminate"]["x"]) == r.terminations
    tree = traces(F.trickle_tree_figure(log.events))
    assert len(tree["split"]["x"]) == r.splits
