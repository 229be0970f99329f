"""The columnar table (`capture.columnar`) equals the row decoder's, column by column.

On every reference capture (captures/), on a lossy simulated run (several batches, the vector
pass taking most rows) and on a lossy run with delta-encoded continuations, with and without
the secret and the service port: every column, the errors, the learned ports, the `PacketRow`s
built on demand, the events and the verdicts (every capture); and `packets_df()` from the
arrays shows the row table's values.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from wire_helpers import need_module

from trickles_kit.capture import columnar
from trickles_kit.capture.decode import decode_pcap as _decode_pcap
from trickles_kit.capture.pcapio import PcapError
from trickles_kit.capture.rows import ROW_FIELDS

CAPS = Path(__file__).resolve().parents[2] / "captures"


def decode_pcap(*args, **kw):
    """The row decoder (`decode_pcap`'s default is the columnar path when numpy is there)."""
    return _decode_pcap(*args, columnar=False, **kw)


def _secret(name: str) -> bytes:
    return bytes.fromhex((CAPS / f"{name}.secret").read_text().strip())


def assert_same(path, secret=None, service_port=None, checksums=True) -> None:
    old = decode_pcap(path, secret, service_port, events=False, checksums=checksums)
    new = columnar.decode_columns(path, secret, service_port, events=False,
                                  checksums=checksums)
    a, b = old.columns(), new.table.to_lists()
    for f in ROW_FIELDS:
        diff = [i for i, (x, y) in enumerate(zip(a[f], b[f], strict=True))
                if x != y or type(x) is not type(y)]
        assert not diff, (f, diff[:3], a[f][diff[0]], b[f][diff[0]])
    assert old.errors == new.errors
    assert old.service_ports == new.service_ports
    assert (old.warning, old.truncated, old.linktypes) == (new.warning, new.truncated,
                                                           new.linktypes)


def assert_events_same(path, secret=None) -> None:
    """Events, verdicts and errors of the columnar decode equal the row decoder's."""
    old = decode_pcap(path, secret)
    new = columnar.decode_columns(path, secret)
    assert new.events == old.events
    assert new.verdicts == old.verdicts
    assert new.errors == old.errors


@pytest.mark.parametrize("name", sorted(p.stem for p in CAPS.glob("*.pcap")))
def test_reference_captures_equal_the_row_decoder(name: str) -> None:
    path = CAPS / f"{name}.pcap"
    assert_same(path)
    assert_same(path, _secret(name))
    assert_events_same(path)
    assert_events_same(path, _secret(name))


def test_lossy_run_equals_the_row_decoder(lossy, monkeypatch) -> None:
    path, secret = lossy
    taken = []
    scan = columnar.scan_batch

    def counting(*a, **kw):
        s = scan(*a, **kw)
        taken.append(0 if s is None else int(s.taken.sum()))
        return s

    monkeypatch.setattr(columnar, "scan_batch", counting)
    port = next(iter(decode_pcap(path, events=False).service_ports))
    for kw in ({}, {"secret": secret}, {"service_port": port}, {"checksums": False}):
        assert_same(path, **kw)
    n = decode_pcap(path, events=False).n_packets
    assert sum(taken) > 0.9 * 4 * n  # the vector pass decoded most rows of each run


def test_delta_continuations_equal_the_row_decoder(delta) -> None:
    path, secret = delta
    assert_same(path)
    assert_same(path, secret)
    assert_events_same(path, secret)


def test_rows_events_and_verdicts_equal(lossy) -> None:
    path, secret = lossy
    for s in (None, secret):
        old = decode_pcap(path, s)
        new = columnar.decode_columns(path, s)
        assert new.packets == old.packets
        assert new.events == old.events
        assert new.verdicts == old.verdicts and new.verdicts
        assert new.errors == old.errors


def _plain(v):
    """A DataFrame cell as the row decoder's value (NA -> None, arrays/dicts -> tuples)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if type(v).__name__ == "NAType":
        return None
    if hasattr(v, "tolist") and not isinstance(v, str | bytes):
        v = v.tolist()
    if isinstance(v, list):
        return [tuple(x.values()) if isinstance(x, dict) else tuple(x) for x in v]
    if hasattr(v, "item"):
        return v.item()
    return v


@pytest.mark.parametrize("arrow", [True, False])
def test_packets_df_equals_the_row_table(lossy, arrow, monkeypatch) -> None:
    pd = need_module("pandas")
    if arrow:
        need_module("pyarrow")
    else:
        monkeypatch.setattr("trickles_kit.capture.frames.arrow_or_none", lambda: None)
    path, secret = lossy
    old = decode_pcap(path, secret, events=False)
    a = old.columns()
    df = columnar.decode_columns(path, secret, events=False).packets_df()
    assert list(df.columns) == list(ROW_FIELDS) and len(df) == old.n_packets
    a["mac"] = [m.hex() if m is not None else None for m in a["mac"]]
    for f in ROW_FIELDS:
        got = [_plain(v) for v in df[f].astype(object).tolist()]
        assert got == a[f], f
    assert isinstance(df["src"].dtype, pd.CategoricalDtype)


def _records(data: bytes) -> list[int]:
    """Record offsets of a little-endian classic pcap."""
    offs, o = [], 24
    while o + 16 <= len(data):
        offs.append(o)
        o += 16 + int.from_bytes(data[o + 8:o + 12], "little")
    return offs


def test_corrupt_truncated_and_oversized_records_as_the_row_decoder(lossy, tmp_path) -> None:
    """Checksum failures (a flipped byte: odd and even offsets, headers and payloads), a
    capture cut inside its last record, an oversized record: the same rows, flags and notes."""
    path, secret = lossy
    data = bytearray(path.read_bytes())
    offs = _records(bytes(data))
    for k, o in enumerate(offs[5::37]):
        incl = int.from_bytes(data[o + 8:o + 12], "little")
        data[o + 16 + 20 + (k * 7) % max(incl - 20, 1)] ^= 0x40
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    assert_same(bad)
    assert decode_pcap(bad, events=False).errors["flagged.decode.checksum"] > 50
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(bytes(data[: offs[-3] + 30]))
    with pytest.warns(Warning):
        assert_same(cut)
    big = tmp_path / "oversized.pcap"
    o = offs[len(offs) // 2]
    huge = (300_000).to_bytes(4, "little")
    body = (bytes(data[24:o]) + bytes(data[o:o + 8]) + huge + huge + bytes(300_000)
            + bytes(data[o:]))
    big.write_bytes(bytes(data[:16]) + (1 << 20).to_bytes(4, "little") + bytes(data[20:24])
                    + body)
    assert_same(big)
    assert decode_pcap(big, events=False).errors["not_trickles.oversized"] == 1
    corrupt = tmp_path / "corrupt.pcap"  # the same record over the snapshot length: an error
    corrupt.write_bytes(bytes(data[:24]) + body)
    with pytest.raises(PcapError) as old:
        decode_pcap(corrupt, events=False)
    with pytest.raises(PcapError) as new:
        columnar.decode_columns(corrupt, events=False)
    assert str(new.value) == str(old.value)


def test_decode_pcap_defaults_to_the_columnar_table(lossy) -> None:
    """With numpy, `decode_pcap` is the columnar path: same rows, events and verdicts."""
    pytest.importorskip("numpy")
    path, secret = lossy
    new = _decode_pcap(path, secret)
    assert new.table is not None
    old = decode_pcap(path, secret)
    assert old.table is None
    assert new.packets == old.packets and new.events == old.events
    assert new.verdicts == old.verdicts and new.errors == old.errors
