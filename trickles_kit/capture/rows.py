"""The packet table of a decoded capture: `PacketRow`, its flat storage and `Capture`.

Why a flat table: a quarter-million `PacketRow` objects cost more than decoding their fields, so
the decoder (`capture.batches`) appends each row's values to one list and `Capture` builds row
objects only when asked (`packets`); `columns()` / `packets_df()` need none.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from itertools import starmap
from operator import attrgetter

from trickles_kit.core.events import Event

__all__ = ["EVENT_FIELDS", "NF", "PANDAS_HINT", "ROW_FIELDS", "Capture", "PacketRow"]

PANDAS_HINT = ("pandas is needed for DataFrames: pip install pandas "
               "(or pip install -e '.[lab]')")



@dataclass(slots=True)
class PacketRow:
    """One Trickles segment of the capture. Fields that do not apply are None."""

    index: int  # record number in the capture (0-based, counting every record)
    t: float  # capture timestamp, seconds
    direction: str  # "request" (client -> service) | "response"
    src: str
    dst: str
    sport: int  # TCP ports of the segment (the Trickles ports, also under UDP)
    dport: int
    carrier: str  # "ip253" | "tcp" | "udp"
    length: int  # IP datagram length
    seq: int  # TCP seq: packet number (response) / request counter (request)
    ack: int  # TCP ack: k
    flags: int  # TCP flags (FIN 1, SYN 2, RST 4, PSH 8, ACK 16)
    window: int
    trickles_len: int  # the Trickles option's value
    req_type: str | None = None  # NORMAL | SLOWSTART | SYN | FIN (requests)
    cont_type: int | None = None  # MINIMAL 0, FULL1 1, FULL2 2
    cont_seq: int | None = None
    first_child: int | None = None
    client_state: int | None = None
    parent: int | None = None
    client_timestamp: int | None = None
    timestamp: int | None = None
    mrtt: int | None = None
    state: int | None = None
    first_loss: int | None = None
    first_bootstrap_seq: int | None = None
    start_cwnd: int | None = None
    ssthresh: int | None = None
    tcp_base: int | None = None
    conn_id: int | None = None
    key_epoch: int | None = None
    mac: bytes | None = None
    nonce: int | None = None  # response header
    siblings: int | None = None
    position: int | None = None
    ucont_len: int | None = None
    sacks: list | None = None  # [(L, R, summary)]
    ranges: list | None = None  # [(start, end)]
    app_len: int | None = None  # request: application bytes
    data_start: int | None = None  # response: first DATA chunk's byte offset
    data_len: int = 0
    fin: bool = False  # a DATA chunk with the FIN flag
    finhint: int | None = None
    mac_ok: bool | None = None
    nonce_ok: bool | None = None
    error: str | None = None

    @property
    def k(self) -> int | None:
        """The packet number a request acknowledges (its continuation's seq)."""
        return self.cont_seq if self.direction == "request" else self.ack

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in ROW_FIELDS}


ROW_FIELDS = tuple(f.name for f in fields(PacketRow))
NF = len(ROW_FIELDS)
DIR_AT = ROW_FIELDS.index("direction")
MACOK_AT = ROW_FIELDS.index("mac_ok")
EVENT_FIELDS = tuple(f.name for f in fields(Event))



