"""The client's spare continuation: the newest one of the current timeout epoch, kept for the
SLOWSTART after a timeout and for the FIN, with the age buckets it was used in.

The server answers one SLOWSTART and one FIN per continuation per age bucket (core.replay); a
retry on the same continuation in the same bucket would be refused as a replay, so it waits
for the next one. The client's age of the continuation is a lower bound of the server's (the
path delay comes on top), bounded above by adding a smoothed RTT.
"""

from __future__ import annotations

from trickles_kit.core.replay import slowstart_age_bucket, slowstart_bucket_end
from trickles_kit.wire.continuation import Continuation


class Spare:
    __slots__ = ("cont", "stale", "ss_right", "rx", "ss_cont", "ss_bucket", "fin_bucket",
                 "unit")

    def __init__(self, bucket_seconds: float) -> None:
        self.cont: Continuation | None = None
        self.stale = False  # it predates the last SLOWSTART: replace it
        self.ss_right = -1  # `right` of the last SLOWSTART
        self.rx = 0.0  # when it arrived (its age here bounds the server's below)
        self.ss_cont: Continuation | None = None  # the continuation of the last SLOWSTART
        self.ss_bucket = -1  # the latest age bucket the server may have filed it in
        self.fin_bucket = -1  # the latest age bucket the server may have filed our FIN in
        self.unit = bucket_seconds * 1000  # ms

    def offer(self, cont: Continuation, now: float) -> None:
        """A continuation of the current epoch arrived: it is the spare if it is the newest."""
        if self.cont is None or self.stale or cont.seq >= self.cont.seq:
            self.cont = cont
            self.stale = False
            self.rx = now

    def bucket_wait(self, bucket: int, now: float) -> float:
        """Seconds until the spare's age (here, a lower bound of the server's) leaves `bucket`."""
        if bucket < 0:
            return 0.0
        age = (now - self.rx) * 1000
        if slowstart_age_bucket(age, self.unit) > bucket:
            return 0.0
        return (slowstart_bucket_end(bucket, self.unit) - age) / 1000 + 0.001

    def age_bucket(self, now: float, srtt: float | None) -> int:
        """The latest age bucket the server may file a request on the spare sent now under:
        its age there exceeds ours by the path delay, bounded by a smoothed RTT."""
        slack = min(srtt if srtt is not None else 0.1, 1.0)
        return slowstart_age_bucket((now - self.rx + slack) * 1000, self.unit)

    def slowstart_wait(self, now: float) -> float:
        """Seconds until a SLOWSTART on the spare falls in an age bucket it has not used (a
        timeout that stopped doubling at max_rto would otherwise land twice in one bucket)."""
        if self.ss_cont is None or self.ss_cont is not self.cont:
            return 0.0
        return self.bucket_wait(self.ss_bucket, now)


__all__ = ["Spare"]
