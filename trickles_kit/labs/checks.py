"""Self-check helpers for the notebook exercises.

Every ``check_*`` function compares a student's answer (a value or a function) with what the
toolkit itself computes, and returns a readable verdict string that starts with ``"OK — "`` or
``"Not yet — "`` (the one wording of every notebook's checks). They never raise: a wrong type, a
crashing student function or a missing file all become a "Not yet" verdict that says what went
wrong, so a notebook always runs to the end. A "Not yet" hint teaches — a question, or where to
look and what to count — and never prints the expected value.

    from trickles_kit.labs import checks
    print(checks.check_cwnd(my_cwnd))
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from trickles_kit.capture import decode_pcap
from trickles_kit.core import plan as pl
from trickles_kit.core.cc import cwnd
from trickles_kit.core.server import ServerConfig
from trickles_kit.net import doctor

OK = "OK"
NOT_YET = "Not yet"

# Continuation fields under the MAC (PROTOCOL §3: bytes 0..5 and 18..58) and the client-owned
# ones outside it (bytes 6..17).
MAC_COVERED = frozenset({
    "type", "seq", "first_child", "timestamp", "mrtt", "state", "first_loss",
    "first_bootstrap_seq", "start_cwnd", "ssthresh", "tcp_base", "conn_id", "key_epoch",
})
CLIENT_OWNED = frozenset({"client_state", "parent", "client_timestamp"})

CAPTURES_DIR = Path(__file__).resolve().parents[2] / "captures"


def _ok(msg: str) -> str:
    return f"{OK} — {msg}"


def _no(msg: str) -> str:
    return f"{NOT_YET} — {msg}"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _arity(fn: Callable) -> int | None:
    """Number of positional parameters `fn` takes (None: *args or unknown)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    n = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            n += 1
    return n


def _call(fn: Callable, *args: Any) -> tuple[Any, str | None]:
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - a student's function may do anything
        return None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# ---------------------------------------------------------------------------- 00 setup
def check_transports(answer: Iterable[str]) -> str:
    """Which transports can *this* kernel/process use? `answer`: e.g. {"udp", "sim"}.

    The truth comes from `trickles doctor`: "raw" (raw IP sockets), "udp" and "sim" (always).
    """
    try:
        _, usable = doctor.core_ready(doctor.run_doctor())
        truth = set(usable) | {"sim"}
        if isinstance(answer, str):
            answer = [answer]
        got = {str(a).strip().lower() for a in answer}
    except Exception as e:  # noqa: BLE001
        return _no(f"could not check the answer ({type(e).__name__}: {e})")
    unknown = got - {"raw", "udp", "sim"}
    if unknown:
        return _no(f"unknown transport(s) {sorted(unknown)}; the choices are raw, udp and sim")
    if got == truth:
        return _ok(f"this machine can use {sorted(truth)}")
    missing, extra = truth - got, got - truth
    parts = []
    if missing:
        parts.append(f"{len(missing)} more transport(s) work here")
    if extra:
        parts.append(f"{len(extra)} of yours cannot be used here")
    return _no("; ".join(parts) + ". Which 'transports' rows of the doctor table say ok? "
               "(and what does the simulator need from the machine?)")


# ---------------------------------------------------------------------------- 01 tour
def check_initial_window(answer: Any, events: Iterable[Any] | None = None) -> str:
    """How many packets did the handshake's initial window hold? (`events`: the run's events;
    without them the server default, ServerConfig().initial_cwnd.)"""
    a = _as_int(answer)
    if a is None:
        return _no(f"answer with a whole number of packets, not {answer!r}")
    try:
        if events is not None:
            truth = _handshake_window(list(events))
            where = "in this run"
        else:
            truth = ServerConfig().initial_cwnd
            where = "with the default server configuration"
    except Exception as e:  # noqa: BLE001
        return _no(f"could not check the answer ({type(e).__name__}: {e})")
    if a == truth:
        return _ok(f"{truth} 'initial' packets {where}: one request on the handshake "
                   "continuation opened the whole first window")
    return _no(f"{where} the initial window had a different size; count the 'initial' "
               "markers in the trickle tree (or the events table)")


def _kind(e: Any) -> str | None:
    return _field(e, "kind")


def _field(e: Any, name: str) -> Any:
    return e.get(name) if isinstance(e, Mapping) else getattr(e, name, None)


