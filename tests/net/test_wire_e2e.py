"""The real wire: `trickles serve` + `trickles fetch` over raw sockets and UDP, as processes.

Root is needed for raw sockets and namespaces (CI runs as root); outside CI these tests skip with
a message that says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wire_helpers import (
    need_root,
    need_tool,
    nobody_argv,
    rss_kib,
    server_process,
    sha256_file,
    trickles_argv,
    world_readable_copy,
)

pytestmark = pytest.mark.e2e
BIG = 50_000_000


@pytest.fixture(scope="module")
def www() -> Iterator[Path]:
    # world-readable (pytest's tmp dirs are 0700): the unprivileged runs must read it too
    d = Path(tempfile.mkdtemp(prefix="tk-www-"))
    os.chmod(d, 0o755)
    with open(d / "big.bin", "wb") as f:
        for _ in range(BIG // (1 << 20) + 1):
            f.write(os.urandom(1 << 20))
        f.truncate(BIG)
    (d / "small.txt").write_bytes(b"hello, stateless world\n" * 4000)
    for p in d.iterdir():
        os.chmod(p, 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def fetch_json(url: str, out: Path, *extra: str, timeout: float = 300) -> dict:
    p = subprocess.run(trickles_argv("fetch", url, "-o", str(out), "--json", *extra),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    return json.loads(p.stdout)


def test_raw253_50mb_byte_exact(www: Path, tmp_path: Path) -> None:
    need_root("raw IP protocol 253")
    port = 18080
    with server_process(trickles_argv("serve", "--root", str(www), "--transport", "raw",
                                      "--port", str(port))):
        r = fetch_json(f"http://127.0.0.1:{port}/big.bin", tmp_path / "big.bin",
                       "--transport", "raw")
    assert r["ok"] and r["status"] == 200 and r["bytes"] == BIG
    assert sha256_file(tmp_path / "big.bin") == sha256_file(www / "big.bin")


def test_udp_50mb_as_unprivileged_user(www: Path, tmp_path: Path) -> None:
    need_root("dropping privileges with setpriv")
    need_tool("setpriv")
    port = 18081
    out = Path(tempfile.mkdtemp(prefix="tk-out-"))
    os.chmod(out, 0o777)
    with world_readable_copy() as pkg:
        env = dict(os.environ, PYTHONPATH=str(pkg))
        serve = nobody_argv(trickles_argv("serve", "--root", str(www), "--transport", "udp",
                                          "--port", str(port)))
        p = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=pkg)
        try:
            line = p.stdout.readline() if p.stdout else ""
            assert "trickles serve:" in line, (line, p.stderr.read() if p.stderr else "")
            f = subprocess.run(
                nobody_argv(trickles_argv("fetch", f"http://127.0.0.1:{port}/big.bin", "-o",
                                          str(out / "big.bin"), "--transport", "udp", "--json")),
                capture_output=True, text=True, env=env, cwd=pkg, timeout=300)
        finally:
            p.terminate()
            p.wait(timeout=10)
    try:
        assert f.returncode == 0, f.stderr[-2000:]
        r = json.loads(f.stdout)
        assert r["ok"] and r["bytes"] == BIG
        assert sha256_file(out / "big.bin") == sha256_file(www / "big.bin")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_raw_without_privileges_is_one_clear_line(www: Path) -> None:
    need_root("dropping privileges with setpriv")
    need_tool("setpriv")
    with world_readable_copy() as pkg:
        env = dict(os.environ, PYTHONPATH=str(pkg))
        for argv in (trickles_argv("serve", "--root", str(www), "--transport", "raw"),
                     trickles_argv("fetch", "http://127.0.0.1:18082/x", "--transport", "raw")):
            p = subprocess.run(nobody_argv(argv), capture_output=True, text=True, env=env,
                               cwd=pkg, timeout=60)
            assert p.returncode != 0
            err = p.stderr.strip()
            assert "Traceback" not in err, err
            assert len(err.splitlines()) == 1, err
            assert "CAP_NET_RAW" in err and "--transport udp" in err, err


def test_proto6_in_a_namespace_pair(www: Path, tmp_path: Path) -> None:
    need_root("network namespaces")
    need_tool("iptables")
    from trickles_kit.net.netns import NetnsPair

    port = 18083
    with NetnsPair(tag=f"e{os.getpid() % 10000}") as ns:
        serve = ns.exec_argv(ns.a, trickles_argv(
            "serve", "--root", str(www), "--transport", "raw", "--ip-proto", "6",
            "--addr", ns.addr_a, "--port", str(port), "--mss", "1200",
            "--pcap", str(tmp_path / "server6.pcap")))
        with server_process(serve):
            f = subprocess.run(ns.exec_argv(ns.b, trickles_argv(
                "fetch", f"http://{ns.addr_a}:{port}/big.bin", "-o", str(tmp_path / "b6"),
                "--transport", "raw", "--ip-proto", "6", "--mss", "1200", "--json")),
                capture_output=True, text=True, timeout=300)
    assert f.returncode == 0, f.stderr[-2000:]
    assert json.loads(f.stdout)["bytes"] == BIG
    assert sha256_file(tmp_path / "b6") == sha256_file(www / "big.bin")
    check_pcap(tmp_path / "server6.pcap", tcp=True)


def check_pcap(path: Path, tcp: bool) -> None:
    """tcpdump and tshark read the capture with no malformed packets or bad checksums."""
    tcpdump = need_tool("tcpdump")
    p = subprocess.run([tcpdump, "-nn", "-r", str(path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines, "empty capture"
    assert not [ln for ln in lines if "truncated" in ln or "bad " in ln.lower()][:1]
    tshark = need_tool("tshark")
    flt = "_ws.malformed || _ws.expert.severity >= error"
    # Without the Trickles dissector, tshark 4.0's DNS-over-UDP heuristic claims some Trickles
    # datagrams (their first bytes happen to look like a DNS header) and calls them malformed
    # DNS: that is tshark guessing, not a bad packet, so the guess is switched off.
    args = [tshark, "-n", "--disable-heuristic", "dns_udp", "-r", str(path), "-Y", flt]
    if tcp:
        args[1:1] = ["-o", "tcp.check_checksum:TRUE"]
        args[-1] = flt + " || tcp.checksum.status == 0"
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", p.stdout[:2000]


def test_endpoint_pcaps_open_in_tcpdump_and_tshark(www: Path, tmp_path: Path) -> None:
    need_root("raw IP protocol 253")
    for transport, port in (("raw", 18084), ("udp", 18085)):
        srv, cli = tmp_path / f"s-{transport}.pcap", tmp_path / f"c-{transport}.pcap"
        with server_process(trickles_argv("serve", "--root", str(www), "--transport",
                                          transport, "--port", str(port), "--pcap", str(srv))):
            fetch_json(f"http://127.0.0.1:{port}/small.txt", tmp_path / f"small-{transport}",
                       "--transport", transport, "--pcap", str(cli))
        for path in (srv, cli):
            check_pcap(path, tcp=False)


def test_server_killed_and_restarted_mid_transfer(www: Path, tmp_path: Path) -> None:
    need_root("raw IP protocol 253")
    port = 18086
    secret = tmp_path / "secret.hex"
    ev2 = tmp_path / "second.jsonl"
    serve = trickles_argv("serve", "--root", str(www), "--transport", "raw", "--port",
                          str(port), "--secret-file", str(secret))
    first = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "trickles serve:" in first.stdout.readline()
    fetch = subprocess.Popen(
        trickles_argv("fetch", f"http://127.0.0.1:{port}/big.bin", "-o", str(tmp_path / "k"),
                      "--transport", "raw", "--json", "--events", str(tmp_path / "c.jsonl")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once a few MB have arrived
            if (tmp_path / "k").exists() and (tmp_path / "k").stat().st_size > 5_000_000:
                break
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        got_at_kill = (tmp_path / "k").stat().st_size
        assert got_at_kill < BIG, "the transfer ended before the kill; make the file bigger"
        time.sleep(0.3)
        with server_process([*serve, "--events", str(ev2)]):
            out, err = fetch.communicate(timeout=300)
    finally:
        if fetch.poll() is None:
            fetch.kill()
    assert fetch.returncode == 0, err[-2000:]
    r = json.loads(out)
    assert r["ok"] and r["bytes"] == BIG
    assert sha256_file(tmp_path / "k") == sha256_file(www / "big.bin")
    kinds = [json.loads(line)["kind"] for line in ev2.read_text().splitlines()]
    assert "syn" not in kinds, "no new handshake: the restarted server saw no SYN"
    assert kinds.count("continue") + kinds.count("initial") > 100, "it served the rest"


def test_hundred_concurrent_fetches_one_process(www: Path) -> None:
    need_root("raw IP protocol 253")
    from trickles_kit.net.ip import aton
    from trickles_kit.net.raw import RawTransport
    from trickles_kit.net.runner import ClientHost

    port = 18087
    body = (www / "small.txt").read_bytes()
    with server_process(trickles_argv("serve", "--root", str(www), "--transport", "raw",
                                      "--port", str(port))):
        tr = RawTransport("127.0.0.2")
        host = ClientHost(tr, aton("127.0.0.1"), port)
        req = f"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        conns = [host.open(req, keep=True) for _ in range(100)]
        assert host.run_until(host.all_finished, timeout=120)
        host.shutdown()
        tr.close()
    for c in conns:
        stream = b"".join(c.chunks)
        assert c.done and stream.endswith(body) and b"200 OK" in stream.split(b"\r\n")[0]


def test_garbage_flood_while_fetching(www: Path, tmp_path: Path) -> None:
    need_root("raw IP protocol 253")
    port = 18088
    with server_process(trickles_argv("serve", "--root", str(www), "--transport", "raw",
                                      "--port", str(port))) as srv:
        # one ordinary transfer first, so the figure is what the flood adds, not warm-up
        fetch_json(f"http://127.0.0.1:{port}/big.bin", tmp_path / "warm", "--transport", "raw")
        rss0 = rss_kib(srv.pid)
        stop = threading.Event()
        sent = [0]

        def flood() -> None:  # bounded: 20,000 packets/s for 10 s at most
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
            rnd = bytearray(os.urandom(1 << 16))
            dport = port.to_bytes(2, "big")
            for i in range(0, 60000):  # every datagram below is addressed to the server's port
                if i % 4 == 2:
                    rnd[i : i + 2] = dport
            t0 = time.monotonic()
            while not stop.is_set() and time.monotonic() - t0 < 10.0:
                target = int((time.monotonic() - t0) * 20_000)
                while sent[0] < target:
                    i = (sent[0] % 15000) * 4
                    s.sendto(rnd[i : i + 40 + i % 900], ("127.0.0.1", 0))
                    sent[0] += 1
                time.sleep(0.001)
            s.close()

        th = threading.Thread(target=flood)
        th.start()
        try:
            r = fetch_json(f"http://127.0.0.1:{port}/big.bin", tmp_path / "f", "--transport",
                           "raw")
        finally:
            th.join(timeout=15)
            stop.set()
        rss1 = rss_kib(srv.pid)
    assert r["ok"] and sha256_file(tmp_path / "f") == sha256_file(www / "big.bin")
    assert sent[0] > 50_000, f"the flood sent only {sent[0]} packets"
    assert rss1 - rss0 < 5 * 1024, f"server RSS grew {rss1 - rss0} KiB"

