"""Key epochs: per-epoch MAC keys derived from one master secret with HKDF (PROTOCOL §3).

Epoch numbers come from the clock (every `epoch_seconds`) and advance early after `max_seals`
seals, so replicas that share the secret and a clock agree on keys without talking. A
continuation is accepted when sealed in the current or the previous epoch.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def hkdf(master: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


class KeyRing:
    """Derives and caches the MAC key of each epoch; tracks the sealing epoch."""

    def __init__(
        self, master: bytes, epoch_seconds: float = 60.0, max_seals: int = 1 << 23
    ) -> None:
        if len(master) < 16:
            raise ValueError("the master secret must be at least 16 bytes")
        if epoch_seconds <= 0 or max_seals < 1:
            raise ValueError("epoch_seconds and max_seals must be positive")
        self.master = bytes(master)
        self.epoch_seconds = epoch_seconds
        self.max_seals = max_seals
        self.nonce_key = hkdf(self.master, b"trickles-kit nonce", 16)
        self.conn_key = hkdf(self.master, b"trickles-kit connid", 32)
        self.ucont_key = hkdf(self.master, b"trickles-kit ucont", 32)
        self._epoch = 0
        self._seals = 0
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
        slot = int(now // self.epoch_seconds)
        if slot > self._epoch:
            self._epoch = slot
            self._seals = 0
        return self._epoch

    def sealing_epoch(self, now: float) -> int:
        """Epoch to seal with now; counts the seal and rotates after `max_seals`."""
        epoch = self.current(now)
        self._seals += 1
        if self._seals > self.max_seals:
            self.rotate()
            epoch = self._epoch
            self._seals = 1
        return epoch

    def rotate(self) -> int:
        """Start a new epoch now (operators and tests force rotation with this)."""
        self._epoch += 1
        self._seals = 0
        return self._epoch

    def accepts(self, epoch: int, now: float) -> bool:
        cur = self.current(now)
        return epoch == cur or epoch == cur - 1
