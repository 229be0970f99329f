"""One self-contained HTML report from plotly figures (the demo's, the benchmarks' reports).

In viz/ so that labs/ (the demo) and bench/ share it without importing each other. Only the
standard library is imported: the figures bring plotly with them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def write_report(path: str | Path, figures: Mapping[str, Any], title: str = "Trickles demo",
                 notes: Iterable[str] = ()) -> Path:
    """One self-contained HTML file: plotly.js inlined with the first figure only."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                 div_id=f"trickles-{name}", default_height="480px"))
    para = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    doc = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title>"
           "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
           ".fig{margin-bottom:2em}</style></head><body>"
           f"<h1>{html.escape(title)}</h1>{para}"
           + "".join(f"<div class='fig'>{p}</div>" for p in parts)
           + "</body></html>\n")
    out.write_text(doc, encoding="utf-8")
    return out
