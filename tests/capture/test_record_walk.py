"""The pcap record walk's fast part, `native.record_offsets`: the compiled helper and its pure
twin take the same records and stop at the same place (oversized records, `safe`, a full
batch, both byte orders), and `PcapReader.mapped_batches` yields the same batches with either."""

from __future__ import annotations

import array
import importlib
import random
import struct
from pathlib import Path

import pytest
from wire_helpers import IN_CI, REPO

from trickles_kit import native
from trickles_kit.capture.pcapio import read_pcap
from trickles_kit.native import fallback


def _compiled():
    try:
        return importlib.import_module("trickles_kit.native._speedups").record_offsets
    except (ImportError, AttributeError):
        msg = "the compiled build is not there: make native (needs a C compiler)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def _records(rng: random.Random, n: int, big: bool, oversized: float) -> bytes:
    """24 header bytes, then n records of random lengths (some claiming more than 2000)."""
    out = bytearray(24)
    for _ in range(n):
        incl = rng.randrange(3000, 70000) if rng.random() < oversized else rng.randrange(0, 1600)
        body = min(incl, 1600)
        out += struct.pack(">IIII" if big else "<IIII", 1, 2, incl, incl) + bytes(body)
    return bytes(out)


def test_compiled_and_pure_walks_agree() -> None:
    walk = _compiled()
    rng = random.Random(21)
    for case in range(300):
        big = case % 2 == 1
        buf = _records(rng, rng.randrange(0, 60), big, rng.choice([0.0, 0.02, 0.2]))
        off = 24
        safe = rng.choice([len(buf), len(buf) - 2000, rng.randrange(0, len(buf) + 50),
                           len(buf) + 100])
        most = rng.choice([1, 3, 17, 1 << 16])
        args = (buf, off, safe, most, 2000, big)
        want = fallback.record_offsets(*args)
        assert walk(*args) == want, (case, args[1:])
        offs = array.array("q")
        offs.frombytes(want[0])
        assert all(o < safe for o in offs) and len(offs) <= most


def test_a_walk_never_reads_past_the_buffer() -> None:
    walk = _compiled()
    buf = b"\0" * 24 + struct.pack("<IIII", 0, 0, 4, 4) + b"abcd" + b"\0" * 5  # a cut header
    for safe in range(len(buf) + 40):
        assert walk(buf, 24, safe, 100, 2000, False) == fallback.record_offsets(
            buf, 24, safe, 100, 2000, False)


@pytest.mark.parametrize("pcap", sorted((REPO / "captures").glob("*.pcap")), ids=lambda p: p.stem)
def test_mapped_batches_are_the_same_with_either_walk(pcap: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _compiled()

    def batches() -> list[list[int]]:
        with read_pcap(pcap) as r:
            return [list(offs) for _, offs in r.mapped_batches(span=4096)]

    monkeypatch.setattr(native, "record_offsets", _compiled())
    fast = batches()
    monkeypatch.setattr(native, "record_offsets", fallback.record_offsets)
    assert batches() == fast and sum(map(len, fast)) > 0
