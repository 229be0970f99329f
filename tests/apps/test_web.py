"""The HTTP/1.1 web server over Trickles (apps/web.py): whole transfers and range arithmetic.

Expected response streams are built here independently of the handler's own rendering.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
from pathlib import Path

import pytest

from trickles_kit.apps.generated import generated_bytes
from trickles_kit.apps.sim import simulate_transfer
from trickles_kit.apps.web import WebServer, mark_hex, mark_key, watermark_body
from trickles_kit.core.client import ClientConfig
from trickles_kit.core.keys import hkdf
from trickles_kit.core.seal import UcontBox
from trickles_kit.core.server import Minisocket, OutSlot, ServerEngine

SECRET = bytes(range(32))
CLIENT = (socket.inet_aton("10.1.0.1"), 40000)
CID = 0x1122334455667788
LOSSES = [pytest.param(0.0, id="loss0"), pytest.param(0.05, id="loss5")]
REASON = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
          414: "URI Too Long", 500: "Internal Server Error"}
MARK_FILE_LEN = 3 * 65536 + 20  # ends inside the fourth stamp


def expected_stream(status: int, body: bytes = b"", ctype: str = "text/plain",
                    declared: int | None = None) -> bytes:
    """The complete HTTP response bytes (error bodies are "<status> <reason>\\n")."""
    if status != 200:
        body, ctype = f"{status} {REASON[status]}\n".encode(), "text/plain; charset=utf-8"
    head = (f"HTTP/1.1 {status} {REASON[status]}\r\n"
            f"Content-Length: {len(body) if declared is None else declared}\r\n"
            f"Content-Type: {ctype}\r\n"
            "Connection: close\r\n"
            "X-Trickles: stateless\r\n")
    if status == 405:
        head += "Allow: GET\r\n"
    return head.encode() + b"\r\n" + body


def naive_mark(data: bytes, key: bytes, client_id: str) -> bytes:
    tag = hashlib.blake2b(client_id.encode(), key=key).digest()[:8].hex().encode()
    stamp = b"<<TRICKLES-MARK " + tag + b">>"
    out = bytearray(data)
    for p in range(0, len(data), 65536):
        for i, c in enumerate(stamp):
            if p + i < len(out):
                out[p + i] = c
    return bytes(out)


def get(target: str, extra: str = "Host: h\r\n") -> bytes:
    return f"GET {target} HTTP/1.1\r\n{extra}\r\n".encode()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("web")
    root = base / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "small.txt").write_bytes(b"Hello, stateless world!\n" * 40)
    (root / "big.bin").write_bytes(random.Random(42).randbytes(3_000_000))
    (root / "empty.txt").write_bytes(b"")
    (root / "page.html").write_bytes(b"<html><body>hi</body></html>\n")
    (root / "sub" / "deeper" / "n o.txt").write_bytes(b"spaces in names\n")
    (root / "marked.txt").write_bytes(random.Random(7).randbytes(MARK_FILE_LEN))
    (base / "secret.txt").write_bytes(b"TOP SECRET\n")
    os.symlink(base / "secret.txt", root / "escape.txt")
    os.symlink(base, root / "up")
    os.symlink("small.txt", root / "alias.txt")
    return root


@pytest.fixture(scope="module")
def web(site: Path) -> WebServer:
    w = WebServer(site)
    w.attach(ServerEngine(SECRET, w, socket.inet_aton("10.0.0.1"), 80))
    yield w
    w.close()


def transfer(web: WebServer, request: bytes, expected: bytes, loss: float = 0.0,
             seed: int = 1, **kw) -> None:
    r = simulate_transfer(len(expected), loss=loss, seed=seed, handler=web, request=request,
                          secret=SECRET,
                          expected_sha256=hashlib.sha256(expected).hexdigest(), **kw)
    assert r.ok, r.summary()
    assert r.bytes == len(expected)


# ---------------------------------------------------------------- whole transfers
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name,ctype", [("small.txt", "text/plain"), ("page.html", "text/html"),
                                        ("big.bin", "application/octet-stream"),
                                        ("empty.txt", "text/plain")])
def test_static_files(web, site, loss, name, ctype) -> None:
    body = (site / name).read_bytes()
    transfer(web, get("/" + name), expected_stream(200, body, ctype), loss)


@pytest.mark.parametrize("loss", LOSSES)
def test_static_without_syn_data(web, site, loss) -> None:
    body = (site / "small.txt").read_bytes()
    transfer(web, get("/small.txt"), expected_stream(200, body), loss, seed=5,
             client_config=ClientConfig(syn_data=False))


def test_static_variants(web, site) -> None:
    small = (site / "small.txt").read_bytes()
    transfer(web, get("/alias.txt"), expected_stream(200, small))  # symlink inside the root
    transfer(web, b"GET /small.txt?x=1 HTTP/1.0\r\n\r\n", expected_stream(200, small))
    transfer(web, b"GET http://h/small.txt HTTP/1.1\r\n\r\n", expected_stream(200, small))
    transfer(web, get("/sub/deeper/n%20o.txt"), expected_stream(200, b"spaces in names\n"))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("request_bytes,status", [
    (get("/nope.txt"), 404),
    (get("/sub"), 404),  # a directory
    (get("/"), 404),
    (b"POST /small.txt HTTP/1.1\r\n\r\n", 405),
    (b"HEAD /small.txt HTTP/1.1\r\n\r\n", 405),
    (b"\x16\x03\x01\x02\x00garbage", 400),
    (b"GET /small.txt\r\n\r\n", 400),
    (b"GET small.txt HTTP/1.1\r\n\r\n", 400),
    (b"GET /small.txt HTTP/2.0\r\n\r\n", 400),
    (b"GET /%ff HTTP/1.1\r\n\r\n", 400),
    (b"GET /a%00b HTTP/1.1\r\n\r\n", 400),
    (get("/" + "a" * 3000), 414),
], ids=["missing", "dir", "root", "post", "head", "tls", "http09", "relative", "h2",
        "badutf8", "nul", "long"])
def test_errors(web, loss, request_bytes, status) -> None:
    transfer(web, request_bytes, expected_stream(status), loss)


@pytest.mark.parametrize("target", [
    "/../secret.txt", "/%2e%2e/secret.txt", "/sub/../small.txt", "//etc/passwd",
    "/%2Fetc/passwd", "/escape.txt", "/up/secret.txt", "/mark/../secret.txt?id=a",
    "/mark/escape.txt?id=a", "/mark//etc/passwd?id=a",
])
def test_traversal_refused(web, target) -> None:
    transfer(web, get(target), expected_stream(404))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("size,seed", [(0, 1), (1, 2), (1448, 3), (100_000, 4), (1_000_000, 5)])
def test_generated(web, loss, size, seed) -> None:
    body = generated_bytes(seed, 0, size)
    transfer(web, get(f"/gen?size={size}&seed={seed}"),
             expected_stream(200, body, "application/octet-stream"), loss)


@pytest.mark.parametrize("query", ["", "size=10", "seed=1", "size=-1&seed=1", "size=1&seed=x",
                                   "size=1&seed=1&size=2", f"size=1&seed={1 << 64}",
                                   f"size={1 << 32}&seed=1"])
def test_generated_bad_query(web, query) -> None:
    transfer(web, get("/gen?" + query), expected_stream(400))


@pytest.mark.parametrize("loss", LOSSES)
def test_watermark(web, site, loss) -> None:
    data = (site / "marked.txt").read_bytes()
    key = hkdf(SECRET, b"trickles-kit watermark", 32)
    assert web.mark_key == key == mark_key(SECRET)
    bodies = {}
    for cid in ("alice", "bob@example.org"):
        tag = mark_hex(key, cid)
        body = watermark_body(data, tag)
        assert body == naive_mark(data, key, cid)
        transfer(web, get(f"/mark/marked.txt?id={cid.replace('@', '%40')}"),
                 expected_stream(200, body), loss, seed=3)
        bodies[cid] = body
    a, b = bodies.values()
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    assert diff and all(i % 65536 < 34 for i in diff)
    assert {i // 65536 for i in diff} == {0, 1, 2, 3}  # the last stamp is truncated
    assert a[-20:] == b"<<TRICKLES-MARK " + mark_hex(key, "alice").encode()[:4]
    assert a[34:65536] == data[34:65536]


def test_watermark_bad_requests(web) -> None:
    for target in ("/mark/marked.txt", "/mark/marked.txt?id=", "/mark/marked.txt?id=a&id=b",
                   "/mark/marked.txt?id=" + "x" * 300):
        transfer(web, get(target), expected_stream(400))
    transfer(web, get("/mark/nope.txt?id=a"), expected_stream(404))


def test_watermark_helpers() -> None:
    with pytest.raises(ValueError):
        watermark_body(b"x", "XYZ")
    assert watermark_body(b"", "0123456789abcdef") == b""
    assert watermark_body(b"abc", "0123456789abcdef") == b"<<T"
    assert mark_hex(b"k" * 32, "id") == mark_hex(b"k" * 32, b"id") != mark_hex(b"j" * 32, "id")


# ---------------------------------------------------------------- handler, by hand
def call(web: WebServer, ranges, request: bytes = b"", ucont: bytes = b"", kind: str = "REQUEST",
         budget: int = 1448, cid: int = CID) -> Minisocket:
    slots = [OutSlot(i + 1, budget, r) for i, r in enumerate(ranges)]
    msk = Minisocket(kind, CLIENT, cid, request, ucont, [r for r in ranges if r], slots, 1.0)
    web(msk)
    return msk


def check_slots(msk: Minisocket, stream: bytes) -> None:
    total = len(stream)
    for slot in msk.slots:
        if slot.range is None:
            assert slot.data == b"" and slot.finhint == total
            continue
        s, e = slot.range
        # a user continuation the request did not carry takes its room from the data
        room = slot.budget - len(slot.ucont) if slot.ucont != msk.ucont else slot.budget
        end = min(e, total, s + room)
        if s < end:
            assert slot.byte_num == s and slot.data == stream[s:end], (s, e)
            assert slot.fin == (end == total)
        else:
            assert slot.data == b""
        assert (slot.finhint == total) == (end >= total or s >= end)


def header_len(stream: bytes) -> int:
    return stream.index(b"\r\n\r\n") + 4


@pytest.mark.parametrize("what", ["static", "gen", "mark", "error"])
def test_any_range_is_computable(web, site, what) -> None:
    key = mark_key(SECRET)
    if what == "static":
        request = get("/big.bin")
        stream = expected_stream(200, (site / "big.bin").read_bytes(), "application/octet-stream")
    elif what == "gen":
        request = get("/gen?size=300000&seed=9")
        stream = expected_stream(200, generated_bytes(9, 0, 300_000), "application/octet-stream")
    elif what == "mark":
        request = get("/mark/marked.txt?id=carol")
        body = naive_mark((site / "marked.txt").read_bytes(), key, "carol")
        stream = expected_stream(200, body)
    else:
        request = get("/missing")
        stream = expected_stream(404)
    h, total = header_len(stream), len(stream)
    rng = random.Random(what)
    ranges = [(0, 5), (h - 5, h + 10), (h - 1, h), (h, h + 1), (0, total + 100), None,
              (total - 3, total), (total, total + 10), (total + 50, total + 60)]
    for k in range(4):  # around stamp positions (and the same offsets for the other kinds)
        p = h + k * 65536
        ranges += [(p - 3, p + 40), (p + 10, p + 20), (p + 33, p + 35), (p - 1, p + 1)]
    for _ in range(20):
        s = rng.randrange(total + 1)
        ranges.append((s, s + rng.randrange(1, 5000)))
    first = call(web, ranges, request=request, budget=200_000)
    check_slots(first, stream)
    sealed = first.slots[0].ucont
    assert sealed and all(slot.ucont == sealed for slot in first.slots)  # sealed once
    web._descs.clear()  # a replica that never saw the connection
    for budget in (1448, 200_000):
        later = call(web, ranges, ucont=sealed, budget=budget)
        assert not later.dropped
        check_slots(later, stream)
        assert all(slot.ucont == sealed for slot in later.slots)  # passed on, not re-sealed
    syn = call(web, [(0, 1448)], request=request, kind="SYN")
    check_slots(syn, stream)


def test_gen_size_cap(web) -> None:
    limit = 0xFFFFFFFF
    n = limit - len(expected_stream(200, b"", "application/octet-stream", declared=limit))
    while n + len(expected_stream(200, b"", "application/octet-stream", declared=n)) > limit:
        n -= 1
    ok = call(web, [None, (limit - 10, limit)], request=get(f"/gen?size={n}&seed=1"))
    assert ok.slots[0].finhint == n + header_len(
        expected_stream(200, b"", "application/octet-stream", declared=n))
    assert ok.slots[1].data == generated_bytes(1, n - 10, n) and ok.slots[1].fin
    too_big = call(web, [(0, 1000)], request=get(f"/gen?size={n + 1}&seed=1"))
    assert too_big.slots[0].data == expected_stream(400)


def test_file_too_large_for_the_stream(web, site) -> None:
    huge = site / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(1 << 32)  # sparse
    try:
        msk = call(web, [(0, 1000)], request=get("/huge.bin"))
        assert msk.slots[0].data == expected_stream(500)
    finally:
        huge.unlink()


def test_file_changes_keep_the_declared_length(web, site, tmp_path) -> None:
    f = site / "changing.txt"
    original = bytes(range(256)) * 4
    f.write_bytes(original)
    try:
        stream = expected_stream(200, original)
        h = header_len(stream)
        first = call(web, [(0, 100)], request=get("/changing.txt"))
        sealed = first.slots[0].ucont
        f.write_bytes(original[:500])  # shrank: the rest is zeros, the length is kept
        msk = call(web, [(h + 400, h + 1024)], ucont=sealed)
        assert msk.slots[0].data == original[400:500] + bytes(524) and msk.slots[0].fin
        f.write_bytes(b"X" * 5000)  # grew (and changed): served up to the declared length
        msk = call(web, [(h + 1000, h + 3000), None], ucont=sealed)
        assert msk.slots[0].data == b"X" * 24 and msk.slots[1].finhint == len(stream)
        f.unlink()  # replaced by a symlink out of the root: never served, zeros instead
        os.symlink(site.parent / "secret.txt", f)
        msk = call(web, [(h, h + 20)], ucont=sealed)
        assert msk.slots[0].data == bytes(20)
        f.unlink()  # gone
        msk = call(web, [(h, h + 20)], ucont=sealed)
        assert msk.slots[0].data == bytes(20)
        f.write_bytes(original)  # back (a new inode: the cached descriptor is not reused)
        msk = call(web, [(h, h + 20)], ucont=sealed)
        assert msk.slots[0].data == original[:20]
    finally:
        f.unlink(missing_ok=True)


def test_tampered_ucont_is_dropped(web) -> None:
    first = call(web, [(0, 100)], request=get("/small.txt"))
    sealed = first.slots[0].ucont
    before = web.bad_ucont
    flipped = bytearray(sealed)
    flipped[20] ^= 1
    box = UcontBox(ServerEngine(SECRET, web, socket.inet_aton("10.0.0.1"), 80).keys)
    for bad in (bytes(flipped), sealed[:-1], sealed + b"\0", b"E404", b"\0" * 60,
                box.seal(b"not a descriptor", CID)):
        assert call(web, [(0, 100)], ucont=bad).dropped
    assert call(web, [(0, 100)], ucont=sealed, cid=CID + 1).dropped  # another connection's
    assert web.bad_ucont == before + 7
    assert not call(web, [(0, 100)], ucont=sealed).dropped


def test_bare_syn_and_fin_do_nothing(web) -> None:
    for kind in ("SYN", "FIN"):
        msk = call(web, [(0, 1448)], kind=kind)
        assert not msk.dropped
        assert msk.slots[0].data == b"" and msk.slots[0].ucont is None
        assert msk.slots[0].finhint is None


def test_attach_required(site) -> None:
    with pytest.raises(ValueError):
        call(WebServer(site), [(0, 10)], request=get("/small.txt"))
    with pytest.raises(ValueError):
        WebServer(site / "small.txt")


def test_caches_stay_bounded(site) -> None:
    w = WebServer(site, max_open=2, cache_entries=3)
    w.attach(ServerEngine(SECRET, w, socket.inet_aton("10.0.0.1"), 80))
    names = ["small.txt", "page.html", "empty.txt", "marked.txt"]
    try:
        seals = [call(w, [(0, 10)], request=get("/" + name), cid=CID + n).slots[0].ucont
                 for n, name in enumerate(names)]
        for _ in range(3):
            for n, name in enumerate(names):
                ctype = "text/html" if name.endswith(".html") else "text/plain"
                stream = expected_stream(200, (site / name).read_bytes(), ctype)
                msk = call(w, [(0, 4000)], ucont=seals[n], cid=CID + n, budget=4000)
                assert msk.slots[0].data == stream[:4000]
                assert len(w._fds) <= 2 and len(w._descs) <= 3
    finally:
        w.close()
    assert not w._fds


def test_routes_are_passed_in(site) -> None:
    """An application adds its own route without editing web.py; routes=() serves files only."""
    seen: list[bytes] = []

    class Echo:
        def __init__(self, web: WebServer) -> None:
            self.web = web

        def __call__(self, msk: Minisocket) -> bool:
            if not msk.request.startswith(b"GET /echo"):
                return False
            seen.append(msk.request)
            msk.drop()
            return True

    w = WebServer(site, routes=[Echo])
    w.attach(ServerEngine(SECRET, w, socket.inet_aton("10.0.0.1"), 80))
    msk = call(w, [(0, 100)], request=get("/echo"))
    assert seen == [get("/echo")] and msk.dropped
    msk = call(w, [(0, 100)], request=get("/small.txt"))  # not the route's: the file is served
    assert len(seen) == 1 and msk.slots[0].data.startswith(b"HTTP/1.1 200")
    plain = WebServer(site, routes=())
    plain.attach(ServerEngine(SECRET, plain, socket.inet_aton("10.0.0.1"), 80))
    assert plain.routes == [] and [type(r).__name__ for r in WebServer(site).routes] == \
        ["DynamicRoute", "ParallelRoute"]
    msk = call(plain, [(0, 100)], request=get("/dyn?size=10"))  # no /dyn route: a 404
    assert msk.slots[0].data.startswith(b"HTTP/1.1 404")
