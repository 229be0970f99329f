"""The client engine's state by its older, private names.

`testing/liars.py` subclasses `ClientEngine` and overrides its steps, and some tests look
inside it, by the names the state had before it moved into small objects (core.rtt,
core.scoreboard, core.reassembly, ...). This base class keeps those names working without the
engine's own code using them: each is an `Alias` of the part that now holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from trickles_kit.core import delta as dl
from trickles_kit.core.loss import Expect
from trickles_kit.core.ranges import RangeSet
from trickles_kit.core.reassembly import Ranges
from trickles_kit.native.hints import Alias, mypyc_attr
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

    # old name = Alias(the part that holds it now, its name there)
    _srtt: ClassVar[Alias[float | None]] = Alias("rtt", "srtt")
    _rttvar: ClassVar[Alias[float]] = Alias("rtt", "rttvar")
    _board: ClassVar[Alias[RangeSet]] = Alias("score", "board")
    _nonce: ClassVar[Alias[dict[int, int]]] = Alias("score", "nonce")
    _lost: ClassVar[Alias[dict[int, Ranges]]] = Alias("score", "lost")
    _sum_cache: ClassVar[Alias[dict[int, tuple[int, int]]]] = Alias("score", "sums")
    _max_rx: ClassVar[Alias[int]] = Alias("score", "max_rx")
    _received: ClassVar[Alias[RangeSet]] = Alias("stream", "received")
    _missing: ClassVar[Alias[RangeSet]] = Alias("stream", "missing")
    _want_bytes: ClassVar[Alias[int]] = Alias("stream", "want_bytes")
    _deliver: ClassVar[Alias[int]] = Alias("stream", "deliver")
    _next_new: ClassVar[Alias[int]] = Alias("picker", "next_new")
    _expected: ClassVar[Alias[dict[int, Expect]]] = Alias("loss", "expected")
    _spare: ClassVar[Alias[Continuation | None]] = Alias("spare", "cont")
    _preds: ClassVar[Alias[dl.Predictions | None]] = Alias("build", "preds")

    def _sample_rtt(self, r: float) -> None:
        self.rtt.sample(r)

    def _segment(self, payload: bytes, ack: int, flags: int) -> bytes:
        return self.build.segment(payload, ack, flags)


__all__ = ["OlderNames"]
