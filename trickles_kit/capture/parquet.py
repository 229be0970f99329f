"""Parquet output of decoded captures: packets and events, partitioned by run.

Why Parquet: a study of many runs outgrows one notebook; Parquet files are what DuckDB, Spark,
Dask and pandas read directly, column by column. `write_parquet` writes

    OUT/packets/run=<RUN>/part-0.parquet   one row per Trickles packet (`PACKET_SCHEMA`)
    OUT/events/run=<RUN>/part-0.parquet    one row per derived event (`EVENT_SCHEMA`)

(Hive-style partitions: ``read_parquet('OUT/packets/*/*.parquet', hive_partitioning=true)``
gives a ``run`` column). Packets are written chunk by chunk as the capture is decoded
(`capture.columnar.column_batches`): memory stays one window and one chunk whatever the
capture's size. Events need the whole packet table (pairing, replays): with ``events=True`` the
capture is decoded whole first. The schema is in docs/analysis.md. Needs pyarrow (the
``parquet`` extra); `PARQUET_HINT` says so.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from trickles_kit.capture.columnar import column_batches, decode_columns
from trickles_kit.capture.columns import KINDS, PacketColumns, arrow_or_none
from trickles_kit.capture.frames import arrow_list, hex_arrow
from trickles_kit.capture.rows import EVENT_FIELDS, ROW_FIELDS

__all__ = ["PARQUET_HINT", "arrow_or_none", "event_schema", "events_arrow", "packet_schema",
           "packets_arrow", "run_name", "write_parquet"]

PARQUET_HINT = ("pyarrow is needed for Parquet output: pip install pyarrow "
                "(or pip install -e '.[parquet]'); duckdb reads the files: pip install duckdb")
_INTS = {"u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "i8": "int64",
         "f8": "float64", "b1": "bool_"}
_LIST_FIELDS = {"sacks": ("left", "right", "summary"), "ranges": ("start", "end")}


def _arrow():
    pa = arrow_or_none()
    if pa is None:
        raise ImportError(PARQUET_HINT)
    return pa


def packet_schema(pa=None):
    """The packets table's Arrow schema (docs/analysis.md lists what each column means)."""
    pa = pa or _arrow()
    fields = []
    for f, kind in KINDS.items():
        base = kind.rstrip("?")
        if base in ("cat", "addr"):
            t = pa.dictionary(pa.int32(), pa.string())
        elif base == "mac":
            t = pa.string()
        elif base in ("list3", "list2"):
            t = pa.list_(pa.struct([(n, pa.int64()) for n in _LIST_FIELDS[f]]))
        else:
            t = getattr(pa, _INTS[base])()
        fields.append(pa.field(f, t, nullable=kind.endswith("?")))
    return pa.schema(fields)


def event_schema(pa=None):
    pa = pa or _arrow()
    ints = {"conn_id": pa.uint64(), "pkt": pa.int64(), "ack": pa.int64(), "cwnd": pa.int64(),
            "ssthresh": pa.int64(), "tcp_base": pa.int64(), "state": pa.int64()}
    fields = [pa.field("event", pa.int64())]  # the event's ordinal in the run
    for f in EVENT_FIELDS:
        t = pa.float64() if f == "t" else ints.get(f, pa.string())
        fields.append(pa.field(f, t))
    return pa.schema(fields)


def packets_arrow(pc: PacketColumns, pa=None):
    """A pyarrow Table of `pc` in `packet_schema` (built from the arrays: no object per row)."""
    pa = pa or _arrow()
    arrays = []
    for f in ROW_FIELDS:
        base = KINDS[f].rstrip("?")
        v = pc.data[f]
        m = pc.mask.get(f)
        m = m if m is not None and m.any() else None
        if base == "cat":
            arr = pa.DictionaryArray.from_arrays(
                pa.array(v.astype(np.int32), mask=v < 0), pa.array(pc.cats[f], pa.string()))
        elif base == "addr":
            uniq, codes = np.unique(v, return_inverse=True)
            names = [".".join(str(b) for b in int(a).to_bytes(4, "big")) for a in uniq]
            arr = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)),
                                                 pa.array(names, pa.string()))
        elif base == "mac":
            arr = hex_arrow(pa, v, m)
        elif base in ("list3", "list2"):
            arr = arrow_list(pa, pc, f)
        else:
            arr = pa.array(v, mask=m)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=packet_schema(pa))


def events_arrow(events: list, verdicts_of=None, pa=None):
    """The events as a pyarrow Table (`event_schema`; ``detail`` as JSON text)."""
    pa = pa or _arrow()
    cols: dict[str, list] = {"event": list(range(len(events)))}
    for f in EVENT_FIELDS:
        vals = [getattr(e, f) for e in events]
        if f == "detail":
            vals = [json.dumps(d, sort_keys=True, default=str) if d else None for d in vals]
        cols[f] = vals
    return pa.Table.from_pydict(cols, schema=event_schema(pa))


def run_name(path: str | os.PathLike[str]) -> str:
    """A partition value for a capture: its file name without the extension, made safe."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem) or "run"


def write_parquet(path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  secret: bytes | None = None, service_port: int | None = None,
                  run: str | None = None, events: bool = True, checksums: bool = True,
                  config=None, row_group: int = 1 << 20) -> dict:
    """Decode `path` into OUT/packets/run=RUN/ and (with `events`) OUT/events/run=RUN/.

    Returns what was written: {"packets": n, "events": n, "files": [...], "capture": Capture}.
    """
    pa = _arrow()
    import pyarrow.parquet as pq  # (optional dependency: imported when Parquet is asked for)

    run = run or run_name(path)
    out = Path(out)
    pdir = out / "packets" / f"run={run}"
    pdir.mkdir(parents=True, exist_ok=True)
    files = [pdir / "part-0.parquet"]
    n = 0
    if events:
        cap = decode_columns(path, secret, service_port, config=config, checksums=checksums)
        pq.write_table(packets_arrow(cap.table, pa), files[0], row_group_size=row_group)
        n = cap.n_packets
    else:
        dec = column_batches(path, secret, service_port, config=config, checksums=checksums)
        with dec, pq.ParquetWriter(files[0], packet_schema(pa)) as w:
            for chunk in dec:
                w.write_table(packets_arrow(chunk, pa), row_group_size=row_group)
                n += chunk.n
        cap = dec.capture
        cap._n_streamed = n
    result = {"packets": n, "events": 0, "files": files, "capture": cap}
    if events:
        edir = out / "events" / f"run={run}"
        edir.mkdir(parents=True, exist_ok=True)
        files.append(edir / "part-0.parquet")
        pq.write_table(events_arrow(cap.events, pa=pa), files[-1])
        result["events"] = len(cap.events)
    return result
