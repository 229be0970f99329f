"""Applications written against the minisocket API (PROTOCOL §8)."""
