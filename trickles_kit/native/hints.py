"""mypyc's `mypyc_attr` class decorator for the compiled build, or a stand-in that does
nothing when mypy is not installed (the pure-Python package does not depend on it).

mypy resolves the name imported from here to mypy_extensions' own, which is what mypyc reads
when it compiles a module that uses it (this module itself is never compiled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # no mypy: nothing is compiled, and the decorator changes nothing

    def mypyc_attr(*attrs: str, **kwattrs: Any) -> Callable[[T], T]:  # type: ignore[misc]
        return lambda cls: cls


__all__ = ["mypyc_attr"]
