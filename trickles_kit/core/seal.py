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
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trickles_kit.core.keys import KeyRing
from trickles_kit.wire.continuation import MAC_LEN, MAC_OFFSET

_PSEUDO = struct.Struct("!4s4sHH")


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

    One key per master secret, not per key epoch: a blob is sealed once and must open for its
    connection's whole life. Its random 96-bit nonces budget 2^32 seals per key (docs §6.2).
    """

    def __init__(self, keys: KeyRing, nonce_source: Callable[[int], bytes] = os.urandom) -> None:
        self._aead = AESGCM(keys.ucont_key)
        # random 12-byte nonces; the protocol's test vectors pass a fixed source so that their
        # bytes are reproducible (never do that on a live server: a repeated nonce breaks GCM)
        self._nonce = nonce_source

    def seal(self, plaintext: bytes, conn_id: int) -> bytes:
        nonce = self._nonce(12)
        return nonce + self._aead.encrypt(nonce, plaintext, conn_id.to_bytes(8, "big"))

    def open(self, sealed: bytes, conn_id: int) -> bytes | None:
        """Plaintext, or None when the blob is short, forged or bound to another connection."""
        if len(sealed) < 28:
            return None
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], conn_id.to_bytes(8, "big"))
        except InvalidTag:
            return None
