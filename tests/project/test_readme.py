"""The README's sample outputs are what the current code prints.

Every ```console block of README.md whose command is `.venv/bin/trickles ...` (no sudo, so it
runs anywhere) is run and its output compared line by line with the block. Only values that
measure this machine (`wall seconds`) are compared by name, not by value.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
VOLATILE = ("wall seconds",)  # "key: value" lines whose value is this machine's speed


def samples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of each runnable console sample in the README."""
    out = []
    for block in re.findall(r"^```console\n(.*?)^```", README.read_text(), re.M | re.S):
        lines = block.rstrip("\n").split("\n")
        cmd = lines[0].removeprefix("$ ")
        if lines[0].startswith("$ .venv/bin/trickles ") and len(lines) > 1:
            out.append((cmd, lines[1:]))
    return out


def _masked(line: str) -> str:
    key = line.split(":", 1)[0].strip()
    return f"{key}: <varies>" if key in VOLATILE else line.rstrip()


def test_readme_has_a_sample() -> None:
    assert samples(), "README.md: no ```console sample of `.venv/bin/trickles ...` found"


@pytest.mark.parametrize(("cmd", "expected"), samples(), ids=lambda x: x if isinstance(x, str)
                         else "")
def test_readme_sample_output_is_current(cmd: str, expected: list[str]) -> None:
    argv = [sys.executable, "-m", "trickles_kit.cli", *shlex.split(cmd)[1:]]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=README.parent)
    assert p.returncode == 0, p.stderr
    got = [_masked(x) for x in p.stdout.rstrip("\n").split("\n")]
    want = [_masked(x) for x in expected]
    assert got == want, (f"README.md's sample of `{cmd}` is stale; it prints now:\n"
                         + p.stdout)
