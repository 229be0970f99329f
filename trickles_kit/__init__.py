"""trickles_kit: run, watch and measure Trickles, the stateless network stack (NSDI 2005)."""

__version__ = "0.1.0"
