"""Parquet output (`trickles decode --format parquet`): DuckDB reads what the decoder decoded.

Two reference captures become two runs under one directory; DuckDB over the partitioned files
gives per run the packets, bytes and events of `decode_pcap`, and a packet's fields as the row
decoder has them. Without pyarrow the command says what Parquet needs, and so does the doctor.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path

from wire_helpers import need_module

from trickles_kit.capture import parquet
from trickles_kit.capture.decode import decode_pcap
from trickles_kit.cli import main
from trickles_kit.net import doctor

CAPS = Path(__file__).resolve().parents[2] / "captures"
RUNS = ("one_loss", "slowstart_ca")


def _decode_to(out: Path, name: str, *extra: str) -> int:
    return main(["decode", str(CAPS / f"{name}.pcap"), "--format", "parquet", "-o", str(out),
                 "--secret-file", str(CAPS / f"{name}.secret"), *extra])


def test_duckdb_reads_the_runs(tmp_path, capsys) -> None:
    need_module("pyarrow")
    duckdb = need_module("duckdb")
    for name in RUNS:
        assert _decode_to(tmp_path, name, "--events") == 0
    assert "packets" in capsys.readouterr().out
    pk = f"read_parquet('{tmp_path}/packets/*/*.parquet', hive_partitioning=true)"
    ev = f"read_parquet('{tmp_path}/events/*/*.parquet', hive_partitioning=true)"
    got = dict(duckdb.sql(f"select run, count(*) from {pk} group by run").fetchall())
    kinds = Counter(dict(((r, k), n) for r, k, n in duckdb.sql(
        f"select run, kind, count(*) from {ev} group by all").fetchall()))
    for name in RUNS:
        secret = bytes.fromhex((CAPS / f"{name}.secret").read_text().strip())
        cap = decode_pcap(CAPS / f"{name}.pcap", secret)
        assert got[name] == cap.n_packets
        assert {k: n for (r, k), n in kinds.items() if r == name} == cap.event_counts()
        data = duckdb.sql(f"select sum(data_len) from {pk} where run = '{name}'").fetchall()[0][0]
        assert data == sum(p.data_len for p in cap.packets)
        row = next(p for p in cap.packets if p.sacks)
        src, mac, sacks, ok = duckdb.sql(
            f"select src, mac, sacks, mac_ok from {pk} where run = '{name}' and "
            f"index = {row.index}").fetchall()[0]
        assert (src, mac, ok) == (row.src, row.mac.hex(), row.mac_ok)
        assert [tuple(b.values()) for b in sacks] == row.sacks


def test_streamed_packets_equal_the_whole_table(tmp_path) -> None:
    """Without --events the packets are written chunk by chunk: the same table."""
    pq = need_module("pyarrow.parquet")
    assert _decode_to(tmp_path / "a", "one_loss") == 0
    assert _decode_to(tmp_path / "b", "one_loss", "--events") == 0
    a = pq.read_table(tmp_path / "a" / "packets" / "run=one_loss")
    b = pq.read_table(tmp_path / "b" / "packets" / "run=one_loss")
    assert a.schema.equals(b.schema) and a.to_pylist() == b.to_pylist()
    assert not (tmp_path / "a" / "events").exists()


def test_without_pyarrow_the_command_and_the_doctor_say_so(tmp_path, capsys,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(parquet, "arrow_or_none", lambda: None)
    assert _decode_to(tmp_path, "one_loss") == 2
    assert "pyarrow is needed for Parquet" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else real(name, *a))
    check = next(c for c in doctor.run_doctor() if c.name == "python: pyarrow")
    assert check.ok is False and "parquet" in check.hint and "Parquet" in check.hint
