"""Hypothesis strategies for the codec's values (continuations, SACK blocks, byte ranges, chunks,
requests, responses), shared by the codec's round trips (tests/wire) and the scapy layers'
(tests/capture): what a valid value is, defined once. Sizes are parameters: the scapy tests
draw smaller messages than the codec's own."""

from __future__ import annotations

from hypothesis import strategies as st

from trickles_kit.wire.continuation import BOOTSTRAP, FULL1, FULL2, MINIMAL, Continuation
from trickles_kit.wire.messages import (
    REQ_NAMES,
    REQ_SYN,
    DataChunk,
    FinHint,
    Request,
    Response,
    SackBlock,
    SkipChunk,
)

U8, U16, U32, U64 = 0xFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF

u8 = st.integers(0, U8)
u16 = st.integers(0, U16)
u32 = st.integers(0, U32)
u64 = st.integers(0, U64)

sacks = st.builds(SackBlock, u32, u32, u32)


@st.composite
def continuations(draw, types=(MINIMAL, FULL1, FULL2)) -> Continuation:
    ctype = draw(st.sampled_from(types))
    head = dict(type=ctype, seq=draw(u32), first_child=draw(u8), client_state=draw(u32),
                parent=draw(u32), client_timestamp=draw(u32))
    if ctype == MINIMAL:
        return Continuation(**head)
    return Continuation(
        **head, timestamp=draw(u32), mrtt=draw(u32), state=draw(st.integers(0, BOOTSTRAP)),
        first_loss=draw(u32), first_bootstrap_seq=draw(u32), start_cwnd=draw(u32),
        ssthresh=draw(u32), tcp_base=draw(u32), conn_id=draw(u64), key_epoch=draw(u32),
        mac=draw(st.binary(min_size=16, max_size=16)),
    )


@st.composite
def ranges(draw, end_max: int = 1 << 32) -> tuple[int, int]:
    """A byte range [start, end): start a u32, its length a u32, the end at most `end_max`."""
    start = draw(st.integers(0, min(U32, end_max)))
    length = draw(st.integers(0, min(U32, end_max - start)))
    return (start, start + length)


def chunks(max_data: int = 200) -> st.SearchStrategy:
    """A DATA (up to `max_data` bytes), SKIP or FINHINT chunk."""
    return st.one_of(
        st.builds(DataChunk, u32, st.binary(max_size=max_data), st.booleans()),
        st.builds(SkipChunk, u32, u32),
        st.builds(FinHint, u32),
    )


@st.composite
def requests(draw, max_sacks: int = 8, max_ucont: int = 300, max_ranges: int = 8,
             max_app: int = 200, range_end: int = 1 << 32) -> Request:
    """A request of any type (a FULL continuation unless SYN)."""
    rtype = draw(st.sampled_from(list(REQ_NAMES)))
    cont = None if rtype == REQ_SYN else draw(continuations(types=(FULL1, FULL2)))
    return Request(
        rtype, cont, draw(st.lists(sacks, max_size=max_sacks)),
        draw(st.binary(max_size=max_ucont)),
        draw(st.lists(ranges(range_end), max_size=max_ranges)), draw(st.binary(max_size=max_app)),
    )


@st.composite
def responses(draw, max_ucont: int = 300, max_chunks: int = 8, max_data: int = 200) -> Response:
    """A response with any continuation and up to `max_chunks` chunks."""
    return Response(draw(u32), draw(u8), draw(u8), draw(continuations()),
                    draw(st.binary(max_size=max_ucont)),
                    draw(st.lists(chunks(max_data), max_size=max_chunks)))
