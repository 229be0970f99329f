"""Which build is active: the compiled helpers (speedups.c, mypyc modules) or pure Python.

The ONE place that tries the compiled extension. `speedups` is the module or None; wire/ and
net/ take their hot helpers from it when it is there and keep their own pure-Python code
otherwise, so the package is complete without a compiler (the notebooks teach from the .py).
TRICKLES_PURE=1 in the environment forces pure Python, mypyc-compiled modules included: the
test suite runs once each way (Makefile `test`, `test-native`).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path
from types import ModuleType

from trickles_kit.native import fallback

PURE = os.environ.get("TRICKLES_PURE", "") not in ("", "0")
PACKAGE = Path(__file__).resolve().parent.parent  # trickles_kit/


class _SourceOnly:
    """A meta-path finder that loads trickles_kit's modules from .py even where a compiled
    (mypyc) .so sits beside one: what TRICKLES_PURE=1 means for the mypyc build."""

    _loaders = [(importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)]

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None):
        if not name.startswith("trickles_kit.") or not path:
            return None
        for entry in path:  # type: ignore[attr-defined]
            spec = importlib.machinery.FileFinder(str(entry), *cls._loaders).find_spec(name)
            if spec is not None:
                return spec
        return None


def _listed() -> set[str] | None:
    """The modules native/mypyc_modules.txt names (package-relative .py paths), None if unread."""
    try:
        lines = (PACKAGE / "native" / "mypyc_modules.txt").read_text().splitlines()
    except OSError:
        return None
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


def _stale_mypyc() -> list[str]:
    """mypyc modules whose .py changed after they were compiled (an edit since `make native`),
    or that mypyc_modules.txt no longer lists (a pull that dropped one: its .so would ask the
    new group module for an init it lacks): their .so would run the old code or fail to load,
    so then no mypyc module is used (they call each other directly, as one group)."""
    stale = []
    listed = _listed()
    for so in PACKAGE.glob("*/*.so"):
        if so.name.startswith(("_speedups", "mypyc_group")):
            continue
        py = so.with_name(so.name.split(".")[0] + ".py")
        rel = py.relative_to(PACKAGE.parent).as_posix()
        edited = py.exists() and py.stat().st_mtime > so.stat().st_mtime
        if edited or (listed is not None and rel not in listed):
            stale.append(rel)
    return stale


STALE = _stale_mypyc() if not PURE else []


if (PURE or STALE) and _SourceOnly not in sys.meta_path:
    sys.meta_path.insert(0, _SourceOnly)
speedups: ModuleType | None = None
if not PURE:
    try:
        from trickles_kit.native import _speedups  # type: ignore[attr-defined]

        speedups = _speedups
    except ImportError:  # no compiler when the package was installed: pure Python
        speedups = None
recv_many = fallback.recv_many if speedups is None else speedups.recv_many
send_many = fallback.send_many if speedups is None else speedups.send_many
# (getattr: a _speedups built before it had record_offsets still loads)
record_offsets = getattr(speedups, "record_offsets", fallback.record_offsets)


def mypyc_modules() -> list[str]:
    """The trickles_kit modules imported from a compiled (mypyc) file in this process."""
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None) or ""
        if (name.startswith("trickles_kit.") and f.endswith(".so")
                and not name.startswith("trickles_kit.native.")):
            out.append(name)
    return sorted(out)


def compiled_on_disk() -> list[str]:
    """trickles_kit modules that have a compiled twin on disk (whether or not active)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    out = []
    for p in PACKAGE.glob("*/*"):
        if p.name.endswith(suffixes) and not p.name.startswith(("_speedups", "mypyc_group")):
            rel = p.relative_to(PACKAGE.parent).as_posix()
            out.append(rel.split(".")[0].replace("/", "."))
    return sorted(out)


def build() -> str:
    """One line for `trickles doctor`: which build this process runs."""
    if PURE:
        return "pure Python (TRICKLES_PURE=1)"
    if speedups is None:
        return "pure Python (no compiled helpers built)"
    mods = [] if STALE else compiled_on_disk()
    if STALE:
        return ("compiled (checksum and batched I/O in C; mypyc: none, "
                f"{STALE[0]} changed or unlisted since `make native`)")
    return ("compiled (checksum and batched I/O in C; mypyc: "
            + (", ".join(m.removeprefix("trickles_kit.") for m in mods) if mods else "none")
            + ")")
