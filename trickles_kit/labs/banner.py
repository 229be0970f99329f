"""The notice a notebook shows when part of it needs root: what needs root, what runs instead.

Students on a JupyterHub are not root. A notebook part that falls back (UDP instead of raw
sockets, committed results instead of a live run in network namespaces) says so where the
student looks: an orange box like the tour's transport banner in Jupyter, the same sentences as
plain text in a terminal or an executed notebook's text output.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ORANGE = "padding:10px 14px;border-left:6px solid #ff7f0e;background:#fff4e5"
GREEN = "padding:6px 10px;border-left:4px solid #2ca02c;background:#eef8ee"


@dataclass(frozen=True)
class RootBanner:
    """`needs`: the part that needs root; `instead`: what the notebook uses without it;
    `live`: whether this kernel runs the part itself; `how`: how to get the live part;
    `off`: the headline when root did not run it either (a parameter, a missing capability)."""

    needs: str
    instead: str
    live: bool
    how: str = ""
    off: str = "Live part switched off"

    def headline(self) -> str:
        if self.live:
            return "Running live"
        return "Not root" if os.geteuid() != 0 else self.off

    def text(self) -> str:
        if self.live:
            return f"{self.headline()}: {self.needs}."
        out = f"{self.headline()}. Needs root: {self.needs}. Used instead: {self.instead}."
        return f"{out} {self.how}" if self.how else out

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:  # text-only front ends (and an executed notebook's text/plain)
        return self.text()

    def _repr_html_(self) -> str:
        if self.live:
            return f"<div style='{GREEN}'>{html.escape(self.text())}</div>"
        body = html.escape(self.text().split(". ", 1)[1])
        return (f"<div class='trickles-fallback-banner' style='{ORANGE};font-size:110%'>"
                f"<b>{html.escape(self.headline())}</b><br>{body}</div>")


def setup_banner(checks: Iterable[Any]) -> RootBanner:
    """Notebook 00: what this kernel's privileges change in the labs that follow, from
    `doctor.run_doctor()`'s checks (raw IP-253 sockets for 01, namespaces for 06 and 07)."""
    ok = {c.name: bool(c.ok) for c in checks}
    missing, instead = [], []
    if not ok.get("raw socket, IP protocol 253"):
        missing.append("raw IP sockets (the real wire in 01)")
        instead.append("UDP on 127.0.0.1 in 01")
    if not ok.get("network namespaces"):
        missing.append("network namespaces (the live runs of 06 and 07)")
        instead.append("the committed results in 06 and 07")
    if not missing:
        return RootBanner("raw IP sockets (01) and network namespaces (06, 07)", "", live=True)
    return RootBanner(
        needs=" and ".join(missing),
        instead=" and ".join(instead) + "; the simulator, the captures and every other lab "
                "need no privileges",
        live=False, off="Root, but this machine refuses part of it",
        how="For the live parts, start Jupyter as root (sudo .venv/bin/jupyter lab --allow-root "
            "notebooks/); `trickles doctor` says what is missing.")