def _handshake_window(events: list) -> int:
    """'initial' packets answering the first connection's handshake request (the one acking
    the SYN-ACK); a SLOWSTART restart after a timeout also emits 'initial' packets, later and
    on a higher ack, and is not counted."""
    initial = [e for e in events if _kind(e) == "initial" and _field(e, "side") != "client"]
    if not initial:
        return 0
    first = min(initial, key=lambda e: (_field(e, "t") or 0.0))
    key = (_field(first, "conn_id"), _field(first, "ack"))
    return sum(1 for e in initial if (_field(e, "conn_id"), _field(e, "ack")) == key)


# ---------------------------------------------------------------------------- 02 anatomy
def check_mac_fields(answer: Iterable[str]) -> str:
    """Which continuation fields does the MAC cover? `answer`: a set of field names as in
    `PacketRow` / the continuation inspector (e.g. {"seq", "tcp_base", ...})."""
    try:
        if isinstance(answer, str):
            answer = answer.replace(",", " ").split()
        got = {str(a).strip() for a in answer}
    except Exception as e:  # noqa: BLE001
        return _no(f"answer with a set of field names ({type(e).__name__}: {e})")
    got.discard("mac")
    unknown = got - MAC_COVERED - CLIENT_OWNED
    if unknown:
        return _no(f"not continuation fields: {sorted(unknown)}; see the inspector table")
    if got == MAC_COVERED:
        return _ok(f"all {len(MAC_COVERED)} server-owned fields are covered; the client-owned "
                   f"{sorted(CLIENT_OWNED)} are not (the client may rewrite them)")
    missing, wrong = MAC_COVERED - got, got & CLIENT_OWNED
    parts = []
    if missing:
        parts.append(f"{len(missing)} covered field(s) missing from your set")
    if wrong:
        parts.append(f"{len(wrong)} of your fields are client-owned")
    return _no("; ".join(parts) + ". Which fields could the tamper experiment change without "
               "a MAC failure?")


# ---------------------------------------------------------------------------- 03 cc
DEFAULT_EPOCHS = ((1, 3, 8), (1, 3, 3), (9, 3, 3), (1, 2, 16383), (100, 5, 12), (1, 1, 1),
                  (41, 2, 20))


def _cwnd_hint(n: int, tcp_base: int, start_cwnd: int, ssthresh: int) -> str:
    """A question about the phase `n` falls in; never the window itself."""
    if n < tcp_base:
        return "This is the ack that opened the epoch: what window does an epoch start with?"
    if n < tcp_base + ssthresh - start_cwnd:
        return "Slow start: by how much does each ack grow the window?"
    return ("Congestion avoidance (past ssthresh): how many acks does it take to grow the "
            "window by one packet?")


def check_cwnd(student_fn: Callable[..., int], epochs: Iterable[tuple[int, int, int]] | None = None,
               acks: int = 300) -> str:
    """Compare `student_fn` with the closed form `core.cc.cwnd` (itself checked against the
    reference `RenoStepper`).

    `student_fn(n)` uses the epoch TCPBase=1, startCwnd=3, ssthresh=8;
    `student_fn(n, tcp_base, start_cwnd, ssthresh)` is checked on several epochs. `n` runs from
    TCPBase - 1 (the ack that opened the epoch) over `acks` acks.
    """
    if not callable(student_fn):
        return _no(f"pass your function itself (cwnd, not cwnd(...)); got {student_fn!r}")
    arity = _arity(student_fn)
    if arity == 1:
        cases = [(1, 3, 8)]

        def call(n: int, b: int, s: int, t: int) -> tuple[Any, str | None]:
            return _call(student_fn, n)
    elif arity in (4, None):
        cases = list(epochs or DEFAULT_EPOCHS)

        def call(n: int, b: int, s: int, t: int) -> tuple[Any, str | None]:
            return _call(student_fn, n, b, s, t)
    else:
        return _no(f"your function takes {arity} arguments; write cwnd(n) or "
                   "cwnd(n, tcp_base, start_cwnd, ssthresh)")
    checked = 0
    for b, s, t in cases:
        for n in range(b - 1, b + acks):
            want = cwnd(n, b, s, t)
            got, err = call(n, b, s, t)
            where = f"n={n}" if arity == 1 else f"n={n}, tcp_base={b}, start_cwnd={s}, ssthresh={t}"
            if err is not None:
                return _no(f"cwnd({where}) raised {err}")
            if _as_int(got) != want:
                return _no(f"cwnd({where}) returned {got!r}, which is not Reno's window "
                           f"({checked} values matched before this one). {_cwnd_hint(n, b, s, t)}")
            checked += 1
    return _ok(f"{checked} values match the closed form (and so Reno stepped ack by ack)")


