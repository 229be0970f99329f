"""The single decode error type, so callers count drops by reason instead of catching everything."""


class DecodeError(ValueError):
    """Malformed wire input. `reason` is a short stable token used as a drop counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
