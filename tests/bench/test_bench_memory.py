"""The memory experiment: live connections at the measurement, TCP sockets counted, nothing left.

The root tests run `bench.memory.run` with 1, 10 and 50 connections in two namespaces; the
others exercise the many-connection TCP server and client on loopback and the parsers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.wire_helpers import REPO, free_port, need_root
from trickles_kit.bench import memory, tcpmany
from trickles_kit.net.topology import list_namespaces

SS_SAMPLE = """\
ESTAB 0 0 10.0.0.2:8080 10.0.0.1:40000
\t skmem:(r100,rb131072,t0,tb46080,f3996,w0,o0,bl0,d0)
ESTAB 0 1448 10.0.0.2:8080 10.0.0.1:40001
\t skmem:(r0,rb131072,t0,tb46080,f2648,w2696,o64,bl0,d0)
"""


def test_skmem_sum_adds_what_the_sockets_are_charged() -> None:
    t = tcpmany.skmem_sum(SS_SAMPLE)
    assert t["sockets"] == 2
    assert t["rmem_alloc"] == 100 and t["wmem_queued"] == 2696 and t["optmem"] == 64
    assert t["charged"] == 100 + 3996 + 2648 + 2696 + 64
    assert tcpmany.skmem_sum("")["sockets"] == 0


def test_slope_is_least_squares_and_needs_two_points() -> None:
    assert memory.slope([1, 10, 100], [5.0, 50.0, 500.0]) == pytest.approx(5.0)
    assert memory.slope([1, 1], [2.0, 3.0]) is None
    assert memory.slope([1, 2, 3], [1.0, None, 3.0]) == pytest.approx(1.0)


def test_sockstat_parses_this_namespace() -> None:
    s = tcpmany.sockstat()
    assert "inuse" in s["TCP"] and "mem" in s["TCP"]


def _tcp_server(port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "trickles_kit.bench.tcpmany", "serve", "--bind",
                          "127.0.0.1", "--port", str(port), "--nofile", "1024"],
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout is not None
    assert json.loads(p.stdout.readline())["phase"] == "serving"
    return p


def test_tcp_many_client_parks_resumes_byte_exact_and_server_counts_bad_input() -> None:
    port = free_port(socket.SOCK_STREAM)
    srv = _tcp_server(port)
    try:
        cli = subprocess.Popen([sys.executable, "-m", "trickles_kit.bench.tcpmany", "client",
                                "--host", "127.0.0.1", "--port", str(port), "-n", "20",
                                "--size", "40000", "--window", "8", "--timeout", "30"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=REPO)
        assert cli.stdin is not None and cli.stdout is not None
        parked = json.loads(cli.stdout.readline())
        assert parked["phase"] == "parked" and parked["alive"] == 20
        assert 0 < parked["body_bytes_read"] < 20 * 40000  # mid-transfer, not done
        cli.stdin.write("resume\n")
        cli.stdin.flush()
        idle = json.loads(cli.stdout.readline())
        assert idle["byte_exact"] == 20 and idle["states"] == {"done": 20}
        cli.stdin.write("close\n")
        cli.stdin.flush()
        assert json.loads(cli.stdout.readline()) == {"phase": "closed", "closed": 20}
        cli.wait(10)
        for bad in (b"GET /etc/passwd HTTP/1.1\r\n\r\n",
                    b"GET /gen?size=999999999&seed=1 HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(bad)
                assert s.recv(100).split()[1] in (b"404", b"413")
        time.sleep(0.2)
    finally:
        srv.terminate()
        out = srv.communicate(timeout=10)[0]
    final = json.loads(out.strip().splitlines()[-1])
    assert final["requests"] == 20 and final["accepted"] == 22
    assert final["bad_request"] == 1 and final["too_large"] == 1 and final["open"] == 0


def _ours() -> list[str]:
    return [n for n in list_namespaces() if n.startswith(f"tkm{os.getpid() % 100000}")]


def test_memory_quick_run_live_connections_counted_and_undone(tmp_path: Path) -> None:
    need_root("the memory experiment (namespaces, raw sockets)")
    res = memory.run(True, tmp_path, levels=[1, 10, 50], argv=["test"])
    assert json.loads((tmp_path / "memory.json").read_text())["summary"] == res["summary"]
    assert [r["connections"] for r in res["trickles"]] == [1, 10, 50]
    for r in res["trickles"]:
        n = r["connections"]
        assert r["client_at_measure"]["alive"] == n  # parked mid-transfer, none finished
        assert r["client_after_resume"]["byte_exact"] == n  # ... and alive: they completed
        assert r["requests_before_measure"] >= n
        assert r["server_rss_bytes"] > 0
    for r in res["tcp"]:
        n = r["connections"]
        assert r["client_at_measure"]["alive"] == n
        assert r["client_after_resume"]["byte_exact"] == n
        assert r["sockstat_tcp_inuse_at_measure"] == n + 1  # the server's namespace only
        assert r["at_measure"]["skmem_server"]["sockets"] == n
        assert r["at_measure"]["skmem_client"]["sockets"] == n
        assert r["server_final"]["requests"] == n and r["server_final"]["open"] == 0
    s = res["summary"]
    assert s["all_alive_at_measure"] and s["all_byte_exact"] and s["tcp_sockstat_inuse_matches"]
    assert isinstance(s["trickles_bytes_per_connection"], float)
    assert isinstance(s["tcp_bytes_per_connection"], float)
    assert res["namespaces_left"] == [] and _ours() == []


def test_memory_run_undoes_everything_when_a_level_fails(tmp_path: Path, monkeypatch) -> None:
    need_root("the memory experiment (namespaces, raw sockets)")

    def boom(*a: object) -> dict:
        assert len(_ours()) == 2  # the client and server namespaces exist meanwhile
        raise RuntimeError("injected failure")

    monkeypatch.setattr(memory, "_tcp_level", boom)
    with pytest.raises(RuntimeError, match="injected"):
        memory.run(True, tmp_path, levels=[1], argv=["test"])
    assert _ours() == []
    assert not (tmp_path / "memory.json").exists()
