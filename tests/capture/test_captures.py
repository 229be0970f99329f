"""Every committed reference capture decodes to the events its README row promises."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from trickles_kit.capture.decode import decode_pcap

CAPS = Path(__file__).resolve().parents[2] / "captures"
INDEX = json.loads((CAPS / "index.json").read_text())


def _holds(count: int, rule: str) -> bool:
    m = re.fullmatch(r"(==|>=|<=)(\d+)", rule)
    assert m, f"bad rule {rule!r}"
    op, n = m.group(1), int(m.group(2))
    return {"==": count == n, ">=": count >= n, "<=": count <= n}[op]


@pytest.mark.parametrize("name", sorted(INDEX))
def test_capture_decodes_to_its_promise(name: str) -> None:
    row = INDEX[name]
    pcap = CAPS / f"{name}.pcap"
    assert pcap.stat().st_size <= 2 * 1024 * 1024, "reference captures stay small"
    secret = bytes.fromhex((CAPS / f"{name}.secret").read_text().strip())
    cap = decode_pcap(pcap, secret, row["service_port"])
    kinds = Counter(e.kind for e in cap.events)
    bad = {k: (kinds[k], rule) for k, rule in row["expect"].items() if not _holds(kinds[k], rule)}
    assert not bad, f"{name}: {bad}"
    if "max_cwnd_at_least" in row:
        assert max(e.cwnd for e in cap.events) >= row["max_cwnd_at_least"]
    malformed = [p.error for p in cap.packets if p.error]
    assert bool(malformed) == ("malformed_rows" in row), malformed


def test_readme_lists_every_capture_and_its_command() -> None:
    readme = (CAPS / "README.md").read_text()
    assert len(INDEX) >= 5
    for name, row in INDEX.items():
        assert f"`{name}.pcap`" in readme
        assert row["command"] in readme
        assert (CAPS / f"{name}.pcap").exists() and (CAPS / f"{name}.secret").exists()
