"""HTML tables for the step-through: one continuation, and the nonce checks of one request.

Why HTML and not plotly tables: a plotly table has a fixed height and scrolls inside itself (7–8
of the 16 continuation fields were visible), it needs plotly.js in a widget, and it cannot wrap
under a narrow notebook. A plain table shows every row, wraps, and costs a few hundred bytes.
The rows are computed by `continuation_rows` / `nonce_rows`, which tests read directly.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from trickles_kit.viz.figures import CONT_FIELDS, STATE_NAMES

__all__ = ["continuation_html", "continuation_rows", "nonce_html", "nonce_rows"]

CHANGED, OK_BG, FAIL_BG, HEAD_BG = "#fff3b0", "#c7f0c7", "#f7c6c6", "#e8e8e8"
_TABLE = ("border-collapse:collapse;font:13px/1.35 monospace;margin:4px 0")
_CELL = "border:1px solid #ccc;padding:2px 8px;text-align:left"


def continuation_rows(row: Mapping[str, Any], previous: Mapping[str, Any] | None = None
                      ) -> list[tuple[str, Any, str]]:
    """(field, shown value, background) per continuation field present in `row`; a field that
    changed since `previous` is highlighted, MAC / nonce verdicts coloured."""
    out: list[tuple[str, Any, str]] = []
    for f in CONT_FIELDS:
        if f not in row:
            continue
        v = row[f]
        changed = previous is not None and previous.get(f) != v
        out.append((f, STATE_NAMES.get(v, v) if f == "state" else v,
                    CHANGED if changed else "white"))
    for f in ("mac_ok", "nonce_ok"):
        if f in row and row[f] is not None:
            out.append((f.replace("_ok", ""), "ok" if row[f] else "FAIL",
                        OK_BG if row[f] else FAIL_BG))
    return out


def nonce_rows(blocks: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(block, claimed, expected, verdict) per SACK block; verdict = claimed == expected."""
    return [(f"[{b['left']}, {b['right']}]", f"{b['claimed']:#010x}", f"{b['expected']:#010x}",
             "ok" if b["claimed"] == b["expected"] else "REJECTED") for b in blocks]


def _table(title: str, head: Iterable[str], rows: Iterable[Iterable[tuple[Any, str]]]) -> str:
    th = "".join(f'<th style="{_CELL};background:{HEAD_BG}">{html.escape(h)}</th>' for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL};background:{bg}">{html.escape(str(v))}</td>'
                         for v, bg in cells) + "</tr>" for cells in rows)
    return (f'<div style="font:bold 14px sans-serif;margin:6px 0 2px 0">{html.escape(title)}'
            f'</div><table style="{_TABLE}"><tr>{th}</tr>{body}</table>')


def continuation_html(row: Mapping[str, Any], previous: Mapping[str, Any] | None = None,
                      title: str = "Continuation") -> str:
    rows = [((f, "white"), (v, bg)) for f, v, bg in continuation_rows(row, previous)]
    if not rows:
        return _table(title, ("field", "value"), [(("(nothing known)", "white"), ("", "white"))])
    return _table(title, ("field", "value"), rows)


def nonce_html(blocks: Iterable[Mapping[str, Any]], title: str = "Nonce checks") -> str:
    rows = [((b, "white"), (c, "white"), (e, "white"), (v, OK_BG if v == "ok" else FAIL_BG))
            for b, c, e, v in nonce_rows(blocks)]
    return _table(title, ("block", "claimed", "expected", "verdict"), rows)
