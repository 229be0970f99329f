"""An answer carries a user continuation only when it differs from the one its request carried.

The client keeps the newest one it received, so resending an unchanged sealed blob (70 bytes for
the web app) in every data packet buys nothing; `ServerConfig(echo_ucont=True)` restores it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trickles_kit.apps.sim import simulate_transfer
from trickles_kit.apps.web import WebServer, http_header
from trickles_kit.capture.decode import decode_pcap
from trickles_kit.core.client import ClientConfig
from trickles_kit.core.server import ServerConfig

BODY = bytes(range(256)) * 600  # 153,600 bytes


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "f.bin").write_bytes(BODY)
    return root


def _fetch(site: Path, tmp_path: Path, echo: bool, loss: float = 0.0, seed: int = 3,
           mss: int = 1448):
    """Fetch /f.bin through the simulator; the result and the decoded response packets."""
    expected = http_header(200, "application/octet-stream", len(BODY)) + BODY
    pcap = tmp_path / f"echo{int(echo)}-{loss}-{mss}.pcap"
    r = simulate_transfer(len(expected), loss=loss, seed=seed, handler=WebServer(site),
                          request=b"GET /f.bin HTTP/1.1\r\n\r\n",
                          expected_sha256=hashlib.sha256(expected).hexdigest(),
                          server_config=ServerConfig(echo_ucont=echo, mss=mss),
                          client_config=ClientConfig(mss=mss), pcap=str(pcap))
    responses = [p for p in decode_pcap(pcap).packets if p.direction == "response"]
    return r, responses


def test_unchanged_user_continuation_is_not_resent(site: Path, tmp_path: Path) -> None:
    r, resp = _fetch(site, tmp_path, echo=False)
    assert r.ok, r.summary()
    data = [p for p in resp if p.data_len]
    carrying = [p for p in data if p.ucont_len]
    # the answers to the GET (which carried no user continuation) hold the new sealed state;
    # every later data packet answers a request that already carried it
    assert 0 < len(carrying) <= 3, [(p.seq, p.ucont_len) for p in carrying]
    assert all(p.mac_ok is not False for p in resp)
    first_plain = min(p.t for p in data if not p.ucont_len)
    assert all(p.t <= first_plain for p in carrying)  # only the first batch carries it


def test_echo_option_restores_the_old_wire(site: Path, tmp_path: Path) -> None:
    r_off, lean = _fetch(site, tmp_path, echo=False)
    r_on, echo = _fetch(site, tmp_path, echo=True)
    assert r_off.ok and r_on.ok
    assert all(p.ucont_len for p in echo if p.data_len)  # every data packet repeats it
    ulen = max(p.ucont_len for p in echo)
    saved = sum(p.length for p in echo) - sum(p.length for p in lean)
    n_data = sum(1 for p in echo if p.data_len)
    # the same transfer, the same packets, minus the repeated blob in all but the first batch
    assert saved >= ulen * (n_data - 3)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_byte_exact_under_loss_without_the_echo(site: Path, tmp_path: Path, seed: int) -> None:
    # losing the packets that carried the new user continuation makes the client resend its GET
    r, _ = _fetch(site, tmp_path, echo=False, loss=0.05, seed=seed)
    assert r.ok and r.sha256_received == r.sha256_sent


def test_new_user_continuation_takes_room_from_the_data(site: Path, tmp_path: Path) -> None:
    # mss 1362 = 1500 - IP 20 - TCP 20+8 - header 8 - continuation 75 - DATA chunk 7: every
    # packet fits a 1500-byte MTU, the first ones (which carry the new sealed state) included
    r, resp = _fetch(site, tmp_path, echo=False, seed=5, mss=1362)
    assert r.ok and r.sha256_received == r.sha256_sent, r.summary()
    assert max(p.length for p in resp) == 1500
    carrying = [p for p in resp if p.ucont_len and p.data_len]
    assert carrying and all(p.data_len == 1362 - p.ucont_len for p in carrying)
