"""trickles_kit: run, watch and measure Trickles, the stateless network stack (NSDI 2005)."""

__version__ = "0.1.0"

# First, so that TRICKLES_PURE=1 keeps any mypyc-compiled module out before one is imported.
from trickles_kit import native as _native  # noqa: E402,F401
