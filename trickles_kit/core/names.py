"""The base of the vocabulary's enums (event, slot and drop kinds, verdicts, client phases).

A `StrEnum` compares, hashes and serialises as its plain string, so JSON and `kind == "split"`
are unchanged; this base also *prints* as the string, so a counter dict keyed by kinds reads
`{'split': 23}` rather than `{<SlotKind.SPLIT: 'split'>: 23}` in a notebook.
"""

from __future__ import annotations

from enum import StrEnum


class Name(StrEnum):
    def __repr__(self) -> str:
        return repr(self.value)
