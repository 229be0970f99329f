"""mypyc's `mypyc_attr` class decorator for the compiled build, or a stand-in that does
nothing when mypy is not installed (the pure-Python package does not depend on it); and
`Alias`, a thin delegating attribute that works the same in a compiled class.

mypy resolves the name imported from here to mypy_extensions' own, which is what mypyc reads
when it compiles a module that uses it (this module itself is never compiled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # no mypy: nothing is compiled, and the decorator changes nothing

    def mypyc_attr(*attrs: str, **kwattrs: Any) -> Callable[[T], T]:  # type: ignore[misc]
        return lambda cls: cls


class Alias(Generic[T]):
    """A class attribute that is a field of one of the instance's parts: with
    `rto: ClassVar[Alias[float]] = Alias("rtt", "rto")`, `obj.rto` reads (and assigning it
    sets) `obj.rtt.rto`. One accessor instead of a property per shortcut; an object of this
    (interpreted) class in the type's dict acts alike on a compiled (mypyc) class and a plain
    one. For access from outside the class: the class's own code uses the part directly."""

    __slots__ = ("part", "name")

    def __init__(self, part: str, name: str) -> None:
        self.part, self.name = part, name

    def __get__(self, obj: object, owner: type | None = None) -> T:
        if obj is None:  # (read on the class: the alias itself)
            return self  # type: ignore[return-value]
        return getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj: object, value: T) -> None:
        setattr(getattr(obj, self.part), self.name, value)


__all__ = ["Alias", "mypyc_attr"]
