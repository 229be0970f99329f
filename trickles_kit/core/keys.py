"""Key epochs: per-epoch MAC keys derived from one master secret with HKDF (docs §6.2).

The epoch is `floor(now / epoch_seconds)` of the server's clock and nothing else: no packet and
no count of seals moves it, so replicas and restarted servers that share the secret and a clock
agree on every key however hard they are flooded. What an epoch key seals is a MAC (keyed
BLAKE2s, a PRF without a nonce), which has no per-key usage limit to meet by rotating early.
A continuation is accepted when sealed in the current or the previous epoch.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hkdf(master: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


class KeyRing:
    """Derives and caches the MAC key of each epoch; the epoch follows the clock only."""

    def __init__(
        self, master: bytes, epoch_seconds: float = 60.0, max_seals: int | None = None
    ) -> None:
        """`max_seals` is accepted and ignored: it once advanced the epoch after that many seals,
        which let a SYN flood push one server's keys ahead of its replicas' (issue 20); callers
        that still pass `ServerConfig.max_seals` keep working."""
        if len(master) < 16:
            raise ValueError("the master secret must be at least 16 bytes")
        if epoch_seconds <= 0:
            raise ValueError("epoch_seconds must be positive")
        self.master = bytes(master)
        self.epoch_seconds = epoch_seconds
        self.nonce_key = hkdf(self.master, b"trickles-kit nonce", 16)
        self.conn_key = hkdf(self.master, b"trickles-kit connid", 32)
        self.ucont_key = hkdf(self.master, b"trickles-kit ucont", 32)
        self._epoch = 0  # the newest epoch this ring has seen: the clock's, or rotate()'s
        self._keys: dict[int, bytes] = {}
        self._hashers: dict[int, object] = {}

    def mac_key(self, epoch: int) -> bytes:
        key = self._keys.get(epoch)
        if key is None:
            if len(self._keys) > 8:  # bounded: only a few epochs are ever live
                self._keys.clear()
            key = hkdf(self.master, b"trickles-kit mac epoch " + epoch.to_bytes(4, "big"), 32)
            self._keys[epoch] = key
        return key

    def mac_hasher(self, epoch: int):
        """A keyed BLAKE2s-128 state for `epoch`; callers `.copy()` it (cheaper than re-keying)."""
        h = self._hashers.get(epoch)
        if h is None:
            if len(self._hashers) > 8:
                self._hashers.clear()
            h = hashlib.blake2s(key=self.mac_key(epoch), digest_size=16)
            self._hashers[epoch] = h
        return h

    def current(self, now: float) -> int:
        """The clock's epoch at `now` (never lower than one reached before: a clock that steps
        back does not revive a retired key)."""
        slot = int(now // self.epoch_seconds)
        if slot > self._epoch:
            self._epoch = slot
        return self._epoch

    def sealing_epoch(self, now: float) -> int:
        """The epoch to seal with at `now`: the current one. Sealing changes nothing, so no
        amount of traffic can move the epoch away from what a replica with the same clock
        computes. (A method, not an alias of `current`: a compiled class body cannot alias.)"""
        return self.current(now)

    def rotate(self) -> int:
        """Start the next epoch now, in this process only (an operator's or a test's action, never
        a packet's); a replica catches up when its clock reaches that epoch."""
        self._epoch += 1
        return self._epoch

    def accepts(self, epoch: int, now: float) -> bool:
        """Sealed in the current or the previous epoch (`current`, inlined: once per request)."""
        slot = int(now // self.epoch_seconds)
        if slot > self._epoch:
            self._epoch = slot
        cur = self._epoch
        return epoch == cur or epoch == cur - 1