class Capture:
    """A decoded capture: rows, events and the error counter.

    The decoder stores the packet table flat (`ROW_FIELDS` values per packet, one list; SACK
    blocks and byte ranges in two value lists, see `ragged`): a quarter-million `PacketRow`
    objects cost more than decoding their fields, and a table (`columns()`, `packets_df()`)
    needs none. `packets` builds the rows on first access and keeps them: from then on they are
    the table (edits to a row show in `packets_df()`).
    """

    def __init__(self, path: str, packets: list[PacketRow] | None = None,
                 events: list[Event] | None = None, errors: Counter | None = None,
                 format: str = "", linktypes: set | None = None, truncated: bool = False,
                 warning: str | None = None, service_ports: set | None = None,
                 secret_used: bool = False, events_derived: bool = False) -> None:
        self.path = path
        self._rows: list[PacketRow] | None = packets if packets is not None else []
        self._flat: list | None = None
        self._ragged: tuple[list, list] = ([], [])
        self.events: list[Event] = events if events is not None else []
        # request row index -> the admission verdict the events say (`capture.events`)
        self.verdicts: dict[int, str] = {}
        self.errors: Counter = errors if errors is not None else Counter()
        self.format = format
        self.linktypes: set = linktypes if linktypes is not None else set()
        self.truncated = truncated
        self.warning = warning
        self.service_ports: set = service_ports if service_ports is not None else set()
        self.secret_used = secret_used
        self.events_derived = events_derived
        self._n_streamed: int | None = None  # a PacketStream's count (it keeps no rows)
        self._cols = None  # a `columns.PacketColumns` table (`capture.columnar`), else None

    def __repr__(self) -> str:
        return (f"Capture(path={self.path!r}, packets={self.n_packets}, "
                f"events={self.n_events}, errors={dict(self.errors)!r})")

    @property
    def n_events(self) -> int:
        """How many events (a columnar capture counts its table without building `Event`s)."""
        return len(self.events)

    @property
    def packets(self) -> list[PacketRow]:
        """One `PacketRow` per Trickles segment, in capture order (built on first access)."""
        if self._rows is None:
            if self._cols is not None:
                with no_gc():  # (the columns stay the table: `packets_df` reads them)
                    self._rows = self._cols.rows()
            else:
                self._rows = rows_of(self._flat or [], *self._ragged)
            self._flat, self._ragged = None, ([], [])
        return self._rows

    @packets.setter
    def packets(self, rows: list[PacketRow]) -> None:
        self._rows, self._flat, self._ragged, self._cols = rows, None, ([], []), None

    def _set_columns(self, cols) -> None:
        """Back the table with `cols` (a `PacketColumns`): rows built on first access."""
        self._rows, self._flat, self._ragged, self._cols = None, None, ([], []), cols

    @property
    def table(self):
        """The `PacketColumns` of a columnar capture (`capture.columnar`), else None."""
        return self._cols

    def _set_flat(self, flat: list, svals: list, rvals: list) -> None:
        self._rows, self._flat, self._ragged = None, flat, (svals, rvals)

    @property
    def n_packets(self) -> int:
        """len(packets), without building the rows (for a `PacketStream`: rows streamed)."""
        if self._n_streamed is not None:
            return self._n_streamed
        if self._cols is not None:
            return self._cols.n
        return len(self._rows) if self._rows is not None else len(self._flat or ()) // NF

    def columns(self) -> dict[str, list]:
        """The packet table as {field: list of values} in `ROW_FIELDS` order (no row objects)."""
        if self._rows is not None:
            get = row_getter()
            vals = list(zip(*map(get, self._rows), strict=True)) if self._rows else [()] * NF
            return {f: list(v) for f, v in zip(ROW_FIELDS, vals, strict=True)}
        if self._cols is not None:
            return self._cols.to_lists()
        flat = self._flat or []
        cols = {f: flat[i::NF] for i, f in enumerate(ROW_FIELDS)}
        svals, rvals = self._ragged
        cols["sacks"] = [ragged(c, svals, 3) for c in cols["sacks"]]
        cols["ranges"] = [ragged(c, rvals, 2) for c in cols["ranges"]]
        return cols

    def event_counts(self) -> Counter:
        return Counter(e.kind for e in self.events)

    def flagged(self) -> list[PacketRow]:
        return [r for r in self.packets if r.error is not None]

    def packets_df(self):
        """The packet table as a DataFrame; from the arrays for a columnar capture (categorical
        strings, nullable integers; see `capture.frames`)."""
        if self._cols is not None:
            return self._cols.to_pandas()
        pd = _pandas()
        cols = self.columns()
        n = len(cols["index"])
        if not n:
            return pd.DataFrame.from_records([], columns=list(ROW_FIELDS))
        cols["mac"] = [m.hex() if m is not None else None for m in cols["mac"]]
        return pd.DataFrame(cols, columns=list(ROW_FIELDS))

    def events_df(self):
        """The events as a DataFrame, built column by column (a list per field: pandas infers
        each column once instead of reading a tuple per event)."""
        pd = _pandas()
        ev = self.events
        if not ev:
            return pd.DataFrame.from_records([], columns=list(EVENT_FIELDS))
        cols = {f: list(map(attrgetter(f), ev)) for f in EVENT_FIELDS}
        return pd.DataFrame(cols, columns=list(EVENT_FIELDS))

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.event_counts().items()))
        errs = ", ".join(f"{k} {n}" for k, n in sorted(self.errors.items()) if "." not in k)
        out = [f"{self.n_packets} Trickles packets"
               + (f", {self.n_events} events" if self.events_derived else "")]
        if kinds:
            out.append(f"events: {kinds}")
        if errs:
            out.append(f"skipped/flagged: {errs}")
        if self.warning:
            out.append(f"warning: {self.warning}")
        return "\n".join(out)


def rows_of(flat: list, svals: list, rvals: list) -> list[PacketRow]:
    """PacketRow objects of a flat table (`NF` values per row)."""
    with no_gc():
        rows = list(starmap(PacketRow, zip(*[iter(flat)] * NF, strict=False)))
        for r in rows:
            if type(r.sacks) is int:
                r.sacks = ragged(r.sacks, svals, 3)
                r.ranges = ragged(r.ranges, rvals, 2)
    return rows


def ragged(cell, vals: list, width: int):
    """A SACK-block / byte-range cell of the flat table as the row's list of tuples.

    A fast-path request stores ``(offset << 7) | count`` (count <= 64) for `count` tuples of
    `width` values at vals[offset:]; any other cell (None, or a general-path row's list) is the
    value itself.
    """
    if type(cell) is not int:
        return cell
    o, n = cell >> 7, cell & 127
    if n == 1:
        return [tuple(vals[o : o + width])]
    return [tuple(vals[i : i + width]) for i in range(o, o + n * width, width)]


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(PANDAS_HINT) from None
    return pd


def row_getter():
    from operator import attrgetter

    return attrgetter(*ROW_FIELDS)



@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic GC while building many rows: they hold no cycles, and full collections
    over a growing list of containers would otherwise dominate (3x on 200k packets)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()

