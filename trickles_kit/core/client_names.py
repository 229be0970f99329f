"""The client engine's state by its older, private names.

`testing/liars.py` subclasses `ClientEngine` and overrides its steps, and some tests look
inside it, by the names the state had before it moved into small objects (core.rtt,
core.scoreboard, core.reassembly, ...). This base class keeps those names working without the
engine's own code using them (they cost a property call each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trickles_kit.core import delta as dl
from trickles_kit.core.loss import Expect
from trickles_kit.core.ranges import RangeSet
from trickles_kit.core.reassembly import Ranges
from trickles_kit.native.hints import mypyc_attr
from trickles_kit.wire.continuation import Continuation

if TYPE_CHECKING:  # (types only)
    from trickles_kit.core.loss import LossDetector
    from trickles_kit.core.range_picker import RangePicker
    from trickles_kit.core.reassembly import Reassembly
    from trickles_kit.core.request_builder import RequestBuilder
    from trickles_kit.core.rtt import RttEstimator
    from trickles_kit.core.scoreboard import Scoreboard
    from trickles_kit.core.spare import Spare

@mypyc_attr(allow_interpreted_subclasses=True)  # (ClientEngine's base)
class OlderNames:
    # the engine's parts (set by ClientEngine.__init__; declared here, the root of the
    # engine's classes, so that a compiled build lays them out once)
    rtt: RttEstimator
    score: Scoreboard
    stream: Reassembly
    picker: RangePicker
    build: RequestBuilder
    loss: LossDetector
    spare: Spare

    @property
    def _srtt(self) -> float | None:
        return self.rtt.srtt

    @property
    def _rttvar(self) -> float:
        return self.rtt.rttvar

    def _sample_rtt(self, r: float) -> None:
        self.rtt.sample(r)

    def _segment(self, payload: bytes, ack: int, flags: int) -> bytes:
        return self.build.segment(payload, ack, flags)

    @property
    def _board(self) -> RangeSet:
        return self.score.board

    @property
    def _nonce(self) -> dict[int, int]:
        return self.score.nonce

    @property
    def _lost(self) -> dict[int, Ranges]:
        return self.score.lost

    @property
    def _sum_cache(self) -> dict[int, tuple[int, int]]:
        return self.score.sums

    @property
    def _max_rx(self) -> int:
        return self.score.max_rx

    @property
    def _received(self) -> RangeSet:
        return self.stream.received

    @property
    def _missing(self) -> RangeSet:
        return self.stream.missing

    @property
    def _next_new(self) -> int:
        return self.picker.next_new

    @property
    def _want_bytes(self) -> int:
        return self.stream.want_bytes

    @property
    def _deliver(self) -> int:
        return self.stream.deliver

    @property
    def _expected(self) -> dict[int, Expect]:
        return self.loss.expected

    @property
    def _spare(self) -> Continuation | None:
        return self.spare.cont

    @_spare.setter
    def _spare(self, cont: Continuation | None) -> None:
        self.spare.cont = cont

    @property
    def _preds(self) -> dl.Predictions | None:
        return self.build.preds


__all__ = ["OlderNames"]
