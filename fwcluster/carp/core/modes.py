"""The two ways carpd signs and checks adverts, behind one interface (pure).

carpd's shell holds one codec for the member and asks it for each vhid's
Auth, for the bytes of an advert and for the verdict on a received packet;
it never needs to know which mode runs. `[carp] mode` picks the codec:

* Compatible: CARP v2 as ucarp and OpenBSD speak it (wire.py).
* Hardened: hardened.py; holds the member's Counter and its peers' replay
  windows, so both outlive a re-key.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from fwcluster.carp.core import hardened, wire
from fwcluster.carp.core.wire import Advert, Drop


class Compatible:
    mode = "compatible"
    binds_source = False  # any source address will do (the kernel may pick one)

    def auth(self, secret: bytes, vhid: int, addresses: Iterable, cookie: int) -> wire.Auth:
        return wire.Auth(secret, vhid, addresses, cookie)

    def renamed(self, cluster: str) -> "Compatible":
        return self  # v2's key is the secret itself: the name is not in it

    def encode(self, auth: wire.Auth, advbase: int, advskew: int, demote: int,
               source: str | None) -> bytes | None:
        return wire.encode(auth, advbase, advskew, demote)

    def decode(self, payload: bytes, ttl: int, source: str, auths: Mapping,
               own: str | None) -> Advert | Drop:
        return wire.decode(payload, ttl, auths)


class Hardened:
    mode = "hardened"
    binds_source = True  # the MAC covers the source: we must know the one we send from

    def __init__(self, cluster: str, counter: hardened.Counter,
                 windows: hardened.ReplayWindows | None = None):
        self.cluster = cluster
        self.counter = counter
        self.windows = windows or hardened.ReplayWindows()
        self._keys: dict[bytes, bytes] = {}  # secret -> derived key (HKDF once)

    def auth(self, secret: bytes, vhid: int, addresses: Iterable, cookie: int) -> hardened.Auth:
        k = self._keys.get(secret)
        if k is None:
            k = self._keys[secret] = hardened.key(secret, self.cluster)
        return hardened.Auth(k, vhid, addresses, cookie)

    def renamed(self, cluster: str) -> "Hardened":
        """The codec of the cluster under a new name (its key derives from
        the name); the counter and the peers' replay windows carry over."""
        return self if cluster == self.cluster else Hardened(cluster, self.counter, self.windows)

    def encode(self, auth: hardened.Auth, advbase: int, advskew: int, demote: int,
               source: str | None) -> bytes | None:
        """None without a source address: no peer could check the advert."""
        if not source:
            return None
        return hardened.encode(auth, self.counter.next(), source, advbase, advskew, demote)

    def decode(self, payload: bytes, ttl: int, source: str, auths: Mapping,
               own: str | None) -> Advert | Drop:
        return hardened.decode(payload, ttl, source, auths, self.windows, own)
