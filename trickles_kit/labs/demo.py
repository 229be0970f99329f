"""The tour, headless: one live transfer, its events, and a self-contained HTML report.

``run_demo(out="reports/demo.html")`` does what notebooks/01-tour.ipynb does without a browser:
pick the best transport this process may use (raw sockets, else UDP on loopback, else the
simulator — saying so), run one `LiveSession`, collect every event, and write ONE HTML file with
the four figures of the tour: congestion window, trickle tree, time–sequence and the nonce
checks. plotly.js is inlined once (first figure), so the file opens offline.

The helpers here are what the tour notebook calls, so its cells stay one line each:
`choose_transport`, `banner_html`, `watch` (a LiveSession drawn live into a LiveDashboard),
`nonce_blocks`; and for the report `run_tour`, `tour_figures`, `write_report`.

    trickles demo [--out reports/demo.html] [--size 300k] [--transport auto|raw|udp|sim]
                  [--loss 0.01] [--seed 1] [--drop-at 30]

Every run with loss shows one: the server drops request 30 (`--drop-at`) and the `--loss`
draws come from `--seed`, so the same requests are lost in every run (`net.faults`).
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trickles_kit.capture import decode_pcap
from trickles_kit.core.events import Event
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.server import ServerConfig
from trickles_kit.labs.session import LiveSession
from trickles_kit.net import privileges
from trickles_kit.viz.report import write_report

TRANSPORTS = ("auto", "raw", "udp", "sim")
FIGURE_ORDER = ("cwnd", "trickles", "time_sequence", "nonces")


# ---------------------------------------------------------------------------- transport
def choose_transport(requested: str = "auto") -> tuple[str, str | None]:
    """(transport to use, banner message or None). Raw sockets need root or CAP_NET_RAW; UDP on
    127.0.0.1 needs nothing; the simulator needs no sockets at all. A transport that cannot
    work here falls back to the next one, and the message says why."""
    if requested not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
    if requested == "sim":
        return "sim", None
    raw_ok, raw_err = privileges.can_open_raw_socket(253)
    if requested in ("auto", "raw") and raw_ok:
        return "raw", None
    udp_ok, udp_err = privileges.can_open_udp_socket()
    why_not_raw = (f"no raw sockets for this process ({raw_err}); run Jupyter as root or give "
                   "Python CAP_NET_RAW to see the real IP-253 wire")
    if udp_ok:
        if requested == "udp":
            return "udp", None
        return "udp", (f"Running over UDP on 127.0.0.1 instead of raw IP: {why_not_raw}. The "
                       "protocol, the events and the figures are the same.")
    return "sim", (f"Running in the simulator (virtual time, no sockets): {why_not_raw}, and "
                   f"UDP on 127.0.0.1 failed too ({udp_err}).")


def banner_html(message: str | None, transport: str) -> str:
    """A visible notice for the notebook (display(HTML(...))); a quiet line when all is well."""
    if not message:
        return (f"<div style='padding:6px 10px;border-left:4px solid #2ca02c;"
                f"background:#eef8ee'>Transport: <b>{html.escape(transport)}</b></div>")
    return ("<div class='trickles-fallback-banner' style='padding:10px 14px;border-left:6px "
            "solid #ff7f0e;background:#fff4e5;font-size:110%'>"
            f"<b>Fallback transport: {html.escape(transport)}</b><br>{html.escape(message)}"
            "</div>")


# ---------------------------------------------------------------------------- the run
@dataclass
class TourRun:
    """What one tour transfer produced."""

    transport: str
    ok: bool
    events: list[Event] = field(default_factory=list)
    result: Any = None  # labs.session.LiveResult
    banner: str | None = None
    pcap: str | None = None
    seconds: float = 0.0
    session: Any = None  # the LiveSession (its workdir holds the pcap and event files)
    owns_workdir: bool = True  # False: the caller chose the directory, cleanup() leaves it

    def cleanup(self) -> None:
        """Remove the session's temporary working directory (pcap, event files)."""
        if self.session is not None and self.owns_workdir:
            self.session.cleanup()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.events:
            out[e.kind] = out.get(e.kind, 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> str:
        c = self.counts()
        bits = ", ".join(f"{k} {c[k]}" for k in ("split", "terminate", "retransmit",
                                                  "bootstrap", "timeout", "nonce_fail")
                         if k in c)
        fetch = getattr(self.result, "fetch", {}) or {}
        size = fetch.get("bytes", "?")
        return (f"{'ok' if self.ok else 'FAILED'}: {size} bytes over {self.transport}, "
                f"{len(self.events)} events ({bits or 'no splits yet'}), "
                f"{self.seconds:.2f} s wall")


def run_tour(size: int = 300_000, transport: str = "auto", loss: float = 0.01, seed: int = 1,
             on_event: Callable[[Event], None] | None = None, timeout: float = 120.0,
             workdir: str | None = None, *, drop_at: Iterable[int] | None = None) -> TourRun:
    """One LiveSession on the best transport (see `choose_transport`), every event collected
    (and passed on to `on_event`, e.g. a dashboard's feed). A failed wire run is retried in the
    simulator, with a banner saying so, so the tour always has something to show. `drop_at`
    and the seeded `loss` make the losses the same in every run (see `LiveSession`)."""
    chosen, banner = choose_transport(transport)
    events: list[Event] = []

    def sink(e: Event) -> None:
        events.append(e)
        if on_event is not None:
            on_event(e)

    t0 = time.perf_counter()
    session = LiveSession(size=size, loss=loss, transport=chosen, seed=seed, workdir=workdir,
                          drop_at=drop_at)
    try:
        result = session.run(sink, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - the server could not start, ...
        result, err = None, f"{type(e).__name__}: {e}"
    else:
        err = None if result.ok else str((result.fetch or {}).get("error", "transfer failed"))
    if err is not None and chosen != "sim":
        if workdir is None:
            session.cleanup()
        banner = (f"The {chosen} run failed ({err[:200]}); showing a simulated run instead.")
        chosen = "sim"
        events.clear()
        session = LiveSession(size=size, loss=loss, transport="sim", seed=seed, workdir=workdir,
                              drop_at=drop_at)
        result = session.run(sink, timeout=timeout)
    return TourRun(chosen, bool(result and result.ok), events, result, banner,
                   getattr(result, "server_pcap", None), time.perf_counter() - t0, session,
                   owns_workdir=workdir is None)


# ---------------------------------------------------------------------------- nonce rows
def nonce_blocks(requests: Iterable[Any], server_events: Iterable[Event] | None = None,
                 secret: bytes | None = None, limit: int | None = 40,
                 config: Any = None) -> list[dict[str, int]]:
    """Rows for `viz.figures.nonce_panel` from the request rows of a capture (`PacketRow`s, or
    dicts with conn_id, cont_seq, sacks=[(L, R, summary)]; response rows are skipped).

    "claimed" is the summary the client sent. "expected" is r_L ^ r_(R+1), computed from the
    master `secret` when given. Without it, a block of a request the server accepted (its
    `nonce_ok` event in `server_events`) is shown with expected == claimed — the server made
    that very comparison — and blocks whose expected value cannot be known are left out.
    Failures are always kept; `limit` caps the accepted rows (the latest ones are kept).
    """
    nonces = None
    if secret is not None:

        cfg = config or ServerConfig()
        nonces = NonceGen(KeyRing(bytes(secret), cfg.epoch_seconds).nonce_key,
                          cfg.nonce_bits)
    accepted: set[tuple[int, int, tuple]] = set()
    for e in server_events or ():
        if e.kind == "nonce_ok" and e.side == "server":
            blocks = tuple(tuple(b) for b in e.detail.get("blocks", ()))
            accepted.add((e.conn_id, e.ack, blocks))
    good: list[dict[str, int]] = []
    bad: list[dict[str, int]] = []
    for r in requests:
        get = r.get if isinstance(r, Mapping) else (lambda k, r=r: getattr(r, k, None))
        sacks = get("sacks") or []
        if (get("direction") not in (None, "request") or get("error") is not None or not sacks
                or get("conn_id") is None):
            continue
        cid, k = get("conn_id"), get("cont_seq")
        key = (cid, k, tuple((int(a), int(b)) for a, b, _ in sacks))
        for left, right, claimed in sacks:
            if nonces is not None:
                expected = nonces.range_summary(cid, get("tcp_base"), left, right)
            elif key in accepted:
                expected = claimed
            else:
                continue
            row = {"left": int(left), "right": int(right), "claimed": int(claimed),
                   "expected": int(expected)}
            (good if claimed == expected else bad).append(row)
    if limit is not None:
        good = good[-limit:] if limit > 0 else []
    return bad + good


def run_nonce_rows(run: TourRun, limit: int = 40) -> list[dict[str, int]]:
    """Nonce rows of a tour run: its server pcap decoded, verdicts from its server events."""
    if not run.pcap or not Path(run.pcap).exists():
        return []

    cap = decode_pcap(run.pcap, events=False)
    return nonce_blocks(cap.packets, run.events, limit=limit)


# ---------------------------------------------------------------------------- figures, report
class ClockAligner:
    """Puts each event's `t` in seconds since the start of the run, event by event.

    Live runs stamp events with the wall clock (seconds since 1970), which makes unreadable
    axes; the aligner subtracts the first timestamp it sees. Should the two sides ever use
    different clocks (older runs: the server's wall clock against the client's monotonic one),
    the first event of a side more than `max_skew` seconds away from the first side's is
    rebased on its own first timestamp instead (the client's first event is the SYN it sends,
    the server's the SYN it receives: on loopback they are microseconds apart). With one clock,
    as in the simulator, every gap is kept exactly.
    """

    def __init__(self, max_skew: float = 1.0) -> None:
        self.max_skew = max_skew
        self.offsets: dict[str, float] = {}  # side -> what is subtracted from its times
        self._first: tuple[float, float] | None = None  # (first timestamp, its offset)
        self._lock = threading.Lock()

    def __call__(self, e: Event) -> Event:
        with self._lock:
            off = self.offsets.get(e.side)
            if off is None:
                if self._first is not None and abs(e.t - self._first[0]) <= self.max_skew:
                    off = self._first[1]  # the same clock as the side seen first
                else:
                    off = e.t
                if self._first is None:
                    self._first = (e.t, off)
                self.offsets[e.side] = off
        return replace(e, t=e.t - off, detail=dict(e.detail))

    def wrap(self, sink: Callable[[Event], None]) -> Callable[[Event], None]:
        """A sink that aligns each event, then hands it to `sink`."""
        return lambda e: sink(self(e))


def align_clocks(events: Iterable[Event], max_skew: float = 1.0) -> list[Event]:
    """`ClockAligner` over a finished list (each side's earliest event fixes its offset)."""
    evs = list(events)
    firsts: dict[str, Event] = {}
    for e in evs:
        if e.side not in firsts or e.t < firsts[e.side].t:
            firsts[e.side] = e
    al = ClockAligner(max_skew)
    for e in sorted(firsts.values(), key=lambda e: e.t):
        al(e)
    return [al(e) for e in evs]


async def watch(session: Any, dash: Any, timeout: float = 300.0) -> Any:
    """Run a `LiveSession` into a `viz.live.LiveDashboard` (times aligned by `ClockAligner`),
    drawing live while the transfer runs; returns the session's `LiveResult`. In a notebook:
    ``result = await watch(session, dash)``."""
    import asyncio

    aligner = ClockAligner()
    dash.mark("start")
    session.start(aligner.wrap(dash.feed))
    fut = asyncio.get_running_loop().run_in_executor(None, session.wait, timeout)
    await dash.run_until(fut.done)
    result = await fut
    # the wall clock of t = 0 (live runs stamp events with time.time()): lets a benchmark put
    # the transfer's first and last packet on the page's clock
    dash.mark("end", clock=aligner.offsets.get("server"))
    dash.finish()  # the page checks its last frame; static copies for the saved notebook
    return result


def tour_figures(events: Iterable[Event], nonce_rows: Iterable[Mapping[str, int]] = ()) -> dict:
    """The tour's four figures, keyed as FIGURE_ORDER (times from `align_clocks`)."""
    from trickles_kit.viz import figures as F  # lazy: plotly (lab extra); the tour runs without

    evs = align_clocks(events)
    return {
        "cwnd": F.cwnd_figure(evs),
        "trickles": F.trickle_tree_figure(evs),
        "time_sequence": F.time_sequence_figure(evs),
        "nonces": F.nonce_panel(list(nonce_rows)),
    }


def build_demo(out: str | Path = "reports/demo.html", size: int = 300_000,
               transport: str = "auto", loss: float = 0.01, seed: int = 1, *,
               drop_at: Iterable[int] | None = None) -> tuple[Path, TourRun]:
    """Run the tour headless and write the report: (its path, the run)."""
    run = run_tour(size=size, transport=transport, loss=loss, seed=seed, drop_at=drop_at)
    try:
        rows = run_nonce_rows(run)
    finally:
        run.cleanup()
    notes = [run.summary()]
    if run.banner:
        notes.append(run.banner)
    if rows:
        notes.append(f"Nonce checks: {len(rows)} SACK block(s) of the run's requests, as the "
                     "server verified them.")
    return write_report(out, tour_figures(run.events, rows), notes=notes), run


def run_demo(out: str | Path = "reports/demo.html", size: int = 300_000, transport: str = "auto",
             loss: float = 0.01, seed: int = 1, *, drop_at: Iterable[int] | None = None) -> Path:
    """Run the tour headless and write ONE self-contained HTML report; returns its path."""
    return build_demo(out, size, transport, loss, seed, drop_at=drop_at)[0]
