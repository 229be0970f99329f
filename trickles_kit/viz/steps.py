"""Step through a run's requests: what the server made of each one.

`build_steps` pairs each request with the server's events (or, from a decoded capture, re-plans
it with `core.plan.plan_request` from the continuation it carried); `StepThrough` shows one
request at a time — verdict, packets emitted, the continuation (changes highlighted) and its
SACK nonce checks — as plain HTML, so it needs no plotly.js and shows every field.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as W

from trickles_kit.core import plan as pl
from trickles_kit.core.events import Event
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.pairing import Pairing, request_key, response_key
from trickles_kit.core.server import ServerConfig
from trickles_kit.viz import figures as F
from trickles_kit.viz import tables as T
from trickles_kit.viz.accumulators import as_event

__all__ = ["Step", "StepThrough", "build_steps"]

_DROPS = frozenset(("mac_fail", "nonce_fail", "replay_drop", "stale_drop", "drop"))
_OUT = frozenset((*F.SLOT_KINDS, "terminate"))
_REQUEST_KINDS = _DROPS | _OUT | {"nonce_ok", "recovery_start", "slowstart", "syn", "fin"}
_REQ_TYPES = {0: "NORMAL", 1: "SLOWSTART", 2: "SYN", 3: "FIN"}
_CONT_FROM_ROW = {"type": "cont_type", "seq": "cont_seq"}
_EPS = 2e-6  # pcap timestamps are whole microseconds; engine events are not


@dataclass
class Step:
    """One request and what the server made of it."""

    index: int
    t: float
    conn_id: int
    ack: int  # k: the packet number the request acknowledges
    request: Event | None = None  # the client's `request` event
    row: dict | None = None  # the request's packet row (capture)
    server: list[Event] = field(default_factory=list)  # the server's events for it
    responses: list[dict] = field(default_factory=list)  # response rows paired with it
    verdict: str = "unanswered"  # normal | handshake | recovery | slowstart | terminate |
    #                              reject | dropped | fin | unanswered
    reason: str = ""
    emitted: list[tuple[int, str]] = field(default_factory=list)  # (pkt, kind)
    cwnd: int | None = None  # the window the plan computed
    plan: pl.Plan | None = None  # re-planned from the captured continuation (rows only)

    @property
    def req_type(self) -> str:
        if self.row is not None:
            return str(self.row.get("req_type"))
        if self.request is not None:
            return _REQ_TYPES.get(self.request.detail.get("req_type", 0), "?")
        return "SYN" if any(e.kind == "syn" for e in self.server) else "?"


def _rank(kind: str) -> int:
    if kind in ("nonce_ok", "syn"):
        return 0
    if kind in _DROPS or kind == "fin":
        return 1
    if kind in ("recovery_start", "slowstart"):
        return 2
    return 3


def _new_group(group: list[Event], e: Event, window: float) -> bool:
    if not group:
        return True
    last = group[-1]
    if (e.conn_id, e.ack) != (last.conn_id, last.ack) or e.t - group[0].t > window:
        return True
    if last.kind in _DROPS or last.kind in ("syn", "fin", "terminate"):
        return True  # those end what the server does with a request
    r, rl = _rank(e.kind), _rank(last.kind)
    if r < rl or (r == rl and r < 3):
        return True
    return e.kind == "terminate" and rl == 3


def _server_groups(events: Sequence[Event], window: float) -> list[list[Event]]:
    groups: list[list[Event]] = []
    cur: list[Event] = []
    for e in sorted((e for e in events if e.side == "server" and e.kind in _REQUEST_KINDS),
                    key=lambda e: e.t):
        if _new_group(cur, e, window):
            cur = [e]
            groups.append(cur)
        else:
            cur.append(e)
    return groups


def _verdict_from_events(step: Step) -> None:
    g = step.server
    kinds = [e.kind for e in g]
    step.emitted = [(e.pkt, e.kind) for e in g if e.kind in F.SLOT_KINDS]
    for e in g:
        if e.kind in _OUT or e.kind in ("recovery_start", "slowstart"):
            step.cwnd = e.cwnd
            break
    drops = [e for e in g if e.kind in _DROPS]
    if not g:
        step.verdict, step.reason = "unanswered", "the server logged nothing for it (lost?)"
    elif "syn" in kinds:
        step.verdict, step.reason = "handshake", "SYN: the handshake continuation"
        step.emitted = [(g[0].pkt, "syn-ack")]
        step.cwnd = g[0].cwnd
    elif drops:
        reason = str(drops[0].detail.get("reason", drops[0].kind))
        step.verdict = "reject" if reason.startswith("plan.") else "dropped"
        step.reason = f"{drops[0].kind}: {reason}"
    elif "fin" in kinds:
        step.verdict, step.reason = "fin", "the client closes"
    elif "slowstart" in kinds:
        step.verdict, step.reason = "slowstart", "restart after a timeout"
    elif "terminate" in kinds:
        e = g[kinds.index("terminate")]
        step.verdict = "terminate"
        step.reason = ("a recovery continuation ends its trickle" if e.state == 1
                       else "no packet for this request: its trickle ends")
    elif "recovery_start" in kinds or any(k in ("retransmit", "bootstrap") for k in kinds):
        step.verdict = "recovery"
        fl = next((e.detail.get("first_loss") for e in g if e.kind == "recovery_start"), None)
        step.reason = f"first loss at {fl}" if fl is not None else "inside a recovery"
    elif "initial" in kinds:
        step.verdict, step.reason = "handshake", "the initial window"
    elif "continue" in kinds or "split" in kinds:
        step.verdict, step.reason = "normal", "every packet up to k acknowledged"
    else:
        step.verdict, step.reason = "unanswered", "checked, but nothing sent"


def _row_dict(r: Any) -> dict:
    if isinstance(r, Mapping):
        return dict(r)
    as_dict = getattr(r, "as_dict", None)
    if callable(as_dict):
        return as_dict()
    return dict(vars(r))


def _steps_from_rows(rows: list[dict], events: Sequence[Event], config: Any) -> list[Step]:
    steps, pending, handshakes = _request_steps(rows, getattr(config, "max_gap", pl.MAX_GAP))
    _pair_responses(rows, pending, handshakes)
    by_req: dict[tuple[int, int], list[Event]] = {}
    for e in events:
        if e.side == "server" and e.kind in _REQUEST_KINDS:
            by_req.setdefault((e.conn_id, e.ack), []).append(e)
    for st in steps:
        r = st.row
        assert r is not None
        if r.get("error") is not None or r.get("req_type") == "SYN":
            continue
        t_end = max([x["t"] for x in st.responses], default=st.t) + _EPS
        st.server = [e for e in by_req.get((st.conn_id, st.ack), ())
                     if st.t - _EPS <= e.t <= t_end]
        _verdict_from_plan(st)
    return steps


def _request_steps(rows: list[dict], max_gap: int
                   ) -> tuple[list[Step], dict[tuple, list[Step]], Pairing]:
    """A step per captured request, re-planned from its continuation: (steps, the requests
    awaiting responses by `core.pairing.request_key` — the decoder's rule —, the SYNs awaiting
    their SYN-ACK in a `Pairing`)."""
    pending: dict[tuple, list[Step]] = {}
    handshakes = Pairing()
    steps: list[Step] = []
    for r in rows:
        if r.get("direction") != "request":
            continue
        st = Step(len(steps), r["t"], r.get("conn_id") or 0, r.get("cont_seq")
                  if r.get("cont_seq") is not None else -1, row=r)
        steps.append(st)
        if r.get("error") is not None:
            st.verdict, st.reason = "dropped", f"drop: {r['error']}"
            continue
        if r.get("req_type") == "SYN":
            handshakes.add_syn(r["src"], r["sport"], r["dst"], r["dport"], st)
            st.verdict, st.reason = "handshake", "SYN: no SYN-ACK seen"
            continue
        key = request_key(r["src"], r["sport"], r["dst"], r["dport"], r["cont_seq"],
                          r["client_state"], r["parent"], r["client_timestamp"])
        if r.get("req_type") != "FIN":
            sacks = r.get("sacks") or []
            blocks = [(lft, rgt) for lft, rgt, _ in sacks]
            st.plan = pl.plan_request(r["cont_seq"], r["tcp_base"], r["start_cwnd"],
                                      r["ssthresh"], r["state"], blocks,
                                      r.get("req_type") == "SLOWSTART", max_gap)
        if r.get("mac_ok") is not False:
            pending.setdefault(key, []).append(st)
    return steps, pending, handshakes


def _pair_responses(rows: list[dict], pending: dict[tuple, list[Step]],
                    handshakes: Pairing) -> None:
    """Each response to the latest earlier request whose continuation it echoes (a SYN-ACK to
    its SYN), by the keys of `core.pairing`. Unlike the decoder, no plan slots are filled: the
    step shows every response its request got, a duplicate too."""
    order = {id(r): i for i, r in enumerate(rows)}
    for r in rows:
        if r.get("direction") != "response" or r.get("error") is not None:
            continue
        if r.get("flags", 0) & 2:  # SYN-ACK
            st = handshakes.answer_syn(r["src"], r["sport"], r["dst"], r["dport"])
            if st is not None:
                st.responses.append(r)
                st.reason = "SYN: the handshake continuation"
                st.emitted = [(r["seq"], "syn-ack")]
                st.cwnd = r.get("start_cwnd")
            continue
        key = response_key(r["src"], r["sport"], r["dst"], r["dport"], r["ack"],
                           r.get("client_state"), r.get("parent"), r.get("client_timestamp"))
        for st in reversed(pending.get(key, [])):
            if order[id(st.row)] < order[id(r)]:
                st.responses.append(r)
                break


def _verdict_from_plan(st: Step) -> None:
    """A captured request's verdict: its plan when answered (or when it plans nothing), else
    why it went unanswered (a server drop, or nothing in the capture)."""
    r = st.row
    assert r is not None
    plan = st.plan
    if r.get("req_type") == "FIN":
        st.verdict = "fin" if st.responses else "unanswered"
        st.reason = "the client closes"
        st.emitted = [(x["seq"], "fin") for x in st.responses]
        return
    assert plan is not None
    st.cwnd = plan.cwnd
    kinds = {s.pkt: s.kind for s in plan.slots}
    st.emitted = [(x["seq"], kinds.get(x["seq"], "?")) for x in st.responses]
    if st.responses or not plan.slots:
        st.verdict, st.reason = plan.verdict, plan.reason
        if plan.recovery_start:
            st.reason = f"first loss at {plan.first_loss}"
        return
    drops = [e for e in st.server if e.kind in _DROPS]
    if drops:
        reason = str(drops[0].detail.get("reason", drops[0].kind))
        st.verdict = "dropped"
        st.reason = f"{drops[0].kind}: {reason} (the plan would have been {plan.verdict})"
    else:
        st.verdict = "unanswered"
        st.reason = f"no answer in the capture (the plan: {plan.verdict})"


def build_steps(events: Iterable[Event | Mapping[str, Any]] = (),
                packets: Iterable[Any] | None = None, *, config: Any = None,
                window: float = 0.005) -> list[Step]:
    """The requests of a run, each with what the server made of it.

    With `packets` (rows of `capture.decode_pcap`): one step per captured request, its plan
    recomputed with `core.plan.plan_request` from the continuation it carried, the responses
    paired as the decoder pairs them. Otherwise from events: one step per client `request`
    event (the server's events for it attached: same connection and ack, the latest request
    sent before them), plus server-only groups (SYN, or a capture's events without client
    events) — `window` (s) bounds how far apart one request's server events may be.
    """
    evs = [as_event(e) for e in events]
    if packets is not None:
        return _steps_from_rows([_row_dict(r) for r in packets], evs, config)
    groups = _server_groups(evs, window)
    requests = sorted((e for e in evs if e.kind == "request" and e.side == "client"),
                      key=lambda e: e.t)
    by_ack: dict[int, list[Event]] = {}
    for e in requests:
        by_ack.setdefault(e.ack, []).append(e)
    claimed: set[int] = set()
    owner: dict[int, list[Event]] = {}
    lone: list[list[Event]] = []
    for g in groups:
        g0 = g[0]
        hit = None
        for q in reversed(by_ack.get(g0.ack, ())):
            if id(q) in claimed or q.t > g0.t:
                continue
            if q.conn_id and g0.conn_id and q.conn_id != g0.conn_id:
                continue
            hit = q
            break
        if hit is None:
            lone.append(g)
        else:
            claimed.add(id(hit))
            owner[id(hit)] = g
    steps = [Step(0, q.t, q.conn_id, q.ack, request=q, server=owner.get(id(q), []))
             for q in requests]
    steps += [Step(0, g[0].t, g[0].conn_id, g[0].ack, server=g) for g in lone]
    steps.sort(key=lambda s: s.t)
    for i, st in enumerate(steps):
        st.index = i
        _verdict_from_events(st)
    return steps


class StepThrough:
    """Pause on each request: Prev / Next and a slider over the requests; for the current one,
    the server's verdict (plan, packets emitted with their kinds, cwnd), the continuation it
    carried (`figures.continuation_inspector`, changes since the previous request highlighted)
    and its SACK nonce checks (`figures.nonce_panel`).

    `packets`: rows of `capture.decode_pcap` (exact continuations, re-planned); `secret`: the
    server's master secret, to compute the expected nonce summaries.
    """

    def __init__(self, events: Iterable[Event | Mapping[str, Any]] = (),
                 packets: Iterable[Any] | None = None, *, secret: bytes | None = None,
                 config: Any = None) -> None:
        self.config = config or ServerConfig()
        self.steps = build_steps(events, packets, config=self.config)
        self._nonces = None
        if secret is not None:

            keys = KeyRing(bytes(secret), self.config.epoch_seconds)
            self._nonces = NonceGen(keys.nonce_key, self.config.nonce_bits)
        n = len(self.steps)
        self.prev_button = W.Button(description="Prev", icon="step-backward")
        self.next_button = W.Button(description="Next", icon="step-forward")
        self.slider = W.IntSlider(value=0, min=0, max=max(n - 1, 0), description="request",
                                  continuous_update=False)
        self.summary = W.HTML()
        self.inspector = W.HTML(layout=W.Layout(margin="0 24px 0 0"))
        self.nonces = W.HTML()
        self.nonce_note = W.HTML()
        self.inspector_rows: list[tuple[str, Any, str]] = []  # what the tables show, for tests
        self.nonce_table: list[tuple[str, str, str, str]] = []
        # side by side when there is room, the nonce checks under the continuation when not
        self.widget = W.VBox([
            W.HBox([self.prev_button, self.next_button, self.slider]), self.summary,
            W.HBox([self.inspector, W.VBox([self.nonces, self.nonce_note])],
                   layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))])
        self.prev_button.on_click(lambda _b: self.prev())
        self.next_button.on_click(lambda _b: self.next())
        self.slider.observe(lambda ch: self._show(ch["new"]), names="value")
        self._show(0)

    def _repr_mimebundle_(self, **kw: Any) -> dict:
        bundle = self.widget._repr_mimebundle_(**kw)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/html"] = self.html()  # nbconvert shows it; JupyterLab draws the widget
        return bundle

    @property
    def index(self) -> int:
        return self.slider.value

    @property
    def current(self) -> Step | None:
        return self.steps[self.index] if self.steps else None

    def go(self, i: int) -> Step | None:
        if self.steps:
            self.slider.value = max(0, min(i, len(self.steps) - 1))
        return self.current

    def next(self) -> Step | None:
        return self.go(self.index + 1)

    def prev(self) -> Step | None:
        return self.go(self.index - 1)

    # ------------------------------------------------------------------ what is shown
    def continuation_row(self, i: int) -> dict:
        """The continuation fields of request i, as much as the data tells."""
        st = self.steps[i]
        if st.row is not None:
            r = st.row
            out = {f: r.get(_CONT_FROM_ROW.get(f, f)) for f in F.CONT_FIELDS}
            out = {k: v for k, v in out.items() if v is not None}
            out["mac_ok"], out["nonce_ok"] = r.get("mac_ok"), r.get("nonce_ok")
            return out
        out: dict[str, Any] = {"seq": st.ack, "conn_id": st.conn_id}
        src = next((e for e in st.server if e.kind not in _OUT), None)  # carries the input
        if src is not None:
            out.update(state=src.state, ssthresh=src.ssthresh, tcp_base=src.tcp_base)
        elif st.request is not None:
            out.update(state=st.request.state, tcp_base=st.request.tcp_base)
        kinds = {e.kind for e in st.server}
        if "mac_fail" in kinds:
            out["mac_ok"] = False
        elif any(e.ack >= 0 for e in st.server):  # the server opened the continuation
            out["mac_ok"] = True
        else:
            out["mac_ok"] = None
        out["nonce_ok"] = (False if "nonce_fail" in kinds else
                           True if "nonce_ok" in kinds else None)
        return out

    def nonce_blocks(self, i: int) -> tuple[list[dict], list[str]]:
        """(blocks for nonce_panel, notes on blocks whose summaries are unknown)."""
        st = self.steps[i]
        blocks: list[dict] = []
        notes: list[str] = []
        gen = self._nonces
        if st.row is not None:
            ok = st.row.get("nonce_ok")
            for left, right, claimed in st.row.get("sacks") or []:
                if gen is not None:
                    expected = gen.range_summary(st.conn_id, st.row.get("tcp_base", 0), left,
                                                 right)
                elif ok is True:
                    expected = claimed  # the decoder checked it with the secret
                else:
                    notes.append(f"[{left}, {right}] claimed {claimed:#010x}: no secret to check")
                    continue
                blocks.append({"left": left, "right": right, "claimed": claimed,
                               "expected": expected})
            return blocks, notes
        kinds = {e.kind for e in st.server}
        pairs: list = []
        for e in st.server:
            if e.kind == "nonce_ok":
                pairs = e.detail.get("blocks") or []
        if not pairs and st.request is not None:
            pairs = st.request.detail.get("sacks") or []
        for left, right in pairs:
            if "nonce_ok" in kinds and gen is not None:
                base = st.request.tcp_base if st.request is not None else 0
                s = gen.range_summary(st.conn_id, base, left, right)  # the server found them ok
                blocks.append({"left": left, "right": right, "claimed": s, "expected": s})
            else:
                verdict = ("ok (the server's nonce_ok)" if "nonce_ok" in kinds else
                           "REJECTED (nonce_fail)" if "nonce_fail" in kinds else "not checked")
                notes.append(f"[{left}, {right}]: {verdict}")
        if pairs and gen is None and "nonce_ok" in kinds:
            notes.append("summaries are not in the event log: pass secret= (or packet rows) to "
                         "show them")
        return blocks, notes

    def _show(self, i: int) -> None:
        n = len(self.steps)
        self.prev_button.disabled = i <= 0
        self.next_button.disabled = i >= n - 1
        if not n:
            self.summary.value = "<i>no requests in these events</i>"
            return
        st = self.steps[i]
        self.summary.value = self._summary_html(st)
        prev = self.continuation_row(i - 1) if i > 0 else None
        row = self.continuation_row(i)
        self.inspector_rows = T.continuation_rows(row, prev)
        self.inspector.value = T.continuation_html(
            row, prev, title=f"Continuation carried by request {i}")
        blocks, notes = self.nonce_blocks(i)
        self.nonce_table = T.nonce_rows(blocks)
        self.nonces.value = T.nonce_html(blocks, title=f"Nonce checks, request {i}")
        if not blocks and not notes:
            notes = ["no SACK blocks in this request"]
        self.nonce_note.value = "<br>".join(html.escape(s) for s in notes)

    def html(self) -> str:
        """The current request as static HTML (what a saved notebook shows without a kernel)."""
        return (f"<div>{self.summary.value}</div><div style='display:flex;flex-wrap:wrap;"
                f"gap:24px'><div>{self.inspector.value}</div><div>{self.nonces.value}"
                f"{self.nonce_note.value}</div></div>")

    def _summary_html(self, st: Step) -> str:
        n = len(self.steps)
        esc = html.escape
        head = (f"<b>request {st.index + 1}/{n}</b> · t = {st.t:.6f} s · {esc(st.req_type)}"
                f" · acknowledges k = {st.ack}")
        if st.request is not None:
            sacks = st.request.detail.get("sacks")
            if sacks:
                head += f" · SACK {esc(str(sacks))}"
        elif st.row is not None and st.row.get("sacks"):
            head += f" · SACK {esc(str([(a, b) for a, b, _ in st.row['sacks']]))}"
        color = {"normal": "#2ca02c", "recovery": "#ff7f0e", "terminate": "#d62728",
                 "dropped": "#d62728", "reject": "#d62728", "slowstart": "#8c564b"}.get(
                     st.verdict, "#1f77b4")
        verdict = (f'server: <b style="color:{color}">{esc(st.verdict)}</b>'
                   + (f" — {esc(st.reason)}" if st.reason else ""))
        if st.cwnd is not None:
            verdict += f" · cwnd {st.cwnd}"
        sent = ", ".join(f"{p} {k}" for p, k in st.emitted) or "nothing"
        lines = [head, verdict, f"packets emitted: {esc(sent)}"]
        if st.plan is not None and st.plan.slots:
            planned = ", ".join(f"{s.pkt} {s.kind}" for s in st.plan.slots)
            lines.append(f"plan (core.plan.plan_request on the captured continuation): "
                         f"{esc(planned)}")
        return "<br>".join(lines)
