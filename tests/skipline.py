"""The one skip line: how many tests were skipped, grouped by what enables them.

`make test` runs pytest twice (pure Python, then the compiled build's suites); with
TRICKLES_SKIP_LOG set each run appends its skip reasons to that file instead of printing, and
`python tests/skipline.py FILE` prints one line for both at the end. A single pytest run prints
its own line (tests/conftest.py).
"""

from __future__ import annotations

import re
import sys

SKIP_LOG = "TRICKLES_SKIP_LOG"


def skip_summary(reasons: list[str]) -> str | None:
    """One line: how many tests were skipped, grouped by what enables them."""
    if not reasons:
        return None
    tools: dict[str, int] = {}
    root = lab = other = 0
    for r in reasons:
        m = re.match(r"(\S+) is not installed", r) or re.match(r"(chromium) \(", r)
        if m or "make sysdeps" in r:
            name = m.group(1) if m else "system tools"
            tools[name] = tools.get(name, 0) + 1
        elif re.search(r"\broot\b|CAP_NET_RAW|sudo|namespaces", r):
            root += 1
        elif "lab-venv" in r or "lab dependency" in r:
            lab += 1
        else:
            other += 1
    parts = []
    if root:
        parts.append(f"{root} need root (run: sudo make test)")
    if tools:
        parts.append(f"{sum(tools.values())} need {', '.join(sorted(tools))} "
                     "(run: sudo make sysdeps)")
    if lab:
        parts.append(f"{lab} need the lab packages (run: make lab-venv)")
    if other:
        parts.append(f"{other} for other reasons (pytest -rs lists them)")
    return f"skipped {len(reasons)}: " + "; ".join(parts)


if __name__ == "__main__":
    try:  # no file: no run got as far as its summary (its own output says why)
        with open(sys.argv[1]) as f:
            line = skip_summary([r.rstrip("\n") for r in f if r.strip()])
    except FileNotFoundError:
        line = None
    if line:
        print(line)
