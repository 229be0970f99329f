"""The Linux TCP baseline server: byte-exact files and generated content, Range resumes, 404s."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from trickles_kit.apps.generated import generated_bytes
from trickles_kit.bench.tcphttp import TcpHttpServer, fetch


@pytest.fixture
def server(tmp_path: Path):
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 1200)
    srv = TcpHttpServer(("127.0.0.1", 0), tmp_path, cc="reno")
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv.server_address[1], tmp_path
    srv.shutdown()
    srv.server_close()


def test_file_whole_and_resumed(server) -> None:
    port, root = server
    want = (root / "f.bin").read_bytes()
    assert fetch("127.0.0.1", port, "/f.bin") == (200, want)
    status, tail = fetch("127.0.0.1", port, "/f.bin", start=1000)
    assert status == 206 and tail == want[1000:]


def test_generated_matches_the_trickles_app(server) -> None:
    port, _ = server
    status, body = fetch("127.0.0.1", port, "/gen?size=200000&seed=7")
    assert status == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(generated_bytes(7, 0, 200000)).digest()
    _, tail = fetch("127.0.0.1", port, "/gen?size=200000&seed=7", start=123457)
    assert tail == generated_bytes(7, 123457, 200000)


def test_missing_and_escaping_paths_are_404(server) -> None:
    port, _ = server
    assert fetch("127.0.0.1", port, "/nope")[0] == 404
    assert fetch("127.0.0.1", port, "/../../etc/passwd")[0] == 404
