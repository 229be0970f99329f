"""pandas (and Arrow) tables of a `PacketColumns`: built from its arrays, no object per packet.

Why this shape: a DataFrame column wraps a numpy array without a copy; a field that may be None
becomes a pandas nullable array (the array plus its null mask); the few strings become
categoricals (codes plus a handful of names) — so a million packets take milliseconds, not
the seconds a row-by-row table takes. With pyarrow installed the MAC (hex text) and the SACK
blocks / byte ranges (list columns) are Arrow arrays made from the same buffers; without it
they are Python values, built per row (slower, same values).
"""

from __future__ import annotations

import socket

import numpy as np

from trickles_kit.capture.columns import KINDS, PacketColumns, arrow_or_none
from trickles_kit.capture.rows import PANDAS_HINT, ROW_FIELDS

__all__ = ["HEX_PAIRS", "hex_arrow", "packets_frame"]

# byte -> its two hex digits as one little-endian uint16 (one gather makes a MAC's 32 chars)
HEX_PAIRS = np.array([int.from_bytes(f"{i:02x}".encode(), "little") for i in range(256)],
                     np.uint16)
_NULLABLE = {"u1": "UInt8", "u2": "UInt16", "u4": "UInt32", "u8": "UInt64", "i8": "Int64"}
_LIST_NAMES = {"sacks": ("left", "right", "summary"), "ranges": ("start", "end")}


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(PANDAS_HINT) from None
    return pd


def packets_frame(pc: PacketColumns):
    """The DataFrame of `pc`: the columns of `Capture.packets_df()` (see the module doc)."""
    pd = _pandas()
    pa = arrow_or_none()
    cols = {f: _series_values(pd, pa, pc, f) for f in ROW_FIELDS}
    return pd.DataFrame(cols, columns=list(ROW_FIELDS), copy=False)


def _series_values(pd, pa, pc: PacketColumns, f: str):
    kind = KINDS[f].rstrip("?")
    v = pc.data[f]
    m = pc.mask.get(f)
    if kind == "cat":
        return pd.Categorical.from_codes(v, categories=pc.cats[f])
    if kind == "addr":
        codes, uniq = pd.factorize(v)
        names = [socket.inet_ntoa(int(a).to_bytes(4, "big")) for a in uniq]
        return pd.Categorical.from_codes(codes, categories=names)
    if kind == "mac":
        return _hex_text(pd, pa, v, m)
    if kind in ("list3", "list2"):
        if pa is not None:
            return pd.arrays.ArrowExtensionArray(arrow_list(pa, pc, f))
        return pd.array(_py_lists(pc, f), dtype=object)
    if m is None or not m.any():
        return v
    if kind == "b1":
        return pd.arrays.BooleanArray(v, m)
    if kind == "f8":
        return pd.arrays.FloatingArray(v, m)
    return pd.arrays.IntegerArray(v, m)


def _hex_text(pd, pa, mac: np.ndarray, mask: np.ndarray | None):
    """The MACs as hex text (what `packets_df` has always shown), None where there is none."""
    if pa is not None:
        return pd.arrays.ArrowExtensionArray(hex_arrow(pa, mac, mask))
    raw = mac.tobytes()
    out = [raw[i:i + 16].hex() for i in range(0, len(raw), 16)]
    if mask is not None:
        for i in np.flatnonzero(mask).tolist():
            out[i] = None
    return pd.array(out, dtype=object)


def hex_arrow(pa, mac: np.ndarray, mask: np.ndarray | None):
    """An Arrow string array of the MACs' hex text, made from one gather (no str per row)."""
    n = len(mac)
    digits = HEX_PAIRS[mac]  # (n, 16) uint16: 32 ASCII bytes a row
    big = 32 * n >= 1 << 31
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int64 if big else np.int32)
    valid = None if mask is None or not mask.any() else pa.py_buffer(
        np.packbits(~mask, bitorder="little"))
    kind = pa.LargeStringArray if big else pa.StringArray
    return kind.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(digits), valid)


def arrow_list(pa, pc: PacketColumns, f: str):
    """list<struct<...>> of a list column, from its offsets and values (no copy per row)."""
    vals = pc.lists[f]
    names = _LIST_NAMES[f]
    fields = [pa.array(np.ascontiguousarray(vals[:, j]) if len(vals) else
                       np.zeros(0, np.int64)) for j in range(len(names))]
    inner = pa.StructArray.from_arrays(fields, names=list(names))
    m = pc.mask.get(f)
    mask = pa.array(m) if m is not None and m.any() else None
    return pa.ListArray.from_arrays(pa.array(pc.data[f]), inner, mask=mask)


def _py_lists(pc: PacketColumns, f: str) -> list:
    o = pc.data[f].tolist()
    lv = [tuple(x) for x in pc.lists[f].tolist()]
    out: list = [lv[o[i]:o[i + 1]] for i in range(pc.n)]
    m = pc.mask.get(f)
    if m is not None:
        for i in np.flatnonzero(m).tolist():
            out[i] = None
    return out