def split_count(tcp_base: int, start_cwnd: int, ssthresh: int, first_ack: int,
                last_ack: int) -> int:
    """Splits made by the requests acking first_ack..last_ack of one epoch without loss: the
    normal step emits cwnd(k) - cwnd(k-1) split packets for ack k (core/plan.py)."""
    if first_ack < tcp_base or last_ack < first_ack:
        raise ValueError("need tcp_base <= first_ack <= last_ack")
    return (cwnd(last_ack, tcp_base, start_cwnd, ssthresh)
            - cwnd(first_ack - 1, tcp_base, start_cwnd, ssthresh))


def check_split_count(answer: Any, events: Iterable[Any] | None = None, *, tcp_base: int = 1,
                      start_cwnd: int = 3, ssthresh: int = 8, first_ack: int = 1,
                      last_ack: int = 40) -> str:
    """How many splits? With `events`: the number of server 'split' events in that run.
    Without: the splits the requests acking first_ack..last_ack make in the given epoch."""
    a = _as_int(answer)
    if a is None:
        return _no(f"answer with a whole number, not {answer!r}")
    try:
        if events is not None:
            truth = sum(1 for e in events if _kind(e) == "split")
            hint = "count the 'split' events of the run (or the green triangles)"
        else:
            truth = split_count(tcp_base, start_cwnd, ssthresh, first_ack, last_ack)
            hint = ("when does one ack make two packets instead of one, and what does that do "
                    "to the window? Add those steps up over the acks")
    except Exception as e:  # noqa: BLE001
        return _no(f"could not check the answer ({type(e).__name__}: {e})")
    if a == truth:
        return _ok(f"{truth} splits — each one is a +1 of the window")
    return _no(f"{a} is {'too many' if a > truth else 'too few'}; {hint}")


# ---------------------------------------------------------------------------- 04 loss
def recovery_plan(tcp_base: int, start_cwnd: int, ssthresh: int, first_loss: int) -> dict:
    """The one deterministic recovery plan for a single loss of packet `first_loss`, as the
    server's own `plan_request` computes it: new_cwnd, last_regular, the new epoch's tcp_base,
    the acks that emit bootstrap packets, and the acks whose trickles terminate."""

    if first_loss < tcp_base:
        raise ValueError("first_loss must be >= tcp_base")
    last_regular = first_loss - 1 + cwnd(first_loss - 1, tcp_base, start_cwnd, ssthresh)
    bootstrap, terminate, new_cwnd, new_base = [], [], 0, 0
    for k in range(first_loss + 1, last_regular + 1):
        blocks = [(tcp_base, first_loss - 1), (first_loss + 1, k)]
        if first_loss == tcp_base:
            blocks = blocks[1:]
        p = pl.plan_request(k, tcp_base, start_cwnd, ssthresh, 0, blocks)
        new_cwnd = p.cwnd
        if any(s.kind == pl.BOOT for s in p.slots):
            bootstrap.append(k)
            new_base = next(s.tcp_base for s in p.slots if s.kind == pl.BOOT)
        if p.verdict == "terminate":
            terminate.append(k)
    return {"new_cwnd": new_cwnd, "last_regular": last_regular, "tcp_base": new_base,
            "bootstrap_acks": bootstrap, "terminate_acks": terminate}


RECOVERY_HINTS = {  # questions and pointers, never the value
    "new_cwnd": "what does Reno do to the window when it detects a loss, and what was the "
                "window when the lost packet was sent?",
    "last_regular": "the old window still sends every packet it had promised before the loss: "
                    "what is the highest packet number that window reaches?",
    "tcp_base": "where does the new epoch begin, relative to the old window's last packet?",
    "bootstrap_acks": "how many packets does the new window start with, and which acks of the "
                      "old window emit them? (compare the plan table of section 2)",
    "terminate_acks": "which acks after the loss come before the bootstrap acks, and what does "
                      "each of those trickles send?",
}


