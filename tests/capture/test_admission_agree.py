"""The decoder and the server reach the same verdict on every request (issue 16).

For every reference capture in captures/ and for a lossy simulated transfer of over 10,000
packets, each request's verdict as the capture decoder derives it (`Capture.verdicts`: admitted,
or the refusal's reason) must equal the verdict of a real `ServerEngine` fed the very same
requests at their capture times: the server's verdict is the drop its events report while it
takes the request, or "admitted". Both go through `core.admission.admit`; what this holds them
to is that the decoder's view of the server's state (MAC verdicts, key epochs, the replay table
rebuilt from the capture) and its pairing give the server's answer. For the simulated transfer
the re-run engine's drop counters must also equal those of the engine that served the transfer,
so the re-run is the original server, not just another one.

`test_a_drifted_rule_is_caught` shows the comparison has teeth: a decoder whose replay rule
drifts from the server's disagrees.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from trickles_kit.apps.sim import LinkConfig, simulate_transfer
from trickles_kit.capture import decode_pcap, read_pcap
from trickles_kit.capture import events as cev
from trickles_kit.core import admission
from trickles_kit.core import events as ev
from trickles_kit.core.events import EventLog
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.net.ip import parse_ipv4

CAPS = Path(__file__).resolve().parents[2] / "captures"
INDEX = json.loads((CAPS / "index.json").read_text())
REFUSALS = {ev.DROP, ev.MAC_FAIL, ev.STALE_DROP, ev.NONCE_FAIL, ev.REPLAY_DROP}
NOT_A_REFUSAL = {"amplification_trim"}  # a SYN answered without its data: still answered


def server_verdicts(path: Path, secret: bytes, port: int, cfg: ServerConfig | None = None
                    ) -> tuple[dict[int, str], Counter]:
    """Each request of the capture (by record index) through a fresh engine at its capture
    time: the reason of the refusal its events report, or "admitted"; and the engine's
    counters."""
    log = EventLog()
    engine: ServerEngine | None = None
    out: dict[int, str] = {}
    for i, rec in enumerate(read_pcap(path)):
        ip = parse_ipv4(rec.data)
        if int.from_bytes(ip.payload[2:4], "big") != port:
            continue  # a response (or another service's traffic)
        if engine is None:
            # admission is the transport's: the application is left out (a handler that sends
            # nothing and drops nothing; the reference captures' user continuations were sealed
            # by older builds of the generator and would not open)
            engine = ServerEngine(secret, _silent, ip.dst, port, cfg, on_event=log)
        first = len(log.events)
        engine.receive(ip.payload, ip.src, rec.ts)
        refused = [e.detail["reason"] for e in log.events[first:]
                   if e.kind in REFUSALS and e.detail.get("reason") not in NOT_A_REFUSAL]
        out[i] = str(refused[0]) if refused else cev.ADMITTED
    assert engine is not None, "no request in the capture"
    return out, engine.counters


def _silent(msk) -> None:
    """A handler that fills no slot and drops nothing."""


def assert_agree(decoded: dict[int, str], served: dict[int, str]) -> None:
    assert decoded.keys() == served.keys(), "the two sides saw different requests"
    differ = {i: (decoded[i], served[i]) for i in decoded if decoded[i] != served[i]}
    assert not differ, (f"{len(differ)} of {len(decoded)} verdicts differ (decoder, server): "
                        f"{dict(list(differ.items())[:10])}")


@pytest.mark.parametrize("name", sorted(INDEX))
def test_reference_capture_verdicts_agree(name: str) -> None:
    pcap = CAPS / f"{name}.pcap"
    secret = bytes.fromhex((CAPS / f"{name}.secret").read_text().strip())
    port = INDEX[name]["service_port"]
    cap = decode_pcap(pcap, secret, port)
    served, _ = server_verdicts(pcap, secret, port)
    assert_agree(cap.verdicts, served)


@pytest.fixture(scope="module")
def lossy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, dict, Counter]:
    """> 10,000 packets, losses, reordering and duplicates both ways, at the server endpoint."""
    path = tmp_path_factory.mktemp("agree") / "lossy.pcap"
    secret = bytes(range(32))
    link = {"loss": 0.03, "reorder": 0.03, "duplicate": 0.02}
    r = simulate_transfer(7_500_000, seed=11, secret=secret, pcap=str(path),
                          down=LinkConfig(**link), up=LinkConfig(**link))
    assert r.ok, r.summary()
    return path, secret, r.server, Counter(rec.ts >= 0 for rec in read_pcap(path))


def test_lossy_transfer_verdicts_agree(lossy) -> None:
    path, secret, original, count = lossy
    assert count[True] >= 10_000
    cap = decode_pcap(path, secret, 80)
    served, counters = server_verdicts(path, secret, 80)
    drops = {k: v for k, v in counters.items() if k.startswith("drop")}
    assert drops == {k: v for k, v in original.items() if k.startswith("drop")}
    kinds = Counter(served.values())
    assert kinds[cev.ADMITTED] > 1000 and set(kinds) - {cev.ADMITTED}, kinds  # refusals too
    assert_agree(cap.verdicts, served)
    # without the secret the decoder judges less, but never contradicts the server
    blind = decode_pcap(path, None, 80).verdicts
    assert all(blind[i] in (served[i], cev.UNANSWERED) for i in blind)


def test_a_drifted_rule_is_caught(lossy, monkeypatch) -> None:
    """A decoder whose replay rule drifted from the server's (here: a table that forgets
    every use, as a copy that lost its key rule would) no longer agrees with the server."""
    path, secret, _, _ = lossy
    served, _ = server_verdicts(path, secret, 80)
    assert admission.Reason.REPLAY in set(served.values())  # duplicates: replays to judge

    def forgetful(self, key: int, now: float, sealed: float, row) -> None:
        return None

    monkeypatch.setattr(cev._CaptureView, "seen", forgetful)
    decoded = decode_pcap(path, secret, 80).verdicts
    with pytest.raises(AssertionError, match="verdicts differ"):
        assert_agree(decoded, served)
