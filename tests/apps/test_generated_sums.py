"""The generated handler's checksum shares (issue 17): `pattern_sum` from the block sums equals
summing the bytes, and every slot the handler fills carries its data's sum."""

from __future__ import annotations

import random
import socket

from trickles_kit.apps.generated import (
    PERIOD,
    Generated,
    _block_sums,
    _pattern,
    gen_request,
    pattern_sum,
)
from trickles_kit.core.minisocket import Minisocket, OutSlot
from trickles_kit.core.server import ServerEngine
from trickles_kit.native import speedups


def test_pattern_sum_equals_the_bytes_sum() -> None:
    rng = random.Random(3)
    pat, sums = _pattern(11), _block_sums(11)
    lengths = (0, 1, 2, 63, 64, 65, 127, 128, 129, 1447, 1448, PERIOD)
    for _ in range(3000):
        a = rng.randrange(PERIOD)
        n = rng.choice(lengths) if rng.random() < 0.7 else rng.randrange(PERIOD + 1)
        assert pattern_sum(pat, sums, a, a + n) == int.from_bytes(pat[a:a + n], "big") % 0xFFFF
    # the slices that end on the pattern's last whole block and at its very end
    for a in (0, 1, len(pat) - 1449, len(pat) - 64):
        assert pattern_sum(pat, sums, a, len(pat)) == int.from_bytes(pat[a:], "big") % 0xFFFF


def test_handler_gives_each_slot_its_data_sum() -> None:
    """In pure Python, where the checksum is slow; the compiled build's C checksum is faster
    than the look-up, so there the handler gives none."""
    gen = Generated()
    gen.attach(ServerEngine(bytes(32), gen, socket.inet_aton("10.0.0.1"), 80))
    ranges = [(5, 1453), (1453, 2900), (70_000, 71_001)]  # the last: an odd length
    slots = [OutSlot(i, 1448, r) for i, r in enumerate(ranges)]
    msk = Minisocket("REQUEST", (bytes(4), 1), 9, gen_request(1 << 20, 4), b"", ranges, slots,
                     0.0)
    gen(msk)
    assert not msk.dropped
    for slot in slots:
        assert slot.data
        if speedups is None:
            assert slot.data_sum == int.from_bytes(slot.data, "big") % 0xFFFF
        else:
            assert slot.data_sum is None
