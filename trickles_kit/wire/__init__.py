"""The one codec: bytes <-> typed Trickles values, with `struct` only (no sockets, no state)."""

from trickles_kit.wire.errors import DecodeError

__all__ = ["DecodeError"]
