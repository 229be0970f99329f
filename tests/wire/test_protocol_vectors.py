"""docs/protocol.md Appendix A: the test vectors are the code's bytes, and they say what the
document says.

Two checks. (1) The appendix equals what `trickles_kit.apps.vectors` computes from the engines,
byte for byte — and any one changed hex digit anywhere in it is caught. (2) Read independently
from the document's hex alone: every segment's TCP checksum holds for the vectors' addresses,
every FULL continuation's MAC verifies under the fixed secret, every packet nonce is p_k and
every SACK summary r_L ^ r_(R+1), and the nonce and cwnd tables agree with the nonce PRF and with
an ack-by-ack Reno sender.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from trickles_kit.apps import vectors as vec
from trickles_kit.core.cc import reno_trace
from trickles_kit.core.keys import KeyRing
from trickles_kit.core.nonces import NonceGen
from trickles_kit.core.seal import mac, pseudo_header
from trickles_kit.wire.continuation import FULL1, FULL2, MINIMAL
from trickles_kit.wire.messages import decode_request, decode_response
from trickles_kit.wire.segment import decode_segment

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def want() -> list[tuple[str, str]]:
    return vec.vectors()


def test_document_vectors_are_the_codes(doc: str, want) -> None:
    assert vec.mismatches(doc, want) == []
    names = [n.split()[0] for n, _ in want]
    for needed in ("handshake.request", "handshake.answer0", "initial_window.request",
                   "recovery.request", "terminate.request", "slowstart.request", "fin.request",
                   "fin.answer0", "nonce_summary", "cwnd"):
        assert needed in names


def test_any_changed_hex_digit_fails(doc: str, want) -> None:
    """Every digit of every value line, each changed to another digit: always caught."""
    start, end = doc.index(vec.BEGIN), doc.index(vec.END)
    positions = []
    pos = start
    for line in doc[start:end].splitlines(keepends=True):
        if line.startswith("    "):
            positions.extend(pos + j for j in range(4, len(line.rstrip("\n"))))
        pos += len(line)
    assert len(positions) > 5000
    rng = random.Random(19)
    for i in positions:
        c = rng.choice([x for x in "0123456789abcdef" if x != doc[i]])
        assert vec.mismatches(doc[:i] + c + doc[i + 1:], want), f"digit {i} changed unnoticed"


def test_a_missing_or_renamed_vector_fails(doc: str, want) -> None:
    assert vec.mismatches(doc.replace("fin.answer0", "fin.answer1"), want)
    assert vec.mismatches(doc.replace(vec.BEGIN, ""), want)


# ----------------------------------------------------------- independent reading of the hex
def _segments(doc: str):
    cip, sip = socket.inet_aton(vec.CLIENT_IP), socket.inet_aton(vec.SERVICE_IP)
    for name, value in vec.parse(doc):
        if name.startswith(("nonce_summary", "cwnd")):
            continue
        raw = bytes.fromhex(value)
        if ".request" in name:
            yield name, decode_segment(raw, cip, sip), True
        else:
            yield name, decode_segment(raw, sip, cip), False


def test_segments_verify_from_the_documents_hex(doc: str) -> None:
    keys = KeyRing(vec.SECRET)
    nonces = NonceGen(keys.nonce_key)
    pseudo = pseudo_header(socket.inet_aton(vec.CLIENT_IP), vec.CLIENT_PORT,
                           socket.inet_aton(vec.SERVICE_IP), vec.SERVICE_PORT)
    seen = 0
    for name, seg, is_request in _segments(doc):  # (decode_segment checked the checksums)
        assert seg.dst_port == (vec.SERVICE_PORT if is_request else vec.CLIENT_PORT), name
        if is_request:
            assert seg.trickles_len == 0
            req = decode_request(seg.payload)
            if req.cont is None:
                assert name.split()[0] == "handshake.request" and seg.seq == vec.ISN + 1
                continue
            raw = req.cont_raw
            assert mac(keys.mac_key(req.cont.key_epoch), pseudo, raw) == raw[59:], name
            assert seg.ack == req.cont.seq
            for b in req.sacks:
                assert nonces.range_summary(req.cont.conn_id, req.cont.tcp_base, b.left,
                                            b.right) == b.summary, name
        else:
            resp = decode_response(seg.payload)
            c = resp.cont
            assert seg.seq == c.seq, name
            if c.type in (FULL1, FULL2):
                raw = c.encode()
                assert mac(keys.mac_key(c.key_epoch), pseudo, raw) == raw[59:], name
                assert resp.nonce == nonces.packet_nonce(c.conn_id, c.tcp_base, c.seq), name
            else:
                assert c.type == MINIMAL and resp.nonce == 0, name
        seen += 1
    assert seen >= 10


def test_tables_from_the_documents_text(doc: str) -> None:
    nonces = NonceGen(KeyRing(vec.SECRET).nonce_key)
    rows = 0
    for name, value in vec.parse(doc):
        f = dict(w.split("=") for w in name.split()[1:])
        if name.startswith("nonce_summary"):
            cid, base, left, right = (int(f["connId"], 16), int(f["TCPBase"]), int(f["L"]),
                                      int(f["R"]))
            r = [nonces.r(cid, base, j) for j in (left, right + 1)]
            assert int(value, 16) == r[0] ^ r[1], name
            rows += 1
        elif name.startswith("cwnd"):
            n, base, c0, ss = (int(f[k]) for k in ("n", "TCPBase", "startCwnd", "ssthresh"))
            if n - base < 20000:  # the oracle steps ack by ack
                assert int(value) == reno_trace(base, c0, ss, n - base + 1)[-1], name
            rows += 1
    assert rows == len(vec.NONCE_TABLE) + len(vec.CWND_TABLE)