def check_recovery_answer(answer: Mapping[str, Any], *, tcp_base: int = 1, start_cwnd: int = 3,
                          ssthresh: int = 16383, first_loss: int = 4) -> str:
    """Check a prediction of the recovery plan for one lost packet. `answer` is a dict with any
    of: "new_cwnd", "last_regular", "tcp_base" (of the new epoch), "bootstrap_acks" (list),
    "terminate_acks" (list). Defaults: the epoch and loss of scenarios/recovery.txt."""
    if not isinstance(answer, Mapping) or not answer:
        return _no("answer with a dict, e.g. {'new_cwnd': ..., 'tcp_base': ...}")
    try:
        truth = recovery_plan(tcp_base, start_cwnd, ssthresh, first_loss)
    except Exception as e:  # noqa: BLE001
        return _no(f"could not compute the plan ({type(e).__name__}: {e})")
    unknown = set(answer) - set(truth)
    if unknown:
        return _no(f"unknown key(s) {sorted(unknown)}; use {sorted(truth)}")
    right, wrong = [], []
    for key, val in answer.items():
        want = truth[key]
        if isinstance(want, list):
            try:
                ok = sorted(int(v) for v in val) == want
            except (TypeError, ValueError):
                ok = False
        else:
            ok = _as_int(val) == want
        (right if ok else wrong).append(key)
    if not wrong:
        return _ok(f"{', '.join(right)} match the server's plan (every trickle computes "
                   "the same one)")
    hints = RECOVERY_HINTS
    lines = [f"right: {', '.join(right) or 'none yet'}; to revisit:"]
    lines += [f"  {k}: {hints[k]}" for k in wrong]
    return _no("\n".join(lines))


def check_block_summary(student_fn: Callable[[Mapping[int, int], int, int], int],
                        trials: int = 200) -> str:
    """`student_fn(p, left, right)` gets the per-packet nonces p (a dict packet -> 32-bit p_j)
    and must return the summary a SACK block [left, right] carries. Checked on random nonces
    made as the server makes them: p_j = r_j ^ r_(j+1)."""
    if not callable(student_fn):
        return _no(f"pass your function itself, not its result; got {student_fn!r}")
    rng = random.Random(2005)
    for i in range(trials):
        r = [rng.getrandbits(32) for _ in range(40)]
        p = {j: r[j] ^ r[j + 1] for j in range(39)}
        left = rng.randrange(0, 30)
        right = rng.randrange(left, 39)
        want = r[left] ^ r[right + 1]
        got, err = _call(student_fn, dict(p), left, right)
        if err is not None:
            return _no(f"summary(p, {left}, {right}) raised {err}")
        if _as_int(got) != want:
            return _no(f"summary(p, {left}, {right}) returned {got!r}, not the block's summary "
                       f"({i} blocks right before this one). Which packets' nonces does the "
                       "block [left, right] cover, and how does section 3 combine them?")
    return _ok(f"{trials} random blocks right; the XOR telescopes to r_L ^ r_(R+1), so the "
               "server checks a block in O(1) — and a client missing one p_j can only guess")


# ---------------------------------------------------------------------------- 05 captures
def reference_secret(name: str, captures_dir: str | Path | None = None) -> bytes | None:
    """The master secret of captures/NAME.pcap (captures/NAME.secret, hex), or None."""
    d = Path(captures_dir) if captures_dir is not None else CAPTURES_DIR
    path = d / f"{name}.secret"
    return bytes.fromhex(path.read_text().strip()) if path.exists() else None


def reference_capture(name: str, captures_dir: str | Path | None = None, **kw: Any):
    """captures/NAME.pcap decoded with its secret (`capture.decode_pcap`; `kw` passed on)."""
    d = Path(captures_dir) if captures_dir is not None else CAPTURES_DIR
    return decode_pcap(d / f"{name}.pcap", secret=reference_secret(name, d), **kw)


def capture_count(name: str, kind: str, captures_dir: str | Path | None = None) -> int:
    """Number of `kind` events the reference capture `name` decodes to (with its secret)."""
    cap = reference_capture(name, captures_dir)
    return sum(1 for e in cap.events if e.kind == kind)


def check_capture_count(name: str, kind: str, answer: Any,
                        captures_dir: str | Path | None = None) -> str:
    """How many `kind` events (retransmit, split, mac_fail...) are in captures/NAME.pcap?"""
    a = _as_int(answer)
    if a is None:
        return _no(f"answer with a whole number, not {answer!r}")
    try:
        truth = capture_count(name, kind, captures_dir)
    except Exception as e:  # noqa: BLE001
        return _no(f"could not decode captures/{name}.pcap ({type(e).__name__}: {e})")
    if a == truth:
        return _ok(f"{name}.pcap has {truth} '{kind}' event(s)")
    return _no(f"{a} is {'too many' if a > truth else 'too few'} '{kind}' events for "
               f"{name}.pcap: filter the events table on kind == '{kind}' and count the rows")
