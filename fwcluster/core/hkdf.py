"""HKDF-SHA256 (RFC 5869): one key per purpose from the cluster passphrase.

Every protocol that authenticates with the cluster secret derives its own
key here under its own label (sync, the config channel, hardened CARP), so
no two of them ever share a MAC key. Pure.
"""
from __future__ import annotations

import hashlib
import hmac

HASH = hashlib.sha256
HASH_LEN = 32


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    # RFC 5869 2.2: an absent salt is HashLen zero bytes.
    return hmac.new(salt or bytes(HASH_LEN), ikm, HASH).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    if not 0 < length <= 255 * HASH_LEN:
        raise ValueError(f"HKDF output length {length} outside 1-{255 * HASH_LEN}")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), HASH).digest()
        out += block
        counter += 1
    return out[:length]


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = HASH_LEN) -> bytes:
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)
