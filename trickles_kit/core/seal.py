"""Sealing: the continuation MAC (keyed BLAKE2s-128) and AEAD for confidential user continuations.

The MAC is a PRF without a nonce: it has no per-key usage limit, so its keys change with the clock
only (`core.keys`, docs §6.2).

The MAC covers a pseudo-header (client address and port, service address and port) plus the
server-owned bytes of the continuation. The replica's own address is not in it — any replica
holding the secret accepts the continuation; the service address is, so it cannot be moved to
another service.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trickles_kit.core.keys import KeyRing
from trickles_kit.wire.continuation import MAC_LEN, MAC_OFFSET, MAC_PSEUDO

_PSEUDO = MAC_PSEUDO


def pseudo_header(
    client_ip: bytes, client_port: int, service_ip: bytes, service_port: int
) -> bytes:
    return _PSEUDO.pack(client_ip, service_ip, client_port, service_port)


def mac(key: bytes, pseudo: bytes, body: bytes) -> bytes:
    """MAC over pseudo + type/seq/firstChild + the server-owned block (body is >= 59 bytes)."""
    return hashlib.blake2s(
        pseudo + body[0:6] + body[18:MAC_OFFSET], key=key, digest_size=MAC_LEN
    ).digest()


def mac_with(keyed, pseudo: bytes, body: bytes) -> bytes:
    """`mac` from a pre-keyed BLAKE2s state (KeyRing.mac_hasher): same bytes, no re-keying."""
    h = keyed.copy()
    h.update(pseudo + body[0:6] + body[18:MAC_OFFSET])
    return h.digest()


def verify(keys: KeyRing, pseudo: bytes, raw: bytes, epoch: int) -> bool:
    """Constant-time check of the MAC at the end of a raw 75-byte FULL continuation."""
    return hmac.compare_digest(mac_with(keys.mac_hasher(epoch), pseudo, raw), raw[MAC_OFFSET:])


class UcontBox:
    """AES-GCM sealing for user continuations that hold secrets (full 16-byte tag).

    A blob is sealed once and must open for its connection's whole life, so its key cannot
    follow the clock's epochs. AES-GCM with random 96-bit nonces is good for 2^32 seals per key
    (NIST SP 800-38D §8.3); one key per master secret would let a long enough SYN flood exhaust
    it. Each connection gets its own key instead, BLAKE2s(user continuation key, connId)
    (docs §6.2): one key seals a handful of blobs, and only their own connection's. The AESGCM
    objects of recent connections are cached (soft state: a miss only re-derives).
    """

    CACHE = 64  # recent connections: a few kB, full long before a load test measures

    def __init__(self, keys: KeyRing, nonce_source: Callable[[int], bytes] = os.urandom) -> None:
        self._root = keys.ucont_key
        self._aeads: dict[int, AESGCM] = {}
        # random 12-byte nonces; the protocol's test vectors pass a fixed source so that their
        # bytes are reproducible (never do that on a live server: a repeated nonce breaks GCM)
        self._nonce = nonce_source

    def _aead(self, conn_id: int) -> AESGCM:
        aead = self._aeads.get(conn_id)
        if aead is None:
            if len(self._aeads) >= self.CACHE:
                self._aeads.clear()  # bounded; cheaper than an LRU and as good for a cache
            key = hashlib.blake2s(conn_id.to_bytes(8, "big"), key=self._root).digest()
            aead = self._aeads[conn_id] = AESGCM(key)
        return aead

    def seal(self, plaintext: bytes, conn_id: int) -> bytes:
        nonce = self._nonce(12)
        return nonce + self._aead(conn_id).encrypt(nonce, plaintext, conn_id.to_bytes(8, "big"))

    def open(self, sealed: bytes, conn_id: int) -> bytes | None:
        """Plaintext, or None when the blob is short, forged or bound to another connection."""
        if len(sealed) < 28:
            return None
        try:
            return self._aead(conn_id).decrypt(sealed[:12], sealed[12:],
                                               conn_id.to_bytes(8, "big"))
        except InvalidTag:
            return None
