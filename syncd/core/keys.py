"""Key derivation for state sync: HKDF-SHA256 (RFC 5869) from the cluster secret.

The cluster secret is a passphrase shared with CARP (which uses it for
HMAC-SHA1). Sync derives its own key so that the two protocols never share a
MAC key, and binds it to the cluster name so two clusters with the same
passphrase on one sync link cannot feed each other.
"""
from __future__ import annotations

# The HKDF itself is shared with carpd's hardened mode (one implementation).
from fwcluster.core.hkdf import HASH, HASH_LEN, hkdf, hkdf_expand, hkdf_extract  # noqa: F401


def sync_key(secret: bytes, cluster: str) -> bytes:
    """The HMAC-SHA256 key of every sync message of this cluster."""
    return hkdf(secret, b"fwcluster-syncd", b"sync-hmac-v1 " + cluster.encode())
